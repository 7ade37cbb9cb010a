//! A state bounded by active work: a grant leaves the state once it can no
//! longer verify anywhere (its expiry plus `clock_skew_margin_ms`), on
//! every replica alike. Check still answers EXPIRED for its token, a retry
//! of its Issue gets no second grant, and its history stays in the audit
//! chain.

use grant_tests::grant_client::v1 as pb;
use grant_tests::*;
use tonic::Code;

fn get(id: &str) -> pb::GetRequest {
    pb::GetRequest {
        grant_id: id.into(),
        allow_stale: true,
    }
}

/// Three nodes that sweep every 100 ms with a 1.5 s clock-skew margin.
async fn purging_cluster() -> Cluster {
    Cluster::start_with(
        3,
        &[
            "--sweep-interval-ms",
            "100",
            "--clock-skew-margin-ms",
            "1500",
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_past_its_expiry_and_the_margin_leaves_every_replica() {
    let c = purging_cluster().await;
    let client = c.client();
    let mut first = issue_req("purge", 1);
    first.request_id = "purge-0001".into();
    let expiring = client.issue_in(first.clone()).await.unwrap();
    let revoked = client.issue_in(issue_req("purge", 2)).await.unwrap();
    let kept = client.issue_in(issue_req("purge", 600)).await.unwrap();
    let id = |r: &pb::IssueResponse| r.grant.clone().unwrap().grant_id;
    client
        .revoke(revoke_req(&id(&revoked), "done"))
        .await
        .unwrap();
    // Within its expiry and the margin, a grant is answered from its record.
    assert_eq!(
        reason(&client.check(check_req(&revoked.token)).await.unwrap()),
        pb::Reason::Revoked
    );

    // Then it leaves every replica's state.
    for gone in [&expiring, &revoked] {
        for n in &c.nodes {
            let node = c.node_client(n.id);
            wait_for("the retired grant to leave the node's state", || async {
                node.get(get(&id(gone)))
                    .await
                    .is_err_and(|e| e.grpc_code() == Some(Code::NotFound))
            })
            .await;
        }
    }
    let by_task = client
        .list(pb::ListRequest {
            by: Some(pb::list_request::By::TaskId("purge".into())),
            page_size: 0,
            page_token: String::new(),
            allow_stale: false,
        })
        .await
        .unwrap();
    let listed: Vec<String> = by_task.grants.iter().map(|g| g.grant_id.clone()).collect();
    assert_eq!(listed, vec![id(&kept)], "only the active grant is listed");

    // Its token still carries a valid signature: EXPIRED, as before.
    for token in [&expiring.token, &revoked.token] {
        let r = client.check(check_req(token)).await.unwrap();
        assert_eq!(reason(&r), pb::Reason::Expired);
        assert_eq!(r.decision, pb::Decision::Deny as i32);
    }
    assert_eq!(
        reason(&client.check(check_req(&kept.token)).await.unwrap()),
        pb::Reason::Allowed
    );
    // A retry of its Issue: refused, never a second grant.
    let retry = client.issue(first).await.unwrap_err();
    assert_eq!(retry.grpc_code(), Some(Code::FailedPrecondition), "{retry}");
    assert!(retry.to_string().contains("left the ledger"), "{retry}");

    // Its history stays in the chain: issued, then expired or revoked.
    let entries = c.audit_entries_from(0).await;
    for (gone, kind) in [
        (&expiring, grant_proto::audit::Kind::Expire),
        (&revoked, grant_proto::audit::Kind::Revoke),
    ] {
        let kinds: Vec<_> = entries
            .iter()
            .filter(|e| e.grant_id == id(gone))
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds.first(), Some(&grant_proto::audit::Kind::Issue));
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "replicas differ: {d:?}");
    c.chains_agree("after the purge").await;
}

/// A closed task leaves the state too, once its deadline is past the margin
/// and its grants have left: GetTask no longer finds it on any replica, and
/// its id may be begun again, as a new task. Its history stays in the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_task_past_its_deadline_and_the_margin_leaves_every_replica() {
    let c = purging_cluster().await;
    let client = c.client();
    let begun = client
        .begin_task(pb::BeginTaskRequest {
            deadline_seconds: 2,
            ..begin_req("brief")
        })
        .await
        .unwrap();
    let g = client.issue(issue_req("brief", 1)).await.unwrap();
    close_task(&client, "brief", None).await.unwrap();
    let get_task = |allow_stale| pb::GetTaskRequest {
        task_id: "brief".into(),
        allow_stale,
    };
    // Closed, and still there until its deadline and the margin pass.
    let t = client
        .get_task(get_task(false))
        .await
        .unwrap()
        .task
        .unwrap();
    assert_eq!(t.state, pb::TaskState::Completed as i32);
    for n in &c.nodes {
        let node = c.node_client(n.id);
        wait_for("the closed task to leave the node's state", || async {
            node.get_task(get_task(true))
                .await
                .is_err_and(|e| e.grpc_code() == Some(Code::NotFound))
        })
        .await;
    }
    // Its grant left before it; its token now answers EXPIRED.
    let r = client.check(check_req(&g.token)).await.unwrap();
    assert_eq!(reason(&r), pb::Reason::Expired);
    // The id is free: a new task, begun later.
    let again = client.begin_task(begin_req("brief")).await.unwrap();
    assert!(!again.replayed);
    assert!(
        again.task.unwrap().begun_at_ms > begun.task.unwrap().begun_at_ms,
        "a new task"
    );
    let entries = c.audit_entries_from(0).await;
    let begins = entries
        .iter()
        .filter(|e| e.task_id == "brief" && e.kind == grant_proto::audit::Kind::BeginTask)
        .count();
    assert_eq!(begins, 2, "both tasks are on the record");
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "replicas differ: {d:?}");
}
