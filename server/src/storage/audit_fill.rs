//! The part of the audit chain a store begun from a snapshot lacks,
//! fetched from a peer: the entries below the seam arrive in pages into a
//! store of their own, `<store>/fill/`, which is checked against the seam's
//! root once whole and then absorbed (`AuditStore::absorb`). A peer that
//! sends anything else is found out there, at the latest: its pages are
//! thrown away and the fetch begins again from another peer.
//!
//! A node that installs a snapshot over a store of its own (it fell behind)
//! keeps that store as the seed of the fetch (`seed`): the fetch goes on
//! from where it ends, and the root check covers the seed too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use grant_proto::audit::merkle;

use super::audit_store::{read_base, unsplit, AuditFiles, AuditStore};
use super::keyspace as ks;
use crate::ledger::{Chain, ChainStart};

/// Where the store a snapshot replaced waits, in the new store's
/// directory, to seed its fetch; its head beside its files.
const SEED: &str = "seed";
const SEED_HEAD: &str = "seed.head";

/// Keep the store in `old` (the chain `old_head` counts), which a snapshot
/// just replaced with the store of `new`, as the start of `new`'s fetch:
/// moved, not copied. Only a whole store no longer than the new seam
/// seeds; otherwise `old` is left for the generation's removal.
pub fn seed(old: &Path, old_head: &Chain, new: &AuditFiles) -> io::Result<()> {
    let base = new.base();
    if !base.lacking()
        || read_base(old)?.lacking()
        || old_head.size() == 0
        || old_head.size() > base.seam
    {
        return Ok(());
    }
    // A store once begun from a snapshot itself: one seam per store.
    unsplit(old)?;
    std::fs::write(
        new.dir().join(SEED_HEAD),
        serde_json::to_vec(old_head).map_err(io::Error::other)?,
    )?;
    std::fs::rename(old, new.dir().join(SEED))?;
    super::sync_dir(new.dir())
}

/// A fetch under way.
pub struct Fill {
    /// The directory of the store it fills.
    target: PathBuf,
    store: AuditStore,
    seam: u64,
    /// Entries the seed held when the fetch began.
    seeded: u64,
}

impl Fill {
    /// A fetch for the store of `files`, if it lacks anything: in its
    /// `fill/`, the seed if one was kept (opened against its head), else a
    /// fresh, empty store. What an earlier fetch left is removed, and a
    /// seed serves one fetch only: one that fails begins the next from
    /// nothing.
    pub fn begin(files: &AuditFiles, start: &ChainStart) -> io::Result<Option<Fill>> {
        let base = files.base();
        if !base.lacking() {
            return Ok(None);
        }
        let dir = files.dir().join("fill");
        remove_dir(&dir)?;
        // The replaced store, if one was kept: used once, then gone.
        let (seed, seed_head) = (files.dir().join(SEED), files.dir().join(SEED_HEAD));
        if seed.exists() {
            let head = std::fs::read(&seed_head)
                .map_err(io::Error::other)
                .and_then(|b| serde_json::from_slice::<Chain>(&b).map_err(io::Error::other));
            let _ = std::fs::remove_file(&seed_head);
            std::fs::rename(&seed, &dir)?;
            // A seed from before a prune is pruned the same way; one that
            // ends before the start has nothing to give.
            let opened = head
                .and_then(|h| AuditStore::open(&dir, &h))
                .and_then(|mut s| {
                    if s.size() < start.seq {
                        return Err(io::Error::other("it ends before the chain's start"));
                    }
                    s.prune(start)?;
                    Ok(s)
                });
            match opened {
                Ok(store) => {
                    tracing::info!(
                        entries = store.size(),
                        "the replaced audit store seeds the fetch of the chain below the snapshot"
                    );
                    return Ok(Some(Fill {
                        target: files.dir().to_path_buf(),
                        seeded: store.size(),
                        store,
                        seam: base.seam,
                    }));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the replaced audit store cannot seed the fetch");
                    remove_dir(&dir)?;
                }
            }
        }
        // From the chain's start: entry 0, or where a prune left it.
        let store = if start.seq == 0 {
            AuditStore::open(&dir, &Chain::default())?
        } else {
            AuditStore::create_started(&dir, start)?
        };
        Ok(Some(Fill {
            target: files.dir().to_path_buf(),
            seeded: store.size(),
            store,
            seam: base.seam,
        }))
    }

    /// The seq of the next entry wanted.
    pub fn next(&self) -> u64 {
        self.store.size()
    }

    /// Where the fetch began: the end of the replaced store (`seed`), or
    /// the chain's start.
    pub fn seeded(&self) -> u64 {
        self.seeded
    }

    /// One past the last entry wanted.
    pub fn seam(&self) -> u64 {
        self.seam
    }

    /// Add entries (canonical bytes) from `next()` on. Each must decode
    /// and carry its seq; more than the seam is refused.
    pub fn add(&mut self, entries: &[Vec<u8>]) -> io::Result<()> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        if self.next() + entries.len() as u64 > self.seam {
            return Err(bad(format!(
                "{} entries from {} run past the seam at {}",
                entries.len(),
                self.next(),
                self.seam
            )));
        }
        let mut leaves = Vec::with_capacity(entries.len());
        for (b, seq) in entries.iter().zip(self.next()..) {
            let (entry, _) = ks::decode_audit(b)?;
            if entry.seq != seq {
                return Err(bad(format!("entry {} where {seq} is due", entry.seq)));
            }
            leaves.push((&b[..], merkle::leaf_hash(b), ks::watched(entry.kind)));
        }
        self.store.append(leaves)
    }

    /// Check the whole fetch against the seam's root and take it into
    /// `store`, if that is still the store it was begun for (a snapshot
    /// installed meanwhile replaces it, and the fetch with it).
    pub fn finish(self, store: &Mutex<AuditStore>) -> io::Result<bool> {
        let mut s = store.lock().expect("audit store lock");
        if s.files().dir() != self.target {
            return Ok(false);
        }
        let r = s.absorb(&self.store);
        drop(s);
        let dir = self.store.files().dir().to_path_buf();
        drop(self.store);
        r?;
        std::fs::remove_dir_all(dir)?;
        Ok(true)
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
