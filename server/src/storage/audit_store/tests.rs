use super::*;
use grant_proto::audit::merkle::Frontier;

/// Entry `i`'s bytes: sizes vary, so offsets do.
fn bytes(i: u64) -> Vec<u8> {
    let mut b = format!("entry {i} ").into_bytes();
    b.resize(8 + (i % 37) as usize, b'x');
    b
}

fn watched(i: u64) -> bool {
    i.is_multiple_of(5)
}

/// The head a state would record after the first `size` entries.
fn head(size: u64) -> Chain {
    let mut frontier = Frontier::default();
    for i in 0..size {
        frontier.push(merkle::leaf_hash(&bytes(i)));
    }
    let prev_hash = if size == 0 {
        [0; 32]
    } else {
        Sha256::digest(bytes(size - 1)).into()
    };
    Chain {
        prev_hash,
        frontier,
        last_time_ms: 0,
    }
}

fn append(store: &mut AuditStore, to: u64) {
    let from = store.size();
    let all: Vec<Vec<u8>> = (from..to).map(bytes).collect();
    store
        .append(
            all.iter()
                .zip(from..)
                .map(|(b, i)| (&b[..], merkle::leaf_hash(b), watched(i))),
        )
        .unwrap();
}

fn leaves(size: u64) -> Vec<Hash> {
    (0..size).map(|i| merkle::leaf_hash(&bytes(i))).collect()
}

#[test]
fn roots_proofs_entries_and_watch_read_back_from_segments_and_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.audit");
    let mut store = AuditStore::open(&path, &Chain::default()).unwrap();
    // Batches of odd sizes, across tile and segment boundaries.
    // Past tile level 2's first hash (65,536 leaves) and several segments.
    let total = 4 * AUDIT_SEGMENT_ENTRIES + 700;
    let mut at = 0;
    for step in [1, 255, 1, 300, 65_000, 1, 1000].iter().cycle() {
        at = (at + step).min(total);
        append(&mut store, at);
        if at == total {
            break;
        }
    }
    let files = store.files();
    let all = leaves(total);
    for size in [0, 1, 2, 255, 256, 257, 511, 65_535, 65_536, 65_537, total] {
        assert_eq!(
            files.root(size).unwrap(),
            merkle::root(&all[..size as usize]),
            "root at {size}"
        );
    }
    for (seq, size) in [
        (0, 1),
        (3, 4),
        (255, 256),
        (256, 300),
        (70, 65_536),
        (65_600, total),
    ] {
        let want = merkle::inclusion_proof(seq as usize, &all[..size as usize]);
        assert_eq!(
            files.inclusion_proof(seq, size).unwrap(),
            want,
            "inclusion {seq} in {size}"
        );
    }
    for (first, size) in [
        (1, 2),
        (255, 257),
        (256, 65_537),
        (1000, total),
        (total, total),
    ] {
        let want = merkle::consistency_proof(first as usize, &all[..size as usize]);
        assert_eq!(
            files.consistency_proof(first, size).unwrap(),
            want,
            "consistency {first} {size}"
        );
    }
    // Entries across the segment boundary, bounded by the size given.
    let got = files
        .entries(AUDIT_SEGMENT_ENTRIES - 2, 5, total, |b| Ok(b.to_vec()))
        .unwrap();
    let want: Vec<Vec<u8>> = (AUDIT_SEGMENT_ENTRIES - 2..AUDIT_SEGMENT_ENTRIES + 3)
        .map(bytes)
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        files
            .entries(total - 1, 5, total, |b| Ok(b.len()))
            .unwrap()
            .len(),
        1
    );
    assert!(files
        .entries(total, 5, total, |b| Ok(b.len()))
        .unwrap()
        .is_empty());
    // Watch: after a seq, below the size, at most the limit.
    assert_eq!(files.watched_after(None, 12, 10).unwrap(), [0, 5, 10]);
    assert_eq!(files.watched_after(Some(5), 100, 2).unwrap(), [10, 15]);
    assert_eq!(
        files.watched_after(Some(total), total, 2).unwrap(),
        Vec::<u64>::new()
    );
    // The stored tiles are the tlog-tiles levels: level 1 holds the root
    // of each full tile of 256 leaves.
    assert_eq!(
        files.hashes(1, 3, 1).unwrap()[0],
        merkle::root(&all[768..1024])
    );
    // What the metric reports is what the files hold.
    assert_eq!(files.bytes(), files.disk_bytes());
    // Reopened at its head, it is the same store, and grows on.
    drop(store);
    let mut store = AuditStore::open(&path, &head(total)).unwrap();
    append(&mut store, total + 300);
    assert_eq!(
        store.files().root(total + 300).unwrap(),
        head(total + 300).root()
    );
    assert_eq!(store.files().bytes(), store.files().disk_bytes());
}

