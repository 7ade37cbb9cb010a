//! JWT bearer authentication, for callers that present a JWT (a JWT-SVID,
//! or an OIDC token whose `sub` is a SPIFFE ID) instead of a client
//! certificate: verified against a configured JWKS file, issuer and
//! audience, with expiry enforced. The identity is the `sub` claim; the
//! auth layer then treats it like a certificate's SPIFFE ID.

use std::path::PathBuf;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::limits::BEARER_TOKEN_BYTES_MAX;

/// The `[jwt_auth]` table of the config file.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthConfig {
    /// JWKS document (RFC 7517) with the issuer's public keys. Relative
    /// paths are found beside the config file.
    pub jwks_file: PathBuf,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must include (this cluster's name to the issuer).
    pub audience: String,
}

pub struct BearerAuth {
    keys: JwkSet,
    issuer: String,
    audience: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Asymmetric algorithms only: a shared-secret (HS*) token could be made by
/// anyone holding the "key" published in a JWKS.
fn asymmetric(a: Algorithm) -> bool {
    !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl BearerAuth {
    pub fn load(c: &JwtAuthConfig) -> Result<BearerAuth, String> {
        let at = |e: String| format!("jwt_auth.jwks_file {}: {e}", c.jwks_file.display());
        let text = std::fs::read_to_string(&c.jwks_file).map_err(|e| at(e.to_string()))?;
        let keys: JwkSet = serde_json::from_str(&text).map_err(|e| at(e.to_string()))?;
        BearerAuth::new(keys, &c.issuer, &c.audience).map_err(at)
    }

    /// From a parsed JWKS: every key must have a `kid` and be usable.
    pub fn new(keys: JwkSet, issuer: &str, audience: &str) -> Result<BearerAuth, String> {
        if keys.keys.is_empty() {
            return Err("holds no key".into());
        }
        for k in &keys.keys {
            if k.common.key_id.is_none() {
                return Err("every key needs a kid".into());
            }
            DecodingKey::from_jwk(k).map_err(|e| e.to_string())?;
        }
        Ok(BearerAuth {
            keys,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
        })
    }

    /// The caller named by an `authorization` header value, or why not.
    pub fn identify(&self, authorization: &str) -> Result<String, String> {
        let token = authorization
            .strip_prefix("Bearer ")
            .ok_or("the authorization header is not `Bearer <token>`")?;
        if token.len() > BEARER_TOKEN_BYTES_MAX {
            return Err(format!(
                "bearer token longer than {BEARER_TOKEN_BYTES_MAX} bytes"
            ));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("bearer token: {e}"))?;
        if !asymmetric(header.alg) {
            return Err(format!(
                "bearer token: algorithm {:?} is not accepted",
                header.alg
            ));
        }
        let kid = header.kid.ok_or("bearer token: no kid in its header")?;
        let jwk = self
            .keys
            .find(&kid)
            .ok_or_else(|| format!("bearer token: key {kid:?} is not in the JWKS"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bearer token: {e}"))?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        // Expiry is enforced as written; a few seconds of clock skew at most.
        v.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| format!("bearer token: {e}"))?;
        Ok(data.claims.sub)
    }
}
