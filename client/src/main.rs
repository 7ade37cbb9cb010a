//! grantctl: issue, check and revoke grants, and administer a cluster.

use std::process::ExitCode;

mod audit_cmd;
mod output;
mod policy_cmd;
mod progress;
mod task_cmd;

use output::{Format, Out};
use serde_json::json;

use clap::{Parser, Subcommand};
use grant_client::v1 as pb;
use grant_client::{Client, Options};

#[derive(Parser)]
#[command(name = "grantctl", version, about = "Command line for grant-ledger")]
struct Cli {
    /// Public API addresses of the cluster's nodes (host:port), comma-separated.
    #[arg(
        long,
        env = "GRANTCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
    )]
    endpoints: Vec<String>,
    /// CA bundle (PEM) that the servers' certificates must chain to.
    #[arg(long, env = "GRANTCTL_CA", global = true)]
    ca: Option<std::path::PathBuf>,
    /// Your certificate (PEM): its SPIFFE ID is who you are to the cluster.
    #[arg(long, env = "GRANTCTL_CERT", global = true)]
    cert: Option<std::path::PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "GRANTCTL_KEY", global = true)]
    key: Option<std::path::PathBuf>,
    /// A JWT (JWT-SVID or OIDC) in this file to present instead of a client
    /// certificate (with --ca, without --cert/--key), to a cluster that
    /// accepts bearer tokens ([jwt_auth]).
    #[arg(long, env = "GRANTCTL_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// Speak plaintext, to a development cluster started with --insecure.
    #[arg(long, env = "GRANTCTL_INSECURE", global = true)]
    insecure: bool,
    /// Output format: text (key: value lines), json (one JSON document per
    /// line: the response message in the proto3 JSON mapping), or table
    /// (aligned columns, for list, cluster status, cluster health and
    /// audit roster).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text, env = "GRANTCTL_OUTPUT", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

