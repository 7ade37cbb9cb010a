//! Every key of the state machine's sled tree, declared in one place.
//!
//! The state lives in one sled tree, so that a snapshot is one ordered copy
//! of it; an applied entry's writes land together across a crash through
//! the `journal`. Keys start with a one-byte prefix naming
//! their space; integers are big-endian so keys sort in numeric order;
//! variable-length parts inside a key are length-prefixed so no prefix of one
//! key is mistaken for another's.
//!
//! Grants, tasks and dedupe records, the state's bulk, and where the state
//! stands (META_APPLIED, rewritten by every entry) are stored as protobuf
//! (`records`); the other meta values (membership, roles, policy, the
//! chain's start), written once in a while, are JSON. The audit chain is not
//! here: it is in the audit store (`audit_store`), and the state keeps its
//! head.

use grant_proto::audit::export::Line;
use grant_proto::audit::Hash;
use sha2::Digest;

use super::records;
use crate::ledger::{Chain, Counted, GrantRecord, TaskState, Write};
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
/// 9: the audit chain moved out of the state into the audit store
///    (`audit_store`: segments, tlog tiles, the watch index), beside the
///    generation's database; the state keeps its head (META_APPLIED). The
///    AUDIT, AUDIT_LEAVES, TREE_ROOT and WATCH key spaces are gone.
/// 10: snapshots carry the chain's head and the tile hashes near it
///    (AUDIT_TILES), not its entries; a store begun from one has a base
///    file and fetches the rest from a peer (`audit_fill`).
/// 11: the chain may start past entry 0 (META_AUDIT_START, written by a
///    prune); a roster key's value is the seq of the entry that recorded it;
///    audit segments hold 16,384 entries, not 65,536; closed tasks are
///    indexed by deadline (TASK_CLOSED) and leave the state.
/// 12: grants, tasks, dedupe records and META_APPLIED are protobuf
///    (`records`), not JSON.
pub const FORMAT_VERSION: u32 = 12;

pub const GRANT: u8 = 0x01;
pub const BY_TASK: u8 = 0x02;
pub const BY_SUBJECT: u8 = 0x03;
pub const EXPIRY: u8 = 0x04;
pub const DEDUPE: u8 = 0x05;
pub const DEDUPE_BY_TIME: u8 = 0x06;
// 0x07 held completed-task markers until format 4.
/// Not a key of the state: the tag of an audit entry in snapshot data,
/// seq (u64 BE) -> its canonical bytes. Until format 9 the chain's entries
/// were state keys under this prefix.
pub const AUDIT: u8 = 0x08;
pub const META: u8 = 0x09;
// 0x0a held leaf hashes, 0x0b tree roots by size, until format 9.
pub const CHECKPOINT: u8 = 0x0c;
pub const ROSTER: u8 = 0x0d;
/// Token verification keys: kid -> JWK `x`.
pub const TOKEN_KEY: u8 = 0x0e;
// 0x0f held grant counts per task until format 4 (TaskRecord has them).
// 0x10 held the watch index until format 9 (the audit store has it).
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
/// Not a key of the state: the tag of a run of tile hashes in snapshot
/// data, level (u8) + first index (u64 BE) -> the hashes, 32 bytes each
/// (`AuditFiles::tail`). A snapshot carries these in place of the chain.
pub const AUDIT_TILES: u8 = 0x16;
/// Closed tasks by deadline: deadline (ms BE) + task id -> empty. The sweep
/// removes a closed task from the state once its deadline is past the
/// clock-skew margin and no grant of it is left.
pub const TASK_CLOSED: u8 = 0x17;

/// The snapshot-data key of tile level `level`'s hashes from `from`.
pub fn audit_tiles(level: u32, from: u64) -> Vec<u8> {
    let mut k = vec![AUDIT_TILES, level as u8];
    k.extend_from_slice(&from.to_be_bytes());
    k
}

/// The (level, first index, hashes) of an `audit_tiles` pair.
pub fn decode_audit_tiles(k: &[u8], v: &[u8]) -> std::io::Result<super::audit_store::TileRun> {
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("snapshot data: malformed tile hashes {k:02x?}"),
        )
    };
    if k.len() != 10 || k[0] != AUDIT_TILES || !v.len().is_multiple_of(32) {
        return Err(bad());
    }
    let from = u64::from_be_bytes(k[2..].try_into().map_err(|_| bad())?);
    let hashes = v
        .chunks_exact(32)
        .map(|h| h.try_into().map_err(|_| bad()))
        .collect::<std::io::Result<_>>()?;
    Ok((k[1] as u32, from, hashes))
}

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
/// Where the audit chain starts (ledger::ChainStart). Absent until the
/// first prune: the chain starts at entry 0.
pub const META_AUDIT_START: &[u8] = b"\x09audit_start";

