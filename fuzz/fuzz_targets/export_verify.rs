//! The audit export parser and offline verifier, with the golden keys:
//! whatever an auditor is handed, the verifier answers without panicking.
//! Also the reader of an entry's canonical bytes (how a node stores it):
//! what it accepts encodes back to the same bytes.
#![no_main]
use grant_proto::audit::export::{parse_trusted_keys, verify, Line};
use libfuzzer_sys::fuzz_target;

const KEYS: &str = include_str!("../../proto/tests/golden/golden-keys.txt");

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = grant_proto::audit::Entry::from_canonical_bytes(data) {
        assert_eq!(e.canonical_bytes(), data);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = parse_trusted_keys(KEYS).expect("golden keys");
    let _ = verify(text, &keys);
    for line in text.lines() {
        let _ = Line::parse(line);
    }
    let _ = parse_trusted_keys(text);
});
