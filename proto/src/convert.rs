//! Audit entries between the audit format and the gRPC message, in one
//! place for the server (which sends them) and clients (which check them).

use crate::audit::{Entry, Hash};
use crate::v1::AuditEntry;

fn name<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown {what} {s:?}"))
}

pub fn entry_to_pb(e: &Entry, hash: &Hash) -> AuditEntry {
    AuditEntry {
        seq: e.seq,
        log_index: e.log_index,
        time_ms: e.time_ms,
        kind: name(e.kind),
        actor: e.actor.clone(),
        subject: e.subject.clone(),
        task_id: e.task_id.clone(),
        grant_id: e.grant_id.clone(),
        resource: e.resource.clone(),
        action: e.action.clone(),
        intent: e.intent.clone(),
        decision: name(e.decision),
        reason: e.reason.clone(),
        detail: e.detail.clone(),
        policy_ids: e.policy_ids.clone(),
        prev_hash: e.prev_hash.to_vec(),
        hash: hash.to_vec(),
    }
}

/// Back to the audit format, so canonical bytes and hashes can be recomputed.
pub fn entry_from_pb(e: &AuditEntry) -> Result<Entry, String> {
    Ok(Entry {
        seq: e.seq,
        log_index: e.log_index,
        time_ms: e.time_ms,
        kind: parse("kind", &e.kind)?,
        actor: e.actor.clone(),
        subject: e.subject.clone(),
        task_id: e.task_id.clone(),
        grant_id: e.grant_id.clone(),
        resource: e.resource.clone(),
        action: e.action.clone(),
        intent: e.intent.clone(),
        decision: parse("decision", &e.decision)?,
        reason: e.reason.clone(),
        detail: e.detail.clone(),
        policy_ids: e.policy_ids.clone(),
        prev_hash: e
            .prev_hash
            .as_slice()
            .try_into()
            .map_err(|_| "prev_hash is not 32 bytes".to_string())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Decision, Kind};

    #[test]
    fn round_trip() {
        let mut e = Entry::new(Kind::CompleteTask, 5);
        e.decision = Decision::Deny;
        e.policy_ids = vec!["p1".into()];
        let h = e.hash();
        let pb = entry_to_pb(&e, &h);
        assert_eq!(pb.kind, "complete_task");
        assert_eq!(entry_from_pb(&pb).unwrap(), e);
    }
}
