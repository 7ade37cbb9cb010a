//! One audit entry and its canonical bytes (audit_v1).
//!
//! Canonical bytes, in this order:
//! `0x01` (format version), seq (u64 BE), log_index (u64 BE), time_ms
//! (i64 BE), kind (u8), actor, subject, task_id, grant_id, resource, action,
//! intent (each a string), decision (u8), reason, detail (strings),
//! policy_ids (u32 BE count, then each string), prev_hash (32 bytes).
//! A string is its UTF-8 length (u32 BE) then its bytes.
//! The entry hash is SHA-256 over the canonical bytes.

use std::borrow::Cow;

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
    /// A privileged call an authenticated caller made was refused before it
    /// changed anything: `actor` the caller, `action` the gRPC method,
    /// `reason` the error code and message, the request's target in
    /// `subject`, `task_id`, `grant_id` and `resource`. One entry may stand
    /// for many refusals of one caller and method (`detail` says how many).
    Refused = 15,
    /// The chain's start moved: the entries before it were pruned on every
    /// replica, after an operator archived them. `actor` the caller,
    /// `reason` theirs, `detail` the new and previous start as JSON.
    Prune = 16,
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
/// zeros for the first), which chains the log. Its JSON form (in exports)
/// has exactly these fields: one it does not define is refused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
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

/// Canonical bytes that are not an entry's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an audit entry's canonical bytes: {0}")]
pub struct CanonicalError(String);

impl Kind {
    fn from_u8(b: u8) -> Result<Kind, CanonicalError> {
        use Kind::*;
        [
            Issue,
            Check,
            Revoke,
            CompleteTask,
            Expire,
            Membership,
            KeyRoster,
            Roles,
            Policy,
            BeginTask,
            AbortTask,
            ExpireTask,
            Renew,
            Delegate,
            Refused,
            Prune,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
        .ok_or_else(|| CanonicalError(format!("kind {b}")))
    }
}

impl Decision {
    fn from_u8(b: u8) -> Result<Decision, CanonicalError> {
        [Decision::None, Decision::Allow, Decision::Deny]
            .into_iter()
            .find(|d| *d as u8 == b)
            .ok_or_else(|| CanonicalError(format!("decision {b}")))
    }
}

/// Reads canonical bytes front to back.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CanonicalError> {
        if self.0.len() < n {
            return Err(CanonicalError(format!(
                "{n} bytes wanted, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CanonicalError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CanonicalError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
    fn string(&mut self) -> Result<String, CanonicalError> {
        let n = u32::from_be_bytes(self.array()?) as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| CanonicalError("a string is not UTF-8".into()))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The canonical bytes' one writer, over borrowed fields: an [`Entry`] and
/// an [`EntryRef`] both write through it.
struct Canonical<'a, P: AsRef<str>> {
    seq: u64,
    log_index: u64,
    time_ms: i64,
    kind: Kind,
    /// actor, subject, task_id, grant_id, resource, action, intent.
    strings: [&'a str; 7],
    decision: Decision,
    reason: &'a str,
    detail: &'a str,
    policy_ids: &'a [P],
    prev_hash: &'a Hash,
}

impl<P: AsRef<str>> Canonical<'_, P> {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.log_index.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.push(self.kind as u8);
        for s in self.strings {
            put_str(out, s);
        }
        out.push(self.decision as u8);
        put_str(out, self.reason);
        put_str(out, self.detail);
        out.extend_from_slice(&(self.policy_ids.len() as u32).to_be_bytes());
        for p in self.policy_ids {
            put_str(out, p.as_ref());
        }
        out.extend_from_slice(self.prev_hash);
    }
}

/// An entry's JSON form read without copying its strings (they are
/// borrowed from the line unless they hold escapes): how the verifier reads
/// a million of them. The same fields as [`Entry`], and no others.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct EntryRef<'a> {
    pub seq: u64,
    pub log_index: u64,
    pub time_ms: i64,
    pub kind: Kind,
    #[serde(borrow)]
    pub actor: Cow<'a, str>,
    #[serde(borrow)]
    pub subject: Cow<'a, str>,
    #[serde(borrow)]
    pub task_id: Cow<'a, str>,
    #[serde(borrow)]
    pub grant_id: Cow<'a, str>,
    #[serde(borrow)]
    pub resource: Cow<'a, str>,
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    #[serde(borrow)]
    pub intent: Cow<'a, str>,
    pub decision: Decision,
    #[serde(borrow)]
    pub reason: Cow<'a, str>,
    #[serde(borrow)]
    pub detail: Cow<'a, str>,
    pub policy_ids: Vec<String>,
    #[serde(borrow)]
    pub prev_hash: Cow<'a, str>,
}

impl EntryRef<'_> {
    /// The previous entry's hash this entry names, and its canonical bytes
    /// written into `out` (cleared first).
    pub fn canonical_into(&self, out: &mut Vec<u8>) -> Result<Hash, String> {
        let prev_hash =
            super::parse_hash_hex(&self.prev_hash).map_err(|e| format!("prev_hash: {e}"))?;
        out.clear();
        Canonical {
            seq: self.seq,
            log_index: self.log_index,
            time_ms: self.time_ms,
            kind: self.kind,
            strings: [
                &self.actor,
                &self.subject,
                &self.task_id,
                &self.grant_id,
                &self.resource,
                &self.action,
                &self.intent,
            ],
            decision: self.decision,
            reason: &self.reason,
            detail: &self.detail,
            policy_ids: &self.policy_ids,
            prev_hash: &prev_hash,
        }
        .write(out);
        Ok(prev_hash)
    }

    /// The owned entry.
    pub fn to_entry(&self) -> Result<Entry, String> {
        let prev_hash =
            super::parse_hash_hex(&self.prev_hash).map_err(|e| format!("prev_hash: {e}"))?;
        Ok(Entry {
            seq: self.seq,
            log_index: self.log_index,
            time_ms: self.time_ms,
            kind: self.kind,
            actor: self.actor.to_string(),
            subject: self.subject.to_string(),
            task_id: self.task_id.to_string(),
            grant_id: self.grant_id.to_string(),
            resource: self.resource.to_string(),
            action: self.action.to_string(),
            intent: self.intent.to_string(),
            decision: self.decision,
            reason: self.reason.to_string(),
            detail: self.detail.to_string(),
            policy_ids: self.policy_ids.clone(),
            prev_hash,
        })
    }
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
        Canonical {
            seq: self.seq,
            log_index: self.log_index,
            time_ms: self.time_ms,
            kind: self.kind,
            strings: [
                &self.actor,
                &self.subject,
                &self.task_id,
                &self.grant_id,
                &self.resource,
                &self.action,
                &self.intent,
            ],
            decision: self.decision,
            reason: &self.reason,
            detail: &self.detail,
            policy_ids: &self.policy_ids,
            prev_hash: &self.prev_hash,
        }
        .write(&mut out);
        out
    }

