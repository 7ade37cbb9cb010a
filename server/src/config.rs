//! Configuration: a TOML file, then `GRANTD_*` environment variables, then
//! flags (each later source wins), validated here into [`Config`], which is
//! what the rest of the server reads. Nothing else looks at the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::auth::bearer::JwtAuthConfig;
use crate::auth::roles::{RoleMap, RolesConfig};
use crate::limits::{self, CHECK_BATCH_MAX_CEILING};
use grant_proto::tls::TlsFiles;

#[derive(Parser, Debug, Default)]
#[command(
    name = "grantd",
    version,
    about = "grant-ledger node: a Raft-replicated store of task-scoped grants"
)]
pub struct Args {
    /// TOML config file; its keys are the long flag names with '_' for '-'.
    #[arg(long, env = "GRANTD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Without a command, run the node.
    #[command(subcommand)]
    pub command: Option<Sub>,
    /// This node's id in the cluster (a positive integer, unique, never reused).
    #[arg(long, env = "GRANTD_NODE_ID")]
    pub node_id: Option<u64>,
    /// Take the node id from this host's name instead: the number after its
    /// last '-', plus one (Kubernetes StatefulSet pod grantd-0 is node 1).
    #[arg(long, env = "GRANTD_NODE_ID_FROM_HOSTNAME")]
    pub node_id_from_hostname: Option<bool>,
    /// Bootstrap: ID=RAFT_ADDR,API_ADDR of each voter of a new cluster
    /// (repeat the flag, or separate with ';' in the environment). A node
    /// whose data directory is new initialises the cluster with exactly
    /// these voters, so every member may carry the same list; a node that
    /// already holds a log ignores it. Leave it out when adding or
    /// replacing a node (docs/operations.md).
    #[arg(
        long = "initial-member",
        env = "GRANTD_INITIAL_MEMBERS",
        value_delimiter = ';'
    )]
    pub initial_members: Vec<String>,
    /// Directory holding this node's Raft log and state.
    #[arg(long, env = "GRANTD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the public gRPC API (Grants, Cluster) [default: 127.0.0.1:7101].
    #[arg(long, env = "GRANTD_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Address of the internal Raft service that peers connect to [default: 127.0.0.1:7201].
    #[arg(long, env = "GRANTD_RAFT_ADDR")]
    pub raft_addr: Option<SocketAddr>,
    /// Leader heartbeat interval [default: 100].
    #[arg(long, env = "GRANTD_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Lower bound of the randomised election timeout [default: 600].
    #[arg(long, env = "GRANTD_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the randomised election timeout [default: 1200].
    #[arg(long, env = "GRANTD_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Timeout of one Raft RPC to a peer; snapshot transfers, which take as
    /// long as their size needs, are watched by keep-alive pings instead [default: 2000].
    #[arg(long, env = "GRANTD_PEER_RPC_TIMEOUT_MS")]
    pub peer_rpc_timeout_ms: Option<u64>,
    /// Build a snapshot after this many log entries since the last [default: 10000].
    #[arg(long, env = "GRANTD_SNAPSHOT_LOGS_SINCE_LAST")]
    pub snapshot_logs_since_last: Option<u64>,
    /// Log entries kept behind a snapshot for slow followers [default: 1000].
    #[arg(long, env = "GRANTD_LOGS_KEPT_AFTER_SNAPSHOT")]
    pub logs_kept_after_snapshot: Option<u64>,
    /// TTL of a grant whose Issue does not name one [default: 300].
    #[arg(long, env = "GRANTD_TTL_SECONDS_DEFAULT")]
    pub ttl_seconds_default: Option<u64>,
    /// Longest TTL an Issue or a Renew may ask for, and the longest a grant
    /// may live, renewals included [default: 3600].
    #[arg(long, env = "GRANTD_TTL_SECONDS_MAX")]
    pub ttl_seconds_max: Option<u64>,
    /// Active grants one subject (workload) may hold at once; 0: no quota
    /// [default: 1000].
    #[arg(long, env = "GRANTD_ACTIVE_GRANTS_PER_SUBJECT_MAX")]
    pub active_grants_per_subject_max: Option<u64>,
    /// Active grants one task may hold at once; 0: no quota [default: 1000].
    #[arg(long, env = "GRANTD_ACTIVE_GRANTS_PER_TASK_MAX")]
    pub active_grants_per_task_max: Option<u64>,
    /// Issues and delegations per second one caller may make on this node
    /// (the leader takes every write); 0: no limit [default: 0].
    #[arg(long, env = "GRANTD_ISSUE_RATE_PER_CALLER")]
    pub issue_rate_per_caller: Option<u32>,
    /// Issues and delegations one caller may make at once above that rate
    /// [default: 2 x the rate].
    #[arg(long, env = "GRANTD_ISSUE_BURST_PER_CALLER")]
    pub issue_burst_per_caller: Option<u32>,
    /// Deepest delegation: a grant delegated from an issued grant is at
    /// depth 1, one delegated from that at 2, ... [default: 3].
    #[arg(long, env = "GRANTD_DELEGATION_DEPTH_MAX")]
    pub delegation_depth_max: Option<u32>,
    /// Deadline of a task whose Begin does not name one [default: 86400].
    #[arg(long, env = "GRANTD_TASK_DEADLINE_SECONDS_DEFAULT")]
    pub task_deadline_seconds_default: Option<u64>,
    /// Furthest deadline a Begin may ask for [default: 604800].
    #[arg(long, env = "GRANTD_TASK_DEADLINE_SECONDS_MAX")]
    pub task_deadline_seconds_max: Option<u64>,
    /// Most checks batched into one log entry [default: 256].
    #[arg(long, env = "GRANTD_CHECK_BATCH_MAX")]
    pub check_batch_max: Option<usize>,
    /// How often the leader commits a sweep of expired grants [default: 1000];
    /// a sweep that retires a full batch is followed shortly by the next.
    #[arg(long, env = "GRANTD_SWEEP_INTERVAL_MS")]
    pub sweep_interval_ms: Option<u64>,
    /// Refuse an Issue or BeginTask that says no intent [default: true].
    /// Off (for development), the intent recorded is INTENT_NOT_GIVEN, so
    /// that the audit entry says why none is there.
    #[arg(long, env = "GRANTD_INTENT_REQUIRED")]
    pub intent_required: Option<bool>,
    /// Let a follower whose disk was wiped rejoin (its log reverts to empty
    /// and it is sent a snapshot) instead of stopping the leader [default: true].
    #[arg(long, env = "GRANTD_ALLOW_LOG_REVERSION")]
    pub allow_log_reversion: Option<bool>,
    /// How often the leader signs and commits an audit checkpoint when the log grew [default: 1000].
    #[arg(long, env = "GRANTD_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// The window of the per-caller rate of refused calls recorded one by one; beyond it they are counted into one entry per caller and method when the window closes [default: 60000].
    #[arg(long, env = "GRANTD_REFUSAL_WINDOW_MS")]
    pub refusal_window_ms: Option<u64>,
    /// How long a grant stays in the state after its expiry, for tool servers whose clocks run behind: then it leaves the state (its history stays in the audit chain) [default: 300000].
    #[arg(long, env = "GRANTD_CLOCK_SKEW_MARGIN_MS")]
    pub clock_skew_margin_ms: Option<u64>,
    /// The origin line of audit checkpoints: names this log; the same on every node [default: grant-ledger].
    #[arg(long, env = "GRANTD_AUDIT_ORIGIN")]
    pub audit_origin: Option<String>,
    /// Log filter in tracing's EnvFilter syntax [default: info].
    #[arg(long, env = "GRANTD_LOG")]
    pub log: Option<String>,
    /// Log line format: "text" or "json" (one JSON object per line) [default: text].
    #[arg(long, env = "GRANTD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Address of the Prometheus metrics endpoint (HTTP, GET /metrics)
    /// [default: 127.0.0.1:7301].
    #[arg(long, env = "GRANTD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// CA bundle (PEM) that every client and peer certificate must chain to.
    #[arg(long, env = "GRANTD_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// This node's certificate (PEM), served on both listeners and shown to
    /// peers; its one URI SAN is the node's SPIFFE ID.
    #[arg(long, env = "GRANTD_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of tls_cert_file (PEM).
    #[arg(long, env = "GRANTD_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Serve plaintext with no authentication and every role open to
    /// everyone: development only, and only on loopback addresses
    /// [default: false].
    #[arg(long, env = "GRANTD_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Seed this node's new, empty data directory from a backup file
    /// (`grantctl snapshot save`) as one member of a new cluster. Run it for
    /// every member with the same backup and member list, then start the
    /// nodes: they elect a leader on their own (no `cluster init`). Node
    /// options (--node-id, --data-dir, --config) go before `restore`.
    Restore {
        /// The backup file.
        #[arg(long)]
        backup: PathBuf,
        /// ID=RAFT_ADDR,API_ADDR of each voter of the new cluster; repeat.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
}

