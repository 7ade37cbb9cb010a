//! The audit format, version 1 (`audit_v1`), and its offline verifier.
//!
//! - [`entry`]: one audit entry, its canonical bytes and its chain hash.
//! - [`merkle`]: the RFC 9162 Merkle tree over the entries, with inclusion
//!   and consistency proofs.
//! - [`note`]: checkpoints as C2SP signed notes, signed with ed25519.
//! - [`export`]: the export file format and the verifier an auditor runs.
//! - [`proof`]: an inclusion proof as a file a third party checks offline.
//! - [`witness`]: what a witness co-signs, and its cosignatures.
//!
//! docs/audit-format.md describes all of it byte by byte. Nothing here does
//! I/O: the verifier reads a string and returns a verdict.

pub mod entry;
pub mod export;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod witness;

pub use entry::{Decision, Entry, EntryRef, Kind};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A hash as the export writes it: exactly 64 lowercase hex digits. Any
/// other spelling of the same bytes is refused, so that an export has one
/// form and a verifier written from the doc agrees with this one. (The hex
/// crate also takes uppercase; this is the verifier's hot path, two hashes
/// an entry, so it is one pass over a table.)
pub fn parse_hash_hex(s: &str) -> Result<Hash, String> {
    const BAD: u8 = 0xff;
    const VAL: [u8; 256] = {
        let mut t = [BAD; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let b = s.as_bytes();
    if b.len() != 64 {
        return Err(format!("{s:?} is not 64 lowercase hex digits"));
    }
    let mut h = [0u8; 32];
    let mut bad = 0u8;
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let (hi, lo) = (VAL[pair[0] as usize], VAL[pair[1] as usize]);
        bad |= (hi | lo) & 0xf0;
        h[i] = (hi << 4) | (lo & 0x0f);
    }
    if bad != 0 {
        return Err(format!("{s:?} is not 64 lowercase hex digits"));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hashes_are_read_in_lowercase_hex_only() {
        let h: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let text = hex::encode(h);
        assert_eq!(super::parse_hash_hex(&text), Ok(h));
        for bad in [
            text.to_uppercase(),
            text[..62].to_string(),
            format!("{text}00"),
            text.replacen(&text[..1], "g", 1),
            text.replacen(&text[..1], " ", 1),
        ] {
            assert!(super::parse_hash_hex(&bad).is_err(), "{bad}");
        }
    }
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
