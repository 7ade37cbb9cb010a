//! Any gRPC client, on any node (issue #25): a follower serves every call
//! by forwarding it to its leader, as the caller; only a node can speak for
//! a caller; statuses tonic makes itself read like the API's own; and a
//! Python grpcio client, with standard mTLS and no leader-following of its
//! own, runs the whole flow against a follower.

use std::process::Command;

use grant_tests::grant_client::v1 as pb;
use grant_tests::grant_client::Client;
use grant_tests::grant_proto::v1::grants_client::GrantsClient;
use grant_tests::grant_proto::FORWARDED_FOR_KEY;
use grant_tests::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

const ORCHESTRATOR: &str = "spiffe://example.org/orchestrator";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_every_call_as_its_caller() {
    let c = Cluster::start(3).await;
    let (leader, follower) = c.leader_and_follower().await;
    // Bound to the follower, trying once: no client-side leader following.
    let orch = c.node_client_as(follower, "orchestrator");
    let tool = c.node_client_as(follower, "tool/github");

    let begun = orch.begin_task(begin_req("fwd")).await.unwrap();
    assert_eq!(
        begun.task.unwrap().owner,
        ORCHESTRATOR,
        "the caller, not the node"
    );
    let issued = orch.issue(issue_req("fwd", 300)).await.unwrap();
    let g = issued.grant.unwrap();
    assert_eq!(g.issuer, ORCHESTRATOR);
    let got = orch
        .get(pb::GetRequest {
            grant_id: g.grant_id.clone(),
            allow_stale: false,
        })
        .await
        .unwrap();
    assert!(!got.stale_allowed);
    let task = orch
        .get_task(pb::GetTaskRequest {
            task_id: "fwd".into(),
            allow_stale: false,
        })
        .await
        .unwrap();
    assert_eq!(task.task.unwrap().task_id, "fwd");
    let listed = orch.list(list_task_req("fwd", 0)).await.unwrap();
    assert_eq!(listed.grants.len(), 1);
    let allowed = tool.check(check_req(&issued.token)).await.unwrap();
    assert_eq!(reason(&allowed), pb::Reason::Allowed);
    let r = orch.revoke(revoke_req(&g.grant_id, "done")).await.unwrap();
    assert!(!r.already_inactive);
    let denied = tool.check(check_req(&issued.token)).await.unwrap();
    assert_eq!(reason(&denied), pb::Reason::Revoked);
    assert_eq!(
        close_task(&orch, "fwd", None).await.unwrap(),
        pb::TaskState::Completed
    );

    // A stale read is the follower's own, and says so.
    let stale = orch
        .get(pb::GetRequest {
            grant_id: g.grant_id.clone(),
            allow_stale: true,
        })
        .await;
    if let Ok(s) = stale {
        assert!(s.stale_allowed);
    }
    // The role check applied is the caller's: a tool server may not issue,
    // through a follower any more than at the leader.
    let (code, err) = refused(tool.issue(issue_req("fwd-2", 60)).await);
    assert_eq!(
        (code, err.as_str()),
        (Code::PermissionDenied, "permission_denied")
    );
    let _ = leader;
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "replicas differ: {d:?}");
    c.chains_agree("after forwarded calls").await;
}

/// A raw channel presenting `spiffe://example.org/<path>`.
fn channel_as(c: &Cluster, id: u64, path: &str) -> tonic::transport::Channel {
    let addr = c.node(id).api_addr.clone();
    Client::new(vec![addr.clone()], c.options_as(path))
        .unwrap()
        .channel_to(&addr)
        .unwrap()
}

