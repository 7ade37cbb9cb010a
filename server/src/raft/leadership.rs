//! Handing leadership over on purpose: for `grantctl cluster
//! transfer-leader` and for a leader that was asked to stop (SIGTERM), so
//! that clients see a new leader within a heartbeat or two instead of
//! waiting out an election timeout.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::{NodeId, Raft};

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("this node is not the leader")]
    NotLeader,
    #[error("node {0} is not a voter")]
    NotVoter(NodeId),
    #[error("no other voter to hand leadership to")]
    NoCandidate,
    #[error("node {to} did not take over within {waited:?}")]
    TimedOut { to: NodeId, waited: Duration },
    #[error("raft stopped: {0}")]
    Stopped(String),
}

/// The voter, other than this node, whose log has caught up furthest with
/// the leader's (it can win the election at once).
pub fn best_successor(raft: &Raft) -> Option<NodeId> {
    let m = raft.metrics().borrow_watched().clone();
    let me = m.id;
    let matched = m.replication.clone().unwrap_or_default();
    m.membership_config
        .voter_ids()
        .filter(|id| *id != me)
        .max_by_key(|id| {
            (
                matched.get(id).cloned().flatten().map(|l| l.index),
                std::cmp::Reverse(*id),
            )
        })
}

/// Ask voter `to` (or the best successor) to take over, and wait until this
/// node sees it lead, at most `wait`. Returns the new leader and its term.
pub async fn hand_over(
    raft: &Raft,
    to: Option<NodeId>,
    wait: Duration,
) -> Result<(NodeId, u64), HandoverError> {
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(m.id) {
        return Err(HandoverError::NotLeader);
    }
    let to = match to {
        Some(id) => {
            if !m.membership_config.voter_ids().any(|v| v == id) {
                return Err(HandoverError::NotVoter(id));
            }
            id
        }
        None => best_successor(raft).ok_or(HandoverError::NoCandidate)?,
    };
    if to == m.id {
        return Ok((m.id, m.current_term));
    }
    raft.trigger()
        .transfer_leader(to)
        .await
        .map_err(|e| HandoverError::Stopped(e.to_string()))?;
    let seen = raft
        .wait(Some(wait))
        .metrics(|m| m.current_leader == Some(to), "new leader")
        .await
        .map_err(|_| HandoverError::TimedOut { to, waited: wait })?;
    Ok((to, seen.current_term))
}
