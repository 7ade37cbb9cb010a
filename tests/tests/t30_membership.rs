//! Membership changes on a live cluster: add a learner, promote it, remove
//! a dead voter, move leadership, and keep serving.

use grant_tests::grant_client::v1 as pb;
use grant_tests::*;

/// The runbook in docs/operations.md: three voters, node 3 lost for good
/// (killed, disk gone). Add node 4 as a learner, promote it, remove node 3:
/// no acknowledged write is lost, and the new voter set survives the loss of
/// its leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_dead_voter_with_a_new_node() {
    let mut c = Cluster::start(3).await;
    let client = c.client();
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.push(client.issue_in(issue_req("members", 600)).await.unwrap());
    }
    let revoked = client.issue_in(issue_req("members", 600)).await.unwrap();
    client
        .revoke(revoke_req(
            &revoked.grant.as_ref().unwrap().grant_id,
            "done",
        ))
        .await
        .unwrap();

    // Node 3 dies for good; two of three voters still make a quorum.
    c.kill(3);
    c.wipe(3);
    acked.push(client.issue_in(issue_req("members", 600)).await.unwrap());

    // A fresh node 4 joins as a learner and catches up.
    let node4 = c.add_node_proc(4).member();
    wait_for("node 4 to listen", || async { c.status(4).await.is_some() }).await;
    let client = c.answering_client();
    let m = client.add_learner(node4.clone()).await.unwrap();
    assert!(m.learners.iter().any(|n| n.id == 4), "{m:?}");
    assert_eq!(c.status(4).await.unwrap().role, "learner");

    // Promote it, then remove the dead voter.
    let m = client.promote(4).await.unwrap();
    let voters: Vec<u64> = m.voters.iter().map(|n| n.id).collect();
    assert_eq!(voters, vec![1, 2, 3, 4]);
    let m = client.remove_node(3).await.unwrap();
    let voters: Vec<u64> = m.voters.iter().map(|n| n.id).collect();
    assert_eq!(voters, vec![1, 2, 4]);
    assert!(m.learners.is_empty(), "{m:?}");
    wait_for("node 4 to apply the new voter set", || async {
        c.status(4)
            .await
            .is_some_and(|s| s.voters.iter().map(|n| n.id).collect::<Vec<_>>() == [1, 2, 4])
    })
    .await;

    // The new voter set keeps serving every acknowledged write, also when
    // its leader goes: node 4 must carry its share of the quorum.
    let leader = c.wait_leader().await;
    c.kill(leader);
    c.wait_leader().await;
    let client = c.answering_client();
    for g in &acked {
        assert_eq!(
            reason(&client.check(check_req(&g.token)).await.unwrap()),
            pb::Reason::Allowed
        );
    }
    assert_eq!(
        reason(&client.check(check_req(&revoked.token)).await.unwrap()),
        pb::Reason::Revoked
    );
    c.spawn(leader);
    let d = c.converged_digests().await;
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|x| x.1 == d[0].1), "{d:?}");

    // Who asked for each change is on the record, before the
    // configurations the leader applied for it.
    let entries = client.audit_entries(0, 1000).await.unwrap().entries;
    let membership: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| grant_client::entry_from_pb(e).unwrap())
        .filter(|e| e.kind == grant_tests::grant_proto::audit::Kind::Membership)
        .map(|e| (e.reason, e.actor, e.detail))
        .collect();
    let asked: Vec<&(String, String, String)> =
        membership.iter().filter(|m| m.0 == "requested").collect();
    let admin = "spiffe://example.org/ops/admin";
    assert_eq!(asked.len(), 3, "{membership:?}");
    assert!(asked.iter().all(|m| m.1 == admin), "{membership:?}");
    assert!(
        asked[0].2.starts_with("add_learner node=4 "),
        "{membership:?}"
    );
    assert_eq!(
        (asked[1].2.as_str(), asked[2].2.as_str()),
        ("promote node=4", "remove node=3")
    );
    assert!(
        membership
            .iter()
            .filter(|m| m.0 == "applied")
            .all(|m| m.1.starts_with("node/")),
        "{membership:?}"
    );
    c.chains_agree("membership").await;

    // Bad membership requests are refused and change nothing.
    let client = c.answering_client();
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
    let err = client.promote(9).await.unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::NotFound), "{err}");
    let err = client.remove_node(3).await.unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::NotFound), "{err}");
    let s = c.status(1).await.unwrap();
    assert_eq!(
        s.voters.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
}

/// `cluster transfer-leader` moves leadership to the named voter, and a
/// leader stopped with SIGTERM hands over before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_on_request_and_on_sigterm() {
    let mut c = Cluster::start(3).await;
    let client = c.client();
    let g = client.issue_in(issue_req("transfer", 600)).await.unwrap();
    let leader = c.wait_leader().await;
    let to = if leader == 1 { 2 } else { 1 };
    let r = client.transfer_leader(to).await.unwrap();
    assert_eq!(r.leader_id, to);
    assert_eq!(c.wait_leader().await, to);
    let err = client.transfer_leader(7).await.unwrap_err();
    assert_eq!(
        err.grpc_code(),
        Some(tonic::Code::FailedPrecondition),
        "{err}"
    );

    // SIGTERM the leader: it exits 0 after naming its successor in its log,
    // and that successor leads.
    assert!(c.terminate(to), "grantd should exit 0 on SIGTERM");
    let log = std::fs::read_to_string(c.dir.path().join(format!("node{to}.log"))).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("leadership handed over"))
        .unwrap_or_else(|| panic!("no handover in the log:\n{log}"));
    let successor: u64 = line
        .split("to=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no successor in {line:?}"));
    assert_ne!(successor, to);
    let client = c.answering_client();
    assert_eq!(
        reason(&client.check(check_req(&g.token)).await.unwrap()),
        pb::Reason::Allowed
    );
    let s = c.status(successor).await.unwrap();
    assert!(s.has_leader);
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

/// Bootstrap without `cluster init`: every node carries the same
/// initial_members; the cluster forms once, and a restarted node rejoins
/// instead of starting over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_same_initial_members_form_one_cluster() {
    let mut c = Cluster::prepare(3);
    let members: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("{}={},{}", n.id, n.raft_addr, n.api_addr))
        .collect();
    c.extra_args = vec!["--initial-member".into(), members.join(";")];
    // GRANTD_INITIAL_MEMBERS splits on ';'; so does the flag.
    for id in 1..=3 {
        c.spawn(id);
    }
    let leader = c.wait_leader().await;
    let client = c.client();
    let g = client.issue_in(issue_req("bootstrap", 600)).await.unwrap();
    // Every node, whenever it got going, joined the one cluster.
    for id in 1..=3 {
        wait_for("every node to see the three voters", || async {
            c.status(id)
                .await
                .is_some_and(|s| s.voters.len() == 3 && s.has_leader)
        })
        .await;
    }
    c.kill(leader);
    c.spawn(leader);
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "{d:?}");
    assert_eq!(
        reason(&client.check(check_req(&g.token)).await.unwrap()),
        pb::Reason::Allowed
    );
    let err = client
        .initialize(&c.node(1).api_addr, vec![c.node(1).member()])
        .await
        .unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::FailedPrecondition));

    // A member list that leaves the node out is a configuration error.
    let out = std::process::Command::new(grantd_bin())
        .args(["--node-id", "9", "--data-dir"])
        .arg(c.dir.path().join("node9"))
        .args(["--initial-member", &members.join(";")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("initial_members"));
}
