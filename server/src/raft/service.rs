//! Incoming Raft traffic: the internal gRPC service peers call.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use grant_proto::v1::raft::raft_peer_server::RaftPeer;
use grant_proto::v1::raft::{RaftPayload, SnapshotChunk};
use tonic::{Request, Response, Status, Streaming};

use super::codec;
use super::typ::*;
use super::Raft;
use crate::audit::refusals::Refusals;
use crate::ledger::Refusal;
use crate::limits;
use crate::storage::audit_store::is_missing;
use crate::storage::snapshot_file::{SnapshotFile, SnapshotWriter};
use crate::storage::StateReader;
use std::sync::Arc;

pub struct RaftPeerService {
    raft: Raft,
    /// Where a peer fetching the audit chain reads it (`audit_fill`).
    state: StateReader,
    /// Where a snapshot sent by the leader is written as it arrives.
    snapshot_dir: PathBuf,
    /// Where refusals followers hand on are queued, on the leader.
    refusals: Arc<Refusals>,
}

impl RaftPeerService {
    pub fn new(
        raft: Raft,
        state: StateReader,
        snapshot_dir: PathBuf,
        refusals: Arc<Refusals>,
    ) -> Self {
        RaftPeerService {
            raft,
            state,
            snapshot_dir,
            refusals,
        }
    }
}

fn io_status(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("writing the received snapshot: {e}"))
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

/// Decode one openraft message, hand it to `raft`, encode its answer.
async fn unary<Req, Resp, E, F, Fut>(
    req: Request<RaftPayload>,
    raft: F,
) -> Result<Response<RaftPayload>, Status>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    E: std::fmt::Display,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, E>>,
{
    let rpc: Req = codec::decode(&req.into_inner().data).map_err(bad)?;
    let resp = raft(rpc)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(Response::new(RaftPayload {
        data: codec::encode(&resp),
    }))
}

