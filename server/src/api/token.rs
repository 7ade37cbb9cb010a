//! Bearer tokens: `glt1_<grant id: 32 hex>_<secret: 64 hex>`. The secret is
//! 256 random bits drawn by the leader; only its SHA-256 enters the log and
//! the state, so a copy of the data directory yields no usable token.

use rand::RngCore;
use sha2::{Digest, Sha256};

use super::errors::ApiError;
use super::validate;

const PREFIX: &str = "glt1_";

pub struct Minted {
    pub grant_id: String,
    pub token: String,
    pub token_hash: String,
}

/// Draw a grant id, and a secret unless the caller chose one (already
/// validated with [`validate_secret`]).
pub fn mint(caller_secret: Option<&str>) -> Minted {
    let mut rng = rand::rngs::OsRng;
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    let grant_id = hex::encode(id);
    let secret_hex = match caller_secret {
        Some(s) => s.to_string(),
        None => {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            hex::encode(secret)
        }
    };
    Minted {
        token: compose(&grant_id, &secret_hex),
        token_hash: hash_secret(&secret_hex),
        grant_id,
    }
}

pub fn compose(grant_id: &str, secret_hex: &str) -> String {
    format!("{PREFIX}{grant_id}_{secret_hex}")
}

pub fn hash_secret(secret_hex: &str) -> String {
    hex::encode(Sha256::digest(secret_hex.as_bytes()))
}

fn is_secret(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn validate_secret(s: &str) -> Result<(), ApiError> {
    if is_secret(s) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "token_secret",
            "must be 64 lowercase hex characters (256 random bits)",
        ))
    }
}

/// Split a presented token into (grant id, hash of its secret).
pub fn parse(token: &str) -> Result<(String, String), ApiError> {
    let bad = || {
        ApiError::invalid(
            "token",
            "not a grant-ledger token (glt1_<grant id>_<secret>)",
        )
    };
    let rest = token.strip_prefix(PREFIX).ok_or_else(bad)?;
    let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
    validate::grant_id("token", id).map_err(|_| bad())?;
    if secret.len() != 64
        || !secret
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad());
    }
    Ok((id.to_string(), hash_secret(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_parses_to_its_grant_and_hash() {
        let m = mint(None);
        let (id, h) = parse(&m.token).unwrap();
        assert_eq!(id, m.grant_id);
        assert_eq!(h, m.token_hash);
        assert!(!m.token.contains(&m.token_hash));
        assert!(m.token.len() <= crate::limits::TOKEN_BYTES_MAX);
    }

    #[test]
    fn caller_secret_gives_a_token_the_caller_can_rebuild() {
        let secret = "ab".repeat(32);
        let m = mint(Some(&secret));
        assert_eq!(m.token, compose(&m.grant_id, &secret));
        assert_eq!(parse(&m.token).unwrap().1, m.token_hash);
        assert!(validate_secret("short").is_err());
        assert!(validate_secret(&"AB".repeat(32)).is_err());
    }

    #[test]
    fn garbage_refused() {
        for t in [
            "",
            "glt1_",
            "glt1_abc_def",
            "xyz",
            &format!("glt1_{}_{}", "g".repeat(32), "0".repeat(64)),
        ] {
            assert!(parse(t).is_err(), "{t:?}");
        }
    }
}
