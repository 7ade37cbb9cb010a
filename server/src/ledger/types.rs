//! The log command (what the leader proposes), the stored records, and the
//! result of applying a command. These are the replicated format: changing a
//! field changes what every replica stores, so the storage format version in
//! storage::keyspace must change with it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use grant_policy::NoMatch;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub resource: String,
    pub actions: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantState {
    Active,
    Revoked,
    Expired,
}

/// A grant as stored. Holds the SHA-256 of its first token, never a token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    pub grant_id: String,
    pub subject: String,
    pub task_id: String,
    pub scopes: Vec<Scope>,
    pub intent: String,
    pub issuer: String,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    /// Hex SHA-256 of the token first handed out for this grant (kept to
    /// identify it; never the token itself).
    pub token_hash: String,
    /// How far renewals may take `expires_at_ms`: the issue time plus the
    /// longest TTL the cluster allowed then (`ttl_seconds_max`).
    pub max_expires_at_ms: i64,
    pub state: GrantState,
    pub revoked_at_ms: i64,
    pub revoke_reason: String,
    /// Log index of the entry that issued the grant.
    pub issued_index: u64,
    /// The grant this one was delegated from (empty: issued). A delegated
    /// grant lives in its parent's task, covers a subset of its scopes and
    /// expires no later; revoking the parent revokes it.
    pub parent_grant_id: String,
    /// What the delegated grant is for, within the task (free text).
    pub sub_task: String,
    /// 0 for an issued grant, its parent's + 1 for a delegated one.
    pub depth: u32,
}

impl GrantRecord {
    /// The state as of `now_ms`: an active grant past its expiry is expired,
    /// whether or not the sweep has retired it yet.
    pub fn state_at(&self, now_ms: i64) -> GrantState {
        match self.state {
            GrantState::Active if now_ms >= self.expires_at_ms => GrantState::Expired,
            s => s,
        }
    }

    pub fn covers(&self, resource: &str, action: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| s.resource == resource && s.actions.iter().any(|a| a == action))
    }

    /// The first (resource, action) of `scopes` this grant does not cover:
    /// what a delegation of them would widen.
    pub fn widened_by<'a>(&self, scopes: &'a [Scope]) -> Option<(&'a str, &'a str)> {
        scopes.iter().find_map(|s| {
            s.actions
                .iter()
                .find(|a| !self.covers(&s.resource, a))
                .map(|a| (s.resource.as_str(), a.as_str()))
        })
    }
}

/// What a request id was used for, kept for the dedupe window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DedupeRecord {
    pub grant_id: String,
    /// Hex SHA-256 over the request's parameters: a reuse of the id with
    /// other parameters is refused rather than answered with another grant.
    pub fingerprint: String,
    pub applied_at_ms: i64,
    /// The audit entry of the original Issue, so that a replay's receipt
    /// names it. Absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IssueCmd {
    pub request_id: String,
    pub fingerprint: String,
    pub grant_id: String,
    pub subject: String,
    pub task_id: String,
    pub scopes: Vec<Scope>,
    pub intent: String,
    pub issuer: String,
    pub token_hash: String,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    /// See GrantRecord::max_expires_at_ms.
    pub max_expires_at_ms: i64,
    /// The quotas of the node that took the request.
    pub quota: Quota,
}

/// Quotas on active grants, from the config of the node that takes the
/// request (carried in the command, so that every replica decides alike).
/// 0 means no quota.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    pub active_per_subject_max: u64,
    pub active_per_task_max: u64,
}

/// What the ledger counts active grants of.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counted {
    Subject(String),
    Task(String),
}

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Counted::Subject(s) => write!(f, "subject {s}"),
            Counted::Task(t) => write!(f, "task {t:?}"),
        }
    }
}

/// Delegate: the holder of an active grant (its subject, the `issuer` of
/// the new one) hands a sub-grant of a subset of its scopes, expiring no
/// later, to another workload, in the same task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DelegateCmd {
    /// The sub-grant, as an Issue (its `issuer` is the delegator).
    pub grant: IssueCmd,
    pub parent_grant_id: String,
    pub sub_task: String,
    /// The deepest delegation the taking node allows (its config).
    pub depth_max: u32,
}

