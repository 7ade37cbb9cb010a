//! Grant records as apply last read them, decoded.
//!
//! Every Check reads its grant, on every node. Reading it from sled and
//! decoding its JSON was 9-13% of a follower's CPU under check load
//! (bench/HISTORY.md, "grant records remembered"). Apply is the only writer
//! of grants and runs one entry at a time, so it keeps the records it reads
//! here, forgets each one an entry writes, and starts over when a snapshot
//! replaces the state. Reads outside apply (the API) go to sled as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ledger::GrantRecord;
use crate::limits::GRANTS_CACHED_MAX;

#[derive(Clone, Default)]
pub struct GrantCache(Arc<Mutex<HashMap<String, GrantRecord>>>);

impl GrantCache {
    pub fn get(&self, id: &str) -> Option<GrantRecord> {
        self.lock().get(id).cloned()
    }

    /// Remember `record` as stored; beyond `GRANTS_CACHED_MAX` start over.
    pub fn put(&self, record: &GrantRecord) {
        let mut m = self.lock();
        if m.len() >= GRANTS_CACHED_MAX {
            m.clear();
        }
        m.insert(record.grant_id.clone(), record.clone());
    }

    /// The stored record of `id` changed (or is about to).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The whole state changed.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, GrantRecord>> {
        self.0.lock().expect("grant cache lock")
    }
}
