//! A minimal reproduction of the fork of issue #23, in one process, for an
//! openraft report: three nodes on grantd's real log store and state
//! machine, an in-process network, and a log store wrapper that can hold
//! back one node's flush, as a slow disk would.
//!
//! 1. The leader appends an entry; its own flush is held back, while both
//!    followers write it and acknowledge. It commits (a majority wrote it)
//!    and the client is answered.
//! 2. The leader crashes before its flush: it restarts, at once, from what
//!    its disk holds, which lacks that entry.
//! 3. With `enable_leader_restore` (openraft's default), it is leader again
//!    in the same term without an election, and gives the lost entry's
//!    index to the next write. Both entries carry the same log id, so the
//!    followers keep theirs: two histories under one log id.
//!    With `enable_leader_restore: Some(false)` (grantd's setting) it must
//!    win an election in a higher term, and every node keeps one history.
//!
//! openraft replicates entries once *submitted* to the log store, before
//! they are flushed (`broadcast_submitted_on_append` only changes how soon),
//! which the `RaftLogStorage::append` contract allows; leader restore is
//! only safe if the leader never sent an entry it had not made durable.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grantd::ledger::{Command, SweepCmd};
use grantd::raft::typ::*;
use grantd::raft::{NodeId, NodeInfo, Raft, TypeConfig};
use grantd::storage::{LogStore, StateMachine};
use openraft::async_runtime::WatchReceiver;
use openraft::entry::RaftEntry;
use openraft::errors::{ReplicationClosed, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{AnyError, OptionalSend, RaftNetworkV2};

/// What one node's disk holds for sure: the entries and vote whose flush
/// was reported. While `stalled`, appends reach the store (and so the
/// replication that reads it) but their flush is never reported.
#[derive(Default)]
struct Disk {
    stalled: bool,
    durable: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
}

#[derive(Clone)]
struct SlowDisk {
    inner: LogStore,
    disk: Arc<Mutex<Disk>>,
}

impl RaftLogReader<TypeConfig> for SlowDisk {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.inner.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.inner.read_vote().await
    }
}

impl RaftLogStorage<TypeConfig> for SlowDisk {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, io::Error> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.inner.save_vote(vote).await?;
        self.disk.lock().unwrap().vote = Some(*vote);
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (tx, rx) = TypeConfig::oneshot();
        self.inner
            .append(entries.clone(), IOFlushed::signal(tx))
            .await?;
        let disk = self.disk.clone();
        tokio::spawn(async move {
            let flushed = rx.await.unwrap_or_else(|_| Err(io::Error::other("gone")));
            let mut d = disk.lock().unwrap();
            if d.stalled {
                return; // never reported, never durable
            }
            for e in &entries {
                d.durable.insert(e.index(), e.clone());
            }
            drop(d);
            callback.io_completed(flushed);
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let from = last.map(|l| l.index() + 1).unwrap_or(0);
        self.disk.lock().unwrap().durable.split_off(&from);
        self.inner.truncate_after(last).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.inner.purge(log_id).await
    }
}

/// The nodes, by id, for the in-process network.
type Router = Arc<Mutex<HashMap<NodeId, Raft>>>;

/// A node's outgoing network; `alive` goes false when the process it
/// stands for "crashes", so that nothing it left running (a replication
/// or heartbeat task) reaches a peer any more.
struct Net(Router, Arc<AtomicBool>);
struct Conn(Router, NodeId, Arc<AtomicBool>);

fn unreachable(what: &str) -> RPCError {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(what)))
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Conn;
    async fn new_client(&mut self, target: NodeId, _node: &NodeInfo) -> Conn {
        Conn(self.0.clone(), target, self.1.clone())
    }
}

