//! The part of the audit chain a store begun from a snapshot lacks,
//! fetched from a peer: the entries below the seam arrive in pages into a
//! store of their own, `<store>/fill/`, which is checked against the seam's
//! root once whole and then absorbed (`AuditStore::absorb`). A peer that
//! sends anything else is found out there, at the latest: its pages are
//! thrown away and the fetch begins again from another peer.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use grant_proto::audit::merkle;

use super::audit_store::{AuditFiles, AuditStore};
use super::keyspace as ks;
use crate::ledger::Chain;

/// A fetch under way.
pub struct Fill {
    /// The directory of the store it fills.
    target: PathBuf,
    store: AuditStore,
    seam: u64,
}

impl Fill {
    /// A fetch for the store of `files`, if it lacks anything: a fresh,
    /// empty store in its `fill/` (what an earlier one left is removed).
    pub fn begin(files: &AuditFiles) -> io::Result<Option<Fill>> {
        let base = files.base();
        if !base.lacking() {
            return Ok(None);
        }
        let dir = files.dir().join("fill");
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(Some(Fill {
            target: files.dir().to_path_buf(),
            store: AuditStore::open(&dir, &Chain::default())?,
            seam: base.seam,
        }))
    }

    /// The seq of the next entry wanted.
    pub fn next(&self) -> u64 {
        self.store.size()
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

#[cfg(test)]
mod tests;
