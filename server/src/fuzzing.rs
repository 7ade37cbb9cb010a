//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz, on nightly)
//! and for the test that replays their corpora on stable
//! (`server/tests/fuzz_corpus.rs`). Each takes arbitrary bytes and must not
//! panic; where an input is accepted, what it says must hold together.

use std::sync::{Arc, LazyLock};

use jsonwebtoken::DecodingKey;

use crate::api::token::{self, Presented};
use crate::api::validate;
use crate::audit::keys::TokenKey;
use crate::auth::bearer::BearerAuth;
use crate::auth::roles::{check_replicated, to_replicated, Pattern, RoleMap, RolesConfig};
use crate::ledger::Scope;

/// The one token key the fuzzed cluster knows (kid and decoding key).
static CLUSTER_KEY: LazyLock<(String, Arc<DecodingKey>)> = LazyLock::new(|| {
    let k = TokenKey::from_seed(&[42; 32]);
    let d = DecodingKey::from_ed_components(&k.x).expect("a fresh key decodes");
    (k.kid, Arc::new(d))
});

/// An identity provider for bearer tokens, with the same key.
static IDP: LazyLock<BearerAuth> = LazyLock::new(|| {
    let k = TokenKey::from_seed(&[42; 32]);
    let jwks = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": "idp", "alg": "EdDSA"
    }]});
    BearerAuth::new(
        serde_json::from_value(jwks).expect("a JWKS"),
        "https://idp.example.org",
        "grant-ledger",
    )
    .expect("a usable JWKS")
});

/// A presented grant token, and the same text as a bearer token.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (kid, key) = &*CLUSTER_KEY;
    let r = token::check(text, |k| (k == kid).then(|| key.clone()));
    if let Ok(Presented::Valid { grant_id, .. }) = r {
        assert!(validate::grant_id("jti", &grant_id).is_ok(), "{grant_id:?}");
    }
    let _ = IDP.identify(text);
    let _ = IDP.identify(&format!("Bearer {text}"));
}

/// Request fields (one per line: SPIFFE ID, request id, name, text, grant
/// id, pattern, member, scopes as `res=a,b;res=c`), and the whole input
/// as a role mapping in TOML.
pub fn request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let fields: Vec<&str> = text.split('\n').collect();
    let f = |i: usize| fields.get(i).copied().unwrap_or("");
    let id = f(0);
    if validate::spiffe_id("s", id).is_ok() {
        let td = grant_proto::tls::trust_domain_of(id).expect("a valid ID has a trust domain");
        let whole = Pattern::parse(&format!("spiffe://{td}/*")).expect("its trust domain");
        assert!(whole.matches(id), "{id:?} outside its own trust domain");
        let exact = Pattern::parse(id).expect("a valid ID is a pattern");
        assert!(exact.matches(id));
    }
    let _ = validate::request_id(f(1));
    let _ = validate::name("name", f(2), 256);
    let _ = validate::text("text", f(3), 1024);
    let _ = validate::grant_id("grant_id", f(4));
    if let Ok(p) = Pattern::parse(f(5)) {
        let _ = p.matches(id);
    }
    let _ = grant_proto::v1::Node::parse_member(f(6));
    let scopes: Vec<Scope> = f(7)
        .split(';')
        .filter_map(|s| s.split_once('='))
        .map(|(r, a)| Scope {
            resource: r.into(),
            actions: a.split(',').map(Into::into).collect(),
        })
        .collect();
    let _ = validate::scopes(&scopes);
    // A mapping accepted here survives its trip through the log unchanged.
    if let Ok(rc) = toml::from_str::<RolesConfig>(text) {
        if RoleMap::from_config(&rc).is_ok() && rc.peer.is_empty() {
            let json = to_replicated(&rc);
            if json.len() <= crate::limits::ROLES_JSON_BYTES_MAX {
                let back = check_replicated(&json).expect("a valid mapping replicates");
                assert_eq!(back, rc);
            }
        }
    }
    let _ = check_replicated(text);
}

/// Well-formed inputs for the token target: a grant token signed with the
/// fuzzed cluster's key and a bearer token from its identity provider (the
/// corpus starts from them; the corpus test checks they are accepted).
pub fn seed_tokens() -> (String, String) {
    let k = TokenKey::from_seed(&[42; 32]);
    let claims = token::Claims::of(
        "grant-ledger",
        &"0f".repeat(16),
        "spiffe://example.org/agent/planner",
        "t1",
        &[Scope {
            resource: "github".into(),
            actions: vec!["read".into()],
        }],
        "spiffe://example.org/orchestrator",
        1_800_000_000_000,
        4_000_000_000_000,
    );
    let grant = token::mint(&k, &claims).expect("a small grant mints").token;
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some("idp".into());
    let bearer = jsonwebtoken::encode(
        &h,
        &serde_json::json!({
            "sub": "spiffe://example.org/orchestrator",
            "iss": "https://idp.example.org",
            "aud": "grant-ledger",
            "exp": 4_000_000_000i64,
        }),
        &k.encoding,
    )
    .expect("signs");
    (grant, bearer)
}

/// Whether the fuzzed cluster accepts `token` as a grant token, and the
/// identity provider `bearer` as a bearer token (for the corpus test).
pub fn accepted(token: &str, bearer: &str) -> (bool, bool) {
    let (kid, key) = &*CLUSTER_KEY;
    let t = matches!(
        token::check(token, |k| (k == kid).then(|| key.clone())),
        Ok(Presented::Valid { .. })
    );
    (t, IDP.identify(&format!("Bearer {bearer}")).is_ok())
}