/// Extend an active grant: its expiry becomes `expires_at_ms`, or as far
/// towards it as the grant's maximum lifetime and its task's deadline let.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RenewCmd {
    pub grant_id: String,
    pub expires_at_ms: i64,
    pub actor: String,
    pub now_ms: i64,
}

/// One check inside a batch entry. The token's signature was verified by
/// the node that took the request: the entry carries the grant it names,
/// or that it was forged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CheckCmd {
    /// Empty when the token names no grant the node could trust.
    pub grant_id: String,
    /// The token's signature did not verify with a cluster token key.
    #[serde(default)]
    pub forged: bool,
    pub identity: String,
    pub resource: String,
    pub action: String,
    pub actor: String,
    /// What the tool server says about the request (environment, ticket,
    /// ...), for the policy: see grant_policy::CheckQuery.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// The verified token's expiry (its `exp`, in ms): a grant that has
    /// left the state is answered EXPIRED by it. 0 when unknown.
    #[serde(default)]
    pub token_expires_at_ms: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RevokeCmd {
    pub grant_id: String,
    pub reason: String,
    pub actor: String,
    pub now_ms: i64,
}

/// Where a task stands. Only an open task takes grants; closing it (by
/// hand or at its deadline) is final.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Open,
    Completed,
    Aborted,
    /// Its deadline passed: closed by the leader's sweep.
    Expired,
}

/// A task as stored: what was declared when it began, and how it ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub task_id: String,
    /// The caller that began it; it may complete or abort it.
    pub owner: String,
    pub intent: String,
    /// The tools (resources) the task says it will use, for the policy
    /// (`context.declared_tools`).
    pub declared_tools: Vec<String>,
    pub begun_at_ms: i64,
    /// No grant of the task outlives it; the sweep closes the task then.
    pub deadline_ms: i64,
    pub state: TaskState,
    pub closed_at_ms: i64,
    /// Who closed it (empty: the deadline sweep) and why.
    pub closed_by: String,
    pub close_reason: String,
    /// Grants issued under the task (revoked and expired ones included).
    pub grant_count: u64,
    /// Hex SHA-256 over the Begin's parameters: a Begin retried with the
    /// same ones is answered with the task, other ones are refused.
    pub fingerprint: String,
    /// Log index of the entry that began it.
    pub begun_index: u64,
}

impl TaskRecord {
    /// The state as of `now_ms`: an open task past its deadline is
    /// expired, whether or not the sweep has closed it yet.
    pub fn state_at(&self, now_ms: i64) -> TaskState {
        match self.state {
            TaskState::Open if now_ms >= self.deadline_ms => TaskState::Expired,
            s => s,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BeginTaskCmd {
    pub task_id: String,
    pub owner: String,
    pub intent: String,
    pub declared_tools: Vec<String>,
    pub deadline_ms: i64,
    pub fingerprint: String,
    pub now_ms: i64,
}

/// Complete or abort a task: every active grant of it is revoked in the
/// same entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CloseTaskCmd {
    pub task_id: String,
    /// Completed or Aborted.
    pub outcome: TaskState,
    pub reason: String,
    pub actor: String,
    pub now_ms: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SweepCmd {
    pub now_ms: i64,
    /// Retired grants whose expiry is before this leave the state (the
    /// leader's time less `clock_skew_margin_ms`; carried in the command so
    /// that every replica removes the same ones). 0: none.
    #[serde(default)]
    pub purge_before_ms: i64,
}

/// Record a node's checkpoint signing key in the roster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegisterKeyCmd {
    pub node_id: u64,
    /// Verifier key text: `<name>+<key id>+<base64 key>`.
    pub verifier_key: String,
    /// The node's token signing key, as a JWK `kid` and `x` (empty in
    /// entries written before tokens were signed).
    #[serde(default)]
    pub token_kid: String,
    #[serde(default)]
    pub token_x: String,
    pub now_ms: i64,
}

/// Move the audit chain's start to `start.seq`: the entries before it are
/// pruned on every replica (docs/operations.md, "Retention"). The leader
/// read `start` from its store, which held them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PruneAuditCmd {
    pub start: ChainStart,
    pub actor: String,
    pub reason: String,
    pub now_ms: i64,
}

/// Replace the replicated role mapping (every role but `peer`, which each
/// node keeps from its own config so that no change can cut the nodes off
/// from each other).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SetRolesCmd {
    /// The mapping as canonical JSON (auth::roles::RolesConfig).
    pub roles_json: String,
    pub actor: String,
    pub now_ms: i64,
}

