//! The audit store across a crash in apply (issue #24): apply appends an
//! entry's audit entries to the store, then writes the state that counts
//! them, and syncs later. A node is cut (SIGABRT, from the
//! `GRANTD_CRASH_AT` fault point) between the store append and the state
//! write, and between the state write and any sync, under issues, checks
//! and revokes; it is started again at once, well inside the election
//! timeout. It must cut its store back to the head its state recorded,
//! apply the entries again, and end with the same state digest and the
//! same chain, entry for entry, as the others (docs/storage.md, "The audit
//! chain").

use std::time::{Duration, Instant};

use grant_tests::*;

/// Writes of every kind that reach the chain: a task, grants, batches of
/// checks, a revoke (a watched entry), until `stop` says so.
async fn write_until(client: &grant_client::Client, round: &str, mut stop: impl FnMut() -> bool) {
    let mut i = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop() {
        assert!(Instant::now() < deadline, "the armed node never crashed");
        i += 1;
        let task = format!("{round}-t{i}");
        if client.begin_task(begin_req(&task)).await.is_err() {
            continue;
        }
        let Ok(issued) = client.issue(issue_req(&task, 600)).await else {
            continue;
        };
        let checks = (0..8).map(|_| client.check(check_req(&issued.token)));
        futures_util::future::join_all(checks).await;
        let grant = issued.grant.unwrap().grant_id;
        let _ = client.revoke(revoke_req(&grant, "crash test")).await;
    }
}

async fn crash_and_restart(point: &str) {
    let mut c = Cluster::start(3).await;
    let (_, node) = c.leader_and_follower().await;
    let client = c.client();
    write_until(&client, &format!("{point}-warm"), false_after(5)).await;
    // Armed: the 20th passage through the point aborts the process.
    c.kill(node);
    c.spawn_with_env(node, &[("GRANTD_CRASH_AT", &format!("{point}:20"))]);
    write_until(&client, point, || c.exited(node)).await;
    assert!(
        c.log_tail(node).contains(&format!("crashing at {point}")),
        "node {node} died elsewhere:\n{}",
        c.log_tail(node)
    );
    // Back at once, unarmed; the others kept going meanwhile.
    c.spawn(node);
    if point == "audit-appended" {
        // The store held entries its state did not count yet.
        let log = c.dir.path().join(format!("node{node}.log"));
        wait_for("the restarted node to cut its audit store back", || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("audit store cut back")
        })
        .await;
    }
    write_until(&client, &format!("{point}-after"), false_after(5)).await;
    let digests = c.converged_digests().await;
    assert!(
        digests.iter().all(|d| d.1 == digests[0].1),
        "replicas differ after a crash at {point}: {digests:?}"
    );
    let held = c.chains_agree(point).await;
    assert!(held > 100, "{held} entries in common");
    // Every node's chain is whole, from any of them.
    let size = c.settled_audit_size().await;
    for n in 1..=3u64 {
        let page = c
            .node_client(n)
            .audit_entries(size - 1, 1)
            .await
            .unwrap_or_else(|e| panic!("node {n}: {e}"));
        assert_eq!(page.entries.len(), 1, "node {n} lacks entry {}", size - 1);
    }
}

/// A stop condition that holds after `n` calls.
fn false_after(n: usize) -> impl FnMut() -> bool {
    let mut left = n;
    move || {
        if left == 0 {
            return true;
        }
        left -= 1;
        false
    }
}

#[tokio::test]
async fn a_crash_between_the_audit_append_and_the_state_write_loses_nothing() {
    crash_and_restart("audit-appended").await;
}

#[tokio::test]
async fn a_crash_between_the_state_write_and_its_sync_loses_nothing() {
    crash_and_restart("state-written").await;
}
