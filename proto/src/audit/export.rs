//! The audit export file (version 1) and the offline verifier.
//!
//! An export is JSON Lines: a header line, then every entry in sequence
//! order, then every checkpoint in size order:
//! ```text
//! {"type":"header","format":"grant-ledger-audit-export","version":1,"origin":"...","entries":N,"checkpoints":M}
//! {"type":"entry","entry":{"seq":0,...every Entry field...},"hash":"<hex>"}
//! {"type":"checkpoint","note":"<signed note text>"}
//! ```
//! The verifier trusts nothing in the file: it recomputes every entry hash
//! and the chain, rebuilds the Merkle root at every checkpoint size, and
//! checks every checkpoint's signature against keys the auditor supplies.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Entry, EntryRef};

use sha2::{Digest, Sha256};

use super::merkle::{self, Frontier};
use super::note::{self, VerifierKey};
use super::{Hash, Kind};

pub const FORMAT: &str = "grant-ledger-audit-export";
pub const VERSION: u32 = 1;

/// One line of an export. On disk every line is one JSON object with a
/// `type` and the fields of that type (see the module doc); the shape is a
/// plain struct rather than a tagged enum so that parsing a million entries
/// takes no detour through serde's buffering.
///
/// Entries are held inline, not boxed: the verifier makes one `Line` per
/// line of a million-entry export, and a box would be an allocation each.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Line {
    Header {
        format: String,
        version: u32,
        origin: String,
        entries: u64,
        checkpoints: u64,
    },
    Entry {
        entry: Entry,
        hash: Hash,
    },
    Checkpoint {
        note: String,
    },
    /// Where an export of a pruned chain begins (after the header).
    Start(Start),
}

/// What an export of a chain pruned before entry `seq` begins from: the
/// hash of the entry before, the Merkle frontier of the first `seq`
/// entries (the roots of its perfect subtrees, tallest first), and the
/// `key_roster` entries before `seq`, each with its audit path in that
/// tree. The frontier is checked by every checkpoint's root, which is
/// rebuilt from it; the roster entries by their paths to its root.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub seq: u64,
    pub prev_hash: Hash,
    pub frontier: Vec<Hash>,
    pub roster: Vec<StartRoster>,
}

/// A `key_roster` entry before the start, its hash, and its audit path.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRoster {
    pub entry: Entry,
    pub hash: Hash,
    pub path: Vec<Hash>,
}

#[derive(Serialize)]
struct RawRoster {
    entry: Entry,
    hash: String,
    path: Vec<String>,
}

/// A line as written: the fields of its type (module doc).
#[derive(Serialize, Default)]
struct RawLine {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoints: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entry: Option<Entry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prev_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frontier: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roster: Option<Vec<RawRoster>>,
}

impl Line {
    pub fn header(origin: &str, entries: u64, checkpoints: u64) -> Line {
        Line::Header {
            format: FORMAT.into(),
            version: VERSION,
            origin: origin.into(),
            entries,
            checkpoints,
        }
    }

    pub fn entry(e: Entry) -> Line {
        let hash = e.hash();
        Line::Entry { entry: e, hash }
    }

    pub fn to_json(&self) -> String {
        let raw = match self.clone() {
            Line::Header {
                format,
                version,
                origin,
                entries,
                checkpoints,
            } => RawLine {
                ty: "header".into(),
                format: Some(format),
                version: Some(version),
                origin: Some(origin),
                entries: Some(entries),
                checkpoints: Some(checkpoints),
                ..Default::default()
            },
            Line::Entry { entry, hash } => RawLine {
                ty: "entry".into(),
                entry: Some(entry),
                hash: Some(hex::encode(hash)),
                ..Default::default()
            },
            Line::Checkpoint { note } => RawLine {
                ty: "checkpoint".into(),
                note: Some(note),
                ..Default::default()
            },
            Line::Start(st) => RawLine {
                ty: "start".into(),
                seq: Some(st.seq),
                prev_hash: Some(hex::encode(st.prev_hash)),
                frontier: Some(st.frontier.iter().map(hex::encode).collect()),
                roster: Some(
                    st.roster
                        .into_iter()
                        .map(|r| RawRoster {
                            entry: r.entry,
                            hash: hex::encode(r.hash),
                            path: r.path.iter().map(hex::encode).collect(),
                        })
                        .collect(),
                ),
                ..Default::default()
            },
        };
        serde_json::to_string(&raw).expect("export lines serialize")
    }