impl Cli {
    /// Client options: mTLS from --ca/--cert/--key, or plaintext when
    /// --insecure. A command that works on files alone needs neither.
    fn options(&self) -> Result<Options, String> {
        // An offline command ignores connection settings, from flags or
        // the environment: they may be set for other commands.
        if self.cmd.offline() {
            return Ok(Options::default());
        }
        let bearer_token = match &self.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let tls = match (&self.ca, &self.cert, &self.key) {
            (Some(ca), None, None) if bearer_token.is_some() && !self.insecure => {
                Some(grant_client::Tls::ca_only(ca).map_err(|e| e.to_string())?)
            }
            (Some(ca), Some(cert), Some(key)) if !self.insecure => Some(
                grant_client::Tls::load(&grant_client::TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .map_err(|e| e.to_string())?,
            ),
            (None, None, None) if self.insecure => None,
            _ if self.insecure => {
                return Err("--insecure cannot be combined with --ca, --cert or --key".into())
            }
            _ => {
                return Err(
                    "give --ca, --cert and --key (or GRANTCTL_CA, GRANTCTL_CERT, \
                            GRANTCTL_KEY), or --ca and --token-file, or --insecure for a \
                            plaintext development cluster"
                        .into(),
                )
            }
        };
        Ok(Options {
            tls,
            bearer_token,
            ..Options::default()
        })
    }
}

impl Cmd {
    /// Commands that read or write local files only.
    fn offline(&self) -> bool {
        matches!(
            self,
            Cmd::Dev(_) | Cmd::Snapshot(SnapshotCmd::Status { .. })
        ) || matches!(self, Cmd::Audit(c) if c.offline())
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Issue a grant; prints the grant and its token (shown once).
    Issue {
        /// Workload identity the grant is bound to (spiffe://trust-domain/path).
        #[arg(long)]
        subject: String,
        /// The open task the grant is issued under (grantctl task begin).
        #[arg(long)]
        task: String,
        /// RESOURCE=ACTION[,ACTION...]; repeat for several resources.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Why the grant is wanted: recorded with it and in the audit log.
        /// Required unless the cluster runs with intent_required = false.
        #[arg(long, default_value = "")]
        intent: String,
        /// Seconds until expiry; 0 takes the server's default.
        #[arg(long, default_value_t = 0)]
        ttl: u64,
        /// Reuse to retry safely; generated when absent.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Check a token; exit status 0 on allow, 1 on deny.
    Check {
        /// The grant token the workload presented.
        #[arg(long)]
        token: String,
        /// Identity presenting the token.
        #[arg(long)]
        identity: String,
        /// The resource (tool) the workload wants to use.
        #[arg(long)]
        resource: String,
        /// The action it wants to take on the resource.
        #[arg(long)]
        action: String,
        /// NAME=VALUE the tool server knows about the request, for the
        /// policy (context.request.NAME); repeat for several.
        #[arg(long = "attr")]
        attributes: Vec<String>,
    },
    /// Revoke one grant.
    Revoke {
        /// The grant to revoke (32 hex characters).
        grant_id: String,
        /// Why: recorded in the audit entry.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delegate a sub-grant from a grant you hold (as its subject): a
    /// subset of its scopes, expiring no later, to another workload, in the
    /// same task. Revoking the parent revokes it. Prints the sub-grant and
    /// its token.
    Delegate {
        /// The parent grant's token.
        #[arg(long)]
        parent_token: String,
        /// Workload identity the sub-grant is bound to.
        #[arg(long)]
        subject: String,
        /// What the sub-grant is for, within the task.
        #[arg(long, default_value = "")]
        sub_task: String,
        /// RESOURCE=ACTION[,ACTION...], within the parent's scopes; repeat.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Why the sub-grant is wanted; empty takes the parent's intent.
        #[arg(long, default_value = "")]
        intent: String,
        /// Seconds until expiry (capped at the parent's); 0 takes the default.
        #[arg(long, default_value_t = 0)]
        ttl: u64,
        /// Reuse to retry safely; generated when absent.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Extend a grant's expiry (its issuer or its subject may): up to the
    /// grant's maximum lifetime and its task's deadline. Prints the grant
    /// and a fresh token.
    Renew {
        /// The grant to extend.
        grant_id: String,
        /// Seconds from now; 0 takes the server's default TTL.
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Tasks: begin, complete, abort, show. A grant is issued under an
    /// open task and never outlives its deadline.
    #[command(subcommand)]
    Task(task_cmd::TaskCmd),
    /// Show one grant.
    Get {
        /// The grant to show.
        grant_id: String,
        /// Read this node's state without confirming leadership (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// List the grants of a task or of a subject (all pages).
    List {
        /// List the grants of this task.
        #[arg(long, conflicts_with = "subject", required_unless_present = "subject")]
        task: Option<String>,
        /// List the grants bound to this workload identity.
        #[arg(long)]
        subject: Option<String>,
        /// Read the answering node's state without confirming leadership
        /// (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Cluster administration.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Backups: save a consistent snapshot of the cluster to a file, or
    /// check one. Restore is `grantd restore` (docs/operations.md).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// The signed audit log: export, verify offline, prove, roster.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCmd),
    /// Follow revocations, expirations, task completions and policy
    /// changes, one line each, resuming on another node if one fails.
    Watch {
        /// Start with the events of log entries from this index.
        #[arg(long, conflicts_with = "after")]
        from_index: Option<u64>,
        /// Resume after the event with this audit seq.
        #[arg(long)]
        after: Option<u64>,
        /// Stop after this many events (default: follow until interrupted).
        #[arg(long)]
        count: Option<usize>,
    },
    /// Print the JWKS document of the cluster's token keys, for tool
    /// servers that verify grant tokens offline.
    Jwks,
    /// Development helpers.
    #[command(subcommand)]
    Dev(DevCmd),
    /// The role mapping (docs/security.md).
    #[command(subcommand)]
    Roles(RolesCmd),
    /// The Cedar policy set every Issue and Check is decided against
    /// (docs/policy.md).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCmd),
}

#[derive(Subcommand)]
enum RolesCmd {
    /// Print the mapping in force on the node that answers, as TOML, and
    /// where it comes from (the config file, or the log index it was
    /// committed at).
    Get,
    /// Replace the mapping on every node from FILE: the body of a [roles]
    /// table (checker = [...], [[issuer]] ...), without peer, which each
    /// node keeps from its config file. Committed and audited; the mapping
    /// must keep the admin role for you.
    Set {
        /// The TOML file holding the mapping.
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum DevCmd {
    /// Write a CA, node certificates (node-N.pem/.key, SPIFFE ID
    /// spiffe://TD/grantd/node-N), example workload certificates (admin,
    /// orchestrator, tool, auditor, agent) and grantd-tls.toml (the CA path
    /// and a matching role mapping) into DIR. For local use only.
    ///
    /// Node certificates also name localhost, 127.0.0.1 and ::1 (and each
    /// --node-san) as DNS and IP SANs, so that standard gRPC clients, which
    /// check the host name they dialled, accept them.
    Certs {
        /// Directory to write into (created if absent).
        #[arg(long, default_value = "certs")]
        out: std::path::PathBuf,
        /// Trust domain of every SPIFFE ID written.
        #[arg(long, default_value = "example.org")]
        trust_domain: String,
        /// How many node certificates (node-1 .. node-N).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// A further DNS name or IP address every node certificate names
        /// (repeat for several), such as the host name clients dial.
        #[arg(long = "node-san", value_name = "NAME|IP")]
        node_sans: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Save a backup (state and audit chain) to FILE; written whole, checked,
    /// then renamed into place.
    Save {
        /// Where to write the backup.
        file: std::path::PathBuf,
        /// Save this node's own state (host:port) without asking the leader:
        /// for recovery after a majority is lost for good. It may lack
        /// writes the lost nodes acknowledged.
        #[arg(long)]
        stale_from: Option<String>,
    },
    /// Check a backup file's integrity and print what it holds.
    Status {
        /// The backup file.
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Initialise a new cluster on the first endpoint.
    Init {
        /// ID=RAFT_ADDR,API_ADDR; repeat for each initial voter.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Add a node as a learner (returns when it has caught up).
    AddLearner {
        /// The new node's id (its --node-id).
        #[arg(long)]
        id: u64,
        /// Its peer address, host:port.
        #[arg(long)]
        raft_addr: String,
        /// Its public API address, host:port.
        #[arg(long)]
        api_addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's node id.
        id: u64,
    },
    /// Remove a member (voter or learner) for good.
    Remove {
        /// The member's node id.
        id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The voter to lead.
        id: u64,
    },
    /// Set the voters (each must already be a member).
    ChangeMembership {
        /// The node ids of every voter after the change.
        voters: Vec<u64>,
        /// Keep removed voters as learners.
        #[arg(long)]
        retain: bool,
    },
    /// Status of every endpoint.
    Status,
    /// gRPC health of every endpoint; exit 0 only if all are SERVING (for
    /// container health checks).
    Health,
}

fn parse_scope(s: &str) -> Result<pb::Scope, String> {
    let (res, acts) = s
        .split_once('=')
        .ok_or_else(|| format!("scope {s:?} is not RESOURCE=ACTION[,ACTION...]"))?;
    Ok(pb::Scope {
        resource: res.to_string(),
        actions: acts.split(',').map(str::to_string).collect(),
    })
}

fn state_name(s: i32) -> &'static str {
    pb::GrantState::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn print_grant(g: &pb::Grant) {
    println!("grant_id: {}", g.grant_id);
    println!("subject: {}", g.subject);
    println!("task: {}", g.task_id);
    for s in &g.scopes {
        println!("scope: {}={}", s.resource, s.actions.join(","));
    }
    println!("intent: {}", g.intent);
    if !g.parent_grant_id.is_empty() {
        println!("parent_grant_id: {}", g.parent_grant_id);
        println!("sub_task: {}", g.sub_task);
        println!("depth: {}", g.depth);
    }
    println!("state: {}", state_name(g.state));
    println!("issued_at_ms: {}", g.issued_at_ms);
    println!("expires_at_ms: {}", g.expires_at_ms);
    if g.revoked_at_ms != 0 {
        println!("revoked_at_ms: {}", g.revoked_at_ms);
        println!("revoke_reason: {}", g.revoke_reason);
    }
}

/// An Issue's or a Delegate's answer: the grant, its token (shown once).
fn print_issued(r: &pb::IssueResponse) {
    if let Some(g) = &r.grant {
        print_grant(g);
    }
    if r.replayed {
        println!("replayed: true (this request id was applied before)");
    }
    println!("token: {}", r.token);
    print_receipt(&r.receipt);
}

fn print_receipt(r: &Option<pb::Receipt>) {
    if let Some(r) = r {
        println!("log_index: {}", r.log_index);
        println!("audit_seq: {}", r.audit_seq);
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    // Validating a policy needs no cluster, nor credentials.
    if let Cmd::Policy(c) = &cli.cmd {
        if policy_cmd::offline(c) {
            let Cmd::Policy(c) = cli.cmd else {
                unreachable!()
            };
            return policy_cmd::run_offline(Out { format: cli.output }, c);
        }
    }
    let options = cli.options()?;
    let out = Out { format: cli.output };
    let client = Client::new(cli.endpoints.clone(), options).map_err(|e| e.to_string())?;
    let e = |e: grant_client::ClientError| e.to_string();
    match cli.cmd {
        Cmd::Issue {
            subject,
            task,
            scopes,
            intent,
            ttl,
            request_id,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| parse_scope(s))
                .collect::<Result<Vec<_>, _>>()?;
            let r = client
                .issue(pb::IssueRequest {
                    request_id,
                    subject,
                    task_id: task,
                    scopes,
                    intent,
                    ttl_seconds: ttl,
                })
                .await
                .map_err(e)?;
            out.show(&r, || print_issued(&r));
        }
        Cmd::Check {
            token,
            identity,
            resource,
            action,
            attributes,
        } => {
            let attributes = attributes
                .iter()
                .map(|a| {
                    a.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("--attr {a:?} is not NAME=VALUE"))
                })
                .collect::<Result<_, _>>()?;
            let r = client
                .check(pb::CheckRequest {
                    token,
                    identity,
                    resource,
                    action,
                    attributes,
                })
                .await
                .map_err(e)?;
            let decision = pb::Decision::try_from(r.decision).unwrap_or(pb::Decision::Unspecified);
            let reason = pb::Reason::try_from(r.reason).unwrap_or(pb::Reason::Unspecified);
            out.show(&r, || {
                println!("decision: {}", decision.as_str_name());
                println!("reason: {}", reason.as_str_name());
                println!("grant_id: {}", r.grant_id);
                for id in &r.policy_ids {
                    println!("policy: {id}");
                }
                print_receipt(&r.receipt);
            });
            if decision != pb::Decision::Allow {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Revoke { grant_id, reason } => {
            let r = client
                .revoke(pb::RevokeRequest {
                    request_id: String::new(),
                    grant_id,
                    reason,
                })
                .await
                .map_err(e)?;
            out.show(&r, || {
                if let Some(g) = &r.grant {
                    print_grant(g);
                }
                println!("already_inactive: {}", r.already_inactive);
                for id in &r.descendants_revoked {
                    println!("revoked with it: {id}");
                }
                print_receipt(&r.receipt);
            });
        }
        Cmd::Task(c) => return task_cmd::run(&client, out, c).await,
        Cmd::Delegate {
            parent_token,
            subject,
            sub_task,
            scopes,
            intent,
            ttl,
            request_id,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| parse_scope(s))
                .collect::<Result<Vec<_>, _>>()?;
            let r = client
                .delegate(pb::DelegateRequest {
                    request_id,
                    parent_token,
                    subject,
                    sub_task,
                    scopes,
                    intent,
                    ttl_seconds: ttl,
                })
                .await
                .map_err(e)?;
            out.show(&r, || print_issued(&r));
        }
        Cmd::Renew { grant_id, ttl } => {
            let r = client
                .renew(pb::RenewRequest {
                    grant_id,
                    ttl_seconds: ttl,
                })
                .await
                .map_err(e)?;
            out.show(&r, || {
                if let Some(g) = &r.grant {
                    print_grant(g);
                }
                println!("extended: {}", r.extended);
                println!("max_expires_at_ms: {}", r.max_expires_at_ms);
                println!("token: {}", r.token);
                print_receipt(&r.receipt);
            });
        }
        Cmd::Get { grant_id, stale } => {
            let r = client
                .get(pb::GetRequest {
                    grant_id,
                    allow_stale: stale,
                })
                .await
                .map_err(e)?;
            out.show(&r, || {
                if let Some(g) = &r.grant {
                    print_grant(g);
                }
                println!("applied_index: {}", r.applied_index);
            });
        }
        Cmd::List {
            task,
            subject,
            stale,
        } => {
            let by = match (task, subject) {
                (Some(t), _) => pb::list_request::By::TaskId(t),
                (None, Some(s)) => pb::list_request::By::Subject(s),
                (None, None) => return Err("name --task or --subject".into()),
            };
            let mut page_token = String::new();
            let mut all = pb::ListResponse::default();
            loop {
                let r = client
                    .list(pb::ListRequest {
                        by: Some(by.clone()),
                        page_size: 0,
                        page_token,
                        allow_stale: stale,
                    })
                    .await
                    .map_err(e)?;
                // Text streams page by page; json and table print once.
                if out.format == Format::Text {
                    for g in &r.grants {
                        println!(
                            "{} {} {} {}",
                            g.grant_id,
                            state_name(g.state),
                            g.task_id,
                            g.subject
                        );
                    }
                } else {
                    all.grants.extend(r.grants);
                    all.applied_index = r.applied_index;
                    all.stale_allowed = r.stale_allowed;
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            let rows: Vec<Vec<String>> = all
                .grants
                .iter()
                .map(|g| {
                    vec![
                        g.grant_id.clone(),
                        state_name(g.state).to_string(),
                        g.task_id.clone(),
                        g.subject.clone(),
                        g.expires_at_ms.to_string(),
                    ]
                })
                .collect();
            out.rows(
                &all,
                &["GRANT_ID", "STATE", "TASK", "SUBJECT", "EXPIRES_AT_MS"],
                &rows,
                || {},
            );
        }
        Cmd::Audit(c) => return audit_cmd::run(&client, out, c).await,
        Cmd::Policy(c) => return policy_cmd::run(&client, out, c).await,
        Cmd::Watch {
            from_index,
            after,
            count,
        } => {
            use grant_client::watch::{Start, Update, Watcher};
            let start = match (from_index, after) {
                (Some(i), _) => Start::LogIndex(i),
                (_, Some(seq)) => Start::After {
                    seq,
                    hash: Vec::new(),
                },
                _ => Start::Now,
            };
            let mut w = Watcher::new(std::sync::Arc::new(client), start);
            let mut seen = 0;
            while count.is_none_or(|n| seen < n) {
                if let Update::Events(events) = w.next().await.map_err(e)? {
                    for ev in events {
                        let kind = grant_client::v1::watch_event::Kind::try_from(ev.kind)
                            .map(|k| k.as_str_name())
                            .unwrap_or("UNKNOWN");
                        out.show(&ev, || {
                            println!(
                                "seq={} index={} time_ms={} {kind} grant={} task={}",
                                ev.seq, ev.log_index, ev.time_ms, ev.grant_id, ev.task_id
                            )
                        });
                        seen += 1;
                    }
                }
            }
        }
        Cmd::Jwks => {
            let doc = client.jwks().await.map_err(e)?;
            match serde_json::from_str::<serde_json::Value>(&doc) {
                Ok(v) if out.json() => println!("{}", output::to_json(&v)),
                _ => println!("{doc}"),
            }
        }
        Cmd::Roles(RolesCmd::Get) => {
            let r = client.get_roles().await.map_err(e)?;
            out.show(&r, || {
                println!("# source: {} (log index {})", r.source, r.log_index);
                print!("{}", r.roles_toml);
            });
        }
        Cmd::Roles(RolesCmd::Set { file }) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|err| format!("cannot read {}: {err}", file.display()))?;
            let r = client.set_roles(&text).await.map_err(e)?;
            out.show(&r, || {
                println!("roles replaced");
                print_receipt(&r.receipt);
            });
        }
        Cmd::Dev(DevCmd::Certs {
            out: dir,
            trust_domain,
            nodes,
            node_sans,
        }) => {
            if !(1..=grant_client::devcerts::NODES_MAX).contains(&nodes) {
                return Err(format!(
                    "--nodes must be 1..={}",
                    grant_client::devcerts::NODES_MAX
                ));
            }
            if trust_domain.is_empty()
                || !trust_domain
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
            {
                return Err(format!(
                    "--trust-domain {trust_domain:?}: use a-z, 0-9, '.', '-', '_'"
                ));
            }
            grant_client::devcerts::node_hosts(&node_sans)?;
            let files = grant_client::devcerts::generate(&dir, &trust_domain, nodes, &node_sans)
                .map_err(|err| format!("cannot write certificates to {}: {err}", dir.display()))?;
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            out.show(&json!({ "files": names }), || {
                for f in &names {
                    println!("{f}");
                }
            });
        }
        Cmd::Snapshot(SnapshotCmd::Save { file, stale_from }) => {
            // Received into a temporary file beside the target, checked as
            // a stream, then made durable and renamed.
            let mut tmp = file.as_os_str().to_owned();
            tmp.push(".partial");
            let tmp = std::path::PathBuf::from(tmp);
            let bar = progress::bytes("receiving the backup", None);
            let saved = async {
                client
                    .backup_to_with(stale_from.as_deref(), &tmp, &|n| bar.set_position(n))
                    .await
                    .map_err(e)?;
                bar.finish_and_clear();
                let h = check_backup_file(&tmp)?
                    .map_err(|err| format!("the backup received is damaged: {err}"))?;
                publish_durably(&tmp, &file)
                    .map_err(|err| format!("cannot write {}: {err}", file.display()))?;
                Ok::<_, String>(h)
            }
            .await;
            let h = saved.inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            out.show(&json!({ "file": file, "backup": header_json(&h) }), || {
                println!(
                    "saved {}: {} bytes of state, log index {}, {} audit entries, from node {}",
                    file.display(),
                    h.data_bytes,
                    h.last_log_index,
                    h.audit_size,
                    h.taken_from_node
                )
            });
        }
        Cmd::Snapshot(SnapshotCmd::Status { file }) => match check_backup_file(&file)? {
            Ok(h) => out.show(&json!({ "ok": true, "backup": header_json(&h) }), || println!(
                "ok: log index {}, {} audit entries, {} bytes of state (sha256 {}), taken from node {} at {} ms, state format {}",
                h.last_log_index, h.audit_size, h.data_bytes, h.data_sha256, h.taken_from_node, h.created_ms, h.state_format
            )),
            Err(err) => {
                out.show(&json!({ "ok": false, "damaged": err.to_string() }), || {
                    println!("damaged: {err}")
                });
                return Ok(ExitCode::from(1));
            }
        },
        Cmd::Cluster(c) => match c {
            ClusterCmd::Init { members } => {
                let members = members
                    .iter()
                    .map(|m| grant_client::v1::Node::parse_member(m))
                    .collect::<Result<Vec<_>, _>>()?;
                client
                    .initialize(&cli.endpoints[0], members)
                    .await
                    .map_err(e)?;
                out.show(&json!({ "initialized": true }), || println!("initialized"));
            }
            ClusterCmd::AddLearner {
                id,
                raft_addr,
                api_addr,
            } => {
                let r = client
                    .add_learner(pb::Node {
                        id,
                        raft_addr,
                        api_addr,
                    })
                    .await
                    .map_err(e)?;
                out.show(&r, || print_membership(&r));
            }
            ClusterCmd::Promote { id } => {
                let r = client.promote(id).await.map_err(e)?;
                out.show(&r, || print_membership(&r));
            }
            ClusterCmd::Remove { id } => {
                let r = client.remove_node(id).await.map_err(e)?;
                out.show(&r, || print_membership(&r));
            }
            ClusterCmd::TransferLeader { id } => {
                let r = client.transfer_leader(id).await.map_err(e)?;
                out.show(&r, || println!("leader: {} term: {}", r.leader_id, r.term));
            }
            ClusterCmd::ChangeMembership { voters, retain } => {
                let r = client.change_membership(voters, retain).await.map_err(e)?;
                out.show(&r, || print_membership(&r));
            }
            ClusterCmd::Health => {
                let mut all = true;
                let mut found = Vec::new();
                for addr in client.endpoints() {
                    let h = client
                        .health_of(addr)
                        .await
                        .unwrap_or_else(|err| format!("unreachable ({err})"));
                    all &= h == "SERVING";
                    found.push((addr.to_string(), h));
                }
                let value = json!({
                    "endpoints": found.iter().map(|(a, h)| json!({ "endpoint": a, "status": h })).collect::<Vec<_>>()
                });
                let rows: Vec<Vec<String>> =
                    found.iter().map(|(a, h)| vec![a.clone(), h.clone()]).collect();
                out.rows(&value, &["ENDPOINT", "STATUS"], &rows, || {
                    for (addr, h) in &found {
                        println!("{addr} {h}");
                    }
                });
                if !all {
                    return Ok(ExitCode::from(1));
                }
            }
            ClusterCmd::Status => {
                let mut failed = false;
                let mut found = Vec::new();
                for addr in client.endpoints() {
                    let s = client.status_of(addr).await;
                    failed |= s.is_err();
                    found.push((addr.to_string(), s));
                }
                let ids = |v: &[pb::Node]| v.iter().map(|n| n.id).collect::<Vec<_>>();
                let leader = |s: &pb::StatusResponse| {
                    if s.has_leader { s.leader_id.to_string() } else { "none".into() }
                };
                let value = json!({
                    "endpoints": found.iter().map(|(a, s)| match s {
                        Ok(s) => json!({ "endpoint": a, "status": s }),
                        Err(err) => json!({ "endpoint": a, "error": err.to_string() }),
                    }).collect::<Vec<_>>()
                });
                let rows: Vec<Vec<String>> = found
                    .iter()
                    .map(|(a, s)| match s {
                        Ok(s) => vec![
                            a.clone(),
                            s.node_id.to_string(),
                            s.role.clone(),
                            leader(s),
                            s.term.to_string(),
                            s.last_log_index.to_string(),
                            s.applied_index.to_string(),
                            s.snapshot_index.to_string(),
                            format!("{:?}", ids(&s.voters)),
                            format!("{:?}", ids(&s.learners)),
                        ],
                        Err(err) => {
                            let mut r = vec![a.clone(), "-".into(), format!("unreachable: {err}")];
                            r.resize(10, "-".into());
                            r
                        }
                    })
                    .collect();
                let header = [
                    "ENDPOINT", "NODE", "ROLE", "LEADER", "TERM", "LAST_LOG", "APPLIED",
                    "SNAPSHOT", "VOTERS", "LEARNERS",
                ];
                out.rows(&value, &header, &rows, || {
                    for (addr, s) in &found {
                        match s {
                            Ok(s) => println!(
                                "{addr} node={} role={} leader={} term={} last_log={} applied={} snapshot={} voters={:?} learners={:?}",
                                s.node_id, s.role, leader(s), s.term, s.last_log_index,
                                s.applied_index, s.snapshot_index, ids(&s.voters), ids(&s.learners),
                            ),
                            Err(err) => println!("{addr} unreachable: {err}"),
                        }
                    }
                });
                if failed {
                    return Ok(ExitCode::from(1));
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Write to a temporary name beside `path`, fsync, rename: a crash leaves
/// either the old file or the whole new one.
/// Read a backup file as a stream and check it: Err when it cannot be
/// read, Ok(Err) when it is damaged.
fn check_backup_file(
    path: &std::path::Path,
) -> Result<Result<grant_client::backup::BackupHeader, grant_client::backup::BackupError>, String> {
    use grant_client::backup;
    let f = std::fs::File::open(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let mut r = std::io::BufReader::with_capacity(256 * 1024, f);
    Ok(backup::read_header(&mut r).and_then(|h| backup::check_data(r, &h).map(|_| h)))
}

/// fsync `tmp` and rename it to `path`, so that `path` is whole or absent.
pub(crate) fn publish_durably(
    tmp: &std::path::Path,
    path: &std::path::Path,
) -> std::io::Result<()> {
    std::fs::File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// A backup header as JSON (`snapshot save` and `snapshot status`).
fn header_json(h: &grant_client::backup::BackupHeader) -> serde_json::Value {
    json!({
        "last_log_index": h.last_log_index,
        "audit_size": h.audit_size,
        "data_bytes": h.data_bytes,
        "data_sha256": h.data_sha256,
        "taken_from_node": h.taken_from_node,
        "created_ms": h.created_ms,
        "state_format": h.state_format,
    })
}

fn print_membership(r: &pb::MembershipResponse) {
    println!("log_index: {}", r.log_index);
    for n in &r.voters {
        println!("voter: {} raft={} api={}", n.id, n.raft_addr, n.api_addr);
    }
    for n in &r.learners {
        println!("learner: {} raft={} api={}", n.id, n.raft_addr, n.api_addr);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our
    // output goes away (`grantctl cluster status | head -1`) instead of
    // panicking on the closed pipe (Rust ignores SIGPIPE by default).
    // SAFETY: restoring a signal's default disposition at start, before any
    // other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // An empty GRANTCTL_* variable counts as unset, as for most tools
    // (clap would take it for an empty value and refuse it). The runtime
    // is current-thread: no other thread reads the environment yet.
    for (k, v) in std::env::vars_os() {
        if v.is_empty() && k.to_str().is_some_and(|k| k.starts_with("GRANTCTL_")) {
            std::env::remove_var(k);
        }
    }
    let cli = Cli::parse();
    let format = cli.output;
    match run(cli).await {
        Ok(c) => c,
        Err(msg) => {
            if format == Format::Json {
                eprintln!("{}", output::to_json(&json!({ "error": msg })));
            } else {
                eprintln!("grantctl: {msg}");
            }
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument and flag of every command says what it is.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
    }
}
