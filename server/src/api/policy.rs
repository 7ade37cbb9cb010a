//! The Policy service: replace, read and dry-run the Cedar policy set
//! every Issue and Check is decided against. A change is a committed,
//! audited command, applied on every node at the same log index.

use grant_proto::v1 as pb;
use grant_proto::v1::policy_server::Policy;
use tonic::{Request, Response, Status};

use super::errors::ApiError;
use super::grants::{receipt, unexpected};
use super::{now_ms, NodeContext};
use crate::auth::layer::Caller;
use crate::ledger::{Command, CommandResult, NoMatch, PolicyRecord, SetPolicyCmd};

pub struct PolicyService {
    ctx: NodeContext,
}

impl PolicyService {
    pub fn new(ctx: NodeContext) -> Self {
        PolicyService { ctx }
    }
}

/// The record a request asks for, compiled: refused with Cedar's
/// diagnostics before anything is proposed.
fn compile(r: pb::ApplyPolicyRequest) -> Result<(PolicyRecord, Vec<String>), ApiError> {
    let no_match = match r.no_match.as_str() {
        "" => NoMatch::Deny,
        s => s
            .parse()
            .map_err(|e: String| ApiError::invalid("no_match", e))?,
    };
    let schema = if r.schema.is_empty() {
        grant_policy::SCHEMA_DEFAULT.to_string()
    } else {
        r.schema
    };
    let compiled = grant_policy::compile(&r.policies, &schema, no_match)
        .map_err(|e| ApiError::invalid("policies", e.0))?;
    Ok((
        PolicyRecord {
            policies: r.policies,
            schema,
            no_match,
        },
        compiled.ids().to_vec(),
    ))
}

#[tonic::async_trait]
impl Policy for PolicyService {
    async fn apply(
        &self,
        req: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let caller = Caller::of(&req);
        let (record, _) = compile(req.into_inner())?;
        let sha = record.policies_sha256();
        let cmd = Command::SetPolicy(SetPolicyCmd {
            record,
            actor: caller.id().to_string(),
            now_ms: now_ms(),
        });
        match self.ctx.propose(cmd).await? {
            (CommandResult::PolicySet { policy_ids, audit }, index) => {
                tracing::info!(policies = policy_ids.len(), sha256 = %sha, "policy set applied");
                Ok(Response::new(pb::ApplyPolicyResponse {
                    receipt: receipt(index, Some(audit)),
                    policy_ids,
                    policies_sha256: sha,
                }))
            }
            (other, _) => Err(unexpected(other).into()),
        }
    }

    async fn get(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        self.ctx.read_barrier(req.get_ref().allow_stale).await?;
        let stored = self
            .ctx
            .state
            .policy_record()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let Some((log_index, rec)) = stored else {
            return Ok(Response::new(pb::GetPolicyResponse::default()));
        };
        // From the record read, not the compiled set in force, which a
        // concurrent apply may already have replaced (Get is rare).
        let policy_ids = grant_policy::compile(&rec.policies, &rec.schema, rec.no_match)
            .map(|p| p.ids().to_vec())
            .map_err(|e| ApiError::Internal(format!("stored policy set: {e}")))?;
        Ok(Response::new(pb::GetPolicyResponse {
            in_force: true,
            policies_sha256: rec.policies_sha256(),
            policies: rec.policies,
            schema: rec.schema,
            no_match: rec.no_match.as_str().into(),
            policy_ids,
            log_index,
        }))
    }

    async fn validate(
        &self,
        req: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ValidatePolicyResponse>, Status> {
        let (_, policy_ids) = compile(req.into_inner())?;
        Ok(Response::new(pb::ValidatePolicyResponse { policy_ids }))
    }
}
