//! The audit format, version 1 (`audit_v1`), and its offline verifier.
//!
//! - [`entry`]: one audit entry, its canonical bytes and its chain hash.
//! - [`merkle`]: the RFC 9162 Merkle tree over the entries, with inclusion
//!   and consistency proofs.
//! - [`note`]: checkpoints as C2SP signed notes, signed with ed25519.
//! - [`export`]: the export file format and the verifier an auditor runs.
//!
//! docs/audit-format.md describes all of it byte by byte. Nothing here does
//! I/O: the verifier reads a string and returns a verdict.

pub mod entry;
pub mod export;
pub mod merkle;
pub mod note;

pub use entry::{Decision, Entry, Kind};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))
    }
}