    pub fn parse(text: &str) -> Result<Line, String> {
        Ok(match LineRef::parse(text)? {
            LineRef::Header {
                format,
                version,
                origin,
                entries,
                checkpoints,
            } => Line::Header {
                format: format.into_owned(),
                version,
                origin: origin.into_owned(),
                entries,
                checkpoints,
            },
            LineRef::Entry { entry, hash } => Line::Entry {
                entry: entry.to_entry()?,
                hash,
            },
            LineRef::Checkpoint { note } => Line::Checkpoint {
                note: note.into_owned(),
            },
            LineRef::Start {
                seq,
                prev_hash,
                frontier,
                roster,
            } => Line::Start(Start {
                seq,
                prev_hash,
                frontier,
                roster: roster
                    .into_iter()
                    .map(|(entry, hash, path)| {
                        Ok(StartRoster {
                            entry: entry.to_entry()?,
                            hash,
                            path,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            }),
        })
    }
}

/// One line of an export as read: its strings borrowed from the text
/// (unless they hold escapes). [`Line::parse`] and the verifier both read
/// through it, so they accept exactly the same lines.
// One lives per line being read, never in a collection: its size does not
// matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum LineRef<'a> {
    Header {
        format: Cow<'a, str>,
        version: u32,
        origin: Cow<'a, str>,
        entries: u64,
        checkpoints: u64,
    },
    /// An entry and the hash stated with it. Its `prev_hash` is checked
    /// for spelling when its canonical bytes are written.
    Entry {
        entry: EntryRef<'a>,
        hash: Hash,
    },
    Checkpoint {
        note: Cow<'a, str>,
    },
    Start {
        seq: u64,
        prev_hash: Hash,
        frontier: Vec<Hash>,
        /// Each roster entry, the hash stated with it, and its path.
        roster: Vec<(EntryRef<'a>, Hash, Vec<Hash>)>,
    },
}

/// A roster entry of a start line, as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterRef<'a> {
    #[serde(borrow)]
    entry: EntryRef<'a>,
    hash: String,
    path: Vec<String>,
}

/// Every field of every line type, borrowed: which ones a line may hold is
/// checked after.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRef<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    format: Option<Cow<'a, str>>,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default, borrow)]
    origin: Option<Cow<'a, str>>,
    #[serde(default)]
    entries: Option<u64>,
    #[serde(default)]
    checkpoints: Option<u64>,
    #[serde(default, borrow)]
    entry: Option<EntryRef<'a>>,
    #[serde(default, borrow)]
    hash: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    note: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    prev_hash: Option<String>,
    #[serde(default)]
    frontier: Option<Vec<String>>,
    #[serde(default, borrow)]
    roster: Option<Vec<RosterRef<'a>>>,
}

impl<'a> LineRef<'a> {
    pub fn parse(text: &'a str) -> Result<LineRef<'a>, String> {
        let raw: RawRef<'a> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let ty = raw.ty.as_ref();
        let missing = |f: &str| format!("a {ty} line needs {f}");
        // RawRef holds the fields of every line type: a field that belongs
        // to another type is as unknown here as one no type defines.
        let present = [
            ("format", raw.format.is_some()),
            ("version", raw.version.is_some()),
            ("origin", raw.origin.is_some()),
            ("entries", raw.entries.is_some()),
            ("checkpoints", raw.checkpoints.is_some()),
            ("entry", raw.entry.is_some()),
            ("hash", raw.hash.is_some()),
            ("note", raw.note.is_some()),
            ("seq", raw.seq.is_some()),
            ("prev_hash", raw.prev_hash.is_some()),
            ("frontier", raw.frontier.is_some()),
            ("roster", raw.roster.is_some()),
        ];
        let own: &[&str] = match ty {
            "header" => &["format", "version", "origin", "entries", "checkpoints"],
            "entry" => &["entry", "hash"],
            "checkpoint" => &["note"],
            "start" => &["seq", "prev_hash", "frontier", "roster"],
            other => return Err(format!("unknown line type {other:?}")),
        };
        if let Some((field, _)) = present.iter().find(|(f, is)| *is && !own.contains(f)) {
            return Err(format!("unknown field `{field}` in a {ty} line"));
        }
        match ty {
            "header" => Ok(LineRef::Header {
                format: raw.format.ok_or_else(|| missing("format"))?,
                version: raw.version.ok_or_else(|| missing("version"))?,
                origin: raw.origin.ok_or_else(|| missing("origin"))?,
                entries: raw.entries.ok_or_else(|| missing("entries"))?,
                checkpoints: raw.checkpoints.ok_or_else(|| missing("checkpoints"))?,
            }),
            "entry" => {
                let hash = raw.hash.ok_or_else(|| missing("hash"))?;
                let hash = super::parse_hash_hex(&hash).map_err(|e| format!("hash: {e}"))?;
                Ok(LineRef::Entry {
                    entry: raw.entry.ok_or_else(|| missing("entry"))?,
                    hash,
                })
            }
            "start" => {
                let hash = |what: &str, h: &str| {
                    super::parse_hash_hex(h).map_err(|e| format!("{what}: {e}"))
                };
                let prev_hash = hash(
                    "prev_hash",
                    &raw.prev_hash.ok_or_else(|| missing("prev_hash"))?,
                )?;
                let frontier = raw
                    .frontier
                    .ok_or_else(|| missing("frontier"))?
                    .iter()
                    .map(|h| hash("frontier", h))
                    .collect::<Result<_, _>>()?;
                let roster = raw
                    .roster
                    .ok_or_else(|| missing("roster"))?
                    .into_iter()
                    .map(|r| {
                        let path = r
                            .path
                            .iter()
                            .map(|h| hash("roster path", h))
                            .collect::<Result<_, _>>()?;
                        Ok((r.entry, hash("roster hash", &r.hash)?, path))
                    })
                    .collect::<Result<_, String>>()?;
                Ok(LineRef::Start {
                    seq: raw.seq.ok_or_else(|| missing("seq"))?,
                    prev_hash,
                    frontier,
                    roster,
                })
            }
            _ => Ok(LineRef::Checkpoint {
                note: raw.note.ok_or_else(|| missing("note"))?,
            }),
        }
    }
}

/// Where verification failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A line of the file that does not parse (1-based).
    Line(usize),
    Header,
    /// The entry that should hold this sequence number.
    Seq(u64),
    /// The checkpoint of this tree size.
    Checkpoint(u64),
    /// The checkpoint the auditor pinned (`--since`), of this tree size.
    Since(u64),
    /// The start line of an export of a pruned chain.
    Start,
    Export,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Header => write!(f, "header"),
            Position::Seq(s) => write!(f, "seq {s}"),
            Position::Checkpoint(s) => write!(f, "checkpoint at size {s}"),
            Position::Since(s) => write!(f, "pinned checkpoint at size {s}"),
            Position::Start => write!(f, "start"),
            Position::Export => write!(f, "export"),
        }
    }
}

