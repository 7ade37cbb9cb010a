//! The stored form of the state's records: protobuf (prost), not JSON.
//!
//! Grants, tasks and dedupe records are the state's bulk, one or more per
//! active grant, and every snapshot and catch-up carries them. Their stored
//! form is declared here as protobuf messages, apart from the ledger's
//! types (which also travel in log entries): a field's tag, not its Rust
//! name, is what the disk holds, so the ledger's types can be renamed
//! without a new format, and a new format is a new tag here and a new
//! `keyspace::FORMAT_VERSION`.
//!
//! prost writes fields in tag order and the records hold no maps, so one
//! record always encodes to the same bytes: replicas that apply the same
//! entries hold byte-identical states (the digest compares them). A record
//! that does not decode, or names a state this version does not know, is
//! an `InvalidData` error, never a default.
//!
//! As a `.proto` (docs/storage.md, "Records"):
//!
//! ```proto
//! message Scope { string resource = 1; repeated string actions = 2; }
//! message Grant {
//!   string grant_id = 1; string subject = 2; string task_id = 3;
//!   repeated Scope scopes = 4; string intent = 5; string issuer = 6;
//!   int64 issued_at_ms = 7; int64 expires_at_ms = 8; string token_hash = 9;
//!   int64 max_expires_at_ms = 10; GrantState state = 11;
//!   int64 revoked_at_ms = 12; string revoke_reason = 13;
//!   uint64 issued_index = 14; string parent_grant_id = 15;
//!   string sub_task = 16; uint32 depth = 17;
//! }
//! enum GrantState { ACTIVE = 0; REVOKED = 1; EXPIRED = 2; }
//! message Task {
//!   string task_id = 1; string owner = 2; string intent = 3;
//!   repeated string declared_tools = 4; int64 begun_at_ms = 5;
//!   int64 deadline_ms = 6; TaskState state = 7; int64 closed_at_ms = 8;
//!   string closed_by = 9; string close_reason = 10; uint64 grant_count = 11;
//!   string fingerprint = 12; uint64 begun_index = 13;
//! }
//! enum TaskState { OPEN = 0; COMPLETED = 1; ABORTED = 2; EXPIRED = 3; }
//! message Dedupe {
//!   string grant_id = 1; string fingerprint = 2; int64 applied_at_ms = 3;
//!   AuditRef audit = 4;
//! }
//! message AuditRef { uint64 seq = 1; bytes hash = 2; }
//! // META_APPLIED, rewritten by every applied entry.
//! message Applied {
//!   bytes last_applied = 1;  // openraft's LogId, as raft::codec writes it
//!   bytes prev_hash = 2;     // the chain's last entry hash
//!   uint64 size = 3;         // entries in the chain
//!   bytes frontier = 4;      // its perfect subtrees' roots, tallest first,
//!                            // 32 bytes each: one per bit set in size
//!   int64 chain_time_ms = 5; // the last entry's time_ms
//!   int64 last_time_ms = 6;  // leader time of the last applied command
//! }
//! ```

use std::io;

use prost::Message;

use grant_proto::audit::merkle::Frontier;

use super::keyspace::Applied;

use crate::ledger::{
    AuditRef, Chain, DedupeRecord, GrantRecord, GrantState, Scope, TaskRecord, TaskState,
};
use crate::raft::codec;

