//! grant-ledger's Rust client: follows the leader and retries safely.
//!
//! Every write carries a request id (generated when the caller gives none),
//! so a retry after a lost answer never creates a second grant; revoke and
//! complete-task are idempotent. Check and Renew carry none: each one that
//! reaches the leader is decided and recorded (a second Check appends a
//! second audit entry, a second Renew extends again), so they are retried
//! only when the call certainly reached no handler (a `not_leader` answer,
//! a connection that was never made); any other failure is the caller's. A follower answers writes with the
//! leader's address in `x-grant-leader-addr`; the client goes there. A node
//! that does not answer is skipped for the next endpoint. Retries are bounded
//! by `Options::attempts_max` with a capped backoff.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grant_proto::tls::{trust_domain_of, AcceptServer};
use grant_proto::v1 as pb;
use grant_proto::v1::audit_client::AuditClient;
use grant_proto::v1::cluster_client::ClusterClient;
use grant_proto::v1::grants_client::GrantsClient;
use grant_proto::v1::policy_client::PolicyClient;
use grant_proto::{ERROR_CODE_KEY, LEADER_ADDR_KEY};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use grant_proto::backup;
pub use grant_proto::tls::{Tls, TlsFiles};
pub use grant_proto::v1;

pub mod devcerts;
pub mod watch;

/// Tuning of the client's retries and timeouts.
#[derive(Clone, Debug)]
pub struct Options {
    /// Attempts per call, across leader changes and unreachable nodes.
    pub attempts_max: u32,
    /// First backoff between attempts; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// mTLS: our certificate, and the CA bundle the servers' certificates
    /// must chain to; a server must also carry a SPIFFE ID of our own trust
    /// domain. `None` speaks plaintext (a cluster started `--insecure`).
    pub tls: Option<Tls>,
    /// A JWT (JWT-SVID or OIDC) to present instead of a client
    /// certificate, to a cluster configured with `[jwt_auth]`. Use it with
    /// `Tls::ca_only`.
    pub bearer_token: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attempts_max: 30,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
            tls: None,
            bearer_token: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("bad endpoint {0:?}: {1}")]
    BadEndpoint(String, String),
    #[error("the bearer token cannot travel in a header: {0}")]
    BadBearerToken(String),
    #[error("{} ({}): {}", .0.code(), error_code(.0).unwrap_or("-"), .0.message())]
    Status(Status),
}

