//! Crash-restart safety (invariants 1 and 3): the leader is killed with -9
//! under writes of every kind (task begins, issues, revokes, completions
//! and aborts) and started again at once, well inside the election
//! timeout, round after round. A leader comes back without the entries it
//! had sent to its followers but not yet written itself (openraft
//! replicates an entry as soon as it is submitted to the log store); if it
//! led again in its old term it would give their indexes to new entries
//! and the replicas would fork (issue #23, docs/consistency.md).
//!
//! After the rounds: every acknowledged write is there, in the state it was
//! acknowledged in, every replica holds the same state digest and the same
//! chain, and no restarted leader led again in the term it was killed in.
//!
//! `GRANT_CRASH_ROUNDS` sets the number of kills (10 in the suite).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use grant_tests::grant_client::v1 as pb;
use grant_tests::*;

/// What the cluster acknowledged, and nothing else: a write with no answer
/// may or may not have happened, so it constrains nothing.
#[derive(Default)]
struct Acked {
    /// Task -> how it was closed, if that was acknowledged.
    tasks: BTreeMap<String, Option<pb::TaskState>>,
    /// Grant -> (its task, whether its revoke was acknowledged).
    grants: BTreeMap<String, (String, bool)>,
}

/// One writer: begin a task, issue two grants into it, revoke the first,
/// then complete or abort the task. Each step only after the one before
/// was acknowledged.
async fn writer(
    w: usize,
    client: grant_client::Client,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    count: Arc<AtomicUsize>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let task = format!("w{w}-t{i}");
        if client.begin_task(begin_req(&task)).await.is_err() {
            continue;
        }
        acked.lock().unwrap().tasks.insert(task.clone(), None);
        count.fetch_add(1, Ordering::Relaxed);
        let mut grants = Vec::new();
        for _ in 0..2 {
            if let Ok(r) = client.issue(issue_req(&task, 600)).await {
                let id = r.grant.unwrap().grant_id;
                acked
                    .lock()
                    .unwrap()
                    .grants
                    .insert(id.clone(), (task.clone(), false));
                count.fetch_add(1, Ordering::Relaxed);
                grants.push(id);
            }
        }
        if let Some(g) = grants.first() {
            if client.revoke(revoke_req(g, "crash test")).await.is_ok() {
                acked.lock().unwrap().grants.get_mut(g).unwrap().1 = true;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        let abort = (i % 2 == 1).then_some("crash test");
        let closed = close_task(&client, &task, abort).await;
        if let Ok(state) = closed {
            acked.lock().unwrap().tasks.insert(task, Some(state));
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Checks, many at once: each is a write (an audit entry), so the leader
/// has entries in flight at almost any moment it is killed.
async fn checker(client: grant_client::Client, token: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let _ = client.check(check_req(&token)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_and_restarted_at_once_never_forks_the_replicas() {
    let rounds: usize = std::env::var("GRANT_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // An election timeout long enough that a killed node is back (about
    // 150 ms from spawn to serving, debug build) before any follower stands.
    let mut c = Cluster::start_with(
        3,
        &[
            "--heartbeat-interval-ms",
            "100",
            "--election-timeout-min-ms",
            "1000",
            "--election-timeout-max-ms",
            "1500",
        ],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let count = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            tokio::spawn(writer(
                w,
                c.client(),
                stop.clone(),
                acked.clone(),
                count.clone(),
            ))
        })
        .collect();

    let load = c
        .client()
        .issue_in(issue_req("check-load", 3600))
        .await
        .unwrap();
    let checkers: Vec<_> = (0..16)
        .map(|_| tokio::spawn(checker(c.client(), load.token.clone(), stop.clone())))
        .collect();

    let mut restored = Vec::new();
    for round in 0..rounds {
        let before = count.load(Ordering::Relaxed);
        wait_for("writes before the kill", || async {
            count.load(Ordering::Relaxed) >= before + 30
        })
        .await;
        let leader = c.wait_leader().await;
        let term = c.status(leader).await.map(|s| s.term).unwrap_or(0);
        c.kill(leader);
        c.spawn(leader);
        let at_restart = count.load(Ordering::Relaxed);
        wait_for("writes after the restart", || async {
            count.load(Ordering::Relaxed) >= at_restart + 10
        })
        .await;
        let now = c.wait_leader().await;
        let s = c.status(now).await.expect("status of the leader");
        eprintln!(
            "round {round}: killed leader {leader} in term {term}; leader now {now} in term {}",
            s.term
        );
        if now == leader && s.term == term {
            restored.push(format!(
                "round {round}: node {leader} led again in term {term}"
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in writers.into_iter().chain(checkers) {
        t.await.unwrap();
    }

    let digests = c.converged_digests().await;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let ctx = format!(
        "{} tasks and {} grants acknowledged over {rounds} kills",
        acked.tasks.len(),
        acked.grants.len()
    );
    eprintln!("{ctx}; digests {digests:?}");
    let mut lost = Vec::new();
    let client = c.client();
    for (task, closed) in &acked.tasks {
        let got = client
            .get_task(pb::GetTaskRequest {
                task_id: task.clone(),
                allow_stale: false,
            })
            .await;
        match (got, closed) {
            (Err(e), _) => lost.push(format!("task {task}: {e}")),
            (Ok(r), Some(state)) if r.task.as_ref().map(|t| t.state) != Some(*state as i32) => {
                lost.push(format!("task {task}: {:?}, acknowledged {state:?}", r.task))
            }
            _ => {}
        }
    }
    for (grant, (task, revoked)) in &acked.grants {
        let got = client
            .get(pb::GetRequest {
                grant_id: grant.clone(),
                allow_stale: false,
            })
            .await;
        let task_closed = acked.tasks.get(task).is_some_and(Option::is_some);
        match got {
            Err(e) => lost.push(format!("grant {grant}: {e}")),
            Ok(r) if (*revoked || task_closed) => {
                let state = r.grant.map(|g| g.state);
                if state != Some(pb::GrantState::Revoked as i32) {
                    lost.push(format!(
                        "grant {grant}: state {state:?}, revoke acknowledged"
                    ));
                }
            }
            Ok(_) => {}
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost or changed ({ctx}): {:#?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(
        digests.iter().all(|d| d.1 == digests[0].1),
        "replicas differ ({ctx}): {digests:?}"
    );
    let common = c.chains_agree(&ctx).await;
    assert!(common > 0);
    assert!(
        restored.is_empty(),
        "a restarted leader led again in the term it was killed in, without the entries it had sent: {restored:?}"
    );
    assert!(acked.grants.len() >= rounds * 10, "too little load: {ctx}");
}
