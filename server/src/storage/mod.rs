//! Durable storage: the Raft log (a write-ahead log of its own), the state
//! machine (sled, one key space declared in `keyspace`) and the audit chain
//! (segments and tiles of its own, `audit_store`).

pub mod audit_fill;
pub mod audit_store;
pub mod capture;
pub mod crash_point;
pub mod generation;
pub mod grant_cache;
pub mod journal;
pub mod keyspace;
pub mod log_store;
pub mod records;
pub mod snapshot_data;
pub mod snapshot_file;
pub mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{StateMachine, StateReader};

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// fsync a directory so that a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Open (or create) the sled database at `path`. sled lets go of a closed
/// database's file lock only when its I/O threads have finished with it,
/// which on a busy machine can be a little after the last handle is
/// dropped; so every open, in the node and in tests, waits for the lock, up
/// to `DB_LOCK_WAIT_MAX`. A lock still held after that (another process on
/// the same data directory) is an error naming the path.
pub fn open_db(path: &Path) -> io::Result<sled::Db> {
    let deadline = Instant::now() + crate::limits::DB_LOCK_WAIT_MAX;
    loop {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(crate::limits::STATE_CACHE_BYTES);
        match config.open() {
            Ok(db) => return Ok(db),
            // sled reports it as ErrorKind::Other, by message.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io::Error::other(format!("opening {}: {e}", path.display()))),
        }
    }
}
