//! Tasks as first-class objects on real grantd processes: a grant is issued
//! only under an open task and never outlives its deadline; completing or
//! aborting a task (its owner, or a revoker) revokes its grants in one step;
//! the leader's sweep closes a task at its deadline; the task's declared
//! tools reach the policy; every step is on the audit record and in Watch.

use std::sync::Arc;

use grant_client::v1 as pb;
use grant_client::watch::{Start, Update, Watcher};
use grant_client::ClientError;
use grant_tests::grant_proto::audit::{export, Kind};
use grant_tests::*;
use tonic::Code;

const ORCH: &str = "orchestrator";
/// An issuer that is not a revoker: it may close only its own tasks.
const ORCH_B: &str = "orchestrator-b";
const TOOL: &str = "tool/github";

const ROLES: &str = r#"
admin = ["spiffe://example.org/ops/admin"]
checker = ["spiffe://example.org/tool/*"]
revoker = ["spiffe://example.org/orchestrator", "spiffe://example.org/ops/admin"]
auditor = ["spiffe://example.org/auditor", "spiffe://example.org/ops/admin"]
[[issuer]]
callers = ["spiffe://example.org/orchestrator", "spiffe://example.org/orchestrator-b", "spiffe://example.org/ops/admin"]
subjects = ["spiffe://example.org/agent/*"]
"#;

fn begin(task: &str, tools: &[&str], deadline_seconds: u64) -> pb::BeginTaskRequest {
    pb::BeginTaskRequest {
        task_id: task.into(),
        intent: "triage issue 42".into(),
        declared_tools: tools.iter().map(|t| t.to_string()).collect(),
        deadline_seconds,
    }
}

fn get_task(task: &str) -> pb::GetTaskRequest {
    pb::GetTaskRequest {
        task_id: task.into(),
        allow_stale: false,
    }
}

async fn abort(
    by: &grant_client::Client,
    reason: &str,
) -> Result<pb::AbortTaskResponse, ClientError> {
    by.abort_task(pb::AbortTaskRequest {
        request_id: String::new(),
        task_id: "t1".into(),
        reason: reason.into(),
    })
    .await
}

