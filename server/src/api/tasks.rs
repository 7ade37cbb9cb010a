//! Tasks: BeginTask, CompleteTask, AbortTask and GetTask (served by the
//! Grants service), and the task lookup Issue makes before it mints a token.

use grant_proto::v1 as pb;
use sha2::{Digest, Sha256};

use super::errors::ApiError;
use super::grants::{receipt, unexpected};
use super::{now_ms, validate, NodeContext};
use crate::auth::layer::Caller;
use crate::auth::roles::Role;
use crate::ledger::{BeginTaskCmd, CloseTaskCmd, Command, CommandResult, TaskRecord, TaskState};
use crate::limits::*;

pub(crate) fn to_pb_task(t: &TaskRecord, now: i64) -> pb::Task {
    let state = match t.state_at(now) {
        TaskState::Open => pb::TaskState::Open,
        TaskState::Completed => pb::TaskState::Completed,
        TaskState::Aborted => pb::TaskState::Aborted,
        TaskState::Expired => pb::TaskState::Expired,
    };
    pb::Task {
        task_id: t.task_id.clone(),
        owner: t.owner.clone(),
        intent: t.intent.clone(),
        declared_tools: t.declared_tools.clone(),
        begun_at_ms: t.begun_at_ms,
        deadline_ms: t.deadline_ms,
        state: state as i32,
        closed_at_ms: t.closed_at_ms,
        closed_by: t.closed_by.clone(),
        close_reason: t.close_reason.clone(),
        grant_count: t.grant_count,
    }
}

/// The task, which must have been begun (its owner, tools and deadline
/// never change: see `NodeContext::read_settled`).
pub(crate) async fn known_task(ctx: &NodeContext, task_id: &str) -> Result<TaskRecord, ApiError> {
    ctx.read_settled(|s| s.task(task_id)).await?.ok_or_else(|| {
        ApiError::NotFound(format!("no task {task_id:?}: begin it first (BeginTask)"))
    })
}

/// Fingerprint of a Begin's parameters: a retry with the same ones is
/// answered with the task, a reuse of the id with others is refused.
fn fingerprint(owner: &str, r: &pb::BeginTaskRequest, deadline_seconds: u64) -> String {
    let mut h = Sha256::new();
    for part in [owner, &r.task_id, &r.intent]
        .into_iter()
        .chain(r.declared_tools.iter().map(String::as_str))
    {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(deadline_seconds.to_be_bytes());
    hex::encode(h.finalize())
}

fn declared_tools(tools: &[String]) -> Result<(), ApiError> {
    if tools.is_empty() {
        return Err(ApiError::invalid(
            "declared_tools",
            "name at least one tool the task will use",
        ));
    }
    if tools.len() > TASK_DECLARED_TOOLS_MAX {
        return Err(ApiError::invalid(
            "declared_tools",
            format!(
                "{} tools exceed the maximum of {TASK_DECLARED_TOOLS_MAX}",
                tools.len()
            ),
        ));
    }
    for (i, t) in tools.iter().enumerate() {
        validate::name("declared_tools", t, RESOURCE_BYTES_MAX)?;
        if tools[..i].contains(t) {
            return Err(ApiError::invalid(
                "declared_tools",
                format!("{t:?} is named twice"),
            ));
        }
    }
    Ok(())
}

pub(crate) async fn begin(
    ctx: &NodeContext,
    caller: &Caller,
    mut r: pb::BeginTaskRequest,
) -> Result<pb::BeginTaskResponse, ApiError> {
    validate::name("task_id", &r.task_id, TASK_ID_BYTES_MAX)?;
    r.intent = validate::intent(std::mem::take(&mut r.intent), ctx.config.intent_required)?;
    declared_tools(&r.declared_tools)?;
    let deadline_seconds = validate::seconds(
        "deadline_seconds",
        r.deadline_seconds,
        ctx.config.task_deadline_seconds_default,
        ctx.config.task_deadline_seconds_max,
    )?;
    let now = now_ms();
    let cmd = Command::BeginTask(BeginTaskCmd {
        task_id: r.task_id.clone(),
        owner: caller.id().to_string(),
        intent: r.intent.clone(),
        declared_tools: r.declared_tools.clone(),
        deadline_ms: now + (deadline_seconds as i64) * 1000,
        fingerprint: fingerprint(caller.id(), &r, deadline_seconds),
        now_ms: now,
    });
    match ctx.propose(cmd).await? {
        (
            CommandResult::TaskBegun {
                task,
                replayed,
                audit,
            },
            index,
        ) => Ok(pb::BeginTaskResponse {
            task: Some(to_pb_task(&task, now_ms())),
            replayed,
            receipt: receipt(index, audit),
        }),
        (other, _) => Err(unexpected(other)),
    }
}

/// What CompleteTask and AbortTask answer.
pub(crate) struct Closed {
    pub task: pb::Task,
    pub revoked_grant_ids: Vec<String>,
    pub already_closed: bool,
    pub receipt: Option<pb::Receipt>,
}

/// Complete or abort a task. A revoker may close any task; an issuer only
/// the tasks it began.
pub(crate) async fn close(
    ctx: &NodeContext,
    caller: &Caller,
    request_id: &str,
    task_id: &str,
    reason: String,
    outcome: TaskState,
) -> Result<Closed, ApiError> {
    if !request_id.is_empty() {
        validate::request_id(request_id)?;
    }
    validate::name("task_id", task_id, TASK_ID_BYTES_MAX)?;
    validate::text("reason", &reason, TASK_CLOSE_REASON_BYTES_MAX)?;
    if outcome == TaskState::Aborted && reason.trim().is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "say why the task is aborted (it is recorded)",
        ));
    }
    if !ctx.access.has(caller, Role::Revoker) {
        let task = known_task(ctx, task_id).await?;
        if task.owner != caller.id() {
            return Err(ApiError::PermissionDenied(format!(
                "{} may not close task {task_id:?}: only its owner {} or a revoker may",
                caller.id(),
                task.owner
            )));
        }
    }
    let cmd = Command::CloseTask(CloseTaskCmd {
        task_id: task_id.to_string(),
        outcome,
        reason,
        actor: caller.id().to_string(),
        now_ms: now_ms(),
    });
    match ctx.propose(cmd).await? {
        (
            CommandResult::TaskClosed {
                task,
                revoked_grant_ids,
                already_closed,
                audit,
            },
            index,
        ) => Ok(Closed {
            task: to_pb_task(&task, now_ms()),
            revoked_grant_ids,
            already_closed,
            receipt: receipt(index, audit),
        }),
        (other, _) => Err(unexpected(other)),
    }
}

pub(crate) async fn get(
    ctx: &NodeContext,
    r: pb::GetTaskRequest,
) -> Result<pb::GetTaskResponse, ApiError> {
    validate::name("task_id", &r.task_id, TASK_ID_BYTES_MAX)?;
    ctx.read_barrier(r.allow_stale).await?;
    let task = ctx
        .state
        .task(&r.task_id)?
        .ok_or_else(|| ApiError::NotFound(format!("no task {:?}", r.task_id)))?;
    Ok(pb::GetTaskResponse {
        task: Some(to_pb_task(&task, now_ms())),
        applied_index: ctx.state.last_applied_index()?,
        stale_allowed: r.allow_stale,
    })
}

/// The expiry of a grant asked for `ttl_seconds` from `now` under `task`:
/// never past the task's deadline.
pub(crate) fn grant_expiry(task: &TaskRecord, now: i64, ttl_seconds: u64) -> i64 {
    (now + (ttl_seconds as i64) * 1000).min(task.deadline_ms)
}
