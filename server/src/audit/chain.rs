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

/// Where the chain starts once a prune removed the entries before it
/// (docs/storage.md, "Retention"): what a replica needs to go on from there
/// without them. Part of the replicated state, so snapshots and backups
/// carry it; the default (seq 0) is a chain nothing was pruned from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChainStart {
    /// The first entry kept.
    pub seq: u64,
    /// The hash of entry `seq - 1`: entry `seq`'s `prev_hash`.
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    /// The tile hashes below `seq` that every root and proof from `seq` on
    /// is made of (`audit_store::level_floor`): at most 255 a level.
    pub tiles: Vec<StartTiles>,
    /// The `key_roster` entries before `seq`, each with its audit path in
    /// the tree of the first `seq` entries: an export that begins at `seq`
    /// proves with them that the keys signing its checkpoints were
    /// recorded (docs/audit-format.md).
    pub roster: Vec<RosterProof>,
}

/// Hashes of one tile level, from index `from`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StartTiles {
    pub level: u32,
    pub from: u64,
    /// The hashes back to back, in hex.
    pub hashes: String,
}

/// A `key_roster` entry kept past a prune, and its audit path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RosterProof {
    pub seq: u64,
    /// Its canonical bytes, in hex.
    pub entry: String,
    /// Its audit path in the tree of `ChainStart::seq` entries, in hex.
    pub path: Vec<String>,
}

impl ChainStart {
    /// The tile hashes as (level, first index, hashes).
    pub fn tiles(&self) -> std::io::Result<Vec<crate::storage::audit_store::TileRun>> {
        self.tiles
            .iter()
            .map(|t| {
                let b = hex::decode(&t.hashes).map_err(std::io::Error::other)?;
                if !b.len().is_multiple_of(32) {
                    return Err(std::io::Error::other(
                        "start tile hashes are not 32 bytes each",
                    ));
                }
                let hashes = b
                    .chunks_exact(32)
                    .map(|h| h.try_into().expect("32 bytes"))
                    .collect();
                Ok((t.level, t.from, hashes))
            })
            .collect()
    }

    /// Whether the start has the shape a store's prune takes: for each
    /// tile level below the start, exactly the hashes `level_floor` asks
    /// for, and roster entries before it, in order, that decode.
    pub fn well_formed(&self) -> Result<(), String> {
        let tiles = self.tiles().map_err(|e| e.to_string())?;
        let want: Vec<_> = crate::storage::audit_store::start_tile_ranges(self.seq)
            .into_iter()
            .map(|(level, from, to)| (level, from, to - from))
            .collect();
        let got: Vec<_> = tiles
            .iter()
            .map(|(l, f, h)| (*l, *f, h.len() as u64))
            .collect();
        if got != want {
            return Err(format!("tile hashes {got:?}, where {want:?} are due"));
        }
        let mut last = None;
        for p in &self.roster {
            if p.seq >= self.seq || last.is_some_and(|l| p.seq <= l) {
                return Err(format!("roster entry {} out of place", p.seq));
            }
            last = Some(p.seq);
            hex::decode(&p.entry).map_err(|e| e.to_string())?;
            Self::path(p).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The audit path of a kept roster entry, as hashes.
    pub fn path(p: &RosterProof) -> std::io::Result<Vec<Hash>> {
        p.path
            .iter()
            .map(|h| grant_proto::audit::parse_hash_hex(h).map_err(std::io::Error::other))
            .collect()
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
