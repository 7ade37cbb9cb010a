//! A node begun from a snapshot holds the audit chain from the snapshot's
//! size on (`storage::audit_store`, "Base"). This task fetches the entries
//! below it from a peer, page by page, checks them against the root the
//! snapshot's head names, and takes them in (`storage::audit_fill`). Until
//! then the node serves checks and everything else; reads of the part it
//! lacks answer that it lacks it.
//!
//! A peer that sends entries that do not hash to that root is named in the
//! log, and the fetch begins again from the next peer. A peer that lacks
//! the part itself (it began from a snapshot too) says so, and the next one
//! is asked.

use std::sync::{Arc, Mutex};

use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;

use crate::limits::{AUDIT_FETCH_ENTRIES, AUDIT_FETCH_RETRY};
use crate::raft::network::Network;
use crate::raft::{NodeId, Raft};
use crate::storage::audit_fill::Fill;
use crate::storage::audit_store::AuditStore;
use crate::storage::StateReader;

pub async fn run(
    node_id: NodeId,
    raft: Raft,
    state: StateReader,
    store: Arc<Mutex<AuditStore>>,
    network: Network,
    shutdown: watch::Receiver<bool>,
) {
    // Which peer is asked first: the next one after each failure.
    let mut turn = 0usize;
    while !*shutdown.borrow() {
        if state.audit_files().base().lacking() {
            let peers: Vec<(NodeId, String)> = {
                let m = raft.metrics().borrow_watched().clone();
                m.membership_config
                    .membership()
                    .nodes()
                    .filter(|(id, _)| **id != node_id)
                    .map(|(id, n)| (*id, n.raft_addr.clone()))
                    .collect()
            };
            if !peers.is_empty() {
                let (id, addr) = &peers[turn % peers.len()];
                match fill_from(&state, &store, &network, addr, &shutdown).await {
                    Ok(Some((seam, seeded))) => {
                        tracing::info!(
                            from_node = id,
                            entries = seam,
                            fetched = seam - seeded,
                            "fetched the audit chain below this node's snapshot"
                        );
                        continue;
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(
                            from_node = id,
                            error = %e,
                            "fetching the audit chain below this node's snapshot; trying the next peer"
                        );
                        turn += 1;
                    }
                }
            }
        }
        tokio::time::sleep(AUDIT_FETCH_RETRY).await;
    }
}

/// Fetch the part the store lacks from the peer at `addr`. The seam, and
/// how much of it the replaced store seeded, when it was taken in; None
/// when there was nothing to do, or the store was replaced (a newer
/// snapshot) or the node stops meanwhile.
async fn fill_from(
    state: &StateReader,
    store: &Arc<Mutex<AuditStore>>,
    network: &Network,
    addr: &str,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<(u64, u64)>, String> {
    let files = state.audit_files();
    let start = state.chain_start().map_err(|e| e.to_string())?;
    let begun = {
        let files = files.clone();
        blocking(move || Fill::begin(&files, &start)).await?
    };
    let Some(mut fill) = begun else {
        return Ok(None);
    };
    let (seam, seeded) = (fill.seam(), fill.seeded());
    while fill.next() < seam {
        if *shutdown.borrow() || state.audit_files().dir() != files.dir() {
            return Ok(None);
        }
        let want = (seam - fill.next()).min(AUDIT_FETCH_ENTRIES as u64) as u32;
        let page = network.audit_entries(addr, fill.next(), want).await?;
        if page.is_empty() {
            return Err(format!("the peer sent no entries from {}", fill.next()));
        }
        fill = blocking(move || fill.add(&page).map(|_| fill)).await?;
    }
    let store = store.clone();
    let taken = blocking(move || fill.finish(&store)).await?;
    Ok(taken.then_some((seam, seeded)))
}

/// Run `f`, file I/O, off the async runtime; its error as text.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}
