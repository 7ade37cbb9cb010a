//! The Raft log in its own sled database, made durable before it counts.
//!
//! sled 0.34's `flush()` hands data to the kernel with `sync_file_range`,
//! which survives a process crash but not a power loss, and it writes large
//! items to blob files it never syncs (spacejam/sled#1452). openraft may
//! count an entry toward a quorum once `IOFlushed` fires, so this store fires
//! it only after `flush()` and then `fdatasync` of sled's data file, of any
//! new blob file, and of the blob directory. One flusher thread does that for
//! every append waiting at the time (group commit): one fdatasync covers
//! many appends. docs/storage.md has the reasoning and the measurements.

use std::collections::HashSet;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use super::{io_err, sync_dir};
use crate::raft::codec;
use crate::raft::typ::*;
use crate::raft::TypeConfig;

const META_VOTE: &[u8] = b"vote";
const META_COMMITTED: &[u8] = b"committed";
const META_LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    syncer: Arc<Syncer>,
    flush_tx: mpsc::Sender<IOFlushed>,
}

/// Makes everything sled has written durable.
struct Syncer {
    db: sled::Db,
    dir: PathBuf,
    data_file: std::fs::File,
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
}

impl Syncer {
    fn sync(&self) -> io::Result<()> {
        self.db.flush().map_err(io_err)?;
        self.data_file.sync_data()?;
        let blobs = self.dir.join("blobs");
        let Ok(rd) = std::fs::read_dir(&blobs) else {
            return Ok(());
        };
        let mut synced = self.synced_blobs.lock().expect("syncer lock");
        let mut present = HashSet::new();
        let mut new = false;
        for e in rd {
            let e = e?;
            let name = e.file_name();
            if !synced.contains(&name) {
                // A blob may be removed by sled between listing and opening.
                if let Ok(f) = std::fs::File::open(e.path()) {
                    f.sync_data()?;
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            sync_dir(&blobs)?;
        }
        *synced = present;
        Ok(())
    }
}

impl LogStore {
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        let fresh = !dir.exists();
        let db = super::open_db(dir)?;
        if fresh {
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let log = db.open_tree("log").map_err(io_err)?;
        let meta = db.open_tree("meta").map_err(io_err)?;
        let data_file = std::fs::OpenOptions::new()
            .read(true)
            .open(dir.join("db"))?;
        let syncer = Arc::new(Syncer {
            db: db.clone(),
            dir: dir.to_path_buf(),
            data_file,
            synced_blobs: Mutex::new(HashSet::new()),
        });
        syncer.sync()?;
        let (flush_tx, flush_rx) = mpsc::channel::<IOFlushed>();
        let s = syncer.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || {
                // Each round: wait for one append, take every other append
                // already waiting, make them durable with one sync.
                while let Ok(first) = flush_rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(flush_rx.try_iter());
                    let res = s.sync();
                    for cb in waiting {
                        cb.io_completed(
                            res.as_ref()
                                .map(|_| ())
                                .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                        );
                    }
                }
            })?;
        Ok(LogStore {
            db,
            log,
            meta,
            syncer,
            flush_tx,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, k: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(k).map_err(io_err)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Write a meta value and make it durable before returning.
    async fn put_meta_durable<T: serde::Serialize>(
        &self,
        k: &'static [u8],
        v: &T,
    ) -> io::Result<()> {
        self.meta.insert(k, codec::encode(v)).map_err(io_err)?;
        let s = self.syncer.clone();
        tokio::task::spawn_blocking(move || s.sync())
            .await
            .map_err(io_err)?
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        match self.log.last().map_err(io_err)? {
            Some((_, v)) => Ok(Some(codec::decode::<Entry>(&v)?.log_id())),
            None => Ok(None),
        }
    }

    #[allow(dead_code)]
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

fn range_keys(range: &impl RangeBounds<u64>) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let f = |b: Bound<&u64>| match b {
        Bound::Included(x) => Bound::Included(x.to_be_bytes()),
        Bound::Excluded(x) => Bound::Excluded(x.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    };
    (f(range.start_bound()), f(range.end_bound()))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let mut out = Vec::new();
        for kv in self.log.range(range_keys(&range)) {
            let (_, v) = kv.map_err(io_err)?;
            out.push(codec::decode::<Entry>(&v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(META_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(META_LAST_PURGED)?;
        let last_log_id = self
            .last_entry_log_id()?
            .or_else(|| last_purged_log_id.clone());
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta_durable(META_VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not needed for safety (it only speeds up re-apply after a restart),
        // so it rides on the next append's sync.
        self.meta
            .insert(META_COMMITTED, codec::encode(&committed))
            .map_err(io_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(META_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
    {
        // One insert per entry, in index order, not an apply_batch: sled
        // writes out and starts writeback of its IO buffer twice for every
        // batch (see `journal`), and the sync below writes it once anyway.
        // Atomicity is not needed: sled recovers a prefix of its writes, so
        // a crash before the sync leaves a prefix of these entries, a log
        // with no hole, and none of them was reported durable.
        for e in entries {
            let bytes = codec::encode(&e);
            // Entries are bounded by construction (limits::LOG_ENTRY_BYTES_MAX).
            assert!(
                bytes.len() <= crate::limits::LOG_ENTRY_BYTES_MAX,
                "log entry of {} bytes",
                bytes.len()
            );
            self.log
                .insert(e.index().to_be_bytes(), bytes)
                .map_err(io_err)?;
        }
        self.flush_tx
            .send(callback)
            .map_err(|_| io_err("raft log sync thread is gone"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let from = last.map(|l| l.index() + 1).unwrap_or(0);
        let mut batch = sled::Batch::default();
        for kv in self.log.range(from.to_be_bytes()..) {
            batch.remove(kv.map_err(io_err)?.0);
        }
        self.log.apply_batch(batch).map_err(io_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.meta
            .insert(META_LAST_PURGED, codec::encode(&log_id))
            .map_err(io_err)?;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=log_id.index().to_be_bytes()) {
            batch.remove(kv.map_err(io_err)?.0);
        }
        self.log.apply_batch(batch).map_err(io_err)?;
        Ok(())
    }
}
