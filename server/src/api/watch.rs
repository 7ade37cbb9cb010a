//! Grants/Watch: revocations, expirations, task completions and policy
//! changes, streamed in audit order from a point of the chain.
//!
//! Events are audit entries (the watch index in storage names which), so a
//! watcher resumes after the last event it received, on any node, without
//! a gap or a repeat: the audit chain is never compacted. A resume whose
//! entry differs on the node (another history) is told to resync. Progress
//! marks say how far the stream is complete; one is *confirmed* after a
//! read index through the leader, so a watcher can tell a node that is cut
//! off from the cluster (no more confirmed marks) from a quiet cluster.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use grant_proto::v1 as pb;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use super::errors::ApiError;
use super::NodeContext;
use crate::ledger::{AuditEntry, Kind};
use crate::limits::{
    WATCHERS_MAX, WATCH_CONFIRM_INTERVAL_MS, WATCH_EVENTS_PER_MESSAGE_MAX, WATCH_QUEUE_MESSAGES,
};

pub type WatchStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// The watchers of one node: a bound on their number, and the node's
/// shutdown, which ends every stream (a server waits for open streams).
#[derive(Clone)]
pub struct Watchers {
    permits: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Watchers {
    pub fn new(shutdown: watch::Receiver<bool>) -> Self {
        Watchers {
            permits: Arc::new(Semaphore::new(WATCHERS_MAX)),
            shutdown,
        }
    }

    pub fn start(&self, ctx: &NodeContext, req: pb::WatchRequest) -> Result<WatchStream, ApiError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::ResourceExhausted(format!(
                "{WATCHERS_MAX} watchers on this node already (watchers_max); watch another node"
            ))
        })?;
        let size = *ctx.state.audit_size().borrow();
        let (after, verify) = match req.start {
            Some(pb::watch_request::Start::AfterSeq(s)) => {
                if req.after_hash.len() != 32 {
                    return Err(ApiError::invalid(
                        "after_hash",
                        "32 bytes, required with after_seq: the entry_hash of the event, or \
                         the progress_hash of the mark, resumed after",
                    ));
                }
                (Some(s), Some((s, req.after_hash.clone())))
            }
            Some(pb::watch_request::Start::FromLogIndex(i)) => (first_seq_at(ctx, i, size)?, None),
            None => (size.checked_sub(1), None),
        };
        let (tx, rx) = mpsc::channel(WATCH_QUEUE_MESSAGES);
        let stream = Stream {
            ctx: ctx.clone(),
            tx,
            after,
            verify,
            shutdown: self.shutdown.clone(),
            _permit: permit,
        };
        tokio::spawn(stream.run());
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        })))
    }
}

