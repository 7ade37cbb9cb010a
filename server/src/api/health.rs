//! gRPC health (grpc.health.v1): SERVING while this node is part of a
//! cluster that can make progress, NOT_SERVING otherwise, so load balancers
//! and probes take a node out when it has lost its quorum.
//!
//! A leader serves while a quorum acknowledged it within the election
//! timeout (a sole voter is its own quorum); a follower or learner while it
//! heard from its leader within the election timeout. With pre-vote a
//! follower cut off from its peers stays a follower that still names its
//! old leader, so knowing a leader is not enough. A candidate, a node with
//! no leader, or a node shutting down does not serve.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::Instant as _;
use openraft::ServerState;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::raft::typ::RaftMetrics;
use crate::raft::Raft;

/// `leader_heard` is how long ago a follower or learner last heard from its
/// leader (the last time its vote was renewed).
pub fn serving(
    m: &RaftMetrics,
    leader_heard: Option<Duration>,
    election_timeout_max_ms: u64,
) -> bool {
    let timeout = Duration::from_millis(election_timeout_max_ms);
    match m.state {
        ServerState::Leader => lease_expired(m, timeout) == Some(false),
        ServerState::Follower | ServerState::Learner => {
            m.current_leader.is_some() && leader_heard.is_some_and(|d| d < timeout)
        }
        ServerState::Candidate | ServerState::Shutdown => false,
    }
}

/// Whether a leader's lease has run out: `Some(true)` when no quorum has
/// acknowledged it for `lease`, `Some(false)` while one has, and always for
/// the cluster's only voter (its own quorum, which no peer acknowledges and
/// for which openraft never renews `last_quorum_acked`); `None` before the
/// first acknowledgement.
pub fn lease_expired(m: &RaftMetrics, lease: Duration) -> Option<bool> {
    let sole_voter = m
        .membership_config
        .membership()
        .voter_ids()
        .all(|id| id == m.id);
    if sole_voter {
        return Some(false);
    }
    m.last_quorum_acked.as_ref().map(|t| t.elapsed() >= lease)
}

/// How long ago this node's vote was last renewed: on a follower, the last
/// message from its leader.
async fn leader_heard(raft: &Raft) -> Option<Duration> {
    raft.with_raft_state(|st| st.vote_last_modified().map(|t| t.elapsed()))
        .await
        .ok()
        .flatten()
}

/// Report `services` (and "") as serving or not, and `tools` as serving,
/// until shutdown.
pub async fn run(
    reporter: HealthReporter,
    raft: Raft,
    election_timeout_max_ms: u64,
    services: &'static [&'static str],
    tools: &'static [&'static str],
    shutdown: watch::Receiver<bool>,
) {
    for name in tools {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_millis(crate::limits::HEALTH_POLL_MS));
    loop {
        tick.tick().await;
        let metrics = raft.metrics().borrow_watched().clone();
        let heard = match metrics.state {
            ServerState::Follower | ServerState::Learner => leader_heard(&raft).await,
            _ => None,
        };
        let ok = !*shutdown.borrow() && serving(&metrics, heard, election_timeout_max_ms);
        if last != Some(ok) {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in std::iter::once(&"").chain(services) {
                reporter.set_service_status(*name, status).await;
            }
            tracing::info!(serving = ok, "health");
            last = Some(ok);
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
