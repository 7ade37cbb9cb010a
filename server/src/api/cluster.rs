//! The Cluster service: initialise, change membership, read status.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use grant_proto::v1 as pb;
use grant_proto::v1::cluster_server::Cluster;
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::errors::ApiError;
use super::NodeContext;
use crate::auth::layer::Caller;
use crate::ledger::{Command, MembershipRequestCmd};
use crate::limits::{self, MEMBERS_MAX};
use crate::raft::codec;
use crate::raft::leadership::{hand_over, HandoverError};
use crate::raft::typ::*;
use crate::raft::NodeInfo;
use crate::storage::keyspace as ks;
use crate::storage::snapshot_data::{self, BackupData};
use crate::storage::snapshot_file::read_chunks;
use grant_proto::backup;
use openraft::ChangeMembers;

pub struct ClusterService {
    ctx: NodeContext,
}

impl ClusterService {
    pub fn new(ctx: NodeContext) -> Self {
        ClusterService { ctx }
    }
}

pub(crate) fn node_info(n: &pb::Node) -> Result<(u64, NodeInfo), ApiError> {
    if n.id == 0 {
        return Err(ApiError::invalid("node.id", "must be positive"));
    }
    for (field, a) in [
        ("node.raft_addr", &n.raft_addr),
        ("node.api_addr", &n.api_addr),
    ] {
        if a.len() > 255 || a.parse::<std::net::SocketAddr>().is_err() && !a.contains(':') {
            return Err(ApiError::invalid(field, format!("{a:?} is not host:port")));
        }
    }
    Ok((
        n.id,
        NodeInfo {
            raft_addr: n.raft_addr.clone(),
            api_addr: n.api_addr.clone(),
        },
    ))
}

fn members_of(m: &StoredMembership) -> (Vec<pb::Node>, Vec<pb::Node>) {
    let voters: BTreeSet<u64> = m.voter_ids().collect();
    let mut v = Vec::new();
    let mut l = Vec::new();
    for (id, n) in m.nodes() {
        let node = pb::Node {
            id: *id,
            raft_addr: n.raft_addr.clone(),
            api_addr: n.api_addr.clone(),
        };
        if voters.contains(id) {
            v.push(node)
        } else {
            l.push(node)
        }
    }
    (v, l)
}

impl ClusterService {
    fn current_membership(&self) -> std::sync::Arc<StoredMembership> {
        self.ctx
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone()
    }

    /// Record that `caller` asked for a membership change (`what`), before
    /// it is made: openraft's membership entries name no caller.
    async fn requested(&self, caller: &Caller, what: String) -> Result<(), ApiError> {
        let cmd = Command::MembershipRequest(MembershipRequestCmd {
            actor: caller.id().to_string(),
            change: what,
            now_ms: super::now_ms(),
        });
        self.ctx.propose(cmd).await.map(|_| ())
    }

    /// Commit a membership change `caller` asked for (`what`, recorded
    /// first); answer with the membership after it.
    async fn change(
        &self,
        caller: &Caller,
        what: String,
        changes: impl Into<ChangeMembers<u64, NodeInfo>>,
        retain: bool,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.requested(caller, what).await?;
        let resp = self
            .ctx
            .raft
            .change_membership(changes, retain)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(self.membership_response(resp.log_id.index)))
    }

    fn membership_response(&self, log_index: u64) -> pb::MembershipResponse {
        let m = self
            .ctx
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let (voters, learners) = members_of(&m);
        pb::MembershipResponse {
            log_index,
            voters,
            learners,
        }
    }
}

type BackupStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

