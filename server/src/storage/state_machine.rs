//! The replicated state machine: applies committed entries through the pure
//! ledger into sled, each entry's writes atomic across a crash (`journal`);
//! builds and installs snapshots.
//!
//! State lives in one sled tree (see `keyspace`) in a database of its
//! generation (`state.<n>/`). Installing a snapshot fills the next
//! generation's database and then switches the pointer file
//! (`generation`), because sled cannot clear a tree atomically. Snapshots
//! are files (`snapshot_file`), written and read as streams: they are
//! never held whole in memory.
//!
//! The audit chain is not in sled: each generation has an audit store
//! beside its database (`<generation>.audit/`, `audit_store`), which apply
//! appends to before it writes the state that counts the entries.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};

use super::audit_fill;
use super::audit_store::{AuditFiles, AuditStore, TileRun};
use super::capture::Capture;
use super::crash_point::{crash_point, CrashPoint};
use super::generation;
use super::grant_cache::GrantCache;
use super::io_err;
use super::journal::Journal;
use super::keyspace as ks;
use super::snapshot_data;
use super::snapshot_file::{SnapshotFile, SnapshotWriter};
use grant_proto::audit::Hash;

use crate::ledger::{
    self, AuditEntry, Chain, ChainStart, CommandResult, DedupeRecord, GrantRecord, LedgerState,
    StateError, TaskRecord,
};
use crate::raft::codec;
use crate::raft::typ::*;
use crate::raft::TypeConfig;

