//! The project's Raft module: openraft's type configuration and the aliases
//! the rest of the server uses, so that openraft's generics stay here.

pub mod codec;
pub mod leadership;
pub mod network;
pub mod service;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ledger::{Command, CommandResult};

/// What the cluster knows about one member: where peers and clients reach it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub raft_addr: String,
    pub api_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// grant-ledger's Raft types: log commands are ledger commands.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        Node = NodeInfo,
);

/// The state machine handle openraft drives.
pub type StateMachineHandle = crate::storage::StateMachine;
pub type Raft = openraft::Raft<TypeConfig, StateMachineHandle>;
pub type NodeId = u64;

/// Short names for openraft's generic types at our configuration.
pub mod typ {
    use super::TypeConfig;

    pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
    pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
    pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
    pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
    pub type EntryResponder = openraft::storage::EntryResponder<TypeConfig>;
    pub type LogState = openraft::storage::LogState<TypeConfig>;
    pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
    pub type Snapshot =
        openraft::alias::SnapshotOf<TypeConfig, crate::storage::snapshot_file::SnapshotFile>;
    pub type IOFlushed = openraft::storage::IOFlushed<TypeConfig>;
    pub type RaftError<E = openraft::errors::Infallible> =
        openraft::errors::RaftError<TypeConfig, E>;
    pub type RPCError<E = openraft::errors::Infallible> = openraft::errors::RPCError<TypeConfig, E>;
    pub type StreamingError = openraft::errors::StreamingError<TypeConfig>;
    pub type ClientWriteError = openraft::errors::ClientWriteError<TypeConfig>;
    pub type ForwardToLeader = openraft::errors::ForwardToLeader<TypeConfig>;
    pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
    pub type VoteResponse = openraft::raft::VoteResponse<TypeConfig>;
    pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
    pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
    pub type SnapshotResponse = openraft::raft::SnapshotResponse<TypeConfig>;
    pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
    pub type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;
    pub type TransferLeaderResponse = openraft::raft::TransferLeaderResponse<TypeConfig>;
}
