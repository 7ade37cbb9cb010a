//! The export_verify fuzz corpus (`fuzz/corpus/export_verify/`) replayed on
//! stable: the verifier answers every input without panicking, and the
//! golden export in it verifies; the reader of canonical bytes accepts only
//! what encodes back to the same bytes, and reads the seed entry.

use grant_proto::audit::export::{parse_trusted_keys, verify, Line};
use grant_proto::audit::Entry;

const KEYS: &str = include_str!("golden/golden-keys.txt");

#[test]
fn export_verify_corpus_replays() {
    let keys = parse_trusted_keys(KEYS).unwrap();
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/export_verify");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        match Entry::from_canonical_bytes(&bytes) {
            Ok(e) => assert_eq!(e.canonical_bytes(), bytes, "{}", path.display()),
            Err(e) => assert!(!path.ends_with("seed-canonical"), "{e}"),
        }
        let Ok(text) = String::from_utf8(std::fs::read(&path).unwrap()) else {
            continue;
        };
        let r = verify(&text, &keys);
        if path.ends_with("golden-export") {
            assert!(r.is_ok(), "{r:?}");
        }
        for line in text.lines() {
            let _ = Line::parse(line);
        }
        let _ = parse_trusted_keys(&text);
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
}
