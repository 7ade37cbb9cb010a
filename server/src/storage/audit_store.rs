//! The audit chain on disk, outside sled: append-only segment files of
//! canonical entries, and the Merkle tree's hashes in the C2SP tlog-tiles
//! layout. The state machine keeps only the chain's head (size, root, last
//! entry hash, in `META_APPLIED`); this store keeps the history.
//!
//! ```text
//! <generation>.audit/
//!   entries/<first seq, 20 digits>.seg   entries' canonical bytes, back to back
//!   entries/<first seq, 20 digits>.idx   u64 BE end offset of each entry in .seg
//!   tile/<L>                             the hashes of tile level L, 32 bytes each
//!   watch                                u64 BE seqs of the entries Watch serves
//!   base                                 what a store begun from a snapshot lacks,
//!                                        and where the chain starts
//!   fill/                                a fetch of that part, under way
//!   seed/, seed.head                     the store a snapshot replaced, and its
//!                                        head: where that fetch starts
//! ```
//!
//! A segment holds `AUDIT_SEGMENT_ENTRIES` entries (a multiple of 256, so a
//! segment boundary is a tile boundary), and is named by its first seq.
//! `tile/<L>` holds what tlog-tiles calls level L: hash i is the root of the
//! perfect subtree over leaves `[i * 256^L, (i + 1) * 256^L)`, written once
//! that subtree is complete. Tile N of level L, full or partial, is bytes
//! `[N * 8192, ...)` of the file, so the C2SP path `tile/<L>/<N>[.p/<W>]` is
//! a slice of it. Any subtree's hash is at most 128 stored hashes folded;
//! roots and proofs at any size read O(log n) of them.
//!
//! Every replica writes its own store as it applies, and apply is
//! deterministic, so the stores of replicas at the same size are
//! byte-identical.
//!
//! A store begun from a snapshot (`Base`) holds no entry below the
//! snapshot's size, the seam, and only the tile hashes a snapshot carries
//! (`tail`): those of the subtrees that end within `CHECKPOINT_LAG_MAX`
//! entries of the seam, or straddle it. From them it computes every root
//! at or past `hashes_from`, and the proofs of entries past it; reads below
//! answer [`Missing`], never a wrong answer. `audit_fill` fetches the part
//! below the seam from a peer, checks it against the seam's root, and
//! [`AuditStore::absorb`]s it. The segment that holds the seam is split
//! there for good: the part below and the part above are two files.
//!
//! A chain pruned before `start` (`AuditStore::prune`, docs/storage.md,
//! "Retention") keeps no segment below it and no hash of tile levels 0 and
//! 1 below their floors; reads below it answer [`Pruned`]. The start's
//! record in the state (`ChainStart`) carries what a store begun there
//! needs (`create_started`).
//!
//! Durability and crashes (docs/storage.md, "The audit chain"): apply
//! appends an entry's audit entries here before it writes the state that
//! counts them, and `sync` runs before the state is flushed. So the store
//! holds at least what the state's head counts; opening cuts it back to
//! exactly that head and checks it against the head's root and last hash.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use grant_proto::audit::{merkle, Hash};
use sha2::{Digest, Sha256};

use super::sync_dir;
use crate::ledger::{Chain, ChainStart, RosterProof, StartTiles};
use crate::limits::{AUDIT_SEGMENT_ENTRIES, CHECKPOINT_LAG_MAX};

/// Hashes in a full tile (tlog-tiles).
pub const TILE_WIDTH: u64 = 256;
/// Tree heights per tile level.
const TILE_HEIGHT: u32 = 8;
const HASH_BYTES: u64 = 32;

const _: () = assert!(AUDIT_SEGMENT_ENTRIES.is_multiple_of(TILE_WIDTH));

fn damaged(dir: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the audit chain in {} is damaged: {what}. Wipe this node's data directory \
             and let it catch up from the others (docs/operations.md)",
            dir.display()
        ),
    )
}

/// What a store begun from a snapshot lacks, in the file `base` (absent:
/// nothing, the store holds the chain from entry 0).
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// The chain's size at the snapshot the store began from (0: none).
    /// The segment that holds it is split there.
    pub seam: u64,
    /// The root of the first `seam` entries: what a fetched prefix must
    /// hash to.
    pub seam_root: Hash,
    /// The hash of entry `seam - 1` (a Watch resumes after it).
    pub seam_hash: Hash,
    /// The first entry held (`start` once the part below the seam is
    /// fetched).
    pub entries_from: u64,
    /// Tile hashes are held for every subtree that ends past this leaf
    /// (see `level_floor`); `start` once fetched.
    pub hashes_from: u64,
    /// The chain's first entry kept: those before it were pruned, on
    /// every replica alike (`AuditStore::prune`), and are never fetched.
    /// Tile levels 0 and 1 hold no hash below `level_floor(start, L)`.
    #[serde(default)]
    pub start: u64,
}

fn aligned(seq: u64) -> u64 {
    seq - seq % AUDIT_SEGMENT_ENTRIES
}

impl Base {
    /// The base of a store begun from a snapshot whose chain head is
    /// `head`: it holds the hashes a snapshot carries (`tail`).
    pub fn at(head: &Chain, start: u64) -> Base {
        Base {
            seam: head.size(),
            seam_root: head.root(),
            seam_hash: head.prev_hash,
            entries_from: head.size(),
            hashes_from: hashes_floor(head.size()).max(start),
            start,
        }
    }

    /// Whether part of the chain below the seam (and from its start) is
    /// still to be fetched.
    pub fn lacking(&self) -> bool {
        self.entries_from > self.start || self.hashes_from > self.start
    }

