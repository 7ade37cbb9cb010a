use super::*;
use crate::ledger::{AuditEntry, Kind};
use crate::limits::{AUDIT_SEGMENT_ENTRIES, CHECKPOINT_LAG_MAX};
use crate::storage::audit_store::{is_missing, is_pruned};
use grant_proto::audit::Hash;

/// A key roster entry at 5, and every `ROSTER_EVERY` entries after.
const ROSTER_EVERY: u64 = 50_000;

/// A chain of `n` real entries: every sixth a revoke (watched), a few key
/// roster entries, and each entry's canonical bytes.
fn chain(n: u64) -> (Chain, Vec<Vec<u8>>, Vec<bool>) {
    let mut c = Chain::default();
    let (mut bytes, mut watched) = (Vec::new(), Vec::new());
    for i in 0..n {
        let kind = if i % ROSTER_EVERY == 5 {
            Kind::KeyRoster
        } else if i % 6 == 0 {
            Kind::Revoke
        } else {
            Kind::Check
        };
        let mut e = AuditEntry::new(kind, 1_000 + i as i64);
        e.grant_id = format!("g{i}");
        let ch = c.append(e, i + 1);
        watched.push(ks::watched(kind));
        bytes.push(ch.bytes);
    }
    (c, bytes, watched)
}

fn append(store: &mut AuditStore, bytes: &[Vec<u8>], watched: &[bool], to: u64) {
    let from = store.size() as usize;
    store
        .append(
            (from..to as usize).map(|i| (&bytes[i][..], merkle::leaf_hash(&bytes[i]), watched[i])),
        )
        .unwrap();
}

struct Case {
    _dir: tempfile::TempDir,
    whole: AuditStore,
    based: AuditStore,
    bytes: Vec<Vec<u8>>,
    watched: Vec<bool>,
    size: u64,
    heads: Vec<Chain>,
}

/// A store holding all `size` entries, and one begun from a snapshot at
/// `seam` (the snapshot's tile hashes only) that applied the rest.
fn case(seam: u64, size: u64) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes, watched) = chain(size);
    let heads: Vec<Chain> = (0..=size)
        .filter(|&n| n == seam || n == size)
        .map(|n| chain(n).0)
        .collect();
    let (at_seam, at_size) = (&heads[0], heads.last().unwrap());
    let mut whole = AuditStore::open(&dir.path().join("whole"), &Chain::default()).unwrap();
    append(&mut whole, &bytes, &watched, seam);
    let tail = whole.files().tail(seam, 0).unwrap();
    let based_dir = dir.path().join("based");
    AuditStore::create_based(&based_dir, at_seam, 0, &tail).unwrap();
    let mut based = AuditStore::open(&based_dir, at_seam).unwrap();
    append(&mut whole, &bytes, &watched, size);
    append(&mut based, &bytes, &watched, size);
    // Both open again at the head.
    drop(based);
    let based = AuditStore::open(&based_dir, at_size).unwrap();
    Case {
        _dir: dir,
        whole,
        based,
        bytes,
        watched,
        size,
        heads,
    }
}

fn all_entries(files: &AuditFiles, size: u64) -> std::io::Result<Vec<Vec<u8>>> {
    files.entries(0, size as usize, size, |b| Ok(b.to_vec()))
}

