//! Checkpoints as C2SP signed notes (tlog-checkpoint), signed with ed25519.
//!
//! Body:
//! ```text
//! <origin>
//! <tree size, decimal>
//! <root hash, base64>
//! timestamp <milliseconds since the Unix epoch>
//! ```
//! then an empty line and one signature line per signer:
//! `— <key name> <base64(key id (4 bytes) || ed25519 signature (64 bytes))>`.
//! The key id is the first 4 bytes of SHA-256(name || "\n" || 0x01 || public key),
//! and a verifier key is written `<name>+<key id, hex>+<base64(0x01 || public key)>`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::Hash;

const ED25519_ALG: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("malformed verifier key: {0}")]
    BadKey(String),
    #[error("no signature by a trusted key")]
    Untrusted,
    #[error("signature by {0} does not verify")]
    BadSignature(String),
}

/// The signed statement: this log, at this size, has this root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub time_ms: i64,
}

impl Checkpoint {
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntimestamp {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            self.time_ms
        )
    }

    fn parse_body(body: &str) -> Result<Checkpoint, NoteError> {
        let bad = |m: &str| NoteError::Malformed(m.to_string());
        let mut lines = body
            .strip_suffix('\n')
            .ok_or_else(|| bad("body must end with a newline"))?
            .split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin"))?
            .to_string();
        let size = lines
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no tree size"))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <Hash>::try_from(r).ok())
            .ok_or_else(|| bad("no root hash"))?;
        let time_ms = lines
            .next()
            .and_then(|t| t.strip_prefix("timestamp "))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("no timestamp line"))?;
        Ok(Checkpoint {
            origin,
            size,
            root,
            time_ms,
        })
    }
}

/// A named ed25519 public key, as a verifier holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    pub key: VerifyingKey,
}

pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519_ALG]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

impl VerifierKey {
    pub fn new(name: &str, key: VerifyingKey) -> VerifierKey {
        VerifierKey {
            name: name.to_string(),
            key,
        }
    }

    pub fn id(&self) -> [u8; 4] {
        key_id(&self.name, &self.key)
    }

    /// `<name>+<key id hex>+<base64(0x01 || key)>`
    pub fn encode(&self) -> String {
        let mut k = vec![ED25519_ALG];
        k.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex::encode(self.id()), B64.encode(k))
    }

    pub fn parse(s: &str) -> Result<VerifierKey, NoteError> {
        let bad = |m: &str| NoteError::BadKey(format!("{m}: {s:?}"));
        // The base64 key may itself contain '+': split off the name and the
        // key id only.
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected name+keyid+key"));
        };
        let raw = B64.decode(key).map_err(|_| bad("key is not base64"))?;
        let (&alg, rest) = raw.split_first().ok_or_else(|| bad("empty key"))?;
        if alg != ED25519_ALG {
            return Err(bad("not an ed25519 key"));
        }
        let bytes: [u8; 32] = rest
            .try_into()
            .map_err(|_| bad("ed25519 keys are 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid ed25519 point"))?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad("key names are non-empty and have no spaces"));
        }
        let vk = VerifierKey::new(name, key);
        if hex::encode(vk.id()) != id {
            return Err(bad("key id does not match name and key"));
        }
        Ok(vk)
    }
}

/// Sign a checkpoint: the note text with one signature line.
pub fn sign(c: &Checkpoint, name: &str, key: &SigningKey) -> String {
    let body = c.body();
    let sig = key.sign(body.as_bytes());
    let mut blob = key_id(name, &key.verifying_key()).to_vec();
    blob.extend_from_slice(&sig.to_bytes());
    format!("{body}\n{SIG_PREFIX}{name} {}\n", B64.encode(blob))
}

/// A parsed note: the checkpoint and its signature lines (name, key id, signature).
pub struct SignedNote {
    pub checkpoint: Checkpoint,
    pub body: String,
    pub signatures: Vec<(String, [u8; 4], Signature)>,
    /// Signature lines of other lengths (cosignatures): name, key id, the
    /// rest of the blob.
    pub others: Vec<(String, [u8; 4], Vec<u8>)>,
}

