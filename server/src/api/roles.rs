//! SetRoles and GetRoles (Cluster service): the role mapping as a committed,
//! audited command, applied on every node alike.

use grant_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::errors::ApiError;
use super::grants::{receipt, unexpected};
use super::{now_ms, NodeContext};
use crate::auth::layer::{Access, Caller, RolesSource};
use crate::auth::roles::{check_replicated, to_replicated, Role, RoleMap, RolesConfig};
use crate::ledger::{Command, CommandResult, SetRolesCmd};
use crate::limits::ROLES_JSON_BYTES_MAX;

pub async fn set(
    ctx: &NodeContext,
    req: Request<pb::SetRolesRequest>,
) -> Result<Response<pb::SetRolesResponse>, Status> {
    let caller = Caller::of(&req);
    let text = req.into_inner().roles_toml;
    if text.len() > ROLES_JSON_BYTES_MAX {
        return Err(ApiError::invalid(
            "roles_toml",
            format!("longer than {ROLES_JSON_BYTES_MAX} bytes"),
        )
        .into());
    }
    if matches!(*ctx.access, Access::Insecure) {
        return Err(ApiError::FailedPrecondition(
            "roles mean nothing on an insecure node (everyone holds every role)".into(),
        )
        .into());
    }
    let roles: RolesConfig =
        toml::from_str(&text).map_err(|e| ApiError::invalid("roles_toml", e.to_string()))?;
    let json = to_replicated(&roles);
    check_replicated(&json).map_err(|e| ApiError::invalid("roles_toml", e))?;
    // Nobody could undo a mapping that leaves no admin: the caller keeps it.
    let map = RoleMap::from_config(&roles).map_err(|e| ApiError::invalid("roles_toml", e))?;
    if !map.has(caller.id(), Role::Admin) {
        return Err(ApiError::invalid(
            "roles_toml",
            format!(
                "the mapping takes the admin role from {} (the caller); keep it, or \
                 nobody may be left to change the mapping",
                caller.id()
            ),
        )
        .into());
    }
    let cmd = Command::SetRoles(SetRolesCmd {
        roles_json: json.clone(),
        actor: caller.id().to_string(),
        now_ms: now_ms(),
    });
    match ctx.propose(cmd).await? {
        (CommandResult::RolesSet { audit }, index) => Ok(Response::new(pb::SetRolesResponse {
            receipt: receipt(index, Some(audit)),
            roles_json: json,
        })),
        (other, _) => Err(unexpected(other).into()),
    }
}

pub fn get(ctx: &NodeContext) -> Result<Response<pb::GetRolesResponse>, Status> {
    let Access::Mtls(m) = &*ctx.access else {
        return Err(ApiError::FailedPrecondition(
            "this node is insecure: no roles, everyone may do everything".into(),
        )
        .into());
    };
    let (source, _, roles) = m.roles();
    let (source, log_index) = match source {
        RolesSource::Config => ("config", 0),
        RolesSource::Replicated(i) => ("replicated", i),
    };
    Ok(Response::new(pb::GetRolesResponse {
        roles_toml: toml::to_string(&*roles).map_err(|e| ApiError::Internal(e.to_string()))?,
        source: source.into(),
        log_index,
    }))
}
