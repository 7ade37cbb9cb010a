//! The data path on a real three-node cluster: issue, check, revoke,
//! complete task, expiry, identity binding, scope, reads and retries.

use grant_tests::grant_client::v1 as pb;
use grant_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_check_revoke_and_task_completion() {
    let c = Cluster::start(3).await;
    let client = c.client();

    let issued = client.issue_in(issue_req("task-1", 300)).await.unwrap();
    let g = issued.grant.clone().unwrap();
    // A JWT: header.payload.signature, the header starting {"
    assert!(issued.token.starts_with("eyJ") && issued.token.split('.').count() == 3);
    assert!(!issued.replayed);
    assert_eq!(
        pb::GrantState::try_from(g.state).unwrap(),
        pb::GrantState::Active
    );
    assert!(g.expires_at_ms - g.issued_at_ms == 300_000);

    let allow = client.check(check_req(&issued.token)).await.unwrap();
    assert_eq!(
        pb::Decision::try_from(allow.decision).unwrap(),
        pb::Decision::Allow
    );
    assert_eq!(reason(&allow), pb::Reason::Allowed);
    assert_eq!(allow.grant_id, g.grant_id);

    // Bound to its subject, and to its scopes.
    let mut other = check_req(&issued.token);
    other.identity = "spiffe://example.org/agent/intruder".into();
    assert_eq!(
        reason(&client.check(other).await.unwrap()),
        pb::Reason::SubjectMismatch
    );
    let mut write = check_req(&issued.token);
    write.action = "write".into();
    assert_eq!(
        reason(&client.check(write).await.unwrap()),
        pb::Reason::OutOfScope
    );
    let mut jira = check_req(&issued.token);
    jira.resource = "jira".into();
    assert_eq!(
        reason(&client.check(jira).await.unwrap()),
        pb::Reason::OutOfScope
    );
    // The real claims under a signature the cluster did not make.
    let (signed, _) = issued.token.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{}", "A".repeat(86));
    assert_eq!(
        reason(&client.check(check_req(&forged)).await.unwrap()),
        pb::Reason::BadToken
    );

    let revoked = client
        .revoke(revoke_req(&g.grant_id, "task done"))
        .await
        .unwrap();
    assert!(!revoked.already_inactive);
    let deny = client.check(check_req(&issued.token)).await.unwrap();
    assert_eq!(
        pb::Decision::try_from(deny.decision).unwrap(),
        pb::Decision::Deny
    );
    assert_eq!(reason(&deny), pb::Reason::Revoked);
    // Revoke again: idempotent.
    let again = client.revoke(revoke_req(&g.grant_id, "")).await.unwrap();
    assert!(again.already_inactive);

    // Completing a task revokes all its grants in one step, and only those.
    let a = client.issue_in(issue_req("task-2", 300)).await.unwrap();
    let b = client.issue_in(issue_req("task-2", 300)).await.unwrap();
    let keep = client.issue_in(issue_req("task-3", 300)).await.unwrap();
    let done = client
        .complete_task(pb::CompleteTaskRequest {
            request_id: String::new(),
            task_id: "task-2".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let mut revoked_ids = done.revoked_grant_ids.clone();
    revoked_ids.sort();
    let mut expect = vec![a.grant.unwrap().grant_id, b.grant.unwrap().grant_id];
    expect.sort();
    assert_eq!(revoked_ids, expect);
    assert_eq!(
        reason(&client.check(check_req(&a.token)).await.unwrap()),
        pb::Reason::TaskCompleted
    );
    assert_eq!(
        reason(&client.check(check_req(&b.token)).await.unwrap()),
        pb::Reason::TaskCompleted
    );
    assert_eq!(
        reason(&client.check(check_req(&keep.token)).await.unwrap()),
        pb::Reason::Allowed
    );
    // A completed task takes no new grants.
    let err = client.issue_in(issue_req("task-2", 300)).await.unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::FailedPrecondition));

    // List by task, paginated and linearizable.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = client
            .list(pb::ListRequest {
                by: Some(pb::list_request::By::TaskId("task-2".into())),
                page_size: 1,
                page_token,
                allow_stale: false,
            })
            .await
            .unwrap();
        assert!(r.grants.len() <= 1);
        seen.extend(r.grants.iter().map(|g| (g.grant_id.clone(), g.state)));
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    seen.sort();
    assert_eq!(seen.iter().map(|s| s.0.clone()).collect::<Vec<_>>(), expect);
    assert!(seen.iter().all(|s| s.1 == pb::GrantState::Revoked as i32));
    let by_subject = client
        .list(pb::ListRequest {
            by: Some(pb::list_request::By::Subject(AGENT.into())),
            page_size: 0,
            page_token: String::new(),
            allow_stale: false,
        })
        .await
        .unwrap();
    assert_eq!(by_subject.grants.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_grant_denies_and_is_swept() {
    let c = Cluster::start_with(3, &["--sweep-interval-ms", "100"]).await;
    let client = c.client();
    let issued = client.issue_in(issue_req("short", 1)).await.unwrap();
    let id = issued.grant.unwrap().grant_id;
    assert_eq!(
        reason(&client.check(check_req(&issued.token)).await.unwrap()),
        pb::Reason::Allowed
    );
    // Wait on observable state: the sweep records the expiry in the ledger.
    wait_for("the sweep to retire the grant", || async {
        let g = client
            .get(pb::GetRequest {
                grant_id: id.clone(),
                allow_stale: false,
            })
            .await
            .unwrap()
            .grant
            .unwrap();
        g.state == pb::GrantState::Expired as i32
    })
    .await;
    assert_eq!(
        reason(&client.check(check_req(&issued.token)).await.unwrap()),
        pb::Reason::Expired
    );
    // Every node holds the same state once they have applied the same index.
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "replicas differ: {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_with_same_request_id_gives_one_grant_even_after_revoke() {
    let c = Cluster::start(3).await;
    let client = c.client();
    let mut req = issue_req("retry-task", 300);
    req.request_id = "req-0001".into();
    let first = client.issue_in(req.clone()).await.unwrap();
    // A retry by the same issuer (what the client library does after a lost
    // answer) gets the same grant and a token for it.
    let second = client.issue(req.clone()).await.unwrap();
    assert!(second.replayed);
    assert_eq!(
        reason(&client.check(check_req(&second.token)).await.unwrap()),
        pb::Reason::Allowed
    );
    // Its receipt names the original audit entry: the chain holds one.
    let (r1, r2) = (
        first.receipt.clone().unwrap(),
        second.receipt.clone().unwrap(),
    );
    assert!(!r1.entry_hash.is_empty());
    assert_eq!(
        (r2.audit_seq, &r2.entry_hash),
        (r1.audit_seq, &r1.entry_hash)
    );
    assert_eq!(
        first.grant.as_ref().unwrap().grant_id,
        second.grant.as_ref().unwrap().grant_id
    );
    let id = first.grant.unwrap().grant_id;
    client.revoke(revoke_req(&id, "")).await.unwrap();
    // A delayed retry after the revoke returns the revoked grant, not a new one.
    let late = client.issue(req.clone()).await.unwrap();
    assert!(late.replayed);
    let g = late.grant.unwrap();
    assert_eq!(g.grant_id, id);
    assert_eq!(g.state, pb::GrantState::Revoked as i32);
    let all = client.list(list_task_req("retry-task", 0)).await.unwrap();
    assert_eq!(all.grants.len(), 1);
    // The same id with other parameters is refused and creates nothing.
    let mut changed = req.clone();
    changed.intent = "something else".into();
    let err = client.issue(changed).await.unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::FailedPrecondition));
}