impl ClusterService {
    /// A snapshot that includes everything applied here by now, taken after
    /// a read barrier (so: every write acknowledged before the call) unless
    /// the caller accepts this node's own, possibly stale, state.
    async fn snapshot_for_backup(&self, allow_stale: bool) -> Result<Snapshot, ApiError> {
        self.ctx.read_barrier(allow_stale).await?;
        let raft = &self.ctx.raft;
        let applied = raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map(|l| l.index)
            .unwrap_or(0);
        let covered =
            |m: &RaftMetrics| m.snapshot.as_ref().map(|l| l.index).unwrap_or(0) >= applied;
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(limits::BACKUP_SNAPSHOT_WAIT_MS);
        // A build already under way may stop short of `applied`: ask again
        // until one covers it.
        while !covered(&raft.metrics().borrow_watched()) {
            if std::time::Instant::now() > deadline {
                return Err(ApiError::Unavailable(format!(
                    "no snapshot reached index {applied} within {} ms (backup_snapshot_wait_ms)",
                    limits::BACKUP_SNAPSHOT_WAIT_MS
                )));
            }
            raft.trigger()
                .snapshot()
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            let _ = raft
                .wait(Some(std::time::Duration::from_secs(1)))
                .metrics(|m| covered(m), "snapshot for backup")
                .await;
        }
        raft.get_snapshot()
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .ok_or_else(|| ApiError::Unavailable("snapshot vanished; retry".into()))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    type BackupStream = BackupStream;

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let snap = self
            .snapshot_for_backup(req.into_inner().allow_stale)
            .await?;
        let files = self.ctx.state.audit_files();
        // One pass for the chain head, one for the checksum of the data,
        // then the data streamed.
        let file = snap.snapshot;
        let (data, summary) = tokio::task::spawn_blocking(move || {
            let data = BackupData::new(file, files)?;
            let (bytes, sha, _) = snapshot_data::summarize(data.reader(), &[])?;
            let chain = data.chain.clone();
            std::io::Result::Ok((data, (bytes, sha, chain)))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)?;
        let (data_bytes, data_sha256, chain) = summary;
        let header = backup::BackupHeader {
            state_format: ks::FORMAT_VERSION,
            created_ms: super::now_ms(),
            taken_from_node: self.ctx.config.node_id,
            last_log_index: snap.meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0),
            audit_size: chain.size(),
            data_bytes,
            data_sha256,
            raft_meta: serde_json::from_slice(&codec::encode(&snap.meta))
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        };
        tracing::info!(
            index = header.last_log_index,
            bytes = data_bytes,
            "serving a backup"
        );
        let first = futures::stream::once(futures::future::ready(Ok(pb::BackupChunk {
            data: backup::header_bytes(&header),
        })));
        let rest = read_chunks(data.reader(), limits::EXPORT_CHUNK_BYTES).map(|c| {
            c.map(|data| pb::BackupChunk { data })
                .map_err(|e| Status::from(ApiError::Internal(format!("reading the snapshot: {e}"))))
        });
        Ok(Response::new(Box::pin(first.chain(rest))))
    }

    async fn initialize(
        &self,
        req: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::InitializeResponse>, Status> {
        let r = req.into_inner();
        if r.members.is_empty() || r.members.len() > MEMBERS_MAX {
            return Err(
                ApiError::invalid("members", format!("name 1-{MEMBERS_MAX} members")).into(),
            );
        }
        let mut members = BTreeMap::new();
        for n in &r.members {
            let (id, info) = node_info(n)?;
            if members.insert(id, info).is_some() {
                return Err(
                    ApiError::invalid("members", format!("node id {id} named twice")).into(),
                );
            }
        }
        if !members.contains_key(&self.ctx.config.node_id) {
            return Err(
                ApiError::invalid("members", "must include the node that initialises").into(),
            );
        }
        self.ctx
            .raft
            .initialize(members)
            .await
            .map_err(|e| match e {
                openraft::errors::RaftError::APIError(e) => {
                    ApiError::FailedPrecondition(e.to_string())
                }
                openraft::errors::RaftError::Fatal(f) => ApiError::Unavailable(f.to_string()),
            })?;
        Ok(Response::new(pb::InitializeResponse {}))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = Caller::of(&req);
        let node = req
            .into_inner()
            .node
            .ok_or_else(|| ApiError::invalid("node", "required"))?;
        let (id, info) = node_info(&node)?;
        self.requested(
            &caller,
            format!(
                "add_learner node={id} raft_addr={} api_addr={}",
                info.raft_addr, info.api_addr
            ),
        )
        .await?;
        let resp = self
            .ctx
            .raft
            .add_learner(id, info, true)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(self.membership_response(resp.log_id.index)))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let voters: BTreeSet<u64> = r.voters.iter().copied().collect();
        if voters.is_empty() || voters.len() > MEMBERS_MAX {
            return Err(ApiError::invalid("voters", format!("name 1-{MEMBERS_MAX} voters")).into());
        }
        let list: Vec<String> = voters.iter().map(|v| v.to_string()).collect();
        let what = format!(
            "change_membership voters={} retain={}",
            list.join(","),
            r.retain
        );
        self.change(&caller, what, voters, r.retain).await
    }