fn task_state(t: &Option<pb::Task>) -> pb::TaskState {
    pb::TaskState::try_from(t.as_ref().unwrap().state).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_bound_their_grants_and_close_with_them() {
    let c = Cluster::start(3).await;
    let admin = c.client();
    admin.set_roles(ROLES).await.unwrap();
    let orch = c.client_as(ORCH);
    let orch_b = c.client_as(ORCH_B);
    let tool = c.client_as(TOOL);
    let mut watcher = Watcher::new(Arc::new(c.client_as(ORCH)), Start::LogIndex(1));

    // No grant without a task; a refused Issue begins nothing.
    let (code, err) = refused(orch.issue(issue_req("t-none", 60)).await);
    assert_eq!((code, err.as_str()), (Code::NotFound, "not_found"));
    assert_eq!(
        refused(orch.get_task(get_task("t-none")).await).0,
        Code::NotFound
    );

    // Bad Begins are refused and begin nothing.
    for (what, bad) in [
        ("no tools", begin("t-bad", &[], 60)),
        ("tool twice", begin("t-bad", &["github", "github"], 60)),
        ("past the maximum", begin("t-bad", &["github"], 604_801)),
        ("bad tool name", begin("t-bad", &["git hub\n"], 60)),
    ] {
        assert_eq!(
            refused(orch.begin_task(bad).await),
            (Code::InvalidArgument, "invalid_argument".into()),
            "{what}"
        );
    }
    let too_many: Vec<String> = (0..65).map(|i| format!("tool-{i}")).collect();
    let mut many = begin("t-bad", &[], 60);
    many.declared_tools = too_many;
    assert_eq!(
        refused(orch.begin_task(many).await).0,
        Code::InvalidArgument
    );
    assert_eq!(
        refused(orch.get_task(get_task("t-bad")).await).0,
        Code::NotFound
    );
    // Only an issuer begins tasks.
    assert_eq!(
        refused(tool.begin_task(begin("t-tool", &["github"], 60)).await).0,
        Code::PermissionDenied
    );

    // Begin; a retry is answered with the same task; other parameters are
    // refused and change nothing.
    let b = orch
        .begin_task(begin("t1", &["github"], 600))
        .await
        .unwrap();
    assert!(!b.replayed);
    let t1 = b.task.clone().unwrap();
    assert!(t1.owner.ends_with("/orchestrator"));
    assert_eq!(task_state(&b.task), pb::TaskState::Open);
    let again = orch
        .begin_task(begin("t1", &["github"], 600))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.task.as_ref().unwrap().deadline_ms, t1.deadline_ms);
    assert_eq!(
        refused(orch.begin_task(begin("t1", &["github", "jira"], 600)).await),
        (Code::AlreadyExists, "already_exists".into())
    );
    assert_eq!(
        refused(orch_b.begin_task(begin("t1", &["github"], 600)).await).0,
        Code::AlreadyExists
    );

    // A grant never outlives its task: the TTL is capped at the deadline.
    let g1 = orch.issue(issue_req("t1", 300)).await.unwrap();
    assert_eq!(
        g1.grant.as_ref().unwrap().expires_at_ms - g1.grant.as_ref().unwrap().issued_at_ms,
        300_000
    );
    orch.begin_task(begin("t-short", &["github"], 4))
        .await
        .unwrap();
    let short = orch.issue(issue_req("t-short", 3600)).await.unwrap();
    let short_task = orch
        .get_task(get_task("t-short"))
        .await
        .unwrap()
        .task
        .unwrap();
    assert_eq!(
        short.grant.as_ref().unwrap().expires_at_ms,
        short_task.deadline_ms
    );
    assert_eq!(short_task.grant_count, 1);
    assert_eq!(
        reason(&tool.check(check_req(&short.token)).await.unwrap()),
        pb::Reason::Allowed
    );

    // At the deadline: the grant is expired, the task takes no grant, and
    // the sweep closes it.
    wait_for("t-short to be closed by the sweep", || async {
        let t = orch.get_task(get_task("t-short")).await.unwrap().task;
        task_state(&t) == pb::TaskState::Expired && t.unwrap().closed_at_ms != 0
    })
    .await;
    assert_eq!(
        reason(&tool.check(check_req(&short.token)).await.unwrap()),
        pb::Reason::Expired
    );
    assert_eq!(
        refused(orch.issue(issue_req("t-short", 60)).await).0,
        Code::FailedPrecondition
    );

    // Abort: an issuer that does not own the task may not; the owner must
    // say why; then every grant of it is revoked in one step.
    let g2 = orch.issue(issue_req("t1", 300)).await.unwrap();
    assert_eq!(
        refused(abort(&orch_b, "not mine").await),
        (Code::PermissionDenied, "permission_denied".into())
    );
    assert_eq!(refused(abort(&orch, " ").await).0, Code::InvalidArgument);
    let aborted = abort(&orch, "agent misbehaved").await.unwrap();
    let mut revoked = aborted.revoked_grant_ids.clone();
    revoked.sort();
    let mut want = vec![
        g1.grant.as_ref().unwrap().grant_id.clone(),
        g2.grant.as_ref().unwrap().grant_id.clone(),
    ];
    want.sort();
    assert_eq!(revoked, want);
    assert_eq!(task_state(&aborted.task), pb::TaskState::Aborted);
    for g in [&g1, &g2] {
        assert_eq!(
            reason(&tool.check(check_req(&g.token)).await.unwrap()),
            pb::Reason::TaskAborted
        );
    }
    assert!(abort(&orch, "again").await.unwrap().already_closed);
    assert_eq!(
        refused(orch.issue(issue_req("t1", 60)).await).0,
        Code::FailedPrecondition
    );

    // Complete: the owner may (orchestrator-b, an issuer only), and a
    // revoker may close a task it does not own.
    orch_b
        .begin_task(begin("t-b", &["github"], 600))
        .await
        .unwrap();
    let gb = orch_b.issue(issue_req("t-b", 300)).await.unwrap();
    let done = orch_b
        .complete_task(pb::CompleteTaskRequest {
            request_id: String::new(),
            task_id: "t-b".into(),
            reason: "answered".into(),
        })
        .await
        .unwrap();
    assert_eq!(done.revoked_grant_ids, vec![gb.grant.unwrap().grant_id]);
    assert_eq!(task_state(&done.task), pb::TaskState::Completed);
    orch_b
        .begin_task(begin("t-b2", &["github"], 600))
        .await
        .unwrap();
    let by_revoker = orch
        .complete_task(pb::CompleteTaskRequest {
            request_id: String::new(),
            task_id: "t-b2".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    assert!(by_revoker
        .task
        .unwrap()
        .closed_by
        .ends_with("/orchestrator"));

    // Watch saw the abort, the completion and the deadline, each once.
    let mut seen = Vec::new();
    while !(seen.contains(&(pb::watch_event::Kind::TaskAborted, "t1".to_string()))
        && seen.contains(&(pb::watch_event::Kind::TaskCompleted, "t-b2".to_string())))
    {
        let next = tokio::time::timeout(WAIT_MAX, watcher.next())
            .await
            .expect("watch stalled");
        if let Update::Events(events) = next.unwrap() {
            for e in events {
                let kind = pb::watch_event::Kind::try_from(e.kind).unwrap();
                if e.grant_id.is_empty() {
                    seen.push((kind, e.task_id));
                }
            }
        }
    }
    assert_eq!(
        seen,
        vec![
            (pb::watch_event::Kind::TaskExpired, "t-short".to_string()),
            (pb::watch_event::Kind::TaskAborted, "t1".to_string()),
            (pb::watch_event::Kind::TaskCompleted, "t-b".to_string()),
            (pb::watch_event::Kind::TaskCompleted, "t-b2".to_string()),
        ]
    );

    // The same task state on every node; the record has every step.
    c.converged_digests().await;
    for n in c.nodes.iter().map(|n| n.id) {
        let t = c
            .node_client(n)
            .get_task(pb::GetTaskRequest {
                task_id: "t1".into(),
                allow_stale: true,
            })
            .await
            .unwrap()
            .task
            .unwrap();
        assert_eq!(
            (t.grant_count, t.close_reason.as_str()),
            (2, "agent misbehaved")
        );
    }
    let text = String::from_utf8(c.client_as("auditor").audit_export(None).await.unwrap()).unwrap();
    let entries: Vec<_> = text
        .lines()
        .filter_map(|l| match export::Line::parse(l) {
            Ok(export::Line::Entry { entry, .. }) => Some(entry),
            _ => None,
        })
        .collect();
    let of = |kind: Kind, task: &str| {
        entries
            .iter()
            .filter(|e| e.kind == kind && e.task_id == task)
            .count()
    };
    assert_eq!(
        of(Kind::BeginTask, "t1"),
        1,
        "a replayed Begin appends nothing"
    );
    assert_eq!(of(Kind::AbortTask, "t1"), 1);
    assert_eq!(of(Kind::ExpireTask, "t-short"), 1);
    assert_eq!(
        of(Kind::Expire, "t-short"),
        1,
        "its grant expired with an entry"
    );
    assert_eq!(of(Kind::CompleteTask, "t-b"), 1);
    let begun = entries
        .iter()
        .find(|e| e.kind == Kind::BeginTask && e.task_id == "t1")
        .unwrap();
    assert_eq!(begun.resource, "github");
    assert!(begun.actor.ends_with("/orchestrator"));
}

/// The fourth example policy: nothing outside the tools a task declared,
/// at Issue and at Check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_see_the_tasks_declared_tools() {
    let c = Cluster::start(3).await;
    let admin = c.client();
    let policy = r#"
@id("issue-any") permit (principal, action == Action::"issue", resource);
@id("use-any") permit (principal, action, resource);
@id("declared-tools-only")
forbid (principal, action, resource)
unless { context.declared_tools.contains(resource.name) };
"#;
    admin
        .apply_policy(pb::ApplyPolicyRequest {
            policies: policy.into(),
            schema: String::new(),
            no_match: "deny".into(),
        })
        .await
        .unwrap();
    let orch = c.client_as(ORCH);
    orch.begin_task(begin("declared", &["jira"], 600))
        .await
        .unwrap();
    // github is not among the task's tools: the Issue is denied.
    let (code, err) = refused(orch.issue(issue_req("declared", 300)).await);
    assert_eq!(
        (code, err.as_str()),
        (Code::PermissionDenied, "policy_denied")
    );
    // Declared: issued and used.
    orch.begin_task(begin("declared-2", &["github"], 600))
        .await
        .unwrap();
    let g = orch.issue(issue_req("declared-2", 300)).await.unwrap();
    let r = c.client_as(TOOL).check(check_req(&g.token)).await.unwrap();
    assert_eq!(reason(&r), pb::Reason::Allowed);
}

/// Renew: the grant's subject (or issuer) extends it, within the task's
/// deadline; the sweep then leaves it alone past its first expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_renews_within_its_task_and_outlives_its_first_expiry() {
    let c = Cluster::start(3).await;
    let orch = c.client_as(ORCH);
    let agent = c.client_as("agent/planner");
    let tool = c.client_as(TOOL);
    let task = orch
        .begin_task(begin("renew", &["github"], 600))
        .await
        .unwrap();
    let deadline = task.task.unwrap().deadline_ms;
    let g = orch.issue(issue_req("renew", 3)).await.unwrap();
    let grant = g.grant.clone().unwrap();
    let renew = |ttl_seconds: u64| pb::RenewRequest {
        grant_id: grant.grant_id.clone(),
        ttl_seconds,
    };

    // Only its subject or its issuer; a TTL over the maximum is refused.
    assert_eq!(
        refused(tool.renew(renew(60)).await),
        (Code::PermissionDenied, "permission_denied".into())
    );
    assert_eq!(
        refused(agent.renew(renew(3601)).await).0,
        Code::InvalidArgument
    );

    let r = agent.renew(renew(60)).await.unwrap();
    assert!(r.extended);
    let renewed = r.grant.unwrap();
    assert!(renewed.expires_at_ms >= grant.expires_at_ms + 50_000);
    assert_eq!(
        r.max_expires_at_ms, deadline,
        "the task ends before the maximum TTL"
    );
    assert_ne!(r.token, g.token, "a token whose exp is the new expiry");

    // Past the first expiry (and a sweep or more): both tokens still work,
    // and Check reports the new expiry.
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    for token in [&g.token, &r.token] {
        let ok = tool.check(check_req(token)).await.unwrap();
        assert_eq!(reason(&ok), pb::Reason::Allowed);
        assert_eq!(ok.expires_at_ms, renewed.expires_at_ms);
    }

    // Up to the task's deadline and no further; the issuer may renew too.
    let r = orch.renew(renew(3600)).await.unwrap();
    assert_eq!(
        (r.extended, r.grant.unwrap().expires_at_ms),
        (true, deadline)
    );
    assert!(!orch.renew(renew(3600)).await.unwrap().extended);

    // A revoked grant does not come back.
    orch.revoke(revoke_req(&grant.grant_id, "done"))
        .await
        .unwrap();
    assert_eq!(
        refused(agent.renew(renew(60)).await).0,
        Code::FailedPrecondition
    );

    let text = String::from_utf8(c.client_as("auditor").audit_export(None).await.unwrap()).unwrap();
    let renewals: Vec<_> = text
        .lines()
        .filter_map(|l| match export::Line::parse(l) {
            Ok(export::Line::Entry { entry, .. }) if entry.kind == Kind::Renew => Some(entry),
            _ => None,
        })
        .collect();
    assert_eq!(renewals.len(), 2, "two renewals moved the expiry");
    assert_eq!(renewals[0].actor, AGENT);
    assert!(renewals[1].actor.ends_with("/orchestrator"));
}

