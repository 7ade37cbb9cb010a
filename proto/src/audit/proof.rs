//! An inclusion proof as a file a third party can check offline: one audit
//! entry, its Merkle audit path, and the signed checkpoint whose root the
//! path leads to (docs/audit-format.md, "Inclusion proofs").
//!
//! ```text
//! {"format":"grant-ledger-audit-proof","version":1,"origin":"...",
//!  "entry":{...every Entry field...},"entry_hash":"<hex>",
//!  "leaf_index":N,"tree_size":S,"path":["<hex>",...],"checkpoint":"<signed note>"}
//! ```
//! Whoever checks it needs only the file and the verifier keys they trust:
//! the entry's hash and leaf hash are recomputed from its fields, the path
//! is folded up to a root (RFC 9162, 2.1.3.2), and that root must be the one
//! the checkpoint signs, by a trusted key, for this origin and size.

use serde::{Deserialize, Serialize};

use super::note::{self, VerifierKey};
use super::{merkle, parse_hash_hex, Entry};

pub const FORMAT: &str = "grant-ledger-audit-proof";
pub const VERSION: u32 = 1;

/// Audit path length above which a proof is refused unread: a tree of
/// 2^64 entries needs 64.
pub const PATH_MAX: usize = 64;

/// The proof file. Every field is required, and one it does not define is
/// refused.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub format: String,
    pub version: u32,
    /// The log's origin, as its checkpoints name it.
    pub origin: String,
    pub entry: Entry,
    /// SHA-256 of the entry's canonical bytes, lowercase hex.
    pub entry_hash: String,
    /// The entry's position among the leaves: its seq.
    pub leaf_index: u64,
    /// The size of the tree the checkpoint signs.
    pub tree_size: u64,
    /// The audit path, from the leaf's sibling up, lowercase hex.
    pub path: Vec<String>,
    /// The signed checkpoint (a C2SP signed note), exactly as served.
    pub checkpoint: String,
}

/// What a verified proof shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub origin: String,
    pub seq: u64,
    pub tree_size: u64,
    /// Names of the trusted keys that signed the checkpoint.
    pub signers: Vec<String>,
}

impl InclusionProof {
    /// Assemble a proof from what the Audit service returned. Nothing is
    /// checked here: [`InclusionProof::verify`] does that.
    pub fn new(entry: Entry, tree_size: u64, path: &[[u8; 32]], checkpoint: String) -> Self {
        let origin = note::parse(&checkpoint)
            .map(|n| n.checkpoint.origin)
            .unwrap_or_default();
        InclusionProof {
            format: FORMAT.into(),
            version: VERSION,
            origin,
            entry_hash: hex::encode(entry.hash()),
            leaf_index: entry.seq,
            tree_size,
            path: path.iter().map(hex::encode).collect(),
            checkpoint,
            entry,
        }
    }

