//! Every key of the state machine's sled tree, declared in one place.
//!
//! The state lives in one sled tree, so that a snapshot is one ordered copy
//! of it; an applied entry's writes land together across a crash through
//! the `journal`. Keys start with a one-byte prefix naming
//! their space; integers are big-endian so keys sort in numeric order;
//! variable-length parts inside a key are length-prefixed so no prefix of one
//! key is mistaken for another's.
//!
//! Values are JSON of the ledger's records; audit entries are their
//! canonical bytes (`grant_proto::audit::entry`).

use grant_proto::audit::export::Line;
use grant_proto::audit::Hash;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::ledger::{Chain, Counted, DedupeRecord, GrantRecord, TaskRecord, TaskState, Write};
use crate::limits::AUDIT_KEY_BYTES;
use crate::raft::codec;
use crate::raft::typ::LogId;

/// On-disk format version, checked at start-up.
/// 1: first format (grants, task/subject/expiry indexes, dedupe, completed
///    tasks, audit records, meta).
/// 2: the audit chain: entries are audit_v1 export lines with their hash,
///    plus leaf hashes, tree roots by size, checkpoints, the key roster and
///    the chain head in meta.
/// 3: the watch index (audit sequence numbers of revocations, expirations,
///    task completions and policy changes), so that Watch need not read
///    every check entry.
/// 4: tasks are records of their own (TASK, with a deadline index) in
///    place of the completed-task markers (0x07) and grant counts (0x0f);
///    grants record their delegation parent, indexed (CHILDREN); active
///    grants are counted per subject and per task (ACTIVE), for quotas.
/// 5: where the state stands (last applied log id, chain head, leader
///    time) is one key, META_APPLIED, in place of three; an open task's
///    deadline key is written when the task opens or its deadline moves,
///    not again with every grant it gets.
/// 6: leaf hashes are kept `LEAVES_PER_KEY` to a key (AUDIT_LEAVES) in
///    place of one key each (0x0a): an entry's audit entries add one or two
///    keys for their leaves, not one per entry; an audit entry is stored as
///    its canonical bytes, not as its JSON export line.
/// 7: an applied entry's audit entries share AUDIT keys, up to
///    `limits::AUDIT_KEY_BYTES` each, in place of one key each: a batch of
///    n checks writes a few keys for its audit entries, not n.
/// 8: retired grants are indexed by expiry (RETIRED), so that the sweep
///    removes them from the state once past their expiry and the clock-skew
///    margin (`Write::Purge`); the Raft log moved out of sled (raft-wal/).
pub const FORMAT_VERSION: u32 = 8;

pub const GRANT: u8 = 0x01;
pub const BY_TASK: u8 = 0x02;
pub const BY_SUBJECT: u8 = 0x03;
pub const EXPIRY: u8 = 0x04;
pub const DEDUPE: u8 = 0x05;
pub const DEDUPE_BY_TIME: u8 = 0x06;
// 0x07 held completed-task markers until format 4.
/// The audit chain: seq of the key's first entry (u64 BE) -> that entry's
/// and the following entries' canonical bytes, each behind its length (u32
/// BE), up to `limits::AUDIT_KEY_BYTES` (see `append_audit`). An entry's
/// hash is over its canonical bytes; its export line is made from them
/// when read.
pub const AUDIT: u8 = 0x08;
pub const META: u8 = 0x09;
/// Leaf hashes of the audit chain: chunk (u64 BE, seq / LEAVES_PER_KEY) ->
/// the chunk's 32-byte leaf hashes in order, up to LEAVES_PER_KEY of them.
pub const AUDIT_LEAVES: u8 = 0x0a;
pub const TREE_ROOT: u8 = 0x0b;
pub const CHECKPOINT: u8 = 0x0c;
pub const ROSTER: u8 = 0x0d;
/// Token verification keys: kid -> JWK `x`.
pub const TOKEN_KEY: u8 = 0x0e;
// 0x0f held grant counts per task until format 4 (TaskRecord has them).
/// The audit entries a revocation watcher needs: seq (u64 BE) -> empty.
pub const WATCH: u8 = 0x10;
/// Tasks: task id -> ledger::TaskRecord.
pub const TASK: u8 = 0x11;
/// Open tasks by deadline: deadline (ms BE) + task id -> empty.
pub const TASK_DEADLINE: u8 = 0x12;
/// Delegated grants by parent: parent id (length-prefixed) + child id -> empty.
pub const CHILDREN: u8 = 0x13;
/// Active grants per subject (`s`) or task (`t`) + name -> u64 BE.
pub const ACTIVE: u8 = 0x14;
/// Retired (revoked or expired) grants by expiry: expiry (ms BE) + grant
/// id -> empty. The sweep removes a grant from the state, with every key
/// naming it, once its expiry is past the clock-skew margin.
pub const RETIRED: u8 = 0x15;

