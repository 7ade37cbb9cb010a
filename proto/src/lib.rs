//! The wire contract of grant-ledger: protobuf messages and gRPC services
//! generated from `protos/` (feature `grpc`), and the audit format with its
//! offline verifier (`audit`), and the TLS settings that grantd and its
//! clients share (`tls`: the only module that reads files).

pub mod audit;
pub mod backup;
#[cfg(feature = "grpc")]
pub mod convert;
#[cfg(feature = "grpc")]
pub mod tls;

/// The encoded descriptors of the public API's services (not the peer
/// service), for gRPC server reflection.
#[cfg(feature = "grpc")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/grantledger_descriptor.bin"));

#[cfg(feature = "grpc")]
pub mod v1 {
    tonic::include_proto!("grantledger.v1");
    include!(concat!(env!("OUT_DIR"), "/grantledger.v1.serde.rs"));

    pub mod raft {
        tonic::include_proto!("grantledger.v1.raft");
        include!(concat!(env!("OUT_DIR"), "/grantledger.v1.raft.serde.rs"));
    }

    impl Node {
        /// A cluster member as written on command lines: `ID=RAFT_ADDR,API_ADDR`.
        pub fn parse_member(s: &str) -> Result<Node, String> {
            let bad = || format!("member {s:?} is not ID=RAFT_ADDR,API_ADDR");
            let (id, addrs) = s.split_once('=').ok_or_else(bad)?;
            let (raft, api) = addrs.split_once(',').ok_or_else(bad)?;
            Ok(Node {
                id: id.parse().map_err(|_| bad())?,
                raft_addr: raft.into(),
                api_addr: api.into(),
            })
        }
    }
}

/// Metadata key carrying the stable error code of a failed call.
pub const ERROR_CODE_KEY: &str = "x-grant-error";
/// Metadata key carrying the node id of the current leader, when known.
pub const LEADER_ID_KEY: &str = "x-grant-leader-id";
/// Metadata key carrying the public API address of the current leader.
pub const LEADER_ADDR_KEY: &str = "x-grant-leader-addr";
/// Metadata key carrying the audit chain's first entry on a `pruned` error:
/// where a reader of the chain can start instead.
pub const CHAIN_START_KEY: &str = "x-grant-chain-start";
/// Metadata key by which a follower forwarding a request to its leader
/// names the caller it authenticated; believed only from a node's
/// certificate (docs/security.md).
pub const FORWARDED_FOR_KEY: &str = "x-grant-forwarded-for";
