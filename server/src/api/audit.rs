//! The Audit service: checkpoints, entries, proofs, export and roster.
//!
//! Proofs and exports are served from this node's own state without a
//! leadership check: they are self-authenticating (a verifier checks them
//! against signed checkpoints), and serving them from any node is what lets
//! an auditor compare replicas.

use std::pin::Pin;

use futures::Stream;
use grant_proto::audit::export::{Line, Start, StartRoster};
use grant_proto::audit::merkle;
use grant_proto::convert::entry_to_pb;
use grant_proto::v1 as pb;
use grant_proto::v1::audit_server::Audit;
use tonic::{Request, Response, Status};

use super::errors::ApiError;
use super::NodeContext;
use crate::audit::keys::{self, SharedKey};
use crate::ledger::ChainStart;
use crate::limits::*;

pub struct AuditService {
    ctx: NodeContext,
    key: SharedKey,
}

impl AuditService {
    pub fn new(ctx: NodeContext, key: SharedKey) -> Self {
        AuditService { ctx, key }
    }

    fn root_at(&self, size: u64) -> Result<grant_proto::audit::Hash, ApiError> {
        if size == 0 {
            return Ok(merkle::empty_root());
        }
        self.ctx.state.tree_root(size)?.ok_or_else(|| {
            ApiError::FailedPrecondition(format!("the log had no tree head of size {size}"))
        })
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Audit for AuditService {
    async fn latest_checkpoint(
        &self,
        req: Request<pb::LatestCheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        self.ctx.read_barrier(req.into_inner().allow_stale).await?;
        let Some((size, note)) = self.ctx.state.latest_checkpoint().map_err(ApiError::from)? else {
            return Ok(Response::new(pb::CheckpointResponse {
                tree_size: 0,
                root_hash: merkle::empty_root().to_vec(),
                note: String::new(),
            }));
        };
        // The root the note states: apply kept it only because it is this
        // log's root at that size, and a node begun from a snapshot may
        // not hold the hashes of an older size.
        let root = grant_proto::audit::note::parse(&note)
            .map_err(|e| ApiError::Internal(format!("stored checkpoint {size}: {e}")))?
            .checkpoint
            .root;
        Ok(Response::new(pb::CheckpointResponse {
            tree_size: size,
            root_hash: root.to_vec(),
            note,
        }))
    }

    async fn get_entries(
        &self,
        req: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<pb::GetEntriesResponse>, Status> {
        let r = req.into_inner();
        let limit = match r.limit {
            0 => AUDIT_PAGE_DEFAULT,
            n if n > AUDIT_PAGE_MAX => {
                return Err(
                    ApiError::invalid("limit", format!("{n} exceeds {AUDIT_PAGE_MAX}")).into(),
                )
            }
            n => n,
        };
        self.ctx.read_barrier(r.allow_stale).await?;
        let mut entries = self
            .ctx
            .state
            .audit_entries(r.from_seq, limit as usize)
            .map_err(ApiError::from)?;
        // Policy and role changes carry their whole text: a page stops
        // short rather than outgrow a message (the caller pages on).
        let mut bytes = 0;
        let fits = entries
            .iter()
            .take_while(|(e, _)| {
                bytes += e.detail.len()
                    + e.intent.len()
                    + e.reason.len()
                    + e.policy_ids.iter().map(|p| p.len() + 8).sum::<usize>()
                    + 1024;
                bytes <= AUDIT_PAGE_BYTES_MAX
            })
            .count();
        entries.truncate(fits.max(1));
        let tree_size = self.ctx.state.chain().map_err(ApiError::from)?.size();
        Ok(Response::new(pb::GetEntriesResponse {
            entries: entries.iter().map(|(e, h)| entry_to_pb(e, h)).collect(),
            tree_size,
        }))
    }

    async fn inclusion_proof(
        &self,
        req: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        let r = req.into_inner();
        let (size, note) = if r.tree_size == 0 {
            self.ctx
                .state
                .latest_checkpoint()
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError::FailedPrecondition("no checkpoint signed yet".into()))?
        } else {
            let note = self
                .ctx
                .state
                .checkpoint(r.tree_size)
                .map_err(ApiError::from)?
                .ok_or_else(|| {
                    ApiError::NotFound(format!("no checkpoint of size {}", r.tree_size))
                })?;
            (r.tree_size, note)
        };
        if r.seq >= size {
            return Err(ApiError::FailedPrecondition(format!(
                "entry {} is not covered by the checkpoint of size {size} yet",
                r.seq
            ))
            .into());
        }
        let (entry, hash) = self
            .ctx
            .state
            .audit_entries(r.seq, 1)
            .map_err(ApiError::from)?
            .pop()
            .ok_or_else(|| ApiError::NotFound(format!("no audit entry {}", r.seq)))?;
        let proof = self
            .ctx
            .state
            .inclusion_proof(r.seq, size)
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::InclusionProofResponse {
            entry: Some(entry_to_pb(&entry, &hash)),
            tree_size: size,
            proof: proof.iter().map(|h| h.to_vec()).collect(),
            checkpoint_note: note,
        }))
    }