    /// Entries still to be fetched.
    pub fn missing_entries(&self) -> u64 {
        self.entries_from - self.start
    }

    fn split(&self) -> bool {
        !self.seam.is_multiple_of(AUDIT_SEGMENT_ENTRIES)
    }

    /// The first seq of the segment that holds `seq`.
    fn segment_of(&self, seq: u64) -> u64 {
        if self.split() && aligned(seq) == aligned(self.seam) && seq >= self.seam {
            self.seam
        } else {
            aligned(seq)
        }
    }

    /// One past the last seq the segment from `first` holds when full.
    fn segment_end(&self, first: u64) -> u64 {
        if self.split() && aligned(first) == aligned(self.seam) && first < self.seam {
            self.seam
        } else {
            aligned(first) + AUDIT_SEGMENT_ENTRIES
        }
    }
}

/// The first leaf whose subtrees' hashes a snapshot at chain size `seam`
/// carries (or the chain's start, if later).
fn hashes_floor(seam: u64) -> u64 {
    seam.saturating_sub(CHECKPOINT_LAG_MAX)
}

/// Tile levels a prune empties below the start: level 0 (the leaves) and
/// level 1 hold 32 bytes an entry and an eighth of a byte. The levels
/// above, one hash per 65,536 entries or fewer, are kept.
const PRUNED_LEVELS: u32 = 2;

/// The first index of tile level `level` held by a store whose hashes
/// start at leaf `hashes_from`: the first hash of the tile of level `level`
/// that holds it. Every subtree a root or proof at or past `hashes_from`
/// asks for is made of hashes from there on (docs/storage.md).
pub fn level_floor(hashes_from: u64, level: u32) -> u64 {
    hashes_from
        .checked_shr(TILE_HEIGHT * (level + 1))
        .unwrap_or(0)
        * TILE_WIDTH
}

/// The tile hashes below `seq` that a chain starting at `seq` keeps (a
/// `ChainStart`'s tiles): per tile level, (level, first index, one past
/// the last), the part below `seq` of the tile `level_floor` names. Levels
/// with none are left out.
pub fn start_tile_ranges(seq: u64) -> Vec<(u32, u64, u64)> {
    let mut out = Vec::new();
    let mut level = 0;
    while seq.checked_shr(TILE_HEIGHT * level).unwrap_or(0) > 0 {
        let (from, to) = (level_floor(seq, level), seq >> (TILE_HEIGHT * level));
        if from < to {
            out.push((level, from, to));
        }
        level += 1;
    }
    out
}

/// A read of part of the chain this node does not hold (yet): it began
/// from a snapshot and is fetching what lies below from its peers.
#[derive(Debug)]
pub struct Missing {
    pub from: u64,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this node holds the audit chain from entry {} on: it began from a snapshot \
             and is fetching the entries before it from its peers. Ask another node, or \
             retry when audit_missing_entries is 0 here",
            self.from
        )
    }
}

impl std::error::Error for Missing {}

fn missing(from: u64) -> io::Error {
    io::Error::other(Missing { from })
}

/// A read of part of the chain that was pruned (archived by an operator,
/// then removed on every replica): no node serves it any more.
#[derive(Debug)]
pub struct Pruned {
    pub start: u64,
}

impl std::fmt::Display for Pruned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the audit chain starts at entry {}: the entries before it were pruned \
             (docs/operations.md, \"Retention\"); they are in the export archived \
             before the prune",
            self.start
        )
    }
}

impl std::error::Error for Pruned {}

fn pruned(start: u64) -> io::Error {
    io::Error::other(Pruned { start })
}

/// Whether `e` is a read of part of the chain that was pruned.
pub fn is_pruned(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<Pruned>())
}

/// Whether `e` is a read of part of the chain this node lacks.
pub fn is_missing(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<Missing>())
}

fn base_path(dir: &Path) -> PathBuf {
    dir.join("base")
}

