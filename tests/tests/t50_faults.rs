//! Fault tests on real processes: kill -9 the leader under load, restart
//! it, wipe a follower's disk. Acknowledged writes survive (invariant 1),
//! revoked grants deny everywhere (invariant 2), replicas converge to the
//! same state (invariant 3).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use grant_tests::grant_client::v1 as pb;
use grant_tests::*;

#[derive(Clone, Debug)]
struct Acked {
    grant_id: String,
    token: String,
    revoked: bool,
}

/// Writers that issue grants and revoke every other one, recording only
/// what the cluster acknowledged.
async fn writers(
    c: &Cluster,
    n: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    count: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let client = c.client();
            let (stop, acked, count) = (stop.clone(), acked.clone(), count.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let Ok(r) = client.issue_in(issue_req(&format!("w{w}-t{i}"), 600)).await else {
                        continue;
                    };
                    let grant_id = r.grant.unwrap().grant_id;
                    let mut a = Acked {
                        grant_id: grant_id.clone(),
                        token: r.token,
                        revoked: false,
                    };
                    if i.is_multiple_of(2) {
                        let rv = client.revoke(revoke_req(&grant_id, "fault test")).await;
                        a.revoked = rv.is_ok();
                    }
                    acked.lock().unwrap().push(a);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

async fn assert_all_acknowledged_present(c: &Cluster, acked: &[Acked]) {
    let client = c.client();
    for a in acked {
        let r = client.check(check_req(&a.token)).await.unwrap();
        let want = if a.revoked {
            pb::Reason::Revoked
        } else {
            pb::Reason::Allowed
        };
        assert_eq!(
            reason(&r),
            want,
            "grant {} (revoked: {})",
            a.grant_id,
            a.revoked
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_stream_loses_nothing_acknowledged() {
    let mut c = Cluster::start_with(
        3,
        &[
            "--snapshot-logs-since-last",
            "150",
            "--logs-kept-after-snapshot",
            "20",
        ],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let tasks = writers(&c, 4, stop.clone(), acked.clone(), count.clone()).await;

    wait_for("load before the kill", || async {
        count.load(Ordering::Relaxed) >= 60
    })
    .await;
    let old_leader = c.wait_leader().await;
    c.kill(old_leader);
    let at_kill = count.load(Ordering::Relaxed);
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, old_leader);
    wait_for("load after the kill", || async {
        count.load(Ordering::Relaxed) >= at_kill + 60
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 120);
    assert_all_acknowledged_present(&c, &acked).await;

    // The killed node comes back, catches up, and holds the same state.
    c.spawn(old_leader);
    let d = c.converged_digests().await;
    assert_eq!(d.len(), 3);
    assert!(
        d.iter().all(|x| x.1 == d[0].1),
        "replicas differ after restart: {d:?}"
    );
    // Each node's own (stale) view agrees that revoked grants are revoked.
    for n in &c.nodes {
        let direct = c.node_client(n.id);
        for a in acked.iter().filter(|a| a.revoked).take(20) {
            let g = direct
                .get(pb::GetRequest {
                    grant_id: a.grant_id.clone(),
                    allow_stale: true,
                })
                .await
                .unwrap()
                .grant
                .unwrap();
            assert_eq!(
                g.state,
                pb::GrantState::Revoked as i32,
                "node {} grant {}",
                n.id,
                a.grant_id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_rejoins_through_a_snapshot() {
    let mut c = Cluster::start_with(
        3,
        &[
            "--snapshot-logs-since-last",
            "100",
            "--logs-kept-after-snapshot",
            "10",
        ],
    )
    .await;
    let client = c.client();
    let mut tokens = Vec::new();
    for i in 0..150 {
        let r = client
            .issue_in(issue_req(&format!("snap-{i}"), 600))
            .await
            .unwrap();
        tokens.push((r.grant.unwrap().grant_id, r.token));
    }
    let (leader, victim) = c.leader_and_follower().await;
    c.kill(victim);
    c.wipe(victim);
    // Writes go on while it is away, and the log is purged behind a snapshot.
    for (id, _) in tokens.iter().take(30) {
        client.revoke(revoke_req(id, "")).await.unwrap();
    }
    for i in 150..260 {
        client
            .issue_in(issue_req(&format!("snap-{i}"), 600))
            .await
            .unwrap();
    }
    wait_for("the leader to snapshot and purge", || async {
        c.status(leader)
            .await
            .map(|s| s.snapshot_index > 150)
            .unwrap_or(false)
    })
    .await;
    c.spawn(victim);
    let d = c.converged_digests().await;
    assert!(
        d.iter().all(|x| x.1 == d[0].1),
        "replicas differ after snapshot install: {d:?}"
    );
    let s = c.status(victim).await.unwrap();
    assert!(
        s.snapshot_index > 0,
        "the wiped node should have installed a snapshot: {s:?}"
    );
    let direct = c.node_client(victim);
    for (id, _) in tokens.iter().take(30) {
        let g = direct
            .get(pb::GetRequest {
                grant_id: id.clone(),
                allow_stale: true,
            })
            .await
            .unwrap()
            .grant
            .unwrap();
        assert_eq!(g.state, pb::GrantState::Revoked as i32);
    }
}

/// A snapshot whose transfer and install take longer than one peer RPC may
/// (`peer_rpc_timeout_ms`, here 100 ms) still reaches a wiped follower, and
/// is sent once: snapshots travel on a connection of their own, without
/// the per-message timeout (with it, every attempt was cut off and resent,
/// and the follower never caught up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_longer_than_one_rpc_timeout_reaches_a_wiped_follower() {
    let flags = [
        &[
            "--peer-rpc-timeout-ms",
            "100",
            "--snapshot-logs-since-last",
            "1000",
            "--logs-kept-after-snapshot",
            "10",
        ][..],
        NO_QUOTAS,
    ]
    .concat();
    let mut c = Cluster::start_with(3, &flags).await;
    let (leader, victim) = c.leader_and_follower().await;
    c.kill(victim);
    c.wipe(victim);
    // A few megabytes of state, issued by eight clients at once.
    let client = Arc::new(c.client());
    let mut tasks = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                client
                    .issue_in(issue_req(&format!("big-{w}-{}", i / 100), 600))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Issues share log entries, so their count says little about the
    // log's length: a backup has the leader snapshot all it applied, and
    // the log behind the snapshot is purged (`--logs-kept-after-snapshot`).
    let applied = c.status(leader).await.unwrap().applied_index;
    client
        .backup_to(None, &c.dir.path().join("backup"))
        .await
        .unwrap();
    wait_for("the leader to snapshot and purge", || async {
        c.status(leader)
            .await
            .map(|s| s.snapshot_index >= applied)
            .unwrap_or(false)
    })
    .await;
    c.spawn(victim);
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "replicas differ: {d:?}");
    let log = std::fs::read_to_string(c.dir.path().join(format!("node{victim}.log"))).unwrap();
    let received = log.matches("installing snapshot from leader").count();
    assert_eq!(received, 1, "the snapshot was sent {received} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_it_restarts_with_its_state() {
    let mut c = Cluster::start(3).await;
    let client = c.client();
    let r = client.issue_in(issue_req("term", 600)).await.unwrap();
    let leader = c.wait_leader().await;
    assert!(c.terminate(leader), "grantd should exit 0 on SIGTERM");
    c.wait_leader().await;
    c.spawn(leader);
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1));
    assert_eq!(
        reason(&client.check(check_req(&r.token)).await.unwrap()),
        pb::Reason::Allowed
    );
}

/// Invariant 2 across a paused leader: while the old leader is frozen
/// (SIGSTOP past the election timeout) the others elect a new one and
/// acknowledge a revoke. When the old leader wakes up it still believes it
/// leads, but no check it serves may allow the revoked grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_old_leader_never_allows_a_revoked_grant() {
    let mut c = Cluster::start(3).await;
    let client = c.client();
    let issued = client.issue_in(issue_req("pause", 600)).await.unwrap();
    let grant_id = issued.grant.unwrap().grant_id;
    assert_eq!(
        reason(&client.check(check_req(&issued.token)).await.unwrap()),
        pb::Reason::Allowed
    );

    let old = c.wait_leader().await;
    c.pause(old);
    let new = c.wait_leader().await;
    assert_ne!(new, old);
    let others = c.answering_client();
    let r = others
        .revoke(revoke_req(&grant_id, "pause test"))
        .await
        .unwrap();
    assert!(!r.already_inactive);

    c.resume(old);
    // Straight to the woken node, with no leader following: it answers
    // either with an error (it learns it was deposed) or with a deny.
    let direct = c.node_client(old);
    for _ in 0..20 {
        match direct.check(check_req(&issued.token)).await {
            Ok(r) => assert_eq!(
                reason(&r),
                pb::Reason::Revoked,
                "stale allow from the old leader"
            ),
            Err(e) => assert_eq!(e.grpc_code(), Some(tonic::Code::Unavailable), "{e}"),
        }
        match direct
            .get(pb::GetRequest {
                grant_id: grant_id.clone(),
                allow_stale: false,
            })
            .await
        {
            Ok(g) => assert_eq!(
                g.grant.unwrap().state,
                pb::GrantState::Revoked as i32,
                "stale linearizable read"
            ),
            Err(e) => assert_eq!(e.grpc_code(), Some(tonic::Code::Unavailable), "{e}"),
        }
    }
    // And through the leader-following client, from any node: deny.
    assert_eq!(
        reason(&c.client().check(check_req(&issued.token)).await.unwrap()),
        pb::Reason::Revoked
    );
    let d = c.converged_digests().await;
    assert!(
        d.iter().all(|x| x.1 == d[0].1),
        "replicas differ after the pause: {d:?}"
    );
}

/// Invariant 1 at its hardest for the log store: every node is killed -9 at
/// once right after a burst of acknowledged writes, so nothing that was
/// only in a process's memory survives. A store that acknowledged before
/// its data reached the file would lose grants here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_killed_at_once_keeps_every_acknowledged_write() {
    let mut c = Cluster::start(3).await;
    let client = c.client();
    let mut acked = Vec::new();
    for i in 0..60 {
        let r = client
            .issue_in(issue_req(&format!("crash-{i}"), 600))
            .await
            .unwrap();
        let id = r.grant.unwrap().grant_id;
        let revoked = i % 3 == 0;
        if revoked {
            client.revoke(revoke_req(&id, "")).await.unwrap();
        }
        acked.push(Acked {
            grant_id: id,
            token: r.token,
            revoked,
        });
    }
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    for &id in &ids {
        c.kill(id);
    }
    for &id in &ids {
        c.spawn(id);
    }
    c.wait_leader().await;
    assert_all_acknowledged_present(&c, &acked).await;
    let d = c.converged_digests().await;
    assert!(
        d.iter().all(|x| x.1 == d[0].1),
        "replicas differ after a full restart: {d:?}"
    );
}
