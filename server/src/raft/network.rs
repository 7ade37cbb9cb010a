//! Outgoing Raft traffic: one cached, lazily connected tonic channel per
//! peer, with connect and request timeouts. tonic reconnects a broken
//! channel by itself; openraft backs off between failed RPCs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use grant_proto::tls::{AcceptServer, Tls};
use grant_proto::v1::raft::raft_peer_client::RaftPeerClient;
use grant_proto::v1::raft::{RaftPayload, SnapshotChunk};
use openraft::errors::{NetworkError, ReplicationClosed, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::{AnyError, OptionalSend, RaftNetworkV2};
use tonic::transport::{Channel, Endpoint};

use super::codec;
use super::typ::*;
use super::{NodeId, NodeInfo, TypeConfig};
use crate::limits;

#[derive(Clone)]
pub struct Network {
    /// Per peer address: the channel for Raft messages (each call bounded
    /// by `rpc_timeout`), and one of its own for snapshots.
    channels: Arc<Mutex<HashMap<(String, Purpose), Channel>>>,
    rpc_timeout: Duration,
    /// Our certificate, and which server identities count as peers; `None`
    /// in insecure (plaintext) mode.
    tls: Option<(Tls, AcceptServer)>,
}

/// What a channel carries. Snapshots get a connection of their own: a
/// transfer of gigabytes neither fits a message's timeout nor should hold
/// heartbeats back behind its chunks.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Purpose {
    Messages,
    Snapshots,
}

impl Network {
    pub fn new(rpc_timeout: Duration, tls: Option<(Tls, AcceptServer)>) -> Self {
        Network {
            channels: Default::default(),
            rpc_timeout,
            tls,
        }
    }

    /// Hand `batch` to the leader at `addr` (its Raft address) for the
    /// audit chain (audit::refusals).
    pub async fn send_refusals(
        &self,
        addr: &str,
        batch: &[crate::ledger::Refusal],
    ) -> Result<(), String> {
        let mut client = RaftPeerClient::new(self.channel(addr, Purpose::Messages)?)
            .max_decoding_message_size(limits::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::PEER_MESSAGE_BYTES_MAX);
        client
            .refusals(RaftPayload {
                data: codec::encode(&batch),
            })
            .await
            .map(|_| ())
            .map_err(|s| format!("{}: {}", s.code(), s.message()))
    }

    /// Audit entries (canonical bytes) from seq `from`, at most `limit`,
    /// from the peer at `addr` (its Raft address), on the bulk connection.
    pub async fn audit_entries(
        &self,
        addr: &str,
        from: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, String> {
        let mut client = RaftPeerClient::new(self.channel(addr, Purpose::Snapshots)?)
            .max_decoding_message_size(limits::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::PEER_MESSAGE_BYTES_MAX);
        let call = client.audit_entries(RaftPayload {
            data: codec::encode(&(from, limit)),
        });
        let resp = tokio::time::timeout(limits::AUDIT_FETCH_TIMEOUT, call)
            .await
            .map_err(|_| format!("no answer within {:?}", limits::AUDIT_FETCH_TIMEOUT))?
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        codec::decode(&resp.into_inner().data).map_err(|e| format!("undecodable answer: {e}"))
    }

    fn channel(&self, addr: &str, purpose: Purpose) -> Result<Channel, String> {
        let mut m = self.channels.lock().expect("channel cache lock");
        if let Some(c) = m.get(&(addr.to_string(), purpose)) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut e = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr}: {e}"))?;
        if let Some((tls, accept)) = &self.tls {
            e = tls
                .client_endpoint(e, accept.clone())
                .map_err(|e| format!("peer {addr}: {e}"))?;
        }
        e = e
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        // A snapshot takes as long as its size needs; a peer that stops
        // answering is noticed by the keep-alive pings (interval above,
        // then tonic's 20 s ping timeout), and openraft cancels a transfer
        // it no longer wants.
        if purpose == Purpose::Messages {
            e = e.timeout(self.rpc_timeout);
        }
        let c = e.connect_lazy();
        m.insert((addr.to_string(), purpose), c.clone());
        Ok(c)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerConnection {
            target,
            channel: self.channel(&node.raft_addr, Purpose::Messages),
            snapshot_channel: self.channel(&node.raft_addr, Purpose::Snapshots),
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    channel: Result<Channel, String>,
    snapshot_channel: Result<Channel, String>,
}

fn unreachable(e: impl std::fmt::Display) -> RPCError {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
}

fn network_err(e: impl std::fmt::Display) -> NetworkError<TypeConfig> {
    NetworkError::new(&AnyError::error(e.to_string()))
}

/// A transport failure means the peer may be down: report it unreachable so
/// openraft backs off; anything else is a network error worth a retry.
fn status_err(s: tonic::Status) -> RPCError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            unreachable(s)
        }
        _ => RPCError::Network(network_err(s)),
    }
}

