//! Prometheus metrics on their own HTTP port (`metrics_addr`, GET /metrics),
//! and the tower layer that counts and times every public RPC and gives it a
//! request id for the log.
//!
//! Raft and state figures are read when scraped; events between scrapes
//! (leader changes, snapshots) are followed by a task that watches
//! openraft's metrics. The checkpoint's age counts from the scrape that
//! first saw it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use openraft::async_runtime::WatchReceiver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tonic::codegen::http;
use tracing::Instrument;

use crate::api::batcher::Batchers;
use crate::api::NodeContext;
use crate::limits;
use crate::storage::LogStore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    /// "grantledger.v1.Grants/Check"; "other" for paths outside our services.
    rpc: String,
    /// The gRPC status code name ("Ok", "InvalidArgument", ...).
    outcome: String,
}

/// Figures sampled from Raft and the state at scrape time.
#[derive(Default)]
struct Sampled {
    term: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge,
    committed_index: Gauge,
    applied_index: Gauge,
    log_entries: Gauge,
    snapshot_index: Gauge,
    snapshot_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    proposals_in_flight: Gauge,
    checks_queued: Gauge,
    issues_queued: Gauge,
    revokes_queued: Gauge,
    grants_active: Gauge,
    audit_entries: Gauge,
    audit_store_bytes: Gauge,
    audit_missing_entries: Gauge,
    audit_chain_start: Gauge,
    audit_checkpoint_size: Gauge,
    checkpoint_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    log_disk_bytes: Gauge,
    log_syncs: Gauge,
    log_sync_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    log_sync_max_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    log_cache_bytes: Gauge,
}

/// When the watched figures last moved.
struct Moments {
    snapshot: (u64, Instant),
    checkpoint: (u64, Instant),
}

pub struct Metrics {
    registry: Registry,
    log: LogStore,
    requests: Family<RpcLabels, Counter>,
    latency: Family<RpcLabels, Histogram>,
    leader_changes: Counter,
    sampled: Sampled,
    moments: Mutex<Moments>,
}

