//! Robustness run (issues #7, #23): clients begin tasks, issue, delegate,
//! check, revoke, complete and abort tasks while a seeded nemesis kills -9
//! (the leader or any node, back after a pause or within 0.2-1 s), SIGTERMs
//! and SIGSTOPs nodes and, where network namespaces can be made, cuts a node
//! (the leader or any) off from its peers, cuts one link of three, drops
//! one direction of a link, or drops a share of a node's peer packets (one
//! fault at a time). Every operation is recorded with its start, end and
//! result; after healing, a checker proves:
//!
//! - no acknowledged task begin, grant, delegation, revoke, completion or
//!   abort is lost;
//! - no Check that started after an acknowledged revoke of the grant or of
//!   a grant it was delegated from (or the close of its task) returned
//!   allow, and no delegation that started after its parent's revoke was
//!   acknowledged made a grant;
//! - no request id produced a second grant;
//! - every node holds the same audit chain, which verifies offline, and
//!   every acknowledged Issue, Delegate, Check and Revoke is in it exactly once,
//!   at the sequence number and hash of its receipt.
//!
//! `GRANT_ROBUST_SEED` replays a run (the seed is printed);
//! `GRANT_ROBUST_SECS` sets its length (120 s in the suite).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grant_tests::grant_client::v1 as pb;
use grant_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
enum Outcome {
    /// Issued, or delegated (then `Op::grant` names the parent).
    Issued {
        grant_id: String,
        receipt: pb::Receipt,
    },
    Checked {
        allow: bool,
        grant_id: String,
        receipt: pb::Receipt,
    },
    Revoked {
        already_inactive: bool,
        receipt: pb::Receipt,
    },
    /// A task begun, or closed (completed or aborted, by `Op::kind`).
    Completed,
    /// Refused with a definite answer (nothing changed).
    Refused(String),
    /// No answer: it may or may not have happened.
    Unknown(String),
}

#[derive(Debug, Clone)]
struct Op {
    worker: usize,
    kind: &'static str,
    task: String,
    request_id: String,
    /// The grant the op is about (check, revoke; a delegation's parent),
    /// if known beforehand.
    grant: String,
    start: Instant,
    end: Instant,
    outcome: Outcome,
}

struct History(Mutex<Vec<Op>>);

fn failed(e: &grant_client::ClientError) -> Outcome {
    match e.grpc_code() {
        Some(tonic::Code::InvalidArgument)
        | Some(tonic::Code::FailedPrecondition)
        | Some(tonic::Code::NotFound) => Outcome::Refused(e.to_string()),
        _ => Outcome::Unknown(e.to_string()),
    }
}

/// A grant a worker holds: its id, its token and its holder (the agent an
/// Issue names, or the helper a delegation names).
#[derive(Clone)]
struct Held {
    grant: String,
    token: String,
    holder: &'static str,
    task: String,
}

const PLANNER: &str = "agent/planner";
const HELPER: &str = "agent/helper";

/// The clients of one worker: the orchestrator issues, revokes and closes
/// tasks (admin here), the planner delegates what it holds to the helper.
struct Callers {
    admin: grant_client::Client,
    planner: grant_client::Client,
}

