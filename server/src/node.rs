//! One grantd node's lifecycle: open storage, start Raft, serve the public
//! and peer gRPC services, run the leader's expiry sweep, shut down cleanly.

use std::sync::Arc;
use std::time::Duration;

use grant_proto::tls::{AcceptServer, Tls};
use grant_proto::v1::audit_server::AuditServer;
use grant_proto::v1::cluster_server::ClusterServer;
use grant_proto::v1::grants_server::GrantsServer;
use grant_proto::v1::policy_server::PolicyServer;
use grant_proto::v1::raft::raft_peer_server::RaftPeerServer;
use tokio::sync::watch;
use tonic::server::NamedService;

use crate::api::audit::AuditService;
use crate::api::batcher::Batchers;
use crate::api::cluster::ClusterService;
use crate::api::forward::{ForwardLayer, Forwarder};
use crate::api::grants::GrantsService;
use crate::api::policy::PolicyService;
use crate::api::refusals::RefusalLayer;
use crate::api::transport_status::TransportStatusLayer;
use crate::api::watch::Watchers;
use crate::api::{now_ms, NodeContext};
use crate::audit::refusals::Refusals;
use crate::auth::bearer::BearerAuth;
use crate::auth::layer::{Access, AuthLayer, Caller, Mtls};
use crate::auth::roles::Role;
use crate::config::Config;
use crate::ledger::{Command, CommandResult, SweepCmd};
use crate::limits;
use crate::metrics::{Metrics, RpcLayer};
use crate::raft::network::Network;
use crate::raft::service::RaftPeerService;
use crate::raft::Raft;
use crate::storage::{LogStore, StateMachine, StateReader};

/// The services of the API port that depend on the cluster: health
/// reports each of them (and "") as serving only while this node is part
/// of a cluster that can make progress.
pub const API_SERVICES: &[&str] = &[
    <GrantsServer<GrantsService> as NamedService>::NAME,
    <ClusterServer<ClusterService> as NamedService>::NAME,
    <PolicyServer<PolicyService> as NamedService>::NAME,
    <AuditServer<AuditService> as NamedService>::NAME,
];