/// Where the state stands (`Applied`): rewritten by every applied entry,
/// so it is one key (an entry's fixed cost in sled is per key).
pub const META_APPLIED: &[u8] = b"\x09applied";
pub const META_MEMBERSHIP: &[u8] = b"\x09membership";
pub const META_FORMAT_VERSION: &[u8] = b"\x09format_version";
/// The replicated role mapping: (log index, canonical JSON). Absent until
/// the first `SetRoles`; the config file's mapping applies until then.
pub const META_ROLES: &[u8] = b"\x09roles";
/// The replicated policy set: (log index, ledger::PolicyRecord). Absent
/// until the first `SetPolicy`; grants alone decide until then.
pub const META_POLICY: &[u8] = b"\x09policy";

/// The value of META_APPLIED.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    /// The audit chain's head as of `last_applied`.
    pub chain: Chain,
    /// Leader time of the last applied command: the time of entries
    /// (membership changes) whose log entry carries none.
    pub last_time_ms: i64,
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 2).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn lp(s: &str) -> Vec<u8> {
    let len = u16::try_from(s.len()).expect("field lengths are limited far below 64 KiB");
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

fn ms(t: i64) -> [u8; 8] {
    (t.max(0) as u64).to_be_bytes()
}

pub fn grant(id: &str) -> Vec<u8> {
    key(GRANT, &[id.as_bytes()])
}
/// Prefix of all index keys of one task; the grant id follows.
pub fn by_task_prefix(task: &str) -> Vec<u8> {
    key(BY_TASK, &[&lp(task)])
}
pub fn active(of: &Counted) -> Vec<u8> {
    match of {
        Counted::Subject(s) => key(ACTIVE, &[b"s", s.as_bytes()]),
        Counted::Task(t) => key(ACTIVE, &[b"t", t.as_bytes()]),
    }
}

/// Prefix of the children index of one grant; the child's id follows.
pub fn children_prefix(parent: &str) -> Vec<u8> {
    key(CHILDREN, &[&lp(parent)])
}
pub fn by_subject_prefix(subject: &str) -> Vec<u8> {
    key(BY_SUBJECT, &[&lp(subject)])
}
pub fn expiry(at_ms: i64, id: &str) -> Vec<u8> {
    key(EXPIRY, &[&ms(at_ms), id.as_bytes()])
}
pub fn expiry_upto(at_ms: i64) -> Vec<u8> {
    // Every expiry key with time <= at_ms sorts below this one.
    key(EXPIRY, &[&ms(at_ms.saturating_add(1))])
}
pub fn retired(at_ms: i64, id: &str) -> Vec<u8> {
    key(RETIRED, &[&ms(at_ms), id.as_bytes()])
}
/// Every retired key with expiry before `at_ms` sorts below this one.
pub fn retired_before(at_ms: i64) -> Vec<u8> {
    key(RETIRED, &[&ms(at_ms)])
}
pub fn dedupe(request_id: &str) -> Vec<u8> {
    key(DEDUPE, &[request_id.as_bytes()])
}
pub fn dedupe_by_time(at_ms: i64, request_id: &str) -> Vec<u8> {
    key(DEDUPE_BY_TIME, &[&ms(at_ms), request_id.as_bytes()])
}
pub fn task(task: &str) -> Vec<u8> {
    key(TASK, &[task.as_bytes()])
}
pub fn task_deadline(at_ms: i64, task: &str) -> Vec<u8> {
    key(TASK_DEADLINE, &[&ms(at_ms), task.as_bytes()])
}
pub fn task_deadline_upto(at_ms: i64) -> Vec<u8> {
    key(TASK_DEADLINE, &[&ms(at_ms.saturating_add(1))])
}
pub fn audit(seq: u64) -> Vec<u8> {
    key(AUDIT, &[&seq.to_be_bytes()])
}
pub fn watch(seq: u64) -> Vec<u8> {
    key(WATCH, &[&seq.to_be_bytes()])
}
/// Whether Watch serves the entries of this kind.
pub fn watched(kind: grant_proto::audit::Kind) -> bool {
    use grant_proto::audit::Kind;
    matches!(
        kind,
        Kind::Revoke
            | Kind::Expire
            | Kind::CompleteTask
            | Kind::AbortTask
            | Kind::ExpireTask
            | Kind::Policy
    )
}
/// Leaf hashes per AUDIT_LEAVES key (2 KiB at most). sled's cost of a write
/// is mostly per key, and a check batch of n made n leaf keys of 32 bytes
/// each; now it appends to the last one or two chunks.
pub const LEAVES_PER_KEY: u64 = 64;
pub fn audit_leaves(chunk: u64) -> Vec<u8> {
    key(AUDIT_LEAVES, &[&chunk.to_be_bytes()])
}

/// Append the leaf hashes of one entry's audit entries, whose sequence
/// numbers run from `first`, to their chunks; `stored(chunk)` reads what a
/// chunk holds before this entry.
pub fn append_leaves(
    first: u64,
    leaves: &[Hash],
    stored: impl Fn(u64) -> std::io::Result<Vec<u8>>,
    batch: &mut WriteSet,
) -> std::io::Result<()> {
    let (mut seq, mut rest) = (first, leaves);
    while !rest.is_empty() {
        let chunk = seq / LEAVES_PER_KEY;
        let at = (seq % LEAVES_PER_KEY) as usize;
        let mut v = if at == 0 { Vec::new() } else { stored(chunk)? };
        if v.len() != at * 32 {
            return Err(std::io::Error::other(format!(
                "audit leaf chunk {chunk} holds {} bytes where {} were expected",
                v.len(),
                at * 32
            )));
        }
        let n = (LEAVES_PER_KEY as usize - at).min(rest.len());
        for h in &rest[..n] {
            v.extend_from_slice(h);
        }
        batch.insert(audit_leaves(chunk), v);
        seq += n as u64;
        rest = &rest[n..];
    }
    Ok(())
}

/// Store one applied entry's audit entries, whose seqs run from `first`,
/// several to an AUDIT key: a key takes entries while its value stays
/// within `AUDIT_KEY_BYTES` (an entry larger than that, a policy change say,
/// has a key of its own). sled's cost of a write is mostly per key, and a
/// check batch of n made n audit keys. Keys are never appended to across
/// entries, so no stored value is read back.
pub fn append_audit<'a>(
    first: u64,
    entries: impl IntoIterator<Item = &'a [u8]>,
    batch: &mut WriteSet,
) {
    let mut start = first;
    let mut v: Vec<u8> = Vec::new();
    for (seq, e) in (first..).zip(entries) {
        if !v.is_empty() && v.len() + 4 + e.len() > AUDIT_KEY_BYTES {
            batch.insert(audit(start), std::mem::take(&mut v));
            start = seq;
        }
        let len = u32::try_from(e.len()).expect("an audit entry is far below 4 GiB");
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(e);
    }
    if !v.is_empty() {
        batch.insert(audit(start), v);
    }
}

