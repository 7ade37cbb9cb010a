//! One audit entry and its canonical bytes (audit_v1).
//!
//! Canonical bytes, in this order:
//! `0x01` (format version), seq (u64 BE), log_index (u64 BE), time_ms
//! (i64 BE), kind (u8), actor, subject, task_id, grant_id, resource, action,
//! intent (each a string), decision (u8), reason, detail (strings),
//! policy_ids (u32 BE count, then each string), prev_hash (32 bytes).
//! A string is its UTF-8 length (u32 BE) then its bytes.
//! The entry hash is SHA-256 over the canonical bytes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Hash;

pub const FORMAT_VERSION: u8 = 1;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Issue = 1,
    Check = 2,
    Revoke = 3,
    CompleteTask = 4,
    Expire = 5,
    Membership = 6,
    KeyRoster = 7,
    /// The replicated role mapping changed; `detail` holds the new one.
    Roles = 8,
    /// The policy set changed; `reason` holds the SHA-256 of the policy
    /// text, `detail` the policy set (policies, schema, no-match rule) as JSON.
    Policy = 9,
    /// A task began: `resource` holds its declared tools (comma-separated),
    /// `detail` its deadline as JSON.
    BeginTask = 10,
    /// A task was aborted: its grants are revoked; `reason` is the caller's.
    AbortTask = 11,
    /// A task's deadline passed and the sweep closed it.
    ExpireTask = 12,
    /// A grant's expiry was extended; `detail` holds the new and previous
    /// expiry as JSON. A renewal the policy denied has decision `deny`.
    Renew = 13,
    /// A grant's holder delegated a sub-grant (`actor` is the holder);
    /// `detail` names the parent, the sub-task and the depth as JSON.
    Delegate = 14,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Not a decision: a state change (issue, revoke, ...).
    None = 0,
    Allow = 1,
    Deny = 2,
}

/// One audit entry. `prev_hash` is the hash of the entry before it (all
/// zeros for the first), which chains the log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub log_index: u64,
    pub time_ms: i64,
    pub kind: Kind,
    pub actor: String,
    pub subject: String,
    pub task_id: String,
    pub grant_id: String,
    /// The tool or resource the entry is about.
    pub resource: String,
    pub action: String,
    pub intent: String,
    pub decision: Decision,
    pub reason: String,
    /// Kind-specific detail: the public key of a roster change, the voters
    /// of a membership change.
    pub detail: String,
    pub policy_ids: Vec<String>,
    #[serde(with = "super::hex32")]
    pub prev_hash: Hash,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Entry {
    /// A blank entry of `kind`, to be filled in.
    pub fn new(kind: Kind, time_ms: i64) -> Entry {
        Entry {
            seq: 0,
            log_index: 0,
            time_ms,
            kind,
            actor: String::new(),
            subject: String::new(),
            task_id: String::new(),
            grant_id: String::new(),
            resource: String::new(),
            action: String::new(),
            intent: String::new(),
            decision: Decision::None,
            reason: String::new(),
            detail: String::new(),
            policy_ids: Vec::new(),
            prev_hash: [0; 32],
        }
    }

    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.intent.len() + self.subject.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.log_index.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.push(self.kind as u8);
        for s in [
            &self.actor,
            &self.subject,
            &self.task_id,
            &self.grant_id,
            &self.resource,
            &self.action,
            &self.intent,
        ] {
            put_str(&mut out, s);
        }
        out.push(self.decision as u8);
        put_str(&mut out, &self.reason);
        put_str(&mut out, &self.detail);
        out.extend_from_slice(&(self.policy_ids.len() as u32).to_be_bytes());
        for p in &self.policy_ids {
            put_str(&mut out, p);
        }
        out.extend_from_slice(&self.prev_hash);
        out
    }

    /// SHA-256 over the canonical bytes: what the next entry's prev_hash holds.
    pub fn hash(&self) -> Hash {
        Sha256::digest(self.canonical_bytes()).into()
    }

    /// The RFC 9162 leaf hash of this entry: SHA-256(0x00 || canonical bytes).
    pub fn leaf_hash(&self) -> Hash {
        super::merkle::leaf_hash(&self.canonical_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_hash() {
        let mut e = Entry::new(Kind::Check, 1000);
        e.subject = "spiffe://example.org/a".into();
        let h = e.hash();
        let mut variants = Vec::new();
        let mut v = e.clone();
        v.seq = 1;
        variants.push(v);
        let mut v = e.clone();
        v.time_ms = 1001;
        variants.push(v);
        let mut v = e.clone();
        v.kind = Kind::Issue;
        variants.push(v);
        let mut v = e.clone();
        v.decision = Decision::Allow;
        variants.push(v);
        let mut v = e.clone();
        v.policy_ids = vec!["p".into()];
        variants.push(v);
        let mut v = e.clone();
        v.prev_hash[31] = 1;
        variants.push(v);
        // Moving bytes between adjacent strings changes the encoding too.
        let mut v = e.clone();
        v.actor = "spiffe://example.org/a".into();
        v.subject = String::new();
        variants.push(v);
        for v in variants {
            assert_ne!(v.hash(), h, "{v:?}");
        }
    }
}
