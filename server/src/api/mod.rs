//! The public gRPC services: validate and size-check a request, turn it into
//! a log command, propose it, and map the outcome to a response or a status.

pub mod audit;
pub mod batcher;
pub mod cluster;
pub mod errors;
pub mod forward;
pub mod grants;
pub mod health;
pub mod policy;
pub mod prune;
pub mod rate;
pub mod refusals;
pub mod roles;
pub mod tasks;
pub mod token;
pub mod transport_status;
pub mod validate;
pub mod watch;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use tokio::sync::Semaphore;

use crate::auth::layer::Access;
use crate::config::Config;
use crate::ledger::{Command, CommandResult};
use crate::raft::Raft;
use crate::storage::StateReader;
use errors::ApiError;

/// What every service of one node shares.
#[derive(Clone)]
pub struct NodeContext {
    pub config: Arc<Config>,
    pub raft: Raft,
    pub state: StateReader,
    /// How callers are identified and what they may do.
    pub access: Arc<Access>,
    proposals: Arc<Semaphore>,
    /// Issues and delegations per caller (issue_rate_per_caller).
    pub issue_rate: Arc<rate::IssueRate>,
}

impl NodeContext {
    pub fn new(config: Arc<Config>, raft: Raft, state: StateReader, access: Arc<Access>) -> Self {
        NodeContext {
            raft,
            state,
            access,
            proposals: Arc::new(Semaphore::new(crate::limits::PROPOSALS_IN_FLIGHT_MAX)),
            issue_rate: Arc::new(rate::IssueRate::new(
                config.issue_rate_per_caller,
                config.issue_burst_per_caller,
            )),
            config,
        }
    }

    /// Writes this node has proposed and not yet seen applied.
    pub fn proposals_in_flight(&self) -> usize {
        crate::limits::PROPOSALS_IN_FLIGHT_MAX - self.proposals.available_permits()
    }

    /// Make a read linearizable (read index through the leader), unless the
    /// caller accepts a possibly stale answer from this node.
    pub async fn read_barrier(&self, allow_stale: bool) -> Result<(), ApiError> {
        if !allow_stale {
            self.refuse_without_quorum()?;
            self.raft
                .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                .await?;
        }
        Ok(())
    }

    /// Read something that never changes once written (a task's owner and
    /// deadline, a grant's subject and parent): this node's copy, or, if it
    /// has none yet (written through another leader, not applied here),
    /// the copy after a read barrier.
    pub async fn read_settled<T>(
        &self,
        read: impl Fn(&StateReader) -> std::io::Result<Option<T>>,
    ) -> Result<Option<T>, ApiError> {
        if let Some(v) = read(&self.state)? {
            return Ok(Some(v));
        }
        self.read_barrier(false).await?;
        Ok(read(&self.state)?)
    }

    /// Propose a command and wait for its result; returns (result, log index).
    pub async fn propose(&self, cmd: Command) -> Result<(CommandResult, u64), ApiError> {
        let _permit = self.proposals.try_acquire().map_err(|_| {
            ApiError::ResourceExhausted(format!(
                "more than {} writes in flight on this node (proposals_in_flight_max)",
                crate::limits::PROPOSALS_IN_FLIGHT_MAX
            ))
        })?;
        self.refuse_without_quorum()?;
        let write = self.raft.client_write(cmd);
        tokio::pin!(write);
        // A write accepted just before the lease ran out waits for a quorum
        // that may not come back: answer it as unknown rather than let the
        // caller wait out its deadline. It may still commit once the
        // partition heals, so the caller retries with the same request id.
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.config.heartbeat_interval_ms));
        loop {
            tokio::select! {
                r = &mut write => {
                    let resp = r?;
                    return Ok((resp.data, resp.log_id.index));
                }
                _ = tick.tick() => if self.lease_lost() {
                    return Err(ApiError::OutcomeUnknown { leader_id: None, leader_addr: None });
                }
            }
        }
    }

    /// Not the leader: `NotLeader`, naming the leader if one is known
    /// (api::forward sends the call there).
    pub fn require_leader(&self) -> Result<(), ApiError> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader == Some(m.id) {
            return self.refuse_without_quorum();
        }
        Err(ApiError::NotLeader {
            leader_id: m.current_leader,
            leader_addr: m
                .current_leader
                .and_then(|l| m.membership_config.get_node(&l).map(|n| n.api_addr.clone())),
        })
    }

    /// CheckQuorum: a leader that no quorum has acknowledged for the leader
    /// lease (`election_timeout_max_ms`) can commit nothing; it refuses at
    /// once, with no leader hint, so the caller tries another node.
    fn refuse_without_quorum(&self) -> Result<(), ApiError> {
        if self.lease_lost() {
            return Err(ApiError::NotLeader {
                leader_id: None,
                leader_addr: None,
            });
        }
        Ok(())
    }

    /// This node leads and its lease (`election_timeout_max_ms`) has run
    /// out (`health::lease_expired`). Before the first acknowledgement,
    /// openraft's own lease check on proposals decides.
    pub fn lease_lost(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let lease = Duration::from_millis(self.config.election_timeout_max_ms);
        m.state == ServerState::Leader && health::lease_expired(&m, lease) == Some(true)
    }
}

/// Leader time for log commands: milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
