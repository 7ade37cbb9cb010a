//! The Grants RPCs that hand out tokens: Issue, Delegate and Renew.

use sha2::{Digest, Sha256};

use super::*;

/// A grant about to be proposed, as Issue or Delegate computed it.
struct NewGrant {
    request_id: String,
    fingerprint: String,
    subject: String,
    task_id: String,
    scopes: Vec<ledger::Scope>,
    intent: String,
    expires_at_ms: i64,
    now: i64,
}

/// The TTL asked for, or the default; above the maximum is refused.
fn ttl(ctx: &NodeContext, asked: u64) -> Result<u64, ApiError> {
    let cfg = &ctx.config;
    validate::seconds(
        "ttl_seconds",
        asked,
        cfg.ttl_seconds_default,
        cfg.ttl_seconds_max,
    )
}

fn scopes_of(scopes: &[pb::Scope]) -> Result<Vec<ledger::Scope>, ApiError> {
    let scopes: Vec<ledger::Scope> = scopes
        .iter()
        .map(|s| ledger::Scope {
            resource: s.resource.clone(),
            actions: s.actions.clone(),
        })
        .collect();
    validate::scopes(&scopes)?;
    Ok(scopes)
}

/// Fingerprint of a request's parameters: a request id reused with other
/// parameters is refused instead of answered with the first grant. The
/// calling identity is part of it: another caller reusing the id gets a
/// conflict, not someone else's grant (nor a token for it). A delegation
/// adds its parent and sub-task.
fn fingerprint(parts: &[&str], scopes: &[ledger::Scope], ttl_seconds: u64) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    for s in scopes {
        h.update((s.resource.len() as u64).to_be_bytes());
        h.update(s.resource.as_bytes());
        for a in &s.actions {
            h.update((a.len() as u64).to_be_bytes());
            h.update(a.as_bytes());
        }
        h.update(b"\xff");
    }
    h.update(ttl_seconds.to_be_bytes());
    hex::encode(h.finalize())
}

