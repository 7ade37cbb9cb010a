//! Grant tokens: JWT access tokens (RFC 9068 profile) signed with EdDSA by
//! the node that hands them out, verifiable offline with the cluster's
//! JWKS. `jti` is the grant id, `sub` the grant's subject, `aud` the
//! resources of its scopes, `scope` its `resource:action` pairs,
//! `client_id` the issuer, `task_id` its task.
//!
//! Check verifies the signature against the token keys in the replicated
//! state and then asks the ledger, which stays authoritative (revocation,
//! expiry, subject, scope). The cluster keeps only the SHA-256 of the token
//! it first handed out (in the grant record), never the token.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::errors::ApiError;
use super::validate;
use crate::audit::keys::TokenKey;
use crate::ledger::Scope;
use crate::limits::{TOKEN_BYTES_MAX, VERIFIED_TOKENS_CACHED_MAX};
use crate::storage::StateReader;

/// The JOSE `typ` of an RFC 9068 access token.
pub const TYP: &str = "at+jwt";

/// The claims of a grant token.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    pub task_id: String,
}

impl Claims {
    /// The claims of a grant, times in milliseconds as stored.
    #[allow(clippy::too_many_arguments)]
    pub fn of(
        iss: &str,
        grant_id: &str,
        subject: &str,
        task_id: &str,
        scopes: &[Scope],
        issuer: &str,
        issued_at_ms: i64,
        expires_at_ms: i64,
    ) -> Claims {
        let mut aud: Vec<String> = scopes.iter().map(|s| s.resource.clone()).collect();
        aud.dedup();
        let scope = scopes
            .iter()
            .flat_map(|s| s.actions.iter().map(move |a| format!("{}:{a}", s.resource)))
            .collect::<Vec<_>>()
            .join(" ");
        Claims {
            iss: iss.to_string(),
            sub: subject.to_string(),
            aud,
            exp: expires_at_ms.div_euclid(1000),
            iat: issued_at_ms.div_euclid(1000),
            jti: grant_id.to_string(),
            client_id: issuer.to_string(),
            scope,
            task_id: task_id.to_string(),
        }
    }
}

/// A signed token and the hash the grant record keeps of it.
pub struct Minted {
    pub token: String,
    pub token_hash: String,
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Sign `claims` with `key`. Refused if the token would exceed
/// `TOKEN_BYTES_MAX` (a grant with very many or very long scopes).
pub fn mint(key: &TokenKey, claims: &Claims) -> Result<Minted, ApiError> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(TYP.into());
    header.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(&header, claims, &key.encoding)
        .map_err(|e| ApiError::Internal(format!("token signing: {e}")))?;
    if token.len() > TOKEN_BYTES_MAX {
        return Err(ApiError::invalid(
            "scopes",
            format!(
                "the grant's token would be {} bytes, over {TOKEN_BYTES_MAX}",
                token.len()
            ),
        ));
    }
    Ok(Minted {
        token_hash: hash(&token),
        token,
    })
}

/// What Check learns from a presented token before asking the ledger.
#[derive(Debug, PartialEq)]
pub enum Presented {
    /// The signature verifies with a cluster token key: the grant it names,
    /// and the token's expiry (`exp`, in ms).
    Valid {
        grant_id: String,
        expires_at_ms: i64,
    },
    /// A JWT, but not one the cluster signed (tampered, foreign key, unknown
    /// key id, wrong algorithm): denied as BadToken.
    Forged,
}

/// Verifies tokens against the token keys in the replicated state. Keys
/// are cached by key id (a key id is the thumbprint of its key, so a cached
/// entry never goes stale), and so are tokens that verified.
#[derive(Clone)]
pub struct Verifier {
    state: StateReader,
    cache: Arc<RwLock<HashMap<String, Arc<DecodingKey>>>>,
    verified: Arc<VerifiedTokens>,
}

impl Verifier {
    pub fn new(state: StateReader) -> Verifier {
        Verifier {
            state,
            cache: Default::default(),
            verified: Arc::new(VerifiedTokens::new(VERIFIED_TOKENS_CACHED_MAX)),
        }
    }

    fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        if let Some(k) = self.cache.read().expect("key cache").get(kid) {
            return Some(k.clone());
        }
        let x = self.state.token_key(kid).ok()??;
        let k = Arc::new(DecodingKey::from_ed_components(&x).ok()?);
        let mut c = self.cache.write().expect("key cache");
        if c.len() >= crate::limits::KEY_CACHE_MAX {
            c.clear();
        }
        c.insert(kid.to_string(), k.clone());
        Some(k)
    }

    /// Check a presented token against the cluster's keys ([`check`]).
    pub fn check(&self, token: &str) -> Result<Presented, ApiError> {
        self.verified.check(token, |kid| self.key(kid))
    }
}

/// Tokens whose signature verified, by SHA-256 of the token, with the grant
/// each names. A tool server checks the same token many times, and the
/// signature is the largest cost of a Check on the node (bench/HISTORY.md).
/// Whether a token verifies depends on the token and its key alone, and a
/// published key is never withdrawn, so a remembered result never goes
/// stale; expiry, revocation and scope are still the ledger's, at every
/// Check. Only verified tokens are kept: a token whose key id is unknown
/// here may verify once its key is applied.
struct VerifiedTokens {
    /// Token hash -> (grant id, expiry in ms).
    map: RwLock<HashMap<[u8; 32], (String, i64)>>,
    max: usize,
}

impl VerifiedTokens {
    fn new(max: usize) -> VerifiedTokens {
        VerifiedTokens {
            map: Default::default(),
            max,
        }
    }

