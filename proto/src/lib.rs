//! The wire contract of grant-ledger: protobuf messages and gRPC services
//! generated from `protos/` (feature `grpc`), and the audit format with its
//! offline verifier (`audit`). No I/O lives here.

pub mod audit;
#[cfg(feature = "grpc")]
pub mod convert;

/// The encoded descriptors of every service, for gRPC server reflection.
#[cfg(feature = "grpc")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/grantledger_descriptor.bin"));

#[cfg(feature = "grpc")]
pub mod v1 {
    tonic::include_proto!("grantledger.v1");

    pub mod raft {
        tonic::include_proto!("grantledger.v1.raft");
    }
}

/// Metadata key carrying the stable error code of a failed call.
pub const ERROR_CODE_KEY: &str = "x-grant-error";
/// Metadata key carrying the node id of the current leader, when known.
pub const LEADER_ID_KEY: &str = "x-grant-leader-id";
/// Metadata key carrying the public API address of the current leader.
pub const LEADER_ADDR_KEY: &str = "x-grant-leader-addr";