/// A grant, by id (its subject, issuer, task, scopes and parent never
/// change: see `NodeContext::read_settled`).
async fn known_grant(ctx: &NodeContext, grant_id: &str) -> Result<GrantRecord, ApiError> {
    ctx.read_settled(|s| s.grant(grant_id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no grant {grant_id}")))
}

impl GrantsService {
    pub(super) async fn issue_rpc(
        &self,
        caller: &Caller,
        r: pb::IssueRequest,
    ) -> Result<pb::IssueResponse, ApiError> {
        validate::request_id(&r.request_id)?;
        log_request_id(&r.request_id);
        validate::spiffe_id("subject", &r.subject)?;
        if !self.ctx.access.may_issue_for(caller, &r.subject) {
            return Err(ApiError::PermissionDenied(format!(
                "{} may not issue grants for {}: no roles.issuer entry pairs them",
                caller.id(),
                r.subject
            )));
        }
        validate::name("task_id", &r.task_id, TASK_ID_BYTES_MAX)?;
        let intent = validate::intent(r.intent, self.ctx.config.intent_required)?;
        let scopes = scopes_of(&r.scopes)?;
        let ttl_seconds = ttl(&self.ctx, r.ttl_seconds)?;
        // The task must exist; a closed one is left to the ledger, which
        // answers a retried request id with its grant before it refuses.
        let task = tasks::known_task(&self.ctx, &r.task_id).await?;
        let now = now_ms();
        let g = NewGrant {
            fingerprint: fingerprint(
                &[caller.id(), &r.subject, &r.task_id, &intent],
                &scopes,
                ttl_seconds,
            ),
            request_id: r.request_id,
            subject: r.subject,
            task_id: r.task_id,
            scopes,
            intent,
            expires_at_ms: tasks::grant_expiry(&task, now, ttl_seconds),
            now,
        };
        self.propose_grant(caller, g, None).await
    }

    pub(super) async fn delegate_rpc(
        &self,
        caller: &Caller,
        r: pb::DelegateRequest,
    ) -> Result<pb::IssueResponse, ApiError> {
        validate::request_id(&r.request_id)?;
        log_request_id(&r.request_id);
        let parent_id = match self.verifier.check(&r.parent_token)? {
            token::Presented::Valid { grant_id, .. } => grant_id,
            token::Presented::Forged => {
                return Err(ApiError::invalid(
                    "parent_token",
                    "does not verify with a cluster token key",
                ))
            }
        };
        validate::spiffe_id("subject", &r.subject)?;
        validate::text("sub_task", &r.sub_task, TASK_ID_BYTES_MAX)?;
        validate::text("intent", &r.intent, INTENT_BYTES_MAX)?;
        let scopes = scopes_of(&r.scopes)?;
        let ttl_seconds = ttl(&self.ctx, r.ttl_seconds)?;
        let parent = known_grant(&self.ctx, &parent_id).await?;
        if parent.subject != caller.id() {
            return Err(ApiError::PermissionDenied(format!(
                "{} may not delegate from grant {parent_id}: only its holder {} may",
                caller.id(),
                parent.subject
            )));
        }
        // Told here, before anything is proposed; the ledger decides again.
        if let Some((resource, action)) = parent.widened_by(&scopes) {
            return Err(ApiError::invalid(
                "scopes",
                format!(
                    "the parent grant does not cover {action:?} on {resource:?}: a delegation cannot widen it"
                ),
            ));
        }
        let task = tasks::known_task(&self.ctx, &parent.task_id).await?;
        let now = now_ms();
        // The parent's expiry only moves later (Renew): capping at this
        // node's copy never lets the sub-grant outlive it.
        let expires_at_ms = tasks::grant_expiry(&task, now, ttl_seconds).min(parent.expires_at_ms);
        let g = NewGrant {
            fingerprint: fingerprint(
                &[caller.id(), &r.subject, &parent_id, &r.sub_task, &r.intent],
                &scopes,
                ttl_seconds,
            ),
            request_id: r.request_id,
            subject: r.subject,
            task_id: parent.task_id.clone(),
            scopes,
            // Unsaid, the purpose is the parent's.
            intent: if r.intent.is_empty() {
                parent.intent.clone()
            } else {
                r.intent
            },
            expires_at_ms,
            now,
        };
        self.propose_grant(caller, g, Some((parent_id, r.sub_task)))
            .await
    }

    /// Mint the grant's token, propose it (as an Issue, or a Delegate from
    /// `parent` with its sub-task), answer with the grant and the token.
    async fn propose_grant(
        &self,
        caller: &Caller,
        g: NewGrant,
        parent: Option<(String, String)>,
    ) -> Result<pb::IssueResponse, ApiError> {
        // Last, so that a request refused for what it says costs no token.
        self.ctx.issue_rate.take(caller.id())?;
        let key = self.signing_key().await?;
        let grant_id = new_grant_id();
        let claims = token::Claims::of(
            &self.ctx.config.audit_origin,
            &grant_id,
            &g.subject,
            &g.task_id,
            &g.scopes,
            caller.id(),
            g.now,
            g.expires_at_ms,
        );
        let minted = token::mint(&key.token, &claims)?;
        let issue = ledger::IssueCmd {
            request_id: g.request_id,
            fingerprint: g.fingerprint,
            grant_id,
            subject: g.subject,
            task_id: g.task_id,
            scopes: g.scopes,
            intent: g.intent,
            issuer: caller.id().to_string(),
            token_hash: minted.token_hash,
            now_ms: g.now,
            expires_at_ms: g.expires_at_ms,
            // Renewals may take it this far (a delegated grant: and no
            // further than its parent).
            max_expires_at_ms: g.now + (self.ctx.config.ttl_seconds_max as i64) * 1000,
            quota: ledger::Quota {
                active_per_subject_max: self.ctx.config.active_grants_per_subject_max,
                active_per_task_max: self.ctx.config.active_grants_per_task_max,
            },
        };
        // An issue goes into the next batch of issues (one log entry for
        // all that arrive together); a delegation is an entry of its own.
        let proposed = match parent {
            None => self.batchers.issues.write(issue).await?,
            Some((parent_grant_id, sub_task)) => {
                self.ctx
                    .propose(Command::Delegate(ledger::DelegateCmd {
                        grant: issue,
                        parent_grant_id,
                        sub_task,
                        depth_max: self.ctx.config.delegation_depth_max,
                    }))
                    .await?
            }
        };
        match proposed {
            (
                CommandResult::Issued {
                    grant,
                    replayed,
                    audit,
                },
                index,
            ) => Ok(pb::IssueResponse {
                grant: Some(to_pb_grant(&grant, now_ms())),
                // A replay comes from the same caller (the fingerprint
                // binds it): it gets a token for the grant it created.
                token: if replayed {
                    self.token_of(&key, &grant)?.token
                } else {
                    minted.token
                },
                replayed,
                receipt: receipt(index, audit),
            }),
            (other, _) => Err(unexpected(other)),
        }
    }

    pub(super) async fn renew_rpc(
        &self,
        caller: &Caller,
        r: pb::RenewRequest,
    ) -> Result<pb::RenewResponse, ApiError> {
        validate::grant_id("grant_id", &r.grant_id)?;
        let ttl_seconds = ttl(&self.ctx, r.ttl_seconds)?;
        let g = known_grant(&self.ctx, &r.grant_id).await?;
        if caller.id() != g.issuer && caller.id() != g.subject {
            return Err(ApiError::PermissionDenied(format!(
                "{} may not renew grant {}: only its issuer or its subject may",
                caller.id(),
                r.grant_id
            )));
        }
        let key = self.signing_key().await?;
        let now = now_ms();
        let cmd = Command::Renew(ledger::RenewCmd {
            grant_id: r.grant_id,
            expires_at_ms: now + (ttl_seconds as i64) * 1000,
            actor: caller.id().to_string(),
            now_ms: now,
        });
        match self.ctx.propose(cmd).await? {
            (
                CommandResult::Renewed {
                    grant,
                    extended,
                    audit,
                },
                index,
            ) => {
                let deadline = self
                    .ctx
                    .state
                    .task(&grant.task_id)?
                    .map_or(i64::MAX, |t| t.deadline_ms);
                Ok(pb::RenewResponse {
                    token: self.token_of(&key, &grant)?.token,
                    max_expires_at_ms: grant.max_expires_at_ms.min(deadline),
                    grant: Some(to_pb_grant(&grant, now_ms())),
                    extended,
                    receipt: receipt(index, audit),
                })
            }
            (other, _) => Err(unexpected(other)),
        }
    }
}