/// The first thing wrong with an export, with the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct VerifyError {
    pub at: Position,
    pub problem: String,
    pub evidence: Vec<String>,
}

fn fail<T>(
    at: Position,
    problem: impl Into<String>,
    evidence: Vec<String>,
) -> Result<T, VerifyError> {
    Err(VerifyError {
        at,
        problem: problem.into(),
        evidence,
    })
}

/// What a successful verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub origin: String,
    /// The first entry's seq: 0, or where a prune left the chain's start.
    pub start: u64,
    /// Entries the export holds (from `start`).
    pub entries: u64,
    pub checkpoints: u64,
    /// Entries covered by the largest verified checkpoint (or the pinned
    /// one, if larger).
    pub covered: u64,
    /// Entries after `covered`: in the export, but signed by no checkpoint.
    pub uncovered: u64,
    /// The size of the pinned checkpoint the export was found consistent
    /// with, when one was given.
    pub since: Option<u64>,
    /// The newest verified checkpoint's note: what to pin next time.
    pub latest_checkpoint: String,
    pub first_time_ms: Option<i64>,
    pub last_time_ms: Option<i64>,
    pub signers: BTreeSet<String>,
    pub roster: Vec<String>,
}

/// Parse a trusted-keys file: one verifier key per line, `#` comments.
pub fn parse_trusted_keys(text: &str) -> Result<Vec<VerifierKey>, note::NoteError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(VerifierKey::parse)
        .collect()
}

/// What an auditor asks of an export beyond its own consistency.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A checkpoint note the auditor accepted before (from an earlier
    /// export or `audit prove`). The export must hold at least its entries
    /// and rebuild its root at its size: history the auditor saw cannot
    /// have been cut back or rewritten.
    pub since: Option<String>,
    /// Refuse an export whose last entries no checkpoint signs.
    pub require_covered: bool,
    /// The log's origin, as the auditor learned it with the keys. The
    /// header is not signed: without this the verifier takes the header's
    /// word for which log it is reading (every checkpoint must then name it).
    pub origin: Option<String>,
}

/// Verify an export against the auditor's trusted keys.
///
/// One pass over the lines checks the chain and keeps each entry's leaf hash
/// (32 bytes an entry); a replay of the leaves then rebuilds the root at
/// every checkpoint size, whatever order the checkpoint lines came in.
pub fn verify(text: &str, trusted: &[VerifierKey]) -> Result<Summary, VerifyError> {
    verify_observed(text, trusted, &Options::default(), &mut |_| {})
}

