//! Membership changes on a live cluster: add a learner, promote it, remove
//! a voter, and keep serving.

use grant_tests::grant_client::v1 as pb;
use grant_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_voter_with_a_new_node() {
    let mut c = Cluster::start(3).await;
    let client = c.client();
    let before = client.issue(issue_req("members", 600)).await.unwrap();

    // A fresh node 4 joins as a learner and catches up.
    let node4 = c.add_node_proc(4).member();
    wait_for("node 4 to listen", || async { c.status(4).await.is_some() }).await;
    let m = client.add_learner(node4.clone()).await.unwrap();
    assert!(m.learners.iter().any(|n| n.id == 4), "{m:?}");
    assert_eq!(c.status(4).await.unwrap().role, "learner");

    // Voters become {1, 2, 4}: node 3 leaves.
    let m = client
        .change_membership(vec![1, 2, 4], false)
        .await
        .unwrap();
    let voters: Vec<u64> = m.voters.iter().map(|n| n.id).collect();
    assert_eq!(voters, vec![1, 2, 4]);
    assert!(m.learners.is_empty(), "{m:?}");
    c.kill(3);

    // The cluster keeps serving with the new voter set, also if the leader goes.
    let client = grant_client::Client::new(
        [1, 2, 4]
            .iter()
            .map(|&id| c.node(id).api_addr.clone())
            .collect(),
        grant_client::Options::default(),
    )
    .unwrap();
    let after = client.issue(issue_req("members", 600)).await.unwrap();
    assert_eq!(
        reason(&client.check(check_req(&before.token)).await.unwrap()),
        pb::Reason::Allowed
    );
    let leader = c.wait_leader().await;
    c.kill(leader);
    c.wait_leader().await;
    assert_eq!(
        reason(&client.check(check_req(&after.token)).await.unwrap()),
        pb::Reason::Allowed
    );
    c.spawn(leader);
    let d = c.converged_digests().await;
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|x| x.1 == d[0].1), "{d:?}");

    // Membership requests with bad input are refused.
    let err = client.change_membership(vec![], false).await.unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::InvalidArgument));
    let err = client
        .change_membership(vec![1, 2, 9], false)
        .await
        .unwrap_err();
    assert_eq!(
        err.grpc_code(),
        Some(tonic::Code::FailedPrecondition),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_twice_is_refused() {
    let c = Cluster::start(3).await;
    let members: Vec<pb::Node> = c.nodes.iter().map(|n| n.member()).collect();
    let err = c
        .client()
        .initialize(&c.nodes[0].api_addr, members)
        .await
        .unwrap_err();
    assert_eq!(
        err.grpc_code(),
        Some(tonic::Code::FailedPrecondition),
        "{err}"
    );
    let s = c.status(1).await.unwrap();
    assert!(s.initialized);
    assert_eq!(s.voters.len(), 3);
}