/// Issues that arrive together share a log entry; a request id sent twice
/// at once, maybe into the same entry, still makes one grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issues_and_duplicates_each_get_their_own_answer() {
    let c = Cluster::start(3).await;
    let client = std::sync::Arc::new(c.client());
    client.issue_in(issue_req("together", 300)).await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut req = issue_req("together", 300);
        req.request_id = format!("together-{i:02}");
        for _ in 0..2 {
            let (client, req) = (std::sync::Arc::clone(&client), req.clone());
            calls.spawn(async move { (req.request_id.clone(), client.issue(req).await.unwrap()) });
        }
    }
    let mut by_request = std::collections::BTreeMap::<String, Vec<pb::IssueResponse>>::new();
    while let Some(done) = calls.join_next().await {
        let (id, answer) = done.unwrap();
        by_request.entry(id).or_default().push(answer);
    }
    assert_eq!(by_request.len(), 20);
    let mut grants = std::collections::BTreeSet::new();
    for (id, answers) in &by_request {
        let ids: Vec<_> = answers
            .iter()
            .map(|a| a.grant.as_ref().unwrap().grant_id.clone())
            .collect();
        assert_eq!(ids[0], ids[1], "{id}: two grants for one request id");
        assert_eq!(
            answers.iter().filter(|a| !a.replayed).count(),
            1,
            "{id}: exactly one answer is the original"
        );
        // Both tokens work: they name the one grant.
        for a in answers {
            assert_eq!(
                reason(&client.check(check_req(&a.token)).await.unwrap()),
                pb::Reason::Allowed
            );
        }
        grants.insert(ids[0].clone());
    }
    assert_eq!(grants.len(), 20);
    let listed = client.list(list_task_req("together", 0)).await.unwrap();
    assert_eq!(
        listed.grants.len(),
        21,
        "the first grant and one per request id"
    );
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "replicas differ: {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_writes_and_serves_stale_reads_itself() {
    let mut c = Cluster::start(3).await;
    let (leader, follower) = c.leader_and_follower().await;
    // Straight to the follower, trying once: it forwards to its leader.
    let direct = c.node_client(follower);
    let forwarded = direct.issue_in(issue_req("hint", 60)).await.unwrap();
    assert!(!forwarded.token.is_empty());
    // A client that starts at the follower is served there.
    let follower_first = grant_client::Client::new(
        vec![
            c.node(follower).api_addr.clone(),
            c.node(leader).api_addr.clone(),
        ],
        c.options(),
    )
    .unwrap();
    let r = follower_first
        .issue_in(issue_req("hint", 60))
        .await
        .unwrap();
    assert!(!r.token.is_empty());
    // A stale read on the follower is allowed and says so.
    let id = r.grant.unwrap().grant_id;
    wait_for("the follower to apply the grant", || async {
        direct
            .get(pb::GetRequest {
                grant_id: id.clone(),
                allow_stale: true,
            })
            .await
            .is_ok()
    })
    .await;
    let stale = direct
        .get(pb::GetRequest {
            grant_id: id.clone(),
            allow_stale: true,
        })
        .await
        .unwrap();
    assert!(stale.stale_allowed);

    // With no leader to forward to, the follower says so: not_leader,
    // with a hint only while it still names one.
    let third = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader && id != follower)
        .unwrap();
    c.kill(leader);
    c.kill(third);
    let err = direct.issue_in(issue_req("hint", 60)).await.unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::Unavailable), "{err}");
    assert_eq!(err.code(), Some("not_leader"), "{err}");
}