/// The entries an AUDIT key holds, as (seq, canonical bytes), in order.
pub fn audit_group<'a>(k: &[u8], v: &'a [u8]) -> std::io::Result<Vec<(u64, &'a [u8])>> {
    let damaged = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let first = k
        .get(1..9)
        .filter(|_| k.len() == 9 && k[0] == AUDIT)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| damaged(format!("audit key {k:02x?} is not 9 bytes under 0x08")))?;
    let mut out = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let seq = first + out.len() as u64;
        let entry = rest
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
            .and_then(|len| rest.get(4..4 + len));
        let Some(entry) = entry else {
            return Err(damaged(format!(
                "audit key {first} is cut short inside entry {seq}"
            )));
        };
        out.push((seq, entry));
        rest = &rest[4 + entry.len()..];
    }
    if out.is_empty() {
        return Err(damaged(format!("audit key {first} holds no entry")));
    }
    Ok(out)
}

pub fn tree_root(size: u64) -> Vec<u8> {
    key(TREE_ROOT, &[&size.to_be_bytes()])
}
pub fn checkpoint(size: u64) -> Vec<u8> {
    key(CHECKPOINT, &[&size.to_be_bytes()])
}
pub fn token_key(kid: &str) -> Vec<u8> {
    key(TOKEN_KEY, &[kid.as_bytes()])
}