pub fn parse(note: &str) -> Result<SignedNote, NoteError> {
    let bad = |m: &str| NoteError::Malformed(m.to_string());
    let (body, sigs) = note
        .split_once("\n\n")
        .ok_or_else(|| bad("no blank line before the signatures"))?;
    let body = format!("{body}\n");
    let checkpoint = Checkpoint::parse_body(&body)?;
    let mut signatures = Vec::new();
    let mut others = Vec::new();
    for line in sigs.lines() {
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| bad("signature line must start with an em dash"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| bad("signature line needs a name and a signature"))?;
        let blob = B64
            .decode(b64)
            .map_err(|_| bad("signature is not base64"))?;
        if blob.len() < 4 {
            return Err(bad("a signature line carries a 4-byte key id first"));
        }
        let id: [u8; 4] = blob[..4].try_into().unwrap();
        match blob.len() {
            68 => {
                let sig = Signature::from_bytes(blob[4..].try_into().unwrap());
                signatures.push((name.to_string(), id, sig));
            }
            // Another kind of signature (a witness's cosignature): not a
            // log key's; a verifier that knows its key reads it.
            _ => others.push((name.to_string(), id, blob[4..].to_vec())),
        }
    }
    if signatures.is_empty() && others.is_empty() {
        return Err(bad("no signature lines"));
    }
    Ok(SignedNote {
        checkpoint,
        body,
        signatures,
        others,
    })
}

/// Verify a note against trusted keys: at least one signature must be by a
/// trusted key (matching name and key id), and every such signature must
/// verify. Returns the checkpoint and the trusted keys that signed it.
pub fn verify(
    note: &str,
    trusted: &[VerifierKey],
) -> Result<(Checkpoint, Vec<VerifierKey>), NoteError> {
    let n = parse(note)?;
    let mut signers: Vec<VerifierKey> = Vec::new();
    for (name, id, sig) in &n.signatures {
        let Some(k) = trusted.iter().find(|k| &k.name == name && &k.id() == id) else {
            continue;
        };
        k.key
            .verify(n.body.as_bytes(), sig)
            .map_err(|_| NoteError::BadSignature(name.clone()))?;
        if !signers.contains(k) {
            signers.push(k.clone());
        }
    }
    if signers.is_empty() {
        return Err(NoteError::Untrusted);
    }
    Ok((n.checkpoint, signers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn verifier_keys_round_trip_whatever_their_base64_holds() {
        // Enough keys that some encodings contain '+' and '/'.
        let mut saw_plus = false;
        for seed in 0..64u8 {
            let vk = VerifierKey::new("grant-ledger-node-1", key(seed).verifying_key());
            let text = vk.encode();
            saw_plus |= text.rsplit('+').next().is_some() && text.matches('+').count() > 2;
            assert_eq!(VerifierKey::parse(&text).unwrap(), vk, "{text}");
        }
        assert!(saw_plus, "no key with '+' in its base64 was tried");
        assert!(VerifierKey::parse("a+00000000+AAAA").is_err());
    }

    #[test]
    fn sign_then_verify_and_refuse_others() {
        let c = Checkpoint {
            origin: "grant-ledger/test".into(),
            size: 7,
            root: [9; 32],
            time_ms: 1234,
        };
        let k = key(1);
        let vk = VerifierKey::new("node-1", k.verifying_key());
        let note = sign(&c, "node-1", &k);
        assert_eq!(VerifierKey::parse(&vk.encode()).unwrap(), vk);
        let (got, signers) = verify(&note, std::slice::from_ref(&vk)).unwrap();
        assert_eq!(got, c);
        assert_eq!(signers, vec![vk.clone()]);
        // Another key, even under the same name, is not trusted.
        let other = VerifierKey::new("node-1", key(2).verifying_key());
        assert_eq!(verify(&note, &[other]).unwrap_err(), NoteError::Untrusted);
        // A changed body fails the signature.
        let tampered = note.replacen("\n7\n", "\n8\n", 1);
        assert_eq!(
            verify(&tampered, &[vk]).unwrap_err(),
            NoteError::BadSignature("node-1".into())
        );
    }
}