impl Metrics {
    pub fn new(log: LogStore) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("grantd");
        let requests = Family::<RpcLabels, Counter>::default();
        // 100 µs to ~3.3 s, doubling.
        let latency = Family::<RpcLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        let leader_changes = Counter::default();
        let s = Sampled::default();
        registry.register(
            "rpc_requests",
            "Public API requests by RPC and outcome",
            requests.clone(),
        );
        registry.register(
            "rpc_latency_seconds",
            "Public API latency by RPC and outcome, until the response headers",
            latency.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Times this node saw the leader change (including to none)",
            leader_changes.clone(),
        );
        let gauges: [(&str, &str, &Gauge); 19] = [
            ("raft_term", "Current Raft term", &s.term),
            ("raft_is_leader", "1 if this node leads", &s.is_leader),
            (
                "raft_last_log_index",
                "Last index in this node's log",
                &s.last_log_index,
            ),
            (
                "raft_committed_index",
                "Highest index known committed",
                &s.committed_index,
            ),
            (
                "raft_applied_index",
                "Highest index applied to the state",
                &s.applied_index,
            ),
            (
                "raft_log_entries",
                "Entries in the log not yet purged behind a snapshot",
                &s.log_entries,
            ),
            (
                "raft_snapshot_index",
                "Index of the last snapshot",
                &s.snapshot_index,
            ),
            (
                "proposals_in_flight",
                "Writes proposed by this node and not yet applied",
                &s.proposals_in_flight,
            ),
            (
                "checks_queued",
                "Checks waiting for the next group-commit batch",
                &s.checks_queued,
            ),
            (
                "issues_queued",
                "Issues waiting for the next group-commit batch",
                &s.issues_queued,
            ),
            (
                "revokes_queued",
                "Revokes waiting for the next group-commit batch",
                &s.revokes_queued,
            ),
            (
                "grants_active",
                "Grants issued and not yet revoked or retired by the sweep",
                &s.grants_active,
            ),
            (
                "audit_entries",
                "Entries in the audit chain (tree size)",
                &s.audit_entries,
            ),
            (
                "audit_store_bytes",
                "Bytes the audit store (entry segments, tiles, watch index) holds on disk",
                &s.audit_store_bytes,
            ),
            (
                "audit_missing_entries",
                "Entries at the start of the audit chain this node lacks: it began from a snapshot and is fetching them from a peer",
                &s.audit_missing_entries,
            ),
            (
                "audit_chain_start",
                "The first entry of the audit chain kept: the ones before it were pruned (0: none)",
                &s.audit_chain_start,
            ),
            (
                "raft_log_disk_bytes",
                "Bytes the Raft log's chunk files take on disk",
                &s.log_disk_bytes,
            ),
            (
                "raft_log_syncs",
                "fdatasyncs of the Raft log since this node started (one per group commit)",
                &s.log_syncs,
            ),
            (
                "raft_log_cache_bytes",
                "Bytes of recent log entries held in memory",
                &s.log_cache_bytes,
            ),
        ];
        for (name, help, g) in gauges {
            registry.register(name, help, g.clone());
        }
        registry.register(
            "audit_checkpoint_size",
            "Tree size of the latest signed checkpoint",
            s.audit_checkpoint_size.clone(),
        );
        let seconds: [(&str, &str, &Gauge<f64, std::sync::atomic::AtomicU64>); 4] = [
            (
                "raft_snapshot_age_seconds",
                "Seconds since this node's snapshot index last moved (or since start)",
                &s.snapshot_age,
            ),
            (
                "raft_log_sync_seconds",
                "Seconds spent in fdatasyncs of the Raft log since this node started",
                &s.log_sync_seconds,
            ),
            (
                "raft_log_sync_max_seconds",
                "The longest fdatasync of the Raft log since this node started",
                &s.log_sync_max_seconds,
            ),
            (
                "audit_checkpoint_age_seconds",
                "Seconds since the latest signed checkpoint last moved (or since start)",
                &s.checkpoint_age,
            ),
        ];
        for (name, help, g) in seconds {
            registry.register(name, help, g.clone());
        }
        let now = Instant::now();
        Arc::new(Metrics {
            registry,
            log,
            requests,
            latency,
            leader_changes,
            sampled: s,
            moments: Mutex::new(Moments {
                snapshot: (0, now),
                checkpoint: (0, now),
            }),
        })
    }

    fn observe(&self, rpc: String, outcome: String, seconds: f64) {
        let l = RpcLabels { rpc, outcome };
        self.requests.get_or_create(&l).inc();
        self.latency.get_or_create(&l).observe(seconds);
    }

    /// Sample the current figures and render the text exposition format.
    fn render(&self, ctx: &NodeContext, batchers: &Batchers) -> String {
        let m = ctx.raft.metrics().borrow_watched().clone();
        let s = &self.sampled;
        let idx = |l: Option<&openraft::alias::LogIdOf<crate::raft::TypeConfig>>| {
            l.map(|l| l.index as i64).unwrap_or(0)
        };
        s.term.set(m.current_term as i64);
        s.is_leader.set((m.current_leader == Some(m.id)) as i64);
        s.last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
        s.committed_index.set(idx(m.local_committed.as_ref()));
        s.applied_index.set(idx(m.last_applied.as_ref()));
        let purged = m.purged.as_ref().map(|l| l.index as i64 + 1).unwrap_or(0);
        s.log_entries
            .set((m.last_log_index.map(|i| i as i64 + 1).unwrap_or(0) - purged).max(0));
        let snapshot = idx(m.snapshot.as_ref());
        s.snapshot_index.set(snapshot);
        s.proposals_in_flight.set(ctx.proposals_in_flight() as i64);
        s.checks_queued.set(batchers.checks.queued() as i64);
        s.issues_queued.set(batchers.issues.queued() as i64);
        s.revokes_queued.set(batchers.revokes.queued() as i64);
        s.grants_active.set(ctx.state.active_grants());
        let chain_size = ctx.state.chain().map(|c| c.size()).unwrap_or(0);
        s.audit_entries.set(chain_size as i64);
        let files = ctx.state.audit_files();
        s.audit_store_bytes.set(files.bytes() as i64);
        let base = files.base();
        s.audit_missing_entries.set(base.missing_entries() as i64);
        s.audit_chain_start.set(base.start as i64);
        let cp = ctx
            .state
            .latest_checkpoint()
            .ok()
            .flatten()
            .map(|c| c.0)
            .unwrap_or(0);
        s.audit_checkpoint_size.set(cp as i64);
        let log = self.log.stats();
        s.log_disk_bytes.set(log.disk_bytes as i64);
        s.log_syncs.set(log.syncs as i64);
        s.log_sync_seconds.set(log.sync_seconds);
        s.log_sync_max_seconds.set(log.sync_max_seconds);
        s.log_cache_bytes.set(log.cache_bytes as i64);
        {
            let mut mo = self.moments.lock().expect("moments lock");
            let now = Instant::now();
            // The snapshot moment is kept by `follow`, which sees every
            // change; checkpoints live in the state, so they are seen here.
            if mo.checkpoint.0 != cp {
                mo.checkpoint = (cp, now);
            }
            s.snapshot_age
                .set(now.duration_since(mo.snapshot.1).as_secs_f64());
            s.checkpoint_age
                .set(now.duration_since(mo.checkpoint.1).as_secs_f64());
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

/// Serve GET /metrics on `metrics_addr` until shutdown; also follows leader
/// changes and snapshot moments between scrapes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ctx: NodeContext,
    batchers: Batchers,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use axum::routing::get;
    tokio::spawn(follow(metrics.clone(), ctx.clone(), shutdown.clone()));
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (metrics, ctx, batchers) = (metrics.clone(), ctx.clone(), batchers.clone());
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(&ctx, &batchers),
                )
            }
        }),
    );
    let mut rx = shutdown;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await?;
    Ok(())
}

