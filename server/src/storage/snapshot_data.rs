//! The encoding of snapshot data: the state tree's pairs in key order,
//! each as (u32 key length, key, u32 value length, value), big-endian.
//! Raft ships it between nodes; a backup file carries it with the audit
//! chain's entries after it (`BackupData`, `AuditPairs`).
//!
//! Snapshots are as large as the state (gigabytes at a million grants), so
//! everything here reads and writes a stream, one pair at a time.

use std::io::{self, Read, Write};

use super::audit_store::AuditFiles;
use super::keyspace as ks;
use super::snapshot_file::SnapshotFile;
use crate::ledger::{Chain, ChainStart};
use crate::limits::SNAPSHOT_VALUE_BYTES_MAX;
use crate::raft::codec;

pub fn put(out: &mut impl Write, k: &[u8], v: &[u8]) -> io::Result<()> {
    out.write_all(&(k.len() as u32).to_be_bytes())?;
    out.write_all(k)?;
    out.write_all(&(v.len() as u32).to_be_bytes())?;
    out.write_all(v)
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed snapshot data: {what}"),
    )
}

/// The (key, value) pairs read from `r` in order, one at a time. A
/// malformed or cut-short tail ends the iteration with an error.
pub fn pairs<R: Read>(r: R) -> Pairs<R> {
    Pairs {
        r,
        failed: false,
        pairs: 0,
    }
}

pub struct Pairs<R> {
    r: R,
    failed: bool,
    pairs: u64,
}

impl<R: Read> Pairs<R> {
    /// The next length prefix, or None at a clean end of the stream.
    fn len(&mut self, first: bool) -> io::Result<Option<usize>> {
        let mut b = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.r.read(&mut b[got..]) {
                Ok(0) if got == 0 && first => return Ok(None),
                Ok(0) => return Err(malformed("cut short")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let n = u32::from_be_bytes(b) as usize;
        if n > SNAPSHOT_VALUE_BYTES_MAX {
            return Err(malformed(&format!(
                "pair {} claims {n} bytes, above snapshot_value_bytes_max",
                self.pairs
            )));
        }
        Ok(Some(n))
    }

    fn bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0; n];
        self.r.read_exact(&mut v).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => malformed("cut short"),
            _ => e,
        })?;
        Ok(v)
    }

    fn pair(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let Some(kn) = self.len(true)? else {
            return Ok(None);
        };
        let k = self.bytes(kn)?;
        let vn = self.len(false)?.expect("not first");
        let v = self.bytes(vn)?;
        self.pairs += 1;
        Ok(Some((k, v)))
    }
}

impl<R: Read> Iterator for Pairs<R> {
    type Item = io::Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let p = self.pair().transpose();
        self.failed = matches!(p, Some(Err(_)));
        p
    }
}

/// What a backup of a snapshot serves: the snapshot's pairs, then the
/// chain's entries from its start, as the snapshot has it, to the head the
/// snapshot holds. The API asks this, not the state's key layout.
pub struct BackupData {
    snapshot: SnapshotFile,
    files: AuditFiles,
    start: u64,
    /// The chain's head as of the snapshot: what the backup's entries reach.
    pub chain: Chain,
}

impl BackupData {
    /// Reads the snapshot once for the head and the chain's start. A node
    /// still fetching the start of its chain refuses (`Missing`): a backup
    /// is whole or not made.
    pub fn new(snapshot: SnapshotFile, files: AuditFiles) -> io::Result<Self> {
        let found = summarize_keys(snapshot.data(), &[ks::META_APPLIED, ks::META_AUDIT_START])?.2;
        let chain = match &found[0] {
            Some(v) => ks::decode_applied(v)?.chain,
            None => Chain::default(),
        };
        // A prune since the snapshot makes the entries' read fail, and
        // the backup with it.
        let start = match &found[1] {
            Some(v) => codec::decode::<ChainStart>(v)?.seq,
            None => 0,
        };
        files.require_whole()?;
        Ok(BackupData {
            snapshot,
            files,
            start,
            chain,
        })
    }

    /// The data, from its beginning: read it once for its checksum and
    /// once to send it.
    pub fn reader(&self) -> impl Read {
        self.snapshot.data().chain(AuditPairs::new(
            self.files.clone(),
            self.start,
            self.chain.size(),
        ))
    }
}

