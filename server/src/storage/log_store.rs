//! The Raft log in a write-ahead log of its own (the `raft-log` crate, as
//! databend-meta runs it under openraft), apart from the state in sled.
//!
//! Every change (an append, the vote, a truncation, a purge, the committed
//! id) is a checksummed record appended to chunk files under `raft-wal/`;
//! opening the directory replays them, and a torn record at the tail (a
//! crash in mid-write) is cut off. One flush thread writes what is queued
//! and fdatasyncs once for all of it (group commit, no batch wait), then
//! answers every append that was waiting. openraft counts an entry toward a
//! quorum only once its `IOFlushed` fires, which is after that sync.
//! docs/storage.md has the reasoning and the measurements.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::codeq::{Decode, Encode};

use super::io_err;
use crate::limits;
use crate::raft::codec;
use crate::raft::typ::*;
use crate::raft::TypeConfig;

/// The directory under `data_dir` that holds the log.
pub const DIR: &str = "raft-wal";
/// Where the log was kept before it had a write-ahead log of its own (a
/// sled database). A data directory that still has it is refused rather
/// than read as an empty log beside a state that has applied entries.
pub const OLD_DIR: &str = "raft-log";

/// A value stored in the log's records as its length-prefixed `codec`
/// encoding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stored<T>(T);

impl<T: serde::Serialize> Encode for Stored<T> {
    fn encode<W: io::Write>(&self, w: W) -> Result<usize, io::Error> {
        codec::encode(&self.0).encode(w)
    }
}

impl<T: serde::de::DeserializeOwned> Decode for Stored<T> {
    fn decode<R: io::Read>(r: R) -> Result<Self, io::Error> {
        codec::decode(&Vec::<u8>::decode(r)?).map(Stored)
    }
}

/// A log entry as stored: its encoding, decoded when read (the cache then
/// holds the compact form, and its size is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEntry(Vec<u8>);

impl Encode for EncodedEntry {
    fn encode<W: io::Write>(&self, w: W) -> Result<usize, io::Error> {
        self.0.encode(w)
    }
}

impl Decode for EncodedEntry {
    fn decode<R: io::Read>(r: R) -> Result<Self, io::Error> {
        Vec::<u8>::decode(r).map(EncodedEntry)
    }
}

/// Told when a write is durable: openraft's callback for an append, or a
/// waiting caller (the vote).
pub enum Done {
    Append(IOFlushed),
    Wait(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl raft_log::Callback for Done {
    fn send(self, res: Result<(), io::Error>) {
        match self {
            Done::Append(cb) => cb.io_completed(res),
            Done::Wait(tx) => {
                let _ = tx.send(res);
            }
        }
    }
}

impl Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Done::Append(_) => "Done::Append",
            Done::Wait(_) => "Done::Wait",
        })
    }
}

/// The log's types at our Raft configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalTypes;

impl raft_log::Types for WalTypes {
    type LogId = Stored<LogId>;
    type LogPayload = EncodedEntry;
    type Vote = Stored<Vote>;
    type Callback = Done;
    type UserData = ();

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.0.index()
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        payload.0.len() as u64
    }
}

type Wal = raft_log::RaftLog<WalTypes>;

#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
}