#[derive(Clone, PartialEq, Message)]
struct StoredScope {
    #[prost(string, tag = "1")]
    resource: String,
    #[prost(string, repeated, tag = "2")]
    actions: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredGrant {
    #[prost(string, tag = "1")]
    grant_id: String,
    #[prost(string, tag = "2")]
    subject: String,
    #[prost(string, tag = "3")]
    task_id: String,
    #[prost(message, repeated, tag = "4")]
    scopes: Vec<StoredScope>,
    #[prost(string, tag = "5")]
    intent: String,
    #[prost(string, tag = "6")]
    issuer: String,
    #[prost(int64, tag = "7")]
    issued_at_ms: i64,
    #[prost(int64, tag = "8")]
    expires_at_ms: i64,
    #[prost(string, tag = "9")]
    token_hash: String,
    #[prost(int64, tag = "10")]
    max_expires_at_ms: i64,
    #[prost(int32, tag = "11")]
    state: i32,
    #[prost(int64, tag = "12")]
    revoked_at_ms: i64,
    #[prost(string, tag = "13")]
    revoke_reason: String,
    #[prost(uint64, tag = "14")]
    issued_index: u64,
    #[prost(string, tag = "15")]
    parent_grant_id: String,
    #[prost(string, tag = "16")]
    sub_task: String,
    #[prost(uint32, tag = "17")]
    depth: u32,
}

#[derive(Clone, PartialEq, Message)]
struct StoredTask {
    #[prost(string, tag = "1")]
    task_id: String,
    #[prost(string, tag = "2")]
    owner: String,
    #[prost(string, tag = "3")]
    intent: String,
    #[prost(string, repeated, tag = "4")]
    declared_tools: Vec<String>,
    #[prost(int64, tag = "5")]
    begun_at_ms: i64,
    #[prost(int64, tag = "6")]
    deadline_ms: i64,
    #[prost(int32, tag = "7")]
    state: i32,
    #[prost(int64, tag = "8")]
    closed_at_ms: i64,
    #[prost(string, tag = "9")]
    closed_by: String,
    #[prost(string, tag = "10")]
    close_reason: String,
    #[prost(uint64, tag = "11")]
    grant_count: u64,
    #[prost(string, tag = "12")]
    fingerprint: String,
    #[prost(uint64, tag = "13")]
    begun_index: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StoredAuditRef {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    hash: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredDedupe {
    #[prost(string, tag = "1")]
    grant_id: String,
    #[prost(string, tag = "2")]
    fingerprint: String,
    #[prost(int64, tag = "3")]
    applied_at_ms: i64,
    #[prost(message, optional, tag = "4")]
    audit: Option<StoredAuditRef>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredApplied {
    #[prost(bytes = "vec", tag = "1")]
    last_applied: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    prev_hash: Vec<u8>,
    #[prost(uint64, tag = "3")]
    size: u64,
    #[prost(bytes = "vec", tag = "4")]
    frontier: Vec<u8>,
    #[prost(int64, tag = "5")]
    chain_time_ms: i64,
    #[prost(int64, tag = "6")]
    last_time_ms: i64,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("stored {what}: {e}"))
}

pub fn encode_grant(g: &GrantRecord) -> Vec<u8> {
    StoredGrant {
        grant_id: g.grant_id.clone(),
        subject: g.subject.clone(),
        task_id: g.task_id.clone(),
        scopes: g
            .scopes
            .iter()
            .map(|s| StoredScope {
                resource: s.resource.clone(),
                actions: s.actions.clone(),
            })
            .collect(),
        intent: g.intent.clone(),
        issuer: g.issuer.clone(),
        issued_at_ms: g.issued_at_ms,
        expires_at_ms: g.expires_at_ms,
        token_hash: g.token_hash.clone(),
        max_expires_at_ms: g.max_expires_at_ms,
        state: match g.state {
            GrantState::Active => 0,
            GrantState::Revoked => 1,
            GrantState::Expired => 2,
        },
        revoked_at_ms: g.revoked_at_ms,
        revoke_reason: g.revoke_reason.clone(),
        issued_index: g.issued_index,
        parent_grant_id: g.parent_grant_id.clone(),
        sub_task: g.sub_task.clone(),
        depth: g.depth,
    }
    .encode_to_vec()
}

pub fn decode_grant(b: &[u8]) -> io::Result<GrantRecord> {
    let g = StoredGrant::decode(b).map_err(|e| invalid("grant", e))?;
    Ok(GrantRecord {
        state: match g.state {
            0 => GrantState::Active,
            1 => GrantState::Revoked,
            2 => GrantState::Expired,
            n => return Err(invalid("grant", format_args!("unknown state {n}"))),
        },
        grant_id: g.grant_id,
        subject: g.subject,
        task_id: g.task_id,
        scopes: g
            .scopes
            .into_iter()
            .map(|s| Scope {
                resource: s.resource,
                actions: s.actions,
            })
            .collect(),
        intent: g.intent,
        issuer: g.issuer,
        issued_at_ms: g.issued_at_ms,
        expires_at_ms: g.expires_at_ms,
        token_hash: g.token_hash,
        max_expires_at_ms: g.max_expires_at_ms,
        revoked_at_ms: g.revoked_at_ms,
        revoke_reason: g.revoke_reason,
        issued_index: g.issued_index,
        parent_grant_id: g.parent_grant_id,
        sub_task: g.sub_task,
        depth: g.depth,
    })
}

pub fn encode_task(t: &TaskRecord) -> Vec<u8> {
    StoredTask {
        task_id: t.task_id.clone(),
        owner: t.owner.clone(),
        intent: t.intent.clone(),
        declared_tools: t.declared_tools.clone(),
        begun_at_ms: t.begun_at_ms,
        deadline_ms: t.deadline_ms,
        state: match t.state {
            TaskState::Open => 0,
            TaskState::Completed => 1,
            TaskState::Aborted => 2,
            TaskState::Expired => 3,
        },
        closed_at_ms: t.closed_at_ms,
        closed_by: t.closed_by.clone(),
        close_reason: t.close_reason.clone(),
        grant_count: t.grant_count,
        fingerprint: t.fingerprint.clone(),
        begun_index: t.begun_index,
    }
    .encode_to_vec()
}

pub fn decode_task(b: &[u8]) -> io::Result<TaskRecord> {
    let t = StoredTask::decode(b).map_err(|e| invalid("task", e))?;
    Ok(TaskRecord {
        state: match t.state {
            0 => TaskState::Open,
            1 => TaskState::Completed,
            2 => TaskState::Aborted,
            3 => TaskState::Expired,
            n => return Err(invalid("task", format_args!("unknown state {n}"))),
        },
        task_id: t.task_id,
        owner: t.owner,
        intent: t.intent,
        declared_tools: t.declared_tools,
        begun_at_ms: t.begun_at_ms,
        deadline_ms: t.deadline_ms,
        closed_at_ms: t.closed_at_ms,
        closed_by: t.closed_by,
        close_reason: t.close_reason,
        grant_count: t.grant_count,
        fingerprint: t.fingerprint,
        begun_index: t.begun_index,
    })
}

pub fn encode_dedupe(d: &DedupeRecord) -> Vec<u8> {
    StoredDedupe {
        grant_id: d.grant_id.clone(),
        fingerprint: d.fingerprint.clone(),
        applied_at_ms: d.applied_at_ms,
        audit: d.audit.map(|a| StoredAuditRef {
            seq: a.seq,
            hash: a.hash.to_vec(),
        }),
    }
    .encode_to_vec()
}

pub fn decode_dedupe(b: &[u8]) -> io::Result<DedupeRecord> {
    let d = StoredDedupe::decode(b).map_err(|e| invalid("dedupe record", e))?;
    let audit = match d.audit {
        None => None,
        Some(a) => Some(AuditRef {
            seq: a.seq,
            hash: a.hash.as_slice().try_into().map_err(|_| {
                invalid(
                    "dedupe record",
                    format_args!("a hash of {} bytes", a.hash.len()),
                )
            })?,
        }),
    };
    Ok(DedupeRecord {
        grant_id: d.grant_id,
        fingerprint: d.fingerprint,
        applied_at_ms: d.applied_at_ms,
        audit,
    })
}

pub fn encode_applied(a: &Applied) -> Vec<u8> {
    StoredApplied {
        last_applied: a
            .last_applied
            .as_ref()
            .map(codec::encode)
            .unwrap_or_default(),
        prev_hash: a.chain.prev_hash.to_vec(),
        size: a.chain.frontier.size,
        frontier: a
            .chain
            .frontier
            .subtrees
            .iter()
            .flat_map(|(_, h)| *h)
            .collect(),
        chain_time_ms: a.chain.last_time_ms,
        last_time_ms: a.last_time_ms,
    }
    .encode_to_vec()
}

pub fn decode_applied(b: &[u8]) -> io::Result<Applied> {
    let bad = |e: &dyn std::fmt::Display| invalid("applied position", e);
    let a = StoredApplied::decode(b).map_err(|e| bad(&e))?;
    let last_applied = match a.last_applied.is_empty() {
        true => None,
        false => Some(codec::decode(&a.last_applied)?),
    };
    // A perfect subtree per bit set in the size, tallest first.
    let heights: Vec<u8> = (0..64u8).rev().filter(|h| a.size >> h & 1 == 1).collect();
    if a.frontier.len() != heights.len() * 32 {
        return Err(bad(&format_args!(
            "{} bytes of frontier for a chain of {} entries",
            a.frontier.len(),
            a.size
        )));
    }
    let subtrees = heights
        .into_iter()
        .zip(a.frontier.chunks_exact(32))
        .map(|(h, hash)| (h, hash.try_into().expect("chunks of 32")))
        .collect();
    Ok(Applied {
        last_applied,
        chain: Chain {
            prev_hash: a.prev_hash.as_slice().try_into().map_err(|_| {
                bad(&format_args!(
                    "a last entry hash of {} bytes",
                    a.prev_hash.len()
                ))
            })?,
            frontier: Frontier {
                size: a.size,
                subtrees,
            },
            last_time_ms: a.chain_time_ms,
        },
        last_time_ms: a.last_time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> GrantRecord {
        GrantRecord {
            grant_id: "g-1".into(),
            subject: "spiffe://example.org/agent".into(),
            task_id: "t-1".into(),
            scopes: vec![
                Scope {
                    resource: "tool://crm".into(),
                    actions: vec!["read".into(), "write".into()],
                },
                Scope {
                    resource: "tool://mail".into(),
                    actions: vec![],
                },
            ],
            intent: "summarise".into(),
            issuer: "orchestrator".into(),
            issued_at_ms: 1_700_000_000_000,
            expires_at_ms: 1_700_000_060_000,
            token_hash: "ab".repeat(32),
            max_expires_at_ms: 1_700_000_900_000,
            state: GrantState::Revoked,
            revoked_at_ms: 1_700_000_030_000,
            revoke_reason: "done".into(),
            issued_index: 42,
            parent_grant_id: "g-0".into(),
            sub_task: "fetch".into(),
            depth: 1,
        }
    }

    fn task() -> TaskRecord {
        TaskRecord {
            task_id: "t-1".into(),
            owner: "orchestrator".into(),
            intent: "summarise".into(),
            declared_tools: vec!["tool://crm".into()],
            begun_at_ms: 1,
            deadline_ms: 2,
            state: TaskState::Aborted,
            closed_at_ms: 3,
            closed_by: "ops".into(),
            close_reason: "stuck".into(),
            grant_count: 7,
            fingerprint: "cd".repeat(32),
            begun_index: 9,
        }
    }

    #[test]
    fn records_round_trip_in_every_state() {
        for state in [GrantState::Active, GrantState::Revoked, GrantState::Expired] {
            let g = GrantRecord { state, ..grant() };
            assert_eq!(decode_grant(&encode_grant(&g)).unwrap(), g);
        }
        for state in [
            TaskState::Open,
            TaskState::Completed,
            TaskState::Aborted,
            TaskState::Expired,
        ] {
            let t = TaskRecord { state, ..task() };
            assert_eq!(decode_task(&encode_task(&t)).unwrap(), t);
        }
        for audit in [
            None,
            Some(AuditRef {
                seq: 5,
                hash: [7; 32],
            }),
        ] {
            let d = DedupeRecord {
                grant_id: "g-1".into(),
                fingerprint: "ef".repeat(32),
                applied_at_ms: 11,
                audit,
            };
            assert_eq!(decode_dedupe(&encode_dedupe(&d)).unwrap(), d);
        }
    }

    #[test]
    fn the_applied_position_round_trips_at_every_chain_size() {
        let mut chain = Chain::default();
        let empty = Applied::default();
        assert_eq!(decode_applied(&encode_applied(&empty)).unwrap(), empty);
        for size in 0..300u64 {
            let a = Applied {
                last_applied: Some(openraft::testing::log_id::<crate::raft::TypeConfig>(
                    3,
                    2,
                    size + 1,
                )),
                chain: chain.clone(),
                last_time_ms: size as i64 * 7,
            };
            assert_eq!(decode_applied(&encode_applied(&a)).unwrap(), a, "at {size}");
            let e = grant_proto::audit::Entry::new(grant_proto::audit::Kind::Issue, size as i64);
            chain.append(e, size + 1);
        }
        // A frontier that does not match its size.
        let mut stored = StoredApplied::decode(
            &encode_applied(&Applied {
                chain,
                ..Default::default()
            })[..],
        )
        .unwrap();
        stored.size += 1;
        let e = decode_applied(&stored.encode_to_vec()).unwrap_err();
        assert!(e.to_string().contains("bytes of frontier"), "{e}");
    }

    #[test]
    fn a_record_encodes_to_the_same_bytes_every_time() {
        let g = grant();
        assert_eq!(encode_grant(&g), encode_grant(&g.clone()));
        assert_eq!(
            encode_grant(&decode_grant(&encode_grant(&g)).unwrap()),
            encode_grant(&g)
        );
    }

    #[test]
    fn the_binary_record_is_smaller_than_its_json() {
        let g = grant();
        let json = serde_json::to_vec(&g).unwrap();
        let binary = encode_grant(&g);
        assert!(
            binary.len() * 2 < json.len(),
            "{} vs {}",
            binary.len(),
            json.len()
        );
    }

    #[test]
    fn what_does_not_decode_is_an_error_not_a_default() {
        // A JSON record of an older format.
        let json = serde_json::to_vec(&grant()).unwrap();
        assert_eq!(
            decode_grant(&json).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A state no version wrote.
        let mut g = StoredGrant::decode(&encode_grant(&grant())[..]).unwrap();
        g.state = 9;
        let e = decode_grant(&g.encode_to_vec()).unwrap_err();
        assert!(e.to_string().contains("unknown state 9"), "{e}");
        let mut t = StoredTask::decode(&encode_task(&task())[..]).unwrap();
        t.state = -1;
        assert!(decode_task(&t.encode_to_vec()).is_err());
        // A hash that is not 32 bytes.
        let d = StoredDedupe {
            audit: Some(StoredAuditRef {
                seq: 1,
                hash: vec![0; 31],
            }),
            ..Default::default()
        };
        assert!(decode_dedupe(&d.encode_to_vec()).is_err());
        // A record cut inside a field (here the subject's string).
        let b = encode_grant(&grant());
        assert!(decode_grant(&b[..8]).is_err());
    }
}