    async fn promote(
        &self,
        req: Request<pb::NodeIdRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = Caller::of(&req);
        let id = req.into_inner().node_id;
        let m = self.current_membership();
        if m.get_node(&id).is_none() {
            return Err(ApiError::NotFound(format!(
                "node {id} is not a member: add it as a learner first"
            ))
            .into());
        }
        if m.voter_ids().any(|v| v == id) {
            return Ok(Response::new(self.membership_response(0)));
        }
        if m.voter_ids().count() >= MEMBERS_MAX {
            return Err(ApiError::ResourceExhausted(format!(
                "a cluster has at most {MEMBERS_MAX} voters"
            ))
            .into());
        }
        self.change(
            &caller,
            format!("promote node={id}"),
            ChangeMembers::AddVoterIds([id].into()),
            false,
        )
        .await
    }

    async fn remove(
        &self,
        req: Request<pb::NodeIdRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = Caller::of(&req);
        let id = req.into_inner().node_id;
        let m = self.current_membership();
        if m.get_node(&id).is_none() {
            return Err(ApiError::NotFound(format!("node {id} is not a member")).into());
        }
        let change = if m.voter_ids().any(|v| v == id) {
            if m.voter_ids().count() == 1 {
                return Err(
                    ApiError::FailedPrecondition("cannot remove the last voter".into()).into(),
                );
            }
            // retain=false: the removed voter leaves the node list too.
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        self.change(&caller, format!("remove node={id}"), change, false)
            .await
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::NodeIdRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let to = req.into_inner().node_id;
        let wait = std::time::Duration::from_millis(self.ctx.config.election_timeout_max_ms * 2);
        match hand_over(&self.ctx.raft, Some(to), wait).await {
            Ok((leader_id, term)) => Ok(Response::new(pb::TransferLeaderResponse {
                leader_id,
                term,
            })),
            Err(HandoverError::NotLeader) => {
                let m = self.ctx.raft.metrics().borrow_watched().clone();
                Err(ApiError::NotLeader {
                    leader_id: m.current_leader,
                    leader_addr: m
                        .current_leader
                        .and_then(|l| m.membership_config.get_node(&l).map(|n| n.api_addr.clone())),
                }
                .into())
            }
            Err(e @ HandoverError::NotVoter(_)) => {
                Err(ApiError::FailedPrecondition(e.to_string()).into())
            }
            Err(e) => Err(ApiError::Unavailable(e.to_string()).into()),
        }
    }

    async fn set_roles(
        &self,
        req: Request<pb::SetRolesRequest>,
    ) -> Result<Response<pb::SetRolesResponse>, Status> {
        super::roles::set(&self.ctx, req).await
    }

    async fn prune_audit(
        &self,
        req: Request<pb::PruneAuditRequest>,
    ) -> Result<Response<pb::PruneAuditResponse>, Status> {
        super::prune::prune(&self.ctx, req).await
    }

    async fn get_roles(
        &self,
        _req: Request<pb::GetRolesRequest>,
    ) -> Result<Response<pb::GetRolesResponse>, Status> {
        super::roles::get(&self.ctx)
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (state_digest_index, state_digest) = if req.into_inner().include_state_digest {
            // Runs on the state machine task: no entry is applied mid-scan.
            let d = self
                .ctx
                .raft
                .with_state_machine(|sm| Box::pin(async move { sm.digest() }))
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?
                .map_err(ApiError::from)?;
            (d.0, d.1)
        } else {
            (0, String::new())
        };
        let m = self.ctx.raft.metrics().borrow_watched().clone();
        let (voters, learners) = members_of(&m.membership_config);
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let leader_api_addr = m
            .current_leader
            .and_then(|l| m.membership_config.get_node(&l).map(|n| n.api_addr.clone()))
            .unwrap_or_default();
        Ok(Response::new(pb::StatusResponse {
            node_id: m.id,
            role: role.into(),
            leader_id: m.current_leader.unwrap_or(0),
            has_leader: m.current_leader.is_some(),
            leader_api_addr,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index).unwrap_or(0),
            initialized: !voters.is_empty(),
            state_digest,
            state_digest_index,
            voters,
            learners,
            transport_security: match *self.ctx.access {
                crate::auth::layer::Access::Insecure => "insecure",
                crate::auth::layer::Access::Mtls(_) => "mtls",
            }
            .into(),
        }))
    }
}
