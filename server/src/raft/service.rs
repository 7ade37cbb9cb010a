//! Incoming Raft traffic: the internal gRPC service peers call.

use futures::StreamExt;
use grant_proto::v1::raft::raft_peer_server::RaftPeer;
use grant_proto::v1::raft::{RaftPayload, SnapshotChunk};
use tonic::{Request, Response, Status, Streaming};

use super::codec;
use super::typ::*;
use super::Raft;
use crate::limits;

pub struct RaftPeerService {
    raft: Raft,
}

impl RaftPeerService {
    pub fn new(raft: Raft) -> Self {
        RaftPeerService { raft }
    }
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest = codec::decode(&req.into_inner().data).map_err(bad)?;
        let resp = self
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RaftPayload {
            data: codec::encode(&resp),
        }))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest = codec::decode(&req.into_inner().data).map_err(bad)?;
        let resp = self
            .raft
            .vote(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RaftPayload {
            data: codec::encode(&resp),
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: TransferLeaderRequest = codec::decode(&req.into_inner().data).map_err(bad)?;
        let resp = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RaftPayload {
            data: codec::encode(&resp),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) = codec::decode(&first.header).map_err(bad)?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            data.extend_from_slice(&chunk.data);
            // A snapshot is bounded by the state it copies; guard against a
            // runaway sender all the same.
            if data.len() > limits::SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted(
                    "snapshot exceeds snapshot_bytes_max",
                ));
            }
        }
        tracing::info!(bytes = data.len(), "installing snapshot from leader");
        let resp = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: data,
                },
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RaftPayload {
            data: codec::encode(&resp),
        }))
    }
}
