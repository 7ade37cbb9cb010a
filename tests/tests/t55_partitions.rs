//! Real network partitions: each node in a network namespace of its own,
//! cut off from its peers by dropping their packets inside it, while
//! clients still reach it. SKIPPED where namespaces cannot be made.

use grant_client::{Client, Options};
use grant_tests::grant_client::v1 as pb;
use grant_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_peers_never_allows_a_revoked_grant() {
    let Some(c) = Cluster::start_partitionable(3).await else {
        return;
    };
    let g = c.client().issue_in(issue_req("part", 600)).await.unwrap();
    let grant_id = g.grant.unwrap().grant_id;
    let old = c.wait_leader().await;
    c.cut(old);

    // The other two elect a leader of their own and acknowledge a revoke.
    let majority: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.id != old)
        .map(|n| n.api_addr.clone())
        .collect();
    let maj = Client::new(majority, c.options()).unwrap();
    let revoked = maj.revoke(revoke_req(&grant_id, "cut off")).await.unwrap();
    assert!(!revoked.already_inactive);

    // The old leader still answers clients, but cannot commit anything: a
    // Check there (started after the revoke was acknowledged) must not
    // allow, and a linearizable read must not answer from its stale state.
    let short = Options {
        attempts_max: 1,
        request_timeout: std::time::Duration::from_secs(3),
        ..c.options()
    };
    let direct = Client::new(vec![c.node(old).api_addr.clone()], short).unwrap();
    match direct.check(check_req(&g.token)).await {
        Ok(r) => assert_ne!(
            reason(&r),
            pb::Reason::Allowed,
            "the cut-off old leader allowed a revoked grant"
        ),
        Err(e) => assert!(e.grpc_code().is_some(), "{e}"),
    }
    let read = direct
        .get(pb::GetRequest {
            grant_id: grant_id.clone(),
            allow_stale: false,
        })
        .await;
    if let Ok(r) = read {
        assert_eq!(
            r.grant.unwrap().state,
            pb::GrantState::Revoked as i32,
            "a linearizable read served stale state"
        );
    }
    // Meanwhile the majority keeps working.
    maj.issue_in(issue_req("part-2", 600)).await.unwrap();

    // Healed, the old leader follows and its own state holds the revoke.
    c.heal(old);
    let stale = c.node_client(old);
    wait_for("the old leader to follow and learn the revoke", || async {
        let follows = c
            .status(old)
            .await
            .is_some_and(|s| s.leader_id != old && s.has_leader);
        let state = stale
            .get(pb::GetRequest {
                grant_id: grant_id.clone(),
                allow_stale: true,
            })
            .await
            .ok()
            .and_then(|r| r.grant)
            .map(|g| g.state);
        follows && state == Some(pb::GrantState::Revoked as i32)
    })
    .await;
    // A client that starts there is sent to the leader, which denies.
    let via_old = Client::new(vec![c.node(old).api_addr.clone()], c.options()).unwrap();
    assert_eq!(
        reason(&via_old.check(check_req(&g.token)).await.unwrap()),
        pb::Reason::Revoked
    );
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "replicas differ: {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_catches_up_when_healed() {
    let Some(c) = Cluster::start_partitionable(3).await else {
        return;
    };
    let (leader, follower) = c.leader_and_follower().await;
    c.cut(follower);
    let client = c.client();
    let mut ids = Vec::new();
    for i in 0..20 {
        let g = client
            .issue_in(issue_req(&format!("f{i}"), 600))
            .await
            .unwrap();
        ids.push(g.grant.unwrap().grant_id);
    }
    // Nothing reached it while cut off.
    let st = c.status(follower).await.unwrap();
    let lead = c.status(leader).await.unwrap();
    assert!(st.applied_index < lead.applied_index);
    c.heal(follower);
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "replicas differ: {d:?}");
    let stale = c.node_client(follower);
    for id in &ids {
        let r = stale
            .get(pb::GetRequest {
                grant_id: id.clone(),
                allow_stale: true,
            })
            .await
            .unwrap();
        assert_eq!(r.grant.unwrap().state, pb::GrantState::Active as i32);
    }
}
