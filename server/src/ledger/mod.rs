//! The ledger: pure, deterministic rules that turn one log command into a
//! result and a list of state writes.
//!
//! Nothing here reads a clock, draws randomness, does I/O or looks at local
//! config: time and ids come inside the command, written by the leader, and
//! state comes through the [`LedgerState`] trait. Every replica that applies
//! the same entry to the same state gets the same writes, byte for byte.

mod apply;
mod types;

pub use apply::{apply, apply_membership, prune_refused, ApplyCtx};
pub use types::*;

/// Read access to the state the ledger decides on. The storage layer
/// implements it over sled; the unit tests over a map.
pub trait LedgerState {
    fn grant(&self, grant_id: &str) -> Result<Option<GrantRecord>, StateError>;
    fn dedupe(&self, request_id: &str) -> Result<Option<DedupeRecord>, StateError>;
    /// Ids of the grants of a task, at most `limit`.
    fn task_grant_ids(&self, task_id: &str, limit: usize) -> Result<Vec<String>, StateError>;
    /// Ids of the grants delegated directly from `grant_id`, at most `limit`.
    fn child_grant_ids(&self, grant_id: &str, limit: usize) -> Result<Vec<String>, StateError>;
    /// Active grants of a subject or task, as counted at issue and retire
    /// (a grant past its expiry counts until the sweep retires it).
    fn active_grants(&self, of: &Counted) -> Result<u64, StateError>;
    fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, StateError>;
    /// Open tasks whose deadline is at or before `now_ms`, soonest first, at most `limit`.
    fn tasks_past_deadline(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StateError>;
    /// Active grants whose expiry is at or before `now_ms`, oldest first, at most `limit`.
    fn expired_grant_ids(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StateError>;
    /// Retired (revoked or expired) grants whose expiry is before
    /// `before_ms`, oldest first, at most `limit`.
    fn retired_before(&self, before_ms: i64, limit: usize) -> Result<Vec<String>, StateError>;
    /// Dedupe records applied before `before_ms`, oldest first, at most `limit`:
    /// (applied_at_ms, request_id).
    fn dedupe_older_than(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StateError>;
    /// Every verifier key recorded in the roster under a key name (a
    /// rotated key stays, so old checkpoints keep verifying).
    fn roster_keys(&self, name: &str) -> Result<Vec<String>, StateError>;
    /// Whether token key `kid` is published.
    fn token_key_known(&self, kid: &str) -> Result<bool, StateError>;
    /// The Merkle root of the audit tree when it had `size` entries, if that
    /// size ended an applied log entry.
    fn tree_root(&self, size: u64) -> Result<Option<grant_proto::audit::Hash>, StateError>;
    /// Size of the newest checkpoint kept.
    fn latest_checkpoint_size(&self) -> Result<Option<u64>, StateError>;
    /// The sizes of the checkpoints that sign fewer than `size` entries,
    /// smallest first.
    fn checkpoints_below(&self, size: u64, limit: usize) -> Result<Vec<u64>, StateError>;
    /// Closed tasks whose deadline is before `before_ms`, oldest first.
    fn tasks_closed_before(&self, before_ms: i64, limit: usize) -> Result<Vec<String>, StateError>;
    /// Where the audit chain starts (`Write::StartChain`; seq 0 until a
    /// prune).
    fn chain_start(&self) -> Result<ChainStart, StateError>;
    /// The policy set in force, compiled; None until the first SetPolicy
    /// (grants alone decide until then).
    fn policy(&self) -> Result<Option<std::sync::Arc<grant_policy::Compiled>>, StateError>;
}

/// A failure to read state: the storage is broken. Apply cannot continue.
#[derive(Debug, thiserror::Error)]
#[error("ledger state unreadable: {0}")]
pub struct StateError(pub String);
