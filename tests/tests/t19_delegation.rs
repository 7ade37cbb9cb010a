//! Delegation on real grantd processes: the holder of a grant hands a
//! sub-grant of a subset of its scopes, expiring no later, to another
//! workload; nothing widens through it; depth is bounded; revoking the
//! parent revokes every descendant; the policy decides `delegate`; every
//! step is on the audit record.

use grant_client::v1 as pb;
use grant_tests::grant_proto::audit::{export, Kind};
use grant_tests::*;
use tonic::Code;

const ORCH: &str = "orchestrator";
const TOOL: &str = "tool/github";
const PLANNER: &str = "agent/planner";

fn id(path: &str) -> String {
    format!("spiffe://example.org/{path}")
}

fn delegate(
    parent_token: &str,
    to: &str,
    scopes: &[(&str, &[&str])],
    ttl: u64,
) -> pb::DelegateRequest {
    pb::DelegateRequest {
        request_id: String::new(),
        parent_token: parent_token.into(),
        subject: id(to),
        sub_task: "summarise the thread".into(),
        scopes: scopes
            .iter()
            .map(|(r, a)| pb::Scope {
                resource: r.to_string(),
                actions: a.iter().map(|a| a.to_string()).collect(),
            })
            .collect(),
        intent: String::new(),
        ttl_seconds: ttl,
    }
}

/// A tool server's Check of `token` presented by `who`.
fn check_as(token: &str, who: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        identity: id(who),
        ..check_req(token)
    }
}