/// An Issue that claims to be forwarded for `as_caller`.
fn claimed(as_caller: &str, task: &str) -> tonic::Request<pb::IssueRequest> {
    let mut r = issue_req(task, 60);
    r.request_id = format!("claimed-{task}");
    let mut req = tonic::Request::new(r);
    req.metadata_mut()
        .insert(FORWARDED_FOR_KEY, as_caller.parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_node_may_speak_for_a_caller() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    c.client().begin_task(begin_req("claim")).await.unwrap();
    let before = c.converged_digests().await;
    // An agent's certificate naming the orchestrator: refused, whatever the
    // method, before any handler runs.
    for path in ["agent/planner", "tool/github", "ops/admin"] {
        let mut g = GrantsClient::new(channel_as(&c, leader, path));
        let s = g.issue(claimed(ORCHESTRATOR, "claim")).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{path}: {s:?}");
        assert_eq!(
            grant_client::error_code(&s),
            Some("unauthenticated"),
            "{path}"
        );
        assert!(s.message().contains(FORWARDED_FOR_KEY), "{}", s.message());
    }
    assert_eq!(
        c.converged_digests().await,
        before,
        "a refused claim changed nothing"
    );
    // A node's certificate may: the grant is the orchestrator's.
    let mut g = GrantsClient::new(channel_as(&c, leader, "grantd/node-3"));
    let r = g.issue(claimed(ORCHESTRATOR, "claim")).await.unwrap();
    assert_eq!(r.into_inner().grant.unwrap().issuer, ORCHESTRATOR);
    // And what the named caller may not do, a node may not do for it.
    let mut g = GrantsClient::new(channel_as(&c, leader, "grantd/node-3"));
    let s = g
        .issue(claimed("spiffe://example.org/agent/planner", "claim"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    // Nor for a caller of another trust domain.
    let s = g
        .issue(claimed("spiffe://other.org/orchestrator", "claim"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
}

/// A codec that sends and receives bytes as they are.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let v = buf.chunk().to_vec();
        buf.advance(v.len());
        Ok(Some(v))
    }
}

async fn raw(
    channel: tonic::transport::Channel,
    path: &'static str,
    body: Vec<u8>,
) -> tonic::Status {
    let mut g = tonic::client::Grpc::new(channel);
    g.ready().await.unwrap();
    g.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_read_like_the_apis_own_on_leader_and_follower() {
    let c = Cluster::start(3).await;
    let (leader, follower) = c.leader_and_follower().await;
    let before = c.settled_audit_size().await;
    for node in [leader, follower] {
        let ch = channel_as(&c, node, "ops/admin");
        // Field 5 of IssueRequest (intent) as bytes that are not UTF-8.
        let s = raw(
            ch.clone(),
            "/grantledger.v1.Grants/Issue",
            vec![0x2a, 2, 0xff, 0xfe],
        )
        .await;
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert_eq!(grant_client::error_code(&s), Some("invalid_argument"));
        assert!(s.message().contains("intent"), "{}", s.message());
        // Bytes that are no protobuf at all.
        let s = raw(ch.clone(), "/grantledger.v1.Grants/Check", vec![0xff; 12]).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert_eq!(grant_client::error_code(&s), Some("invalid_argument"));
        // Over the message limit (1 MiB).
        let s = raw(
            ch.clone(),
            "/grantledger.v1.Grants/Issue",
            vec![0x2a; 2 << 20],
        )
        .await;
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(grant_client::error_code(&s), Some("resource_exhausted"));
        // A method nobody serves.
        let s = raw(ch.clone(), "/grantledger.v1.Grants/Nope", vec![]).await;
        assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
        assert_eq!(grant_client::error_code(&s), Some("unimplemented"));
        // The authentication layer's refusals carry their code too.
        let s = raw(
            channel_as(&c, node, "agent/planner"),
            "/grantledger.v1.Grants/Issue",
            vec![],
        )
        .await;
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert_eq!(grant_client::error_code(&s), Some("permission_denied"));
    }
    // A certificate of another trust domain from the same CA.
    let foreign = c
        .pki
        .ca
        .issue("spiffe://other.org/orchestrator", 1)
        .unwrap();
    let files = c.pki.save("foreign", &foreign);
    let addr = c.node(leader).api_addr.clone();
    // It trusts the cluster's nodes, though they are not of its domain.
    let ch = grant_client::Tls::load(&files)
        .unwrap()
        .client_endpoint(
            tonic::transport::Endpoint::from_shared(format!("https://{addr}")).unwrap(),
            std::sync::Arc::new(|_: &str| true),
        )
        .unwrap()
        .connect_lazy();
    let s = raw(ch, "/grantledger.v1.Grants/Issue", vec![]).await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert_eq!(grant_client::error_code(&s), Some("unauthenticated"));
    // Bad input changed nothing but the record of the refused writes.
    assert!(c.only_refusals_since(before).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_client_runs_the_flow_on_a_follower() {
    let c = Cluster::start(3).await;
    let (_, follower) = c.leader_and_follower().await;
    // Written as <path with '_' for '/'>.pem and .key beside ca.pem.
    c.pki.identity("orchestrator");
    c.pki.identity("tool/github");
    // By host name, as a standard client dials: its check needs the DNS SAN.
    let port = c
        .node(follower)
        .api_addr
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("examples/python/run.sh"))
        .args(["--endpoint", &format!("localhost:{port}")])
        .arg("--certs")
        .arg(&c.pki.dir)
        .args(["--orchestrator", "orchestrator", "--tool", "tool_github"])
        .output()
        .expect("run examples/python/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "begin",
            "issue",
            "check",
            "revoke",
            "check-after-revoke",
            "complete"
        ]
    );
    assert!(steps.iter().all(|s| s["ok"] == true), "{stdout}");
    assert_eq!(steps[2]["reason"], "REASON_ALLOWED");
    assert_eq!(steps[4]["reason"], "REASON_REVOKED");
}

/// grantctl's output as a script reads it: one JSON document per line.
fn ctl_json(c: &Cluster, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = c
        .grantctl()
        .args(["-o", "json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let doc = stdout
        .lines()
        .next()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), doc, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grantctl_speaks_json_and_tables_for_scripts() {
    let c = Cluster::start(3).await;
    let (code, begun, _) = ctl_json(
        &c,
        &[
            "task", "begin", "cli-json", "--tool", "github", "--intent", "triage",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(begun["task"]["task_id"], "cli-json");
    assert_eq!(begun["task"]["state"], "TASK_STATE_OPEN");
    let (code, issued, _) = ctl_json(
        &c,
        &[
            "issue",
            "--subject",
            AGENT,
            "--task",
            "cli-json",
            "--scope",
            "github=read",
            "--intent",
            "triage",
            "--ttl",
            "60",
        ],
    );
    assert_eq!(code, 0);
    let grant_id = issued["grant"]["grant_id"].as_str().unwrap().to_string();
    let token = issued["token"].as_str().unwrap().to_string();
    assert_eq!(grant_id.len(), 32);
    assert_eq!(issued["grant"]["scopes"][0]["actions"][0], "read");
    // check keeps its exit codes: 0 on allow, 1 on deny.
    let check = |action: &str| {
        ctl_json(
            &c,
            &[
                "check",
                "--token",
                &token,
                "--identity",
                AGENT,
                "--resource",
                "github",
                "--action",
                action,
            ],
        )
    };
    let (code, allowed, _) = check("read");
    assert_eq!(
        (code, allowed["decision"].as_str()),
        (0, Some("DECISION_ALLOW"))
    );
    let (code, denied, _) = check("write");
    assert_eq!(
        (code, denied["reason"].as_str()),
        (1, Some("REASON_OUT_OF_SCOPE"))
    );
    let (code, listed, _) = ctl_json(&c, &["list", "--task", "cli-json"]);
    assert_eq!(code, 0);
    assert_eq!(listed["grants"].as_array().unwrap().len(), 1);
    let (code, status, _) = ctl_json(&c, &["cluster", "status"]);
    assert_eq!(code, 0);
    assert_eq!(status["endpoints"].as_array().unwrap().len(), 3);
    assert!(
        status["endpoints"][0]["status"]["node_id"].is_string()
            || status["endpoints"][0]["status"]["node_id"].is_number()
    );
    // A refusal: exit 2, and the reason as JSON on stderr.
    let (code, _, stderr) = ctl_json(&c, &["get", "00000000000000000000000000000000"]);
    assert_eq!(code, 2);
    let err: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("not_found"),
        "{stderr}"
    );
    // The audit log, exported to a file and verified, as a script would.
    let keys = c.dir.path().join("keys.txt");
    let roster = c.grantctl().args(["audit", "roster"]).output().unwrap();
    assert!(roster.status.success());
    std::fs::write(&keys, &roster.stdout).unwrap();
    let file = c.dir.path().join("audit.jsonl");
    let file_s = file.to_str().unwrap();
    // Until the leader has signed a checkpoint (every second), and the node
    // that answers holds it, nothing is covered and verify refuses.
    let mut tries = 0;
    let verified = loop {
        let (code, exported, _) = ctl_json(&c, &["audit", "export", "--out", file_s]);
        assert_eq!(code, 0);
        assert_eq!(
            exported["bytes"].as_u64(),
            Some(std::fs::metadata(&file).unwrap().len())
        );
        let (code, verified, stderr) = ctl_json(
            &c,
            &[
                "audit",
                "verify",
                file_s,
                "--trusted-keys",
                keys.to_str().unwrap(),
            ],
        );
        tries += 1;
        if code == 0 || tries == 50 {
            assert_eq!(
                (code, verified["ok"].as_bool()),
                (0, Some(true)),
                "{verified} {stderr}"
            );
            break verified;
        }
        assert_eq!(verified["ok"].as_bool(), Some(false), "{verified}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(verified["entries"].as_u64().unwrap() >= 4);
    // A table: a header, then one row per grant.
    let out = c
        .grantctl()
        .args(["-o", "table", "list", "--task", "cli-json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("GRANT_ID") && lines[0].contains("STATE"),
        "{text}"
    );
    assert!(lines[1].contains(&grant_id), "{text}");
}
