//! PruneAudit (Cluster service): move the audit chain's start forward on
//! every replica, once an operator archived what lies before it
//! (docs/operations.md, "Retention"). The leader reads the new start from
//! its own store (it holds the entries and hashes the start is made of),
//! then proposes it; apply checks it again, so every replica moves alike.

use grant_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::errors::ApiError;
use super::grants::{receipt, unexpected};
use super::{now_ms, validate, NodeContext};
use crate::auth::layer::Caller;
use crate::ledger::{prune_refused, Command, CommandResult, PruneAuditCmd};
use crate::limits::{AUDIT_SEGMENT_ENTRIES, PRUNE_REASON_BYTES_MAX};

pub async fn prune(
    ctx: &NodeContext,
    req: Request<pb::PruneAuditRequest>,
) -> Result<Response<pb::PruneAuditResponse>, Status> {
    let caller = Caller::of(&req);
    let r = req.into_inner();
    validate::text("reason", &r.reason, PRUNE_REASON_BYTES_MAX)?;
    let seq = r.before - r.before % AUDIT_SEGMENT_ENTRIES;
    if seq == 0 {
        return Err(ApiError::invalid(
            "before",
            format!(
                "a prune removes whole segments of {AUDIT_SEGMENT_ENTRIES} entries \
                 (audit_segment_entries): before must be at least that"
            ),
        )
        .into());
    }
    // Only the leader reads the start: a follower's answer sends the
    // caller on (api::forward).
    ctx.require_leader()?;
    let state = ctx.state.clone();
    let old = state.chain_start().map_err(ApiError::from)?;
    let covered = state
        .latest_checkpoint()
        .map_err(ApiError::from)?
        .map_or(0, |c| c.0);
    // Apply's own rule, asked first: reading the start needs it to hold.
    if let Some(why) = prune_refused(seq, old.seq, covered) {
        return Err(ApiError::FailedPrecondition(why).into());
    }
    let roster = state.roster_seqs().map_err(ApiError::from)?;
    let files = state.audit_files();
    let start = tokio::task::spawn_blocking(move || {
        files.require_whole()?;
        files.start_at(seq, &old, &roster)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(ApiError::from)?;
    let cmd = Command::PruneAudit(PruneAuditCmd {
        start,
        actor: caller.id().to_string(),
        reason: r.reason,
        now_ms: now_ms(),
    });
    match ctx.propose(cmd).await? {
        (
            CommandResult::Pruned {
                start,
                previous,
                audit,
            },
            index,
        ) => Ok(Response::new(pb::PruneAuditResponse {
            start,
            previous_start: previous,
            receipt: receipt(index, Some(audit)),
        })),
        (other, _) => Err(unexpected(other).into()),
    }
}
