//! This node's ed25519 signing key: generated on first start into
//! `<data_dir>/node.key` (mode 0600, 32 raw bytes), loaded afterwards.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::SigningKey;
use grant_proto::audit::note::VerifierKey;

pub const KEY_FILE: &str = "node.key";

pub struct NodeKey {
    pub name: String,
    pub signing: SigningKey,
    /// The key this node signs grant tokens with, derived from `signing`
    /// (one secret to keep and rotate, two keys that never sign each
    /// other's messages).
    pub token: TokenKey,
}

/// An Ed25519 token signing key with its public JWK parts.
pub struct TokenKey {
    /// RFC 7638 thumbprint of the public JWK: the JOSE `kid`.
    pub kid: String,
    /// The public key, base64url (the JWK's `x`).
    pub x: String,
    pub encoding: jsonwebtoken::EncodingKey,
}

impl TokenKey {
    pub fn from_seed(seed: &[u8; 32]) -> TokenKey {
        use base64::Engine;
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        use sha2::Digest;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = SigningKey::from_bytes(seed);
        let x = b64.encode(key.verifying_key().as_bytes());
        let thumb = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = b64.encode(sha2::Sha256::digest(thumb.as_bytes()));
        let der = key
            .to_pkcs8_der()
            .expect("an Ed25519 key encodes as PKCS#8");
        TokenKey {
            kid,
            x,
            encoding: jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
        }
    }

    /// Derived from a node's checkpoint signing key.
    fn derive(signing: &SigningKey) -> TokenKey {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"grant-ledger token key v1\0");
        h.update(signing.as_bytes());
        TokenKey::from_seed(&h.finalize().into())
    }
}

impl NodeKey {
    pub fn new(name: String, signing: SigningKey) -> NodeKey {
        NodeKey {
            token: TokenKey::derive(&signing),
            name,
            signing,
        }
    }

    pub fn verifier(&self) -> VerifierKey {
        VerifierKey::new(&self.name, self.signing.verifying_key())
    }
}

/// The key in use, shared by the publisher and the rotate call.
pub type SharedKey = std::sync::Arc<std::sync::RwLock<std::sync::Arc<NodeKey>>>;

pub fn current(k: &SharedKey) -> std::sync::Arc<NodeKey> {
    k.read().expect("node key lock").clone()
}

/// Generate a new key and make it this node's: the old file is kept as
/// `node.key.retired-<ms>`, the new one written and renamed into place.
pub fn rotate(data_dir: &Path, node_id: u64, shared: &SharedKey) -> io::Result<(NodeKey, NodeKey)> {
    let mut guard = shared.write().expect("node key lock");
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let tmp = write_private(data_dir, &key)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    std::fs::rename(
        data_dir.join(KEY_FILE),
        data_dir.join(format!("{KEY_FILE}.retired-{stamp}")),
    )?;
    std::fs::rename(&tmp, data_dir.join(KEY_FILE))?;
    crate::storage::sync_dir(data_dir)?;
    let new = NodeKey::new(key_name(node_id), key);
    let old = std::mem::replace(
        &mut *guard,
        std::sync::Arc::new(NodeKey::new(new.name.clone(), new.signing.clone())),
    );
    tracing::info!(new = %new.verifier().encode(), "node signing key rotated");
    Ok((NodeKey::new(old.name.clone(), old.signing.clone()), new))
}

/// Write a key to `node.key.tmp`, readable by its owner only, and sync it;
/// the caller renames it into place.
fn write_private(data_dir: &Path, key: &SigningKey) -> io::Result<std::path::PathBuf> {
    let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    Ok(tmp)
}

/// The name a node's keys carry in checkpoints and the roster.
pub fn key_name(node_id: u64) -> String {
    format!("grant-ledger-node-{node_id}")
}

pub fn load_or_create(data_dir: &Path, node_id: u64) -> io::Result<NodeKey> {
    let path = data_dir.join(KEY_FILE);
    let signing = match std::fs::read(&path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is readable by others (mode {mode:o}); chmod 600 it",
                        path.display()
                    ),
                ));
            }
            let raw: [u8; 32] = bytes.try_into().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a 32-byte key", path.display()),
                )
            })?;
            SigningKey::from_bytes(&raw)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let tmp = write_private(data_dir, &key)?;
            std::fs::rename(&tmp, &path)?;
            crate::storage::sync_dir(data_dir)?;
            tracing::info!(path = %path.display(), "generated node signing key");
            key
        }
        Err(e) => return Err(e),
    };
    Ok(NodeKey::new(key_name(node_id), signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_and_reloaded() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create(d.path(), 3).unwrap();
        let mode = std::fs::metadata(d.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(d.path(), 3).unwrap();
        assert_eq!(a.signing.to_bytes(), b.signing.to_bytes());
        assert_eq!(a.name, "grant-ledger-node-3");
        std::fs::set_permissions(
            d.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(load_or_create(d.path(), 3).is_err());
    }
}