/// The chain's entries from `start` (its first kept) to `size` as pairs
/// (seq under the AUDIT tag -> canonical bytes), read from the store a page
/// at a time: what a backup adds after the snapshot, which carries only the
/// chain's head.
pub struct AuditPairs {
    files: AuditFiles,
    next: u64,
    size: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl AuditPairs {
    pub fn new(files: AuditFiles, start: u64, size: u64) -> Self {
        AuditPairs {
            files,
            next: start,
            size,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for AuditPairs {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.next >= self.size {
                return Ok(0);
            }
            self.buf.clear();
            self.pos = 0;
            let (buf, mut seq) = (&mut self.buf, self.next);
            self.files.entries(self.next, 1024, self.size, |b| {
                put(buf, &ks::audit(seq), b)?;
                seq += 1;
                Ok(())
            })?;
            if seq == self.next {
                return Err(io::Error::other(format!("audit entry {seq} is missing")));
            }
            self.next = seq;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Copy the data read from `r` to `w` with the value of `key` set to
/// `value` (added at the end if absent).
pub fn copy_replacing(
    r: impl Read,
    w: &mut impl Write,
    key: &[u8],
    value: &[u8],
) -> io::Result<()> {
    let mut done = false;
    for kv in pairs(r) {
        let (k, v) = kv?;
        if k == key {
            put(w, &k, value)?;
            done = true;
        } else {
            put(w, &k, &v)?;
        }
    }
    if !done {
        put(w, key, value)?;
    }
    Ok(())
}

/// One pass over the data read from `r`: its length, its hex SHA-256, and
/// the value of `key` if present.
pub fn summarize(r: impl Read, key: &[u8]) -> io::Result<(u64, String, Option<Vec<u8>>)> {
    let (n, sha, mut found) = summarize_keys(r, &[key])?;
    Ok((n, sha, found.pop().flatten()))
}

/// What `summarize_keys` found: the data's length, its hex SHA-256, and
/// the value of each key asked for (None where absent).
pub type KeysSummary = (u64, String, Vec<Option<Vec<u8>>>);

/// As [`summarize`], with the values of several keys, in one pass.
pub fn summarize_keys(r: impl Read, keys: &[&[u8]]) -> io::Result<KeysSummary> {
    let mut r = grant_proto::backup::Hashing::new(r);
    let mut found = vec![None; keys.len()];
    for kv in pairs(&mut r) {
        let (k, v) = kv?;
        if let Some(i) = keys.iter().position(|key| k == *key) {
            found[i] = Some(v);
        }
    }
    let (n, sha) = r.finish();
    Ok((n, sha, found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn pairs_round_trip_and_replace() {
        let mut d = Vec::new();
        put(&mut d, b"a", b"1").unwrap();
        put(&mut d, b"b", b"").unwrap();
        let all: Vec<_> = pairs(&d[..]).collect::<io::Result<_>>().unwrap();
        assert_eq!(
            all,
            vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![])]
        );
        let mut r = Vec::new();
        copy_replacing(&d[..], &mut r, b"a", b"22").unwrap();
        let get = |d: &[u8], k: &[u8]| summarize(d, k).unwrap().2;
        assert_eq!(get(&r, b"a"), Some(b"22".to_vec()));
        let mut r2 = Vec::new();
        copy_replacing(&r[..], &mut r2, b"c", b"3").unwrap();
        assert_eq!(get(&r2, b"c"), Some(b"3".to_vec()));
        assert_eq!(get(&r2, b"b"), Some(vec![]));
        let (n, sha, _) = summarize(&r2[..], b"none").unwrap();
        assert_eq!(
            (n, sha),
            (r2.len() as u64, hex::encode(sha2::Sha256::digest(&r2)))
        );
    }

    #[test]
    fn damaged_data_ends_with_an_error_not_a_huge_allocation() {
        let mut d = Vec::new();
        put(&mut d, b"a", b"1").unwrap();
        for cut in 1..d.len() {
            let r: io::Result<Vec<_>> = pairs(&d[..cut]).collect();
            assert!(r.is_err(), "cut at {cut} accepted");
        }
        // A length prefix far beyond any value is refused before reading.
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let e = pairs(&huge[..]).next().unwrap().unwrap_err();
        assert!(e.to_string().contains("snapshot_value_bytes_max"), "{e}");
    }
}
