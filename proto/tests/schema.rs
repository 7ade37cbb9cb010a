//! docs/schema/: the JSON Schemas published beside docs/audit-format.md
//! describe exactly what the verifier reads. The golden export and a proof
//! validate; lines with a field the format does not define, or a hash
//! spelled otherwise, are refused by the schema as by the verifier.

use grant_proto::audit::export::Line;
use serde_json::Value;

const EXPORT: &str = include_str!("golden/golden-export.jsonl");
const LINE_SCHEMA: &str = include_str!("../../docs/schema/audit-export-line.schema.json");
const PROOF_SCHEMA: &str = include_str!("../../docs/schema/audit-proof.schema.json");

fn validator(schema: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(schema).expect("the schema is JSON");
    jsonschema::draft202012::new(&schema).expect("the schema compiles")
}

#[test]
fn the_golden_export_validates_and_so_does_the_verifier_on_the_same_lines() {
    let v = validator(LINE_SCHEMA);
    for (i, l) in EXPORT.lines().enumerate() {
        let value: Value = serde_json::from_str(l).unwrap();
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "line {}: {errors:?}", i + 1);
    }
    let bad = [
        EXPORT.lines().nth(3).unwrap().replacen(
            r#""prev_hash""#,
            r#""comment":"x","prev_hash""#,
            1,
        ),
        EXPORT.lines().nth(3).unwrap().replacen(
            r#""type":"entry""#,
            r#""type":"entry","note":"x""#,
            1,
        ),
        EXPORT.lines().nth(7).unwrap().replacen(
            r#""type":"checkpoint""#,
            r#""type":"checkpoint","hash":"00""#,
            1,
        ),
        EXPORT
            .lines()
            .nth(3)
            .unwrap()
            .replacen(r#""kind":"issue""#, r#""kind":"grant""#, 1),
        EXPORT
            .lines()
            .nth(3)
            .unwrap()
            .replacen(r#""decision":"none""#, r#""decision":"maybe""#, 1),
        EXPORT
            .lines()
            .nth(1)
            .unwrap()
            .replacen(r#""seq":0"#, r#""seq":-1"#, 1),
        {
            let l = EXPORT.lines().nth(3).unwrap();
            let (head, hash) = l.rsplit_once(r#""hash":""#).unwrap();
            format!(r#"{head}"hash":"{}"#, hash.to_uppercase())
        },
    ];
    for l in bad {
        let value: Value = serde_json::from_str(&l).unwrap();
        assert!(!v.is_valid(&value), "the schema accepted {l}");
        assert!(Line::parse(&l).is_err(), "the verifier accepted {l}");
    }
    // Another version parses as a line, and the verifier refuses it as a header.
    let v2 = EXPORT
        .lines()
        .next()
        .unwrap()
        .replacen(r#""version":1"#, r#""version":2"#, 1);
    assert!(!v.is_valid(&serde_json::from_str(&v2).unwrap()));
}

#[test]
fn a_proof_file_validates() {
    use ed25519_dalek::SigningKey;
    use grant_proto::audit::note::{sign, Checkpoint};
    use grant_proto::audit::proof::InclusionProof;
    use grant_proto::audit::{merkle, Entry, Kind};
    let mut e = Entry::new(Kind::Revoke, 5);
    e.grant_id = "00112233445566778899aabbccddeeff".into();
    let leaves = [e.leaf_hash()];
    let cp = Checkpoint {
        origin: "grant-ledger/test".into(),
        size: 1,
        root: merkle::root(&leaves),
        time_ms: 6,
    };
    let key = SigningKey::from_bytes(&[9; 32]);
    let p = InclusionProof::new(e, 1, &[], sign(&cp, "grant-ledger-node-1", &key));
    let value: Value = serde_json::from_str(&p.to_json()).unwrap();
    let v = validator(PROOF_SCHEMA);
    let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
}