impl LogStore {
    /// Open the log under `data_dir`, creating it if absent.
    pub fn open(data_dir: &Path) -> io::Result<LogStore> {
        let old = data_dir.join(OLD_DIR);
        if old.exists() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds a Raft log in the old sled format (data format 7 or before); \
                     this grantd keeps its log in {DIR}/ and does not convert it: wipe this \
                     node's data directory and let it catch up from the others, or start the \
                     cluster afresh (docs/storage.md)",
                    old.display()
                ),
            ));
        }
        let dir = data_dir.join(DIR);
        let fresh = !dir.exists();
        std::fs::create_dir_all(&dir)?;
        if fresh {
            super::sync_dir(data_dir)?;
        }
        let mut wal_config = raft_log::chunked_wal::Config::new(dir.display());
        wal_config.chunk_max_size = Some(limits::LOG_CHUNK_BYTES);
        // No wait for more writes before a sync: the flush thread already
        // takes everything queued while the previous sync ran.
        wal_config.flush_batch_wait = Some(std::time::Duration::ZERO);
        let config = raft_log::Config {
            wal: wal_config,
            log_cache_max_items: Some(limits::LOG_CACHE_ENTRIES_MAX),
            log_cache_capacity: Some(limits::LOG_CACHE_BYTES),
        };
        let wal = Wal::open(Arc::new(config))
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", dir.display())))?;
        Ok(LogStore {
            wal: Arc::new(Mutex::new(wal)),
        })
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        self.wal.lock().expect("raft log lock")
    }

    /// Send what is queued to the flush thread, fsynced, and wait for it.
    async fn flush_durable(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.wal().flush(true, Some(Done::Wait(tx)))?;
        rx.await
            .map_err(|_| io_err("raft log flush thread is gone"))?
    }

    /// What the log's flush thread and cache have done since it opened.
    pub fn stats(&self) -> LogStats {
        let wal = self.wal();
        let stat = wal.stat();
        LogStats {
            disk_bytes: wal.on_disk_size(),
            syncs: stat.flush_metrics.sync_batch_count,
            sync_seconds: stat.flush_metrics.sync_us as f64 / 1e6,
            sync_max_seconds: stat.flush_metrics.sync_max_us as f64 / 1e6,
            cache_bytes: stat.payload_cache_size,
        }
    }
}

/// Figures of the log for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogStats {
    /// Bytes its chunk files take on disk.
    pub disk_bytes: u64,
    /// fdatasyncs since the log was opened.
    pub syncs: u64,
    /// Seconds spent in them.
    pub sync_seconds: f64,
    /// The longest of them.
    pub sync_max_seconds: f64,
    /// Bytes of entries held in memory.
    pub cache_bytes: u64,
}