async fn worker(w: usize, seed: u64, clients: Callers, stop: Instant, h: Arc<History>) {
    let Callers {
        admin: client,
        planner,
    } = clients;
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9));
    let mut task_no = 0u32;
    let mut begun = None;
    let mut mine: Vec<Held> = Vec::new();
    let mut n = 0u64;
    while Instant::now() < stop {
        n += 1;
        let task = format!("w{w}-task{task_no}");
        let roll: u32 = rng.gen_range(0..100);
        let start = Instant::now();
        let mut op = Op {
            worker: w,
            kind: "",
            task: task.clone(),
            request_id: String::new(),
            grant: String::new(),
            start,
            end: start,
            outcome: Outcome::Completed,
        };
        if begun != Some(task_no) {
            // Each task is begun on its own first (an Issue into a task
            // whose Begin had no answer begins it, through issue_in).
            begun = Some(task_no);
            op.kind = "begin";
            op.outcome = match client.begin_task(begin_req(&task)).await {
                Ok(_) => Outcome::Completed,
                Err(e) => failed(&e),
            };
        } else if roll < 40 || mine.is_empty() {
            op.kind = "issue";
            // Sometimes retry an earlier request id on purpose.
            op.request_id = if n > 1 && roll.is_multiple_of(10) {
                format!("w{w}-r{}", n - 1)
            } else {
                format!("w{w}-r{n}")
            };
            let mut req = issue_req(&task, 600);
            req.request_id = op.request_id.clone();
            op.outcome = match client.issue_in(req).await {
                Ok(r) => {
                    let g = r.grant.unwrap();
                    mine.push(Held {
                        grant: g.grant_id.clone(),
                        token: r.token.clone(),
                        holder: PLANNER,
                        task: task.clone(),
                    });
                    Outcome::Issued {
                        grant_id: g.grant_id,
                        receipt: r.receipt.unwrap(),
                    }
                }
                Err(e) => failed(&e),
            };
        } else if roll < 48 && mine.iter().any(|m| m.holder == PLANNER && m.task == task) {
            // The planner hands a grant of the task at hand on to the
            // helper (grants of closed tasks would only be refused).
            let held: Vec<&Held> = mine
                .iter()
                .filter(|m| m.holder == PLANNER && m.task == task)
                .collect();
            let parent = held[rng.gen_range(0..held.len())].clone();
            op.kind = "delegate";
            op.grant = parent.grant.clone();
            op.task = parent.task.clone();
            op.request_id = format!("w{w}-d{n}");
            let req = pb::DelegateRequest {
                request_id: op.request_id.clone(),
                parent_token: parent.token.clone(),
                subject: format!("spiffe://example.org/{HELPER}"),
                sub_task: "robustness".into(),
                scopes: vec![pb::Scope {
                    resource: "github".into(),
                    actions: vec!["read".into()],
                }],
                intent: String::new(),
                ttl_seconds: 600,
            };
            op.outcome = match planner.delegate(req).await {
                Ok(r) => {
                    let g = r.grant.unwrap();
                    mine.push(Held {
                        grant: g.grant_id.clone(),
                        token: r.token.clone(),
                        holder: HELPER,
                        task: parent.task.clone(),
                    });
                    Outcome::Issued {
                        grant_id: g.grant_id,
                        receipt: r.receipt.unwrap(),
                    }
                }
                Err(e) => failed(&e),
            };
        } else if roll < 85 {
            let held = mine[rng.gen_range(0..mine.len())].clone();
            op.kind = "check";
            op.grant = held.grant;
            let req = pb::CheckRequest {
                identity: format!("spiffe://example.org/{}", held.holder),
                ..check_req(&held.token)
            };
            op.outcome = match client.check(req).await {
                Ok(r) => Outcome::Checked {
                    allow: r.decision == pb::Decision::Allow as i32,
                    grant_id: r.grant_id,
                    receipt: r.receipt.unwrap(),
                },
                Err(e) => failed(&e),
            };
        } else if roll < 97 {
            let g = mine[rng.gen_range(0..mine.len())].grant.clone();
            op.kind = "revoke";
            op.grant = g.clone();
            op.outcome = match client.revoke(revoke_req(&g, "robustness")).await {
                Ok(r) => Outcome::Revoked {
                    already_inactive: r.already_inactive,
                    receipt: r.receipt.unwrap(),
                },
                Err(e) => failed(&e),
            };
        } else {
            // The task ends, either way revoking every grant in it.
            let abort = (roll % 2 == 1).then_some("robustness");
            op.kind = if abort.is_some() { "abort" } else { "complete" };
            let closed = close_task(&client, &task, abort).await.map(|_| ());
            op.outcome = match closed {
                Ok(()) => Outcome::Completed,
                Err(e) => failed(&e),
            };
            task_no += 1;
        }
        op.end = Instant::now();
        h.0.lock().unwrap().push(op);
    }
}

/// kill -9 node `id` (the `role` it had) and start it again `after` later.
async fn kill_and_restart(
    c: &mut Cluster,
    role: &str,
    id: u64,
    after: Duration,
    log: &mut Vec<String>,
) {
    log.push(format!("kill -9 {role} {id}, back after {after:?}"));
    c.kill(id);
    tokio::time::sleep(after).await;
    c.spawn(id);
}