    fn check(
        &self,
        token: &str,
        key_of: impl Fn(&str) -> Option<Arc<DecodingKey>>,
    ) -> Result<Presented, ApiError> {
        if token.len() > TOKEN_BYTES_MAX {
            return check(token, key_of);
        }
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((grant_id, expires_at_ms)) = self.map.read().expect("token cache").get(&h) {
            return Ok(Presented::Valid {
                grant_id: grant_id.clone(),
                expires_at_ms: *expires_at_ms,
            });
        }
        let presented = check(token, key_of)?;
        if let Presented::Valid {
            grant_id,
            expires_at_ms,
        } = &presented
        {
            let mut m = self.map.write().expect("token cache");
            if m.len() >= self.max {
                m.clear();
            }
            m.insert(h, (grant_id.clone(), *expires_at_ms));
        }
        Ok(presented)
    }
}

/// Check a presented token, `key_of` giving the verification key of a key
/// id. Not a JWT at all, or over the size limit: InvalidArgument (not
/// recorded). Signature: verified here. Expiry, revocation, subject and
/// scope: the ledger's to decide.
pub fn check(
    token: &str,
    key_of: impl Fn(&str) -> Option<Arc<DecodingKey>>,
) -> Result<Presented, ApiError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(ApiError::invalid(
            "token",
            format!("longer than {TOKEN_BYTES_MAX} bytes"),
        ));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| {
        ApiError::invalid(
            "token",
            "not a grant token (a JWT: header.payload.signature)",
        )
    })?;
    let Some(kid) = header.kid.filter(|_| header.alg == Algorithm::EdDSA) else {
        return Ok(Presented::Forged);
    };
    let Some(key) = key_of(&kid) else {
        return Ok(Presented::Forged);
    };
    let mut v = Validation::new(Algorithm::EdDSA);
    // The ledger decides expiry (at leader time) and scope.
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    match jsonwebtoken::decode::<Claims>(token, &key, &v) {
        Ok(d) if validate::grant_id("jti", &d.claims.jti).is_ok() => Ok(Presented::Valid {
            grant_id: d.claims.jti,
            expires_at_ms: d.claims.exp.saturating_mul(1000),
        }),
        _ => Ok(Presented::Forged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims::of(
            "grant-ledger",
            &"ab".repeat(16),
            "spiffe://example.org/agent/a",
            "t1",
            &[Scope {
                resource: "github".into(),
                actions: vec!["read".into(), "comment".into()],
            }],
            "spiffe://example.org/orchestrator",
            1_700_000_000_123,
            1_700_000_300_123,
        )
    }

    #[test]
    fn claims_follow_the_access_token_profile() {
        let c = claims();
        assert_eq!(c.aud, vec!["github"]);
        assert_eq!(c.scope, "github:read github:comment");
        assert_eq!((c.iat, c.exp), (1_700_000_000, 1_700_000_300));
    }

    #[test]
    fn a_minted_token_verifies_with_its_jwk_and_not_with_another() {
        let key = TokenKey::from_seed(&[7; 32]);
        let other = TokenKey::from_seed(&[8; 32]);
        let m = mint(&key, &claims()).unwrap();
        assert_eq!(m.token_hash, hash(&m.token));
        let h = jsonwebtoken::decode_header(&m.token).unwrap();
        assert_eq!(h.typ.as_deref(), Some(TYP));
        assert_eq!(h.kid.as_deref(), Some(key.kid.as_str()));
        let mut v = Validation::new(Algorithm::EdDSA);
        v.validate_exp = false;
        v.set_audience(&["github"]);
        let ok = DecodingKey::from_ed_components(&key.x).unwrap();
        let d = jsonwebtoken::decode::<Claims>(&m.token, &ok, &v).unwrap();
        assert_eq!(d.claims, claims());
        let wrong = DecodingKey::from_ed_components(&other.x).unwrap();
        assert!(jsonwebtoken::decode::<Claims>(&m.token, &wrong, &v).is_err());
    }
    /// A verified token is remembered; a tampered copy of it, a token whose
    /// key is not known yet, and the bound are not fooled by that.
    #[test]
    fn verified_tokens_are_remembered_and_nothing_else() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let key = TokenKey::from_seed(&[7; 32]);
        let dk = Arc::new(DecodingKey::from_ed_components(&key.x).unwrap());
        let lookups = AtomicUsize::new(0);
        let known = |kid: &str| {
            lookups.fetch_add(1, Ordering::Relaxed);
            (kid == key.kid).then(|| dk.clone())
        };
        let cache = VerifiedTokens::new(2);
        let m = mint(&key, &claims()).unwrap();
        let valid = Presented::Valid {
            grant_id: "ab".repeat(16),
            // `exp` is in whole seconds.
            expires_at_ms: 1_700_000_300_000,
        };
        // Unknown key id: forged, and not remembered.
        assert_eq!(cache.check(&m.token, |_| None).unwrap(), Presented::Forged);
        assert_eq!(cache.check(&m.token, known).unwrap(), valid);
        assert_eq!(lookups.load(Ordering::Relaxed), 1);
        assert_eq!(cache.check(&m.token, known).unwrap(), valid);
        assert_eq!(lookups.load(Ordering::Relaxed), 1, "verified again");
        // The same claims under a changed signature.
        let mut tampered = m.token.clone().into_bytes();
        let i = tampered.len() - 10; // inside the signature
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(cache.check(&tampered, known).unwrap(), Presented::Forged);
        // Bounded: a third token starts the cache over.
        for i in 0..3u8 {
            let mut c = claims();
            c.jti = format!("{i:02}").repeat(16);
            let t = mint(&key, &c).unwrap().token;
            assert!(matches!(
                cache.check(&t, known).unwrap(),
                Presented::Valid { .. }
            ));
            assert!(cache.map.read().unwrap().len() <= 2);
        }
    }
}