/// The value of META_APPLIED.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
pub fn task_closed(deadline_ms: i64, task: &str) -> Vec<u8> {
    key(TASK_CLOSED, &[&ms(deadline_ms), task.as_bytes()])
}
/// Every closed-task key with a deadline before `at_ms` sorts below this.
pub fn task_closed_before(at_ms: i64) -> Vec<u8> {
    key(TASK_CLOSED, &[&ms(at_ms)])
}
pub fn audit(seq: u64) -> Vec<u8> {
    key(AUDIT, &[&seq.to_be_bytes()])
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

/// (key name, verifier key) of a ROSTER key.
pub fn decode_roster_key(k: &[u8]) -> std::io::Result<(String, String)> {
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("state key {k:02x?}: not a roster key"),
        )
    };
    let len = u16::from_be_bytes(k.get(1..3).ok_or_else(bad)?.try_into().expect("2")) as usize;
    let name = k.get(3..3 + len).ok_or_else(bad)?;
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(&k[3 + len..]).into_owned(),
    ))
}

/// The id that ends an index key after `prefix`.
pub fn suffix_id(k: &[u8], prefix_len: usize) -> String {
    String::from_utf8_lossy(&k[prefix_len..]).into_owned()
}

/// The big-endian u64 after a key's one-byte prefix (a time or a chain
/// size). A key too short to hold it is damage, reported, not a panic.
fn prefixed_u64(k: &[u8]) -> std::io::Result<u64> {
    match k.get(1..9) {
        Some(b) => Ok(u64::from_be_bytes(b.try_into().expect("a slice of 8"))),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("state key {k:02x?}: too short for its space's number"),
        )),
    }
}

/// (time, id) of a key of a time-ordered space (EXPIRY, RETIRED,
/// TASK_DEADLINE, TASK_CLOSED, DEDUPE_BY_TIME).
pub fn decode_time_key(k: &[u8]) -> std::io::Result<(i64, String)> {
    Ok((
        prefixed_u64(k)? as i64,
        String::from_utf8_lossy(&k[9..]).into_owned(),
    ))
}

/// The chain size a CHECKPOINT key names.
pub fn decode_checkpoint_key(k: &[u8]) -> std::io::Result<u64> {
    prefixed_u64(k)
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
            batch.insert(grant(&g.grant_id), records::encode_grant(g));
            for k in grant_index_keys(g) {
                batch.insert(k, &[][..]);
            }
            batch.insert(expiry(g.expires_at_ms, &g.grant_id), &[][..]);
        }
        Write::Retire(g) => {
            batch.insert(grant(&g.grant_id), records::encode_grant(g));
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
            batch.insert(grant(&g.grant_id), records::encode_grant(g));
            batch.remove(expiry(*previous_expires_at_ms, &g.grant_id));
            batch.insert(expiry(g.expires_at_ms, &g.grant_id), &[][..]);
        }
        Write::PutDedupe { request_id, record } => {
            batch.insert(dedupe(request_id), records::encode_dedupe(record));
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
            batch.insert(task(&t.task_id), records::encode_task(t));
            let deadline = task_deadline(t.deadline_ms, &t.task_id);
            if t.state == TaskState::Open {
                batch.insert(deadline, &[][..]);
            } else {
                batch.remove(deadline);
                batch.insert(task_closed(t.deadline_ms, &t.task_id), &[][..]);
            }
        }
        Write::PurgeTask(t) => {
            batch.remove(task(&t.task_id));
            batch.remove(task_closed(t.deadline_ms, &t.task_id));
        }
        Write::UpdateTask(t) => {
            debug_assert_eq!(t.state, TaskState::Open, "only open tasks are updated");
            batch.insert(task(&t.task_id), records::encode_task(t));
        }
        // The audit store takes it (`audit_store`), not the state.
        Write::Audit(_) => {}
        Write::RosterKey {
            name,
            verifier_key,
            seq,
        } => {
            let mut k = roster_prefix(name);
            k.extend_from_slice(verifier_key.as_bytes());
            batch.insert(k, &seq.to_be_bytes()[..]);
        }
        Write::StartChain(start) => batch.insert(META_AUDIT_START, codec::encode(start)),
        Write::DropCheckpoint { size } => batch.remove(checkpoint(*size)),
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

pub use super::records::{
    decode_applied, decode_dedupe, decode_grant, decode_task, encode_applied,
};
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
            decode_time_key(&expiry(1234, "gid")).unwrap(),
            (1234, "gid".to_string())
        );
    }

    #[test]
    fn a_damaged_key_is_an_error_not_a_panic() {
        for k in [&[EXPIRY][..], &[EXPIRY, 0, 0, 0][..]] {
            let e = decode_time_key(k).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("too short"), "{e}");
        }
        assert!(decode_checkpoint_key(&[CHECKPOINT, 1]).is_err());
        assert_eq!(decode_checkpoint_key(&checkpoint(77)).unwrap(), 77);
        let mut k = roster_prefix("node-1");
        k.extend_from_slice(b"vkey");
        assert_eq!(
            decode_roster_key(&k).unwrap(),
            ("node-1".into(), "vkey".into())
        );
        assert!(decode_roster_key(&k[..2]).is_err());
        assert!(decode_roster_key(&k[..5]).is_err());
    }
}
