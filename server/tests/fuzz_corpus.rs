//! The fuzz corpora (`fuzz/corpus/<target>/`) replayed on stable through
//! the same entry points as the cargo fuzz targets: no input may panic, and
//! the well-formed seeds must be accepted (so the targets reach past the
//! parsers). Inputs a fuzz run finds go into the corpus and stay tested.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

#[test]
fn token_corpus_replays_and_the_seeds_are_accepted() {
    let (grant, bearer) = grantd::fuzzing::seed_tokens();
    assert_eq!(grantd::fuzzing::accepted(&grant, &bearer), (true, true));
    let seeds = corpus("token");
    for name in ["seed-grant", "seed-bearer"] {
        assert!(
            seeds.iter().any(|(p, _)| p.ends_with(name)),
            "fuzz/corpus/token/{name} missing (run the ignored test below)"
        );
    }
    for (path, input) in seeds {
        eprintln!("{}", path.display());
        grantd::fuzzing::token(&input);
    }
}

#[test]
fn request_corpus_replays() {
    for (path, input) in corpus("request") {
        eprintln!("{}", path.display());
        grantd::fuzzing::request(&input);
    }
}

/// Write the token seeds into the corpus (after a change to the token
/// format): `cargo test -p grantd --test fuzz_corpus -- --ignored`.
#[test]
#[ignore]
fn write_token_seeds() {
    let (grant, bearer) = grantd::fuzzing::seed_tokens();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/token");
    std::fs::write(dir.join("seed-grant"), grant).unwrap();
    std::fs::write(dir.join("seed-bearer"), bearer).unwrap();
}