/// The replicated policy set: Cedar policies, the schema they are
/// validated against, and the decision when none matches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    pub policies: String,
    pub schema: String,
    pub no_match: NoMatch,
}

/// Hex SHA-256 of a replicated text (a role mapping, a policy set): the
/// audit entry of its change carries it.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
}

impl PolicyRecord {
    /// Hex SHA-256 of the policy text (its audit entry carries it).
    pub fn policies_sha256(&self) -> String {
        sha256_hex(&self.policies)
    }
}

/// Replace the policy set in force.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SetPolicyCmd {
    pub record: PolicyRecord,
    pub actor: String,
    pub now_ms: i64,
}

/// Calls refused before they changed anything, as a node saw them
/// (`api::refusals`): each becomes a `refused` audit entry. One may stand
/// for `count` refusals of one caller and method, between `first_ms` and
/// `last_ms`, beyond the per-caller rate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub caller: String,
    /// The gRPC method, `/package.Service/Method`.
    pub method: String,
    /// What the request named, where it names it.
    pub subject: String,
    pub task_id: String,
    pub grant_id: String,
    pub resource: String,
    /// The `x-grant-error` code and the message the caller was given.
    pub code: String,
    pub message: String,
    pub count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    /// The node that refused them.
    pub node_id: u64,
}

/// Who asked for which membership change (`change`: the method and its
/// arguments, as the audit entry's detail shows them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MembershipRequestCmd {
    pub actor: String,
    pub change: String,
    pub now_ms: i64,
}

/// A checkpoint the leader signed, to be kept by every replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CheckpointCmd {
    /// The C2SP signed note.
    pub note: String,
}

/// The log command: what the leader proposes. It is not the public request:
/// it carries the leader's time, generated ids and only hashes of secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Issue(IssueCmd),
    /// Many issues in one entry (group commit), decided in order: each
    /// sees what the ones before it wrote, as if each were an entry of
    /// its own. One result each (`CommandResult::Each`).
    Issues(Vec<IssueCmd>),
    /// Many checks in one entry (group commit), decided at one leader time.
    Checks {
        now_ms: i64,
        checks: Vec<CheckCmd>,
    },
    Revoke(RevokeCmd),
    /// Many revokes in one entry, decided in order as `Issues` are.
    Revokes(Vec<RevokeCmd>),
    Delegate(DelegateCmd),
    Renew(RenewCmd),
    BeginTask(BeginTaskCmd),
    CloseTask(CloseTaskCmd),
    Sweep(SweepCmd),
    RegisterKey(RegisterKeyCmd),
    Checkpoint(CheckpointCmd),
    SetRoles(SetRolesCmd),
    SetPolicy(SetPolicyCmd),
    PruneAudit(PruneAuditCmd),
    /// A caller asked for a membership change: recorded before it is made
    /// (openraft's membership entries carry no caller).
    MembershipRequest(MembershipRequestCmd),
    /// Refused calls, recorded (at most REFUSAL_BATCH_MAX).
    Refusals {
        now_ms: i64,
        refusals: Vec<Refusal>,
    },
}

