//! The Grants service: Check, Revoke, Get, List, Jwks, Watch; Issue,
//! Delegate and Renew are in `minting`, the task RPCs in `api::tasks`.

mod minting;

use grant_proto::v1 as pb;
use grant_proto::v1::grants_server::Grants;
use tonic::{Request, Response, Status};

use super::batcher::Batchers;
use super::errors::ApiError;
use super::{now_ms, tasks, token, validate, NodeContext};
use crate::audit::keys::{NodeKey, SharedKey};
use crate::auth::layer::Caller;
use crate::auth::roles::Role;
use crate::ledger::{
    self, AuditRef, CheckCmd, Command, CommandResult, GrantRecord, GrantState, Reason, TaskState,
};
use crate::limits::*;
use crate::storage::state_machine::ListOf;

pub struct GrantsService {
    ctx: NodeContext,
    batchers: Batchers,
    /// This node's keys: its token key signs the tokens it hands out.
    key: SharedKey,
    verifier: token::Verifier,
    /// The token key id known to be published (skips the roster lookup).
    published: std::sync::Mutex<String>,
    watchers: super::watch::Watchers,
}

impl GrantsService {
    pub fn new(
        ctx: NodeContext,
        batchers: Batchers,
        key: SharedKey,
        watchers: super::watch::Watchers,
    ) -> Self {
        GrantsService {
            watchers,
            verifier: token::Verifier::new(ctx.state.clone()),
            ctx,
            batchers,
            key,
            published: Default::default(),
        }
    }

    /// This node's current key, published before its first token: a token
    /// signed with a key the others do not know would not verify there.
    async fn signing_key(&self) -> Result<std::sync::Arc<NodeKey>, ApiError> {
        let key = crate::audit::keys::current(&self.key);
        if *self.published.lock().expect("published lock") != key.token.kid {
            // On a follower this fails with the leader's address, as any write.
            crate::audit::publisher::ensure_registered(&self.ctx, &key).await?;
            *self.published.lock().expect("published lock") = key.token.kid.clone();
        }
        Ok(key)
    }

    /// The token of a grant, signed with `key`.
    fn token_of(&self, key: &NodeKey, g: &GrantRecord) -> Result<token::Minted, ApiError> {
        let claims = token::Claims::of(
            &self.ctx.config.audit_origin,
            &g.grant_id,
            &g.subject,
            &g.task_id,
            &g.scopes,
            &g.issuer,
            g.issued_at_ms,
            g.expires_at_ms,
        );
        token::mint(&key.token, &claims)
    }

    /// The identity presenting a token to Check. A checker (a tool server)
    /// names the workload it authenticated; any other caller presents its
    /// own token, as itself, and may not speak for someone else.
    fn presenter(&self, caller: &Caller, named: String) -> Result<String, ApiError> {
        if self.ctx.access.has(caller, Role::Checker) {
            validate::spiffe_id("identity", &named)?;
            return Ok(named);
        }
        let own = caller.id();
        if !named.is_empty() && named != own {
            return Err(ApiError::PermissionDenied(format!(
                "{own} may check only its own grants: presenting for {named} needs the checker role"
            )));
        }
        Ok(own.to_string())
    }
}

/// A new grant id: 128 bits from the OS CSPRNG, hex.
fn new_grant_id() -> String {
    use rand::RngCore;
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    hex::encode(id)
}

/// Name the request in its log lines by the caller's (validated) request id (the rpc
/// span set by `metrics::RpcService` carries a generated one until then).
fn log_request_id(id: &str) {
    if !id.is_empty() {
        tracing::Span::current().record("request_id", id);
    }
}

/// Where the request landed: its log index and, when it appended an audit
/// entry, that entry's sequence number and hash (as apply chained them).
pub(crate) fn receipt(log_index: u64, audit: Option<AuditRef>) -> Option<pb::Receipt> {
    let (audit_seq, entry_hash) = audit.map(|a| (a.seq, a.hash.to_vec())).unwrap_or_default();
    Some(pb::Receipt {
        log_index,
        audit_seq,
        entry_hash,
    })
}