/// `grantd-2` -> 3: the StatefulSet ordinal after the last '-', plus one.
fn id_from_hostname() -> Result<u64, ConfigError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| ConfigError::Invalid("node_id_from_hostname", e.to_string()))?;
    let host = host.trim();
    host.rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| {
            ConfigError::Invalid(
                "node_id_from_hostname",
                format!("host name {host:?} does not end in -<number>"),
            )
        })
}

/// How log lines are written to stderr.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The file form: every key optional, unknown keys refused.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    node_id_from_hostname: Option<bool>,
    initial_members: Option<Vec<String>>,
    data_dir: Option<PathBuf>,
    api_addr: Option<SocketAddr>,
    raft_addr: Option<SocketAddr>,
    heartbeat_interval_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    peer_rpc_timeout_ms: Option<u64>,
    snapshot_logs_since_last: Option<u64>,
    logs_kept_after_snapshot: Option<u64>,
    ttl_seconds_default: Option<u64>,
    ttl_seconds_max: Option<u64>,
    active_grants_per_subject_max: Option<u64>,
    active_grants_per_task_max: Option<u64>,
    issue_rate_per_caller: Option<u32>,
    issue_burst_per_caller: Option<u32>,
    delegation_depth_max: Option<u32>,
    task_deadline_seconds_default: Option<u64>,
    task_deadline_seconds_max: Option<u64>,
    check_batch_max: Option<usize>,
    sweep_interval_ms: Option<u64>,
    intent_required: Option<bool>,
    allow_log_reversion: Option<bool>,
    checkpoint_interval_ms: Option<u64>,
    refusal_window_ms: Option<u64>,
    clock_skew_margin_ms: Option<u64>,
    audit_origin: Option<String>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    metrics_addr: Option<SocketAddr>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    insecure: Option<bool>,
    roles: Option<RolesConfig>,
    jwt_auth: Option<JwtAuthConfig>,
}