/// Prefix of every key recorded under a key name; the verifier key follows.
pub fn roster_prefix(name: &str) -> Vec<u8> {
    key(ROSTER, &[&lp(name)])
}

/// The id that ends an index key after `prefix`.
pub fn suffix_id(k: &[u8], prefix_len: usize) -> String {
    String::from_utf8_lossy(&k[prefix_len..]).into_owned()
}

pub fn decode_time_key(k: &[u8]) -> (i64, String) {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[1..9]);
    (
        u64::from_be_bytes(b) as i64,
        String::from_utf8_lossy(&k[9..]).into_owned(),
    )
}

/// The writes of one applied entry, as keys and values, so that a snapshot
/// in progress can record what they overwrite before they land.
#[derive(Default)]
pub struct WriteSet(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl WriteSet {
    pub fn insert(&mut self, k: impl Into<Vec<u8>>, v: impl AsRef<[u8]>) {
        self.0.push((k.into(), Some(v.as_ref().to_vec())));
    }
    pub fn remove(&mut self, k: impl Into<Vec<u8>>) {
        self.0.push((k.into(), None));
    }
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|(k, _)| k.as_slice())
    }
    /// The writes in order: (key, Some(value)) puts, (key, None) removes.
    pub fn ops(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.0.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))
    }
    pub fn into_ops(self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.0
    }
}

/// The index keys of a grant that live as long as its record: by task, by
/// subject, and in its parent's children if delegated.
fn grant_index_keys(g: &GrantRecord) -> Vec<Vec<u8>> {
    let with_id = |mut prefix: Vec<u8>| {
        prefix.extend_from_slice(g.grant_id.as_bytes());
        prefix
    };
    let mut keys = vec![
        with_id(by_task_prefix(&g.task_id)),
        with_id(by_subject_prefix(&g.subject)),
    ];
    if !g.parent_grant_id.is_empty() {
        keys.push(with_id(children_prefix(&g.parent_grant_id)));
    }
    keys
}

/// The grant whose GRANT key `w` writes, if any.
pub fn grant_written(w: &Write) -> Option<&str> {
    match w {
        Write::InsertGrant(g)
        | Write::Retire(g)
        | Write::Renew { grant: g, .. }
        | Write::Purge(g) => Some(&g.grant_id),
        _ => None,
    }
}