/// Check a start line: its frontier, and each roster entry before it
/// against the frontier's root, which the checkpoints later bind (every root
/// rebuilt from this frontier must be a signed one). The keys go into
/// `roster`; the frontier is returned.
fn read_start(st: &Start, roster: &mut Vec<(VerifierKey, u64)>) -> Result<Frontier, VerifyError> {
    let at = || Position::Start;
    if st.frontier.len() != st.seq.count_ones() as usize {
        return fail(
            at(),
            format!(
                "a frontier of {} hashes, where a tree of {} entries has {}",
                st.frontier.len(),
                st.seq,
                st.seq.count_ones()
            ),
            vec![],
        );
    }
    let heights = (0..64u8).rev().filter(|h| st.seq & (1 << h) != 0);
    let frontier = Frontier {
        size: st.seq,
        subtrees: heights.zip(st.frontier.iter().copied()).collect(),
    };
    let root = frontier.root();
    let mut buf = Vec::new();
    for r in &st.roster {
        let e = &r.entry;
        let here = || format!("roster entry at seq {}", e.seq);
        buf.clear();
        buf.extend_from_slice(&e.canonical_bytes());
        if e.kind != Kind::KeyRoster || e.seq >= st.seq {
            return fail(
                at(),
                format!("{} is not a key_roster entry before the start", here()),
                vec![],
            );
        }
        let hash: Hash = Sha256::digest(&buf).into();
        if hash != r.hash {
            return fail(
                at(),
                format!(
                    "{}: its content does not hash to the hash recorded with it",
                    here()
                ),
                vec![],
            );
        }
        if !merkle::verify_inclusion(e.seq, st.seq, &merkle::leaf_hash(&buf), &r.path, &root) {
            return fail(
                at(),
                format!(
                    "{}: its audit path does not lead to the root of the first {} entries",
                    here(),
                    st.seq
                ),
                vec![],
            );
        }
        match VerifierKey::parse(&e.detail) {
            Ok(k) => roster.push((k, e.seq)),
            Err(err) => {
                return fail(
                    at(),
                    format!("{} holds a bad key: {err}", here()),
                    vec![e.detail.clone()],
                )
            }
        }
    }
    Ok(frontier)
}

/// Threads that read lines at once (at most; fewer on fewer cores).
pub const VERIFY_THREADS_MAX: usize = 16;

/// What one line holds, found without looking at any other line.
enum Read {
    Header,
    Start,
    Checkpoint(String),
    Entry(ReadEntry),
}

/// An entry line, hashed: what the chain check needs of it.
struct ReadEntry {
    seq: u64,
    time_ms: i64,
    prev_hash: Hash,
    stated: Hash,
    hash: Hash,
    leaf: Hash,
    /// A key roster entry's detail (the verifier key).
    roster: Option<String>,
}

fn read_line(l: &str, buf: &mut Vec<u8>) -> Result<Read, String> {
    Ok(match LineRef::parse(l)? {
        LineRef::Header { .. } => Read::Header,
        LineRef::Start { .. } => Read::Start,
        LineRef::Checkpoint { note } => Read::Checkpoint(note.into_owned()),
        LineRef::Entry { entry, hash } => {
            let prev_hash = entry.canonical_into(buf)?;
            Read::Entry(ReadEntry {
                seq: entry.seq,
                time_ms: entry.time_ms,
                prev_hash,
                stated: hash,
                hash: Sha256::digest(&buf[..]).into(),
                leaf: merkle::leaf_hash(buf),
                roster: (entry.kind == Kind::KeyRoster).then(|| entry.detail.into_owned()),
            })
        }
    })
}

/// Read every line of `block`, on up to `workers` threads: the results in
/// order, one run per thread.
fn read_block(block: &[(usize, &str)], workers: usize) -> Vec<Vec<Result<Read, String>>> {
    let read_all = |part: &[(usize, &str)]| -> Vec<Result<Read, String>> {
        let mut buf = Vec::with_capacity(512);
        part.iter().map(|(_, l)| read_line(l, &mut buf)).collect()
    };
    if workers < 2 || block.len() < 1024 {
        return vec![read_all(block)];
    }
    let per = block.len().div_ceil(workers);
    std::thread::scope(|s| {
        let parts: Vec<_> = block
            .chunks(per)
            .map(|part| s.spawn(move || read_all(part)))
            .collect();
        parts
            .into_iter()
            .map(|h| h.join().expect("a verifier thread panicked"))
            .collect()
    })
}

/// Lines between two calls of a [`verify_observed`] observer.
pub const VERIFY_PROGRESS_LINES: usize = 65_536;