impl PeerConnection {
    fn client(&self) -> Result<RaftPeerClient<Channel>, RPCError> {
        Self::client_on(&self.channel)
    }

    fn client_on(channel: &Result<Channel, String>) -> Result<RaftPeerClient<Channel>, RPCError> {
        let ch = channel.clone().map_err(unreachable)?;
        Ok(RaftPeerClient::new(ch)
            .max_decoding_message_size(limits::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::PEER_MESSAGE_BYTES_MAX))
    }
}

impl PeerConnection {
    /// One encoded openraft message out, one back, through `call`.
    async fn unary<Req, Resp, F, Fut>(&self, rpc: &Req, call: F) -> Result<Resp, RPCError>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftPeerClient<Channel>, RaftPayload) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let payload = RaftPayload {
            data: codec::encode(rpc),
        };
        let resp = call(self.client()?, payload).await.map_err(status_err)?;
        codec::decode(&resp.into_inner().data).map_err(|e| RPCError::Network(network_err(e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = crate::storage::snapshot_file::SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError> {
        self.unary(&rpc, |mut c, p| async move { c.append_entries(p).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        _option: RPCOption,
    ) -> Result<VoteResponse, RPCError> {
        self.unary(&rpc, |mut c, p| async move { c.vote(p).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest,
        _option: RPCOption,
    ) -> Result<VoteResponse, RPCError> {
        self.unary(&rpc, |mut c, p| async move { c.pre_vote(p).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError> {
        let file = snapshot.snapshot;
        // The length goes first, so that a stream cut short is refused
        // rather than installed as a smaller state.
        let first = SnapshotChunk {
            header: codec::encode(&(vote, snapshot.meta.clone(), file.data_len())),
            data: Vec::new(),
        };
        tracing::info!(
            target = self.target,
            bytes = file.data_len(),
            "sending snapshot"
        );
        // Read from the file as the peer takes it: one chunk in memory at a
        // time. A read error ends the stream; the peer then refuses the
        // snapshot as cut short.
        let target = self.target;
        let rest = file
            .chunks(limits::SNAPSHOT_CHUNK_BYTES)
            .scan((), move |_, c| {
                futures::future::ready(match c {
                    Ok(data) => Some(SnapshotChunk {
                        header: Vec::new(),
                        data,
                    }),
                    Err(e) => {
                        tracing::error!(target, error = %e, "reading the snapshot to send");
                        None
                    }
                })
            });
        let mut client = Self::client_on(&self.snapshot_channel)
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&AnyError::error(e))))?;
        let send = client.install_snapshot(futures::stream::once(async { first }).chain(rest));
        let resp = tokio::select! {
            r = send => r.map_err(|s| StreamingError::Network(network_err(s)))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        codec::decode(&resp.into_inner().data).map_err(|e| StreamingError::Network(network_err(e)))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse, RPCError> {
        self.unary(&req, |mut c, p| async move { c.transfer_leader(p).await })
            .await
    }

    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(200))))
    }
}