    pub fn parse(text: &str) -> Result<InclusionProof, String> {
        serde_json::from_str(text).map_err(|e| format!("not an inclusion proof: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a proof serializes")
    }

    /// Check the proof against keys the checker trusts, trusting nothing
    /// else in it.
    pub fn verify(&self, trusted: &[VerifierKey]) -> Result<Proven, String> {
        if self.format != FORMAT || self.version != VERSION {
            return Err(format!(
                "unknown proof format {:?} version {}",
                self.format, self.version
            ));
        }
        let (cp, signers) =
            note::verify(&self.checkpoint, trusted).map_err(|e| format!("checkpoint: {e}"))?;
        if cp.origin != self.origin {
            return Err(format!(
                "the checkpoint is of log {:?}, the proof names {:?}",
                cp.origin, self.origin
            ));
        }
        if cp.size != self.tree_size {
            return Err(format!(
                "the proof is for a tree of {} entries, the checkpoint signs {}",
                self.tree_size, cp.size
            ));
        }
        if self.entry.seq != self.leaf_index {
            return Err(format!(
                "the entry is seq {}, the proof is for leaf {}",
                self.entry.seq, self.leaf_index
            ));
        }
        if self.leaf_index >= self.tree_size {
            return Err(format!(
                "leaf {} is outside a tree of {} entries",
                self.leaf_index, self.tree_size
            ));
        }
        let stated = parse_hash_hex(&self.entry_hash).map_err(|e| format!("entry_hash: {e}"))?;
        if stated != self.entry.hash() {
            return Err(
                "the entry's fields do not hash to entry_hash: the entry was modified".into(),
            );
        }
        if self.path.len() > PATH_MAX {
            return Err(format!(
                "an audit path of {} hashes is longer than any tree needs ({PATH_MAX})",
                self.path.len()
            ));
        }
        let path = self
            .path
            .iter()
            .map(|h| parse_hash_hex(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("path: {e}"))?;
        if !merkle::verify_inclusion(
            self.leaf_index,
            cp.size,
            &self.entry.leaf_hash(),
            &path,
            &cp.root,
        ) {
            return Err(format!(
                "the path does not lead from entry {} to the root the checkpoint signs",
                self.leaf_index
            ));
        }
        Ok(Proven {
            origin: cp.origin,
            seq: self.leaf_index,
            tree_size: cp.size,
            signers: signers.into_iter().map(|k| k.name).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::note::{sign, Checkpoint};
    use crate::audit::{Entry, Kind};
    use ed25519_dalek::SigningKey;

    fn log(n: u64) -> Vec<Entry> {
        let mut prev = [0; 32];
        (0..n)
            .map(|seq| {
                let mut e = Entry::new(Kind::Check, 1000 + seq as i64);
                e.seq = seq;
                e.actor = format!("spiffe://example.org/tool/{seq}");
                e.prev_hash = prev;
                prev = e.hash();
                e
            })
            .collect()
    }

    fn proof_of(seq: u64, entries: &[Entry], key: &SigningKey) -> InclusionProof {
        let leaves: Vec<_> = entries.iter().map(Entry::leaf_hash).collect();
        let cp = Checkpoint {
            origin: "grant-ledger/test".into(),
            size: leaves.len() as u64,
            root: merkle::root(&leaves),
            time_ms: 5,
        };
        let path = merkle::inclusion_proof(seq as usize, &leaves);
        InclusionProof::new(
            entries[seq as usize].clone(),
            cp.size,
            &path,
            sign(&cp, "node-1", key),
        )
    }

    #[test]
    fn a_proof_round_trips_and_verifies_and_every_change_is_refused() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let trusted = [VerifierKey::new("node-1", key.verifying_key())];
        let entries = log(13);
        for seq in [0, 6, 12] {
            let p = InclusionProof::parse(&proof_of(seq, &entries, &key).to_json()).unwrap();
            let got = p.verify(&trusted).unwrap();
            assert_eq!((got.seq, got.tree_size), (seq, 13));
            assert_eq!(got.signers, vec!["node-1".to_string()]);
        }
        let good = proof_of(6, &entries, &key);
        let mut bad = Vec::new();
        let mut p = good.clone();
        p.entry.intent = "changed".into();
        bad.push(("entry changed", p));
        let mut p = good.clone();
        p.entry = entries[7].clone();
        p.entry_hash = hex::encode(entries[7].hash());
        bad.push(("another entry", p));
        let mut p = good.clone();
        p.path[0] = hex::encode([0u8; 32]);
        bad.push(("path changed", p));
        let mut p = good.clone();
        p.path.pop();
        bad.push(("path cut", p));
        let mut p = good.clone();
        p.tree_size = 12;
        bad.push(("size changed", p));
        let mut p = good.clone();
        p.origin = "other".into();
        bad.push(("origin changed", p));
        let mut p = good.clone();
        p.entry_hash = p.entry_hash.to_uppercase();
        bad.push(("hash respelled", p));
        for (what, p) in bad {
            assert!(p.verify(&trusted).is_err(), "{what} verified");
        }
        // Another key, even under the same name, is not trusted.
        let other = [VerifierKey::new(
            "node-1",
            SigningKey::from_bytes(&[4; 32]).verifying_key(),
        )];
        assert!(good.verify(&other).is_err());
        // A field the format does not define is refused.
        let extra = good.to_json().replacen('{', "{\"note\":\"x\",", 1);
        assert!(InclusionProof::parse(&extra).is_err());
    }
}