#[test]
fn a_store_begun_from_a_snapshot_answers_past_its_seam_and_says_what_it_lacks() {
    // A seam inside the second segment, far past the lag: entries and most
    // hashes below it are missing.
    let seam = AUDIT_SEGMENT_ENTRIES + 3 * CHECKPOINT_LAG_MAX + 77;
    let c = case(seam, seam + 700);
    let (w, b) = (c.whole.files(), c.based.files());
    let floor = b.base().hashes_from;
    assert_eq!(floor, seam - CHECKPOINT_LAG_MAX);
    // Every root from the hash floor on, and the entries' proofs past it.
    for size in [floor, floor + 1, seam - 1, seam, seam + 1, c.size] {
        assert_eq!(b.root(size).unwrap(), w.root(size).unwrap(), "root {size}");
    }
    for (seq, size) in [
        (seam, c.size),
        (c.size - 1, c.size),
        (floor, seam),
        (seam - 1, seam + 9),
    ] {
        assert_eq!(
            b.inclusion_proof(seq, size).unwrap(),
            w.inclusion_proof(seq, size).unwrap(),
            "inclusion {seq} in {size}"
        );
    }
    assert_eq!(
        b.consistency_proof(floor + 3, c.size).unwrap(),
        w.consistency_proof(floor + 3, c.size).unwrap()
    );
    assert_eq!(
        b.entries(seam, 1000, c.size, |x| Ok(x.to_vec())).unwrap(),
        c.bytes[seam as usize..].to_vec()
    );
    assert_eq!(
        b.watched_after(Some(seam - 1), c.size, 1000).unwrap(),
        w.watched_after(Some(seam - 1), c.size, 1000).unwrap()
    );
    // Below: missing, never a wrong answer.
    let lacking: [std::io::Result<()>; 5] = [
        b.entries(seam - 1, 1, c.size, |_| Ok(())).map(|_| ()),
        b.root(10).map(|_| ()),
        b.inclusion_proof(3, c.size).map(|_| ()),
        b.consistency_proof(10, c.size).map(|_| ()),
        b.watched_after(None, c.size, 10).map(|_| ()),
    ];
    for r in lacking {
        assert!(is_missing(&r.unwrap_err()));
    }
    // The snapshot's hashes are all the based store holds below its seam.
    assert!(b.bytes() < w.bytes() / 4, "{} of {}", b.bytes(), w.bytes());
}

#[test]
fn a_fetched_prefix_is_checked_then_absorbed_whole() {
    let seam = AUDIT_SEGMENT_ENTRIES + CHECKPOINT_LAG_MAX + 300;
    let mut c = case(seam, seam + 500);
    let store = Mutex::new(std::mem::replace(
        &mut c.based,
        AuditStore::open(&c._dir.path().join("spare"), &Chain::default()).unwrap(),
    ));
    let files = store.lock().unwrap().files();
    // A peer that changes one entry (its seq kept) is found out, and the
    // store stays as it was.
    let mut fill = Fill::begin(&files, &ChainStart::default())
        .unwrap()
        .unwrap();
    assert_eq!((fill.next(), fill.seam()), (0, seam));
    let (mut forged, _, _) = chain(0);
    let mut forged_bytes = Vec::new();
    for i in 0..seam {
        let mut e = grant_proto::audit::Entry::from_canonical_bytes(&c.bytes[i as usize]).unwrap();
        if i == 12_345 {
            e.grant_id = "someone-else".into();
        }
        forged_bytes.push(forged.append(e, i + 1).bytes);
    }
    for page in forged_bytes.chunks(4096) {
        fill.add(page).unwrap();
    }
    assert!(!fill.finish(&store).is_ok_and(|t| t));
    assert!(files.base().lacking());
    assert!(is_missing(
        &files.entries(0, 1, c.size, |_| Ok(())).unwrap_err()
    ));

    // Pages that skip or run past are refused as they come.
    let mut fill = Fill::begin(&files, &ChainStart::default())
        .unwrap()
        .unwrap();
    assert!(fill.add(&c.bytes[1..3]).is_err());
    assert!(fill.add(&c.bytes[..]).is_err());

    // The true prefix: taken in, and the store then answers as the whole one.
    let mut fill = Fill::begin(&files, &ChainStart::default())
        .unwrap()
        .unwrap();
    for page in c.bytes[..seam as usize].chunks(4096) {
        fill.add(page).unwrap();
    }
    assert!(fill.finish(&store).unwrap());
    assert!(!files.base().lacking());
    assert!(!files.dir().join("fill").exists());
    let w = c.whole.files();
    assert_eq!(all_entries(&files, c.size).unwrap(), c.bytes);
    for size in [1, 255, 257, AUDIT_SEGMENT_ENTRIES + 1, seam, c.size] {
        assert_eq!(
            files.root(size).unwrap(),
            w.root(size).unwrap(),
            "root {size}"
        );
    }
    assert_eq!(
        files.inclusion_proof(3, c.size).unwrap(),
        w.inclusion_proof(3, c.size).unwrap()
    );
    assert_eq!(
        files.watched_after(None, c.size, 100_000).unwrap(),
        w.watched_after(None, c.size, 100_000).unwrap()
    );
    // And goes on after a restart, appending past its split segment.
    drop(store);
    let (more, _, _) = chain(c.size + 5);
    let (_, bytes, watched) = chain(c.size + 5);
    let mut s = AuditStore::open(files.dir(), c.heads.last().unwrap()).unwrap();
    append(&mut s, &bytes, &watched, c.size + 5);
    drop(s);
    let s = AuditStore::open(files.dir(), &more).unwrap();
    assert_eq!(all_entries(&s.files(), c.size + 5).unwrap(), bytes);
    let _ = c.watched;
}