/// One fault at a time, on a seeded schedule; every node runs again at the end.
async fn nemesis(c: &mut Cluster, rng: &mut StdRng, stop: Instant, log: &mut Vec<String>) {
    while Instant::now() + Duration::from_secs(3) < stop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
        let leader = c.wait_leader().await;
        let any = rng.gen_range(1..=3u64);
        let hold = Duration::from_millis(rng.gen_range(700..2000));
        let follower = *[1, 2, 3u64]
            .iter()
            .filter(|&&i| i != leader)
            .collect::<Vec<_>>()[rng.gen_range(0..2)];
        // Quick restarts: back within 0.2-1 s, before or about when the
        // others' election timer fires (the case that forked replicas
        // when a restarted leader led again in its old term, issue #23).
        let quick = Duration::from_millis(rng.gen_range(200..1000));
        let kinds = if c.net.is_some() { 12 } else { 6 };
        match rng.gen_range(0..kinds) {
            0 => kill_and_restart(c, "leader", leader, quick, log).await,
            1 => kill_and_restart(c, "node", any, quick, log).await,
            2 => kill_and_restart(c, "node", any, hold, log).await,
            3 => kill_and_restart(c, "leader", leader, hold, log).await,
            4 => {
                log.push(format!("SIGSTOP leader {leader} for {hold:?}"));
                c.pause(leader);
                tokio::time::sleep(hold).await;
                c.resume(leader);
            }
            5 => {
                log.push(format!("SIGTERM node {any}"));
                c.terminate(any);
                tokio::time::sleep(hold).await;
                c.spawn(any);
            }
            6 => {
                log.push(format!("cut leader {leader} off its peers for {hold:?}"));
                c.cut(leader);
                tokio::time::sleep(hold).await;
                c.heal(leader);
            }
            7 => {
                log.push(format!("cut node {any} off its peers for {hold:?}"));
                c.cut(any);
                tokio::time::sleep(hold).await;
                c.heal(any);
            }
            8 => {
                // Partial: both still reach the third node.
                log.push(format!(
                    "cut the link leader {leader} - node {follower} for {hold:?}"
                ));
                c.net().cut_link(leader, follower);
                tokio::time::sleep(hold).await;
                c.heal(leader);
            }
            9 => {
                log.push(format!(
                    "drop leader {leader} -> node {follower} (one way) for {hold:?}"
                ));
                c.net().cut_one_way(leader, follower);
                tokio::time::sleep(hold).await;
                c.heal(leader);
            }
            10 => {
                log.push(format!(
                    "drop node {follower} -> leader {leader} (one way) for {hold:?}"
                ));
                c.net().cut_one_way(follower, leader);
                tokio::time::sleep(hold).await;
                c.heal(follower);
            }
            _ => {
                let loss = rng.gen_range(10..40);
                let long = hold * 3;
                log.push(format!(
                    "drop {loss}% of node {any}'s peer packets for {long:?}"
                ));
                c.net().lossy(any, loss);
                tokio::time::sleep(long).await;
                c.heal(any);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_under_a_seeded_nemesis() {
    let seed: u64 = std::env::var("GRANT_ROBUST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let secs: u64 = std::env::var("GRANT_ROBUST_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    eprintln!("robustness run: GRANT_ROBUST_SEED={seed} GRANT_ROBUST_SECS={secs}");
    // Partitions need a namespace per node; without them, the other faults.
    let mut c = match Cluster::start_partitionable(3).await {
        Some(c) => c,
        None => Cluster::start(3).await,
    };
    eprintln!("partitions: {}", if c.net.is_some() { "on" } else { "off" });
    let stop = Instant::now() + Duration::from_secs(secs);
    let history = Arc::new(History(Mutex::new(Vec::new())));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let clients = Callers {
                admin: c.client(),
                planner: c.client_as(PLANNER),
            };
            tokio::spawn(worker(w, seed, clients, stop, history.clone()))
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    nemesis(&mut c, &mut rng, stop, &mut faults).await;
    for w in workers {
        w.await.unwrap();
    }
    eprintln!("faults: {} {faults:?}", faults.len());
    c.wait_leader().await;
    let digests = c.converged_digests().await;
    assert!(
        digests.iter().all(|d| d.1 == digests[0].1),
        "replicas differ: {digests:?}"
    );

    let ops = history.0.lock().unwrap().clone();
    let count = |k: &str, ok: fn(&Outcome) -> bool| {
        ops.iter().filter(|o| o.kind == k && ok(&o.outcome)).count()
    };
    eprintln!(
        "ops: {} ({} tasks begun, {} issued, {} delegated, {} checked, {} revoked, {} tasks closed, {} unknown outcomes)",
        ops.len(),
        count("begin", |o| matches!(o, Outcome::Completed)),
        count("issue", |o| matches!(o, Outcome::Issued { .. })),
        count("delegate", |o| matches!(o, Outcome::Issued { .. })),
        count("check", |o| matches!(o, Outcome::Checked { .. })),
        count("revoke", |o| matches!(o, Outcome::Revoked { .. })),
        count("complete", |o| matches!(o, Outcome::Completed))
            + count("abort", |o| matches!(o, Outcome::Completed)),
        ops.iter()
            .filter(|o| matches!(o.outcome, Outcome::Unknown(_)))
            .count(),
    );
    let answers: BTreeSet<&str> = ops
        .iter()
        .filter_map(|o| match &o.outcome {
            Outcome::Refused(m) | Outcome::Unknown(m) => Some(m.as_str()),
            _ => None,
        })
        .take(5)
        .collect();
    eprintln!("some errors seen: {answers:?}");
    assert!(count("issue", |o| matches!(o, Outcome::Issued { .. })) > 0);
    let ctx = format!("seed {seed}, faults {faults:?}");

    // One grant per request id.
    let mut by_rid: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut grant_task: HashMap<&str, &str> = HashMap::new();
    let mut issued_end: HashMap<&str, Instant> = HashMap::new();
    // Delegated grant -> the grant it was delegated from.
    let mut parent_of: HashMap<&str, &str> = HashMap::new();
    for o in &ops {
        if let Outcome::Issued { grant_id, .. } = &o.outcome {
            by_rid.entry(&o.request_id).or_default().insert(grant_id);
            grant_task.insert(grant_id, &o.task);
            issued_end.entry(grant_id).or_insert(o.end);
            if o.kind == "delegate" {
                parent_of.insert(grant_id, &o.grant);
            }
        }
    }
    for (rid, grants) in &by_rid {
        assert_eq!(
            grants.len(),
            1,
            "request id {rid} gave grants {grants:?} ({ctx})"
        );
    }

    // When each grant's revocation was acknowledged (directly, or by an
    // acknowledged completion of its task that started after it was issued),
    // and which grants may have been revoked by an unanswered request.
    let mut revoked_at: HashMap<&str, Instant> = HashMap::new();
    let mut maybe_revoked: BTreeSet<&str> = BTreeSet::new();
    for o in &ops {
        match (o.kind, &o.outcome) {
            ("revoke", Outcome::Revoked { .. }) => {
                let t = revoked_at.entry(&o.grant).or_insert(o.end);
                *t = (*t).min(o.end);
            }
            ("revoke", Outcome::Unknown(_)) => {
                maybe_revoked.insert(&o.grant);
            }
            ("complete" | "abort", out) => {
                for (g, task) in &grant_task {
                    if *task != o.task {
                        continue;
                    }
                    match out {
                        Outcome::Completed if issued_end[g] < o.start => {
                            let t = revoked_at.entry(g).or_insert(o.end);
                            *t = (*t).min(o.end);
                        }
                        Outcome::Completed | Outcome::Unknown(_) => {
                            maybe_revoked.insert(g);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    // A delegated grant that exists was made before its parent was revoked
    // (a delegation from a revoked grant or a closed task is refused), so
    // the parent's revoke revoked it too, by the time it was acknowledged.
    for (child, parent) in &parent_of {
        if let Some(t) = revoked_at.get(parent).copied() {
            let c = revoked_at.entry(child).or_insert(t);
            *c = (*c).min(t);
        }
        if maybe_revoked.contains(parent) {
            maybe_revoked.insert(child);
        }
    }
    // No delegation that started after its parent's revoke was
    // acknowledged made a grant.
    for o in ops.iter().filter(|o| o.kind == "delegate") {
        if let (Outcome::Issued { grant_id, .. }, Some(t)) =
            (&o.outcome, revoked_at.get(&o.grant[..]))
        {
            assert!(
                o.start < *t,
                "grant {grant_id} delegated from {} by worker {}, started {:?} after the parent's revoke was acknowledged ({ctx})",
                o.grant,
                o.worker,
                o.start - *t
            );
        }
    }

    // No check that started after an acknowledged revoke allowed.
    for o in &ops {
        if let Outcome::Checked { allow: true, .. } = o.outcome {
            if let Some(t) = revoked_at.get(&o.grant[..]) {
                assert!(
                    o.start < *t,
                    "check of {} by worker {} started {:?} after its revoke was acknowledged and allowed ({ctx})",
                    o.grant,
                    o.worker,
                    o.start - *t
                );
            }
        }
    }

    // Nothing acknowledged was lost.
    let client = c.client();
    for g in issued_end.keys() {
        let r = client
            .get(pb::GetRequest {
                grant_id: g.to_string(),
                allow_stale: false,
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged grant {g} lost: {e} ({ctx})"));
        let state = r.grant.unwrap().state;
        if revoked_at.contains_key(g) {
            assert_eq!(state, pb::GrantState::Revoked as i32, "grant {g} ({ctx})");
        } else if !maybe_revoked.contains(g) {
            assert_eq!(state, pb::GrantState::Active as i32, "grant {g} ({ctx})");
        }
    }
    // Every acknowledged task begin, completion and abort holds.
    let mut tasks: BTreeMap<&str, Option<pb::TaskState>> = BTreeMap::new();
    for o in &ops {
        match (o.kind, &o.outcome) {
            ("begin", Outcome::Completed) => {
                tasks.entry(&o.task).or_insert(None);
            }
            ("complete", Outcome::Completed) => {
                tasks.insert(&o.task, Some(pb::TaskState::Completed));
            }
            ("abort", Outcome::Completed) => {
                tasks.insert(&o.task, Some(pb::TaskState::Aborted));
            }
            _ => {}
        }
    }
    for (task, closed) in &tasks {
        let t = client
            .get_task(pb::GetTaskRequest {
                task_id: task.to_string(),
                allow_stale: false,
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged task {task} lost: {e} ({ctx})"))
            .task
            .unwrap();
        if let Some(state) = closed {
            assert_eq!(
                t.state, *state as i32,
                "task {task}: acknowledged {state:?} ({ctx})"
            );
        }
    }

    // No task holds more grants than request ids were tried for it.
    let mut tried: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for o in ops
        .iter()
        .filter(|o| o.kind == "issue" || o.kind == "delegate")
    {
        tried.entry(&o.task).or_default().insert(&o.request_id);
    }
    for (task, rids) in &tried {
        let listed = client.list(list_task_req(task, 500)).await.unwrap().grants;
        assert!(
            listed.len() <= rids.len(),
            "task {task}: {} grants from {} request ids ({ctx})",
            listed.len(),
            rids.len()
        );
    }

    // Every node holds the same chain; it verifies offline; every
    // acknowledged op is in it exactly once, where its receipt says.
    let common = c.chains_agree(&ctx).await;

    let mut chain = Vec::new();
    while (chain.len() as u64) < common as u64 {
        let page = client
            .audit_entries(chain.len() as u64, 1000)
            .await
            .unwrap();
        assert!(!page.entries.is_empty());
        chain.extend(page.entries);
    }
    let mut seen_seq: HashMap<u64, String> = HashMap::new();
    let mut issue_entries: HashMap<&str, usize> = HashMap::new();
    for e in &chain {
        if e.kind == "issue" || e.kind == "delegate" {
            *issue_entries.entry(&e.grant_id).or_default() += 1;
        }
    }
    for (i, o) in ops.iter().enumerate() {
        let (kind, receipt, grant) = match &o.outcome {
            // A replay's receipt names the original entry.
            Outcome::Issued {
                receipt, grant_id, ..
            } => (o.kind, receipt, grant_id.as_str()),
            Outcome::Checked {
                receipt, grant_id, ..
            } => ("check", receipt, grant_id.as_str()),
            Outcome::Revoked {
                receipt,
                already_inactive: false,
            } => ("revoke", receipt, o.grant.as_str()),
            _ => continue,
        };
        let e = &chain[receipt.audit_seq as usize];
        assert_eq!(
            e.hash, receipt.entry_hash,
            "{kind} receipt of {grant} ({ctx})"
        );
        assert_eq!(
            e.kind, kind,
            "{kind} of {grant} at seq {} ({ctx})",
            receipt.audit_seq
        );
        assert_eq!(
            e.grant_id, grant,
            "{kind} at seq {} ({ctx})",
            receipt.audit_seq
        );
        // Distinct operations, distinct entries (a replayed Issue shares
        // its original's).
        let key = if kind == "issue" || kind == "delegate" {
            format!("{kind} {grant}")
        } else {
            format!("{kind} op {i}")
        };
        if let Some(prev) = seen_seq.insert(receipt.audit_seq, key.clone()) {
            assert_eq!(
                prev, key,
                "two operations share entry {} ({ctx})",
                receipt.audit_seq
            );
        }
    }
    for g in issued_end.keys() {
        assert_eq!(
            issue_entries.get(g),
            Some(&1),
            "issue entries of {g} ({ctx})"
        );
    }
}