    async fn consistency_proof(
        &self,
        req: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        let r = req.into_inner();
        let size = self.ctx.state.chain().map_err(ApiError::from)?.size();
        if r.from_size > r.to_size || r.to_size > size {
            return Err(ApiError::invalid(
                "to_size",
                format!("need from_size <= to_size <= {size}"),
            )
            .into());
        }
        let (from_root, to_root) = (self.root_at(r.from_size)?, self.root_at(r.to_size)?);
        let proof = self
            .ctx
            .state
            .consistency_proof(r.from_size, r.to_size)
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ConsistencyProofResponse {
            proof: proof.iter().map(|h| h.to_vec()).collect(),
            from_root: from_root.to_vec(),
            to_root: to_root.to_vec(),
        }))
    }

    type ExportStream = ExportStream;

    async fn export(
        &self,
        _req: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        // Fix the export at the current size: entries are append-only, so
        // everything below it stays as read.
        let state = self.ctx.state.clone();
        // The start first: the size read after it is at least the start.
        let start = state.chain_start().map_err(ApiError::from)?;
        let size = state.chain().map_err(ApiError::from)?.size();
        // Whole or not at all: a node still fetching the start of the
        // chain says so before the first line.
        state
            .audit_files()
            .require_whole()
            .map_err(ApiError::from)?;
        // From the chain's start: past entry 0 once pruned, with the start
        // line a verifier begins from.
        let start_line = match start.seq {
            0 => None,
            _ => Some(start_line(&state, &start).map_err(ApiError::from)?),
        };
        let checkpoints: Vec<_> = state
            .checkpoints()
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|(s, _)| (start.seq..=size).contains(s))
            .collect();
        let origin = self.ctx.config.audit_origin.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::ExportChunk, Status>>(4);
        tokio::spawn(async move {
            let mut buf = Line::header(&origin, size - start.seq, checkpoints.len() as u64)
                .to_json()
                .into_bytes();
            buf.push(b'\n');
            if let Some(line) = start_line {
                buf.extend_from_slice(line.to_json().as_bytes());
                buf.push(b'\n');
            }
            let mut next = start.seq;
            let send = |buf: &mut Vec<u8>| pb::ExportChunk {
                data: std::mem::take(buf),
            };
            while next < size {
                let page = match state.audit_lines(next, AUDIT_PAGE_MAX as usize) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::from(e).into())).await;
                        return;
                    }
                };
                if page.is_empty() {
                    let _ = tx
                        .send(Err(ApiError::Internal(format!(
                            "audit entry {next} missing"
                        ))
                        .into()))
                        .await;
                    return;
                }
                for line in page.into_iter().take((size - next) as usize) {
                    buf.extend_from_slice(&line);
                    buf.push(b'\n');
                    next += 1;
                    if buf.len() >= EXPORT_CHUNK_BYTES && tx.send(Ok(send(&mut buf))).await.is_err()
                    {
                        return;
                    }
                }
            }
            for (_, note) in checkpoints {
                buf.extend_from_slice(Line::Checkpoint { note }.to_json().as_bytes());
                buf.push(b'\n');
            }
            let _ = tx.send(Ok(send(&mut buf))).await;
        });
        Ok(Response::new(Box::pin(tokio_stream_from(rx))))
    }

    async fn roster(
        &self,
        _req: Request<pb::RosterRequest>,
    ) -> Result<Response<pb::RosterResponse>, Status> {
        let keys = self
            .ctx
            .state
            .roster()
            .map_err(ApiError::from)?
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        Ok(Response::new(pb::RosterResponse {
            keys,
            origin: self.ctx.config.audit_origin.clone(),
        }))
    }

    async fn rotate_key(
        &self,
        _req: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let (old, new) = keys::rotate(
            &self.ctx.config.data_dir,
            self.ctx.config.node_id,
            &self.key,
        )
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::RotateKeyResponse {
            verifier_key: new.verifier().encode(),
            retired_verifier_key: old.verifier().encode(),
        }))
    }
}

/// The start line of an export of a chain pruned at `start.seq`: the
/// frontier there, from the store's tile hashes, and the roster entries the
/// start kept with their paths.
fn start_line(state: &crate::storage::StateReader, start: &ChainStart) -> std::io::Result<Line> {
    let frontier = state.audit_files().frontier(start.seq)?;
    let roster = start
        .roster
        .iter()
        .map(|r| {
            let bytes = hex::decode(&r.entry).map_err(std::io::Error::other)?;
            let entry = grant_proto::audit::Entry::from_canonical_bytes(&bytes)
                .map_err(std::io::Error::other)?;
            Ok(StartRoster {
                hash: entry.hash(),
                entry,
                path: ChainStart::path(r)?,
            })
        })
        .collect::<std::io::Result<_>>()?;
    Ok(Line::Start(Start {
        seq: start.seq,
        prev_hash: start.prev_hash,
        frontier: frontier.subtrees.iter().map(|(_, h)| *h).collect(),
        roster,
    }))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
