//! A golden export: fixed entries and a fixed key give a fixed file. A change
//! to the entry encoding, the hashes, the checkpoint text or the export
//! lines breaks this test; if the change is intended, bump the format
//! version, regenerate with GOLDEN_UPDATE=1 and say why in the commit.

use ed25519_dalek::SigningKey;
use grant_proto::audit::export::{parse_trusted_keys, verify, Line};
use grant_proto::audit::merkle::Frontier;
use grant_proto::audit::note::{sign, Checkpoint, VerifierKey};
use grant_proto::audit::{Decision, Entry, Kind};

const NAME: &str = "grant-ledger-node-1";
const ORIGIN: &str = "grant-ledger/golden";

fn golden() -> (String, String) {
    let key = SigningKey::from_bytes(&[0x11; 32]);
    let vk = VerifierKey::new(NAME, key.verifying_key());
    let mut entries = Vec::new();
    let mut membership = Entry::new(Kind::Membership, 0);
    membership.detail = "voters=1,2,3 learners=".into();
    entries.push(membership);
    let mut roster = Entry::new(Kind::KeyRoster, 1_700_000_000_000);
    roster.actor = NAME.into();
    roster.subject = "node/1".into();
    roster.reason = "register".into();
    roster.detail = vk.encode();
    entries.push(roster);
    let mut issue = Entry::new(Kind::Issue, 1_700_000_000_100);
    issue.subject = "spiffe://example.org/agent/planner".into();
    issue.task_id = "task-1".into();
    issue.grant_id = "00112233445566778899aabbccddeeff".into();
    issue.resource = "github".into();
    issue.intent = "triage issue 42 \"quoted\" and ünïcode".into();
    entries.push(issue.clone());
    let mut check = issue.clone();
    check.kind = Kind::Check;
    check.time_ms += 50;
    check.action = "read".into();
    check.decision = Decision::Allow;
    check.reason = "Allowed".into();
    entries.push(check.clone());
    let mut revoke = issue.clone();
    revoke.kind = Kind::Revoke;
    revoke.time_ms += 100;
    revoke.reason = "task done".into();
    entries.push(revoke);
    let mut deny = check;
    deny.time_ms += 150;
    deny.decision = Decision::Deny;
    deny.reason = "Revoked".into();
    entries.push(deny);

    let mut lines = Vec::new();
    let mut notes = Vec::new();
    let mut prev = [0u8; 32];
    let mut f = Frontier::default();
    for (seq, mut e) in entries.into_iter().enumerate() {
        e.seq = seq as u64;
        e.log_index = seq as u64 + 1;
        e.prev_hash = prev;
        prev = e.hash();
        f.push(e.leaf_hash());
        lines.push(Line::entry(e).to_json());
        if f.size == 3 || f.size == 6 {
            let cp = Checkpoint {
                origin: ORIGIN.into(),
                size: f.size,
                root: f.root(),
                time_ms: 1_700_000_001_000 + f.size as i64,
            };
            notes.push(
                Line::Checkpoint {
                    note: sign(&cp, NAME, &key),
                }
                .to_json(),
            );
        }
    }
    let mut out = vec![Line::header(ORIGIN, lines.len() as u64, notes.len() as u64).to_json()];
    out.extend(lines);
    out.extend(notes);
    (out.join("\n") + "\n", vk.encode() + "\n")
}

#[test]
fn golden_export_is_stable_and_verifies() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let (export, keys) = golden();
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(dir.join("golden-export.jsonl"), &export).unwrap();
        std::fs::write(dir.join("golden-keys.txt"), &keys).unwrap();
    }
    let stored = std::fs::read_to_string(dir.join("golden-export.jsonl")).unwrap();
    let stored_keys = std::fs::read_to_string(dir.join("golden-keys.txt")).unwrap();
    assert_eq!(export, stored, "the audit export format changed");
    assert_eq!(keys, stored_keys);
    let s = verify(&stored, &parse_trusted_keys(&stored_keys).unwrap()).unwrap();
    assert_eq!((s.entries, s.checkpoints, s.covered), (6, 2, 6));
}