impl Conn {
    fn raft(&self) -> Result<Raft, RPCError> {
        if !self.2.load(Ordering::SeqCst) {
            return Err(unreachable("this process is gone"));
        }
        let nodes = self.0.lock().unwrap();
        nodes
            .get(&self.1)
            .cloned()
            .ok_or_else(|| unreachable("down"))
    }
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = grantd::storage::snapshot_file::SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError> {
        let raft = self.raft()?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| unreachable(&e.to_string()))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        _option: RPCOption,
    ) -> Result<VoteResponse, RPCError> {
        let raft = self.raft()?;
        raft.vote(rpc)
            .await
            .map_err(|e| unreachable(&e.to_string()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError> {
        Err(StreamingError::Unreachable(Unreachable::new(
            &AnyError::error("no snapshots in this reproduction"),
        )))
    }
}

struct Node {
    dir: tempfile::TempDir,
    disk: Arc<Mutex<Disk>>,
    /// The store of the running process, to read its log at the end.
    store: Mutex<Option<LogStore>>,
    /// Whether the running process may still reach its peers.
    alive: Mutex<Arc<AtomicBool>>,
}

fn config(leader_restore: bool) -> Arc<openraft::Config> {
    Arc::new(
        openraft::Config {
            heartbeat_interval: 100,
            // Long enough that the restart below beats every follower.
            election_timeout_min: 3000,
            election_timeout_max: 4000,
            snapshot_policy: openraft::SnapshotPolicy::Never,
            broadcast_submitted_on_append: Some(true),
            enable_leader_restore: Some(leader_restore),
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
}

/// Start node `id` on a fresh store holding what `disk` holds durably.
async fn start(id: NodeId, node: &Node, router: &Router, leader_restore: bool) -> Raft {
    let gen = node
        .dir
        .path()
        .join(format!("gen-{}", rand::random::<u64>()));
    let mut log = LogStore::open(&gen).unwrap();
    let (vote, durable) = {
        let d = node.disk.lock().unwrap();
        (d.vote, d.durable.values().cloned().collect::<Vec<_>>())
    };
    if let Some(v) = vote {
        log.save_vote(&v).await.unwrap();
    }
    if !durable.is_empty() {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(durable, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }
    *node.store.lock().unwrap() = Some(log.clone());
    let store = SlowDisk {
        inner: log,
        disk: node.disk.clone(),
    };
    let sm = StateMachine::open(&gen).unwrap();
    let alive = Arc::new(AtomicBool::new(true));
    *node.alive.lock().unwrap() = alive.clone();
    let raft = Raft::new(
        id,
        config(leader_restore),
        Net(router.clone(), alive),
        store,
        sm,
    )
    .await
    .unwrap();
    router.lock().unwrap().insert(id, raft.clone());
    raft
}

/// Write a command on `raft`, once its leader lease holds (a new or
/// restored leader refuses writes until a quorum has acknowledged it).
async fn write(raft: &Raft, now_ms: i64) -> LogId {
    for _ in 0..200 {
        let sweep = SweepCmd {
            now_ms,
            purge_before_ms: 0,
        };
        match raft.client_write(Command::Sweep(sweep)).await {
            Ok(r) => return r.log_id,
            Err(e) => {
                eprintln!("write {now_ms}: {e}; again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    panic!("write {now_ms} never accepted");
}

/// The node that leads, as a quorum acknowledges it: (id, term).
async fn leader(router: &Router) -> (NodeId, u64) {
    for _ in 0..600 {
        let nodes: Vec<Raft> = router.lock().unwrap().values().cloned().collect();
        for raft in nodes {
            let m = raft.metrics().borrow_watched().clone();
            if m.state == openraft::ServerState::Leader && m.last_quorum_acked.is_some() {
                return (m.id, m.current_term);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader within 30 s");
}

/// Every node's log entries, by index: (log id, payload as JSON).
async fn logs(nodes: &BTreeMap<NodeId, Node>) -> BTreeMap<NodeId, BTreeMap<u64, (LogId, String)>> {
    let mut out = BTreeMap::new();
    for (id, n) in nodes {
        let mut store = n.store.lock().unwrap().clone().unwrap();
        let got = store.try_get_log_entries(0..u64::MAX).await.unwrap();
        out.insert(
            *id,
            got.into_iter()
                .map(|e| {
                    (
                        e.index(),
                        (e.log_id(), serde_json::to_string(&e.payload).unwrap()),
                    )
                })
                .collect(),
        );
    }
    out
}

async fn applied_at_least(raft: &Raft, index: u64, what: &str) {
    for _ in 0..600 {
        let m = raft.metrics().borrow_watched().clone();
        if m.last_applied.as_ref().is_some_and(|l| l.index() >= index) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what} not applied within 30 s: {}",
        raft.metrics().borrow_watched().clone()
    );
}

/// Runs steps 1-3 and returns (whether the restarted node led again in
/// its old term, index -> (log id, payloads that differ between nodes)).
async fn crash_a_leader_that_had_not_flushed(
    leader_restore: bool,
) -> (bool, Vec<(u64, LogId, Vec<String>)>) {
    let router: Router = Arc::default();
    let nodes: BTreeMap<NodeId, Node> = (1..=3)
        .map(|id| {
            (
                id,
                Node {
                    dir: tempfile::tempdir().unwrap(),
                    disk: Arc::default(),
                    store: Mutex::new(None),
                    alive: Mutex::default(),
                },
            )
        })
        .collect();
    let mut rafts = BTreeMap::new();
    for (id, n) in &nodes {
        rafts.insert(*id, start(*id, n, &router, leader_restore).await);
    }
    let members: BTreeMap<NodeId, NodeInfo> = (1..=3).map(|id| (id, NodeInfo::default())).collect();
    rafts[&1].initialize(members).await.unwrap();
    let (leader, term) = leader(&router).await;
    for i in 0..3 {
        write(&rafts[&leader], i).await;
    }

    // 1. The leader's flush is held back; the followers write the entry
    //    and it commits (whether the leader answers its client or not).
    nodes[&leader].disk.lock().unwrap().stalled = true;
    let lost_index = rafts[&leader]
        .metrics()
        .borrow_watched()
        .last_log_index
        .unwrap()
        + 1;
    let writing = {
        let r = rafts[&leader].clone();
        tokio::spawn(async move { write(&r, 1000).await })
    };
    for (id, raft) in &rafts {
        if *id != leader {
            applied_at_least(raft, lost_index, "the entry the leader did not flush").await;
        }
    }

    // 2. The leader crashes and restarts from its disk, at once.
    nodes[&leader]
        .alive
        .lock()
        .unwrap()
        .store(false, Ordering::SeqCst);
    let old = router.lock().unwrap().remove(&leader).unwrap();
    old.shutdown().await.unwrap();
    drop(old);
    writing.abort();
    nodes[&leader].disk.lock().unwrap().stalled = false;
    start(leader, &nodes[&leader], &router, leader_restore).await;

    // 3. The next write, which every node receives.
    let (now, now_term) = self::leader(&router).await;
    let led_again = now == leader && now_term == term;
    let target = router.lock().unwrap()[&now].clone();
    let next = write(&target, 2000).await;
    // Not in the `for` head: its lock guard would live through the loop.
    let running: Vec<Raft> = router.lock().unwrap().values().cloned().collect();
    for raft in &running {
        applied_at_least(raft, next.index(), "the next write").await;
    }

    let logs = logs(&nodes).await;
    let mut forks = Vec::new();
    for (index, (log_id, payload)) in &logs[&1] {
        let mut seen = vec![payload.clone()];
        for other in logs.values() {
            if let Some((id2, p2)) = other.get(index) {
                if id2 == log_id && p2 != payload {
                    seen.push(p2.clone());
                }
            }
        }
        if seen.len() > 1 {
            forks.push((*index, *log_id, seen));
        }
    }
    for raft in running {
        raft.shutdown().await.ok();
    }
    (led_again, forks)
}

/// openraft's default: the reproduction of the fork. If openraft changes
/// its behaviour, this test says so, and docs/consistency.md should follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leader_restore_a_quick_restart_forks_the_log() {
    let (led_again, forks) = crash_a_leader_that_had_not_flushed(true).await;
    assert!(
        led_again,
        "the restarted leader did not lead again in its term"
    );
    assert!(
        !forks.is_empty(),
        "no two nodes hold different entries under one log id"
    );
    eprintln!("forks: {forks:?}");
}

/// grantd's setting: the same crash keeps one history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leader_restore_the_same_crash_keeps_one_history() {
    let (led_again, forks) = crash_a_leader_that_had_not_flushed(false).await;
    assert!(!led_again, "the restarted leader led again in its old term");
    assert!(
        forks.is_empty(),
        "two histories under one log id: {forks:?}"
    );
}
