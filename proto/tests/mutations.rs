//! The offline verifier against damaged input: every single-byte change,
//! deletion and duplication at every position of the golden export. An
//! auditor's tool must never panic on a file it is handed, and it may
//! accept a changed file only if every line still means exactly what the
//! original line meant (say, the same JSON written another way).

use grant_proto::audit::export::{parse_trusted_keys, verify, Line};

const EXPORT: &str = include_str!("golden/golden-export.jsonl");
const KEYS: &str = include_str!("golden/golden-keys.txt");

/// What each line means; blank lines mean nothing (the verifier skips them).
fn lines(text: &str) -> Option<Vec<Line>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Line::parse(l).ok())
        .collect()
}

#[test]
fn no_damaged_export_verifies_unless_it_means_the_same() {
    let keys = parse_trusted_keys(KEYS).unwrap();
    let original = lines(EXPORT).unwrap();
    verify(EXPORT, &keys).expect("the golden export verifies");
    let bytes = EXPORT.as_bytes();
    let (mut tried, mut refused) = (0, 0);
    for i in 0..bytes.len() {
        let mut variants: Vec<Vec<u8>> = [0x01u8, 0x20, 0x80]
            .iter()
            .map(|x| {
                let mut b = bytes.to_vec();
                b[i] ^= x;
                b
            })
            .collect();
        let mut cut = bytes.to_vec();
        cut.remove(i);
        variants.push(cut);
        let mut twice = bytes.to_vec();
        twice.insert(i, bytes[i]);
        variants.push(twice);
        for v in variants {
            // Not UTF-8 any more: a reader refuses it before the verifier.
            let Ok(text) = String::from_utf8(v) else {
                continue;
            };
            tried += 1;
            match verify(&text, &keys) {
                Err(_) => refused += 1,
                Ok(_) => assert_eq!(
                    lines(&text).as_ref(),
                    Some(&original),
                    "a change at byte {i} verified and changed the content:\n{text}"
                ),
            }
        }
    }
    eprintln!("{tried} damaged exports, {refused} refused, the rest mean the same");
    assert!(refused > tried * 9 / 10, "{refused} of {tried} refused");
}
