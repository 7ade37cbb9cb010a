//! Group commit for checks: every Check is a write (its decision is
//! recorded), so concurrent checks share one log entry instead of paying a
//! Raft round each. One task drains the queue into batches of at most
//! `check_batch_max`; at most `CHECK_BATCHES_IN_FLIGHT_MAX` batches (one)
//! are in Raft at once, and checks that arrive meanwhile wait for the next
//! batch.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::errors::ApiError;
use super::{now_ms, NodeContext};
use crate::ledger::{CheckCmd, CheckOutcome, Command, CommandResult};
use crate::limits;

type Reply = oneshot::Sender<Result<(CheckOutcome, u64), ApiError>>;

#[derive(Clone)]
pub struct CheckBatcher {
    tx: mpsc::Sender<(CheckCmd, Reply)>,
}

impl CheckBatcher {
    pub fn start(ctx: NodeContext) -> Self {
        let (tx, rx) = mpsc::channel(limits::PENDING_CHECKS_MAX);
        tokio::spawn(run(ctx, rx));
        CheckBatcher { tx }
    }

    /// Checks waiting for a batch (the queue depth).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queue one check and wait for its decision and log index.
    pub async fn check(&self, cmd: CheckCmd) -> Result<(CheckOutcome, u64), ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((cmd, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::ResourceExhausted(format!(
                "more than {} checks waiting (pending_checks_max)",
                limits::PENDING_CHECKS_MAX
            )),
            mpsc::error::TrySendError::Closed(_) => {
                ApiError::Unavailable("node is shutting down".into())
            }
        })?;
        rx.await
            .map_err(|_| ApiError::Unavailable("node is shutting down".into()))?
    }
}

async fn run(ctx: NodeContext, mut rx: mpsc::Receiver<(CheckCmd, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(limits::CHECK_BATCHES_IN_FLIGHT_MAX));
    let batch_max = ctx.config.check_batch_max;
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
            let (checks, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let res = ctx
                .propose(Command::Checks {
                    now_ms: now_ms(),
                    checks,
                })
                .await;
            drop(permit);
            match res {
                Ok((CommandResult::Checked(outcomes), index))
                    if outcomes.len() == replies.len() =>
                {
                    for (o, r) in outcomes.into_iter().zip(replies) {
                        let _ = r.send(Ok((o, index)));
                    }
                }
                Ok((other, _)) => {
                    for r in replies {
                        let _ = r.send(Err(ApiError::Internal(format!(
                            "unexpected result for checks: {other:?}"
                        ))));
                    }
                }
                Err(e) => {
                    for r in replies {
                        let _ = r.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
