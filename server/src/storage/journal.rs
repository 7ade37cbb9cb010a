//! Writing one applied entry's changes to the state tree, atomically across
//! a crash, without sled's `apply_batch`.
//!
//! sled 0.34 makes a batch atomic by writing out its IO buffer and starting
//! its writeback (a pwrite and a sync_file_range) before and after a marker
//! (`PageCache::pin_log`): two small disk writes per applied entry on every
//! node, whatever the flush settings. Under Issue load that was 8,000 disk
//! writes a second on this machine and the largest single cost of an Issue
//! (bench/HISTORY.md, "Two disk writes per applied entry"). A single-key
//! write only takes space in the buffer, which sled writes out when it is
//! full or on its periodic flush.
//!
//! So an entry's writes go: first all of them together, as one value under
//! one key of the journal tree (one insert, atomic by itself), then key by
//! key into the state tree, in order, the state's `META_APPLIED` last.
//! sled's log is one sequence and it recovers a prefix of it after a crash,
//! so if any key of an entry survived, the journal value before it did too.
//! [`Journal::replay`] at start writes the journaled keys again: they are
//! puts and removes of final values, so writing them twice changes nothing,
//! and an entry a crash cut short is completed.
//!
//! Readers of the state tree see an entry land key by key: a single key is
//! always whole, and readers of several keys bound themselves by the chain
//! size in `META_APPLIED` (written last) or tolerate a key that is not there
//! yet.

use std::io;

use super::io_err;
use super::keyspace::WriteSet;
use super::snapshot_data;

/// The one key of the journal tree: the last entry's writes.
const LAST: &[u8] = b"last";
/// Tags before each key in the journal value.
const PUT: u8 = b'+';
const REMOVE: u8 = b'-';

#[derive(Clone)]
pub struct Journal(sled::Tree);

impl Journal {
    /// The journal of the state database `db`.
    pub fn open(db: &sled::Db) -> io::Result<Journal> {
        Ok(Journal(db.open_tree("journal").map_err(io_err)?))
    }

    /// Write `writes` to `tree`: journaled whole, then key by key, in order.
    pub fn write(&self, tree: &sled::Tree, writes: WriteSet) -> io::Result<()> {
        self.0.insert(LAST, encode(&writes)?).map_err(io_err)?;
        apply(tree, writes.into_ops())
    }

    /// Write the last journaled entry's keys again, completing it if a crash
    /// cut it short. Returns how many keys were written.
    pub fn replay(&self, tree: &sled::Tree) -> io::Result<usize> {
        let Some(v) = self.0.get(LAST).map_err(io_err)? else {
            return Ok(0);
        };
        let ops = decode(&v)?;
        let n = ops.len();
        apply(tree, ops)?;
        Ok(n)
    }
}

type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn apply(tree: &sled::Tree, ops: Ops) -> io::Result<()> {
    for (k, v) in ops {
        match v {
            Some(v) => tree.insert(k, v).map_err(io_err)?,
            None => tree.remove(k).map_err(io_err)?,
        };
    }
    Ok(())
}

/// In `snapshot_data` encoding, each key behind a tag: PUT + key -> value,
/// REMOVE + key -> empty.
fn encode(writes: &WriteSet) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut tagged = Vec::new();
    for (k, v) in writes.ops() {
        tagged.clear();
        tagged.push(if v.is_some() { PUT } else { REMOVE });
        tagged.extend_from_slice(k);
        snapshot_data::put(&mut out, &tagged, v.unwrap_or_default())?;
    }
    Ok(out)
}

fn decode(v: &[u8]) -> io::Result<Ops> {
    snapshot_data::pairs(v)
        .map(|kv| {
            let (mut k, v) = kv?;
            if k.is_empty() {
                return Err(io_err("journal holds an empty key"));
            }
            let tag = k.remove(0);
            match tag {
                PUT => Ok((k, Some(v))),
                REMOVE => Ok((k, None)),
                t => Err(io_err(format!("journal key tag {t:#x}"))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, sled::Db, sled::Tree, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("state").unwrap();
        let j = Journal::open(&db).unwrap();
        (dir, db, tree, j)
    }

    fn contents(tree: &sled::Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    fn writes() -> WriteSet {
        let mut w = WriteSet::default();
        w.insert(b"a".to_vec(), b"1");
        w.remove(b"gone".to_vec());
        w.insert(b"empty".to_vec(), b"");
        w.insert(b"a".to_vec(), b"2"); // a later write of a key wins
        w
    }

    #[test]
    fn an_entry_cut_short_is_completed_by_replay() {
        let (_d, _db, tree, j) = db();
        tree.insert(b"gone", b"x".to_vec()).unwrap();
        tree.insert(b"kept", b"k".to_vec()).unwrap();
        let whole = {
            let (_d2, _db2, t2, j2) = db();
            for (k, v) in contents(&tree) {
                t2.insert(k, v).unwrap();
            }
            j2.write(&t2, writes()).unwrap();
            contents(&t2)
        };
        assert_eq!(
            whole,
            vec![
                (b"a".to_vec(), b"2".to_vec()),
                (b"empty".to_vec(), vec![]),
                (b"kept".to_vec(), b"k".to_vec()),
            ]
        );
        // A crash after the journal and the first key: replay finishes it.
        j.0.insert(LAST, encode(&writes()).unwrap()).unwrap();
        tree.insert(b"a", b"1".to_vec()).unwrap();
        assert_ne!(contents(&tree), whole);
        assert_eq!(j.replay(&tree).unwrap(), 4);
        assert_eq!(contents(&tree), whole);
        // Replaying a finished entry changes nothing.
        j.replay(&tree).unwrap();
        assert_eq!(contents(&tree), whole);
    }

    #[test]
    fn an_empty_journal_replays_nothing() {
        let (_d, _db, tree, j) = db();
        assert_eq!(j.replay(&tree).unwrap(), 0);
        assert!(contents(&tree).is_empty());
    }

    #[test]
    fn a_damaged_journal_is_an_error_not_a_guess() {
        let (_d, _db, tree, j) = db();
        let mut bad = encode(&writes()).unwrap();
        bad.truncate(bad.len() - 1);
        j.0.insert(LAST, bad).unwrap();
        assert!(j.replay(&tree).is_err());
        let mut untagged = Vec::new();
        snapshot_data::put(&mut untagged, b"?a", b"1").unwrap();
        j.0.insert(LAST, untagged).unwrap();
        let e = j.replay(&tree).unwrap_err().to_string();
        assert!(e.contains("tag"), "{e}");
        assert!(contents(&tree).is_empty());
    }
}