fn to_pb_grant(g: &GrantRecord, now: i64) -> pb::Grant {
    let state = match g.state_at(now) {
        GrantState::Active => pb::GrantState::Active,
        GrantState::Revoked => pb::GrantState::Revoked,
        GrantState::Expired => pb::GrantState::Expired,
    };
    pb::Grant {
        grant_id: g.grant_id.clone(),
        subject: g.subject.clone(),
        task_id: g.task_id.clone(),
        scopes: g
            .scopes
            .iter()
            .map(|s| pb::Scope {
                resource: s.resource.clone(),
                actions: s.actions.clone(),
            })
            .collect(),
        intent: g.intent.clone(),
        issued_at_ms: g.issued_at_ms,
        expires_at_ms: g.expires_at_ms,
        state: state as i32,
        revoked_at_ms: g.revoked_at_ms,
        revoke_reason: g.revoke_reason.clone(),
        issuer: g.issuer.clone(),
        parent_grant_id: g.parent_grant_id.clone(),
        sub_task: g.sub_task.clone(),
        depth: g.depth,
    }
}

fn to_pb_reason(r: Reason) -> pb::Reason {
    match r {
        Reason::Allowed => pb::Reason::Allowed,
        Reason::UnknownGrant => pb::Reason::UnknownGrant,
        Reason::Revoked => pb::Reason::Revoked,
        Reason::Expired => pb::Reason::Expired,
        Reason::SubjectMismatch => pb::Reason::SubjectMismatch,
        Reason::OutOfScope => pb::Reason::OutOfScope,
        Reason::BadToken => pb::Reason::BadToken,
        Reason::TaskCompleted => pb::Reason::TaskCompleted,
        Reason::TaskAborted => pb::Reason::TaskAborted,
        Reason::PolicyDenied => pb::Reason::PolicyDenied,
    }
}

pub(crate) fn unexpected(r: CommandResult) -> ApiError {
    match r {
        CommandResult::Rejected(rej) => rej.into(),
        CommandResult::PolicyDenied { message, .. } => ApiError::PolicyDenied(message),
        other => ApiError::Internal(format!("unexpected apply result {other:?}")),
    }
}

