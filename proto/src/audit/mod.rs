//! The audit format, version 1 (`audit_v1`), and its offline verifier.
//!
//! - [`entry`]: one audit entry, its canonical bytes and its chain hash.
//! - [`merkle`]: the RFC 9162 Merkle tree over the entries, with inclusion
//!   and consistency proofs.
//! - [`note`]: checkpoints as C2SP signed notes, signed with ed25519.
//! - [`export`]: the export file format and the verifier an auditor runs.
//! - [`proof`]: an inclusion proof as a file a third party checks offline.
//!
//! docs/audit-format.md describes all of it byte by byte. Nothing here does
//! I/O: the verifier reads a string and returns a verdict.

pub mod entry;
pub mod export;
pub mod merkle;
pub mod note;
pub mod proof;

pub use entry::{Decision, Entry, Kind};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A hash as the export writes it: exactly 64 lowercase hex digits. Any
/// other spelling of the same bytes is refused, so that an export has one
/// form and a verifier written from the doc agrees with this one.
pub fn parse_hash_hex(s: &str) -> Result<Hash, String> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("{s:?} is not 64 lowercase hex digits"));
    }
    let mut h = [0; 32];
    hex::decode_to_slice(s, &mut h).map_err(|e| e.to_string())?;
    Ok(h)
}

pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        super::parse_hash_hex(&s).map_err(serde::de::Error::custom)
    }
}
