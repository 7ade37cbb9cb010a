//! Request-time policy on real grantd processes: a Cedar policy set applied
//! through the log decides Issue and Check on every node, with what the
//! tool server says about the request; a set that does not compile is
//! refused with Cedar's diagnostics and the one in force stays; every
//! decision and change is on the audit record.

use std::process::Output;

use grant_client::v1 as pb;
use grant_client::ClientError;
use grant_tests::grant_proto::audit::{export, Decision, Kind};
use grant_tests::*;
use tonic::Code;

const ORCH: &str = "orchestrator";
const TOOL: &str = "tool/github";

const POLICIES: &str = r#"
@id("orchestrator-issues")
permit (principal, action == Action::"issue", resource)
when { principal.path == "/orchestrator" };

@id("agents-read")
permit (principal, action == Action::"read", resource)
when { principal.path like "/agent/*" };

@id("production-needs-ticket")
forbid (principal, action, resource)
when { context has request && context.request has environment &&
       context.request.environment == "production" }
unless { context.request has ticket };

@id("no-prod-tools-without-ops-intent")
forbid (principal, action == Action::"issue", resource)
when { resource.name like "prod/*" } unless { context.intent like "*OPS-*" };
"#;

fn run(out: Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write(c: &Cluster, name: &str, text: &str) -> std::path::PathBuf {
    let p = c.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn denied(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Ok(v) => panic!("expected a policy denial, got {v:?}"),
        Err(ClientError::Status(s)) => {
            assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
            assert_eq!(grant_client::error_code(&s), Some("policy_denied"), "{s:?}");
            s.message().to_string()
        }
        Err(e) => panic!("expected a policy denial, got {e}"),
    }
}

fn check(token: &str, action: &str, attrs: &[(&str, &str)]) -> pb::CheckRequest {
    pb::CheckRequest {
        token: token.into(),
        identity: AGENT.into(),
        resource: "github".into(),
        action: action.into(),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_decides_issue_and_check_on_every_node() {
    let mut c = Cluster::start(3).await;
    let orch = c.client_as(ORCH);
    let tool = c.client_as(TOOL);
    // Issued before any policy: grants alone decide.
    let early = orch
        .issue_in(issue_req("before-policy", 600))
        .await
        .unwrap();

    // Offline validation, then a refused apply: the diagnostics name the
    // policy and where it is wrong, and nothing changes.
    let bad = write(
        &c,
        "bad.cedar",
        "@id(\"typo\")\npermit (principal, action, resource)\nwhen { principal.pth == \"/x\" };\n",
    );
    let (ok, text) = run(c
        .grantctl()
        .args(["policy", "validate"])
        .arg(&bad)
        .output()
        .unwrap());
    assert!(
        !ok && text.contains("policy typo") && text.contains("pth"),
        "{text}"
    );
    let (ok, text) = run(c
        .grantctl()
        .args(["policy", "apply"])
        .arg(&bad)
        .output()
        .unwrap());
    assert!(
        !ok && text.contains("pth") && text.contains("(at 3:"),
        "{text}"
    );
    let before = c.settled_audit_size().await;
    assert!(!c.client().get_policy(false).await.unwrap().in_force);

    let good = write(&c, "good.cedar", POLICIES);
    let (ok, text) = run(c
        .grantctl()
        .args(["policy", "validate"])
        .arg(&good)
        .output()
        .unwrap());
    assert!(ok && text.contains("valid: 4 policies"), "{text}");
    // Only an admin applies a policy set.
    let err = orch
        .apply_policy(pb::ApplyPolicyRequest {
            policies: POLICIES.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.grpc_code(), Some(Code::PermissionDenied), "{err}");
    // Nothing changed but the record of that refusal.
    assert_eq!(c.only_refusals_since(before).await, 1);
    let (ok, text) = run(c
        .grantctl()
        .args(["policy", "apply"])
        .arg(&good)
        .output()
        .unwrap());
    assert!(
        ok && text.contains("policy: production-needs-ticket"),
        "{text}"
    );

    // Every node holds the same set; an auditor may read it.
    c.converged_digests().await;
    let sha = c
        .client_as("auditor")
        .get_policy(false)
        .await
        .unwrap()
        .policies_sha256;
    for n in 1..=3 {
        let p = c
            .node_client_as(n, "auditor")
            .get_policy(true)
            .await
            .unwrap();
        assert_eq!(
            (p.in_force, p.policies_sha256.as_str()),
            (true, sha.as_str()),
            "node {n}"
        );
    }

    // Issue: the orchestrator may; the admin holds the issuer role but no
    // policy permits it; a production tool needs an ops ticket in the intent.
    let g = orch.issue_in(issue_req("with-policy", 600)).await.unwrap();
    let msg = denied(c.client().issue_in(issue_req("by-admin", 600)).await);
    assert!(msg.contains("no policy permits"), "{msg}");
    let mut prod = issue_req("prod", 600);
    prod.scopes[0].resource = "prod/db".into();
    let msg = denied(orch.issue_in(prod.clone()).await);
    assert!(msg.contains("no-prod-tools-without-ops-intent"), "{msg}");
    prod.intent = "rotate keys for OPS-17".into();
    orch.issue(prod).await.unwrap();
    let listed = c
        .client()
        .list(list_task_req("by-admin", 10))
        .await
        .unwrap();
    assert!(listed.grants.is_empty(), "a denied issue left a grant");

    // Check: the tool server's attributes take part.
    let r = tool.check(check(&g.token, "read", &[])).await.unwrap();
    assert_eq!(
        (reason(&r), r.policy_ids.clone()),
        (pb::Reason::Allowed, vec!["agents-read".to_string()])
    );
    let prod_env = [("environment", "production")];
    let r = tool
        .check(check(&g.token, "read", &prod_env))
        .await
        .unwrap();
    assert_eq!(reason(&r), pb::Reason::PolicyDenied);
    assert_eq!(r.policy_ids, vec!["production-needs-ticket"]);
    let r = tool
        .check(check(
            &g.token,
            "read",
            &[("environment", "production"), ("ticket", "OPS-17")],
        ))
        .await
        .unwrap();
    assert_eq!(reason(&r), pb::Reason::Allowed);
    // Covered by the grant ("comment"), but no policy permits it.
    let r = tool.check(check(&g.token, "comment", &[])).await.unwrap();
    assert_eq!(
        (reason(&r), r.policy_ids.is_empty()),
        (pb::Reason::PolicyDenied, true)
    );
    // A grant issued before the policy is decided by it now.
    let r = tool
        .check(check(&early.token, "read", &prod_env))
        .await
        .unwrap();
    assert_eq!(reason(&r), pb::Reason::PolicyDenied);
    // Bad attributes are refused before anything is proposed.
    let err = tool
        .check(check(&g.token, "read", &[("not a name", "x")]))
        .await
        .unwrap_err();
    assert_eq!(err.grpc_code(), Some(Code::InvalidArgument), "{err}");

    // A node restarted compiles the set from its state and decides alike.
    let leader = c.wait_leader().await;
    let other = (1..=3).find(|&n| n != leader).unwrap();
    assert!(c.terminate(other));
    c.spawn(other);
    c.converged_digests().await;
    c.terminate(leader);
    c.wait_leader().await;
    let r = c
        .client_as(TOOL)
        .check(check(&g.token, "read", &prod_env))
        .await
        .unwrap();
    assert_eq!(reason(&r), pb::Reason::PolicyDenied);
    c.spawn(leader);
    c.converged_digests().await;

    // On the record: the change with the hash of its text, the denied
    // issue with nothing else, and the check decisions with their policies
    // and the tool server's attributes; the export verifies.
    let text = String::from_utf8(c.client_as("auditor").audit_export(None).await.unwrap()).unwrap();
    let entries: Vec<_> = text
        .lines()
        .filter_map(|l| match export::Line::parse(l) {
            Ok(export::Line::Entry { entry, .. }) => Some(entry),
            _ => None,
        })
        .collect();
    let change = entries
        .iter()
        .find(|e| e.kind == Kind::Policy)
        .expect("a policy entry");
    assert_eq!(change.reason, format!("sha256:{sha}"));
    assert!(change.actor.ends_with("/ops/admin"));
    assert!(entries
        .iter()
        .any(|e| e.kind == Kind::Issue && e.decision == Decision::Deny && e.task_id == "by-admin"));
    let denial = entries
        .iter()
        .find(|e| e.kind == Kind::Check && e.reason == "PolicyDenied" && !e.policy_ids.is_empty())
        .expect("a check denied by policy");
    assert_eq!(denial.policy_ids, vec!["production-needs-ticket"]);
    assert!(
        denial.detail.contains("\"environment\":\"production\""),
        "{}",
        denial.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_policy_sets_page_through_the_audit_log() {
    let c = Cluster::start(1).await;
    let admin = c.client();
    // Each change carries its whole text in its audit entry: five of them
    // would not fit one gRPC message as one page.
    let text = grant_tests::policies::realistic(1300);
    assert!(text.len() > 200 * 1024, "{} bytes", text.len());
    for i in 0..5 {
        admin
            .apply_policy(pb::ApplyPolicyRequest {
                policies: format!("{text}\n// version {i}\n"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut next = 0;
    let mut policy_entries = 0;
    loop {
        let page = admin.audit_entries(next, 1000).await.unwrap();
        assert!(!page.entries.is_empty() || next == page.tree_size);
        for e in &page.entries {
            assert_eq!(e.seq, next);
            next += 1;
            policy_entries += usize::from(e.kind == "policy");
        }
        if next >= page.tree_size {
            break;
        }
    }
    assert_eq!(policy_entries, 5);
}