    /// The entry whose canonical bytes `b` are: the inverse of
    /// [`Entry::canonical_bytes`]. Every byte must be accounted for.
    pub fn from_canonical_bytes(b: &[u8]) -> Result<Entry, CanonicalError> {
        let mut r = Reader(b);
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(CanonicalError(format!("format version {version}")));
        }
        let seq = u64::from_be_bytes(r.array()?);
        let log_index = u64::from_be_bytes(r.array()?);
        let time_ms = i64::from_be_bytes(r.array()?);
        let kind = Kind::from_u8(r.u8()?)?;
        let mut e = Entry::new(kind, time_ms);
        e.seq = seq;
        e.log_index = log_index;
        for s in [
            &mut e.actor,
            &mut e.subject,
            &mut e.task_id,
            &mut e.grant_id,
            &mut e.resource,
            &mut e.action,
            &mut e.intent,
        ] {
            *s = r.string()?;
        }
        e.decision = Decision::from_u8(r.u8()?)?;
        e.reason = r.string()?;
        e.detail = r.string()?;
        let n = u32::from_be_bytes(r.array()?);
        // Each id takes at least its 4-byte length: a count beyond what is
        // left is damage, not a reason to allocate.
        if n as usize > r.0.len() / 4 {
            return Err(CanonicalError(format!(
                "{n} policy ids in {} bytes",
                r.0.len()
            )));
        }
        e.policy_ids = (0..n).map(|_| r.string()).collect::<Result<_, _>>()?;
        e.prev_hash = r.array()?;
        if !r.0.is_empty() {
            return Err(CanonicalError(format!(
                "{} bytes after the entry",
                r.0.len()
            )));
        }
        Ok(e)
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
    fn canonical_bytes_read_back_to_the_entry_and_nothing_else() {
        let mut e = Entry::new(Kind::Delegate, -5);
        e.seq = u64::MAX;
        e.log_index = 7;
        e.actor = "spiffe://example.org/a".into();
        e.intent = "triage ✓".into();
        e.decision = Decision::Deny;
        e.policy_ids = vec!["p1".into(), String::new()];
        e.prev_hash = [9; 32];
        let b = e.canonical_bytes();
        assert_eq!(Entry::from_canonical_bytes(&b).unwrap(), e);
        for k in 1..=14u8 {
            assert_eq!(Kind::from_u8(k).unwrap() as u8, k);
        }
        // Every truncation, a trailing byte, an unknown kind or decision and
        // a huge policy count are errors.
        for n in 0..b.len() {
            assert!(Entry::from_canonical_bytes(&b[..n]).is_err(), "{n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(Entry::from_canonical_bytes(&long).is_err());
        let mut bad = b.clone();
        bad[25] = 99; // kind
        assert!(Entry::from_canonical_bytes(&bad).is_err());
        let mut e2 = Entry::new(Kind::Check, 0);
        e2.policy_ids = vec![];
        let mut b2 = e2.canonical_bytes();
        let at = b2.len() - 32 - 4;
        b2[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Entry::from_canonical_bytes(&b2).is_err());
    }

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