#[test]
fn an_absorb_cut_short_is_undone_at_the_next_start() {
    let seam = 3 * 256 + 5;
    let c = case(seam, seam + 10);
    let files = c.based.files();
    // What a crash between moving the segments in and the base file's
    // change leaves: segments below the seam, the base still lacking.
    let mut fill = Fill::begin(&files, &ChainStart::default())
        .unwrap()
        .unwrap();
    fill.add(&c.bytes[..seam as usize]).unwrap();
    let from = fill.store.files().dir().join("entries");
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), files.dir().join("entries").join(e.file_name())).unwrap();
    }
    drop(fill);
    drop(c.based);
    let s = AuditStore::open(files.dir(), c.heads.last().unwrap()).unwrap();
    assert!(s.files().base().lacking());
    assert!(!files.dir().join("fill").exists());
    assert!(is_missing(
        &s.files().entries(0, 1, c.size, |_| Ok(())).unwrap_err()
    ));
    let _: Hash = s.files().root(c.size).unwrap();
}

#[test]
fn the_store_a_snapshot_replaced_seeds_the_fetch_and_is_checked_with_it() {
    let seam = 2 * 256 + 40;
    let c = case(seam, seam + 3);
    let dir = c._dir.path();
    // The node's old store held the first 300 entries.
    let (old_head, _, _) = chain(300);
    let old = dir.join("old.audit");
    let mut o = AuditStore::open(&old, &Chain::default()).unwrap();
    append(&mut o, &c.bytes, &c.watched, 300);
    drop(o);
    let store = Mutex::new(c.based);
    let files = store.lock().unwrap().files();
    seed(&old, &old_head, &files).unwrap();
    assert!(!old.exists());
    let mut fill = Fill::begin(&files, &ChainStart::default())
        .unwrap()
        .unwrap();
    assert_eq!(fill.next(), 300, "the fetch goes on from the seed");
    fill.add(&c.bytes[300..seam as usize]).unwrap();
    assert!(fill.finish(&store).unwrap());
    assert_eq!(all_entries(&files, c.size).unwrap(), c.bytes);

    // A seed that is not this chain's prefix fails the root check, and
    // the next fetch begins from nothing.
    let c = case(seam, seam + 3);
    let old = dir.join("other.audit");
    let (mut other, mut other_bytes) = (Chain::default(), Vec::new());
    for i in 0..300u64 {
        let mut e = AuditEntry::new(Kind::Check, 5);
        e.grant_id = format!("other-{i}");
        other_bytes.push(other.append(e, i + 1).bytes);
    }
    let mut o = AuditStore::open(&old, &Chain::default()).unwrap();
    append(&mut o, &other_bytes, &[false; 300], 300);
    drop(o);
    let store = Mutex::new(c.based);
    let files = store.lock().unwrap().files();
    seed(&old, &other, &files).unwrap();
    let mut fill = Fill::begin(&files, &ChainStart::default())
        .unwrap()
        .unwrap();
    assert_eq!(fill.next(), 300);
    fill.add(&c.bytes[300..seam as usize]).unwrap();
    assert!(fill.finish(&store).is_err());
    let fill = Fill::begin(&files, &ChainStart::default())
        .unwrap()
        .unwrap();
    assert_eq!(fill.next(), 0);

    // A store longer than the seam, or one begun from a snapshot itself,
    // does not seed.
    let c = case(seam, seam + 3);
    let long = dir.join("long.audit");
    let (long_head, long_bytes, long_watched) = chain(seam + 1);
    let mut o = AuditStore::open(&long, &Chain::default()).unwrap();
    append(&mut o, &long_bytes, &long_watched, seam + 1);
    drop(o);
    seed(&long, &long_head, &c.based.files()).unwrap();
    assert!(long.exists());
    assert_eq!(
        Fill::begin(&c.based.files(), &ChainStart::default())
            .unwrap()
            .unwrap()
            .next(),
        0
    );
}