const READ: &[(&str, &[&str])] = &[("github", &["read"])];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_narrows_is_bounded_and_falls_with_its_parent() {
    let c = Cluster::start(3).await;
    let orch = c.client_as(ORCH);
    let tool = c.client_as(TOOL);
    let planner = c.client_as(PLANNER);
    let parent = orch.issue_in(issue_req("deleg", 300)).await.unwrap();
    let pg = parent.grant.clone().unwrap();

    // Nothing wider than the parent, only by its holder, only with a token
    // the cluster signed.
    for (what, scopes) in [
        ("another action", &[("github", &["read", "write"][..])][..]),
        ("another tool", &[("jira", &["read"][..])][..]),
    ] {
        assert_eq!(
            refused(
                planner
                    .delegate(delegate(&parent.token, "agent/helper", scopes, 60))
                    .await
            ),
            (Code::InvalidArgument, "invalid_argument".into()),
            "{what}"
        );
    }
    assert_eq!(
        refused(
            orch.delegate(delegate(&parent.token, "agent/helper", READ, 60))
                .await
        )
        .0,
        Code::PermissionDenied
    );
    let (signed, _) = parent.token.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{}", "A".repeat(86));
    assert_eq!(
        refused(
            planner
                .delegate(delegate(&forged, "agent/helper", READ, 60))
                .await
        )
        .0,
        Code::InvalidArgument
    );
    let listed = orch.list(list_task_req("deleg", 100)).await.unwrap();
    assert_eq!(listed.grants.len(), 1, "no refused delegation left a grant");

    // Within the parent: the helper may read, not comment; the expiry is
    // capped at the parent's; a retry answers with the same sub-grant.
    let mut req = delegate(&parent.token, "agent/helper", READ, 3600);
    req.request_id = "deleg-1".into();
    let d1 = planner.delegate(req.clone()).await.unwrap();
    let g1 = d1.grant.clone().unwrap();
    assert_eq!(
        (g1.depth, g1.parent_grant_id.as_str()),
        (1, pg.grant_id.as_str())
    );
    assert_eq!(g1.expires_at_ms, pg.expires_at_ms);
    assert!(g1.issuer.ends_with("/agent/planner"));
    assert_eq!(g1.intent, pg.intent, "unsaid, the purpose is the parent's");
    let again = planner.delegate(req).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.grant.unwrap().grant_id, g1.grant_id);
    let ok = tool
        .check(check_as(&d1.token, "agent/helper"))
        .await
        .unwrap();
    assert_eq!(reason(&ok), pb::Reason::Allowed);
    let mut comment = check_as(&d1.token, "agent/helper");
    comment.action = "comment".into();
    assert_eq!(
        reason(&tool.check(comment).await.unwrap()),
        pb::Reason::OutOfScope
    );
    // Bound to the helper: the planner cannot use it.
    assert_eq!(
        reason(&tool.check(check_as(&d1.token, PLANNER)).await.unwrap()),
        pb::Reason::SubjectMismatch
    );

    // Depth: 2 and 3 are allowed (delegation_depth_max = 3), 4 is not.
    let helper = c.client_as("agent/helper");
    let d2 = helper
        .delegate(delegate(&d1.token, "agent/helper-2", READ, 60))
        .await
        .unwrap();
    let d3 = c
        .client_as("agent/helper-2")
        .delegate(delegate(&d2.token, "agent/helper-3", READ, 60))
        .await
        .unwrap();
    assert_eq!(d3.grant.as_ref().unwrap().depth, 3);
    assert_eq!(
        refused(
            c.client_as("agent/helper-3")
                .delegate(delegate(&d3.token, "agent/helper-4", READ, 60))
                .await
        ),
        (Code::ResourceExhausted, "resource_exhausted".into())
    );

    // Revoking the parent revokes every descendant, in one step.
    let r = orch
        .revoke(revoke_req(&pg.grant_id, "task over"))
        .await
        .unwrap();
    let mut down = r.descendants_revoked.clone();
    down.sort();
    let mut want: Vec<String> = [&d1, &d2, &d3]
        .iter()
        .map(|d| d.grant.as_ref().unwrap().grant_id.clone())
        .collect();
    want.sort();
    assert_eq!(down, want);
    for (d, who) in [
        (&d1, "agent/helper"),
        (&d2, "agent/helper-2"),
        (&d3, "agent/helper-3"),
    ] {
        assert_eq!(
            reason(&tool.check(check_as(&d.token, who)).await.unwrap()),
            pb::Reason::Revoked
        );
    }
    // Nothing delegates from a revoked grant.
    assert_eq!(
        refused(
            planner
                .delegate(delegate(&parent.token, "agent/helper", READ, 60))
                .await
        )
        .0,
        Code::FailedPrecondition
    );

    let text = String::from_utf8(c.client_as("auditor").audit_export(None).await.unwrap()).unwrap();
    let entries: Vec<_> = text
        .lines()
        .filter_map(|l| match export::Line::parse(l) {
            Ok(export::Line::Entry { entry, .. }) => Some(entry),
            _ => None,
        })
        .collect();
    let delegations: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == Kind::Delegate)
        .collect();
    assert_eq!(delegations.len(), 3, "a replay appends nothing");
    assert_eq!(delegations[0].actor, id(PLANNER));
    assert_eq!(delegations[0].subject, id("agent/helper"));
    let revokes = entries
        .iter()
        .filter(|e| e.kind == Kind::Revoke && e.reason.starts_with("parent grant"))
        .count();
    assert_eq!(revokes, 3);
}

/// The policy decides delegations as `Action::"delegate"`, the holder as
/// principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_decides_who_may_delegate_to_whom() {
    let c = Cluster::start(3).await;
    let policy = r#"
@id("issue-any") permit (principal, action == Action::"issue", resource);
@id("use-any") permit (principal, action, resource) when { principal.path like "/agent/*" }
  unless { action == Action::"delegate" };
@id("delegate-to-helpers") permit (principal, action == Action::"delegate", resource)
  when { context.subject like "spiffe://example.org/agent/helper*" };
"#;
    c.client()
        .apply_policy(pb::ApplyPolicyRequest {
            policies: policy.into(),
            schema: String::new(),
            no_match: "deny".into(),
        })
        .await
        .unwrap();
    let orch = c.client_as(ORCH);
    let planner = c.client_as(PLANNER);
    let parent = orch.issue_in(issue_req("deleg-policy", 300)).await.unwrap();
    assert_eq!(
        refused(
            planner
                .delegate(delegate(&parent.token, "agent/other", READ, 60))
                .await
        ),
        (Code::PermissionDenied, "policy_denied".into())
    );
    let d = planner
        .delegate(delegate(&parent.token, "agent/helper", READ, 60))
        .await
        .unwrap();
    let r = c
        .client_as(TOOL)
        .check(check_as(&d.token, "agent/helper"))
        .await
        .unwrap();
    assert_eq!(reason(&r), pb::Reason::Allowed);
}