pub fn read_base(dir: &Path) -> io::Result<Base> {
    match std::fs::read(base_path(dir)) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| damaged(dir, format!("its base file is unreadable: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Base::default()),
        Err(e) => Err(e),
    }
}

/// Write `base` durably (a new file renamed over the old one).
fn write_base(dir: &Path, base: &Base) -> io::Result<()> {
    let tmp = dir.join("base.new");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(base).map_err(io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, base_path(dir))?;
    sync_dir(dir)
}

/// Make the whole store in `dir`, once begun from a snapshot, a plain one:
/// the two files of the segment split at its seam become one, and the base
/// file goes. For a store about to seed a fetch (`audit_fill::seed`),
/// which keeps no split of its own. A store that still lacks part of the
/// chain is refused.
pub fn unsplit(dir: &Path) -> io::Result<()> {
    let base = read_base(dir)?;
    if base.lacking() {
        return Err(io::Error::other(format!(
            "{} lacks part of the chain",
            dir.display()
        )));
    }
    let files = AuditFiles::new(dir.to_path_buf(), 0, base);
    let (low, high) = (aligned(base.seam), base.seam);
    if base.split() && files.idx_path(high).exists() {
        let low_seg = OpenOptions::new().append(true).open(files.seg_path(low))?;
        let low_idx = OpenOptions::new()
            .append(true)
            .read(true)
            .open(files.idx_path(low))?;
        let n = low_idx.metadata()?.len() / 8;
        let mut b = [0u8; 8];
        low_idx.read_exact_at(&mut b, (n - 1) * 8)?;
        let len = u64::from_be_bytes(b);
        if low_seg.metadata()?.len() != len {
            return Err(damaged(
                dir,
                format!("segment {low} does not end where its index does"),
            ));
        }
        (&low_seg).write_all(&std::fs::read(files.seg_path(high))?)?;
        let shifted: Vec<u8> = std::fs::read(files.idx_path(high))?
            .chunks_exact(8)
            .flat_map(|c| (u64::from_be_bytes(c.try_into().expect("8 bytes")) + len).to_be_bytes())
            .collect();
        (&low_idx).write_all(&shifted)?;
        low_seg.sync_data()?;
        low_idx.sync_data()?;
        remove_segment(&files, high)?;
    }
    match std::fs::remove_file(base_path(dir)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r?,
    }
    sync_dir(&dir.join("entries"))?;
    sync_dir(dir)
}

/// A run of one tile level's hashes: (level, index of the first, hashes).
pub type TileRun = (u32, u64, Vec<Hash>);

/// Read side of the store: paths, and reads by position. Readers bound
/// themselves by the head size the state published (`StateReader::chain`),
/// so they never read an entry apply has not finished.
#[derive(Clone, Debug)]
pub struct AuditFiles {
    dir: PathBuf,
    /// Entries written to the files (counted by the state or not yet).
    written: Arc<AtomicU64>,
    /// Bytes the files hold (counted at open, then added to by append).
    bytes: Arc<AtomicU64>,
    /// What the store lacks (changed once, when a fetch is absorbed).
    base: Arc<RwLock<Base>>,
}

impl AuditFiles {
    fn new(dir: PathBuf, written: u64, base: Base) -> Self {
        AuditFiles {
            dir,
            written: Arc::new(AtomicU64::new(written)),
            bytes: Arc::new(AtomicU64::new(0)),
            base: Arc::new(RwLock::new(base)),
        }
    }

    /// What the store lacks.
    pub fn base(&self) -> Base {
        *self.base.read().expect("audit base lock")
    }

    /// Ok if the store holds every entry from the first: an export or a
    /// backup is whole or refused (`Missing`).
    pub fn require_whole(&self) -> io::Result<()> {
        match self.base() {
            b if b.lacking() => Err(missing(b.entries_from)),
            _ => Ok(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn seg_path(&self, first: u64) -> PathBuf {
        self.dir.join("entries").join(format!("{first:020}.seg"))
    }

    fn idx_path(&self, first: u64) -> PathBuf {
        self.dir.join("entries").join(format!("{first:020}.idx"))
    }

    fn level_path(&self, level: u32) -> PathBuf {
        self.dir.join("tile").join(level.to_string())
    }

    fn watch_path(&self) -> PathBuf {
        self.dir.join("watch")
    }

    fn read_exact_at(&self, path: &Path, at: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = File::open(path)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, at).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                damaged(
                    &self.dir,
                    format!("{} ends before byte {}", path.display(), at + len as u64),
                )
            } else {
                e
            }
        })?;
        Ok(buf)
    }

    /// `each` of the entries' canonical bytes from seq `from`, at most
    /// `limit`, below `size` (the head the caller read).
    pub fn entries<T>(
        &self,
        from: u64,
        limit: usize,
        size: u64,
        mut each: impl FnMut(&[u8]) -> io::Result<T>,
    ) -> io::Result<Vec<T>> {
        let end = size.min(from.saturating_add(limit as u64));
        let base = self.base();
        if from < end {
            self.held(&base, from)?;
        }
        let read = self.read_entries(&base, from, end, &mut each);
        if from < end {
            // A prune that began while these were read removed files
            // after it moved the start (`AuditStore::prune`): what was
            // read, or the error, is not the answer.
            self.held(&self.base(), from)?;
        }
        read
    }

    fn read_entries<T>(
        &self,
        base: &Base,
        from: u64,
        end: u64,
        each: &mut impl FnMut(&[u8]) -> io::Result<T>,
    ) -> io::Result<Vec<T>> {
        let mut out = Vec::with_capacity(end.saturating_sub(from) as usize);
        let mut seq = from;
        while seq < end {
            let first = base.segment_of(seq);
            let upto = end.min(base.segment_end(first));
            // End offsets of entries seq - 1 .. upto - 1 (the first entry of
            // a segment starts at 0).
            let (at, n) = if seq == first {
                (0, upto - seq)
            } else {
                (seq - first - 1, upto - seq + 1)
            };
            let idx = self.read_exact_at(&self.idx_path(first), at * 8, n as usize * 8)?;
            let mut ends: Vec<u64> = idx
                .chunks_exact(8)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                .collect();
            if seq == first {
                ends.insert(0, 0);
            }
            let (start, stop) = (ends[0], *ends.last().expect("at least one"));
            if ends.windows(2).any(|w| w[1] < w[0]) {
                return Err(damaged(
                    &self.dir,
                    format!("segment {first}'s index goes back"),
                ));
            }
            let data = self.read_exact_at(&self.seg_path(first), start, (stop - start) as usize)?;
            for w in ends.windows(2) {
                out.push(each(
                    &data[(w[0] - start) as usize..(w[1] - start) as usize],
                )?);
            }
            seq = upto;
        }
        Ok(out)
    }

    /// Ok if entry `seq` is held: neither pruned nor still to be fetched.
    fn held(&self, base: &Base, seq: u64) -> io::Result<()> {
        if seq < base.start {
            Err(pruned(base.start))
        } else if seq < base.entries_from {
            Err(missing(base.entries_from))
        } else {
            Ok(())
        }
    }

    /// Ok if hash `from` of tile level `level` is held.
    fn hash_held(&self, base: &Base, level: u32, from: u64) -> io::Result<()> {
        if from < level_floor(base.start, level) {
            Err(pruned(base.start))
        } else if from < level_floor(base.hashes_from, level) {
            Err(missing(base.entries_from))
        } else {
            Ok(())
        }
    }

    /// `n` stored hashes of tile level `level` from index `from`.
    fn hashes(&self, level: u32, from: u64, n: u64) -> io::Result<Vec<Hash>> {
        self.hash_held(&self.base(), level, from)?;
        let b = self.read_exact_at(
            &self.level_path(level),
            from * HASH_BYTES,
            (n * HASH_BYTES) as usize,
        );
        // A prune that began meanwhile may have emptied what was read.
        self.hash_held(&self.base(), level, from)?;
        Ok(b?
            .chunks_exact(32)
            .map(|h| h.try_into().expect("32 bytes"))
            .collect())
    }

    /// The hash of the perfect subtree of height `height` over leaves
    /// `[index << height, (index + 1) << height)`, which must be complete.
    fn subtree(&self, height: u32, index: u64) -> io::Result<Hash> {
        let (level, rest) = (height / TILE_HEIGHT, height % TILE_HEIGHT);
        let n = 1u64 << rest;
        let mut row = self.hashes(level, index << rest, n)?;
        while row.len() > 1 {
            row = row
                .chunks_exact(2)
                .map(|p| merkle::node_hash(&p[0], &p[1]))
                .collect();
        }
        Ok(row[0])
    }

    /// MTH of leaves `a..b` (RFC 9162), for the ranges the RFC's root and
    /// proof recursions ask for: `a` aligned to the largest power of two
    /// not above `b - a`.
    pub fn mth(&self, a: u64, b: u64) -> io::Result<Hash> {
        let n = b - a;
        if n == 0 {
            return Ok(merkle::empty_root());
        }
        if n.is_power_of_two() {
            if !a.is_multiple_of(n) {
                return Err(io::Error::other(format!("subtree {a}..{b} is not aligned")));
            }
            return self.subtree(n.trailing_zeros(), a / n);
        }
        let k = merkle::split(n);
        Ok(merkle::node_hash(
            &self.mth(a, a + k)?,
            &self.mth(a + k, b)?,
        ))
    }

    /// The root of the tree of the first `size` entries.
    pub fn root(&self, size: u64) -> io::Result<Hash> {
        self.mth(0, size)
    }

    /// Audit path of entry `seq` in the tree of `size`.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> io::Result<Vec<Hash>> {
        merkle::inclusion_path(seq, size, |a, b| self.mth(a, b))
    }

    /// Proof that the tree of `first` entries is a prefix of that of `size`.
    pub fn consistency_proof(&self, first: u64, size: u64) -> io::Result<Vec<Hash>> {
        merkle::consistency_path(first, size, |a, b| self.mth(a, b))
    }

    /// Seqs of watched entries after `after` (None: from the start) and
    /// below `size`, in order, at most `limit`.
    pub fn watched_after(
        &self,
        after: Option<u64>,
        size: u64,
        limit: usize,
    ) -> io::Result<Vec<u64>> {
        let base = self.base();
        // From the start: from the first entry kept.
        let after = after.or(base.start.checked_sub(1));
        self.held(&base, after.map_or(0, |a| a + 1))?;
        let path = self.watch_path();
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let n = f.metadata()?.len() / 8;
        let at = |i: u64| -> io::Result<u64> {
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, i * 8)?;
            Ok(u64::from_be_bytes(b))
        };
        // The first record above `after`: the file is sorted.
        let (mut lo, mut hi) = (0, n);
        if let Some(after) = after {
            while lo < hi {
                let mid = (lo + hi) / 2;
                if at(mid)? <= after {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
        }
        let mut out = Vec::new();
        let end = n.min(lo + limit as u64);
        if lo < end {
            let mut b = vec![0u8; ((end - lo) * 8) as usize];
            f.read_exact_at(&mut b, lo * 8)?;
            for c in b.chunks_exact(8) {
                let seq = u64::from_be_bytes(c.try_into().expect("8 bytes"));
                if seq >= size {
                    break;
                }
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// The tile hashes a snapshot at chain size `size`, of a chain that
    /// starts at `start`, carries, per level: (level, first index, hashes),
    /// from `level_floor` of the base that snapshot gives (`Base::at`) to
    /// the level's last hash at `size`.
    pub fn tail(&self, size: u64, start: u64) -> io::Result<Vec<TileRun>> {
        let hashes_from = hashes_floor(size).max(start);
        let mut out = Vec::new();
        let mut level = 0;
        loop {
            let count = size.checked_shr(TILE_HEIGHT * level).unwrap_or(0);
            if count == 0 {
                return Ok(out);
            }
            let from = level_floor(hashes_from, level);
            out.push((level, from, self.hashes(level, from, count - from)?));
            level += 1;
        }
    }

    /// Write `hashes` into tile level `level` from index `from`, durably:
    /// hashes this store lacked (a fetch's, a start's), where apply never
    /// writes.
    fn write_hashes(&self, level: u32, from: u64, hashes: &[Hash]) -> io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .open(self.level_path(level))?;
        f.write_all_at(hashes.concat().as_slice(), from * HASH_BYTES)?;
        f.sync_data()
    }

    /// The Merkle frontier of the first `size` entries: the roots of its
    /// perfect subtrees, tallest first.
    pub fn frontier(&self, size: u64) -> io::Result<merkle::Frontier> {
        let mut f = merkle::Frontier {
            size,
            subtrees: Vec::new(),
        };
        let mut at = 0;
        for height in (0..64u32).rev() {
            if size & (1 << height) != 0 {
                f.subtrees
                    .push((height as u8, self.subtree(height, at >> height)?));
                at += 1 << height;
            }
        }
        Ok(f)
    }

    /// The start of a chain pruned before `seq` (a segment boundary), read
    /// from this store, which holds the chain from `old.seq` (the start in
    /// force) whole: the hash of entry `seq - 1`, the tile hashes below
    /// `seq` that roots and proofs from it are made of, and every
    /// `key_roster` entry before it (the old start's, whose paths are
    /// extended, and those at `roster_seqs` from the old start on) with its
    /// audit path in the tree of `seq` entries.
    pub fn start_at(
        &self,
        seq: u64,
        old: &ChainStart,
        roster_seqs: &[u64],
    ) -> io::Result<ChainStart> {
        let prev_hash = match seq.checked_sub(1) {
            None => [0; 32],
            Some(last) => self
                .entries(last, 1, seq, |b| Ok(<[u8; 32]>::from(Sha256::digest(b))))?
                .pop()
                .expect("one entry"),
        };
        let tiles = start_tile_ranges(seq)
            .into_iter()
            .map(|(level, from, to)| {
                Ok(StartTiles {
                    level,
                    from,
                    hashes: hex::encode(self.hashes(level, from, to - from)?.concat()),
                })
            })
            .collect::<io::Result<_>>()?;
        let mut roster = Vec::new();
        for p in &old.roster {
            let path =
                merkle::extend_inclusion(p.seq, old.seq, &ChainStart::path(p)?, seq, |a, b| {
                    self.mth(a, b)
                })?;
            roster.push(RosterProof {
                path: path.iter().map(hex::encode).collect(),
                ..p.clone()
            });
        }
        for &at in roster_seqs.iter().filter(|s| (old.seq..seq).contains(*s)) {
            let entry = self
                .entries(at, 1, seq, |b| Ok(hex::encode(b)))?
                .pop()
                .expect("one entry");
            let path = self.inclusion_proof(at, seq)?;
            roster.push(RosterProof {
                seq: at,
                entry,
                path: path.iter().map(hex::encode).collect(),
            });
        }
        roster.sort_by_key(|p| p.seq);
        Ok(ChainStart {
            seq,
            prev_hash,
            tiles,
            roster,
        })
    }

    /// Bytes the store's files hold (for metrics; no file system walk).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Bytes the store holds on disk, walked.
    pub(crate) fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    // A tile level of a store begun from a snapshot has a
                    // hole where the hashes below it go: count what the
                    // disk holds of it, and of the others their length.
                    Ok(m) => m.len().min(m.blocks() * 512),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }

    /// Make every entry written so far durable (see `sync`).
    pub fn sync_written(&self) -> io::Result<()> {
        self.sync(self.written.load(Ordering::Acquire))
    }

    /// Make the first `size` entries durable (fdatasync of each file apply
    /// may have written since the last sync: the open segment, the tile
    /// levels, the watch index). fsync is per file, not per descriptor, so
    /// this may run on any thread beside apply.
    pub fn sync(&self, size: u64) -> io::Result<()> {
        let mut paths = vec![self.watch_path()];
        let base = self.base();
        if size > base.entries_from {
            let first = base.segment_of(size - 1);
            paths.push(self.seg_path(first));
            paths.push(self.idx_path(first));
        }
        let mut level = 0;
        while size >> (TILE_HEIGHT * level) > 0 {
            paths.push(self.level_path(level));
            level += 1;
        }
        for p in paths {
            match File::open(&p) {
                Ok(f) => f.sync_data()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The open segment: its files, and bytes written.
#[derive(Debug)]
struct Segment {
    seg: File,
    idx: File,
    len: u64,
}

/// Write side of the store, owned by apply.
#[derive(Debug)]
pub struct AuditStore {
    files: AuditFiles,
    size: u64,
    segment: Option<Segment>,
    /// Per tile level, the hashes of its tile that is not yet full.
    partial: Vec<Vec<Hash>>,
    /// Per tile level, its file, opened for appending.
    levels: Vec<File>,
    watch: File,
}

fn remove_segment(files: &AuditFiles, first: u64) -> io::Result<()> {
    for path in [files.idx_path(first), files.seg_path(first)] {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn append_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
}

/// Make the directories of a new store in `dir`, its tile levels with the
/// hashes `tiles` in their places (level L's file as long as `wanted(L)`'s
/// count, its hashes from `wanted(L)`'s first index on; nothing below),
/// and its base file, last.
fn create_with(
    dir: &Path,
    base: Base,
    tiles: &[TileRun],
    wanted: impl Fn(u32) -> (u64, u64),
    source: &str,
) -> io::Result<()> {
    std::fs::create_dir_all(dir.join("entries"))?;
    std::fs::create_dir_all(dir.join("tile"))?;
    let files = AuditFiles::new(dir.to_path_buf(), 0, base);
    let mut level = 0;
    loop {
        let (from, count) = wanted(level);
        if count == 0 {
            break;
        }
        let hashes: &[Hash] = if from == count {
            &[]
        } else {
            match tiles
                .iter()
                .find(|(l, f, h)| *l == level && *f == from && *f + h.len() as u64 == count)
            {
                Some((_, _, h)) => h,
                None => {
                    return Err(damaged(
                        dir,
                        format!("{source} lacks tile level {level}'s hashes {from}..{count}"),
                    ))
                }
            }
        };
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(files.level_path(level))?;
        f.set_len(count * HASH_BYTES)?;
        f.write_all_at(hashes.concat().as_slice(), from * HASH_BYTES)?;
        f.sync_data()?;
        level += 1;
    }
    sync_dir(&dir.join("tile"))?;
    sync_dir(&dir.join("entries"))?;
    write_base(dir, &base)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

impl AuditStore {
    /// Open the store in `dir` (created if missing) and cut it back to
    /// `head`, the chain head the state records. A store that holds less
    /// than the head, or whose entries do not hash to it, is refused.
    pub fn open(dir: &Path, head: &Chain) -> io::Result<AuditStore> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir.join("entries"))?;
        std::fs::create_dir_all(dir.join("tile"))?;
        if created {
            sync_dir(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let base = read_base(dir)?;
        // A fetch that a stop or crash cut short starts again.
        match std::fs::remove_dir_all(dir.join("fill")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let files = AuditFiles::new(dir.to_path_buf(), head.size(), base);
        let size = head.size();
        if size < base.entries_from {
            return Err(damaged(
                dir,
                format!(
                    "the state's head counts {size} entries and the store begins at {}",
                    base.entries_from
                ),
            ));
        }
        let mut firsts = Vec::new();
        for e in std::fs::read_dir(dir.join("entries"))? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".idx") {
                let first: u64 = n
                    .parse()
                    .map_err(|_| damaged(dir, format!("entries/{name} is not a segment")))?;
                if first < base.entries_from {
                    // Moved in by a fetch whose absorb did not finish.
                    remove_segment(&files, first)?;
                    continue;
                }
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        // Entries stored: each segment but the last is full.
        let mut stored = base.entries_from;
        for (i, &first) in firsts.iter().enumerate() {
            if first != stored {
                return Err(damaged(
                    dir,
                    format!("segment {first} follows entry {stored}"),
                ));
            }
            let n = std::fs::metadata(files.idx_path(first))?.len() / 8;
            let full = base.segment_end(first) - first;
            if i + 1 < firsts.len() && n != full {
                return Err(damaged(dir, format!("segment {first} holds {n} entries")));
            }
            stored = first + n.min(full);
        }
        if stored < size {
            return Err(damaged(
                dir,
                format!(
                    "it holds {stored} entries and the state's head counts {size} \
                     (entries lost in a power failure?)"
                ),
            ));
        }
        // Cut back to the head: what is past it was written by an apply
        // whose state write did not survive, and apply writes it again.
        if stored > size {
            tracing::info!(
                dir = %dir.display(),
                stored,
                head = size,
                "audit store cut back to the state's head: the entries after it are applied again"
            );
        }
        for &first in &firsts {
            if first >= size {
                // A crash inside `new_segment` can leave the index without
                // its segment file.
                remove_segment(&files, first)?;
            }
        }
        let segment = if size == base.entries_from {
            None
        } else {
            let first = base.segment_of(size - 1);
            let n = size - first;
            let idx = append_file(&files.idx_path(first))?;
            idx.set_len(n * 8)?;
            let mut b = [0u8; 8];
            idx.read_exact_at(&mut b, (n - 1) * 8)?;
            let len = u64::from_be_bytes(b);
            let seg = append_file(&files.seg_path(first))?;
            if seg.metadata()?.len() < len {
                return Err(damaged(
                    dir,
                    format!("segment {first} is shorter than its index"),
                ));
            }
            seg.set_len(len)?;
            Some(Segment { seg, idx, len })
        };
        let mut partial = Vec::new();
        let mut levels = Vec::new();
        let mut level = 0u32;
        loop {
            let count = size >> (TILE_HEIGHT * level);
            let path = files.level_path(level);
            if count == 0 {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                // Levels above a missing one are missing too, unless a
                // longer store was cut back.
                if !files.level_path(level + 1).exists() {
                    break;
                }
                level += 1;
                continue;
            }
            let f = append_file(&path)?;
            if f.metadata()?.len() < count * HASH_BYTES {
                return Err(damaged(dir, format!("tile level {level} is short")));
            }
            f.set_len(count * HASH_BYTES)?;
            let full = count - count % TILE_WIDTH;
            partial.push(files.hashes(level, full, count - full)?);
            levels.push(f);
            level += 1;
        }
        let watch = append_file(&files.watch_path())?;
        let records = watch.metadata()?.len() / 8;
        let mut keep = records;
        while keep > 0 {
            let mut b = [0u8; 8];
            watch.read_exact_at(&mut b, (keep - 1) * 8)?;
            if u64::from_be_bytes(b) < size {
                break;
            }
            keep -= 1;
        }
        watch.set_len(keep * 8)?;
        let store = AuditStore {
            files,
            size,
            segment,
            partial,
            levels,
            watch,
        };
        store.check_head(head)?;
        store.files.sync(size)?;
        let bytes = store.files.disk_bytes();
        store.files.bytes.store(bytes, Ordering::Relaxed);
        sync_dir(&dir.join("entries"))?;
        sync_dir(&dir.join("tile"))?;
        Ok(store)
    }

    /// Begin an empty store in `dir` from a snapshot whose chain head is
    /// `head`: the snapshot's tile hashes (`tail`) in their places, and
    /// the base file. `open` then checks them against the head.
    pub fn create_based(dir: &Path, head: &Chain, start: u64, tail: &[TileRun]) -> io::Result<()> {
        let base = Base::at(head, start);
        let wanted = |level: u32| {
            let count = base.seam.checked_shr(TILE_HEIGHT * level).unwrap_or(0);
            (level_floor(base.hashes_from, level), count)
        };
        create_with(dir, base, tail, wanted, "the snapshot")
    }

    /// Begin an empty store in `dir` at the chain's `start` (a fetch of a
    /// pruned chain starts there): the start's tile hashes in their places,
    /// and a base saying the chain starts there, then open it.
    pub fn create_started(dir: &Path, start: &ChainStart) -> io::Result<AuditStore> {
        let base = Base {
            start: start.seq,
            entries_from: start.seq,
            hashes_from: start.seq,
            ..Base::default()
        };
        let tiles = start.tiles()?;
        let wanted = |level: u32| {
            let count = start.seq.checked_shr(TILE_HEIGHT * level).unwrap_or(0);
            (level_floor(start.seq, level), count)
        };
        create_with(dir, base, &tiles, wanted, "the chain's start")?;
        let files = AuditFiles::new(dir.to_path_buf(), start.seq, base);
        let head = Chain {
            prev_hash: start.prev_hash,
            frontier: files.frontier(start.seq)?,
            last_time_ms: 0,
        };
        AuditStore::open(dir, &head)
    }

    /// Move the chain's start to `start.seq` (a segment boundary, at most
    /// the head): the base says so first, durably, so readers refuse what
    /// lies below from then on; then the segments below go, the low tile
    /// levels are emptied below it (holes punched), and the watch index
    /// drops its records below it. A store still fetching the part below
    /// its seam takes the start's hashes, and fetches from the start only.
    /// A start at or below the store's own changes nothing but finishes the
    /// removal, should a crash have cut it short (it runs at every open).
    pub fn prune(&mut self, start: &ChainStart) -> io::Result<()> {
        let base = self.files.base();
        let seq = start.seq;
        if seq < base.start || seq == 0 {
            return Ok(());
        }
        let dir = self.files.dir.clone();
        if seq > base.start {
            if !seq.is_multiple_of(AUDIT_SEGMENT_ENTRIES) || seq > self.size {
                return Err(io::Error::other(format!(
                    "cannot start the chain at {seq}: not a segment boundary, or past the head at {}",
                    self.size
                )));
            }
            // The start's hashes, where this store lacks them.
            for (level, from, hashes) in start.tiles()? {
                let held = level_floor(base.hashes_from, level);
                let upto = (from + hashes.len() as u64).min(held);
                if from < upto {
                    self.files
                        .write_hashes(level, from, &hashes[..(upto - from) as usize])?;
                }
            }
            let moved = Base {
                start: seq,
                entries_from: base.entries_from.max(seq),
                hashes_from: base.hashes_from.max(seq),
                ..base
            };
            write_base(&dir, &moved)?;
            *self.files.base.write().expect("audit base lock") = moved;
        }
        // What lies below the start: segments, then low tile hashes.
        for e in std::fs::read_dir(dir.join("entries"))? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            match name.strip_suffix(".idx").map(str::parse::<u64>) {
                Some(Ok(first)) if first < seq => remove_segment(&self.files, first)?,
                _ => {}
            }
        }
        sync_dir(&dir.join("entries"))?;
        for level in 0..PRUNED_LEVELS {
            let below = level_floor(seq, level) * HASH_BYTES;
            match OpenOptions::new()
                .write(true)
                .open(self.files.level_path(level))
            {
                Ok(f) if below > 0 => {
                    use rustix::fs::{fallocate, FallocateFlags};
                    fallocate(
                        &f,
                        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                        0,
                        below,
                    )
                    .map_err(io::Error::from)?;
                }
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        // The watch index, if it still holds records below the start.
        let mut first = [0u8; 8];
        if self.watch.read_exact_at(&mut first, 0).is_ok() && u64::from_be_bytes(first) < seq {
            let kept: Vec<u8> = std::fs::read(self.files.watch_path())?
                .chunks_exact(8)
                .filter(|c| u64::from_be_bytes((*c).try_into().expect("8 bytes")) >= seq)
                .flatten()
                .copied()
                .collect();
            self.replace_watch(&kept)?;
        }
        self.files
            .bytes
            .store(self.files.disk_bytes(), Ordering::Relaxed);
        Ok(())
    }

    /// Take in the chain below the seam, fetched and checked into the
    /// store in `fill` (`audit_fill`): its segments, its tile hashes below
    /// the ones held, its watch index; then the base says nothing is
    /// lacking. Apply never writes those files or those parts of the tile
    /// levels, and readers refuse them until the base changes, last.
    pub fn absorb(&mut self, fill: &AuditStore) -> io::Result<()> {
        let base = self.files.base();
        let dir = self.files.dir.clone();
        if fill.size != base.seam || !base.lacking() || fill.files.base().start != base.start {
            return Err(io::Error::other(format!(
                "a fetch of {} entries from {} does not fit a store whose seam is {} ({:?})",
                fill.size,
                fill.files.base().start,
                base.seam,
                base
            )));
        }
        if fill.files.root(fill.size)? != base.seam_root {
            return Err(io::Error::other(
                "the fetched entries do not hash to the seam's root",
            ));
        }
        fill.files.sync(fill.size)?;
        // Segments: every one the fetch wrote lies below the seam.
        let mut first = base.start;
        while first < base.entries_from {
            std::fs::rename(fill.files.seg_path(first), self.files.seg_path(first))?;
            std::fs::rename(fill.files.idx_path(first), self.files.idx_path(first))?;
            first = base.segment_end(first);
        }
        sync_dir(&dir.join("entries"))?;
        // Tile hashes below the ones held.
        let mut level = 0;
        loop {
            let below = level_floor(base.hashes_from, level);
            if below == 0 {
                break;
            }
            let from = level_floor(base.start, level);
            if from < below {
                let hashes = fill.files.hashes(level, from, below - from)?;
                self.files.write_hashes(level, from, &hashes)?;
            }
            level += 1;
        }
        // The watch index: the fetched part's, then this store's.
        let mut watch = std::fs::read(fill.files.watch_path())?;
        watch.extend_from_slice(&std::fs::read(self.files.watch_path())?);
        self.replace_watch(&watch)?;
        let whole = Base {
            entries_from: base.start,
            hashes_from: base.start,
            ..base
        };
        write_base(&dir, &whole)?;
        *self.files.base.write().expect("audit base lock") = whole;
        self.files
            .bytes
            .store(self.files.disk_bytes(), Ordering::Relaxed);
        Ok(())
    }

    /// Replace the watch index with `records` (a new file, synced, renamed
    /// over it), and append to the new one from then on.
    fn replace_watch(&mut self, records: &[u8]) -> io::Result<()> {
        let tmp = self.files.dir.join("watch.new");
        std::fs::write(&tmp, records)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.files.watch_path())?;
        sync_dir(&self.files.dir)?;
        self.watch = append_file(&self.files.watch_path())?;
        Ok(())
    }

    /// The stored chain hashes to `head`: its root, and its last entry's
    /// hash.
    fn check_head(&self, head: &Chain) -> io::Result<()> {
        let base = self.files.base();
        let dir = self.files.dir();
        if self.files.root(self.size)? != head.root() {
            return Err(damaged(
                dir,
                format!(
                    "its tree of {} entries does not have the state's root",
                    self.size
                ),
            ));
        }
        if self.size > base.entries_from {
            let last = self
                .files
                .entries(self.size - 1, 1, self.size, |b| {
                    Ok(<[u8; 32]>::from(Sha256::digest(b)))
                })?
                .pop()
                .expect("one entry");
            if last != head.prev_hash {
                return Err(damaged(
                    dir,
                    format!(
                        "entry {} is not the one the state's head names",
                        self.size - 1
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn files(&self) -> AuditFiles {
        self.files.clone()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append entries (canonical bytes, leaf hash, whether Watch serves
    /// it) from seq `size()` on. Written to the files (the OS holds them;
    /// `sync` makes them durable), not yet counted by the state.
    pub fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a [u8], Hash, bool)>,
    ) -> io::Result<()> {
        let mut seg_buf = Vec::new();
        let mut idx_buf = Vec::new();
        let mut levels: Vec<Vec<u8>> = Vec::new();
        let mut watch_buf = Vec::new();
        let mut added = 0;
        let base = self.files.base();
        for (bytes, leaf, watched) in entries {
            let seq = self.size;
            if base.segment_of(seq) == seq {
                self.write_segment(&mut seg_buf, &mut idx_buf)?;
                self.new_segment(seq)?;
            }
            let seg = self.segment.as_mut().expect("a segment is open");
            seg.len += bytes.len() as u64;
            added += bytes.len() as u64 + 8;
            seg_buf.extend_from_slice(bytes);
            idx_buf.extend_from_slice(&seg.len.to_be_bytes());
            self.push_hash(0, leaf, &mut levels);
            if watched {
                watch_buf.extend_from_slice(&seq.to_be_bytes());
            }
            self.size += 1;
        }
        self.write_segment(&mut seg_buf, &mut idx_buf)?;
        for (level, buf) in levels.iter().enumerate() {
            if buf.is_empty() {
                continue;
            }
            if self.levels.len() == level {
                // A level's first hash: its file is new.
                let f = append_file(&self.files.level_path(level as u32))?;
                f.set_len(0)?;
                sync_dir(&self.files.dir.join("tile"))?;
                self.levels.push(f);
            }
            self.levels[level].write_all(buf)?;
            added += buf.len() as u64;
        }
        if !watch_buf.is_empty() {
            self.watch.write_all(&watch_buf)?;
        }
        added += watch_buf.len() as u64;
        self.files.bytes.fetch_add(added, Ordering::Relaxed);
        self.files.written.store(self.size, Ordering::Release);
        Ok(())
    }

    fn push_hash(&mut self, level: usize, h: Hash, out: &mut Vec<Vec<u8>>) {
        if self.partial.len() <= level {
            self.partial.resize(level + 1, Vec::new());
        }
        if out.len() <= level {
            out.resize(level + 1, Vec::new());
        }
        out[level].extend_from_slice(&h);
        self.partial[level].push(h);
        if self.partial[level].len() as u64 == TILE_WIDTH {
            let full = std::mem::take(&mut self.partial[level]);
            self.push_hash(level + 1, merkle::root(&full), out);
        }
    }

    fn write_segment(&mut self, seg_buf: &mut Vec<u8>, idx_buf: &mut Vec<u8>) -> io::Result<()> {
        if let Some(s) = self.segment.as_mut() {
            if !seg_buf.is_empty() {
                s.seg.write_all(seg_buf)?;
            }
            if !idx_buf.is_empty() {
                s.idx.write_all(idx_buf)?;
            }
        }
        seg_buf.clear();
        idx_buf.clear();
        Ok(())
    }

    /// Close the open segment (durable first: a start finds every segment
    /// but the last full) and open the one from `first`.
    fn new_segment(&mut self, first: u64) -> io::Result<()> {
        if let Some(s) = self.segment.take() {
            s.seg.sync_data()?;
            s.idx.sync_data()?;
        }
        let idx = append_file(&self.files.idx_path(first))?;
        let seg = append_file(&self.files.seg_path(first))?;
        idx.set_len(0)?;
        seg.set_len(0)?;
        sync_dir(&self.files.dir.join("entries"))?;
        self.segment = Some(Segment { seg, idx, len: 0 });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