/// Turn one ledger write into sled operations.
pub fn encode_write(w: &Write, batch: &mut WriteSet) {
    match w {
        Write::InsertGrant(g) => {
            batch.insert(grant(&g.grant_id), codec::encode(g));
            for k in grant_index_keys(g) {
                batch.insert(k, &[][..]);
            }
            batch.insert(expiry(g.expires_at_ms, &g.grant_id), &[][..]);
        }
        Write::Retire(g) => {
            batch.insert(grant(&g.grant_id), codec::encode(g));
            batch.remove(expiry(g.expires_at_ms, &g.grant_id));
            batch.insert(retired(g.expires_at_ms, &g.grant_id), &[][..]);
        }
        Write::Purge(g) => {
            // Every key InsertGrant and Retire wrote for it.
            batch.remove(grant(&g.grant_id));
            for k in grant_index_keys(g) {
                batch.remove(k);
            }
            batch.remove(retired(g.expires_at_ms, &g.grant_id));
        }
        Write::Renew {
            grant: g,
            previous_expires_at_ms,
        } => {
            batch.insert(grant(&g.grant_id), codec::encode(g));
            batch.remove(expiry(*previous_expires_at_ms, &g.grant_id));
            batch.insert(expiry(g.expires_at_ms, &g.grant_id), &[][..]);
        }
        Write::PutDedupe { request_id, record } => {
            batch.insert(dedupe(request_id), codec::encode(record));
            batch.insert(dedupe_by_time(record.applied_at_ms, request_id), &[][..]);
        }
        Write::DeleteDedupe {
            request_id,
            applied_at_ms,
        } => {
            batch.remove(dedupe(request_id));
            batch.remove(dedupe_by_time(*applied_at_ms, request_id));
        }
        Write::ActiveCount { of, count: 0 } => batch.remove(active(of)),
        Write::ActiveCount { of, count } => batch.insert(active(of), &count.to_be_bytes()[..]),
        Write::PutTask(t) => {
            batch.insert(task(&t.task_id), codec::encode(t));
            let deadline = task_deadline(t.deadline_ms, &t.task_id);
            if t.state == TaskState::Open {
                batch.insert(deadline, &[][..]);
            } else {
                batch.remove(deadline);
            }
        }
        Write::UpdateTask(t) => {
            debug_assert_eq!(t.state, TaskState::Open, "only open tasks are updated");
            batch.insert(task(&t.task_id), codec::encode(t));
        }
        Write::Audit(c) => {
            // Its bytes and its leaf hash: `append_audit` and
            // `append_leaves`, once for the whole entry.
            if watched(c.entry.kind) {
                batch.insert(watch(c.entry.seq), &[][..]);
            }
        }
        Write::RosterKey { name, verifier_key } => {
            let mut k = roster_prefix(name);
            k.extend_from_slice(verifier_key.as_bytes());
            batch.insert(k, &[][..]);
        }
        Write::PutCheckpoint { size, note } => {
            batch.insert(checkpoint(*size), note.as_bytes());
        }
        Write::TokenKey { kid, x } => {
            batch.insert(token_key(kid), x.as_bytes());
        }
        Write::PutRoles { index, roles_json } => {
            batch.insert(META_ROLES, codec::encode(&(index, roles_json)));
        }
        Write::PutPolicy { index, record } => {
            batch.insert(META_POLICY, codec::encode(&(index, record)));
        }
    }
}

pub fn decode_grant(v: &[u8]) -> std::io::Result<GrantRecord> {
    codec::decode(v)
}
pub fn decode_task(v: &[u8]) -> std::io::Result<TaskRecord> {
    codec::decode(v)
}
pub fn decode_dedupe(v: &[u8]) -> std::io::Result<DedupeRecord> {
    codec::decode(v)
}
/// A stored audit entry (its canonical bytes) and its hash.
pub fn decode_audit(v: &[u8]) -> std::io::Result<(grant_proto::audit::Entry, Hash)> {
    let entry = grant_proto::audit::Entry::from_canonical_bytes(v)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((entry, sha2::Sha256::digest(v).into()))
}