/// The seq before the first audit entry of log index `index` or later
/// (None: from the first entry). Entries are in log order, so a binary
/// search over seq finds it.
fn first_seq_at(ctx: &NodeContext, index: u64, size: u64) -> Result<Option<u64>, ApiError> {
    let (mut lo, mut hi) = (0u64, size);
    // A chain pruned before `start`: the events of `index` may lie in the
    // part that is gone (a log entry's entries may straddle the start), so
    // only a later index is served.
    let start = ctx.state.audit_files().base().start;
    if start > 0 && start < size {
        if let Some((e, _)) = ctx.state.audit_entries(start, 1)?.first() {
            if e.log_index >= index {
                return Err(ApiError::Pruned {
                    start,
                    message: format!(
                        "the audit chain starts at entry {start}, of log index {}: the events \
                         from log index {index} before it were pruned. Watch from log index {} \
                         or later",
                        e.log_index,
                        e.log_index + 1
                    ),
                });
            }
        }
    }
    // A node begun from a snapshot holds entries from its seam on: the
    // answer lies past it if the first held entry is older than `index`,
    // and is unknown here otherwise (Missing, below).
    let from = ctx.state.audit_files().base().entries_from;
    if from > 0 && from < size {
        if let Some((e, _)) = ctx.state.audit_entries(from, 1)?.first() {
            if e.log_index < index {
                lo = from + 1;
            }
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let at = ctx.state.audit_entries(mid, 1).map_err(ApiError::from)?;
        match at.first() {
            Some((e, _)) if e.log_index < index => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo.checked_sub(1))
}

fn event(e: &AuditEntry, hash: &[u8]) -> pb::WatchEvent {
    use pb::watch_event::Kind as K;
    let kind = match e.kind {
        Kind::Revoke => K::Revoked,
        Kind::Expire => K::Expired,
        Kind::CompleteTask => K::TaskCompleted,
        Kind::AbortTask => K::TaskAborted,
        Kind::ExpireTask => K::TaskExpired,
        Kind::Policy => K::PolicyChanged,
        _ => K::Unspecified,
    };
    pb::WatchEvent {
        kind: kind as i32,
        seq: e.seq,
        log_index: e.log_index,
        time_ms: e.time_ms,
        entry_hash: hash.to_vec(),
        grant_id: e.grant_id.clone(),
        task_id: e.task_id.clone(),
    }
}

struct Stream {
    ctx: NodeContext,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    /// The seq of the last event sent (None: none yet, start from 0).
    after: Option<u64>,
    /// A resume point to compare with this node's entry once it has it.
    verify: Option<(u64, Vec<u8>)>,
    shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Stream {
    async fn run(mut self) {
        if let Err(status) = self.serve().await {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    async fn serve(&mut self) -> Result<(), Status> {
        let mut sizes = self.ctx.state.audit_size();
        let interval = Duration::from_millis(WATCH_CONFIRM_INTERVAL_MS);
        let mut next_confirm = tokio::time::Instant::now();
        loop {
            let confirm = tokio::time::Instant::now() >= next_confirm;
            let mut confirmed = false;
            if confirm {
                next_confirm = tokio::time::Instant::now() + interval;
                // After a read index this node has applied everything the
                // cluster had committed when the mark was asked for.
                confirmed = self
                    .ctx
                    .raft
                    .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                    .await
                    .is_ok();
            }
            let size = *sizes.borrow_and_update();
            self.check_resume_point(size, confirmed)?;
            self.drain(size).await?;
            // An events message carries its own progress; a confirmed mark
            // goes out on its own. Until the resume point is reached no
            // mark goes out: nothing after it has been sent yet.
            if confirm && self.verify.is_none() {
                let progress_size = self.progress(size);
                let mark = pb::WatchResponse {
                    events: Vec::new(),
                    progress_size,
                    confirmed,
                    progress_hash: self.hash_before(progress_size)?,
                };
                if self.tx.send(Ok(mark)).await.is_err() {
                    return Ok(());
                }
            }
            tokio::select! {
                r = sizes.changed() => if r.is_err() { return Ok(()) },
                _ = tokio::time::sleep_until(next_confirm) => {}
                _ = self.tx.closed() => return Ok(()),
                _ = self.shutdown.wait_for(|s| *s) => {
                    return Err(Status::unavailable("node shutting down; resume on another node"));
                }
            }
        }
    }

    /// Every event the chain of `size` holds is sent once `after` is past
    /// it (`after` may be past `size`: storage applied more since).
    fn progress(&self, size: u64) -> u64 {
        size.max(self.after.map_or(0, |a| a + 1))
    }

    /// The hash of the entry at `size - 1`, where a watcher resumes after a
    /// message that reports progress up to `size`.
    fn hash_before(&self, size: u64) -> Result<Vec<u8>, Status> {
        let Some(last) = size.checked_sub(1) else {
            return Ok(Vec::new());
        };
        let hash = self
            .ctx
            .state
            .audit_entry_hash(last)
            .map_err(ApiError::from)?;
        Ok(hash.map(|h| h.to_vec()).unwrap_or_default())
    }

    /// Compare the resume point with this node's entry once it has one.
    /// A point past the end of the chain is waited for while this node may
    /// merely be behind; once a read index through the leader (`confirmed`)
    /// shows that the cluster's chain does not reach it either, it is
    /// another history (a restored, shorter one, or a forged point), and
    /// the watcher must start over. Never a confirmed mark past it.
    fn check_resume_point(&mut self, size: u64, confirmed: bool) -> Result<(), Status> {
        let Some((seq, hash)) = &self.verify else {
            return Ok(());
        };
        if *seq >= size {
            if confirmed {
                return Err(ApiError::WatchResync(format!(
                    "the watch resumes after audit entry {seq}, but the cluster's chain \
                     holds {size} entries: another history (a restored backup?); drop \
                     cached decisions and watch from now"
                ))
                .into());
            }
            // This node may be behind the point; wait for it.
            return Ok(());
        }
        let ours = self
            .ctx
            .state
            .audit_entry_hash(*seq)
            .map_err(ApiError::from)?;
        match ours {
            Some(h) if h[..] == hash[..] => {
                self.verify = None;
                Ok(())
            }
            _ => Err(ApiError::WatchResync(format!(
                "audit entry {seq} on this node is not the one the watch resumes after: \
                 another history (a restored backup?); drop cached decisions and watch from now"
            ))
            .into()),
        }
    }

    /// Send every event this node holds after `after`, in messages of at
    /// most WATCH_EVENTS_PER_MESSAGE_MAX.
    async fn drain(&mut self, size: u64) -> Result<(), Status> {
        if self.verify.is_some() {
            return Ok(());
        }
        loop {
            let batch = self
                .ctx
                .state
                .watch_events(self.after, WATCH_EVENTS_PER_MESSAGE_MAX)
                .map_err(ApiError::from)?;
            let Some((last, last_hash)) = batch.last() else {
                return Ok(());
            };
            self.after = Some(last.seq);
            let full = batch.len() == WATCH_EVENTS_PER_MESSAGE_MAX;
            // The storage may have applied past `size` since it was read.
            let (progress_size, progress_hash) = if full || last.seq + 1 >= size {
                (last.seq + 1, last_hash.to_vec())
            } else {
                (size, self.hash_before(size)?)
            };
            let msg = pb::WatchResponse {
                events: batch.iter().map(|(e, h)| event(e, h)).collect(),
                progress_size,
                confirmed: false,
                progress_hash,
            };
            if self.tx.send(Ok(msg)).await.is_err() || !full {
                return Ok(());
            }
        }
    }
}