/// Whose grants a `StateReader::list` pages through.
#[derive(Clone, Copy, Debug)]
pub enum ListOf<'a> {
    Task(&'a str),
    Subject(&'a str),
}

/// The policy set in force: the log index that set it, and the set compiled.
type PolicyInForce = (u64, Arc<grant_policy::Compiled>);

/// Read-side handle to the state, shared with the API layer.
#[derive(Clone)]
pub struct StateReader {
    tree: Arc<RwLock<sled::Tree>>,
    /// Grants issued and not yet retired (revoked, completed or swept after
    /// expiry): the size of the expiry index, kept in memory for metrics.
    active_grants: Arc<AtomicI64>,
    /// Log index of the replicated role mapping in force (0: none yet), so
    /// that readers notice a change with one atomic load.
    roles_version: Arc<AtomicU64>,
    /// The policy set in force, compiled once per change: (log index, set).
    policy: Arc<RwLock<Option<PolicyInForce>>>,
    /// The audit chain's size after the last applied entry, for watchers
    /// waiting for new events.
    audit_size: Arc<tokio::sync::watch::Sender<u64>>,
    /// The audit store of the generation in force.
    audit: Arc<RwLock<AuditFiles>>,
}

#[derive(Clone)]
pub struct StateMachine {
    /// The database of the generation in force (`generation`).
    db: sled::Db,
    /// The data directory.
    dir: PathBuf,
    generation: String,
    /// How apply writes an entry's keys (see `journal`).
    journal: Journal,
    /// The audit chain's entries and hashes (see `audit_store`).
    audit: Arc<Mutex<AuditStore>>,
    reader: StateReader,
    snapshot_dir: PathBuf,
    /// Last applied log id, chain head and leader time (META_APPLIED).
    applied: ks::Applied,
    /// Grant records apply read, decoded (see `grant_cache`).
    grants: GrantCache,
    membership: StoredMembership,
    /// The snapshot being copied beside apply, if any (shared by clones).
    capture: Arc<Mutex<Option<Arc<Capture>>>>,
    /// Held from the start of a snapshot build to its end; installing a
    /// snapshot waits for it, since it replaces the tree being copied.
    build_lock: Arc<tokio::sync::Mutex<()>>,
}

impl StateReader {
    pub fn tree(&self) -> sled::Tree {
        self.tree.read().expect("state tree lock").clone()
    }

    /// Grants not yet retired (see the field); for metrics only.
    pub fn active_grants(&self) -> i64 {
        self.active_grants.load(Ordering::Relaxed)
    }

    /// Recount the expiry index and reread the roles version (at start and
    /// after a snapshot install).
    fn recount_active(&self) {
        let n = self.tree().scan_prefix([ks::EXPIRY]).keys().count();
        self.active_grants.store(n as i64, Ordering::Relaxed);
        let v = self.roles().ok().flatten().map(|(i, _)| i).unwrap_or(0);
        self.roles_version.store(v, Ordering::Release);
    }

    /// The log index of the replicated role mapping (0 when there is none).
    pub fn roles_version(&self) -> u64 {
        self.roles_version.load(Ordering::Acquire)
    }

    /// The JWK `x` of token key `kid`, if the cluster published it.
    pub fn token_key(&self, kid: &str) -> io::Result<Option<String>> {
        match self.tree().get(ks::token_key(kid)).map_err(io_err)? {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            None => Ok(None),
        }
    }

    /// Every published token key: (kid, x), by kid.
    pub fn token_keys(&self) -> io::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for kv in self.tree().scan_prefix([ks::TOKEN_KEY]) {
            let (k, v) = kv.map_err(io_err)?;
            out.push((
                String::from_utf8_lossy(&k[1..]).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        Ok(out)
    }

    /// Follow the audit chain's size as entries are applied.
    pub fn audit_size(&self) -> tokio::sync::watch::Receiver<u64> {
        self.audit_size.subscribe()
    }

    /// The entries Watch serves (revocations, expirations, task
    /// completions, policy changes) after audit seq `after` (None: from the
    /// start), in order, at most `limit`.
    pub fn watch_events(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> io::Result<Vec<(AuditEntry, Hash)>> {
        let size = self.chain()?.size();
        let files = self.audit_files();
        let mut out = Vec::new();
        for seq in files.watched_after(after, size, limit)? {
            let e = files.entries(seq, 1, size, ks::decode_audit)?.pop();
            out.push(e.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the watch index names missing audit entry {seq}"),
                )
            })?);
        }
        Ok(out)
    }

    /// The replicated policy set: (log index, record).
    pub fn policy_record(&self) -> io::Result<Option<(u64, ledger::PolicyRecord)>> {
        read_meta(&self.tree(), ks::META_POLICY)
    }

    /// The compiled policy set in force, if any.
    pub fn policy(&self) -> Option<Arc<grant_policy::Compiled>> {
        self.policy
            .read()
            .expect("policy lock")
            .as_ref()
            .map(|(_, p)| p.clone())
    }

    /// Compile the stored policy set, if it moved (at start, after a
    /// snapshot install, after a SetPolicy). A stored set that no longer
    /// compiles is a broken state, not a request to refuse.
    fn reload_policy(&self) -> io::Result<()> {
        let stored = self.policy_record()?;
        let current = self
            .policy
            .read()
            .expect("policy lock")
            .as_ref()
            .map(|(i, _)| *i);
        let compiled = match stored {
            None => None,
            Some((index, _)) if Some(index) == current => return Ok(()),
            Some((index, rec)) => {
                let p = grant_policy::compile(&rec.policies, &rec.schema, rec.no_match).map_err(
                    |e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the stored policy set (index {index}) does not compile: {e}"),
                        )
                    },
                )?;
                Some((index, Arc::new(p)))
            }
        };
        *self.policy.write().expect("policy lock") = compiled;
        Ok(())
    }

    /// The replicated role mapping: (log index, canonical JSON).
    pub fn roles(&self) -> io::Result<Option<(u64, String)>> {
        read_meta(&self.tree(), ks::META_ROLES)
    }

    /// Where the state stands: last applied log id, chain head, leader time.
    fn applied(&self) -> io::Result<ks::Applied> {
        read_applied(&self.tree())
    }

    pub fn last_applied_index(&self) -> io::Result<u64> {
        Ok(self.applied()?.last_applied.map(|l| l.index()).unwrap_or(0))
    }

    pub fn grant(&self, id: &str) -> io::Result<Option<GrantRecord>> {
        match self.tree().get(ks::grant(id)).map_err(io_err)? {
            Some(v) => Ok(Some(ks::decode_grant(&v)?)),
            None => Ok(None),
        }
    }

    pub fn task(&self, id: &str) -> io::Result<Option<TaskRecord>> {
        match self.tree().get(ks::task(id)).map_err(io_err)? {
            Some(v) => Ok(Some(ks::decode_task(&v)?)),
            None => Ok(None),
        }
    }

    /// One page of the grants of a task or a subject, in grant id order,
    /// after the grant id `after`; and whether more follow.
    pub fn list(
        &self,
        of: ListOf<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> io::Result<(Vec<GrantRecord>, bool)> {
        let prefix = &match of {
            ListOf::Task(t) => ks::by_task_prefix(t),
            ListOf::Subject(s) => ks::by_subject_prefix(s),
        }[..];
        let tree = self.tree();
        let start = match after {
            Some(a) => {
                let mut s = prefix.to_vec();
                s.extend_from_slice(a.as_bytes());
                s.push(0); // first key strictly after `a`
                s
            }
            None => prefix.to_vec(),
        };
        let mut out = Vec::new();
        let mut more = false;
        for kv in tree.range(start..) {
            let (k, _) = kv.map_err(io_err)?;
            if !k.starts_with(prefix) {
                break;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            let id = ks::suffix_id(&k, prefix.len());
            let g = tree
                .get(ks::grant(&id))
                .map_err(io_err)?
                .ok_or_else(|| io_err(format!("index points at missing grant {id}")))?;
            out.push(ks::decode_grant(&g)?);
        }
        Ok((out, more))
    }

    /// The audit store of the generation in force.
    pub fn audit_files(&self) -> AuditFiles {
        self.audit.read().expect("audit files lock").clone()
    }

    /// Audit entries from `from`, at most `limit`, with their hashes.
    pub fn audit_entries(&self, from: u64, limit: usize) -> io::Result<Vec<(AuditEntry, Hash)>> {
        let size = self.chain()?.size();
        self.audit_files()
            .entries(from, limit, size, ks::decode_audit)
    }

    /// The hash of audit entry `seq`, if the chain holds it. A node begun
    /// from a snapshot knows that of the entry before its seam (a Watch
    /// resumes after it) without the entry.
    pub fn audit_entry_hash(&self, seq: u64) -> io::Result<Option<Hash>> {
        let base = self.audit_files().base();
        if seq + 1 == base.seam && seq < base.entries_from {
            return Ok(Some(base.seam_hash));
        }
        Ok(self.audit_entries(seq, 1)?.pop().map(|(_, h)| h))
    }

    /// Stored audit entries as export lines, from `from`, at most `limit`.
    pub fn audit_lines(&self, from: u64, limit: usize) -> io::Result<Vec<Vec<u8>>> {
        let size = self.chain()?.size();
        self.audit_files()
            .entries(from, limit, size, ks::audit_line)
    }

    /// The root of the tree of the first `size` entries, if the chain has
    /// reached that size.
    pub fn tree_root(&self, size: u64) -> io::Result<Option<Hash>> {
        if size > self.chain()?.size() {
            return Ok(None);
        }
        self.audit_files().root(size).map(Some)
    }

    /// Audit path of entry `seq` in the tree of `size` (at most the chain's).
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> io::Result<Vec<Hash>> {
        self.within_chain(size)?;
        self.audit_files().inclusion_proof(seq, size)
    }

    /// Proof that the tree of `first` entries is a prefix of that of `size`.
    pub fn consistency_proof(&self, first: u64, size: u64) -> io::Result<Vec<Hash>> {
        self.within_chain(size)?;
        self.audit_files().consistency_proof(first, size)
    }

    fn within_chain(&self, size: u64) -> io::Result<()> {
        let have = self.chain()?.size();
        if size > have {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the chain holds {have} entries, not {size}"),
            ));
        }
        Ok(())
    }

    /// Every kept checkpoint, smallest first: (size, note).
    pub fn checkpoints(&self) -> io::Result<Vec<(u64, String)>> {
        self.tree()
            .scan_prefix([ks::CHECKPOINT])
            .map(|kv| {
                let (k, v) = kv.map_err(io_err)?;
                Ok((
                    ks::decode_checkpoint_key(&k)?,
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect()
    }

    pub fn latest_checkpoint(&self) -> io::Result<Option<(u64, String)>> {
        match self.tree().scan_prefix([ks::CHECKPOINT]).next_back() {
            Some(kv) => {
                let (k, v) = kv.map_err(io_err)?;
                Ok(Some((
                    ks::decode_checkpoint_key(&k)?,
                    String::from_utf8_lossy(&v).into_owned(),
                )))
            }
            None => Ok(None),
        }
    }

    /// Checkpoint of exactly `size`, if one was kept.
    pub fn checkpoint(&self, size: u64) -> io::Result<Option<String>> {
        Ok(self
            .tree()
            .get(ks::checkpoint(size))
            .map_err(io_err)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Every verifier key in the roster: (key name, verifier key), by name.
    pub fn roster(&self) -> io::Result<Vec<(String, String)>> {
        self.tree()
            .scan_prefix([ks::ROSTER])
            .keys()
            .map(|k| ks::decode_roster_key(&k.map_err(io_err)?))
            .collect()
    }

    /// The chain head as of the last applied entry.
    pub fn chain(&self) -> io::Result<Chain> {
        Ok(self.applied()?.chain)
    }

    /// Where the chain starts (seq 0 until a prune).
    pub fn chain_start(&self) -> io::Result<ChainStart> {
        Ok(read_meta(&self.tree(), ks::META_AUDIT_START)?.unwrap_or_default())
    }

    /// The seqs of the entries that recorded the roster's keys.
    pub fn roster_seqs(&self) -> io::Result<Vec<u64>> {
        let mut out = self
            .tree()
            .scan_prefix([ks::ROSTER])
            .values()
            .map(|v| {
                let v = v.map_err(io_err)?;
                let b: [u8; 8] = v[..].try_into().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "a roster key without its seq")
                })?;
                Ok(u64::from_be_bytes(b))
            })
            .collect::<io::Result<Vec<u64>>>()?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(tree: &sled::Tree, k: &[u8]) -> io::Result<Option<T>> {
    match tree.get(k).map_err(io_err)? {
        Some(v) => Ok(Some(codec::decode(&v)?)),
        None => Ok(None),
    }
}

/// Where the state stands: nothing applied in a new database.
fn read_applied(tree: &sled::Tree) -> io::Result<ks::Applied> {
    match tree.get(ks::META_APPLIED).map_err(io_err)? {
        Some(v) => ks::decode_applied(&v),
        None => Ok(Default::default()),
    }
}

/// The ledger's view of a sled tree, with the policy set compiled from it
/// and, for apply, the grant records it has read and the audit store with
/// the size the chain had before the entry.
struct SledState<'a>(
    &'a sled::Tree,
    Option<Arc<grant_policy::Compiled>>,
    Option<&'a GrantCache>,
    Option<(&'a AuditFiles, u64)>,
);

fn se(e: impl std::fmt::Display) -> StateError {
    StateError(e.to_string())
}

impl LedgerState for SledState<'_> {
    fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StateError> {
        if let Some(g) = self.2.and_then(|c| c.get(id)) {
            return Ok(Some(g));
        }
        let Some(v) = self.0.get(ks::grant(id)).map_err(se)? else {
            return Ok(None);
        };
        let g = ks::decode_grant(&v).map_err(se)?;
        if let Some(c) = self.2 {
            c.put(&g);
        }
        Ok(Some(g))
    }
    fn dedupe(&self, request_id: &str) -> Result<Option<DedupeRecord>, StateError> {
        match self.0.get(ks::dedupe(request_id)).map_err(se)? {
            Some(v) => Ok(Some(ks::decode_dedupe(&v).map_err(se)?)),
            None => Ok(None),
        }
    }
    fn task_grant_ids(&self, task: &str, limit: usize) -> Result<Vec<String>, StateError> {
        let p = ks::by_task_prefix(task);
        self.0
            .scan_prefix(&p)
            .keys()
            .take(limit)
            .map(|k| k.map(|k| ks::suffix_id(&k, p.len())).map_err(se))
            .collect()
    }
    fn active_grants(&self, of: &ledger::Counted) -> Result<u64, StateError> {
        match self.0.get(ks::active(of)).map_err(se)? {
            Some(v) => Ok(u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| se("active count is not 8 bytes"))?,
            )),
            None => Ok(0),
        }
    }
    fn child_grant_ids(&self, parent: &str, limit: usize) -> Result<Vec<String>, StateError> {
        let p = ks::children_prefix(parent);
        self.0
            .scan_prefix(&p)
            .keys()
            .take(limit)
            .map(|k| k.map(|k| ks::suffix_id(&k, p.len())).map_err(se))
            .collect()
    }
    fn task(&self, task: &str) -> Result<Option<TaskRecord>, StateError> {
        match self.0.get(ks::task(task)).map_err(se)? {
            Some(v) => Ok(Some(ks::decode_task(&v).map_err(se)?)),
            None => Ok(None),
        }
    }
    fn tasks_past_deadline(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let ids = self.time_keys(ks::TASK_DEADLINE, ks::task_deadline_upto(now_ms), limit)?;
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }
    fn expired_grant_ids(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let ids = self.time_keys(ks::EXPIRY, ks::expiry_upto(now_ms), limit)?;
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }
    fn retired_before(&self, before_ms: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let ids = self.time_keys(ks::RETIRED, ks::retired_before(before_ms), limit)?;
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }
    fn tasks_closed_before(&self, before_ms: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let ids = self.time_keys(ks::TASK_CLOSED, ks::task_closed_before(before_ms), limit)?;
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }
    fn checkpoints_below(&self, size: u64, limit: usize) -> Result<Vec<u64>, StateError> {
        self.0
            .range(vec![ks::CHECKPOINT]..ks::checkpoint(size))
            .keys()
            .take(limit)
            .map(|k| ks::decode_checkpoint_key(&k.map_err(se)?).map_err(se))
            .collect()
    }
    fn roster_keys(&self, name: &str) -> Result<Vec<String>, StateError> {
        let p = ks::roster_prefix(name);
        self.0
            .scan_prefix(&p)
            .keys()
            .map(|k| k.map(|k| ks::suffix_id(&k, p.len())).map_err(se))
            .collect()
    }
    fn token_key_known(&self, kid: &str) -> Result<bool, StateError> {
        self.0.contains_key(ks::token_key(kid)).map_err(se)
    }
    fn tree_root(&self, size: u64) -> Result<Option<Hash>, StateError> {
        match self.3 {
            Some((files, have)) if size <= have => files.root(size).map(Some).map_err(se),
            _ => Ok(None),
        }
    }
    fn latest_checkpoint_size(&self) -> Result<Option<u64>, StateError> {
        match self.0.scan_prefix([ks::CHECKPOINT]).keys().next_back() {
            Some(k) => Ok(Some(
                ks::decode_checkpoint_key(&k.map_err(se)?).map_err(se)?,
            )),
            None => Ok(None),
        }
    }
    fn chain_start(&self) -> Result<ChainStart, StateError> {
        Ok(read_meta(self.0, ks::META_AUDIT_START)
            .map_err(se)?
            .unwrap_or_default())
    }
    fn policy(&self) -> Result<Option<Arc<grant_policy::Compiled>>, StateError> {
        Ok(self.1.clone())
    }
    fn dedupe_older_than(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StateError> {
        self.time_keys(ks::DEDUPE_BY_TIME, ks::dedupe_by_time(before_ms, ""), limit)
    }
}

impl SledState<'_> {
    /// The (time, id) of the keys of a time index (`prefix`, then ms BE,
    /// then an id) that sort below `end`, oldest first, at most `limit`.
    fn time_keys(
        &self,
        prefix: u8,
        end: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StateError> {
        self.0
            .range(vec![prefix]..end)
            .keys()
            .take(limit)
            .map(|k| ks::decode_time_key(&k.map_err(se)?).map_err(se))
            .collect()
    }
}

impl StateMachine {
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        let snapshot_dir = dir.join("snapshot");
        std::fs::create_dir_all(&snapshot_dir)?;
        SnapshotWriter::remove_leftovers(&snapshot_dir)?;
        let name = generation::current(dir)?;
        generation::remove_others(dir, &name)?;
        let (db, tree) = generation::open(dir, &name)?;
        match read_meta::<u32>(&tree, ks::META_FORMAT_VERSION)? {
            None => {
                tree.insert(ks::META_FORMAT_VERSION, codec::encode(&ks::FORMAT_VERSION))
                    .map_err(io_err)?;
            }
            Some(v) if v == ks::FORMAT_VERSION => {}
            Some(v) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "state format version {v} on disk, this grantd reads {}",
                        ks::FORMAT_VERSION
                    ),
                ))
            }
        }
        // Complete the last entry if a crash cut it short.
        let journal = Journal::open(&db)?;
        let replayed = journal.replay(&tree)?;
        tracing::debug!(keys = replayed, "state journal replayed");
        db.flush().map_err(io_err)?;
        let applied = read_applied(&tree)?;
        let membership = read_meta(&tree, ks::META_MEMBERSHIP)?.unwrap_or_default();
        // Cut back to the head the state records (see `audit_store`), and
        // finish a prune a crash cut short.
        let mut audit = AuditStore::open(&generation::audit_dir(dir, &name), &applied.chain)?;
        let start: ChainStart = read_meta(&tree, ks::META_AUDIT_START)?.unwrap_or_default();
        audit.prune(&start)?;
        let files = audit.files();
        let sm = StateMachine {
            db,
            dir: dir.to_path_buf(),
            generation: name,
            journal,
            audit: Arc::new(Mutex::new(audit)),
            reader: StateReader {
                audit: Arc::new(RwLock::new(files)),
                tree: Arc::new(RwLock::new(tree)),
                active_grants: Arc::new(AtomicI64::new(0)),
                roles_version: Arc::new(AtomicU64::new(0)),
                policy: Arc::new(RwLock::new(None)),
                audit_size: Arc::new(tokio::sync::watch::channel(applied.chain.size()).0),
            },
            snapshot_dir,
            applied,
            grants: GrantCache::default(),
            membership,
            capture: Arc::new(Mutex::new(None)),
            build_lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        sm.reader.recount_active();
        sm.reader.reload_policy()?;
        sm.spawn_audit_sync();
        Ok(sm)
    }

    /// Sync the audit store every `AUDIT_SYNC_INTERVAL`, on a thread of its
    /// own, for as long as the state machine lives: sled writes the state
    /// out on its own timer (every 500 ms), and the audit entries it counts
    /// should reach the disk first (docs/storage.md, "The audit chain").
    fn spawn_audit_sync(&self) {
        let reader = Arc::downgrade(&self.reader.audit);
        let spawned = std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || loop {
                std::thread::sleep(crate::limits::AUDIT_SYNC_INTERVAL);
                let Some(files) = reader.upgrade() else { return };
                let files = files.read().expect("audit files lock").clone();
                if let Err(e) = files.sync_written() {
                    tracing::error!(error = %e, dir = %files.dir().display(), "syncing the audit store");
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting the audit sync thread");
        }
    }

    /// SHA-256 over every key and value of the state, with the index it
    /// reflects. Replicas at the same index must agree (invariant 3).
    pub fn digest(&self) -> io::Result<(u64, String)> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for kv in self.reader.tree().iter() {
            let (k, v) = kv.map_err(io_err)?;
            h.update((k.len() as u64).to_be_bytes());
            h.update(&k);
            h.update((v.len() as u64).to_be_bytes());
            h.update(&v);
        }
        Ok((
            self.applied
                .last_applied
                .as_ref()
                .map(|l| l.index())
                .unwrap_or(0),
            hex::encode(h.finalize()),
        ))
    }

    /// The audit store's write side, for a fetch of what it lacks to be
    /// absorbed into (`audit_fill`). The same handle across snapshot loads.
    pub fn audit_store(&self) -> Arc<Mutex<AuditStore>> {
        self.audit.clone()
    }

    pub fn reader(&self) -> StateReader {
        self.reader.clone()
    }

    /// Where this node's snapshot files are.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    /// A new snapshot file in this node's snapshot directory (published
    /// when it is installed).
    pub fn snapshot_writer(&self, meta: &SnapshotMeta) -> io::Result<SnapshotWriter> {
        SnapshotWriter::create(&self.snapshot_dir, meta)
    }

    fn apply_one(&mut self, entry: Entry) -> io::Result<CommandResult> {
        let tree = self.reader.tree();
        let log_id = entry.log_id();
        let ctx = ledger::ApplyCtx {
            log_index: log_id.index(),
            chain: self.applied.chain.clone(),
        };
        let membership_changed = matches!(entry.payload, EntryPayload::Membership(_));
        let applied = match entry.payload {
            EntryPayload::Blank => None,
            EntryPayload::Normal(cmd) => {
                if let Some(t) = cmd.time_ms() {
                    self.applied.last_time_ms = t;
                }
                let files = self.reader.audit_files();
                let audit = Some((&files, self.applied.chain.size()));
                let state = SledState(&tree, self.reader.policy(), Some(&self.grants), audit);
                Some(ledger::apply(&cmd, ctx, &state).map_err(io_err)?)
            }
            EntryPayload::Membership(m) => {
                let voters: Vec<String> = m.voter_ids().map(|id| id.to_string()).collect();
                let learners: Vec<String> = m.learner_ids().map(|id| id.to_string()).collect();
                self.membership = StoredMembership::new(Some(log_id), m);
                // The leader that appended the configuration (the caller
                // who asked for it has a `requested` entry before it).
                let actor = format!("node/{}", log_id.committed_leader_id().node_id);
                Some(ledger::apply_membership(
                    &voters.join(","),
                    &learners.join(","),
                    &actor,
                    self.applied.last_time_ms,
                    ctx,
                ))
            }
        };
        let mut batch = ks::WriteSet::default();
        let mut active_delta = 0;
        let mut roles_version = None;
        let mut policy_changed = false;
        let mut start = None;
        let result = match applied {
            None => CommandResult::Nothing,
            Some(a) => {
                for w in &a.writes {
                    match w {
                        ledger::Write::InsertGrant(_) => active_delta += 1,
                        ledger::Write::Retire(_) => active_delta -= 1,
                        ledger::Write::PutRoles { index, .. } => roles_version = Some(*index),
                        ledger::Write::PutPolicy { .. } => policy_changed = true,
                        ledger::Write::StartChain(s) => start = Some(s.clone()),
                        _ => {}
                    }
                    if let Some(id) = ks::grant_written(w) {
                        self.grants.forget(id);
                    }
                    ks::encode_write(w, &mut batch);
                }
                let first = self.applied.chain.size();
                let audits: Vec<_> = a
                    .writes
                    .iter()
                    .filter_map(|w| match w {
                        ledger::Write::Audit(c) => Some(c),
                        _ => None,
                    })
                    .collect();
                audit_seqs_run_on(first, audits.iter().map(|c| c.entry.seq))?;
                // The audit entries first, the state that counts them
                // after (see `audit_store`).
                if !audits.is_empty() {
                    let mut store = self.audit.lock().expect("audit store lock");
                    store.append(
                        audits
                            .iter()
                            .map(|c| (&c.bytes[..], c.leaf_hash, ks::watched(c.entry.kind))),
                    )?;
                    crash_point(CrashPoint::AuditAppended);
                }
                self.applied.chain = a.chain;
                a.result
            }
        };
        if membership_changed {
            batch.insert(ks::META_MEMBERSHIP, codec::encode(&self.membership));
        }
        // Last: the keys land one by one (`journal`), and readers that
        // need an entry whole bound themselves by this one.
        self.applied.last_applied = Some(log_id);
        batch.insert(ks::META_APPLIED, ks::encode_applied(&self.applied));
        let capture = self.capture.lock().expect("capture lock").clone();
        if let Some(c) = capture {
            c.record(&tree, batch.keys())?;
        }
        self.journal.write(&tree, batch)?;
        crash_point(CrashPoint::StateWritten);
        // The store prunes once the state says the chain starts later: a
        // crash before this finishes it at the next open; one before the
        // state write leaves a log entry that is applied again.
        if let Some(start) = start {
            self.audit.lock().expect("audit store lock").prune(&start)?;
        }
        self.reader
            .active_grants
            .fetch_add(active_delta, Ordering::Relaxed);
        if let Some(v) = roles_version {
            self.reader.roles_version.store(v, Ordering::Release);
        }
        if policy_changed {
            self.reader.reload_policy()?;
        }
        self.reader
            .audit_size
            .send_replace(self.applied.chain.size());
        Ok(result)
    }

    /// Load snapshot data into the next generation's database and make it
    /// the one in force (see `generation`).
    fn load(&mut self, data: impl io::Read) -> io::Result<()> {
        // A load that failed or crashed before its switch left a directory.
        generation::remove_others(&self.dir, &self.generation)?;
        let name = generation::next(&self.generation);
        let loaded = (|| {
            let (db, fresh) = generation::open(&self.dir, &name)?;
            // Key by key, not in batches: the new database is not in use
            // until the switch below (a crash before it leaves a directory
            // the next start removes), so nothing needs a batch's
            // atomicity, and sled 0.34 keeps what batches wrote resident
            // (bench/HISTORY.md, "Loading a snapshot key by key": installing
            // a million grants peaked at 9.3 GiB in 36 s, and key by key at
            // 1.2 GiB in 18 s).
            let audit_dir = generation::audit_dir(&self.dir, &name);
            // A snapshot carries tile hashes (AUDIT_TILES); a backup adds
            // the chain's entries (AUDIT) after them (`AuditPairs`).
            let mut audit: Option<AuditStore> = None;
            let mut start = ChainStart::default();
            let mut tail = Vec::new();
            let mut entries: Vec<(Vec<u8>, Hash, bool)> = Vec::new();
            let mut entry_bytes = 0;
            for kv in snapshot_data::pairs(data) {
                let (k, v) = kv?;
                if k.first() == Some(&ks::AUDIT_TILES) {
                    tail.push(ks::decode_audit_tiles(&k, &v)?);
                    continue;
                }
                if k.first() == Some(&ks::AUDIT) {
                    // The chain from its start (the state's pairs came
                    // first).
                    let audit = match audit.as_mut() {
                        Some(a) => a,
                        None if start.seq == 0 => {
                            audit.insert(AuditStore::open(&audit_dir, &ledger::Chain::default())?)
                        }
                        None => audit.insert(AuditStore::create_started(&audit_dir, &start)?),
                    };
                    let seq = audit.size() + entries.len() as u64;
                    if k[..] != ks::audit(seq)[..] {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("snapshot data: audit entry {k:02x?} where seq {seq} is due"),
                        ));
                    }
                    let (entry, _) = ks::decode_audit(&v)?;
                    let leaf = grant_proto::audit::merkle::leaf_hash(&v);
                    entry_bytes += v.len();
                    entries.push((v, leaf, ks::watched(entry.kind)));
                    if entry_bytes >= crate::limits::SNAPSHOT_LOAD_BATCH_BYTES {
                        audit.append(entries.iter().map(|(b, h, w)| (&b[..], *h, *w)))?;
                        entries.clear();
                        entry_bytes = 0;
                    }
                    continue;
                }
                if k[..] == *ks::META_AUDIT_START {
                    start = codec::decode(&v)?;
                }
                fresh.insert(k, v).map_err(io_err)?;
            }
            match read_meta::<u32>(&fresh, ks::META_FORMAT_VERSION)? {
                Some(v) if v == ks::FORMAT_VERSION => {}
                v => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot format version {v:?}"),
                    ));
                }
            }
            match audit {
                Some(mut audit) => {
                    audit.append(entries.iter().map(|(b, h, w)| (&b[..], *h, *w)))?;
                    audit.files().sync_written()?;
                }
                None => {
                    // Begun from the snapshot's head: what lies below it is
                    // fetched from a peer.
                    let head = read_applied(&fresh)?.chain;
                    if head.size() > 0 {
                        AuditStore::create_based(&audit_dir, &head, start.seq, &tail)?;
                    }
                }
            }
            db.flush().map_err(io_err)?;
            Ok(())
        })();
        // The database was closed when the closure returned: every page
        // just loaded left memory with it.
        if let Err(e) = loaded {
            let _ = generation::remove_others(&self.dir, &self.generation);
            return Err(e);
        }
        let (db, fresh) = generation::open(&self.dir, &name)?;
        let applied = read_applied(&fresh)?;
        // The chain loaded must be the one the loaded head names.
        let audit = AuditStore::open(&generation::audit_dir(&self.dir, &name), &applied.chain)?;
        generation::switch_to(&self.dir, &name)?;
        let old = std::mem::replace(&mut self.generation, name);
        self.journal = Journal::open(&db)?;
        self.db = db;
        let new_files = audit.files();
        *self.reader.audit.write().expect("audit files lock") = audit.files();
        let replaced = std::mem::replace(&mut *self.audit.lock().expect("audit store lock"), audit);
        // What the replaced store held of the chain seeds the fetch of
        // what the new one lacks (`audit_fill`): a node that fell behind
        // fetches only what it missed.
        let old_chain = self.applied.chain.clone();
        drop(replaced);
        if let Err(e) = audit_fill::seed(
            &generation::audit_dir(&self.dir, &old),
            &old_chain,
            &new_files,
        ) {
            tracing::warn!(error = %e, "could not keep the replaced audit store to seed the fetch");
        }
        *self.reader.tree.write().expect("state tree lock") = fresh.clone();
        self.grants.clear();
        self.reader.recount_active();
        self.reader.reload_policy()?;
        self.applied = applied;
        self.membership = read_meta(&fresh, ks::META_MEMBERSHIP)?.unwrap_or_default();
        self.reader
            .audit_size
            .send_replace(self.applied.chain.size());
        // The old generation: readers still holding its tree keep its files
        // open until they finish. Left behind, the next start removes it.
        if let Err(e) = generation::remove_others(&self.dir, &self.generation) {
            tracing::warn!(error = %e, "could not remove the replaced state database");
        }
        Ok(())
    }
}

