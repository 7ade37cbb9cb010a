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
#[derive(Debug, Clone, PartialEq)]
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
        ];
        let own: &[&str] = match ty {
            "header" => &["format", "version", "origin", "entries", "checkpoints"],
            "entry" => &["entry", "hash"],
            "checkpoint" => &["note"],
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

/// Threads that read lines at once (at most; fewer on fewer cores).
pub const VERIFY_THREADS_MAX: usize = 16;

/// What one line holds, found without looking at any other line.
enum Read {
    Header,
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
    // Lines are read and hashed in parallel, a block at a time; the chain,
    // which needs them in order, is checked after each block in one pass.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(VERIFY_THREADS_MAX);
    for block in lines[1..].chunks(VERIFY_PROGRESS_LINES) {
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
                Err(e) => {
                    return fail(
                        Position::Line(i + 1),
                        format!("unreadable line: {e}"),
                        vec![l.to_string()],
                    )
                }
            };
            let seq = leaves.len() as u64;
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
    let n = leaves.len() as u64;

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
    let mut roots: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut frontier = Frontier::default();
    let mut sizes: Vec<u64> = parsed.iter().map(|(c, _)| c.size).collect();
    sizes.extend(since.as_ref().map(|(c, _)| c.size));
    sizes.sort_unstable();
    let mut wanted = sizes.into_iter().filter(|s| *s <= n).peekable();
    while let Some(&size) = wanted.peek() {
        if frontier.size == size {
            roots.insert(size, frontier.root());
            wanted.next();
        } else {
            frontier.push(leaves[frontier.size as usize]);
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
        let rebuilt = roots[&cp.size];
        if rebuilt != cp.root {
            let from = last.map(|l| l.0).unwrap_or(0);
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
    if announced != (n, parsed.len() as u64) {
        return fail(
            Position::Export,
            format!(
                "the header announces {} entries and {} checkpoints, the export holds {n} and {}: lines were lost or added",
                announced.0,
                announced.1,
                parsed.len()
            ),
            vec![first.to_string()],
        );
    }
    let latest_checkpoint = last.map(|(_, _, text)| text.clone()).unwrap_or_default();
    Ok(Summary {
        origin,
        entries: n,
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
