//! Witnessing (C2SP tlog-witness and tlog-cosignature): a party outside the
//! cluster keeps the last checkpoint it accepted for the log, and co-signs
//! a new one only if the new tree is consistent with it. A checkpoint that
//! carries the cosignatures of witnesses an auditor trusts was shown to
//! each of them as an extension of what they saw before: the log cannot
//! show one history to some and another to others (docs/audit-format.md,
//! "Witnesses").
//!
//! Cosignatures follow tlog-cosignature (cosignature/v1, Ed25519): the
//! signature line is `— <witness name> base64(key id || u64 timestamp ||
//! signature)`, the key id is SHA-256(name || "\n" || 0x04 || public
//! key)[:4], and the signed message is `cosignature/v1\ntime <seconds>\n`
//! followed by the checkpoint's whole body. A witness's verifier key is
//! written like a log key, with type byte 0x04.
//!
//! Pure: what to decide and what to sign. `grantctl audit witness` keeps
//! the state on disk and talks to the cluster.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle;
use super::note::{self, Checkpoint, NoteError, VerifierKey};
use super::Hash;

const COSIGNATURE_V1: u8 = 0x04;
const SIG_PREFIX: &str = "\u{2014} ";

/// A witness's public key: its name and Ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignerKey {
    pub name: String,
    pub key: VerifyingKey,
}

impl CosignerKey {
    pub fn id(&self) -> [u8; 4] {
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update(b"\n");
        h.update([COSIGNATURE_V1]);
        h.update(self.key.as_bytes());
        let d = h.finalize();
        [d[0], d[1], d[2], d[3]]
    }

    /// `<name>+<key id hex>+<base64(0x04 || key)>`.
    pub fn encode(&self) -> String {
        let mut k = vec![COSIGNATURE_V1];
        k.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex::encode(self.id()), B64.encode(k))
    }

    pub fn parse(s: &str) -> Result<CosignerKey, NoteError> {
        let bad = |m: &str| NoteError::BadKey(format!("{m}: {s:?}"));
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+keyid+key"));
        };
        let raw = B64.decode(key).map_err(|_| bad("key is not base64"))?;
        let Some((&COSIGNATURE_V1, rest)) = raw.split_first() else {
            return Err(bad("not a cosignature/v1 (0x04) Ed25519 key"));
        };
        let bytes: [u8; 32] = rest
            .try_into()
            .map_err(|_| bad("ed25519 keys are 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid ed25519 point"))?;
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
            return Err(bad("names are non-empty, without spaces or '+'"));
        }
        let k = CosignerKey {
            name: name.to_string(),
            key,
        };
        if hex::encode(k.id()) != id {
            return Err(bad("key id does not match name and key"));
        }
        Ok(k)
    }
}

/// The message a cosignature signs.
fn message(body: &str, time_s: u64) -> String {
    format!("cosignature/v1\ntime {time_s}\n{body}")
}

/// `note` with a cosignature line by `name` at `time_s` appended.
pub fn cosign(
    note_text: &str,
    name: &str,
    key: &SigningKey,
    time_s: u64,
) -> Result<String, NoteError> {
    let n = note::parse(note_text)?;
    let public = CosignerKey {
        name: name.to_string(),
        key: key.verifying_key(),
    };
    let sig = key.sign(message(&n.body, time_s).as_bytes());
    let mut blob = public.id().to_vec();
    blob.extend_from_slice(&time_s.to_be_bytes());
    blob.extend_from_slice(&sig.to_bytes());
    let mut out = note_text.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("{SIG_PREFIX}{name} {}\n", B64.encode(blob)));
    Ok(out)
}

/// The time of `witness`'s valid cosignature on `note_text`.
pub fn verify_cosignature(note_text: &str, witness: &CosignerKey) -> Result<u64, NoteError> {
    let n = note::parse(note_text)?;
    let id = witness.id();
    let (_, _, blob) = n
        .others
        .iter()
        .find(|(name, i, blob)| name == &witness.name && *i == id && blob.len() == 72)
        .ok_or(NoteError::Untrusted)?;
    let time_s = u64::from_be_bytes(blob[..8].try_into().expect("8 bytes"));
    let sig = Signature::from_bytes(blob[8..].try_into().expect("64 bytes"));
    witness
        .key
        .verify(message(&n.body, time_s).as_bytes(), &sig)
        .map_err(|_| NoteError::BadSignature(witness.name.clone()))?;
    Ok(time_s)
}

/// Why a witness will not co-sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the checkpoint is not signed by a trusted log key: {0}")]
    Untrusted(String),
    #[error("the checkpoint is of log {got:?}, the witness follows {want:?}")]
    Origin { want: String, got: String },
    #[error("the log went back from {seen} entries to {shown}: a rollback")]
    Rollback { seen: u64, shown: u64 },
    #[error("two roots for {size} entries: the log forked (seen {seen}, shown {shown})")]
    Fork {
        size: u64,
        seen: String,
        shown: String,
    },
    #[error("the tree of {shown} entries does not extend the {seen} the witness saw: the log forked or rewrote history")]
    Inconsistent { seen: u64, shown: u64 },
}