#[test]
fn a_store_once_begun_from_a_snapshot_seeds_a_later_fetch() {
    // A store begun at 700 (split there), fetched whole, then more applied.
    let first = case(700, 900);
    let store = Mutex::new(first.based);
    let files = store.lock().unwrap().files();
    let mut fill = Fill::begin(&files, &ChainStart::default())
        .unwrap()
        .unwrap();
    fill.add(&first.bytes[..700]).unwrap();
    assert!(fill.finish(&store).unwrap());
    drop(store);
    // Replaced by a snapshot at 1500: it seeds that store's fetch.
    let later = case(1500, 1510);
    seed(
        files.dir(),
        first.heads.last().unwrap(),
        &later.based.files(),
    )
    .unwrap();
    let store = Mutex::new(later.based);
    let files = store.lock().unwrap().files();
    let mut fill = Fill::begin(&files, &ChainStart::default())
        .unwrap()
        .unwrap();
    assert_eq!(fill.next(), 900);
    fill.add(&later.bytes[900..1500]).unwrap();
    assert!(fill.finish(&store).unwrap());
    assert_eq!(all_entries(&files, later.size).unwrap(), later.bytes);
    let reopened = AuditStore::open(files.dir(), later.heads.last().unwrap()).unwrap();
    assert_eq!(
        reopened.files().root(later.size).unwrap(),
        later.whole.files().root(later.size).unwrap()
    );
}