/// The API port's tooling services, serving whatever the cluster's state:
/// health itself and reflection (v1 and v1alpha).
pub const TOOL_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)?;
    let node_key: crate::audit::keys::SharedKey = Arc::new(std::sync::RwLock::new(Arc::new(
        crate::audit::keys::load_or_create(&config.data_dir, config.node_id)?,
    )));
    let log_store = LogStore::open(&config.data_dir)?;
    let log_metrics = log_store.clone();
    let sm = StateMachine::open(&config.data_dir)?;
    let state = sm.reader();
    let audit_store = sm.audit_store();
    let sm_snapshot_dir = sm.snapshot_dir().to_path_buf();

    let raft_config = openraft::Config {
        cluster_name: "grant-ledger".into(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
        purge_batch_size: 256,
        // Without it, openraft stops a leader that sees a follower's log go
        // back (a wiped disk). docs/operations.md has the trade-off.
        allow_log_reversion: Some(config.allow_log_reversion),
        // Tell the replication tasks of a submitted entry at once. openraft
        // sends submitted, not yet flushed, entries either way (Raft's
        // parallel write); this only sends them sooner. Safe because of the
        // next option (docs/consistency.md).
        broadcast_submitted_on_append: Some(true),
        // A restarted leader is elected again, in a higher term, never
        // restored in its old one: it may have lost entries it had sent,
        // and would reuse their log ids (issue #23, docs/consistency.md).
        enable_leader_restore: Some(false),
        // A node that cannot win (back from a partition, restarted) asks
        // before it raises its term, so it does not depose a healthy leader.
        enable_pre_vote: Some(true),
        ..Default::default()
    }
    .validate()?;
    let (tls, access) = security(&config, state.clone())?;
    let peer_tls = tls.clone().map(|t| {
        let access = access.clone();
        let accept: AcceptServer =
            Arc::new(move |id: &str| access.has(&Caller::Spiffe(id.to_string()), Role::Peer));
        (t, accept)
    });
    let network = Network::new(
        Duration::from_millis(config.peer_rpc_timeout_ms),
        peer_tls.clone(),
    );
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        network.clone(),
        log_store,
        sm,
    )
    .await?;

    bootstrap(&config, &raft).await?;
    // A follower sends the leader what it cannot serve, as a node (its
    // certificate, the leader's verified as a peer's).
    let forwarder = Forwarder::new(raft.clone(), peer_tls);
    let ctx = NodeContext::new(config.clone(), raft.clone(), state, access.clone());
    let refusals = Arc::new(Refusals::new(config.node_id, config.refusal_window_ms));
    let batchers = Batchers::start(ctx.clone());
    let metrics = Metrics::new(log_metrics);
    // Bound here: a taken port fails start-up at once.
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics_addr {}: {e}", config.metrics_addr))?;
    let metrics_server = tokio::spawn(crate::metrics::serve(
        metrics_listener,
        metrics.clone(),
        ctx.clone(),
        batchers.clone(),
        shutdown.clone(),
    ));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(grant_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in API_SERVICES.iter().chain(TOOL_SERVICES) {
            b = b.with_service_name(*name);
        }
        b
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let mut api = tonic::transport::Server::builder().tcp_nodelay(true);
    let mut peer = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(t) = &tls {
        // With JWT bearer authentication a client may come without a
        // certificate; peers always need theirs.
        let optional = config.jwt_auth.is_some();
        api = api.tls_config(t.server_config().client_auth_optional(optional))?;
        peer = peer.tls_config(t.server_config())?;
    }
    // Metrics outermost: refused calls are counted and logged in their span.
    // Then tonic's own statuses in the API's terms, inside metrics so that
    // they are counted as the caller sees them.
    let api = api
        .layer(RpcLayer { metrics })
        .layer(TransportStatusLayer)
        .layer(AuthLayer {
            access: access.clone(),
            refusals: refusals.clone(),
        })
        .layer(ForwardLayer { forwarder })
        .layer(RefusalLayer {
            refusals: refusals.clone(),
        })
        .add_service(
            GrantsServer::new(GrantsService::new(
                ctx.clone(),
                batchers,
                node_key.clone(),
                Watchers::new(shutdown.clone()),
            ))
            .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::MESSAGE_BYTES_MAX),
        )
        .add_service(
            ClusterServer::new(ClusterService::new(ctx.clone()))
                .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::MESSAGE_BYTES_MAX),
        )
        .add_service(
            PolicyServer::new(PolicyService::new(ctx.clone()))
                .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::MESSAGE_BYTES_MAX),
        )
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AuditServer::new(AuditService::new(ctx.clone(), node_key.clone()))
                .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::MESSAGE_BYTES_MAX),
        )
        .serve_with_shutdown(config.api_addr, wait(shutdown.clone()));
    // The peer service outlives the API during shutdown: a leader hands
    // over while still a member that answers its peers.
    let (peer_stop, peer_stop_rx) = watch::channel(false);
    let peer = peer
        .layer(AuthLayer {
            access: access.clone(),
            refusals: refusals.clone(),
        })
        .add_service(
            RaftPeerServer::new(RaftPeerService::new(
                raft.clone(),
                ctx.state.clone(),
                sm_snapshot_dir,
                refusals.clone(),
            ))
            .max_decoding_message_size(limits::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::PEER_MESSAGE_BYTES_MAX),
        )
        .serve_with_shutdown(config.raft_addr, wait(peer_stop_rx));
    let api = tokio::spawn(api);
    let peer = tokio::spawn(peer);
    let sweeper = tokio::spawn(sweep_loop(ctx.clone(), shutdown.clone()));
    let health = tokio::spawn(crate::api::health::run(
        health_reporter,
        raft.clone(),
        config.election_timeout_max_ms,
        API_SERVICES,
        TOOL_SERVICES,
        shutdown.clone(),
    ));
    let audit_fill = tokio::spawn(crate::audit::fill::run(
        config.node_id,
        raft.clone(),
        ctx.state.clone(),
        audit_store,
        network.clone(),
        shutdown.clone(),
    ));
    let refusal_recorder = tokio::spawn(record_refusals(
        refusals,
        ctx.clone(),
        network,
        shutdown.clone(),
    ));
    let publisher = tokio::spawn(crate::audit::publisher::run(
        ctx.clone(),
        node_key,
        shutdown.clone(),
    ));
    tracing::info!(node_id = config.node_id, api = %config.api_addr, raft = %config.raft_addr, "grantd serving");

    let _ = shutdown.wait_for(|s| *s).await;
    tracing::info!("shutting down: no new requests, finishing those in flight");
    sweeper.abort();
    health.abort();
    refusal_recorder.abort();
    audit_fill.abort();
    publisher.abort();
    api.await??;
    if raft.is_leader() {
        let wait = Duration::from_millis(config.election_timeout_max_ms * 2);
        match crate::raft::leadership::hand_over(&raft, None, wait).await {
            Ok((to, term)) => tracing::info!(to, term, "leadership handed over"),
            Err(e) => {
                tracing::warn!(error = %e, "leadership not handed over; the others elect after a timeout")
            }
        }
    }
    let _ = peer_stop.send(true);
    peer.await??;
    metrics_server.await??;
    raft.shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// The node's TLS material and how its listeners admit callers. Plaintext