/// A snapshot of the state as it was when the builder was made, copied
/// beside apply (see `capture`).
pub struct SnapshotBuilder {
    sm: StateMachine,
    meta: SnapshotMeta,
    tree: sled::Tree,
    capture: Arc<Capture>,
    /// The audit store, and the tile hashes near the chain's head at the
    /// snapshot's index (`AuditFiles::tail`), read when the builder was
    /// made: between two entries, so no prune can empty them meanwhile.
    audit: (AuditFiles, io::Result<Vec<TileRun>>),
    _building: tokio::sync::OwnedMutexGuard<()>,
}

impl SnapshotBuilder {
    /// Stop recording pre-images for this build (and only for this one).
    fn stop_capture(&self) {
        let mut c = self.sm.capture.lock().expect("capture lock");
        if c.as_ref().is_some_and(|x| Arc::ptr_eq(x, &self.capture)) {
            *c = None;
        }
    }
}

impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        // A builder dropped unbuilt must not leave apply recording forever.
        self.stop_capture();
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (tree, capture) = (self.tree.clone(), self.capture.clone());
        let files = self.audit.0.clone();
        let tail = std::mem::replace(&mut self.audit.1, Ok(Vec::new()))?;
        let mut out = self.sm.snapshot_writer(&self.meta)?;
        let written = tokio::task::spawn_blocking(move || {
            capture.dump(&tree, &mut out)?;
            // Then the tile hashes near the chain's head at the snapshot
            // (`AuditFiles::tail`), not its entries: a node that loads it
            // fetches those from a peer (`audit_fill`).
            for (level, from, hashes) in tail {
                snapshot_data::put(&mut out, &ks::audit_tiles(level, from), &hashes.concat())?;
            }
            // Before the state is flushed below, and the log behind the
            // snapshot purged.
            files.sync_written()?;
            out.finish()
        })
        .await
        .map_err(io_err)?;
        self.stop_capture();
        let (meta, mut file) = written?;
        // The state up to the snapshot must be durable before openraft may
        // purge the log behind it.
        let db = self.sm.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        file.publish(&self.sm.snapshot_dir)?;
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied.last_applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let result = self.apply_one(entry)?;
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Called on the state machine task, between two entries: from here
        // on apply records pre-images, so the copy is the state at
        // last_applied however long it takes.
        let building = self.build_lock.clone().lock_owned().await;
        let capture = Arc::new(Capture::default());
        *self.capture.lock().expect("capture lock") = Some(capture.clone());
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.membership.clone(),
        };
        SnapshotBuilder {
            sm: self.clone(),
            meta,
            tree: self.reader.tree(),
            capture,
            audit: {
                // A few thousand hashes (`CHECKPOINT_LAG_MAX`), whatever
                // the history.
                let files = self.reader.audit_files();
                let start = self.reader.chain_start().map(|s| s.seq);
                let tail = start.and_then(|s| files.tail(self.applied.chain.size(), s));
                (files, tail)
            },
            _building: building,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let _no_build = self.build_lock.clone().lock_owned().await;
        self.load(snapshot.data())?;
        if self.applied.last_applied != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot data applied up to {:?}, meta says {:?}",
                    self.applied.last_applied, meta.last_log_id
                ),
            ));
        }
        snapshot.publish(&self.snapshot_dir)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(SnapshotFile::open_current(&self.snapshot_dir)?
            .map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

impl StateReader {
    /// Whether any active grant has expired by `now_ms` (the sweep has work).
    pub fn has_expired(&self, now_ms: i64) -> io::Result<bool> {
        self.any_below(ks::EXPIRY, ks::expiry_upto(now_ms))
    }

    /// Whether any retired grant's expiry is before `before_ms`.
    pub fn has_retired_before(&self, before_ms: i64) -> io::Result<bool> {
        self.any_below(ks::RETIRED, ks::retired_before(before_ms))
    }

    /// Whether any closed task's deadline is before `before_ms`.
    pub fn has_closed_task_before(&self, before_ms: i64) -> io::Result<bool> {
        self.any_below(ks::TASK_CLOSED, ks::task_closed_before(before_ms))
    }

    /// Whether any checkpoint signs fewer entries than `size`.
    pub fn has_checkpoint_below(&self, size: u64) -> io::Result<bool> {
        self.any_below(ks::CHECKPOINT, ks::checkpoint(size))
    }

    /// Whether any open task's deadline has passed by `now_ms`.
    pub fn has_task_past_deadline(&self, now_ms: i64) -> io::Result<bool> {
        self.any_below(ks::TASK_DEADLINE, ks::task_deadline_upto(now_ms))
    }

    /// Whether any dedupe record is older than `before_ms`.
    pub fn has_old_dedupe(&self, before_ms: i64) -> io::Result<bool> {
        self.any_below(ks::DEDUPE_BY_TIME, ks::dedupe_by_time(before_ms, ""))
    }

    /// Whether the key space `prefix` holds a key below `end`.
    fn any_below(&self, prefix: u8, end: Vec<u8>) -> io::Result<bool> {
        Ok(self
            .tree()
            .range(vec![prefix]..end)
            .next()
            .transpose()
            .map_err(io_err)?
            .is_some())
    }
}

/// The entries an apply appends must continue the stored chain, seq after
/// seq: anything else is a bug that would write a broken chain, so apply
/// stops with a storage error instead (in release builds too).
fn audit_seqs_run_on(first: u64, seqs: impl Iterator<Item = u64>) -> io::Result<()> {
    for (i, seq) in seqs.enumerate() {
        let want = first + i as u64;
        if seq != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "apply produced audit seq {seq} where seq {want} continues the stored chain; \
                     not writing a broken chain"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;

    #[test]
    fn a_gap_or_repeat_in_the_audit_seqs_stops_apply() {
        assert!(super::audit_seqs_run_on(5, [5, 6, 7].into_iter()).is_ok());
        assert!(super::audit_seqs_run_on(5, [5, 7].into_iter()).is_err());
        assert!(super::audit_seqs_run_on(5, [5, 5].into_iter()).is_err());
        assert!(super::audit_seqs_run_on(5, [4].into_iter()).is_err());
    }

    use super::*;
    use crate::ledger::{
        BeginTaskCmd, CloseTaskCmd, Command, DelegateCmd, IssueCmd, RenewCmd, RevokeCmd, Scope,
        SweepCmd, TaskState,
    };
    use crate::storage::audit_fill::Fill;

    /// Begin tasks t0, t1, t2 (deadlines 5000, 6000, 7000) at log indexes
    /// 1 to 3: the grants of `issue` go into them.
    fn begin_tasks(sm: &mut StateMachine) {
        for i in 0..3u64 {
            let c = Command::BeginTask(BeginTaskCmd {
                task_id: format!("t{i}"),
                owner: "spiffe://example.org/o".into(),
                intent: String::new(),
                declared_tools: vec!["github".into()],
                deadline_ms: 5000 + i as i64 * 1000,
                fingerprint: "f".into(),
                now_ms: 1000,
            });
            sm.apply_one(entry(i + 1, c)).unwrap();
        }
    }

    fn issue(i: u64) -> Command {
        Command::Issue(IssueCmd {
            request_id: format!("r{i}"),
            fingerprint: "f".into(),
            grant_id: format!("{i:032x}"),
            subject: "spiffe://example.org/a".into(),
            task_id: format!("t{}", i % 3),
            scopes: vec![Scope {
                resource: "github".into(),
                actions: vec!["read".into()],
            }],
            intent: String::new(),
            issuer: String::new(),
            token_hash: "h".into(),
            now_ms: 1000 + i as i64,
            expires_at_ms: 1000 + i as i64 * 10,
            max_expires_at_ms: 1_000_000,
            quota: Default::default(),
        })
    }

    fn revoke(grant: u64, now_ms: i64) -> Command {
        Command::Revoke(RevokeCmd {
            grant_id: format!("{grant:032x}"),
            reason: String::new(),
            actor: String::new(),
            now_ms,
        })
    }

    fn renew(grant: u64, expires_at_ms: i64, now_ms: i64) -> Command {
        Command::Renew(RenewCmd {
            grant_id: format!("{grant:032x}"),
            expires_at_ms,
            actor: String::new(),
            now_ms,
        })
    }

    fn entry(index: u64, cmd: Command) -> Entry {
        Entry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), cmd)
    }

    /// A state machine in `dir` with tasks begun and grants issued up to
    /// log index `last`.
    fn with_grants_through(dir: &Path, last: u64) -> StateMachine {
        let mut sm = StateMachine::open(dir).unwrap();
        begin_tasks(&mut sm);
        for i in 4..=last {
            sm.apply_one(entry(i, issue(i))).unwrap();
        }
        sm
    }

    /// A snapshot of `sm` as it stands.
    async fn snapshot_of(sm: &mut StateMachine) -> Snapshot {
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    }

    /// A backup's data: `snap`, then `sm`'s chain from `start` to `size`.
    fn backup_of(snap: &Snapshot, sm: &StateMachine, start: u64, size: u64) -> Vec<u8> {
        use std::io::Read;
        let mut d = Vec::new();
        snap.snapshot
            .data()
            .chain(snapshot_data::AuditPairs::new(
                sm.reader.audit_files(),
                start,
                size,
            ))
            .read_to_end(&mut d)
            .unwrap();
        d
    }

    /// A new state machine in `dir` with `snap` installed.
    async fn installed_in(dir: &Path, snap: Snapshot) -> StateMachine {
        let mut sm = StateMachine::open(dir).unwrap();
        sm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        sm
    }

    /// A snapshot copied while apply goes on (inserts, overwrites and
    /// deletes) is the state at the moment the builder was made.
    #[tokio::test]
    async fn snapshot_copied_beside_apply_is_the_state_when_it_began() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = with_grants_through(dir.path(), 20);
        let before = sm.digest().unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        // Overwrite (revoke), delete (revoke drops expiry keys; the sweep
        // retires more) and insert (new grants, audit entries).
        for i in 1..=5 {
            sm.apply_one(entry(20 + i, revoke(i + 3, 1050))).unwrap();
        }
        sm.apply_one(entry(
            26,
            Command::Sweep(SweepCmd {
                now_ms: 1150,
                purge_before_ms: 0,
            }),
        ))
        .unwrap();
        for i in 27..=40 {
            sm.apply_one(entry(i, issue(i))).unwrap();
        }
        assert_ne!(sm.digest().unwrap(), before);
        let snap = builder.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.as_ref().map(|l| l.index()), Some(20));

        let other = tempfile::tempdir().unwrap();
        let fresh = installed_in(other.path(), snap).await;
        assert_eq!(fresh.digest().unwrap(), before);
        // Apply no longer records once the build is done.
        assert!(sm.capture.lock().unwrap().is_none());
    }

    /// The generation directories in a data directory, sorted.
    fn generations(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("state"))
            .collect();
        names.sort();
        names
    }

    /// Each install loads a database of its own, puts it in force and
    /// removes the one before; a snapshot that fails to load changes
    /// nothing; a restart opens the generation in force.
    #[tokio::test]
    async fn an_installed_snapshot_is_a_database_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = with_grants_through(dir.path(), 20);
        let before = sm.digest().unwrap();
        let snap = snapshot_of(&mut sm).await;

        let other = tempfile::tempdir().unwrap();
        let mut fresh = installed_in(other.path(), snap).await;
        assert_eq!(
            generations(other.path()),
            ["state.1", "state.1.audit", "state.current"]
        );
        let again = snapshot_of(&mut sm).await;
        fresh
            .install_snapshot(&again.meta, again.snapshot)
            .await
            .unwrap();
        assert_eq!(
            generations(other.path()),
            ["state.2", "state.2.audit", "state.current"]
        );
        assert_eq!(fresh.digest().unwrap(), before);

        // Data of another format version is refused after loading it all.
        let good = snapshot_of(&mut sm).await;
        let mut out = fresh.snapshot_writer(&good.meta).unwrap();
        snapshot_data::copy_replacing(
            good.snapshot.data(),
            &mut out,
            ks::META_FORMAT_VERSION,
            &codec::encode(&(ks::FORMAT_VERSION + 1)),
        )
        .unwrap();
        let (_, bad) = out.finish().unwrap();
        let e = fresh
            .install_snapshot(&good.meta, bad)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("format version"), "{e}");
        assert_eq!(
            generations(other.path()),
            ["state.2", "state.2.audit", "state.current"]
        );
        assert_eq!(fresh.digest().unwrap(), before);

        drop(fresh);
        let reopened = StateMachine::open(other.path()).unwrap();
        assert_eq!(reopened.digest().unwrap(), before);
        assert_eq!(reopened.generation, "state.2");
    }

    /// A task counts its grants; open tasks are found by deadline, and a
    /// closed one leaves the deadline index.
    #[tokio::test]
    async fn tasks_count_their_grants_and_are_found_by_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        begin_tasks(&mut sm);
        for i in 4..=33 {
            sm.apply_one(entry(i, issue(i))).unwrap();
        }
        let tree = sm.reader.tree();
        let state = SledState(&tree, None, None, None);
        for t in ["t0", "t1", "t2"] {
            let indexed = state.task_grant_ids(t, 1000).unwrap().len();
            assert_eq!(indexed, 10);
            assert_eq!(state.task(t).unwrap().unwrap().grant_count, 10);
        }
        assert_eq!(
            state.tasks_past_deadline(4999, 10).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            state.tasks_past_deadline(6000, 10).unwrap(),
            vec!["t0", "t1"]
        );
        assert_eq!(state.tasks_past_deadline(9000, 1).unwrap(), vec!["t0"]);
        let close = Command::CloseTask(CloseTaskCmd {
            task_id: "t0".into(),
            outcome: TaskState::Completed,
            reason: String::new(),
            actor: "spiffe://example.org/o".into(),
            now_ms: 2000,
        });
        sm.apply_one(entry(34, close)).unwrap();
        let tree = sm.reader.tree();
        let state = SledState(&tree, None, None, None);
        assert_eq!(
            state.tasks_past_deadline(9000, 10).unwrap(),
            vec!["t1", "t2"]
        );
        assert_eq!(
            state.task("t0").unwrap().unwrap().state,
            TaskState::Completed
        );
        assert!(sm.reader.has_task_past_deadline(6000).unwrap());
        assert!(!sm.reader.has_task_past_deadline(5999).unwrap());
    }

    /// A chain pruned before its second segment, through a real apply: its
    /// start travels in a snapshot (the node fetches from there), a backup
    /// restores it, and a reopen finds it.
    #[tokio::test]
    async fn a_pruned_chain_travels_in_snapshots_and_backups_from_its_start() {
        use crate::limits::AUDIT_SEGMENT_ENTRIES as SEG;
        use ed25519_dalek::SigningKey;
        use grant_proto::audit::note::{sign, Checkpoint, VerifierKey};
        let dir = tempfile::tempdir().unwrap();
        let mut sm = with_grants_through(dir.path(), 4);
        let key = SigningKey::from_bytes(&[9; 32]);
        let name = "grant-ledger-node-1";
        let register = Command::RegisterKey(crate::ledger::RegisterKeyCmd {
            node_id: 1,
            verifier_key: VerifierKey::new(name, key.verifying_key()).encode(),
            token_kid: String::new(),
            token_x: String::new(),
            now_ms: 1010,
        });
        sm.apply_one(entry(5, register)).unwrap();
        // A signed checkpoint of `sm`'s chain as it stands, applied at
        // `index`.
        let checkpoint = |sm: &mut StateMachine, index: u64| {
            let size = sm.applied.chain.size();
            let note = sign(
                &Checkpoint {
                    origin: "o".into(),
                    size,
                    root: sm.applied.chain.root(),
                    time_ms: 1030,
                },
                name,
                &key,
            );
            let cmd = Command::Checkpoint(crate::ledger::CheckpointCmd { note });
            assert_eq!(
                sm.apply_one(entry(index, cmd)).unwrap(),
                CommandResult::Checkpointed { size }
            );
        };
        // One the prune will leave behind, then the entries.
        checkpoint(&mut sm, 6);
        let Command::Checks { checks, .. } = check(4, 1020) else {
            unreachable!()
        };
        let many = Command::Checks {
            now_ms: 1020,
            checks: checks
                .iter()
                .cycle()
                .take(SEG as usize + 300)
                .cloned()
                .collect(),
        };
        sm.apply_one(entry(7, many)).unwrap();
        checkpoint(&mut sm, 8);
        let start = sm
            .reader
            .audit_files()
            .start_at(
                SEG,
                &ChainStart::default(),
                &sm.reader.roster_seqs().unwrap(),
            )
            .unwrap();
        assert_eq!(start.roster.len(), 1);
        let prune = Command::PruneAudit(crate::ledger::PruneAuditCmd {
            start,
            actor: "admin".into(),
            reason: "archived".into(),
            now_ms: 1040,
        });
        let r = sm.apply_one(entry(9, prune)).unwrap();
        assert!(
            matches!(
                r,
                CommandResult::Pruned {
                    start: SEG,
                    previous: 0,
                    ..
                }
            ),
            "{r:?}"
        );
        // The sweep drops the checkpoint below the start; the one past stays.
        let sweep = Command::Sweep(crate::ledger::SweepCmd {
            now_ms: 1050,
            purge_before_ms: 0,
        });
        let r = sm.apply_one(entry(10, sweep)).unwrap();
        assert!(
            matches!(
                r,
                CommandResult::Swept {
                    checkpoints_dropped: 1,
                    ..
                }
            ),
            "{r:?}"
        );
        let sizes: Vec<u64> = sm
            .reader
            .checkpoints()
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert!(sizes.len() == 1 && sizes[0] > SEG, "{sizes:?}");
        let size = sm.applied.chain.size();
        let kept = sm.reader.audit_entries(SEG, 1000).unwrap();
        let is_pruned = super::super::audit_store::is_pruned;
        assert!(is_pruned(&sm.reader.audit_entries(3, 1).unwrap_err()));
        assert!(!dir
            .path()
            .join("state.audit/entries/00000000000000000000.seg")
            .exists());

        // A snapshot: the node that installs it fetches from the start.
        let snap = snapshot_of(&mut sm).await;
        let backup = backup_of(&snap, &sm, SEG, size);
        let other = tempfile::tempdir().unwrap();
        let installed = installed_in(other.path(), snap).await;
        assert_eq!(installed.digest().unwrap(), sm.digest().unwrap());
        let files = installed.reader.audit_files();
        assert_eq!(files.base().start, SEG);
        assert_eq!(files.base().missing_entries(), size - SEG);
        let chain_start = installed.reader.chain_start().unwrap();
        let mut fill = Fill::begin(&files, &chain_start).unwrap().unwrap();
        assert_eq!(fill.next(), SEG);
        let page = sm
            .reader
            .audit_files()
            .entries(SEG, size as usize, size, |b| Ok(b.to_vec()))
            .unwrap();
        fill.add(&page).unwrap();
        assert!(fill.finish(&installed.audit).unwrap());
        assert_eq!(installed.reader.audit_entries(SEG, 1000).unwrap(), kept);
        assert!(is_pruned(
            &installed.reader.audit_entries(3, 1).unwrap_err()
        ));

        // A backup restores the chain from its start.
        let third = tempfile::tempdir().unwrap();
        let mut restored = StateMachine::open(third.path()).unwrap();
        restored.load(&backup[..]).unwrap();
        assert!(!restored.reader.audit_files().base().lacking());
        assert_eq!(restored.reader.audit_entries(SEG, 1000).unwrap(), kept);
        assert_eq!(restored.digest().unwrap(), sm.digest().unwrap());

        // Reopened, the store and the state agree where the chain starts.
        drop(sm);
        let sm = StateMachine::open(dir.path()).unwrap();
        assert_eq!(sm.reader.audit_files().base().start, SEG);
        assert_eq!(sm.reader.audit_entries(SEG, 1000).unwrap(), kept);
    }

    fn check(grant: u64, now_ms: i64) -> Command {
        Command::Checks {
            now_ms,
            checks: vec![crate::ledger::CheckCmd {
                grant_id: format!("{grant:032x}"),
                forged: false,
                identity: "spiffe://example.org/a".into(),
                resource: "github".into(),
                action: "read".into(),
                actor: String::new(),
                attributes: Default::default(),
                token_expires_at_ms: 0,
            }],
        }
    }

    fn allowed(r: CommandResult) -> bool {
        match r {
            CommandResult::Checked(v) => v[0].allow,
            other => panic!("not a check result: {other:?}"),
        }
    }

    /// Apply keeps the grant records checks read (`grant_cache`): after a
    /// renewal, a revocation and a snapshot install, the next check decides
    /// on the grant as it now stands.
    #[tokio::test]
    async fn checks_decide_on_the_grant_as_last_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        begin_tasks(&mut sm);
        sm.apply_one(entry(4, issue(4))).unwrap(); // expires at 1040
        assert!(allowed(sm.apply_one(entry(5, check(4, 1020))).unwrap()));
        let snap = snapshot_of(&mut sm).await;
        sm.apply_one(entry(6, renew(4, 3000, 1030))).unwrap();
        assert!(
            allowed(sm.apply_one(entry(7, check(4, 2000))).unwrap()),
            "renewed"
        );
        sm.apply_one(entry(8, revoke(4, 2100))).unwrap();
        assert!(
            !allowed(sm.apply_one(entry(9, check(4, 2200))).unwrap()),
            "revoked"
        );
        // The snapshot of index 5 again: the grant active until 1040.
        sm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert!(
            allowed(sm.apply_one(entry(6, check(4, 1035))).unwrap()),
            "installed"
        );
        assert!(
            !allowed(sm.apply_one(entry(7, check(4, 2000))).unwrap()),
            "expired"
        );
    }

    /// A batch's audit entries go to the audit store, not the state: every
    /// entry reads back from any seq, in order, the same as the chain made
    /// them; a Watch finds a revocation among them; the state holds no key
    /// per entry; a segment cut short is reported, not read short; a
    /// snapshot carries the chain's head, a fetch the entries below it, a
    /// backup both.
    #[tokio::test]
    async fn audit_entries_live_in_the_audit_store_and_travel_in_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = with_grants_through(dir.path(), 4);
        let keys_before = sm.reader.tree().len();
        let Command::Checks { checks, .. } = check(4, 1020) else {
            unreachable!()
        };
        let batch = Command::Checks {
            now_ms: 1020,
            checks: checks.iter().cycle().take(60).cloned().collect(),
        };
        sm.apply_one(entry(5, batch)).unwrap();
        sm.apply_one(entry(6, revoke(4, 1030))).unwrap();
        let size = sm.applied.chain.size();
        assert_eq!(size, 4 + 60 + 1, "3 tasks, 1 grant, 60 checks, 1 revoke");
        // Checks and a revoke add the revoke's retired-index key and
        // nothing per audit entry.
        assert!(sm.reader.tree().len() <= keys_before + 1);

        let all = sm.reader.audit_entries(0, 1000).unwrap();
        let seqs: Vec<u64> = all.iter().map(|(e, _)| e.seq).collect();
        assert_eq!(seqs, (0..size).collect::<Vec<_>>());
        for from in 0..=size {
            let page = sm.reader.audit_entries(from, 7).unwrap();
            let want = &all[from as usize..(from as usize + 7).min(size as usize)];
            assert_eq!(page, want, "a page from {from}");
            let lines = sm.reader.audit_lines(from, 7).unwrap();
            assert_eq!(lines.len(), want.len(), "export lines from {from}");
        }
        let watched = sm.reader.watch_events(None, 10).unwrap();
        assert_eq!(watched.len(), 1);
        assert_eq!(watched[0].0.seq, size - 1);
        assert_eq!(
            sm.reader.tree_root(size).unwrap(),
            Some(sm.applied.chain.root())
        );
        assert_eq!(sm.reader.tree_root(size + 1).unwrap(), None);

        // Installed elsewhere, the snapshot brings the chain's head and the
        // hashes near it, not its entries: those are missing until fetched.
        let snap = snapshot_of(&mut sm).await;
        let backup = backup_of(&snap, &sm, 0, size);
        let other = tempfile::tempdir().unwrap();
        let installed = installed_in(other.path(), snap).await;
        assert_eq!(installed.digest().unwrap(), sm.digest().unwrap());
        assert_eq!(
            installed.reader.tree_root(size).unwrap(),
            Some(sm.applied.chain.root())
        );
        let e = installed.reader.audit_entries(0, 1000).unwrap_err();
        assert!(super::super::audit_store::is_missing(&e), "{e}");
        // The hash of the entry before the seam is known (a Watch resumes
        // after it); the ones before are not.
        assert_eq!(
            installed.reader.audit_entry_hash(size - 1).unwrap(),
            Some(all[size as usize - 1].1)
        );
        assert!(installed.reader.audit_entry_hash(size - 2).is_err());
        let mut fill = Fill::begin(&installed.reader.audit_files(), &ChainStart::default())
            .unwrap()
            .unwrap();
        let page = sm
            .reader
            .audit_files()
            .entries(0, 1000, size, |b| Ok(b.to_vec()))
            .unwrap();
        fill.add(&page).unwrap();
        assert!(fill.finish(&installed.audit).unwrap());
        assert_eq!(installed.reader.audit_entries(0, 1000).unwrap(), all);
        assert_eq!(installed.reader.watch_events(None, 10).unwrap(), watched);
        // A backup's data (the snapshot, then the entries) brings it all.
        let third = tempfile::tempdir().unwrap();
        let mut restored = StateMachine::open(third.path()).unwrap();
        restored.load(&backup[..]).unwrap();
        assert_eq!(restored.reader.audit_entries(0, 1000).unwrap(), all);
        assert!(!restored.reader.audit_files().base().lacking());
        assert_eq!(restored.digest().unwrap(), sm.digest().unwrap());

        // Cut the segment short: reading across the cut is an error.
        let seg = dir
            .path()
            .join("state.audit/entries/00000000000000000000.seg");
        let len = std::fs::metadata(&seg).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let e = sm.reader.audit_entries(0, 1000).unwrap_err();
        assert!(e.to_string().contains("is damaged"), "{e}");
    }

    /// A renewal moves the grant in the expiry index: the sweep no longer
    /// finds it at its old expiry, and finds it at the new one.
    #[tokio::test]
    async fn a_renewal_moves_the_grant_in_the_expiry_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        begin_tasks(&mut sm);
        sm.apply_one(entry(4, issue(4))).unwrap(); // expires at 1040, task t1
        assert!(sm.reader.has_expired(1040).unwrap());
        sm.apply_one(entry(5, renew(4, 3000, 1010))).unwrap();
        assert!(!sm.reader.has_expired(2999).unwrap());
        assert!(sm.reader.has_expired(3000).unwrap());
        let g = sm.reader.grant(&format!("{:032x}", 4)).unwrap().unwrap();
        assert_eq!(g.expires_at_ms, 3000);
    }

    /// A purged grant leaves no key naming it outside the audit chain (the
    /// dedupe record of its request id stays for its own window), and the
    /// records apply keeps in memory forget it.
    #[tokio::test]
    async fn a_purge_leaves_no_key_naming_the_grant() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        begin_tasks(&mut sm);
        let sweep = |now_ms, purge_before_ms| {
            Command::Sweep(SweepCmd {
                now_ms,
                purge_before_ms,
            })
        };
        sm.apply_one(entry(4, issue(4))).unwrap(); // expires at 1040
        sm.apply_one(entry(5, issue(5))).unwrap(); // expires at 1050
        sm.apply_one(entry(6, issue(6))).unwrap(); // expires at 1060
        sm.apply_one(entry(7, revoke(5, 1045))).unwrap();
        // A grant delegated from 4, which sits in 4's children index.
        let Command::Issue(mut child) = issue(99) else {
            unreachable!()
        };
        child.issuer = "spiffe://example.org/a".into();
        child.subject = "spiffe://example.org/h".into();
        child.task_id = "t1".into();
        child.now_ms = 1005;
        child.expires_at_ms = 1040;
        let delegated = sm
            .apply_one(entry(
                8,
                Command::Delegate(DelegateCmd {
                    grant: child,
                    parent_grant_id: format!("{:032x}", 4),
                    sub_task: "summarise".into(),
                    depth_max: 2,
                }),
            ))
            .unwrap();
        assert!(
            matches!(delegated, CommandResult::Issued { .. }),
            "{delegated:?}"
        );
        let ids: Vec<String> = [4u64, 5, 99].iter().map(|i| format!("{i:032x}")).collect();
        for id in &ids {
            assert!(sm.reader.grant(id).unwrap().is_some());
        }
        let mut children_key = ks::children_prefix(&ids[0]);
        children_key.extend_from_slice(ids[2].as_bytes());
        assert!(sm.reader.tree().contains_key(&children_key).unwrap());
        sm.apply_one(entry(9, sweep(1041, 0))).unwrap(); // 4 and 99 expire
        assert!(sm.reader.has_retired_before(1041).unwrap());
        assert!(!sm.reader.has_retired_before(1040).unwrap());
        sm.apply_one(entry(10, sweep(1041, 1051))).unwrap();
        for id in &ids {
            assert!(sm.reader.grant(id).unwrap().is_none(), "{id}");
        }
        assert!(!sm.reader.has_retired_before(1055).unwrap());
        let tree = sm.reader.tree();
        for k in tree.iter().keys() {
            let k = k.unwrap();
            for id in &ids {
                assert!(
                    !k.windows(id.len()).any(|w| w == id.as_bytes()),
                    "key {k:?} still names {id}"
                );
            }
        }
        // Grant 6 is active: untouched.
        let six = format!("{:032x}", 6);
        assert!(sm.reader.grant(&six).unwrap().is_some());
        assert!(tree.contains_key(ks::expiry(1060, &six)).unwrap());
    }

    /// A crash can cut an entry's writes short after its journal (sled
    /// keeps a prefix of its writes): a start completes the entry.
    #[tokio::test]
    async fn a_start_completes_an_entry_a_crash_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let sm = with_grants_through(dir.path(), 20);
        let whole = sm.digest().unwrap();
        // What a crash after the first keys of entry 20 leaves: its later
        // keys (the grant's expiry key, its audit line, META_APPLIED) are
        // missing or still hold their values from entry 19.
        let dir19 = tempfile::tempdir().unwrap();
        let sm19 = with_grants_through(dir19.path(), 19);
        let applied_19 = sm19.reader.tree().get(ks::META_APPLIED).unwrap().unwrap();
        let tree = sm.reader.tree();
        tree.insert(ks::META_APPLIED, applied_19).unwrap();
        let g20 = sm.reader.grant(&format!("{:032x}", 20)).unwrap().unwrap();
        tree.remove(ks::expiry(g20.expires_at_ms, &g20.grant_id))
            .unwrap();
        tree.remove(ks::audit(sm.applied.chain.size() - 1)).unwrap();
        assert_eq!(sm.reader.last_applied_index().unwrap(), 19);
        assert_ne!(sm.digest().unwrap().1, whole.1);
        drop((tree, sm));

        let sm = StateMachine::open(dir.path()).unwrap();
        assert_eq!(sm.digest().unwrap(), whole);
        assert_eq!(sm.reader.last_applied_index().unwrap(), 20);
    }
}