#[test]
fn a_pruned_chain_answers_from_its_start_proves_its_roster_and_is_fetched_from_there() {
    let seg = AUDIT_SEGMENT_ENTRIES;
    let size = 3 * seg + 500;
    let (head, bytes, watched) = chain(size);
    let roster: Vec<u64> = (0..size).filter(|i| i % ROSTER_EVERY == 5).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut full = AuditStore::open(&dir.path().join("full"), &Chain::default()).unwrap();
    append(&mut full, &bytes, &watched, size);
    let mut pruned = AuditStore::open(&dir.path().join("pruned"), &Chain::default()).unwrap();
    append(&mut pruned, &bytes, &watched, size);
    let (f, p) = (full.files(), pruned.files());

    // A start off a segment boundary, or past the head, is refused.
    let bad = p
        .start_at(seg + 256, &ChainStart::default(), &roster)
        .unwrap();
    assert!(pruned.prune(&bad).is_err());
    assert_eq!(p.base().start, 0);

    let first = p.start_at(seg, &ChainStart::default(), &roster).unwrap();
    first.well_formed().unwrap();
    pruned.prune(&first).unwrap();
    let second = p.start_at(2 * seg, &first, &roster).unwrap();
    second.well_formed().unwrap();
    pruned.prune(&second).unwrap();
    let start = 2 * seg;
    assert_eq!(second.prev_hash, first_hash(&bytes[start as usize - 1]));
    // The roster before the start, each entry proven in the tree at the
    // start: those kept by the first prune had their paths extended.
    let kept: Vec<u64> = second.roster.iter().map(|r| r.seq).collect();
    assert_eq!(
        kept,
        roster
            .iter()
            .copied()
            .filter(|s| *s < start)
            .collect::<Vec<_>>()
    );
    let root_at_start = f.root(start).unwrap();
    for r in &second.roster {
        let entry = hex::decode(&r.entry).unwrap();
        assert_eq!(entry, bytes[r.seq as usize]);
        assert!(merkle::verify_inclusion(
            r.seq,
            start,
            &merkle::leaf_hash(&entry),
            &ChainStart::path(r).unwrap(),
            &root_at_start
        ));
    }

    // From the start on, the pruned store answers as the whole one; below,
    // it says the entries were pruned.
    for n in [start, start + 1, start + 300, size] {
        assert_eq!(p.root(n).unwrap(), f.root(n).unwrap(), "root {n}");
    }
    for (seq, n) in [(start, start + 1), (start + 7, size), (size - 1, size)] {
        assert_eq!(
            p.inclusion_proof(seq, n).unwrap(),
            f.inclusion_proof(seq, n).unwrap()
        );
    }
    assert_eq!(
        p.consistency_proof(start + 3, size).unwrap(),
        f.consistency_proof(start + 3, size).unwrap()
    );
    assert_eq!(
        p.entries(start, 1000, size, |b| Ok(b.to_vec())).unwrap(),
        bytes[start as usize..start as usize + 1000].to_vec()
    );
    assert_eq!(
        p.watched_after(None, size, 100_000).unwrap(),
        f.watched_after(Some(start - 1), size, 100_000).unwrap()
    );
    for r in [
        p.entries(start - 1, 1, size, |_| Ok(())).map(|_| ()),
        p.inclusion_proof(3, size).map(|_| ()),
        p.root(start - 1).map(|_| ()),
        p.consistency_proof(10, size).map(|_| ()),
        p.watched_after(Some(3), size, 10).map(|_| ()),
    ] {
        assert!(is_pruned(&r.unwrap_err()));
    }
    // The segments and the low tile hashes below are gone from the disk.
    assert!(p.bytes() * 2 < f.bytes(), "{} of {}", p.bytes(), f.bytes());
    assert_eq!(p.bytes(), p.disk_bytes());
    // Open again (a prune runs at every open: nothing left to do).
    drop(pruned);
    let mut pruned = AuditStore::open(p.dir(), &head).unwrap();
    pruned.prune(&second).unwrap();
    assert_eq!(pruned.files().root(size).unwrap(), f.root(size).unwrap());

    // A node begun from a snapshot of the pruned chain fetches from the
    // start only, and then answers as the whole one.
    let seam = start + CHECKPOINT_LAG_MAX + 100;
    let at_seam = chain(seam).0;
    let based_dir = dir.path().join("based");
    AuditStore::create_based(&based_dir, &at_seam, start, &p.tail(seam, start).unwrap()).unwrap();
    let mut based = AuditStore::open(&based_dir, &at_seam).unwrap();
    append(&mut based, &bytes, &watched, size);
    let store = Mutex::new(based);
    let files = store.lock().unwrap().files();
    assert_eq!(files.base().missing_entries(), seam - start);
    // A fetch from entry 0 does not fit a chain that starts later.
    let mut wrong = Fill::begin(&files, &ChainStart::default())
        .unwrap()
        .unwrap();
    assert_eq!(wrong.next(), 0);
    wrong.add(&bytes[..seam as usize]).unwrap();
    assert!(wrong.finish(&store).is_err());
    let mut fill = Fill::begin(&files, &second).unwrap().unwrap();
    assert_eq!((fill.next(), fill.seeded()), (start, start));
    for page in bytes[start as usize..seam as usize].chunks(4096) {
        fill.add(page).unwrap();
    }
    assert!(fill.finish(&store).unwrap());
    assert!(!files.base().lacking());
    assert_eq!(files.base().start, start);
    for n in [start, seam, size] {
        assert_eq!(files.root(n).unwrap(), f.root(n).unwrap(), "root {n}");
    }
    assert_eq!(
        files.inclusion_proof(start + 1, size).unwrap(),
        f.inclusion_proof(start + 1, size).unwrap()
    );
    assert_eq!(
        files
            .entries(start, (size - start) as usize, size, |b| Ok(b.to_vec()))
            .unwrap(),
        bytes[start as usize..].to_vec()
    );
    assert_eq!(
        files.watched_after(None, size, 100_000).unwrap(),
        f.watched_after(Some(start - 1), size, 100_000).unwrap()
    );
    assert!(is_pruned(
        &files.entries(start - 1, 1, size, |_| Ok(())).unwrap_err()
    ));
}

/// An entry's hash (its successor's prev_hash).
fn first_hash(b: &[u8]) -> Hash {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}