#[tonic::async_trait]
impl Grants for GrantsService {
    type WatchStream = super::watch::WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(
            self.watchers.start(&self.ctx, req.into_inner())?,
        ))
    }
    async fn issue(
        &self,
        req: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let caller = Caller::of(&req);
        Ok(Response::new(
            self.issue_rpc(&caller, req.into_inner()).await?,
        ))
    }

    async fn delegate(
        &self,
        req: Request<pb::DelegateRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let caller = Caller::of(&req);
        Ok(Response::new(
            self.delegate_rpc(&caller, req.into_inner()).await?,
        ))
    }

    async fn check(
        &self,
        req: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let (grant_id, forged, token_expires_at_ms) = match self.verifier.check(&r.token)? {
            token::Presented::Valid {
                grant_id,
                expires_at_ms,
            } => (grant_id, false, expires_at_ms),
            token::Presented::Forged => (String::new(), true, 0),
        };
        let identity = self.presenter(&caller, r.identity)?;
        validate::name("resource", &r.resource, RESOURCE_BYTES_MAX)?;
        validate::name("action", &r.action, ACTION_BYTES_MAX)?;
        let attributes = r.attributes.into_iter().collect();
        grant_policy::check_attributes(&attributes)
            .map_err(|e| ApiError::invalid("attributes", e))?;
        let cmd = CheckCmd {
            grant_id,
            forged,
            identity,
            resource: r.resource,
            action: r.action,
            actor: caller.id().to_string(),
            attributes,
            token_expires_at_ms,
        };
        let (o, index) = self.batchers.checks.check(cmd).await?;
        Ok(Response::new(pb::CheckResponse {
            decision: if o.allow {
                pb::Decision::Allow
            } else {
                pb::Decision::Deny
            } as i32,
            reason: to_pb_reason(o.reason) as i32,
            grant_id: o.grant_id,
            receipt: receipt(index, Some(o.audit)),
            policy_ids: o.policy_ids,
            task_id: o.task_id,
            expires_at_ms: o.expires_at_ms,
        }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        if !r.request_id.is_empty() {
            validate::request_id(&r.request_id)?;
            log_request_id(&r.request_id);
        }
        validate::grant_id("grant_id", &r.grant_id)?;
        validate::text("reason", &r.reason, REVOKE_REASON_BYTES_MAX)?;
        let cmd = ledger::RevokeCmd {
            grant_id: r.grant_id,
            reason: r.reason,
            actor: caller.id().to_string(),
            now_ms: now_ms(),
        };
        // Into the next batch of revokes (one log entry for all that
        // arrive together).
        match self.batchers.revokes.write(cmd).await? {
            (
                CommandResult::Revoked {
                    grant,
                    already_inactive,
                    audit,
                    descendants_revoked,
                },
                index,
            ) => Ok(Response::new(pb::RevokeResponse {
                grant: Some(to_pb_grant(&grant, now_ms())),
                already_inactive,
                receipt: receipt(index, audit),
                descendants_revoked,
            })),
            (other, _) => Err(unexpected(other).into()),
        }
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let caller = Caller::of(&req);
        Ok(Response::new(
            self.renew_rpc(&caller, req.into_inner()).await?,
        ))
    }

    async fn begin_task(
        &self,
        req: Request<pb::BeginTaskRequest>,
    ) -> Result<Response<pb::BeginTaskResponse>, Status> {
        let caller = Caller::of(&req);
        Ok(Response::new(
            tasks::begin(&self.ctx, &caller, req.into_inner()).await?,
        ))
    }

    async fn complete_task(
        &self,
        req: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        log_request_id(&r.request_id);
        let c = tasks::close(
            &self.ctx,
            &caller,
            &r.request_id,
            &r.task_id,
            r.reason,
            TaskState::Completed,
        )
        .await?;
        Ok(Response::new(pb::CompleteTaskResponse {
            revoked_grant_ids: c.revoked_grant_ids,
            already_closed: c.already_closed,
            receipt: c.receipt,
            task: Some(c.task),
        }))
    }

    async fn abort_task(
        &self,
        req: Request<pb::AbortTaskRequest>,
    ) -> Result<Response<pb::AbortTaskResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        log_request_id(&r.request_id);
        let c = tasks::close(
            &self.ctx,
            &caller,
            &r.request_id,
            &r.task_id,
            r.reason,
            TaskState::Aborted,
        )
        .await?;
        Ok(Response::new(pb::AbortTaskResponse {
            revoked_grant_ids: c.revoked_grant_ids,
            already_closed: c.already_closed,
            receipt: c.receipt,
            task: Some(c.task),
        }))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        Ok(Response::new(
            tasks::get(&self.ctx, req.into_inner()).await?,
        ))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let r = req.into_inner();
        validate::grant_id("grant_id", &r.grant_id)?;
        self.ctx.read_barrier(r.allow_stale).await?;
        let g = self
            .ctx
            .state
            .grant(&r.grant_id)
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("no grant {}", r.grant_id)))?;
        Ok(Response::new(pb::GetResponse {
            grant: Some(to_pb_grant(&g, now_ms())),
            applied_index: self
                .ctx
                .state
                .last_applied_index()
                .map_err(ApiError::from)?,
            stale_allowed: r.allow_stale,
        }))
    }

    async fn jwks(
        &self,
        _req: Request<pb::JwksRequest>,
    ) -> Result<Response<pb::JwksResponse>, Status> {
        let keys: Vec<serde_json::Value> = self
            .ctx
            .state
            .token_keys()
            .map_err(ApiError::from)?
            .into_iter()
            .map(|(kid, x)| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid,
                    "alg": "EdDSA", "use": "sig",
                })
            })
            .collect();
        Ok(Response::new(pb::JwksResponse {
            jwks_json: serde_json::json!({ "keys": keys }).to_string(),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let r = req.into_inner();
        let of = match &r.by {
            Some(pb::list_request::By::TaskId(t)) => {
                validate::name("task_id", t, TASK_ID_BYTES_MAX)?;
                ListOf::Task(t)
            }
            Some(pb::list_request::By::Subject(s)) => {
                validate::spiffe_id("subject", s)?;
                ListOf::Subject(s)
            }
            None => return Err(ApiError::invalid("by", "name a task_id or a subject").into()),
        };
        let page_size = match r.page_size {
            0 => LIST_PAGE_SIZE_DEFAULT,
            n if n > LIST_PAGE_SIZE_MAX => {
                return Err(ApiError::invalid(
                    "page_size",
                    format!("{n} exceeds {LIST_PAGE_SIZE_MAX}"),
                )
                .into())
            }
            n => n,
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            validate::grant_id("page_token", &r.page_token)?;
            Some(r.page_token.as_str())
        };
        self.ctx.read_barrier(r.allow_stale).await?;
        let (grants, more) = self
            .ctx
            .state
            .list(of, after, page_size as usize)
            .map_err(ApiError::from)?;
        let now = now_ms();
        Ok(Response::new(pb::ListResponse {
            next_page_token: if more {
                grants
                    .last()
                    .map(|g| g.grant_id.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            },
            grants: grants.iter().map(|g| to_pb_grant(g, now)).collect(),
            applied_index: self
                .ctx
                .state
                .last_applied_index()
                .map_err(ApiError::from)?,
            stale_allowed: r.allow_stale,
        }))
    }
}