/// As [`verify`], telling `seen` the bytes of `text` read so far every
/// [`VERIFY_PROGRESS_LINES`] lines (grantctl draws a progress bar).
pub fn verify_observed(
    text: &str,
    trusted: &[VerifierKey],
    opts: &Options,
    seen: &mut dyn FnMut(u64),
) -> Result<Summary, VerifyError> {
    // The pinned checkpoint is checked first: it is the auditor's own
    // evidence, and a bad one is their mistake, not the export's.
    let since = match &opts.since {
        Some(text) => match note::verify(text, trusted) {
            Ok((cp, _)) => Some((cp, text)),
            Err(e) => {
                return fail(
                    Position::Export,
                    format!("the pinned checkpoint (--since) does not verify: {e}"),
                    vec![text.clone()],
                )
            }
        },
        None => None,
    };
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let Some(&(_, first)) = lines.first() else {
        return fail(Position::Header, "empty export", vec![]);
    };
    let (origin, announced) = match Line::parse(first) {
        Ok(Line::Header {
            format,
            version,
            origin,
            entries,
            checkpoints,
        }) if format == FORMAT && version == VERSION => (origin, (entries, checkpoints)),
        Ok(Line::Header {
            format, version, ..
        }) => {
            return fail(
                Position::Header,
                format!("unknown format {format:?} version {version}"),
                vec![],
            )
        }
        _ => {
            return fail(
                Position::Header,
                "the first line is not an export header",
                vec![first.to_string()],
            )
        }
    };

    if let Some(expected) = &opts.origin {
        if &origin != expected {
            return fail(
                Position::Header,
                format!("the export is of log {origin:?}, not {expected:?}"),
                vec![first.to_string()],
            );
        }
    }
    let mut leaves: Vec<Hash> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut prev: Hash = [0; 32];
    let mut roster: Vec<(VerifierKey, u64)> = Vec::new();
    let (mut first_time, mut last_time) = (None, None);
    // An export of a pruned chain: a start line follows the header.
    let mut body = &lines[1..];
    let (start, start_frontier) = match body.first() {
        Some(&(i, l)) if matches!(LineRef::parse(l), Ok(LineRef::Start { .. })) => {
            body = &body[1..];
            let Ok(Line::Start(st)) = Line::parse(l) else {
                return fail(
                    Position::Line(i + 1),
                    "unreadable start line",
                    vec![l.to_string()],
                );
            };
            let frontier = read_start(&st, &mut roster)?;
            prev = st.prev_hash;
            (st.seq, frontier)
        }
        _ => (0, Frontier::default()),
    };
    // Lines are read and hashed in parallel, a block at a time; the chain,
    // which needs them in order, is checked after each block in one pass.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(VERIFY_THREADS_MAX);
    for block in body.chunks(VERIFY_PROGRESS_LINES) {
        seen(block[0].1.as_ptr() as u64 - text.as_ptr() as u64);
        let reads = read_block(block, workers).into_iter().flatten();
        for (&(i, l), read) in block.iter().zip(reads) {
            let (e, stated) = match read {
                Ok(Read::Entry(e)) => {
                    let stated = e.stated;
                    (e, stated)
                }
                Ok(Read::Checkpoint(note)) => {
                    notes.push(note);
                    continue;
                }
                Ok(Read::Header) => return fail(Position::Line(i + 1), "a second header", vec![]),
                Ok(Read::Start) => {
                    return fail(
                        Position::Line(i + 1),
                        "a start line anywhere but right after the header",
                        vec![],
                    )
                }
                Err(e) => {
                    return fail(
                        Position::Line(i + 1),
                        format!("unreadable line: {e}"),
                        vec![l.to_string()],
                    )
                }
            };
            let seq = start + leaves.len() as u64;
            if e.seq != seq {
                return fail(
                    Position::Seq(seq),
                    format!("found entry seq {} where seq {seq} belongs: an entry is missing, inserted or out of order", e.seq),
                    vec![l.to_string()],
                );
            }
            if e.prev_hash != prev {
                return fail(
                    Position::Seq(seq),
                    "prev_hash is not the hash of the entry before it: the chain is broken",
                    vec![
                        format!("prev_hash in entry: {}", hex::encode(e.prev_hash)),
                        format!("hash of seq {}: {}", seq.wrapping_sub(1), hex::encode(prev)),
                    ],
                );
            }
            if e.hash != stated {
                return fail(
                    Position::Seq(seq),
                    "the entry's content does not hash to the hash recorded with it: it was modified",
                    vec![
                        format!("recorded: {}", hex::encode(stated)),
                        format!("recomputed: {}", hex::encode(e.hash)),
                    ],
                );
            }
            prev = e.hash;
            leaves.push(e.leaf);
            first_time.get_or_insert(e.time_ms);
            last_time = Some(e.time_ms);
            if let Some(detail) = e.roster {
                match VerifierKey::parse(&detail) {
                    Ok(k) => roster.push((k, seq)),
                    Err(err) => {
                        return fail(
                            Position::Seq(seq),
                            format!("key roster entry with a bad key: {err}"),
                            vec![detail],
                        )
                    }
                }
            }
        }
    }
    let n = start + leaves.len() as u64;

    let mut parsed = Vec::new();
    for text in &notes {
        match note::parse(text) {
            Ok(p) => parsed.push((p.checkpoint, text)),
            Err(e) => {
                return fail(
                    Position::Export,
                    format!("unreadable checkpoint: {e}"),
                    vec![text.clone()],
                )
            }
        }
    }
    parsed.sort_by_key(|(c, _)| c.size);
    // Rebuild the root at every checkpoint size in one replay of the leaves.
    // From the start's frontier, when the chain was pruned.
    let mut roots: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut frontier = start_frontier;
    let mut sizes: Vec<u64> = parsed.iter().map(|(c, _)| c.size).collect();
    sizes.extend(since.as_ref().map(|(c, _)| c.size));
    sizes.sort_unstable();
    let mut wanted = sizes
        .into_iter()
        .filter(|s| (start..=n).contains(s))
        .peekable();
    while let Some(&size) = wanted.peek() {
        if frontier.size == size {
            roots.insert(size, frontier.root());
            wanted.next();
        } else {
            frontier.push(leaves[(frontier.size - start) as usize]);
        }
    }

    let mut signers = BTreeSet::new();
    let mut covered = 0;
    let mut last: Option<(u64, Hash, &String)> = None;
    for (cp, text) in &parsed {
        let at = Position::Checkpoint(cp.size);
        let keys = match note::verify(text, trusted) {
            Ok((_, keys)) => keys,
            Err(e) => return fail(at, format!("{e}"), vec![(*text).clone()]),
        };
        if cp.origin != origin {
            return fail(
                at,
                format!("origin {:?} is not this log's origin {origin:?}", cp.origin),
                vec![(*text).clone()],
            );
        }
        // The very key that signed (name, id and public key, not the name
        // alone: a node's rotated key shares its name) must be in the
        // roster at an entry the checkpoint covers.
        for key in &keys {
            let in_roster = roster
                .iter()
                .any(|(k, seq)| k == key && *seq < cp.size.max(1));
            if !in_roster {
                return fail(
                    at,
                    format!(
                        "signed by {} with key {}, which is not in the log's key roster before size {}",
                        key.name,
                        hex::encode(key.id()),
                        cp.size
                    ),
                    vec![(*text).clone()],
                );
            }
        }
        if let Some((size, root, other)) = last {
            if size == cp.size && root != cp.root {
                return fail(
                    at,
                    "two signed checkpoints of the same size with different roots: the log forked",
                    vec![other.clone(), (*text).clone()],
                );
            }
        }
        if cp.size > n {
            return fail(
                at,
                format!("the checkpoint covers {} entries but the export holds {n}: entries were truncated", cp.size),
                vec![(*text).clone()],
            );
        }
        if cp.size < start {
            return fail(
                at,
                format!("the checkpoint signs the first {} entries, and the export starts at entry {start}: check it against the archive that holds them", cp.size),
                vec![(*text).clone()],
            );
        }
        let rebuilt = roots[&cp.size];
        if rebuilt != cp.root {
            let from = last.map(|l| l.0).unwrap_or(start);
            return fail(
                at,
                format!("entries in [{from}, {}) do not rebuild the signed root: they were changed after signing", cp.size),
                vec![
                    format!("signed root: {}", hex::encode(cp.root)),
                    format!("rebuilt root: {}", hex::encode(rebuilt)),
                    (*text).clone(),
                ],
            );
        }
        signers.extend(keys.into_iter().map(|k| k.name));
        covered = covered.max(cp.size);
        last = Some((cp.size, cp.root, text));
    }
    if parsed.is_empty() {
        return fail(
            Position::Export,
            "no checkpoint: nothing in the export is signed",
            vec![],
        );
    }
    if let Some((cp, text)) = &since {
        let at = Position::Since(cp.size);
        if cp.origin != origin {
            return fail(
                at,
                format!(
                    "the pinned checkpoint is of log {:?}, the export of {origin:?}",
                    cp.origin
                ),
                vec![(*text).clone()],
            );
        }
        if cp.size > n {
            return fail(
                at,
                format!("the export ends at {n} entries, before the {} the pinned checkpoint signs: the log was cut back or rolled back", cp.size),
                vec![(*text).clone()],
            );
        }
        if cp.size < start {
            return fail(
                at,
                format!("the export starts at entry {start}, after the {} entries the pinned checkpoint signs: pin a checkpoint of this export, or verify the archive that holds them", cp.size),
                vec![(*text).clone()],
            );
        }
        let rebuilt = roots[&cp.size];
        if rebuilt != cp.root {
            return fail(
                at,
                format!("the export's first {} entries do not rebuild the pinned root: the history you saw before was rewritten", cp.size),
                vec![
                    format!("pinned root: {}", hex::encode(cp.root)),
                    format!("rebuilt root: {}", hex::encode(rebuilt)),
                    (*text).clone(),
                ],
            );
        }
        covered = covered.max(cp.size);
    }
    if opts.require_covered && covered < n {
        return fail(
            Position::Seq(covered),
            format!("the last {} entries (from seq {covered}) are signed by no checkpoint, and --require-covered was given", n - covered),
            vec![],
        );
    }
    // The header is not signed, but a file cut short after its last
    // checkpoint (or padded) is caught here rather than passing quietly.
    if announced != (n - start, parsed.len() as u64) {
        return fail(
            Position::Export,
            format!(
                "the header announces {} entries and {} checkpoints, the export holds {} and {}: lines were lost or added",
                announced.0,
                announced.1,
                n - start,
                parsed.len()
            ),
            vec![first.to_string()],
        );
    }
    let latest_checkpoint = last.map(|(_, _, text)| text.clone()).unwrap_or_default();
    Ok(Summary {
        origin,
        start,
        entries: n - start,
        checkpoints: parsed.len() as u64,
        covered,
        uncovered: n - covered,
        since: since.map(|(cp, _)| cp.size),
        latest_checkpoint,
        first_time_ms: first_time,
        last_time_ms: last_time,
        signers,
        roster: roster.iter().map(|(k, _)| k.encode()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::note::{sign, Checkpoint};
    use crate::audit::Decision;
    use ed25519_dalek::SigningKey;

    const ORIGIN: &str = "grant-ledger/test";

    fn build(n: u64, key: &SigningKey, name: &str, cps: &[u64]) -> (Vec<Entry>, Vec<String>) {
        let vk = VerifierKey::new(name, key.verifying_key());
        let mut entries = Vec::new();
        let mut prev = [0u8; 32];
        let mut f = Frontier::default();
        let mut notes = Vec::new();
        for seq in 0..n {
            let mut e = Entry::new(
                if seq == 0 {
                    Kind::KeyRoster
                } else {
                    Kind::Check
                },
                1000 + seq as i64,
            );
            e.seq = seq;
            e.log_index = seq + 1;
            if seq == 0 {
                e.actor = name.into();
                e.detail = vk.encode();
            } else {
                e.subject = format!("spiffe://example.org/agent/{seq}");
                e.decision = Decision::Allow;
            }
            e.prev_hash = prev;
            prev = e.hash();
            f.push(e.leaf_hash());
            entries.push(e);
            if cps.contains(&f.size) {
                let c = Checkpoint {
                    origin: ORIGIN.into(),
                    size: f.size,
                    root: f.root(),
                    time_ms: 5000,
                };
                notes.push(sign(&c, name, key));
            }
        }
        (entries, notes)
    }

    fn render(entries: &[Entry], notes: &[String]) -> String {
        let mut out =
            vec![Line::header(ORIGIN, entries.len() as u64, notes.len() as u64).to_json()];
        out.extend(entries.iter().cloned().map(|e| Line::entry(e).to_json()));
        out.extend(
            notes
                .iter()
                .map(|n| Line::Checkpoint { note: n.clone() }.to_json()),
        );
        out.join("\n") + "\n"
    }

    #[test]
    fn a_good_export_verifies() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let (e, n) = build(20, &k, "node-1", &[5, 12, 20]);
        let trusted = vec![VerifierKey::new("node-1", k.verifying_key())];
        let s = verify(&render(&e, &n), &trusted).unwrap();
        assert_eq!((s.entries, s.checkpoints, s.covered), (20, 3, 20));
        assert_eq!(
            s.signers.into_iter().collect::<Vec<_>>(),
            vec!["node-1".to_string()]
        );
    }

    /// An export of the chain of `e` pruned before `start`, with the
    /// checkpoints of `n` at or past it.
    fn render_pruned(e: &[Entry], n: &[String], start: u64) -> String {
        let leaves: Vec<Hash> = e.iter().map(|x| x.leaf_hash()).collect();
        let mut f = Frontier::default();
        for l in &leaves[..start as usize] {
            f.push(*l);
        }
        let roster = e[..start as usize]
            .iter()
            .filter(|x| x.kind == Kind::KeyRoster)
            .map(|x| StartRoster {
                entry: x.clone(),
                hash: x.hash(),
                path: merkle::inclusion_proof(x.seq as usize, &leaves[..start as usize]),
            })
            .collect();
        let st = Start {
            seq: start,
            prev_hash: e[start as usize - 1].hash(),
            frontier: f.subtrees.iter().map(|(_, h)| *h).collect(),
            roster,
        };
        let notes: Vec<&String> = n
            .iter()
            .filter(|t| note::parse(t).unwrap().checkpoint.size >= start)
            .collect();
        let rest = &e[start as usize..];
        let mut out = vec![
            Line::header(ORIGIN, rest.len() as u64, notes.len() as u64).to_json(),
            Line::Start(st).to_json(),
        ];
        out.extend(rest.iter().cloned().map(|x| Line::entry(x).to_json()));
        out.extend(
            notes
                .iter()
                .map(|t| Line::Checkpoint { note: (*t).clone() }.to_json()),
        );
        out.join("\n") + "\n"
    }

    #[test]
    fn an_export_of_a_pruned_chain_verifies_from_its_start_and_its_start_is_checked() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let (e, n) = build(20, &k, "node-1", &[5, 12, 20]);
        let trusted = vec![VerifierKey::new("node-1", k.verifying_key())];
        let text = render_pruned(&e, &n, 8);
        let s = verify(&text, &trusted).unwrap();
        assert_eq!(
            (s.start, s.entries, s.checkpoints, s.covered),
            (8, 12, 2, 20)
        );
        // The line round-trips, and a field it does not define is refused.
        let line = text.lines().nth(1).unwrap();
        assert_eq!(Line::parse(line).unwrap().to_json(), line);
        assert!(Line::parse(&line.replacen("{", "{\"note\":\"x\",", 1)).is_err());
        let fails = |t: String| verify(&t, &trusted).unwrap_err();
        // A frontier that is not the chain's: the roster's paths do not
        // lead to its root (nor would any signed root be rebuilt from it).
        let start = Line::parse(line).unwrap();
        let Line::Start(st) = start else { panic!() };
        let mut forged = st.clone();
        forged.frontier[0][0] ^= 1;
        let err = fails(text.replacen(line, &Line::Start(forged).to_json(), 1));
        assert_eq!(err.at, Position::Start, "{err}");
        // A prev_hash that is not entry 7's hash.
        let mut forged = st.clone();
        forged.prev_hash[0] ^= 1;
        let err = fails(text.replacen(line, &Line::Start(forged).to_json(), 1));
        assert_eq!(err.at, Position::Seq(8), "{err}");
        // A roster entry whose path does not lead to that root.
        let mut forged = st.clone();
        forged.roster[0].path[0][0] ^= 1;
        let err = fails(text.replacen(line, &Line::Start(forged).to_json(), 1));
        assert_eq!(err.at, Position::Start, "{err}");
        // Without the roster entry, the signing key is in no roster.
        let mut forged = st.clone();
        forged.roster.clear();
        let err = fails(text.replacen(line, &Line::Start(forged).to_json(), 1));
        assert!(err.problem.contains("not in the log's key roster"), "{err}");
        // A frontier of the wrong length, or no start line at all.
        let mut forged = st.clone();
        forged.frontier.pop();
        assert_eq!(
            fails(text.replacen(line, &Line::Start(forged).to_json(), 1)).at,
            Position::Start
        );
        assert_eq!(
            fails(text.replacen(&format!("{line}\n"), "", 1)).at,
            Position::Seq(0)
        );
        // A checkpoint of fewer entries than the start cannot be checked.
        let before = Line::Checkpoint { note: n[0].clone() }.to_json();
        let err =
            fails(text.replacen("\"checkpoints\":2", "\"checkpoints\":3", 1) + &before + "\n");
        assert_eq!(err.at, Position::Checkpoint(5), "{err}");
        // A pin from before the start.
        let opts = Options {
            since: Some(n[0].clone()),
            ..Options::default()
        };
        let err = verify_observed(&text, &trusted, &opts, &mut |_| {}).unwrap_err();
        assert_eq!(err.at, Position::Since(5), "{err}");
    }

    #[test]
    fn an_unsigned_tail_cut_short_is_caught_by_the_header_count() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let (e, n) = build(20, &k, "node-1", &[5, 12]);
        let trusted = vec![VerifierKey::new("node-1", k.verifying_key())];
        let whole = render(&e, &n);
        assert_eq!(verify(&whole, &trusted).unwrap().covered, 12);
        // Drop entry 19 (after the last checkpoint) but keep the header.
        let cut: Vec<&str> = whole
            .lines()
            .filter(|l| !l.contains("\"seq\":19,"))
            .collect();
        let err = verify(&cut.join("\n"), &trusted).unwrap_err();
        assert_eq!(err.at, Position::Export);
        assert!(err.problem.contains("announces 20 entries"), "{err}");
        // A header without its counts, or with a field it does not know, is refused.
        let bare = whole.replacen(",\"entries\":20", "", 1);
        assert!(verify(&bare, &trusted).is_err());
        let extra = whole.replacen("\"checkpoints\":2", "\"checkpoints\":2,\"x\":1", 1);
        assert!(verify(&extra, &trusted).is_err());
    }
}