/// Write a snapshot streamed by the leader to a file in `dir` as it
/// arrives: the first chunk names the vote, the metadata and the data's
/// length; a stream that ends short of it or runs past it is refused (and
/// its file removed), never installed as a smaller state.
async fn receive_snapshot(
    mut stream: impl futures::Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
    dir: &Path,
) -> Result<(Vote, SnapshotMeta, SnapshotFile), Status> {
    let first = stream
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
    let (vote, meta, announced): (Vote, SnapshotMeta, u64) =
        codec::decode(&first.header).map_err(bad)?;
    if announced > limits::SNAPSHOT_BYTES_MAX as u64 {
        return Err(Status::resource_exhausted(format!(
            "snapshot of {announced} bytes exceeds snapshot_bytes_max"
        )));
    }
    // Straight to a file as it arrives (removed again if anything below
    // fails): a snapshot is as large as the state, memory is not.
    let mut out = SnapshotWriter::create(dir, &meta).map_err(io_status)?;
    let mut bytes = 0usize;
    let mut next = Some(first.data);
    while let Some(data) = next.take() {
        bytes += data.len();
        // A snapshot is bounded by the state it copies; guard against a
        // runaway sender all the same.
        if bytes as u64 > announced {
            return Err(Status::invalid_argument(format!(
                "snapshot stream longer than the {announced} bytes announced"
            )));
        }
        out = tokio::task::spawn_blocking(move || out.write_all(&data).map(|_| out))
            .await
            .map_err(io_status)?
            .map_err(io_status)?;
        next = stream.next().await.transpose()?.map(|c| c.data);
    }
    if bytes as u64 != announced {
        return Err(Status::data_loss(format!(
            "snapshot stream ended after {bytes} of {announced} bytes"
        )));
    }
    let (_, file) = tokio::task::spawn_blocking(move || out.finish())
        .await
        .map_err(io_status)?
        .map_err(io_status)?;
    Ok((vote, meta, file))
}

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let raft = self.raft.clone();
        unary(req, |rpc: AppendEntriesRequest| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let raft = self.raft.clone();
        unary(req, |rpc: VoteRequest| async move { raft.vote(rpc).await }).await
    }

    async fn pre_vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let raft = self.raft.clone();
        unary(
            req,
            |rpc: VoteRequest| async move { raft.pre_vote(rpc).await },
        )
        .await
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let raft = self.raft.clone();
        unary(req, |rpc: TransferLeaderRequest| async move {
            raft.handle_transfer_leader(rpc).await
        })
        .await
    }

    async fn refusals(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let batch: Vec<Refusal> = codec::decode(&req.into_inner().data).map_err(bad)?;
        if batch.len() > limits::REFUSAL_BATCH_MAX {
            return Err(Status::invalid_argument(format!(
                "{} refusals in one message; at most {}",
                batch.len(),
                limits::REFUSAL_BATCH_MAX
            )));
        }
        // Queued only where they will be proposed; the sender keeps them
        // and tries again otherwise.
        if !self.raft.is_leader() {
            return Err(Status::unavailable("not the leader"));
        }
        self.refusals.accept(batch);
        Ok(Response::new(RaftPayload {
            data: codec::encode(&()),
        }))
    }

    async fn audit_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let (from, limit): (u64, u32) = codec::decode(&req.into_inner().data).map_err(bad)?;
        let state = self.state.clone();
        let entries = tokio::task::spawn_blocking(move || {
            let size = state.chain()?.size();
            let limit = limit.min(limits::AUDIT_FETCH_ENTRIES) as usize;
            let mut bytes = 0;
            let mut page = state
                .audit_files()
                .entries(from, limit, size, |b| Ok(b.to_vec()))?;
            // Stop short of the byte bound (the asker goes on from there),
            // never below one entry.
            let fits = page
                .iter()
                .take_while(|e| {
                    bytes += e.len();
                    bytes <= limits::AUDIT_FETCH_BYTES_MAX
                })
                .count();
            page.truncate(fits.max(1));
            std::io::Result::Ok(page)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| {
            if is_missing(&e) {
                Status::failed_precondition(e.to_string())
            } else {
                Status::internal(format!("reading the audit chain: {e}"))
            }
        })?;
        Ok(Response::new(RaftPayload {
            data: codec::encode(&entries),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let (vote, meta, file) = receive_snapshot(req.into_inner(), &self.snapshot_dir).await?;
        tracing::info!(bytes = file.data_len(), "installing snapshot from leader");
        let resp = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: file,
                },
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RaftPayload {
            data: codec::encode(&resp),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn chunks(announced: u64, parts: &[&[u8]]) -> Vec<Result<SnapshotChunk, Status>> {
        let meta = SnapshotMeta::default();
        let mut v = vec![Ok(SnapshotChunk {
            header: codec::encode(&(Vote::new(1, 1), meta, announced)),
            data: Vec::new(),
        })];
        v.extend(parts.iter().map(|p| {
            Ok(SnapshotChunk {
                header: Vec::new(),
                data: p.to_vec(),
            })
        }));
        v
    }

    #[tokio::test]
    async fn a_snapshot_is_received_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let stream = |c| futures::stream::iter(c);
        let (_, _, file) = receive_snapshot(stream(chunks(6, &[b"abc", b"def"])), dir.path())
            .await
            .unwrap();
        let mut got = Vec::new();
        file.data().read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abcdef");
        drop(file); // received, never installed: its file goes with it

        let short = receive_snapshot(stream(chunks(7, &[b"abc", b"def"])), dir.path()).await;
        assert_eq!(short.unwrap_err().code(), tonic::Code::DataLoss);
        let long = receive_snapshot(stream(chunks(5, &[b"abc", b"def"])), dir.path()).await;
        assert_eq!(long.unwrap_err().code(), tonic::Code::InvalidArgument);
        let mut broken = chunks(6, &[b"abc"]);
        broken.push(Err(Status::cancelled("peer went away")));
        let cut = receive_snapshot(stream(broken), dir.path()).await;
        assert_eq!(cut.unwrap_err().code(), tonic::Code::Cancelled);
        let huge = receive_snapshot(stream(chunks(u64::MAX, &[])), dir.path()).await;
        assert_eq!(huge.unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a refused snapshot left its file behind"
        );
    }
}
