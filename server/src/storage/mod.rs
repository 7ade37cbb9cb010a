//! Durable storage: the Raft log (sled, made durable with fdatasync) and the
//! state machine (sled, one key space declared in `keyspace`).

pub mod capture;
pub mod generation;
pub mod grant_cache;
pub mod journal;
pub mod keyspace;
pub mod log_store;
pub mod snapshot_data;
pub mod snapshot_file;
pub mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{StateMachine, StateReader};

use std::io;

pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// fsync a directory so that a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