impl ClientError {
    /// The server's stable error code (`x-grant-error`), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status(s) => error_code(s),
            _ => None,
        }
    }
    pub fn grpc_code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub fn error_code(s: &Status) -> Option<&str> {
    s.metadata()
        .get(ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
}

/// A channel whose requests carry the bearer token, if any.
type Ch = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub struct Client {
    endpoints: Vec<String>,
    options: Options,
    bearer: Option<MetadataValue<Ascii>>,
    /// Where the last successful call went: the leader, most likely.
    preferred: Mutex<String>,
    channels: Mutex<HashMap<String, Channel>>,
}

/// A new random request id (128 bits, hex).
pub fn new_request_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl Client {
    pub fn new(endpoints: Vec<String>, options: Options) -> Result<Client, ClientError> {
        let first = endpoints.first().cloned().ok_or(ClientError::NoEndpoints)?;
        let bearer = match &options.bearer_token {
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|e| ClientError::BadBearerToken(e.to_string()))?,
            ),
            None => None,
        };
        let c = Client {
            endpoints,
            options,
            bearer,
            preferred: Mutex::new(first),
            channels: Mutex::new(HashMap::new()),
        };
        for e in &c.endpoints {
            c.channel(e)?;
        }
        Ok(c)
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The channel to `addr`, carrying our bearer token if we have one.
    fn channel(&self, addr: &str) -> Result<Ch, ClientError> {
        let bearer = Bearer(self.bearer.clone());
        Ok(InterceptedService::new(self.raw_channel(addr)?, bearer))
    }

    /// A channel to `addr` with this client's transport settings (TLS,
    /// timeouts), for services the client has no wrapper for (reflection,
    /// Raft). It carries no bearer token.
    pub fn channel_to(&self, addr: &str) -> Result<Channel, ClientError> {
        self.raw_channel(addr)
    }

    fn raw_channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut m = self.channels.lock().expect("channel cache lock");
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let url = if addr.contains("://") {
            addr.to_string()
        } else if self.options.tls.is_some() {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let mut e = Endpoint::from_shared(url)
            .map_err(|e| ClientError::BadEndpoint(addr.into(), e.to_string()))?;
        if let Some(tls) = &self.options.tls {
            // A server of our own trust domain; with no certificate of our
            // own (a bearer token instead), any SPIFFE ID the CA vouches for.
            let td = tls.trust_domain().to_string();
            let accept: AcceptServer =
                Arc::new(move |id: &str| td.is_empty() || trust_domain_of(id) == Some(td.as_str()));
            e = tls
                .client_endpoint(e, accept)
                .map_err(|e| ClientError::BadEndpoint(addr.into(), e.to_string()))?;
        }
        let c = e
            .connect_timeout(self.options.connect_timeout)
            .timeout(self.options.request_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Run `f` against the preferred node, following leader hints and moving
    /// on from unreachable nodes, at most `attempts_max` times.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Ch) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_retrying(retryable, f).await
    }

    /// As [`Client::call`], for a call that is not safe to repeat (Check,
    /// Renew): retried only when it certainly reached no handler.
    async fn call_unkeyed<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Ch) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_retrying(never_reached_a_handler, f).await
    }

    async fn call_retrying<T, F, Fut>(
        &self,
        retryable: fn(&Status) -> bool,
        f: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Ch) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = self.options.backoff_initial;
        let mut addr = self.preferred.lock().expect("lock").clone();
        let mut last = None;
        for attempt in 0..self.options.attempts_max {
            let ch = self.channel(&addr)?;
            match f(ch).await {
                Ok(v) => {
                    *self.preferred.lock().expect("lock") = addr;
                    return Ok(v);
                }
                Err(s) if retryable(&s) => {
                    let hint = s
                        .metadata()
                        .get(LEADER_ADDR_KEY)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match hint {
                        // Go straight to the leader the follower named.
                        Some(h) if h != addr => addr = h,
                        _ => {
                            let i = self
                                .endpoints
                                .iter()
                                .position(|e| *e == addr)
                                .map(|i| i + 1)
                                .unwrap_or(attempt as usize);
                            addr = self.endpoints[i % self.endpoints.len()].clone();
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(self.options.backoff_max);
                        }
                    }
                    last = Some(s);
                }
                Err(s) => return Err(ClientError::Status(s)),
            }
        }
        Err(ClientError::Status(
            last.unwrap_or_else(|| Status::unavailable("no attempt made")),
        ))
    }

    /// Call one specific node, without leader following (status of each node).
    pub async fn status_of(&self, addr: &str) -> Result<pb::StatusResponse, ClientError> {
        self.status_with(addr, false).await
    }

    /// Status of one node, with its state digest when `digest` is set.
    pub async fn status_with(
        &self,
        addr: &str,
        digest: bool,
    ) -> Result<pb::StatusResponse, ClientError> {
        let ch = self.channel(addr)?;
        ClusterClient::new(ch)
            .status(pb::StatusRequest {
                include_state_digest: digest,
            })
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Status)
    }

    /// Issue a grant. An empty request id is replaced by a fresh one, which
    /// all retries of this call reuse: a retry whose first answer was lost
    /// gets the same grant (and a token for it), never a second one.
    pub async fn issue(&self, mut req: pb::IssueRequest) -> Result<pb::IssueResponse, ClientError> {
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        self.call(|ch| {
            let req = req.clone();
            async move {
                GrantsClient::new(ch)
                    .issue(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// The JWKS document of the cluster's token keys (for verifying grant
    /// tokens offline; Check stays the authority on revocation).
    pub async fn jwks(&self) -> Result<String, ClientError> {
        self.call(|ch| async move {
            GrantsClient::new(ch)
                .jwks(pb::JwksRequest {})
                .await
                .map(|r| r.into_inner().jwks_json)
        })
        .await
    }

    /// Decide a check (recorded in the audit log). Not repeated after an
    /// ambiguous failure: see the module doc.
    pub async fn check(&self, req: pb::CheckRequest) -> Result<pb::CheckResponse, ClientError> {
        self.call_unkeyed(|ch| {
            let req = req.clone();
            async move {
                GrantsClient::new(ch)
                    .check(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn revoke(
        &self,
        mut req: pb::RevokeRequest,
    ) -> Result<pb::RevokeResponse, ClientError> {
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        self.call(|ch| {
            let req = req.clone();
            async move {
                GrantsClient::new(ch)
                    .revoke(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn complete_task(
        &self,
        mut req: pb::CompleteTaskRequest,
    ) -> Result<pb::CompleteTaskResponse, ClientError> {
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        self.call(|ch| {
            let req = req.clone();
            async move {
                GrantsClient::new(ch)
                    .complete_task(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Delegate a sub-grant from a grant this caller holds. Retry-safe by
    /// request id (generated when empty).
    pub async fn delegate(
        &self,
        mut req: pb::DelegateRequest,
    ) -> Result<pb::IssueResponse, ClientError> {
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        self.call(|ch| {
            let req = req.clone();
            async move {
                GrantsClient::new(ch)
                    .delegate(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Extend a grant (its issuer or its subject). Safe to retry: a second
    /// renewal extends from its own time.
    /// Extend a grant. Not repeated after an ambiguous failure: see the
    /// module doc.
    pub async fn renew(&self, req: pb::RenewRequest) -> Result<pb::RenewResponse, ClientError> {
        self.call_unkeyed(|ch| {
            let req = req.clone();
            async move {
                GrantsClient::new(ch)
                    .renew(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Begin a task. Safe to retry: the same parameters answer with the task.
    pub async fn begin_task(
        &self,
        req: pb::BeginTaskRequest,
    ) -> Result<pb::BeginTaskResponse, ClientError> {
        self.call(|ch| {
            let req = req.clone();
            async move {
                GrantsClient::new(ch)
                    .begin_task(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn abort_task(
        &self,
        mut req: pb::AbortTaskRequest,
    ) -> Result<pb::AbortTaskResponse, ClientError> {
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        self.call(|ch| {
            let req = req.clone();
            async move {
                GrantsClient::new(ch)
                    .abort_task(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn get_task(
        &self,
        req: pb::GetTaskRequest,
    ) -> Result<pb::GetTaskResponse, ClientError> {
        self.call(|ch| {
            let req = req.clone();
            async move {
                GrantsClient::new(ch)
                    .get_task(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn get(&self, req: pb::GetRequest) -> Result<pb::GetResponse, ClientError> {
        self.call(|ch| {
            let req = req.clone();
            async move { GrantsClient::new(ch).get(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn list(&self, req: pb::ListRequest) -> Result<pb::ListResponse, ClientError> {
        self.call(|ch| {
            let req = req.clone();
            async move {
                GrantsClient::new(ch)
                    .list(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn initialize(&self, addr: &str, members: Vec<pb::Node>) -> Result<(), ClientError> {
        let ch = self.channel(addr)?;
        ClusterClient::new(ch)
            .initialize(pb::InitializeRequest { members })
            .await
            .map(|_| ())
            .map_err(ClientError::Status)
    }

    pub async fn add_learner(&self, node: pb::Node) -> Result<pb::MembershipResponse, ClientError> {
        self.call(|ch| {
            let node = node.clone();
            async move {
                ClusterClient::new(ch)
                    .add_learner(pb::AddLearnerRequest { node: Some(node) })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn change_membership(
        &self,
        voters: Vec<u64>,
        retain: bool,
    ) -> Result<pb::MembershipResponse, ClientError> {
        self.call(|ch| {
            let req = pb::ChangeMembershipRequest {
                voters: voters.clone(),
                retain,
            };
            async move {
                ClusterClient::new(ch)
                    .change_membership(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }
}

impl Client {
    /// Make learner `node_id` a voter.
    pub async fn promote(&self, node_id: u64) -> Result<pb::MembershipResponse, ClientError> {
        self.call(|ch| async move {
            ClusterClient::new(ch)
                .promote(pb::NodeIdRequest { node_id })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Remove member `node_id` (voter or learner) from the cluster.
    pub async fn remove_node(&self, node_id: u64) -> Result<pb::MembershipResponse, ClientError> {
        self.call(|ch| async move {
            ClusterClient::new(ch)
                .remove(pb::NodeIdRequest { node_id })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Replace the role mapping on every node (TOML of the `[roles]` table,
    /// without `peer`): a committed, audited command.
    pub async fn set_roles(&self, roles_toml: &str) -> Result<pb::SetRolesResponse, ClientError> {
        self.call(|ch| async move {
            ClusterClient::new(ch)
                .set_roles(pb::SetRolesRequest {
                    roles_toml: roles_toml.to_string(),
                })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Remove the audit chain's entries before `before` (down to a segment
    /// boundary) on every node: archive them first (`audit_export_to`).
    pub async fn prune_audit(
        &self,
        before: u64,
        reason: &str,
    ) -> Result<pb::PruneAuditResponse, ClientError> {
        self.call(|ch| async move {
            ClusterClient::new(ch)
                .prune_audit(pb::PruneAuditRequest {
                    before,
                    reason: reason.to_string(),
                })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// The role mapping in force on the node that answers.
    pub async fn get_roles(&self) -> Result<pb::GetRolesResponse, ClientError> {
        self.call(|ch| async move {
            ClusterClient::new(ch)
                .get_roles(pb::GetRolesRequest {})
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Replace the policy set on every node: a committed, audited command.
    pub async fn apply_policy(
        &self,
        req: pb::ApplyPolicyRequest,
    ) -> Result<pb::ApplyPolicyResponse, ClientError> {
        self.call(|ch| {
            let req = req.clone();
            async move {
                PolicyClient::new(ch)
                    .apply(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Compile a policy set on a node without applying it.
    pub async fn validate_policy(
        &self,
        req: pb::ApplyPolicyRequest,
    ) -> Result<pb::ValidatePolicyResponse, ClientError> {
        self.call(|ch| {
            let req = req.clone();
            async move {
                PolicyClient::new(ch)
                    .validate(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// The policy set in force (linearizable unless `allow_stale`).
    pub async fn get_policy(
        &self,
        allow_stale: bool,
    ) -> Result<pb::GetPolicyResponse, ClientError> {
        self.call(|ch| async move {
            PolicyClient::new(ch)
                .get(pb::GetPolicyRequest { allow_stale })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// The standard gRPC health status of one node (service ""):
    /// "SERVING" while it is part of a cluster that can make progress.
    pub async fn health_of(&self, addr: &str) -> Result<String, ClientError> {
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
        let r = HealthClient::new(self.channel(addr)?)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(ClientError::Status)?;
        Ok(ServingStatus::try_from(r.into_inner().status)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| "UNKNOWN".into()))
    }

    /// Write a backup file of the cluster's state (see `grant_proto::backup`)
    /// to `out` as it arrives (a backup is as large as the state), served
    /// after a read barrier; or, with `stale_from`, that node's own state
    /// without one (after losing a majority). `out` is rewritten from its
    /// start by each attempt; the caller checks and publishes it.
    pub async fn backup_to(
        &self,
        stale_from: Option<&str>,
        out: &std::path::Path,
    ) -> Result<(), ClientError> {
        self.backup_to_with(stale_from, out, &|_| {}).await
    }

    /// As [`Client::backup_to`], telling `progress` the bytes written so far
    /// after each chunk.
    pub async fn backup_to_with(
        &self,
        stale_from: Option<&str>,
        out: &std::path::Path,
        progress: Progress<'_>,
    ) -> Result<(), ClientError> {
        use futures_util::StreamExt;
        let allow_stale = stale_from.is_some();
        let fetch = |ch: Ch| async move {
            let stream = ClusterClient::new(ch)
                .backup(pb::BackupRequest { allow_stale })
                .await?
                .into_inner()
                .map(|c| c.map(|c| c.data));
            stream_to_file(stream, out, progress).await
        };
        match stale_from {
            Some(a) => fetch(self.channel(a)?).await.map_err(ClientError::Status),
            None => self.call(fetch).await,
        }
    }

    /// Hand leadership to voter `node_id`; returns once it leads.
    pub async fn transfer_leader(
        &self,
        node_id: u64,
    ) -> Result<pb::TransferLeaderResponse, ClientError> {
        self.call(|ch| async move {
            ClusterClient::new(ch)
                .transfer_leader(pb::NodeIdRequest { node_id })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }
}

/// Certainly nothing was decided: the node said it is not the leader (it
/// proposed nothing, docs/api.md), or no connection was made to it.
fn never_reached_a_handler(s: &Status) -> bool {
    if error_code(s) == Some("not_leader") {
        return true;
    }
    if s.code() != Code::Unavailable || error_code(s).is_some() {
        return false;
    }
    // A connection refused, or not made in time: the request was never sent.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
            );
        }
        cause = e.source();
    }
    false
}

/// Worth another attempt elsewhere or later: the node is not the leader, has
/// no quorum, or cannot be reached. Safe for every call but Check and Renew:
/// writes carry request ids or are idempotent.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    ) && error_code(s) != Some("resource_exhausted")
}

impl Client {
    fn audit_client(ch: Ch) -> AuditClient<Ch> {
        AuditClient::new(ch).max_decoding_message_size(4 * 1024 * 1024)
    }

    /// The audit export of one node (`addr`), or of whichever node answers.
    /// Stream the export to the file `out` (of the node at `addr`, or of
    /// any node), telling `progress` the bytes written so far.
    pub async fn audit_export_to(
        &self,
        addr: Option<&str>,
        out: &std::path::Path,
        progress: Progress<'_>,
    ) -> Result<(), ClientError> {
        use futures_util::StreamExt;
        let fetch = |ch: Ch| async move {
            let stream = Self::audit_client(ch)
                .export(pb::ExportRequest {})
                .await?
                .into_inner()
                .map(|c| c.map(|c| c.data));
            stream_to_file(stream, out, progress).await
        };
        match addr {
            Some(a) => fetch(self.channel(a)?).await.map_err(ClientError::Status),
            None => self.call(fetch).await,
        }
    }

    /// The whole export in memory (tests and small logs; grantctl streams
    /// it to a file with [`Client::audit_export_to`]).
    pub async fn audit_export(&self, addr: Option<&str>) -> Result<Vec<u8>, ClientError> {
        use futures_util::StreamExt;
        let fetch = |ch: Ch| async move {
            let mut stream = Self::audit_client(ch)
                .export(pb::ExportRequest {})
                .await?
                .into_inner();
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk?.data);
            }
            Ok(out)
        };
        match addr {
            Some(a) => fetch(self.channel(a)?).await.map_err(ClientError::Status),
            None => self.call(fetch).await,
        }
    }

    pub async fn latest_checkpoint(&self) -> Result<pb::CheckpointResponse, ClientError> {
        self.call(|ch| async move {
            Self::audit_client(ch)
                .latest_checkpoint(pb::LatestCheckpointRequest { allow_stale: false })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    pub async fn inclusion_proof(
        &self,
        seq: u64,
        tree_size: u64,
    ) -> Result<pb::InclusionProofResponse, ClientError> {
        self.call(|ch| async move {
            Self::audit_client(ch)
                .inclusion_proof(pb::InclusionProofRequest { seq, tree_size })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    pub async fn consistency_proof(
        &self,
        from_size: u64,
        to_size: u64,
    ) -> Result<pb::ConsistencyProofResponse, ClientError> {
        self.call(|ch| async move {
            Self::audit_client(ch)
                .consistency_proof(pb::ConsistencyProofRequest { from_size, to_size })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    pub async fn audit_entries(
        &self,
        from_seq: u64,
        limit: u32,
    ) -> Result<pb::GetEntriesResponse, ClientError> {
        self.call(|ch| async move {
            Self::audit_client(ch)
                .get_entries(pb::GetEntriesRequest {
                    from_seq,
                    limit,
                    allow_stale: false,
                })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Rotate the signing key of the node at `addr`.
    pub async fn rotate_key(&self, addr: &str) -> Result<pb::RotateKeyResponse, ClientError> {
        Self::audit_client(self.channel(addr)?)
            .rotate_key(pb::RotateKeyRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Status)
    }

    pub async fn roster(&self) -> Result<pb::RosterResponse, ClientError> {
        self.call(|ch| async move {
            Self::audit_client(ch)
                .roster(pb::RosterRequest {})
                .await
                .map(|r| r.into_inner())
        })
        .await
    }
}

pub use grant_proto::convert::entry_from_pb;

/// Told the bytes done so far by long transfers (grantctl draws a progress
/// bar with it).
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// Write a stream of chunks to `out` (created or truncated), telling
/// `progress` after each; an error names the file.
async fn stream_to_file(
    mut stream: impl futures_util::Stream<Item = Result<Vec<u8>, Status>> + Unpin,
    out: &std::path::Path,
    progress: Progress<'_>,
) -> Result<(), Status> {
    use futures_util::StreamExt;
    use std::io::Write;
    let io = |e: std::io::Error| Status::internal(format!("cannot write {}: {e}", out.display()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
    let mut done = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        f.write_all(&chunk).map_err(io)?;
        done += chunk.len() as u64;
        progress(done);
    }
    f.flush().map_err(io)
}