/// A stored audit entry as its export line.
pub fn audit_line(v: &[u8]) -> std::io::Result<Vec<u8>> {
    let (entry, hash) = decode_audit(v)?;
    Ok(Line::Entry { entry, hash }.to_json().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_fill_their_chunks_in_order_across_entries() {
        let mut stored: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
        let leaf = |i: u64| [i as u8; 32];
        // Entries of 1, 70 and 60 audit entries: seqs 0, 1..=70, 71..=130.
        let mut next = 0;
        for n in [1u64, 70, 60] {
            let leaves: Vec<Hash> = (next..next + n).map(leaf).collect();
            let mut batch = WriteSet::default();
            let read = |c| Ok(stored.get(&audit_leaves(c)).cloned().unwrap_or_default());
            append_leaves(next, &leaves, read, &mut batch).unwrap();
            for (k, v) in batch.into_ops() {
                stored.insert(k, v.unwrap());
            }
            next += n;
        }
        let all: Vec<u8> = stored.values().flatten().copied().collect();
        let expected: Vec<u8> = (0..131).flat_map(leaf).collect();
        assert_eq!(all, expected);
        assert_eq!(stored.len(), 3, "131 leaves in chunks of {LEAVES_PER_KEY}");
        assert_eq!(stored[&audit_leaves(0)].len(), 64 * 32);
        // A chunk shorter than the chain says is damage, reported, not patched.
        let mut batch = WriteSet::default();
        let short = |_| Ok(vec![0u8; 32]);
        let e = append_leaves(131, &[leaf(131)], short, &mut batch).unwrap_err();
        assert!(e.to_string().contains("chunk 2"), "{e}");
    }

    #[test]
    fn audit_entries_share_keys_up_to_the_byte_limit() {
        // Entries of 1000 bytes: four fit a key (4 * 1004 <= 4096), the
        // fifth starts the next; one over the limit has a key of its own.
        let small: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i; 1000]).collect();
        let big = vec![0xbb; AUDIT_KEY_BYTES + 1];
        let entries: Vec<&[u8]> = small[..5]
            .iter()
            .map(|e| &e[..])
            .chain([&big[..]])
            .chain(small[5..].iter().map(|e| &e[..]))
            .collect();
        let mut batch = WriteSet::default();
        append_audit(100, entries.iter().copied(), &mut batch);
        let ops = batch.into_ops();
        let firsts: Vec<Vec<u8>> = ops.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(firsts, [100, 104, 105, 106].map(audit));
        let mut read = Vec::new();
        for (k, v) in &ops {
            let v = v.as_ref().unwrap();
            assert!(v.len() <= AUDIT_KEY_BYTES || v.len() == big.len() + 4);
            read.extend(audit_group(k, v).unwrap());
        }
        let want: Vec<(u64, &[u8])> = (100..).zip(entries.iter().copied()).collect();
        assert_eq!(read, want);
        // No entries, no key.
        let mut none = WriteSet::default();
        append_audit(7, [], &mut none);
        assert_eq!(none.keys().count(), 0);
    }

    #[test]
    fn a_damaged_audit_value_is_an_error_not_a_short_read() {
        let mut batch = WriteSet::default();
        append_audit(5, [&b"abc"[..], b"defg"], &mut batch);
        let (k, v) = batch.into_ops().pop().unwrap();
        let v = v.unwrap();
        assert_eq!(audit_group(&k, &v).unwrap().len(), 2);
        let e = audit_group(&k, &v[..v.len() - 1]).unwrap_err();
        assert!(e.to_string().contains("cut short inside entry 6"), "{e}");
        assert!(audit_group(&k, &[]).is_err(), "a key holds an entry");
        assert!(audit_group(&k[..8], &v).is_err(), "a key is 9 bytes");
    }

    #[test]
    fn length_prefix_keeps_tasks_apart() {
        // "ab" + grant "c..." must not fall under task "abc".
        assert!(!by_task_prefix("ab").starts_with(&by_task_prefix("abc")));
        let mut k = by_task_prefix("ab");
        k.extend_from_slice(b"cdef");
        assert!(!k.starts_with(&by_task_prefix("abc")));
    }

    #[test]
    fn expiry_keys_sort_by_time() {
        assert!(expiry(999, "z") < expiry(1000, "a"));
        assert!(expiry(1000, "zzzz") < expiry_upto(1000));
        assert!(expiry(1001, "a") > expiry_upto(1000));
        assert_eq!(
            decode_time_key(&expiry(1234, "gid")),
            (1234, "gid".to_string())
        );
    }
}
