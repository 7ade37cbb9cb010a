//! Who gets in, and what they may do: mTLS with SPIFFE IDs on real grantd
//! processes. A certificate that does not identify a workload of the
//! cluster's trust domain is refused; a caller without the role a method
//! needs gets PermissionDenied and changes nothing; a grant is useful only
//! to its subject.

use std::time::{Duration, SystemTime};

use grant_client::v1::grants_client::GrantsClient;
use grant_client::{Client, ClientError, Options};
use grant_tests::pki::{raw_channel, Pki};
use grant_tests::*;
use tonic::Code;

const ORCH: &str = "orchestrator";
const TOOL: &str = "tool/github";
const PLANNER: &str = "agent/planner";
const INTRUDER: &str = "agent/intruder";

fn id(path: &str) -> String {
    format!("spiffe://example.org/{path}")
}

/// A client of every node that tries once (a refused handshake is final).
fn once(c: &Cluster, opts: Options) -> Client {
    let opts = Options {
        attempts_max: 1,
        ..opts
    };
    Client::new(c.nodes.iter().map(|n| n.api_addr.clone()).collect(), opts).unwrap()
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> Option<Code> {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.grpc_code(),
    }
}

fn all_logs(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| std::fs::read_to_string(c.dir.path().join(format!("node{}.log", n.id))).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_name_no_workload_of_the_trust_domain_are_refused() {
    let c = Cluster::start(1).await;
    let before = c.converged_digests().await;
    let pki = &c.pki;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let admin = id("ops/admin");

    // Refused at the handshake: signed by another CA (the same SPIFFE ID),
    // expired, or no client certificate at all.
    let foreign = Pki::new(&c.dir.path().join("foreign"));
    let mut files = foreign.identity("ops/admin");
    files.ca = pki.dir.join("ca.pem");
    let expired = pki.save(
        "expired",
        &pki.ca
            .issue_with(&[&admin], now - 48 * hour, now - hour)
            .unwrap(),
    );
    for (what, files) in [("unknown CA", files), ("expired", expired)] {
        // With TLS 1.3 the client may finish its half of the handshake
        // before the server refuses: the call then ends as the connection
        // closes (Unavailable, Cancelled or Unknown, depending on timing).
        let got = code(
            once(&c, pki.options(&files))
                .issue_in(issue_req(what, 60))
                .await,
        );
        assert!(
            matches!(
                got,
                Some(Code::Unavailable | Code::Cancelled | Code::Unknown)
            ),
            "{what}: {got:?}"
        );
    }
    let anonymous = raw_channel(&c.nodes[0].api_addr, None).await;
    if let Ok(ch) = anonymous {
        // The handshake may complete on the client's side before the server
        // refuses it; the first call then fails.
        let r = GrantsClient::new(ch)
            .issue(issue_req("anonymous", 60))
            .await;
        assert!(r.is_err(), "a call without a client certificate succeeded");
    }

    // Past the handshake, refused as Unauthenticated: a certificate of our
    // CA that names another trust domain, no SPIFFE ID, or two of them.
    for (what, uris, says) in [
        (
            "other trust domain",
            vec!["spiffe://other.org/ops/admin"],
            "trust domain",
        ),
        ("no SPIFFE ID", vec![], "no SPIFFE ID"),
        (
            "two SPIFFE IDs",
            vec![admin.as_str(), "spiffe://example.org/agent/planner"],
            "2 URI SANs",
        ),
    ] {
        let f = pki.save(
            &what.replace(' ', "-"),
            &pki.ca.issue_with(&uris, now - hour, now + hour).unwrap(),
        );
        let ch = raw_channel(&c.nodes[0].api_addr, Some(&f)).await.unwrap();
        let err = GrantsClient::new(ch)
            .issue(issue_req(what, 60))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err}");
        assert!(err.message().contains(says), "{what}: {err}");
    }

    // A plaintext client gets nowhere either.
    let plain = once(&c, Options::default());
    assert!(plain.issue_in(issue_req("plaintext", 60)).await.is_err());

    // Nothing of it reached the state; the real identity still works.
    assert_eq!(c.converged_digests().await[0].1, before[0].1);
    let st = c.client().status_of(&c.nodes[0].api_addr).await.unwrap();
    assert_eq!(st.transport_security, "mtls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_refuses_callers_without_its_role_and_changes_nothing() {
    let c = Cluster::start(3).await;
    let orch = c.client_as(ORCH);
    let g = orch.issue_in(issue_req("roles", 300)).await.unwrap();
    let grant_id = g.grant.unwrap().grant_id;
    // An issuer only for its subjects.
    let mut for_tool = issue_req("roles", 300);
    for_tool.subject = id(TOOL);
    assert_eq!(
        code(orch.issue(for_tool).await),
        Some(Code::PermissionDenied)
    );
    let before = c.settled_audit_size().await;

    let agent = c.client_as(PLANNER);
    let denied = Some(Code::PermissionDenied);
    assert_eq!(code(agent.issue_in(issue_req("roles", 60)).await), denied);
    assert_eq!(
        code(agent.revoke(revoke_req(&grant_id, "mine now")).await),
        denied
    );
    assert_eq!(
        code(
            agent
                .complete_task(grant_client::v1::CompleteTaskRequest {
                    request_id: String::new(),
                    task_id: "roles".into(),
                    reason: String::new(),
                })
                .await
        ),
        denied
    );
    assert_eq!(
        code(
            agent
                .get(grant_client::v1::GetRequest {
                    grant_id: grant_id.clone(),
                    allow_stale: false,
                })
                .await
        ),
        denied
    );
    assert_eq!(code(agent.list(list_task_req("roles", 10)).await), denied);
    assert_eq!(code(agent.audit_export(None).await), denied);
    assert_eq!(code(agent.roster().await), denied);
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("refused.backup");
    assert_eq!(code(agent.backup_to(None, &out).await), denied);
    assert!(!out.exists(), "a refused backup wrote a file");
    assert_eq!(code(agent.remove_node(3).await), denied);
    assert_eq!(code(agent.transfer_leader(2).await), denied);
    // A checker is no revoker, nor an auditor.
    let tool = c.client_as(TOOL);
    assert_eq!(code(tool.revoke(revoke_req(&grant_id, "no")).await), denied);
    assert_eq!(code(tool.audit_export(None).await), denied);
    // A node's certificate cannot issue grants.
    assert_eq!(
        code(
            c.client_as("grantd/node-1")
                .issue_in(issue_req("roles", 60))
                .await
        ),
        denied
    );
    // A client certificate cannot speak Raft, even the admin's.
    let raft = c.channel(&c.node(1).raft_addr).unwrap();
    let err = grant_client::v1::raft::raft_peer_client::RaftPeerClient::new(raft)
        .vote(grant_client::v1::raft::RaftPayload { data: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // Status is open to every authenticated caller.
    assert!(agent.status_of(&c.node(1).api_addr).await.is_ok());

    // Nothing changed but the record of the refusals (one each: fourteen
    // calls above), the grant still active.
    assert_eq!(c.only_refusals_since(before).await, 14);
    let got = c
        .client()
        .get(grant_client::v1::GetRequest {
            grant_id: grant_id.clone(),
            allow_stale: false,
        })
        .await
        .unwrap();
    assert_eq!(
        got.grant.unwrap().state,
        grant_client::v1::GrantState::Active as i32
    );
    // The refusals are in the log with who and what.
    let logs = all_logs(&c);
    assert!(
        logs.contains("call refused") && logs.contains(&id(PLANNER)),
        "no refusal logged"
    );
    // The audit chain names the caller of each write.
    let entries = c.client().audit_entries(0, 100).await.unwrap().entries;
    let issue = entries
        .iter()
        .map(|e| grant_client::entry_from_pb(e).unwrap())
        .find(|e| e.kind == grant_proto::audit::Kind::Issue)
        .unwrap();
    assert_eq!(issue.actor, id(ORCH));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_useful_only_to_its_subject() {
    let c = Cluster::start(1).await;
    let g = c
        .client_as(ORCH)
        .issue_in(issue_req("bound", 300))
        .await
        .unwrap();
    let check = |identity: &str, resource: &str| grant_client::v1::CheckRequest {
        token: g.token.clone(),
        identity: identity.into(),
        resource: resource.into(),
        action: "read".into(),
        attributes: Default::default(),
    };
    let reason_of = |r: Result<grant_client::v1::CheckResponse, ClientError>| reason(&r.unwrap());
    use grant_client::v1::Reason;

    // The agent itself presents its token: it is who it says it is.
    let planner = c.client_as(PLANNER);
    assert_eq!(
        reason_of(planner.check(check("", "github")).await),
        Reason::Allowed
    );
    assert_eq!(
        reason_of(planner.check(check(&id(PLANNER), "github")).await),
        Reason::Allowed
    );
    // Another agent holding the token is still itself: denied.
    let intruder = c.client_as(INTRUDER);
    assert_eq!(
        reason_of(intruder.check(check("", "github")).await),
        Reason::SubjectMismatch
    );
    // ...and may not claim to be the subject.
    assert_eq!(
        code(intruder.check(check(&id(PLANNER), "github")).await),
        Some(Code::PermissionDenied)
    );
    // A tool server (checker) vouches for the identity it authenticated.
    let tool = c.client_as(TOOL);
    assert_eq!(
        reason_of(tool.check(check(&id(PLANNER), "github")).await),
        Reason::Allowed
    );
    assert_eq!(
        reason_of(tool.check(check(&id(INTRUDER), "github")).await),
        Reason::SubjectMismatch
    );
    // A token presented for another resource denies.
    assert_eq!(
        reason_of(tool.check(check(&id(PLANNER), "gitlab")).await),
        Reason::OutOfScope
    );
    // A checker must say whose request it checks.
    assert_eq!(
        code(tool.check(check("", "github")).await),
        Some(Code::InvalidArgument)
    );
    // The Check entries name the caller that asked.
    let entries = c.client().audit_entries(0, 100).await.unwrap().entries;
    let actors: Vec<String> = entries
        .iter()
        .map(|e| grant_client::entry_from_pb(e).unwrap())
        .filter(|e| e.kind == grant_proto::audit::Kind::Check)
        .map(|e| e.actor)
        .collect();
    assert!(
        actors.contains(&id(PLANNER)) && actors.contains(&id(TOOL)),
        "{actors:?}"
    );
}

fn grantd_output(args: &[&str]) -> std::process::Output {
    std::process::Command::new(grantd_bin())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_loopback_only_and_says_so() {
    // No TLS and no --insecure: refused with what to do.
    let out = grantd_output(&["--node-id", "1", "--data-dir", "/nonexistent-grantd-x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls_ca_file") && err.contains("insecure"),
        "{err}"
    );
    // --insecure on a non-loopback address: refused.
    let out = grantd_output(&[
        "--node-id",
        "1",
        "--data-dir",
        "/nonexistent-grantd-x",
        "--insecure",
        "--api-addr",
        "0.0.0.0:7101",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");

    // On loopback it runs, and says so in its status and its log.
    let c = Cluster::start_with(1, &["--insecure"]).await;
    let st = c.client().status_of(&c.nodes[0].api_addr).await.unwrap();
    assert_eq!(st.transport_security, "insecure");
    assert!(all_logs(&c).contains("INSECURE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_its_peers_would_refuse_does_not_start() {
    let c = Cluster::prepare(1);
    let agent = c.pki.identity(PLANNER);
    let n = c.node(1);
    let out = std::process::Command::new(grantd_bin())
        .args(["--node-id", "1"])
        .arg("--data-dir")
        .arg(&n.data_dir)
        .args(["--api-addr", &n.api_addr, "--raft-addr", &n.raft_addr])
        .args(["--metrics-addr", &n.metrics_addr])
        .arg("--config")
        .arg(c.pki.config())
        .arg("--tls-cert-file")
        .arg(&agent.cert)
        .arg("--tls-key-file")
        .arg(&agent.key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("roles.peer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_change_committed_on_the_leader_applies_on_every_node() {
    let mut c = Cluster::start(3).await;
    let admin = c.client();
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    for &n in &ids {
        assert_eq!(
            code(c.node_client_as(n, PLANNER).roster().await),
            Some(Code::PermissionDenied)
        );
    }
    // The planner becomes an auditor; the orchestrator is no longer an issuer.
    let mapping = r#"
admin = ["spiffe://example.org/ops/admin"]
checker = ["spiffe://example.org/tool/*"]
revoker = ["spiffe://example.org/orchestrator", "spiffe://example.org/ops/admin"]
auditor = ["spiffe://example.org/agent/planner", "spiffe://example.org/ops/admin"]
[[issuer]]
callers = ["spiffe://example.org/ops/admin"]
subjects = ["spiffe://example.org/agent/*"]
"#;
    // Refused, changing nothing: a mapping that names peer, one that takes
    // the admin role from its author, a bad pattern, a mapping from a
    // caller without the admin role.
    let with_peer = format!("peer = [\"spiffe://example.org/x/*\"]\n{mapping}");
    let no_admin = mapping.replace(
        "admin = [\"spiffe://example.org/ops/admin\"]",
        "admin = [\"spiffe://example.org/ops/alice\"]",
    );
    let bad = mapping.replace("spiffe://example.org/tool/*", "tool/*");
    for (what, text) in [("peer", &with_peer), ("no admin", &no_admin), ("bad", &bad)] {
        let err = admin.set_roles(text).await.unwrap_err();
        assert_eq!(
            err.grpc_code(),
            Some(Code::InvalidArgument),
            "{what}: {err}"
        );
    }
    assert_eq!(
        code(c.client_as(ORCH).set_roles(mapping).await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(admin.get_roles().await.unwrap().source, "config");

    let r = admin.set_roles(mapping).await.unwrap();
    let index = r.receipt.as_ref().unwrap().log_index;
    for &n in &ids {
        wait_for(&format!("node {n} to apply the mapping"), || async {
            c.node_client_as(n, PLANNER).roster().await.is_ok()
        })
        .await;
        assert_eq!(
            code(
                c.node_client_as(n, ORCH)
                    .issue_in(issue_req("after", 60))
                    .await
            ),
            Some(Code::PermissionDenied)
        );
        let got = c.node_client(n).get_roles().await.unwrap();
        assert_eq!((got.source.as_str(), got.log_index), ("replicated", index));
        // Each node keeps its own peer patterns.
        assert!(got.roles_toml.contains("spiffe://example.org/grantd/*"));
    }
    // The peers still talk (peer is not replicated): writes commit.
    admin.issue_in(issue_req("after", 60)).await.unwrap();

    // Audited: who changed it, and to what.
    let seq = r.receipt.unwrap().audit_seq;
    let e = admin.audit_entries(seq, 1).await.unwrap().entries;
    let e = grant_client::entry_from_pb(&e[0]).unwrap();
    assert_eq!(e.kind, grant_proto::audit::Kind::Roles);
    assert_eq!(e.actor, id("ops/admin"));
    assert_eq!(e.detail, r.roles_json);

    // A restarted node comes back with the replicated mapping.
    assert!(c.terminate(2));
    c.spawn(2);
    wait_for("node 2 back with the mapping", || async {
        c.node_client_as(2, PLANNER).roster().await.is_ok()
    })
    .await;
    assert_eq!(
        code(
            c.node_client_as(2, ORCH)
                .issue_in(issue_req("restart", 60))
                .await
        ),
        Some(Code::PermissionDenied)
    );
}

/// Verify a grant token offline, as a tool server would: the key from the
/// JWKS by `kid`, EdDSA, audience = our resource, no leeway on expiry.
fn verify_offline(
    token: &str,
    jwks: &str,
    resource: &str,
) -> Result<serde_json::Value, jsonwebtoken::errors::Error> {
    use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
    let set: JwkSet = serde_json::from_str(jwks).unwrap();
    let kid = decode_header(token)?.kid.unwrap_or_default();
    let jwk = set
        .find(&kid)
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[resource]);
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "sub", "aud", "jti"]);
    Ok(decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk)?, &v)?.claims)
}

/// A token with `claims`, signed by a key the cluster never saw.
fn foreign_token(claims: &serde_json::Value, kid: &str) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(kid.into());
    h.typ = Some("at+jwt".into());
    let der = key.to_pkcs8_der().unwrap();
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_offline_with_the_jwks_and_forgeries_deny() {
    use base64::Engine;
    use grant_client::v1::Reason;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let c = Cluster::start(3).await;
    let g = c
        .client_as(ORCH)
        .issue_in(issue_req("jwt", 300))
        .await
        .unwrap();
    let grant_id = g.grant.as_ref().unwrap().grant_id.clone();
    let tool = c.client_as(TOOL);
    // Any authenticated caller may fetch the JWKS; a tool server checks the
    // token offline with it.
    let jwks = tool.jwks().await.unwrap();
    let claims = verify_offline(&g.token, &jwks, "github").unwrap();
    assert_eq!(claims["sub"], id(PLANNER));
    assert_eq!(claims["jti"], grant_id.as_str());
    assert_eq!(claims["client_id"], id(ORCH));
    assert_eq!(claims["task_id"], "jwt");
    assert_eq!(claims["scope"], "github:read github:comment");
    assert_eq!(
        jsonwebtoken::decode_header(&g.token)
            .unwrap()
            .typ
            .as_deref(),
        Some("at+jwt")
    );
    // Presented for another resource: refused offline and by Check.
    assert!(verify_offline(&g.token, &jwks, "jira").is_err());

    let check = |token: &str| grant_client::v1::CheckRequest {
        token: token.into(),
        identity: id(PLANNER),
        resource: "github".into(),
        action: "read".into(),
        attributes: Default::default(),
    };
    let reason_of = |r: grant_client::v1::CheckResponse| reason(&r);
    assert_eq!(
        reason_of(tool.check(check(&g.token)).await.unwrap()),
        Reason::Allowed
    );
    // Tampered: the payload names another subject, the signature is the old one.
    let parts: Vec<&str> = g.token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = id(INTRUDER).into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(payload.to_string()),
        parts[2]
    );
    assert!(verify_offline(&tampered, &jwks, "github").is_err());
    let mut as_intruder = check(&tampered);
    as_intruder.identity = id(INTRUDER);
    let r = tool.check(as_intruder).await.unwrap();
    assert_eq!(reason_of(r.clone()), Reason::BadToken);
    assert!(r.grant_id.is_empty(), "a forged token names no grant");
    // Signed by a foreign key, under the cluster's key id or an unknown one.
    let kid = jsonwebtoken::decode_header(&g.token).unwrap().kid.unwrap();
    for k in [kid.as_str(), "unknown-kid"] {
        let t = foreign_token(&claims, k);
        assert!(verify_offline(&t, &jwks, "github").is_err());
        assert_eq!(
            reason_of(tool.check(check(&t)).await.unwrap()),
            Reason::BadToken,
            "kid {k}"
        );
    }
    // Not a JWT at all: InvalidArgument, not recorded.
    assert_eq!(
        code(tool.check(check("not.a.jwt")).await),
        Some(Code::InvalidArgument)
    );

    // Check stays the authority: a revoked grant's token still verifies
    // offline until it expires, and Check denies it.
    c.client()
        .revoke(revoke_req(&grant_id, "done"))
        .await
        .unwrap();
    assert!(verify_offline(&g.token, &jwks, "github").is_ok());
    assert_eq!(
        reason_of(tool.check(check(&g.token)).await.unwrap()),
        Reason::Revoked
    );

    // Expired: offline verification and Check both refuse it.
    let short = c
        .client_as(ORCH)
        .issue_in(issue_req("jwt-short", 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = verify_offline(&short.token, &jwks, "github").unwrap_err();
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
    );
    assert_eq!(
        reason_of(tool.check(check(&short.token)).await.unwrap()),
        Reason::Expired
    );
    // Every node serves the same keys: tokens from any leader verify anywhere.
    for n in &c.nodes {
        let j = c.node_client(n.id).jwks().await.unwrap();
        assert_eq!(j, jwks);
    }
}

/// An identity provider for bearer tokens: an Ed25519 key, its JWKS.
struct Idp {
    key: jsonwebtoken::EncodingKey,
    jwks: String,
}

impl Idp {
    fn new(kid: &str) -> Idp {
        use base64::Engine;
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let k = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.verifying_key().as_bytes());
        Idp {
            key: jsonwebtoken::EncodingKey::from_ed_der(k.to_pkcs8_der().unwrap().as_bytes()),
            jwks: serde_json::json!({"keys": [{
                "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"
            }]})
            .to_string(),
        }
    }

    fn token(&self, kid: &str, claims: serde_json::Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_may_authenticate_with_a_jwt_instead_of_a_certificate() {
    const ISS: &str = "https://idp.example.org";
    let idp = Idp::new("idp-1");
    let conf = format!(
        "[jwt_auth]\njwks_file = \"idp-jwks.json\"\nissuer = \"{ISS}\"\naudience = \"grant-ledger\"\n"
    );
    let c = Cluster::start_configured(
        1,
        &[],
        &[("idp-jwks.json", &idp.jwks), ("grantd-tls.toml", &conf)],
    )
    .await;
    let claims = |sub: &str, iss: &str, aud: &str, exp: i64| serde_json::json!({"sub": sub, "iss": iss, "aud": aud, "exp": exp, "iat": unix_now()});
    let later = unix_now() + 300;
    let as_bearer = |token: String| {
        let opts = Options {
            tls: Some(grant_client::Tls::ca_only(&c.pki.dir.join("ca.pem")).unwrap()),
            bearer_token: Some(token),
            attempts_max: 1,
            ..Options::default()
        };
        Client::new(vec![c.nodes[0].api_addr.clone()], opts).unwrap()
    };

    // A JWT-SVID for the orchestrator: it issues, and the audit names it.
    let orch = as_bearer(idp.token("idp-1", claims(&id(ORCH), ISS, "grant-ledger", later)));
    let g = orch.issue_in(issue_req("bearer", 60)).await.unwrap();
    let seq = g.receipt.unwrap().audit_seq;
    let e = c.client().audit_entries(seq, 1).await.unwrap().entries;
    assert_eq!(grant_client::entry_from_pb(&e[0]).unwrap().actor, id(ORCH));
    // Roles apply as to a certificate.
    let agent = as_bearer(idp.token("idp-1", claims(&id(PLANNER), ISS, "grant-ledger", later)));
    assert_eq!(
        code(agent.issue_in(issue_req("bearer", 60)).await),
        Some(Code::PermissionDenied)
    );
    // (That refusal is on the record; the unauthenticated ones below are not.)
    let before = c.settled_audit_size().await;

    // Refused, as Unauthenticated: expired, another audience, another
    // issuer, a key outside the JWKS (under its kid or another), a subject
    // that is no SPIFFE ID or from another trust domain, a shared-secret
    // algorithm, and nothing at all.
    let stranger = Idp::new("idp-1");
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("idp-1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims(&id(ORCH), ISS, "grant-ledger", later),
        &jsonwebtoken::EncodingKey::from_secret(b"idp-1"),
    )
    .unwrap();
    for (what, token) in [
        (
            "expired",
            idp.token(
                "idp-1",
                claims(&id(ORCH), ISS, "grant-ledger", unix_now() - 60),
            ),
        ),
        (
            "audience",
            idp.token("idp-1", claims(&id(ORCH), ISS, "other-service", later)),
        ),
        (
            "issuer",
            idp.token(
                "idp-1",
                claims(&id(ORCH), "https://evil.example", "grant-ledger", later),
            ),
        ),
        (
            "foreign key",
            stranger.token("idp-1", claims(&id(ORCH), ISS, "grant-ledger", later)),
        ),
        (
            "unknown kid",
            stranger.token("idp-9", claims(&id(ORCH), ISS, "grant-ledger", later)),
        ),
        (
            "not a SPIFFE ID",
            idp.token(
                "idp-1",
                claims("alice@example.org", ISS, "grant-ledger", later),
            ),
        ),
        (
            "other trust domain",
            idp.token(
                "idp-1",
                claims(
                    "spiffe://other.org/orchestrator",
                    ISS,
                    "grant-ledger",
                    later,
                ),
            ),
        ),
        ("HS256", hs256),
        ("garbage", "not-a-jwt".into()),
    ] {
        let err = as_bearer(token)
            .issue_in(issue_req(what, 60))
            .await
            .unwrap_err();
        assert_eq!(
            err.grpc_code(),
            Some(Code::Unauthenticated),
            "{what}: {err}"
        );
    }
    let nothing = Client::new(
        vec![c.nodes[0].api_addr.clone()],
        Options {
            tls: Some(grant_client::Tls::ca_only(&c.pki.dir.join("ca.pem")).unwrap()),
            attempts_max: 1,
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(
        code(nothing.issue_in(issue_req("nothing", 60)).await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(c.only_refusals_since(before).await, 0);

    // The peer listener still takes certificates only.
    let raft = raw_channel(&c.nodes[0].raft_addr, None).await;
    if let Ok(ch) = raft {
        let r = grant_client::v1::raft::raft_peer_client::RaftPeerClient::new(ch)
            .vote(grant_client::v1::raft::RaftPayload { data: vec![] })
            .await;
        assert!(r.is_err());
    }

    // grantctl with --ca and --token-file.
    c.client().begin_task(begin_req("cli")).await.unwrap();
    let tokf = c.dir.path().join("orch.jwt");
    std::fs::write(
        &tokf,
        idp.token("idp-1", claims(&id(ORCH), ISS, "grant-ledger", later)),
    )
    .unwrap();
    let out = std::process::Command::new(grantd_bin().with_file_name("grantctl"))
        .args(["--endpoints", &c.nodes[0].api_addr])
        .arg("--ca")
        .arg(c.pki.dir.join("ca.pem"))
        .arg("--token-file")
        .arg(&tokf)
        .args([
            "issue",
            "--subject",
            &id(PLANNER),
            "--task",
            "cli",
            "--scope",
            "github=read",
            "--intent",
            "triage issue 42",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
