//! The one place where server errors become gRPC statuses. Each status
//! carries a stable machine-readable code in the `x-grant-error` metadata;
//! clients match on that, never on the message.

use grant_proto::{CHAIN_START_KEY, ERROR_CODE_KEY, LEADER_ADDR_KEY, LEADER_ID_KEY};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::ledger::Rejection;
use crate::raft::typ::*;
use crate::raft::TypeConfig;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// Something by that name exists with other parameters (a task begun
    /// with other declared tools, say).
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller presented no identity this cluster accepts (no or a bad
    /// certificate or token, another trust domain).
    #[error("{0}")]
    Unauthenticated(String),
    /// No such method is served here.
    #[error("{0}")]
    Unimplemented(String),
    /// The caller is known but may not do this (its role or its identity).
    #[error("{0}")]
    PermissionDenied(String),
    /// The policy in force denied the request (recorded in the audit log).
    #[error("{0}")]
    PolicyDenied(String),
    /// A watch cannot resume where it asked: the watcher must start over.
    #[error("{0}")]
    WatchResync(String),
    /// Part of the audit chain that was pruned: no node serves it any more
    /// (the operator's archive holds it). `start` is the chain's first
    /// entry, sent in `x-grant-chain-start`.
    #[error("{message}")]
    Pruned { start: u64, message: String },
    /// This node is not the leader; retry on the leader (safe: nothing was proposed).
    #[error("not the leader; leader is {leader_id:?} at {leader_addr:?}")]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// The entry may or may not have committed: retry with the same request id.
    #[error("outcome unknown: the leader changed or lost its quorum while the write waited; retry with the same request id")]
    OutcomeUnknown {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    /// The stable code clients see in `x-grant-error`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument { .. } => "invalid_argument",
            ApiError::NotFound(_) => "not_found",
            ApiError::AlreadyExists(_) => "already_exists",
            ApiError::FailedPrecondition(_) => "failed_precondition",
            ApiError::ResourceExhausted(_) => "resource_exhausted",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Unimplemented(_) => "unimplemented",
            ApiError::PermissionDenied(_) => "permission_denied",
            ApiError::PolicyDenied(_) => "policy_denied",
            ApiError::WatchResync(_) => "watch_resync",
            ApiError::Pruned { .. } => "pruned",
            ApiError::NotLeader { .. } => "not_leader",
            ApiError::OutcomeUnknown { .. } => "outcome_unknown",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn grpc_code(&self) -> Code {
        match self {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::FailedPrecondition(_) | ApiError::WatchResync(_) => Code::FailedPrecondition,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Pruned { .. } => Code::OutOfRange,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::Unimplemented(_) => Code::Unimplemented,
            ApiError::PermissionDenied(_) | ApiError::PolicyDenied(_) => Code::PermissionDenied,
            ApiError::NotLeader { .. }
            | ApiError::OutcomeUnknown { .. }
            | ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        }
    }

    pub fn from_forward(f: &ForwardToLeader) -> Self {
        ApiError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.as_ref().map(|n| n.api_addr.clone()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut s = Status::new(e.grpc_code(), e.to_string());
        let md = s.metadata_mut();
        md.insert(ERROR_CODE_KEY, MetadataValue::from_static(e.code()));
        if let ApiError::NotLeader {
            leader_id,
            leader_addr,
        }
        | ApiError::OutcomeUnknown {
            leader_id,
            leader_addr,
        } = &e
        {
            if let Some(id) = leader_id {
                md.insert(LEADER_ID_KEY, MetadataValue::from(*id));
            }
            if let Some(v) = leader_addr
                .as_deref()
                .and_then(|a| MetadataValue::try_from(a).ok())
            {
                md.insert(LEADER_ADDR_KEY, v);
            }
        }
        if let ApiError::Pruned { start, .. } = &e {
            md.insert(CHAIN_START_KEY, MetadataValue::from(*start));
        }
        s
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::NotFound(m) => ApiError::NotFound(m),
            Rejection::AlreadyExists(m) => ApiError::AlreadyExists(m),
            Rejection::FailedPrecondition(m) => ApiError::FailedPrecondition(m),
            Rejection::ResourceExhausted(m) => ApiError::ResourceExhausted(m),
        }
    }
}

impl From<RaftError<ClientWriteError>> for ApiError {
    fn from(e: RaftError<ClientWriteError>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ApiError::from_forward(&f),
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
                ApiError::OutcomeUnknown {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.as_ref().map(|n| n.api_addr.clone()),
                }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                ApiError::FailedPrecondition(c.to_string())
            }
            RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => {
                ApiError::FailedPrecondition(p.to_string())
            }
            RaftError::Fatal(f) => ApiError::Unavailable(format!("raft stopped: {f}")),
        }
    }
}

impl From<RaftError<openraft::errors::LinearizableReadError<TypeConfig>>> for ApiError {
    fn from(e: RaftError<openraft::errors::LinearizableReadError<TypeConfig>>) -> Self {
        use openraft::errors::LinearizableReadError as L;
        match e {
            RaftError::APIError(L::ForwardToLeader(f)) => ApiError::from_forward(&f),
            RaftError::APIError(L::QuorumNotEnough(q)) => {
                ApiError::Unavailable(format!("no quorum: {q}"))
            }
            RaftError::Fatal(f) => ApiError::Unavailable(format!("raft stopped: {f}")),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        // Part of the audit chain this node began without (a snapshot):
        // another node, or this one later, answers.
        if crate::storage::audit_store::is_missing(&e) {
            return ApiError::FailedPrecondition(e.to_string());
        }
        if let Some(p) = e
            .get_ref()
            .and_then(|r| r.downcast_ref::<crate::storage::audit_store::Pruned>())
        {
            return ApiError::Pruned {
                start: p.start,
                message: e.to_string(),
            };
        }
        ApiError::Internal(e.to_string())
    }
}