/// `range` as raft-log's half-open `[from, to)`.
fn half_open(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(x) => x.saturating_add(1),
        Bound::Excluded(x) => *x,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (from, to) = half_open(&range);
        if from >= to {
            return Ok(Vec::new());
        }
        let encoded: Vec<EncodedEntry> = {
            let wal = self.wal();
            wal.read(from, to)
                .map(|r| r.map(|(_, payload)| payload))
                .collect::<io::Result<_>>()?
        };
        encoded.iter().map(|e| codec::decode(&e.0)).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.wal().log_state().vote().map(|v| v.0))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, io::Error> {
        let wal = self.wal();
        let st = wal.log_state();
        Ok(LogState {
            last_purged_log_id: st.purged().map(|l| l.0),
            last_log_id: st.last().map(|l| l.0),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.wal().save_vote(Stored(*vote))?;
        self.flush_durable().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not needed for safety (it only spares re-applying after a
        // restart), so it rides on the next append's sync. The log refuses
        // a committed id behind the one it holds or past its last entry;
        // neither is worth stopping the node for, so such a call records
        // nothing.
        let Some(committed) = committed else {
            return Ok(());
        };
        let mut wal = self.wal();
        let st = wal.log_state();
        let behind = st.committed().is_some_and(|c| c.0 >= committed);
        let beyond = st.last().is_none_or(|l| l.0 < committed);
        if !behind && !beyond {
            wal.commit(Stored(committed))?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.wal().log_state().committed().map(|l| l.0))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
    {
        // Encoded before the lock is taken: readers wait on it.
        let records: Vec<(Stored<LogId>, EncodedEntry)> = entries
            .into_iter()
            .map(|e| {
                let bytes = codec::encode(&e);
                // Entries are bounded by construction.
                assert!(
                    bytes.len() <= limits::LOG_ENTRY_BYTES_MAX,
                    "log entry of {} bytes",
                    bytes.len()
                );
                (Stored(e.log_id()), EncodedEntry(bytes))
            })
            .collect();
        let mut wal = self.wal();
        wal.append(records)?;
        wal.flush(true, Some(Done::Append(callback)))
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        // Written before the next append, in order, and synced with it:
        // openraft does not count a truncation toward a quorum, and if a
        // crash loses it the entries it removed were never acknowledged.
        let from = last.map(|l| l.index() + 1).unwrap_or(0);
        let mut wal = self.wal();
        // Nothing after `last`: raft-log would look for an entry at it.
        if wal.log_state().last().is_none_or(|l| l.0.index() < from) {
            return Ok(());
        }
        wal.truncate(from)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge record rides on the next sync; raft-log removes a chunk
        // file only after the record that covers it is durable.
        self.wal().purge(Stored(log_id))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use openraft::storage::RaftLogStorageExt;

    use super::*;
    use crate::ledger::{Command, SweepCmd};

    fn entry(index: u64) -> Entry {
        let cmd = Command::Sweep(SweepCmd {
            now_ms: index as i64,
            purge_before_ms: 0,
        });
        Entry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), cmd)
    }

    /// The newest chunk file, where appends land.
    fn open_chunk(data_dir: &Path) -> std::path::PathBuf {
        let mut chunks: Vec<_> = std::fs::read_dir(data_dir.join(DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        chunks.sort();
        chunks.pop().expect("a chunk file")
    }

    async fn last_index(dir: &Path) -> Option<u64> {
        let mut log = LogStore::open(dir).unwrap();
        let st = log.get_log_state().await.unwrap();
        let last = st.last_log_id.map(|l| l.index());
        if let Some(last) = last {
            let read = log.try_get_log_entries(1..=last).await.unwrap();
            assert_eq!(read.len() as u64, last, "a hole in the log");
        }
        last
    }

    #[tokio::test]
    async fn what_was_synced_is_there_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            log.blocking_append((1..=10).map(entry)).await.unwrap();
            let vote = Vote::new(3, 2);
            log.save_vote(&vote).await.unwrap();
            log.purge(openraft::testing::log_id::<TypeConfig>(1, 1, 4))
                .await
                .unwrap();
            log.blocking_append([entry(11)]).await.unwrap();
        }
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id.map(|l| l.index()), Some(4));
        assert_eq!(st.last_log_id.map(|l| l.index()), Some(11));
        let read = log.try_get_log_entries(0..100).await.unwrap();
        let indexes: Vec<u64> = read.iter().map(|e| e.index()).collect();
        assert_eq!(indexes, (5..=11).collect::<Vec<_>>());
        assert_eq!(read[0], entry(5));
    }

    /// A crash in the middle of writing a record leaves a torn tail: the
    /// next open cuts it off and keeps every whole record before it.
    #[tokio::test]
    async fn a_torn_tail_is_cut_back_to_the_last_whole_entry() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            log.blocking_append((1..=20).map(entry)).await.unwrap();
        }
        // Half of the last record gone.
        let chunk = open_chunk(dir.path());
        let len = std::fs::metadata(&chunk).unwrap().len();
        let record = codec::encode(&entry(20)).len() as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&chunk)
            .unwrap()
            .set_len(len - record / 2)
            .unwrap();
        assert_eq!(last_index(dir.path()).await, Some(19));

        // Zeros after the last whole record, as a power loss can leave on a
        // file system that grew the file before the data reached it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(open_chunk(dir.path()))
            .unwrap()
            .write_all(&[0u8; 300])
            .unwrap();
        assert_eq!(last_index(dir.path()).await, Some(19));

        // And the log goes on from there.
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            log.blocking_append([entry(20), entry(21)]).await.unwrap();
        }
        assert_eq!(last_index(dir.path()).await, Some(21));

        // Anything else is damage, not a torn write: refused, naming where.
        std::fs::OpenOptions::new()
            .append(true)
            .open(open_chunk(dir.path()))
            .unwrap()
            .write_all(&[0xA5; 300])
            .unwrap();
        let err = LogStore::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains(DIR), "{err}");
    }

    #[test]
    fn a_data_directory_of_the_sled_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(OLD_DIR)).unwrap();
        let err = LogStore::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("old sled format"), "{err}");
        assert!(!dir.path().join(DIR).exists());
    }
}