/// The validated configuration.
#[derive(Serialize, Debug, Clone)]
pub struct Config {
    pub node_id: u64,
    pub node_id_from_hostname: bool,
    pub initial_members: Vec<String>,
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub peer_rpc_timeout_ms: u64,
    pub snapshot_logs_since_last: u64,
    pub logs_kept_after_snapshot: u64,
    pub ttl_seconds_default: u64,
    pub ttl_seconds_max: u64,
    pub active_grants_per_subject_max: u64,
    pub active_grants_per_task_max: u64,
    pub issue_rate_per_caller: u32,
    pub issue_burst_per_caller: u32,
    pub delegation_depth_max: u32,
    pub task_deadline_seconds_default: u64,
    pub task_deadline_seconds_max: u64,
    pub check_batch_max: usize,
    pub sweep_interval_ms: u64,
    pub intent_required: bool,
    pub allow_log_reversion: bool,
    pub checkpoint_interval_ms: u64,
    pub refusal_window_ms: u64,
    /// A grant leaves the state this long after its expiry.
    pub clock_skew_margin_ms: u64,
    pub audit_origin: String,
    pub log: String,
    pub log_format: LogFormat,
    pub metrics_addr: SocketAddr,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub insecure: bool,
    /// The bootstrap role mapping (`[roles]` in the file only).
    pub roles: RolesConfig,
    /// JWT bearer authentication (`[jwt_auth]` in the file only).
    pub jwt_auth: Option<JwtAuthConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("missing setting {0} (flag --{1}, env {2}, or key {0} in the config file)")]
    Missing(&'static str, &'static str, &'static str),
    #[error("invalid setting {0}: {1}")]
    Invalid(&'static str, String),
}

impl Config {
    /// Merge file, environment and flags, then validate.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let mut f =
                    toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                // TLS and JWKS files named in the file are found beside it,
                // so a directory of certificates and its config move together.
                let base = path.parent().unwrap_or(std::path::Path::new("."));
                let jwks = f.jwt_auth.as_mut().map(|j| &mut j.jwks_file);
                for p in [
                    &mut f.tls_ca_file,
                    &mut f.tls_cert_file,
                    &mut f.tls_key_file,
                ]
                .into_iter()
                .flatten()
                .chain(jwks)
                {
                    if p.is_relative() {
                        *p = base.join(&*p);
                    }
                }
                f
            }
            None => FileConfig::default(),
        };
        macro_rules! pick {
            ($f:ident, $default:expr) => {
                args.$f.clone().or(file.$f.clone()).unwrap_or($default)
            };
        }
        let node_id_from_hostname = pick!(node_id_from_hostname, false);
        let node_id = if node_id_from_hostname {
            id_from_hostname()?
        } else {
            args.node_id.or(file.node_id).ok_or(ConfigError::Missing(
                "node_id",
                "node-id",
                "GRANTD_NODE_ID",
            ))?
        };
        let initial_members = if args.initial_members.is_empty() {
            file.initial_members.clone().unwrap_or_default()
        } else {
            args.initial_members.clone()
        };
        let data_dir =
            args.data_dir
                .clone()
                .or(file.data_dir.clone())
                .ok_or(ConfigError::Missing(
                    "data_dir",
                    "data-dir",
                    "GRANTD_DATA_DIR",
                ))?;
        let c = Config {
            node_id,
            node_id_from_hostname,
            initial_members,
            data_dir,
            api_addr: pick!(api_addr, "127.0.0.1:7101".parse().unwrap()),
            raft_addr: pick!(raft_addr, "127.0.0.1:7201".parse().unwrap()),
            heartbeat_interval_ms: pick!(heartbeat_interval_ms, 100),
            election_timeout_min_ms: pick!(election_timeout_min_ms, 600),
            election_timeout_max_ms: pick!(election_timeout_max_ms, 1200),
            peer_rpc_timeout_ms: pick!(peer_rpc_timeout_ms, 2000),
            snapshot_logs_since_last: pick!(snapshot_logs_since_last, 10_000),
            logs_kept_after_snapshot: pick!(logs_kept_after_snapshot, 1000),
            ttl_seconds_default: pick!(ttl_seconds_default, 300),
            ttl_seconds_max: pick!(ttl_seconds_max, 3600),
            active_grants_per_subject_max: pick!(active_grants_per_subject_max, 1000),
            active_grants_per_task_max: pick!(active_grants_per_task_max, 1000),
            issue_rate_per_caller: pick!(issue_rate_per_caller, 0),
            issue_burst_per_caller: pick!(
                issue_burst_per_caller,
                2 * pick!(issue_rate_per_caller, 0)
            ),
            delegation_depth_max: pick!(delegation_depth_max, 3),
            task_deadline_seconds_default: pick!(task_deadline_seconds_default, 86_400),
            task_deadline_seconds_max: pick!(task_deadline_seconds_max, 604_800),
            check_batch_max: pick!(check_batch_max, 256),
            sweep_interval_ms: pick!(sweep_interval_ms, 1000),
            intent_required: pick!(intent_required, true),
            allow_log_reversion: pick!(allow_log_reversion, true),
            checkpoint_interval_ms: pick!(checkpoint_interval_ms, 1000),
            refusal_window_ms: pick!(refusal_window_ms, 60_000),
            clock_skew_margin_ms: pick!(clock_skew_margin_ms, 300_000),
            audit_origin: pick!(audit_origin, "grant-ledger".to_string()),
            log: pick!(log, "info".to_string()),
            log_format: pick!(log_format, LogFormat::Text),
            metrics_addr: pick!(metrics_addr, "127.0.0.1:7301".parse().unwrap()),
            tls_ca_file: args.tls_ca_file.clone().or(file.tls_ca_file.clone()),
            tls_cert_file: args.tls_cert_file.clone().or(file.tls_cert_file.clone()),
            tls_key_file: args.tls_key_file.clone().or(file.tls_key_file.clone()),
            insecure: pick!(insecure, false),
            roles: file.roles.clone().unwrap_or_default(),
            jwt_auth: file.jwt_auth.clone(),
        };
        c.validate()?;
        if args.command.is_none() {
            c.validate_security()?;
        }
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |k, m: String| Err(ConfigError::Invalid(k, m));
        if self.node_id == 0 {
            return bad("node_id", "must be a positive integer".into());
        }
        if !self.initial_members.is_empty() {
            let members = self.initial_member_nodes()?;
            if !members.iter().any(|m| m.id == self.node_id) {
                return bad(
                    "initial_members",
                    format!("must include this node ({})", self.node_id),
                );
            }
        }
        if self.api_addr == self.raft_addr {
            return bad("raft_addr", "must differ from api_addr".into());
        }
        if self.metrics_addr == self.api_addr || self.metrics_addr == self.raft_addr {
            return bad(
                "metrics_addr",
                "must differ from api_addr and raft_addr".into(),
            );
        }
        if self.heartbeat_interval_ms == 0 {
            return bad("heartbeat_interval_ms", "must be positive".into());
        }
        if self.election_timeout_min_ms < 3 * self.heartbeat_interval_ms {
            return bad(
                "election_timeout_min_ms",
                "must be at least 3 heartbeat intervals".into(),
            );
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return bad(
                "election_timeout_max_ms",
                "must exceed election_timeout_min_ms".into(),
            );
        }
        if self.peer_rpc_timeout_ms == 0 {
            return bad("peer_rpc_timeout_ms", "must be positive".into());
        }
        if self.snapshot_logs_since_last == 0 {
            return bad("snapshot_logs_since_last", "must be positive".into());
        }
        if self.ttl_seconds_max == 0 || self.ttl_seconds_max > limits::TTL_SECONDS_CEILING {
            return bad(
                "ttl_seconds_max",
                format!("must be in 1..={}", limits::TTL_SECONDS_CEILING),
            );
        }
        if self.ttl_seconds_default == 0 || self.ttl_seconds_default > self.ttl_seconds_max {
            return bad(
                "ttl_seconds_default",
                "must be in 1..=ttl_seconds_max".into(),
            );
        }
        if self.active_grants_per_task_max > limits::GRANTS_PER_TASK_MAX as u64 {
            return bad(
                "active_grants_per_task_max",
                format!(
                    "must be at most {} (grants_per_task_max)",
                    limits::GRANTS_PER_TASK_MAX
                ),
            );
        }
        if self.issue_rate_per_caller > 0 && self.issue_burst_per_caller == 0 {
            return bad(
                "issue_burst_per_caller",
                "must be positive when issue_rate_per_caller is".into(),
            );
        }
        if self.delegation_depth_max > limits::DELEGATION_DEPTH_CEILING {
            return bad(
                "delegation_depth_max",
                format!("must be at most {}", limits::DELEGATION_DEPTH_CEILING),
            );
        }
        if self.task_deadline_seconds_max == 0
            || self.task_deadline_seconds_max > limits::TASK_DEADLINE_SECONDS_CEILING
        {
            return bad(
                "task_deadline_seconds_max",
                format!("must be in 1..={}", limits::TASK_DEADLINE_SECONDS_CEILING),
            );
        }
        if self.task_deadline_seconds_default == 0
            || self.task_deadline_seconds_default > self.task_deadline_seconds_max
        {
            return bad(
                "task_deadline_seconds_default",
                "must be in 1..=task_deadline_seconds_max".into(),
            );
        }
        if self.check_batch_max == 0 || self.check_batch_max > CHECK_BATCH_MAX_CEILING {
            return bad(
                "check_batch_max",
                format!("must be in 1..={CHECK_BATCH_MAX_CEILING}"),
            );
        }
        if self.checkpoint_interval_ms < 10 {
            return bad("checkpoint_interval_ms", "must be at least 10".into());
        }
        if !(100..=3_600_000).contains(&self.refusal_window_ms) {
            return bad("refusal_window_ms", "must be in 100..=3600000".into());
        }
        if self.clock_skew_margin_ms > crate::limits::CLOCK_SKEW_MARGIN_MS_CEILING {
            return bad(
                "clock_skew_margin_ms",
                format!(
                    "must be at most {}",
                    crate::limits::CLOCK_SKEW_MARGIN_MS_CEILING
                ),
            );
        }
        if self.audit_origin.is_empty()
            || self.audit_origin.len() > 256
            || self.audit_origin.chars().any(char::is_control)
        {
            return bad("audit_origin", "must be 1-256 bytes on one line".into());
        }
        if self.sweep_interval_ms < 10 {
            return bad("sweep_interval_ms", "must be at least 10".into());
        }
        Ok(())
    }

    /// TLS or insecure, and the role mapping: what serving needs (a
    /// `restore` serves nothing and is not asked for them).
    fn validate_security(&self) -> Result<(), ConfigError> {
        let bad = |k, m: String| Err(ConfigError::Invalid(k, m));
        let files = [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file];
        if self.insecure {
            if files.iter().any(|f| f.is_some()) {
                return bad(
                    "insecure",
                    "cannot be combined with tls_ca_file, tls_cert_file or tls_key_file".into(),
                );
            }
            for (k, a) in [("api_addr", self.api_addr), ("raft_addr", self.raft_addr)] {
                if !a.ip().is_loopback() {
                    return bad(
                        "insecure",
                        format!("plaintext is allowed on loopback addresses only; {k} is {a}"),
                    );
                }
            }
        } else if files.iter().any(|f| f.is_none()) {
            return bad(
                "tls_cert_file",
                "set tls_ca_file, tls_cert_file and tls_key_file (`grantctl dev certs` makes a \
                 set for local use), or insecure = true on loopback for development"
                    .into(),
            );
        }
        RoleMap::from_config(&self.roles).map_err(|e| ConfigError::Invalid("roles", e))?;
        if let Some(j) = &self.jwt_auth {
            if self.insecure {
                return bad(
                    "jwt_auth",
                    "needs TLS; it cannot be used with insecure".into(),
                );
            }
            if j.issuer.is_empty() || j.audience.is_empty() {
                return bad("jwt_auth", "name the issuer and the audience".into());
            }
        }
        Ok(())
    }

    /// The TLS files, when not insecure.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            ca: self.tls_ca_file.clone()?,
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
        })
    }

    /// The bootstrap voters, parsed.
    pub fn initial_member_nodes(&self) -> Result<Vec<grant_proto::v1::Node>, ConfigError> {
        self.initial_members
            .iter()
            .map(|m| grant_proto::v1::Node::parse_member(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid("initial_members", e))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            node_id: Some(1),
            data_dir: Some("/tmp/x".into()),
            insecure: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "node_id = 7\nttl_seconds_max = 100\nttl_seconds_default = 50\n",
        )
        .unwrap();
        let a = Args {
            config: Some(p),
            node_id: Some(3),
            ..Default::default()
        };
        let a = Args {
            data_dir: Some("/d".into()),
            insecure: Some(true),
            ..a
        };
        let c = Config::load(&a).unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.ttl_seconds_max, 100);
        assert_eq!(c.ttl_seconds_default, 50);
    }

    #[test]
    fn unknown_key_and_bad_values_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "nod_id = 7\n").unwrap();
        let a = Args {
            config: Some(p),
            ..args()
        };
        assert!(matches!(Config::load(&a), Err(ConfigError::Parse { .. })));
        let a = Args {
            ttl_seconds_default: Some(7200),
            ..args()
        };
        assert!(matches!(
            Config::load(&a),
            Err(ConfigError::Invalid("ttl_seconds_default", _))
        ));
        let a = Args {
            node_id: Some(0),
            ..args()
        };
        assert!(matches!(
            Config::load(&a),
            Err(ConfigError::Invalid("node_id", _))
        ));
        assert!(matches!(
            Config::load(&Args::default()),
            Err(ConfigError::Missing("node_id", ..))
        ));
    }

    #[test]
    fn tls_files_sit_beside_the_config_and_plaintext_needs_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "tls_ca_file = \"ca.pem\"\ntls_cert_file = \"/abs/n.pem\"\ntls_key_file = \"k/n.key\"\n",
        )
        .unwrap();
        let a = Args {
            config: Some(p),
            insecure: None,
            ..args()
        };
        let c = Config::load(&a).unwrap();
        assert_eq!(c.tls_ca_file.unwrap(), dir.path().join("ca.pem"));
        assert_eq!(c.tls_cert_file.unwrap(), PathBuf::from("/abs/n.pem"));
        assert_eq!(c.tls_key_file.unwrap(), dir.path().join("k/n.key"));
        let a = Args {
            insecure: None,
            ..args()
        };
        assert!(matches!(
            Config::load(&a),
            Err(ConfigError::Invalid("tls_cert_file", _))
        ));
        let a = Args {
            api_addr: Some("0.0.0.0:7101".parse().unwrap()),
            ..args()
        };
        assert!(matches!(
            Config::load(&a),
            Err(ConfigError::Invalid("insecure", _))
        ));
    }
}