/// Count leader changes and note when the snapshot moves, following every
/// change of openraft's metrics.
async fn follow(metrics: Arc<Metrics>, ctx: NodeContext, shutdown: watch::Receiver<bool>) {
    let mut rx = ctx.raft.metrics();
    let mut leader = rx.borrow_watched().current_leader;
    while !*shutdown.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
        let m = rx.borrow_watched().clone();
        if m.current_leader != leader {
            leader = m.current_leader;
            metrics.leader_changes.inc();
        }
        let snapshot = m.snapshot.map(|l| l.index).unwrap_or(0);
        let mut mo = metrics.moments.lock().expect("moments lock");
        if mo.snapshot.0 != snapshot {
            mo.snapshot = (snapshot, Instant::now());
        }
    }
}

/// The tower layer on the public API server.
#[derive(Clone)]
pub struct RpcLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The metadata key a caller may set to name its request in the logs; the
/// server echoes it (or the id it made up) in the response headers.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

fn rpc_name(path: &str) -> String {
    let name = path.trim_start_matches('/');
    let known = ["grantledger.v1.", "grpc.health.", "grpc.reflection."];
    if name.len() <= limits::RPC_NAME_BYTES_MAX && known.iter().any(|p| name.starts_with(p)) {
        name.to_string()
    } else {
        "other".to_string()
    }
}

fn request_id<B>(req: &http::Request<B>) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= limits::REQUEST_ID_BYTES_MAX
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 8]>()))
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = rpc_name(req.uri().path());
        let id = request_id(&req);
        // `caller` is filled in by the auth layer, which runs inside.
        let span = tracing::info_span!(
            "rpc",
            rpc = %rpc,
            request_id = %id,
            caller = tracing::field::Empty
        );
        let started = Instant::now();
        let fut = span
            .in_scope(|| self.inner.call(req))
            .instrument(span.clone());
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let mut res = fut.await;
            let seconds = started.elapsed().as_secs_f64();
            let outcome = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .map(|v| format!("{:?}", tonic::Code::from_bytes(v.as_bytes())))
                    .unwrap_or_else(|| "Ok".into()),
                Err(_) => "TransportError".into(),
            };
            let rpc = if outcome == "Unimplemented" {
                "other".to_string()
            } else {
                rpc
            };
            span.in_scope(|| {
                if outcome == "Ok" {
                    tracing::debug!(outcome, ms = seconds * 1e3, "request done")
                } else {
                    tracing::info!(outcome, ms = seconds * 1e3, "request failed")
                }
            });
            if let Ok(r) = &mut res {
                if let Ok(v) = http::HeaderValue::from_str(&id) {
                    r.headers_mut().insert(REQUEST_ID_HEADER, v);
                }
            }
            metrics.observe(rpc, outcome, seconds);
            res
        })
    }
}
