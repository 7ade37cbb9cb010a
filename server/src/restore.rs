//! `grantd restore`: seed an empty data directory from a backup file as one
//! member of a new cluster (disaster recovery), the way `etcdutl snapshot
//! restore` does.
//!
//! Every member of the new cluster is seeded from the same backup with the
//! same member list. Each then holds the backed-up state at the backup's
//! last log id, with the new membership in place of the old one, an empty
//! log purged up to that id, and a vote in the backup's term: started, the
//! nodes elect a leader in the next term and carry on from there. The audit
//! chain continues from the backed-up head, so an export of the new cluster
//! verifies from the first entry.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use grant_proto::backup;
use grant_proto::v1 as pb;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::Membership;

use crate::api::cluster::node_info;
use crate::limits::MEMBERS_MAX;
use crate::raft::typ::*;
use crate::raft::{codec, NodeInfo};
use crate::storage::{keyspace as ks, snapshot_data, LogStore, StateMachine};

pub struct Restored {
    pub last_log_index: u64,
    pub audit_size: u64,
    pub voters: Vec<u64>,
}

pub async fn restore(
    backup_file: &Path,
    data_dir: &Path,
    node_id: u64,
    members: &[pb::Node],
) -> anyhow::Result<Restored> {
    // Check everything before writing anything.
    if let Ok(mut entries) = std::fs::read_dir(data_dir) {
        if entries.next().is_some() {
            bail!(
                "data directory {} is not empty: restore seeds a new node only",
                data_dir.display()
            );
        }
    }
    if members.is_empty() || members.len() > MEMBERS_MAX {
        bail!("name 1-{MEMBERS_MAX} members");
    }
    let mut nodes = BTreeMap::<u64, NodeInfo>::new();
    for m in members {
        let (id, info) = node_info(m).map_err(|e| anyhow!("{e}"))?;
        if nodes.insert(id, info).is_some() {
            bail!("node id {id} named twice");
        }
    }
    if !nodes.contains_key(&node_id) {
        bail!("the members must include this node ({node_id})");
    }
    // A backup is as large as the state: read it as a stream, once to check
    // it and once to copy it.
    let open = || -> anyhow::Result<(backup::BackupHeader, BufReader<File>)> {
        let f = File::open(backup_file)
            .with_context(|| format!("reading {}", backup_file.display()))?;
        let mut r = BufReader::with_capacity(256 * 1024, f);
        let header = backup::read_header(&mut r)?;
        Ok((header, r))
    };
    let (header, data) = open()?;
    backup::check_data(data, &header)?;
    if header.state_format != ks::FORMAT_VERSION {
        bail!(
            "backup holds state format {}, this grantd reads {}",
            header.state_format,
            ks::FORMAT_VERSION
        );
    }
    let old: SnapshotMeta = codec::decode(&serde_json::to_vec(&header.raft_meta)?)?;
    let last = old
        .last_log_id
        .ok_or_else(|| anyhow!("backup of an empty cluster: nothing to restore"))?;
    let voters: BTreeSet<u64> = nodes.keys().copied().collect();
    let membership = Membership::new(vec![voters.clone()], nodes)?;
    let stored = StoredMembership::new(Some(last), membership);
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: stored,
    };

    std::fs::create_dir_all(data_dir)?;
    let seeded = async {
        let mut sm = StateMachine::open(data_dir)?;
        let (_, data) = open()?;
        let mut out = sm.snapshot_writer(&meta)?;
        let mut copied = backup::Hashing::new(data.take(header.data_bytes));
        snapshot_data::copy_replacing(
            &mut copied,
            &mut out,
            ks::META_MEMBERSHIP,
            &codec::encode(&meta.last_membership),
        )?;
        // The file was checked above; what was copied must be what was checked.
        if copied.finish() != (header.data_bytes, header.data_sha256.clone()) {
            bail!(
                "{} changed while it was being restored",
                backup_file.display()
            );
        }
        let (_, file) = out.finish()?;
        sm.install_snapshot(&meta, file).await?;
        let mut log = LogStore::open(data_dir)?;
        log.purge(last).await?;
        log.save_committed(Some(last)).await?;
        // Durable, and flushes the purge and commit marks with it. A vote in
        // the backup's term keeps every later term above the log's.
        log.save_vote(&Vote::new(last.leader_id.term, node_id))
            .await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = seeded {
        // The directory was empty or absent: leave it as it was.
        let _ = std::fs::remove_dir_all(data_dir);
        return Err(e);
    }
    Ok(Restored {
        last_log_index: last.index,
        audit_size: header.audit_size,
        voters: voters.into_iter().collect(),
    })
}