#[test]
fn a_start_cuts_the_store_back_to_the_state_head_and_apply_writes_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.audit");
    let mut store = AuditStore::open(&path, &Chain::default()).unwrap();
    append(&mut store, 1300);
    drop(store);
    // The state counted 1000: the 300 after were appended by an apply
    // whose state write did not survive.
    let mut store = AuditStore::open(&path, &head(1000)).unwrap();
    assert_eq!(store.size(), 1000);
    let files = store.files();
    assert!(files.watched_after(Some(995), 2000, 10).unwrap().is_empty());
    assert_eq!(
        std::fs::metadata(files.level_path(0)).unwrap().len(),
        1000 * 32
    );
    assert_eq!(
        std::fs::metadata(files.level_path(1)).unwrap().len(),
        3 * 32
    );
    // Apply writes them again, the same bytes.
    append(&mut store, 1300);
    assert_eq!(files.root(1300).unwrap(), head(1300).root());
    assert_eq!(files.watched_after(Some(995), 2000, 100).unwrap().len(), 60);
    drop(store);
    // Cut back to nothing, and to a tile boundary.
    assert_eq!(AuditStore::open(&path, &head(256)).unwrap().size(), 256);
    let store = AuditStore::open(&path, &Chain::default()).unwrap();
    assert_eq!(store.size(), 0);
    assert!(!files.level_path(0).exists());
}

#[test]
fn a_store_behind_the_head_or_not_hashing_to_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.audit");
    let mut store = AuditStore::open(&path, &Chain::default()).unwrap();
    append(&mut store, 100);
    drop(store);
    let e = AuditStore::open(&path, &head(101)).unwrap_err().to_string();
    assert!(
        e.contains("holds 100 entries") && e.contains("counts 101"),
        "{e}"
    );
    assert!(e.contains("Wipe this node's data directory"), "{e}");
    // The last entry changed on disk: its hash is not the head's.
    let seg = AuditFiles::new(path.clone(), 0, Base::default()).seg_path(0);
    let mut b = std::fs::read(&seg).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    std::fs::write(&seg, &b).unwrap();
    let e = AuditStore::open(&path, &head(100)).unwrap_err().to_string();
    assert!(e.contains("root") || e.contains("entry 99"), "{e}");
}

#[test]
fn a_crash_between_a_new_segments_index_and_its_file_does_not_stop_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.audit");
    let mut store = AuditStore::open(&path, &Chain::default()).unwrap();
    append(&mut store, AUDIT_SEGMENT_ENTRIES);
    drop(store);
    // `new_segment` creates the index, then the segment file.
    let idx = AuditFiles::new(path.clone(), 0, Base::default()).idx_path(AUDIT_SEGMENT_ENTRIES);
    std::fs::write(&idx, []).unwrap();
    let mut store = AuditStore::open(&path, &head(AUDIT_SEGMENT_ENTRIES)).unwrap();
    assert_eq!(store.size(), AUDIT_SEGMENT_ENTRIES);
    append(&mut store, AUDIT_SEGMENT_ENTRIES + 10);
    assert_eq!(
        store.files().root(AUDIT_SEGMENT_ENTRIES + 10).unwrap(),
        head(AUDIT_SEGMENT_ENTRIES + 10).root()
    );
}

#[test]
fn a_prune_cut_short_after_its_base_is_finished_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.audit");
    let mut store = AuditStore::open(&path, &Chain::default()).unwrap();
    let size = 2 * AUDIT_SEGMENT_ENTRIES + 10;
    append(&mut store, size);
    let files = store.files();
    let start = files
        .start_at(AUDIT_SEGMENT_ENTRIES, &ChainStart::default(), &[])
        .unwrap();
    drop(store);
    // What a crash right after the base file's change leaves: the base
    // says the chain starts later, every file below is still there.
    let moved = Base {
        start: start.seq,
        entries_from: start.seq,
        hashes_from: start.seq,
        ..Base::default()
    };
    write_base(&path, &moved).unwrap();
    assert!(files.seg_path(0).exists());
    let before = files.disk_bytes();
    // The state's start is the same: the open finishes the removal.
    let mut store = AuditStore::open(&path, &head(size)).unwrap();
    store.prune(&start).unwrap();
    let files = store.files();
    assert!(!files.seg_path(0).exists() && !files.idx_path(0).exists());
    // Half the entries and their leaf hashes are gone.
    assert!(
        files.disk_bytes() < before * 3 / 4,
        "{} of {before}",
        files.disk_bytes()
    );
    assert!(files
        .watched_after(None, size, 100_000)
        .unwrap()
        .iter()
        .all(|s| *s >= start.seq));
    assert!(is_pruned(
        &files.entries(5, 1, size, |_| Ok(())).unwrap_err()
    ));
    assert_eq!(files.root(size).unwrap(), head(size).root());
    append(&mut store, size + 300);
    assert_eq!(files.root(size + 300).unwrap(), head(size + 300).root());
}
