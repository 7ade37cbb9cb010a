//! The tamper set, as a table over the golden export: each case changes the
//! file (or what the auditor asks of it) the way an attacker or a careless
//! tool would, and names the position the verifier must report. Cases that
//! keep the meaning must verify.

use ed25519_dalek::SigningKey;
use grant_proto::audit::export::{
    parse_trusted_keys, verify_observed, Line, Options, Position, Summary, VerifyError,
};
use grant_proto::audit::note::{self, sign, VerifierKey};

const EXPORT: &str = include_str!("golden/golden-export.jsonl");
const KEYS: &str = include_str!("golden/golden-keys.txt");
/// The golden export's signing key (tests/golden.rs).
const SEED: [u8; 32] = [0x11; 32];
const NAME: &str = "grant-ledger-node-1";

fn lines() -> Vec<String> {
    EXPORT.lines().map(str::to_string).collect()
}

fn join(l: &[String]) -> String {
    l.join("\n") + "\n"
}

/// The header rewritten to match what the file now holds, as a forger would.
fn fix_header(l: &mut [String]) {
    let entries = l.iter().filter(|x| x.contains(r#""type":"entry""#)).count();
    let cps = l
        .iter()
        .filter(|x| x.contains(r#""type":"checkpoint""#))
        .count();
    l[0] = Line::header("grant-ledger/golden", entries as u64, cps as u64).to_json();
}

/// The note of the checkpoint line at `size`.
fn note_of(size: u64) -> String {
    lines()
        .iter()
        .filter_map(|l| match Line::parse(l) {
            Ok(Line::Checkpoint { note }) => Some(note),
            _ => None,
        })
        .find(|n| note::parse(n).unwrap().checkpoint.size == size)
        .unwrap()
}

/// The same checkpoint signed by another key under the same name: what a
/// node's rotated key would sign.
fn rotated() -> (SigningKey, VerifierKey) {
    let k = SigningKey::from_bytes(&[0x22; 32]);
    let vk = VerifierKey::new(NAME, k.verifying_key());
    (k, vk)
}

struct Case {
    name: &'static str,
    text: String,
    opts: Options,
    extra_keys: Vec<VerifierKey>,
    /// None: must verify.
    at: Option<Position>,
}

fn case(name: &'static str, text: String, at: Option<Position>) -> Case {
    Case {
        name,
        text,
        opts: Options::default(),
        extra_keys: vec![],
        at,
    }
}

fn run(c: &Case) -> Result<Summary, VerifyError> {
    let mut keys = parse_trusted_keys(KEYS).unwrap();
    keys.extend(c.extra_keys.iter().cloned());
    verify_observed(&c.text, &keys, &c.opts, &mut |_| {})
}

fn edited(line: usize, f: impl Fn(&str) -> String) -> String {
    let mut l = lines();
    l[line] = f(&l[line]);
    join(&l)
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        case("the golden export", EXPORT.to_string(), None),
        case(
            "CRLF line ends, blank lines, no final newline",
            EXPORT.replace('\n', "\r\n\r\n").trim_end().to_string(),
            None,
        ),
        case(
            "a field the entry does not define",
            edited(3, |l| {
                l.replacen(r#""prev_hash""#, r#""comment":"x","prev_hash""#, 1)
            }),
            Some(Position::Line(4)),
        ),
        case(
            "granted_scopes slipped into an entry",
            edited(3, |l| {
                l.replacen(r#""seq""#, r#""granted_scopes":"github=admin","seq""#, 1)
            }),
            Some(Position::Line(4)),
        ),
        case(
            "a note field on an entry line",
            edited(3, |l| {
                l.replacen(r#""type":"entry""#, r#""type":"entry","note":"x""#, 1)
            }),
            Some(Position::Line(4)),
        ),
        case(
            "a hash field on a checkpoint line",
            edited(7, |l| {
                l.replacen(
                    r#""type":"checkpoint""#,
                    r#""type":"checkpoint","hash":"00""#,
                    1,
                )
            }),
            Some(Position::Line(8)),
        ),
        case(
            "an entry hash spelled in uppercase",
            edited(3, |l| {
                let (head, hash) = l.rsplit_once(r#""hash":""#).unwrap();
                format!(r#"{head}"hash":"{}"#, hash.to_uppercase())
            }),
            Some(Position::Line(4)),
        ),
        case(
            "an unknown kind",
            edited(3, |l| {
                l.replacen(r#""kind":"issue""#, r#""kind":"grant""#, 1)
            }),
            Some(Position::Line(4)),
        ),
        case(
            "a second header",
            {
                let mut l = lines();
                l.insert(4, l[0].clone());
                join(&l)
            },
            Some(Position::Line(5)),
        ),
        case(
            "an entry's intent changed",
            edited(3, |l| l.replacen("triage issue 42", "triage issue 43", 1)),
            Some(Position::Seq(2)),
        ),
        case(
            "the last entry changed and its hash recomputed",
            {
                let mut l = lines();
                let Ok(grant_proto::audit::export::Line::Entry { mut entry, .. }) =
                    Line::parse(&l[6])
                else {
                    panic!()
                };
                entry.reason = "Allowed".into();
                l[6] = Line::entry(entry).to_json();
                join(&l)
            },
            Some(Position::Checkpoint(6)),
        ),
        case(
            "an entry dropped",
            {
                let mut l = lines();
                l.remove(4);
                fix_header(&mut l);
                join(&l)
            },
            Some(Position::Seq(3)),
        ),
        case(
            "two entries swapped",
            {
                let mut l = lines();
                l.swap(4, 5);
                join(&l)
            },
            Some(Position::Seq(3)),
        ),
        case(
            "the tail cut, the header fixed",
            {
                let mut l = lines();
                l.remove(6);
                fix_header(&mut l);
                join(&l)
            },
            Some(Position::Checkpoint(6)),
        ),
        case(
            "a fork: a second checkpoint of size 6 with another root",
            {
                let mut l = lines();
                let mut cp = note::parse(&note_of(6)).unwrap().checkpoint;
                cp.root = [7; 32];
                l.push(
                    Line::Checkpoint {
                        note: sign(&cp, NAME, &SigningKey::from_bytes(&SEED)),
                    }
                    .to_json(),
                );
                fix_header(&mut l);
                join(&l)
            },
            Some(Position::Checkpoint(6)),
        ),
        case(
            "no checkpoint left",
            {
                let mut l = lines();
                l.truncate(7);
                fix_header(&mut l);
                join(&l)
            },
            Some(Position::Export),
        ),
    ];

    // A node's rotated key: trusted by the auditor, same name, but never
    // recorded in this log's roster. Matching by name alone accepted it.
    let (k2, vk2) = rotated();
    let cp = note::parse(&note_of(6)).unwrap().checkpoint;
    let mut l = lines();
    l[8] = Line::Checkpoint {
        note: sign(&cp, NAME, &k2),
    }
    .to_json();
    v.push(Case {
        name: "a checkpoint signed by a key the roster does not hold",
        text: join(&l),
        opts: Options::default(),
        extra_keys: vec![vk2],
        at: Some(Position::Checkpoint(6)),
    });

    // Rolled back to the checkpoint at 3, header fixed: on its own a
    // consistent, shorter log. Pinned to the checkpoint at 6, refused.
    let mut back = lines();
    back.drain(4..7);
    back.remove(back.len() - 1);
    fix_header(&mut back);
    let back = join(&back);
    v.push(case(
        "rolled back to an earlier checkpoint",
        back.clone(),
        None,
    ));
    let since = |size| Options {
        since: Some(note_of(size)),
        ..Options::default()
    };
    v.push(Case {
        name: "rolled back, --since the checkpoint at 6",
        text: back,
        opts: since(6),
        extra_keys: vec![],
        at: Some(Position::Since(6)),
    });
    v.push(Case {
        name: "--since a checkpoint the export holds",
        text: EXPORT.to_string(),
        opts: since(3),
        extra_keys: vec![],
        at: None,
    });
    // Another history of the same length: the pinned root is not rebuilt.
    let mut other = lines();
    let mut forged = Vec::new();
    let mut prev = [0u8; 32];
    let mut frontier = grant_proto::audit::merkle::Frontier::default();
    for line in &other[1..7] {
        let Ok(Line::Entry { mut entry, .. }) = Line::parse(line) else {
            panic!()
        };
        if entry.seq == 4 {
            entry.reason = "rewritten".into();
        }
        entry.prev_hash = prev;
        prev = entry.hash();
        frontier.push(entry.leaf_hash());
        forged.push(Line::entry(entry).to_json());
    }
    other.splice(1..7, forged);
    let mut cp6 = note::parse(&note_of(6)).unwrap().checkpoint;
    cp6.root = frontier.root();
    other[8] = Line::Checkpoint {
        note: sign(&cp6, NAME, &SigningKey::from_bytes(&SEED)),
    }
    .to_json();
    let other = join(&other);
    v.push(case(
        "history rewritten and re-signed by the node's key",
        other.clone(),
        None,
    ));
    v.push(Case {
        name: "history rewritten, --since the checkpoint at 6",
        text: other,
        opts: since(6),
        extra_keys: vec![],
        at: Some(Position::Since(6)),
    });

    // The last three entries signed by no checkpoint.
    let mut uncovered = lines();
    uncovered.remove(8);
    fix_header(&mut uncovered);
    let uncovered = join(&uncovered);
    v.push(case("an unsigned tail, reported", uncovered.clone(), None));
    v.push(Case {
        name: "an unsigned tail, --require-covered",
        text: uncovered,
        opts: Options {
            require_covered: true,
            ..Options::default()
        },
        extra_keys: vec![],
        at: Some(Position::Seq(3)),
    });
    v.push(Case {
        name: "another origin than the auditor expects",
        text: EXPORT.to_string(),
        opts: Options {
            origin: Some("grant-ledger/prod".into()),
            ..Options::default()
        },
        extra_keys: vec![],
        at: Some(Position::Header),
    });
    v
}

#[test]
fn every_tamper_case_is_caught_at_its_position() {
    let mut wrong = Vec::new();
    for c in cases() {
        let got = run(&c);
        let ok = match (&got, &c.at) {
            (Ok(_), None) => true,
            (Err(e), Some(at)) => &e.at == at,
            _ => false,
        };
        if !ok {
            wrong.push(format!(
                "{}: wanted {:?}, got {:?}",
                c.name,
                c.at,
                got.map(|s| s.entries)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_summary_counts_what_no_checkpoint_covers_and_what_to_pin() {
    let mut l = lines();
    l.remove(8);
    fix_header(&mut l);
    let c = case("tail", join(&l), None);
    let s = run(&c).unwrap();
    assert_eq!((s.entries, s.covered, s.uncovered), (6, 3, 3));
    assert_eq!(s.latest_checkpoint, note_of(3));
    let pinned = Case {
        opts: Options {
            since: Some(note_of(6)),
            ..Options::default()
        },
        ..case("pinned", EXPORT.to_string(), None)
    };
    let s = run(&pinned).unwrap();
    assert_eq!((s.since, s.uncovered), (Some(6), 0));
}
