//! Group commit: concurrent requests of one kind share one log entry
//! instead of paying a Raft round and an entry's fixed costs each. One task
//! drains a queue into batches; at most one batch of a kind is in Raft at
//! once (`CHECK_BATCHES_IN_FLIGHT_MAX`, `WRITE_BATCHES_IN_FLIGHT_MAX`), and
//! requests that arrive meanwhile wait for the next batch.
//!
//! Checks: every Check is a write (its decision is recorded), batched into
//! `Command::Checks` of at most `check_batch_max`. Issues and revokes:
//! batched into `Command::Issues` / `Command::Revokes` of at most
//! `WRITES_PER_ENTRY_MAX`, each decided on the state the ones before it
//! left (ledger::apply); a batch of one is the plain command.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::errors::ApiError;
use super::{now_ms, NodeContext};
use crate::ledger::{CheckCmd, CheckOutcome, Command, CommandResult, IssueCmd, RevokeCmd};
use crate::limits;

type Reply<O> = oneshot::Sender<Result<(O, u64), ApiError>>;

/// One kind of batched request: how a batch becomes a command, and how the
/// command's result splits back into one outcome per request.
pub trait Batched: Send + 'static {
    type Outcome: Send + 'static;
    /// Named in errors and limits ("checks", "issues").
    const WHAT: &'static str;
    /// The setting or limit that bounds the queue, named in its error.
    const QUEUE_LIMIT: &'static str;
    fn command(batch: Vec<Self>) -> Command
    where
        Self: Sized;
    /// One outcome per request, in order; None if the result is not the
    /// batch's kind.
    fn split(r: CommandResult) -> Option<Vec<Self::Outcome>>;
}

impl Batched for CheckCmd {
    type Outcome = CheckOutcome;
    const WHAT: &'static str = "checks";
    const QUEUE_LIMIT: &'static str = "pending_checks_max";
    fn command(checks: Vec<CheckCmd>) -> Command {
        Command::Checks {
            now_ms: now_ms(),
            checks,
        }
    }
    fn split(r: CommandResult) -> Option<Vec<CheckOutcome>> {
        match r {
            CommandResult::Checked(outcomes) => Some(outcomes),
            _ => None,
        }
    }
}

/// A write batched with its kind (`Command::Issues`, `Command::Revokes`):
/// a batch of one is the plain command it always was, and each request's
/// outcome is its own result (its grant, or why it was refused).
pub trait BatchedWrite: Send + Sized + 'static {
    /// Named in errors ("issues", "revokes").
    const WHAT: &'static str;
    const ONE: fn(Self) -> Command;
    const MANY: fn(Vec<Self>) -> Command;
}

impl BatchedWrite for IssueCmd {
    const WHAT: &'static str = "issues";
    const ONE: fn(Self) -> Command = Command::Issue;
    const MANY: fn(Vec<Self>) -> Command = Command::Issues;
}

impl BatchedWrite for RevokeCmd {
    const WHAT: &'static str = "revokes";
    const ONE: fn(Self) -> Command = Command::Revoke;
    const MANY: fn(Vec<Self>) -> Command = Command::Revokes;
}

impl<T: BatchedWrite> Batched for T {
    type Outcome = CommandResult;
    const WHAT: &'static str = <T as BatchedWrite>::WHAT;
    const QUEUE_LIMIT: &'static str = "pending_writes_max";
    fn command(mut batch: Vec<T>) -> Command {
        match batch.len() {
            1 => T::ONE(batch.remove(0)),
            _ => T::MANY(batch),
        }
    }
    fn split(r: CommandResult) -> Option<Vec<CommandResult>> {
        match r {
            CommandResult::Each(results) => Some(results),
            single => Some(vec![single]),
        }
    }
}

pub struct Batcher<T: Batched> {
    tx: mpsc::Sender<(T, Reply<T::Outcome>)>,
}

impl<T: Batched> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

pub type CheckBatcher = Batcher<CheckCmd>;
pub type IssueBatcher = Batcher<IssueCmd>;
pub type RevokeBatcher = Batcher<RevokeCmd>;

impl CheckBatcher {
    pub fn start(ctx: NodeContext) -> Self {
        let batch_max = ctx.config.check_batch_max;
        Batcher::spawn(
            ctx,
            limits::PENDING_CHECKS_MAX,
            batch_max,
            limits::CHECK_BATCHES_IN_FLIGHT_MAX,
        )
    }

    /// Queue one check and wait for its decision and log index.
    pub async fn check(&self, cmd: CheckCmd) -> Result<(CheckOutcome, u64), ApiError> {
        self.submit(cmd, limits::PENDING_CHECKS_MAX).await
    }
}

impl<T: BatchedWrite> Batcher<T> {
    /// A queue of issues or revokes.
    pub fn start_writes(ctx: NodeContext) -> Self {
        Batcher::spawn(
            ctx,
            limits::PENDING_WRITES_MAX,
            limits::WRITES_PER_ENTRY_MAX,
            limits::WRITE_BATCHES_IN_FLIGHT_MAX,
        )
    }

    /// Queue one issue or revoke and wait for its result and log index.
    pub async fn write(&self, cmd: T) -> Result<(CommandResult, u64), ApiError> {
        self.submit(cmd, limits::PENDING_WRITES_MAX).await
    }
}

impl<T: Batched> Batcher<T> {
    fn spawn(ctx: NodeContext, queue_max: usize, batch_max: usize, in_flight: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue_max);
        tokio::spawn(run(ctx, rx, batch_max, in_flight));
        Batcher { tx }
    }

    /// Requests waiting for a batch (the queue depth).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    async fn submit(&self, cmd: T, queue_max: usize) -> Result<(T::Outcome, u64), ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((cmd, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::ResourceExhausted(format!(
                "more than {queue_max} {} waiting ({})",
                T::WHAT,
                T::QUEUE_LIMIT
            )),
            mpsc::error::TrySendError::Closed(_) => {
                ApiError::Unavailable("node is shutting down".into())
            }
        })?;
        rx.await
            .map_err(|_| ApiError::Unavailable("node is shutting down".into()))?
    }
}

async fn run<T: Batched>(
    ctx: NodeContext,
    mut rx: mpsc::Receiver<(T, Reply<T::Outcome>)>,
    batch_max: usize,
    in_flight: usize,
) {
    let in_flight = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let res = ctx.propose(T::command(items)).await;
            drop(permit);
            match res {
                Ok((result, index)) => match T::split(result) {
                    Some(outcomes) if outcomes.len() == replies.len() => {
                        for (o, r) in outcomes.into_iter().zip(replies) {
                            let _ = r.send(Ok((o, index)));
                        }
                    }
                    _ => {
                        for r in replies {
                            let _ = r.send(Err(ApiError::Internal(format!(
                                "unexpected result for a batch of {}",
                                T::WHAT
                            ))));
                        }
                    }
                },
                Err(e) => {
                    for r in replies {
                        let _ = r.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// The node's group-commit queues.
#[derive(Clone)]
pub struct Batchers {
    pub checks: CheckBatcher,
    pub issues: IssueBatcher,
    pub revokes: RevokeBatcher,
}

impl Batchers {
    pub fn start(ctx: NodeContext) -> Self {
        Batchers {
            checks: CheckBatcher::start(ctx.clone()),
            issues: Batcher::start_writes(ctx.clone()),
            revokes: Batcher::start_writes(ctx),
        }
    }
}
