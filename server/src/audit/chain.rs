//! The head of the audit chain: the next sequence number, the hash of the
//! last entry, its time and the Merkle frontier. Pure: apply extends it entry
//! by entry, and it is stored with the state it describes.

use grant_proto::audit::merkle::Frontier;
use grant_proto::audit::{Entry, Hash};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    pub frontier: Frontier,
    /// The last entry's `time_ms`. Entries are stamped with the time of the
    /// request they record, as the leader saw it; requests that share a log
    /// entry, or a new leader whose clock is behind, would make time go
    /// back. The chain never does: an entry is stamped no earlier than the
    /// one before it (docs/audit-format.md). A chain stored before this
    /// field existed reads 0 and catches up at its next entry.
    #[serde(default)]
    pub last_time_ms: i64,
}

/// One entry as the chain appended it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chained {
    pub entry: Entry,
    pub hash: Hash,
    pub leaf_hash: Hash,
    /// The entry's canonical bytes, which the hashes are over: what the
    /// state stores for it.
    pub bytes: Vec<u8>,
}

impl Chain {
    /// Entries in the log: the next entry's sequence number.
    pub fn size(&self) -> u64 {
        self.frontier.size
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Give `entry` the next sequence number and link it to the last one.
    pub fn append(&mut self, mut entry: Entry, log_index: u64) -> Chained {
        entry.seq = self.size();
        entry.log_index = log_index;
        entry.prev_hash = self.prev_hash;
        entry.time_ms = entry.time_ms.max(self.last_time_ms);
        self.last_time_ms = entry.time_ms;
        let bytes = entry.canonical_bytes();
        let hash: Hash =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes)).into();
        let leaf_hash = grant_proto::audit::merkle::leaf_hash(&bytes);
        self.prev_hash = hash;
        self.frontier.push(leaf_hash);
        Chained {
            entry,
            hash,
            leaf_hash,
            bytes,
        }
    }
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let v = hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grant_proto::audit::Kind;

    #[test]
    fn append_links_and_matches_the_format() {
        let mut c = Chain::default();
        let a = c.append(Entry::new(Kind::Issue, 1), 5);
        let b = c.append(Entry::new(Kind::Check, 2), 6);
        assert_eq!((a.entry.seq, b.entry.seq), (0, 1));
        assert_eq!(a.hash, a.entry.hash());
        assert_eq!(b.entry.prev_hash, a.hash);
        assert_eq!(b.leaf_hash, b.entry.leaf_hash());
        assert_eq!(
            c.root(),
            grant_proto::audit::merkle::root(&[a.leaf_hash, b.leaf_hash])
        );
    }

    #[test]
    fn time_never_goes_back_along_the_chain() {
        let mut c = Chain::default();
        let times: Vec<i64> = [10, 9, 12, 11, 11, 30]
            .into_iter()
            .map(|t| c.append(Entry::new(Kind::Issue, t), 1).entry.time_ms)
            .collect();
        assert_eq!(times, [10, 10, 12, 12, 12, 30]);
        // The head carries the time across a store and load.
        let stored: Chain = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(stored.last_time_ms, 30);
        // A head stored before the field existed reads as 0.
        let mut v = serde_json::to_value(&c).unwrap();
        v.as_object_mut().unwrap().remove("last_time_ms");
        let old: Chain = serde_json::from_value(v).unwrap();
        assert_eq!((old.last_time_ms, old.size()), (0, 6));
    }
}
