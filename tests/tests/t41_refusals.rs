//! Refused calls on the record (docs/audit-format.md, "Refused calls"): a
//! privileged call an authenticated caller was refused appears in the
//! audit chain exactly once, on whichever node it was sent to, with the
//! caller, the method, the target and the reason; a flood is recorded in a
//! bounded number of entries that still count every refusal.

use grant_tests::grant_client::v1 as pb;
use grant_tests::grant_proto::audit::{Decision, Entry, Kind};
use grant_tests::*;

const ORCH: &str = "orchestrator";
const TOOL: &str = "tool/search";
const AUDITOR: &str = "auditor";
const AGENT_PATH: &str = "agent/planner";

fn id(path: &str) -> String {
    format!("spiffe://example.org/{path}")
}

/// Every `refused` entry of the chain.
async fn refused_entries(c: &Cluster) -> Vec<Entry> {
    let all = c.audit_entries_from(0).await;
    all.into_iter()
        .filter(|e| e.kind == Kind::Refused)
        .collect()
}

/// The refused entries whose fields contain `marker`, once `n` of them are
/// in the chain (and a little longer, to see that no more come).
async fn marked(c: &Cluster, marker: &str, n: usize) -> Vec<Entry> {
    let find = |all: Vec<Entry>| -> Vec<Entry> {
        all.into_iter()
            .filter(|e| {
                [&e.subject, &e.task_id, &e.grant_id, &e.resource, &e.reason]
                    .iter()
                    .any(|f| f.contains(marker))
            })
            .collect()
    };
    wait_for(&format!("{n} refused entries naming {marker}"), || async {
        find(refused_entries(c).await).len() >= n
    })
    .await;
    // Past a few flush intervals: a duplicate would have arrived by now.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    find(refused_entries(c).await)
}

fn count(e: &Entry) -> u64 {
    let d: serde_json::Value = serde_json::from_str(&e.detail).unwrap();
    d["count"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_privileged_call_is_recorded_once_on_any_node() {
    let c = Cluster::start(3).await;
    let admin = c.client();
    let (leader, follower) = c.leader_and_follower().await;
    for node in [leader, follower] {
        let on = |path: &str| c.node_client_as(node, path);
        let m = format!("n{node}");

        // An agent calling Issue and BeginTask: its role does not allow it.
        let mut req = issue_req(&format!("task-{m}-agent"), 60);
        req.subject = id(&format!("agent/{m}-self"));
        assert_eq!(
            refused(on(AGENT_PATH).issue(req).await).1,
            "permission_denied"
        );
        let e = &marked(&c, &format!("agent/{m}-self"), 1).await[..];
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].actor.as_str(), e[0].action.as_str(), e[0].decision),
            (
                id(AGENT_PATH).as_str(),
                "/grantledger.v1.Grants/Issue",
                Decision::Deny
            )
        );
        assert_eq!(e[0].task_id, format!("task-{m}-agent"));
        assert_eq!(e[0].resource, "github");
        assert!(
            e[0].reason.starts_with("permission_denied: "),
            "{}",
            e[0].reason
        );
        assert_eq!(count(&e[0]), 1);
        let begin = begin_req(&format!("task-{m}-begin"));
        refused(on(AGENT_PATH).begin_task(begin).await);
        assert_eq!(marked(&c, &format!("task-{m}-begin"), 1).await.len(), 1);

        // A tool server calling Revoke.
        refused(
            on(TOOL)
                .revoke(revoke_req(&format!("g-{m}-tool"), "x"))
                .await,
        );
        let e = marked(&c, &format!("g-{m}-tool"), 1).await;
        assert_eq!((e.len(), e[0].actor.clone()), (1, id(TOOL)));

        // An auditor applying a policy.
        let apply = pb::ApplyPolicyRequest {
            policies: format!("// {m}-auditor\npermit(principal, action, resource);"),
            ..Default::default()
        };
        assert_eq!(
            refused(on(AUDITOR).apply_policy(apply).await).1,
            "permission_denied"
        );

        // An Issue to a subject of another trust domain: bad input.
        // (The issuer mapping pairs no caller with it.)
        let mut req = issue_req(&format!("task-{m}-foreign"), 60);
        req.subject = format!("spiffe://other.org/agent/{m}-foreign");
        let code = refused(on(ORCH).issue(req).await).1;
        let e = marked(&c, &format!("{m}-foreign"), 1).await;
        assert_eq!((e.len(), e[0].actor.clone()), (1, id(ORCH)));
        assert!(
            e[0].reason.starts_with(&format!("{code}: ")),
            "{}",
            e[0].reason
        );

        // An Issue under a completed task: the ledger refuses it (on a
        // follower, after forwarding it to the leader).
        let task = format!("task-{m}-done");
        admin.begin_task(begin_req(&task)).await.unwrap();
        admin.issue(issue_req(&task, 60)).await.unwrap();
        close_task(&admin, &task, None).await.unwrap();
        assert_eq!(
            refused(on(ORCH).issue(issue_req(&task, 60)).await).1,
            "failed_precondition"
        );
        let e = marked(&c, &task, 1).await;
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].reason.starts_with("failed_precondition: "),
            "{}",
            e[0].reason
        );

        // A Revoke of a grant that does not exist.
        let ghost = format!("{:0>32}", format!("dead{node}beef"));
        assert_eq!(
            refused(on(ORCH).revoke(revoke_req(&ghost, "x")).await).1,
            "not_found"
        );
        assert_eq!(marked(&c, &ghost, 1).await.len(), 1);
    }
    // The auditor's two attempts: one each.
    let policy = refused_entries(&c)
        .await
        .into_iter()
        .filter(|e| e.action == "/grantledger.v1.Policy/Apply")
        .count();
    assert_eq!(policy, 2);
    // A read that finds nothing is not a refusal of a privileged call.
    refused(
        admin
            .get(pb::GetRequest {
                grant_id: "0".repeat(32),
                allow_stale: false,
            })
            .await,
    );
    assert!(refused_entries(&c)
        .await
        .iter()
        .all(|e| e.action != "/grantledger.v1.Grants/Get"));
    c.chains_agree("refusals").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_bounded_and_every_one_is_counted() {
    let c = Cluster::start_with(3, &["--refusal-window-ms", "3000"]).await;
    let leader = c.wait_leader().await;
    let agent = c.node_client_as(leader, "agent/flooder");
    let calls = 200u64;
    for i in 0..calls {
        let mut req = issue_req("flood", 60);
        req.subject = id(&format!("agent/flood-{i}"));
        refused(agent.issue(req).await);
    }
    let flooder = id("agent/flooder");
    wait_for("the flood's aggregate entry", || async {
        refused_entries(&c)
            .await
            .iter()
            .filter(|e| e.actor == flooder)
            .map(count)
            .sum::<u64>()
            >= calls
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let entries: Vec<Entry> = refused_entries(&c)
        .await
        .into_iter()
        .filter(|e| e.actor == flooder)
        .collect();
    // Ten one by one, the rest in aggregates (the flood may straddle a
    // window): every refusal counted exactly once.
    assert_eq!(entries.iter().map(count).sum::<u64>(), calls);
    let singles = entries.iter().filter(|e| count(e) == 1).count();
    assert!(entries.len() <= 2 * 10 + 2, "{} entries", entries.len());
    assert!(singles >= 10, "{singles} single entries");
    let aggregate = entries.iter().find(|e| count(e) > 1).unwrap();
    assert_eq!(aggregate.action, "/grantledger.v1.Grants/Issue");
    assert!(aggregate.subject.is_empty());
    c.chains_agree("flood").await;
}