/// (`insecure`, loopback only: the config checks) is said loudly.
fn security(config: &Config, state: StateReader) -> anyhow::Result<(Option<Tls>, Arc<Access>)> {
    let Some(files) = config.tls_files() else {
        tracing::warn!(
            "INSECURE: serving plaintext without authentication, every caller holds every \
             role; for development on loopback only"
        );
        return Ok((None, Arc::new(Access::Insecure)));
    };
    let tls = Tls::load(&files)?;
    let bearer = match &config.jwt_auth {
        Some(j) => {
            tracing::info!(issuer = %j.issuer, audience = %j.audience, "JWT bearer authentication accepted on the API");
            Some(BearerAuth::load(j).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let mtls = Mtls::new(
        tls.trust_domain().to_string(),
        config.roles.clone(),
        state,
        bearer,
    )
    .map_err(anyhow::Error::msg)?;
    let access = Access::Mtls(Box::new(mtls));
    if !access.has(&Caller::Spiffe(tls.id.clone()), Role::Peer) {
        anyhow::bail!(
            "this node's certificate names {}, which roles.peer does not match: \
             its peers would refuse it",
            tls.id
        );
    }
    tracing::info!(id = %tls.id, "mTLS on the API and peer listeners");
    Ok((Some(tls), Arc::new(access)))
}

/// With `initial_members` set, a node that has never been part of a cluster
/// initialises it with exactly those voters. Every member may do so with the
/// same list: the first membership entry is then the same everywhere, and
/// the election picks one leader (openraft's `initialize` contract).
async fn bootstrap(config: &Config, raft: &Raft) -> anyhow::Result<()> {
    if config.initial_members.is_empty() || raft.is_initialized().await? {
        return Ok(());
    }
    let mut members = std::collections::BTreeMap::new();
    for m in config.initial_member_nodes()? {
        let (id, info) = crate::api::cluster::node_info(&m).map_err(|e| anyhow::anyhow!("{e}"))?;
        members.insert(id, info);
    }
    tracing::info!(voters = ?members.keys().collect::<Vec<_>>(), "initialising a new cluster from initial_members");
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        // Someone else's entry got here first: the cluster exists.
        Err(openraft::errors::RaftError::APIError(e)) => {
            tracing::info!(reason = %e, "cluster already initialised");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("initialise: {e}")),
    }
}

/// Hand refused calls on into the audit chain: the leader proposes them,
/// a follower sends them to the leader (audit::refusals).
async fn record_refusals(
    refusals: Arc<Refusals>,
    ctx: NodeContext,
    network: Network,
    shutdown: watch::Receiver<bool>,
) {
    let deliver = |batch: Vec<crate::ledger::Refusal>| {
        let (ctx, network) = (ctx.clone(), network.clone());
        async move {
            if ctx.raft.is_leader() {
                let cmd = Command::Refusals {
                    now_ms: now_ms(),
                    refusals: batch,
                };
                return ctx
                    .propose(cmd)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
            }
            let leader = {
                use openraft::async_runtime::WatchReceiver;
                let m = ctx.raft.metrics().borrow_watched().clone();
                m.current_leader
                    .and_then(|id| m.membership_config.membership().get_node(&id).cloned())
            };
            let Some(leader) = leader else {
                return Err("no leader known".to_string());
            };
            network.send_refusals(&leader.raft_addr, &batch).await
        }
    };
    refusals.run(deliver, shutdown).await
}

async fn wait(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// While this node leads, commit a sweep of expired grants (and of tasks
/// past their deadline) every interval,
/// and back to back while each one retires a full batch.
/// Expired grants already deny at check time; the sweep retires them from
/// the active indexes and records their expiry, and removes retired grants
/// from the state once past their expiry and `clock_skew_margin_ms` (closed
/// tasks once past their deadline and it), and the checkpoints that sign
/// fewer entries than the audit chain's start.
async fn sweep_loop(ctx: NodeContext, shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(ctx.config.sweep_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        tick.tick().await;
        if !ctx.raft.is_leader() {
            continue;
        }
        let now = now_ms();
        let purge_before_ms = now.saturating_sub(ctx.config.clock_skew_margin_ms as i64);
        let due = ctx.state.has_expired(now).unwrap_or(false)
            || ctx
                .state
                .has_retired_before(purge_before_ms)
                .unwrap_or(false)
            || ctx.state.has_task_past_deadline(now).unwrap_or(false)
            || ctx
                .state
                .has_old_dedupe(now - limits::DEDUPE_WINDOW_MS)
                .unwrap_or(false)
            || ctx
                .state
                .has_closed_task_before(purge_before_ms)
                .unwrap_or(false)
            || ctx
                .state
                .chain_start()
                .and_then(|s| ctx.state.has_checkpoint_below(s.seq))
                .unwrap_or(false);
        if !due {
            continue;
        }
        let sweep = SweepCmd {
            now_ms: now,
            purge_before_ms,
        };
        match ctx.propose(Command::Sweep(sweep)).await {
            Ok((
                CommandResult::Swept {
                    expired,
                    tasks_expired,
                    dedupe_dropped,
                    purged,
                    tasks_purged,
                    checkpoints_dropped,
                },
                index,
            )) if expired as usize == limits::SWEEP_GRANTS_MAX
                || tasks_expired as usize == limits::SWEEP_TASKS_MAX
                || dedupe_dropped as usize == limits::SWEEP_DEDUPE_MAX
                || purged as usize == limits::SWEEP_PURGE_MAX
                || tasks_purged as usize == limits::SWEEP_PURGE_MAX
                || checkpoints_dropped as usize == limits::SWEEP_PURGE_MAX =>
            {
                // A full batch: more is due. Sweep again soon rather than
                // retire SWEEP_GRANTS_MAX a tick (a million grants expiring
                // together would take a quarter of an hour), one bounded
                // entry at a time with a pause, so that checks interleave.
                tracing::debug!(
                    expired,
                    tasks_expired,
                    dedupe_dropped,
                    purged,
                    tasks_purged,
                    checkpoints_dropped,
                    index,
                    "full sweep applied"
                );
                tick.reset_after(Duration::from_millis(limits::SWEEP_BACKLOG_PAUSE_MS));
            }
            Ok((r, index)) => tracing::debug!(?r, index, "sweep applied"),
            Err(e) => tracing::debug!(error = %e, "sweep not applied"),
        }
    }
}
