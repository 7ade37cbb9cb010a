//! The revocation watch on real grantd processes: a watcher sees every
//! revocation, expiry and task completion exactly once, in order, across a
//! leader change and a reconnect; it resumes after the last event it got;
//! it is told to resync when the point it resumes from is another history
//! or past the end of the cluster's chain;
//! and a caching checker stops allowing a revoked grant within one event.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grant_client::v1 as pb;
use grant_client::watch::{CachingChecker, Start, Update, Watcher};
use grant_client::Client;
use grant_tests::*;
use pb::watch_event::Kind;

const TOOL: &str = "tool/github";

/// A client of every node, `first` first (a watcher starts there).
fn client_from(c: &Cluster, first: u64, path: &str) -> Arc<Client> {
    let mut eps: Vec<String> = vec![c.node(first).api_addr.clone()];
    eps.extend(
        c.nodes
            .iter()
            .filter(|n| n.id != first)
            .map(|n| n.api_addr.clone()),
    );
    Arc::new(Client::new(eps, c.options_as(path)).unwrap())
}

/// Events from `w` until every one of `want` (kind, id) is seen; returns
/// every event received, with WAIT_MAX as the bound.
async fn collect(w: &mut Watcher, want: &HashSet<(i32, String)>) -> Vec<pb::WatchEvent> {
    let deadline = Instant::now() + WAIT_MAX;
    let mut got = Vec::new();
    let mut seen = HashSet::new();
    while !want.is_subset(&seen) {
        assert!(
            Instant::now() < deadline,
            "missing {:?}",
            want.difference(&seen)
        );
        let next = tokio::time::timeout(WAIT_MAX, w.next())
            .await
            .expect("watch stalled");
        if let Update::Events(events) = next.unwrap() {
            for e in events {
                let id = if e.kind == Kind::TaskCompleted as i32 {
                    e.task_id.clone()
                } else {
                    e.grant_id.clone()
                };
                seen.insert((e.kind, id));
                got.push(e);
            }
        }
    }
    got
}

fn revoked(id: &str) -> (i32, String) {
    (Kind::Revoked as i32, id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_revocation_once_across_a_leader_change_and_a_reconnect() {
    let mut c = Cluster::start(3).await;
    let admin = c.client();
    let mut grants = Vec::new();
    for i in 0..20 {
        let task = if i < 5 {
            "done-task".to_string()
        } else {
            format!("w{i}")
        };
        let g = admin.issue_in(issue_req(&task, 600)).await.unwrap();
        grants.push(g.grant.unwrap().grant_id);
    }
    // A short-lived grant, for an expiry event.
    let short = admin
        .issue_in(issue_req("short", 1))
        .await
        .unwrap()
        .grant
        .unwrap()
        .grant_id;

    // Watch from the leader, which is then killed.
    let leader = c.wait_leader().await;
    let mut w = Watcher::new(client_from(&c, leader, TOOL), Start::Now);
    // The first message is a progress mark: the stream is open.
    assert!(matches!(w.next().await.unwrap(), Update::Progress { .. }));

    let mut want = HashSet::new();
    for g in &grants[5..10] {
        admin.revoke(revoke_req(g, "first half")).await.unwrap();
        want.insert(revoked(g));
    }
    admin
        .complete_task(pb::CompleteTaskRequest {
            request_id: String::new(),
            task_id: "done-task".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    want.insert((Kind::TaskCompleted as i32, "done-task".into()));
    let mut events = collect(&mut w, &want).await;

    c.kill(leader);
    let mut more = HashSet::new();
    for g in &grants[10..20] {
        admin.revoke(revoke_req(g, "second half")).await.unwrap();
        more.insert(revoked(g));
    }
    // Revoking an already revoked grant appends no event.
    admin.revoke(revoke_req(&grants[5], "again")).await.unwrap();
    more.insert((Kind::Expired as i32, short.clone()));
    events.extend(collect(&mut w, &more).await);
    c.spawn(leader);

    // Exactly once, in audit order, and nothing but what happened.
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|p| p[0] < p[1]),
        "out of order or repeated: {seqs:?}"
    );
    let mut per_grant = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == Kind::Revoked as i32) {
        *per_grant.entry(e.grant_id.clone()).or_insert(0) += 1;
    }
    // The task's five grants too: its completion revoked each, with an
    // event of its own before the task's.
    assert_eq!(per_grant.len(), 20, "{per_grant:?}");
    assert!(per_grant.values().all(|&n| n == 1), "{per_grant:?}");
    let task_event = events
        .iter()
        .find(|e| e.kind == Kind::TaskCompleted as i32)
        .unwrap();
    for e in events.iter().filter(|e| grants[..5].contains(&e.grant_id)) {
        assert_eq!(e.kind, Kind::Revoked as i32);
        assert!(e.seq < task_event.seq && e.log_index == task_event.log_index);
    }

    // Resuming after an event yields exactly what came after it.
    let mid = &events[3];
    let mut resumed = Watcher::new(
        client_from(&c, leader, TOOL),
        Start::After {
            seq: mid.seq,
            hash: mid.entry_hash.clone(),
        },
    );
    let rest: HashSet<(i32, String)> = events[4..]
        .iter()
        .map(|e| {
            let id = if e.kind == Kind::TaskCompleted as i32 {
                &e.task_id
            } else {
                &e.grant_id
            };
            (e.kind, id.clone())
        })
        .collect();
    let again = collect(&mut resumed, &rest).await;
    assert_eq!(
        again.iter().map(|e| e.seq).collect::<Vec<_>>(),
        events[4..].iter().map(|e| e.seq).collect::<Vec<_>>()
    );

    // From a log index: the events of entries from there on.
    let mut from_index = Watcher::new(
        client_from(&c, leader, TOOL),
        Start::LogIndex(mid.log_index),
    );
    let got = collect(&mut from_index, &rest).await;
    assert_eq!(got.first().map(|e| e.log_index), Some(mid.log_index));

    // A resume point that is not this history's: told to resync.
    let mut forged = Watcher::new(
        client_from(&c, leader, TOOL),
        Start::After {
            seq: mid.seq,
            hash: vec![7; 32],
        },
    );
    let err = forged.next().await.unwrap_err();
    assert_eq!(err.code(), Some("watch_resync"), "{err}");

    // A resume point past the end of the cluster's chain (a restored,
    // shorter history, or a made-up point) is told to resync once the
    // node has checked with the leader that it is not merely behind:
    // never a confirmed mark past what was sent.
    let size = c.client().audit_entries(0, 1).await.unwrap().tree_size;
    for seq in [size + 40, 1_000_000_000_000_000] {
        let mut ahead = Watcher::new(
            client_from(&c, leader, TOOL),
            Start::After {
                seq,
                hash: vec![9; 32],
            },
        );
        let err = ahead.next().await.unwrap_err();
        assert_eq!(err.code(), Some("watch_resync"), "after_seq {seq}: {err}");
    }
    // A resume point with no hash cannot be checked: refused.
    let mut unchecked = Watcher::new(
        client_from(&c, leader, TOOL),
        Start::After {
            seq: mid.seq,
            hash: Vec::new(),
        },
    );
    let err = unchecked.next().await.unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("after_hash"), "{err}");

    // Workloads do not watch others' revocations.
    let mut agent = Watcher::new(client_from(&c, leader, "agent/planner"), Start::Now);
    let err = agent.next().await.unwrap_err();
    assert_eq!(
        err.grpc_code(),
        Some(tonic::Code::PermissionDenied),
        "{err}"
    );
}