/// Decide whether `shown` (a checkpoint note, signed by a key in `trusted`)
/// extends `seen` (the last one this witness accepted, if any), with
/// `proof` the consistency proof from `seen`'s size to `shown`'s. On the
/// first look there is nothing to compare: the witness accepts what it is
/// shown (trust on first use) and holds the log to it from then on.
pub fn check(
    seen: Option<&Checkpoint>,
    origin: &str,
    shown: &str,
    trusted: &[VerifierKey],
    proof: &[Hash],
) -> Result<Checkpoint, Refusal> {
    let (cp, _) = note::verify(shown, trusted).map_err(|e| Refusal::Untrusted(e.to_string()))?;
    if cp.origin != origin {
        return Err(Refusal::Origin {
            want: origin.to_string(),
            got: cp.origin,
        });
    }
    let Some(seen) = seen else {
        return Ok(cp);
    };
    if cp.size < seen.size {
        return Err(Refusal::Rollback {
            seen: seen.size,
            shown: cp.size,
        });
    }
    if cp.size == seen.size {
        if cp.root != seen.root {
            return Err(Refusal::Fork {
                size: cp.size,
                seen: B64.encode(seen.root),
                shown: B64.encode(cp.root),
            });
        }
        return Ok(cp);
    }
    if !merkle::verify_consistency(seen.size, cp.size, &seen.root, &cp.root, proof) {
        return Err(Refusal::Inconsistent {
            seen: seen.size,
            shown: cp.size,
        });
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::note::sign;

    fn leaves(n: u64, salt: u8) -> Vec<Hash> {
        (0..n)
            .map(|i| merkle::leaf_hash(&[salt, i as u8]))
            .collect()
    }

    fn note_of(leaves: &[Hash], key: &SigningKey) -> (String, Checkpoint) {
        let cp = Checkpoint {
            origin: "grant-ledger/test".into(),
            size: leaves.len() as u64,
            root: merkle::root(leaves),
            time_ms: 9,
        };
        (sign(&cp, "grant-ledger-node-1", key), cp)
    }

    #[test]
    fn a_witness_cosigns_what_extends_what_it_saw_and_refuses_forks() {
        let log = SigningKey::from_bytes(&[1; 32]);
        let trusted = [VerifierKey::new("grant-ledger-node-1", log.verifying_key())];
        let origin = "grant-ledger/test";
        let history = leaves(20, 0);
        let (n10, cp10) = note_of(&history[..10], &log);
        // First look: accepted.
        assert_eq!(check(None, origin, &n10, &trusted, &[]).unwrap(), cp10);
        // Grown, with a good proof: accepted.
        let (n20, cp20) = note_of(&history, &log);
        let proof = merkle::consistency_proof(10, &history);
        assert_eq!(
            check(Some(&cp10), origin, &n20, &trusted, &proof).unwrap(),
            cp20
        );
        // The same checkpoint again: accepted.
        assert!(check(Some(&cp20), origin, &n20, &trusted, &[]).is_ok());
        // Another history of the same size, signed by the log's own key.
        let other = leaves(20, 1);
        let (forked, _) = note_of(&other, &log);
        assert!(matches!(
            check(Some(&cp20), origin, &forked, &trusted, &[]),
            Err(Refusal::Fork { size: 20, .. })
        ));
        // A longer other history: no proof makes it extend what was seen.
        let longer = leaves(30, 1);
        let (n30, _) = note_of(&longer, &log);
        let proof = merkle::consistency_proof(20, &longer);
        assert!(matches!(
            check(Some(&cp20), origin, &n30, &trusted, &proof),
            Err(Refusal::Inconsistent {
                seen: 20,
                shown: 30
            })
        ));
        // Back to an older size.
        assert!(matches!(
            check(Some(&cp20), origin, &n10, &trusted, &[]),
            Err(Refusal::Rollback {
                seen: 20,
                shown: 10
            })
        ));
        // Not signed by the log.
        let (stranger, _) = note_of(&history, &SigningKey::from_bytes(&[2; 32]));
        assert!(matches!(
            check(Some(&cp10), origin, &stranger, &trusted, &[]),
            Err(Refusal::Untrusted(_))
        ));
    }

    #[test]
    fn cosignatures_verify_and_leave_the_log_signature_readable() {
        let log = SigningKey::from_bytes(&[1; 32]);
        let trusted = [VerifierKey::new("grant-ledger-node-1", log.verifying_key())];
        let (n, cp) = note_of(&leaves(5, 0), &log);
        let w = SigningKey::from_bytes(&[7; 32]);
        let wk = CosignerKey {
            name: "witness.example.org/w1".into(),
            key: w.verifying_key(),
        };
        assert_eq!(CosignerKey::parse(&wk.encode()).unwrap(), wk);
        let cosigned = cosign(&n, &wk.name, &w, 1_700_000_000).unwrap();
        assert_eq!(verify_cosignature(&cosigned, &wk), Ok(1_700_000_000));
        // The log's own signature still verifies on the cosigned note.
        assert_eq!(note::verify(&cosigned, &trusted).unwrap().0, cp);
        // Another witness key, or another body, does not verify.
        let other = CosignerKey {
            name: wk.name.clone(),
            key: SigningKey::from_bytes(&[8; 32]).verifying_key(),
        };
        assert!(verify_cosignature(&cosigned, &other).is_err());
        let moved = cosigned.replacen("\n5\n", "\n6\n", 1);
        assert!(verify_cosignature(&moved, &wk).is_err());
        // A log key is not a witness key.
        assert!(CosignerKey::parse(&trusted[0].encode()).is_err());
    }
}