/// Quotas: active grants per subject, and the issue rate per caller, each
/// refused with ResourceExhausted naming the setting, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_with_resource_exhausted_and_change_nothing() {
    let c = Cluster::start_with(
        3,
        &[
            "--active-grants-per-subject-max",
            "2",
            "--issue-rate-per-caller",
            "5",
            "--issue-burst-per-caller",
            "6",
        ],
    )
    .await;
    let orch = c.client_as(ORCH);
    orch.begin_task(begin("quota", &["github"], 600))
        .await
        .unwrap();
    let a = orch.issue(issue_req("quota", 300)).await.unwrap();
    orch.issue(issue_req("quota", 300)).await.unwrap();
    let over = orch.issue(issue_req("quota", 300)).await;
    let msg = format!("{:?}", over.as_ref().map(|_| ()));
    assert_eq!(
        refused(over),
        (Code::ResourceExhausted, "resource_exhausted".into())
    );
    assert!(msg.contains("active_grants_per_subject_max"), "{msg}");
    let listed = orch.list(list_task_req("quota", 100)).await.unwrap();
    assert_eq!(listed.grants.len(), 2, "the refused Issue left no grant");
    // A revoke gives the place back.
    orch.revoke(revoke_req(&a.grant.unwrap().grant_id, "make room"))
        .await
        .unwrap();
    orch.issue(issue_req("quota", 300)).await.unwrap();

    // The caller's rate: a burst of 6, then 5 a second. Other subjects,
    // so that only the rate can refuse.
    let mut issued = 0;
    let mut limited = None;
    for i in 0..40 {
        let mut req = issue_req("quota", 300);
        req.subject = format!("spiffe://example.org/agent/worker-{i}");
        match orch.issue(req).await {
            Ok(_) => issued += 1,
            Err(e) => {
                limited = Some(e);
                break;
            }
        }
    }
    let e = limited.expect("the issue rate never refused");
    assert_eq!(e.grpc_code(), Some(Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("issue_rate_per_caller"), "{e}");
    let listed = orch.list(list_task_req("quota", 100)).await.unwrap();
    assert_eq!(
        listed.grants.len(),
        3 + issued,
        "the limited Issue left no grant"
    );
    // Another caller has its own bucket.
    let mut req = issue_req("quota-admin", 60);
    req.subject = "spiffe://example.org/agent/worker-admin".into();
    c.client().issue_in(req).await.unwrap();
}