impl Command {
    /// The leader time the command carries, if it carries one.
    pub fn time_ms(&self) -> Option<i64> {
        match self {
            Command::Issue(c) => Some(c.now_ms),
            Command::Issues(cs) => cs.iter().map(|c| c.now_ms).max(),
            Command::Checks { now_ms, .. } => Some(*now_ms),
            Command::Revoke(c) => Some(c.now_ms),
            Command::Revokes(cs) => cs.iter().map(|c| c.now_ms).max(),
            Command::Delegate(c) => Some(c.grant.now_ms),
            Command::Renew(c) => Some(c.now_ms),
            Command::BeginTask(c) => Some(c.now_ms),
            Command::CloseTask(c) => Some(c.now_ms),
            Command::Sweep(c) => Some(c.now_ms),
            Command::RegisterKey(c) => Some(c.now_ms),
            Command::Checkpoint(_) => None,
            Command::SetRoles(c) => Some(c.now_ms),
            Command::SetPolicy(c) => Some(c.now_ms),
            Command::PruneAudit(c) => Some(c.now_ms),
            Command::Refusals { now_ms, .. } => Some(*now_ms),
            Command::MembershipRequest(c) => Some(c.now_ms),
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Issue(c) => write!(f, "issue(req={}, grant={})", c.request_id, c.grant_id),
            Command::Issues(cs) => write!(f, "issues(n={})", cs.len()),
            Command::Checks { checks, .. } => write!(f, "checks(n={})", checks.len()),
            Command::Revoke(c) => write!(f, "revoke(grant={})", c.grant_id),
            Command::Revokes(cs) => write!(f, "revokes(n={})", cs.len()),
            Command::Delegate(c) => write!(
                f,
                "delegate(req={}, grant={}, parent={})",
                c.grant.request_id, c.grant.grant_id, c.parent_grant_id
            ),
            Command::Renew(c) => write!(f, "renew(grant={})", c.grant_id),
            Command::BeginTask(c) => write!(f, "begin_task(task={})", c.task_id),
            Command::CloseTask(c) => {
                write!(f, "close_task(task={}, {:?})", c.task_id, c.outcome)
            }
            Command::Sweep(c) => write!(
                f,
                "sweep(now={}, purge_before={})",
                c.now_ms, c.purge_before_ms
            ),
            Command::RegisterKey(c) => write!(f, "register_key(node={})", c.node_id),
            Command::Checkpoint(_) => write!(f, "checkpoint"),
            Command::SetRoles(c) => write!(f, "set_roles(actor={})", c.actor),
            Command::SetPolicy(c) => write!(f, "set_policy(actor={})", c.actor),
            Command::PruneAudit(c) => {
                write!(f, "prune_audit(start={}, actor={})", c.start.seq, c.actor)
            }
            Command::Refusals { refusals, .. } => write!(f, "refusals(n={})", refusals.len()),
            Command::MembershipRequest(c) => write!(f, "membership_request(actor={})", c.actor),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Allowed,
    UnknownGrant,
    Revoked,
    Expired,
    SubjectMismatch,
    OutOfScope,
    BadToken,
    TaskCompleted,
    /// The grant was revoked when its task was aborted.
    TaskAborted,
    /// The grant covers the action, but the policy in force denies it.
    PolicyDenied,
}

/// The audit entry a command appended: its sequence number and hash, as
/// the chain computed them (receipts carry both).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditRef {
    pub seq: u64,
    pub hash: grant_proto::audit::Hash,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    pub allow: bool,
    pub reason: Reason,
    pub grant_id: String,
    /// The policies that decided (empty when no policy set is in force, or
    /// the grant alone denied).
    pub policy_ids: Vec<String>,
    /// The grant's task and expiry (empty and 0 for an unknown grant).
    pub task_id: String,
    pub expires_at_ms: i64,
    pub audit: AuditRef,
}

/// Why the ledger refused a command. A value, not an error: the entry is
/// applied (it is in the log) and changes nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    NotFound(String),
    AlreadyExists(String),
    FailedPrecondition(String),
    ResourceExhausted(String),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
/// `audit` is the entry this command appended, None when it appended
/// none (a replayed issue, a revoke of an inactive grant).
pub enum CommandResult {
    Issued {
        grant: GrantRecord,
        replayed: bool,
        audit: Option<AuditRef>,
    },
    Checked(Vec<CheckOutcome>),
    /// The results of a batch command (`Issues`, `Revokes`), in its order.
    Each(Vec<CommandResult>),
    Revoked {
        grant: GrantRecord,
        already_inactive: bool,
        audit: Option<AuditRef>,
        /// Grants delegated from it (at any depth) revoked with it.
        descendants_revoked: Vec<String>,
    },
    Renewed {
        grant: GrantRecord,
        /// False when the expiry could not move further (the grant is at
        /// its maximum lifetime or its task's deadline): no entry appended.
        extended: bool,
        audit: Option<AuditRef>,
    },
    TaskBegun {
        task: TaskRecord,
        replayed: bool,
        /// None for a replay (the receipt names no new entry).
        audit: Option<AuditRef>,
    },
    TaskClosed {
        task: TaskRecord,
        revoked_grant_ids: Vec<String>,
        /// The task was already closed (by hand or its deadline): nothing
        /// changed and no entry was appended.
        already_closed: bool,
        audit: Option<AuditRef>,
    },
    Swept {
        expired: u32,
        tasks_expired: u32,
        dedupe_dropped: u32,
        /// Retired grants removed from the state.
        purged: u32,
        /// Closed tasks removed from the state.
        tasks_purged: u32,
        /// Checkpoints below the chain's start removed from the state.
        checkpoints_dropped: u32,
    },
    KeyRegistered {
        audit: Option<AuditRef>,
    },
    Checkpointed {
        size: u64,
    },
    RolesSet {
        audit: AuditRef,
    },
    PolicySet {
        policy_ids: Vec<String>,
        audit: AuditRef,
    },
    /// The chain now starts at `start`; `previous` is where it started.
    Pruned {
        start: u64,
        previous: u64,
        audit: AuditRef,
    },
    /// The policy in force denied an Issue or a Renew: recorded, nothing
    /// else changed.
    PolicyDenied {
        message: String,
        policy_ids: Vec<String>,
        audit: AuditRef,
    },
    Rejected(Rejection),
    /// Blank and membership entries.
    Nothing,
}

impl std::fmt::Display for CommandResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

pub use grant_proto::audit::{Decision, Entry as AuditEntry, Kind};

pub use crate::audit::chain::{Chain, ChainStart, Chained, RosterProof, StartTiles};

/// One change to the state. The storage layer turns these into keys and
/// values (storage::keyspace) and writes all of one entry's writes
/// together, atomically across a crash (storage::journal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Insert a new grant with its task, subject and expiry index entries
    /// (and its parent's children index entry, if delegated).
    InsertGrant(GrantRecord),
    /// Update a grant that is leaving the active state (revoked or expired):
    /// rewrites the row and drops it from the expiry index.
    Retire(GrantRecord),
    /// A retired grant past its expiry and the clock-skew margin leaves
    /// the state: its row and every index entry naming it. Its history
    /// stays in the audit chain.
    Purge(GrantRecord),
    /// An active grant's expiry moved: rewrites the row and moves its
    /// expiry index entry.
    Renew {
        grant: GrantRecord,
        previous_expires_at_ms: i64,
    },
    PutDedupe {
        request_id: String,
        record: DedupeRecord,
    },
    DeleteDedupe {
        request_id: String,
        applied_at_ms: i64,
    },
    /// The number of active grants of a subject or a task (0 removes it).
    ActiveCount { of: Counted, count: u64 },
    /// Write a task (begun or closed); an open task is in the deadline
    /// index, a closed one leaves it.
    PutTask(TaskRecord),
    /// Rewrite an open task's record (a grant counted): its deadline, and
    /// so its index key, stay as they are.
    UpdateTask(TaskRecord),
    /// A closed task past its deadline and the clock-skew margin, with no
    /// grant left, leaves the state: its record and its closed-index key.
    /// Its history stays in the audit chain; its id may be begun again.
    PurgeTask(TaskRecord),
    /// One audit entry, already chained (sequence, prev hash, hashes).
    Audit(Chained),
    /// Record a node's signing key in the roster (verifier key text), and
    /// the seq of the `key_roster` entry that recorded it.
    RosterKey {
        name: String,
        verifier_key: String,
        seq: u64,
    },
    /// The audit chain starts at `start.seq` now: the audit store prunes
    /// what lies below once the state says so (`AuditStore::prune`).
    StartChain(ChainStart),
    /// Publish a token verification key (JWK `x`) under its `kid`.
    TokenKey { kid: String, x: String },
    /// Keep a signed checkpoint of this tree size.
    PutCheckpoint { size: u64, note: String },
    /// A checkpoint of fewer entries than the chain's start: nothing it
    /// signs is served any more (a prune removed it), so it leaves.
    DropCheckpoint { size: u64 },
    /// The replicated role mapping, as of log index `index`.
    PutRoles { index: u64, roles_json: String },
    /// The policy set in force, as of log index `index`.
    PutPolicy { index: u64, record: PolicyRecord },
}

/// The outcome of applying one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub result: CommandResult,
    pub writes: Vec<Write>,
    /// The head of the audit chain after this entry.
    pub chain: Chain,
}