/// Wait until the checker's watch has applied the entry `seq`.
async fn until_applied(checker: &CachingChecker, seq: u64) {
    let deadline = Instant::now() + WAIT_MAX;
    while checker.applied_size() <= seq {
        assert!(Instant::now() < deadline, "the watch never reached {seq}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caching_checker_stops_allowing_within_one_event() {
    let c = Cluster::start(3).await;
    let admin = c.client();
    let checker = CachingChecker::new(Arc::new(c.client_as(TOOL)));
    let deadline = Instant::now() + WAIT_MAX;
    while !checker.live() {
        assert!(Instant::now() < deadline, "the watch never confirmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = admin.issue_in(issue_req("cache-a", 600)).await.unwrap();
    let b = admin.issue_in(issue_req("cache-b", 600)).await.unwrap();

    // The first check goes to the cluster, the next comes from the cache.
    let (r, cached) = checker.check(check_req(&a.token)).await.unwrap();
    assert_eq!((reason(&r), cached), (pb::Reason::Allowed, false));
    let (r, cached) = checker.check(check_req(&a.token)).await.unwrap();
    assert_eq!((reason(&r), cached), (pb::Reason::Allowed, true));
    // Another request (other attributes) is not the cached one.
    let mut other = check_req(&a.token);
    other
        .attributes
        .insert("environment".into(), "staging".into());
    assert!(!checker.check(other).await.unwrap().1);

    // Revoked: once the watch has delivered the revocation (one event),
    // the cache no longer allows, and the cluster denies.
    let rv = admin
        .revoke(revoke_req(&a.grant.unwrap().grant_id, "done"))
        .await
        .unwrap();
    until_applied(&checker, rv.receipt.unwrap().audit_seq).await;
    let (r, cached) = checker.check(check_req(&a.token)).await.unwrap();
    assert_eq!((reason(&r), cached), (pb::Reason::Revoked, false));

    // A task completion drops the allows of its grants.
    checker.check(check_req(&b.token)).await.unwrap();
    assert!(checker.check(check_req(&b.token)).await.unwrap().1);
    let done = admin
        .complete_task(pb::CompleteTaskRequest {
            request_id: String::new(),
            task_id: "cache-b".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    until_applied(&checker, done.receipt.unwrap().audit_seq).await;
    let (r, cached) = checker.check(check_req(&b.token)).await.unwrap();
    assert_eq!((reason(&r), cached), (pb::Reason::TaskCompleted, false));

    // A policy change empties the cache: the new policy decides.
    let g = admin.issue_in(issue_req("cache-c", 600)).await.unwrap();
    checker.check(check_req(&g.token)).await.unwrap();
    assert!(checker.check(check_req(&g.token)).await.unwrap().1);
    let applied = admin
        .apply_policy(pb::ApplyPolicyRequest {
            policies: "@id(\"nothing\") forbid (principal, action, resource);".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    until_applied(&checker, applied.receipt.unwrap().audit_seq).await;
    assert_eq!(checker.cached(), 0);
    let (r, cached) = checker.check(check_req(&g.token)).await.unwrap();
    assert_eq!((reason(&r), cached), (pb::Reason::PolicyDenied, false));
}
