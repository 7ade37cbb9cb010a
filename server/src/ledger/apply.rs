//! Apply one command to the ledger state: decide, then list the writes.

use grant_proto::audit::note::{self, VerifierKey};

use std::collections::BTreeMap;

use super::*;
use crate::limits;

/// Everything apply needs besides the command and the state: where the entry
/// sits in the log and the head of the audit chain. Both come from the
/// replicated state, never from the local node.
pub struct ApplyCtx {
    pub log_index: u64,
    pub chain: Chain,
}

struct Out {
    writes: Vec<Write>,
    chain: Chain,
    log_index: u64,
    /// How this entry moves the active-grant counters.
    active: BTreeMap<Counted, i64>,
}

impl Out {
    fn new(ctx: ApplyCtx) -> Out {
        Out {
            writes: Vec::new(),
            chain: ctx.chain,
            log_index: ctx.log_index,
            active: BTreeMap::new(),
        }
    }

    /// A new active grant: written with its indexes, counted.
    fn insert_grant(&mut self, g: GrantRecord) {
        self.count(&g, 1);
        self.writes.push(Write::InsertGrant(g));
    }

    /// A grant leaving the active state (revoked or expired).
    fn retire(&mut self, g: GrantRecord) {
        self.count(&g, -1);
        self.writes.push(Write::Retire(g));
    }

    fn count(&mut self, g: &GrantRecord, by: i64) {
        for c in [
            Counted::Subject(g.subject.clone()),
            Counted::Task(g.task_id.clone()),
        ] {
            *self.active.entry(c).or_default() += by;
        }
    }

    /// Active grants of `c` as of this point of the entry.
    fn active_now(&self, c: &Counted, state: &impl LedgerState) -> Result<u64, StateError> {
        let delta = self.active.get(c).copied().unwrap_or(0);
        Ok(state.active_grants(c)?.saturating_add_signed(delta))
    }

    /// The writes, with the counters this entry moved.
    fn finish(mut self, state: &impl LedgerState) -> Result<(Vec<Write>, Chain), StateError> {
        for (c, delta) in std::mem::take(&mut self.active) {
            if delta != 0 {
                let count = state.active_grants(&c)?.saturating_add_signed(delta);
                self.writes.push(Write::ActiveCount { of: c, count });
            }
        }
        Ok((self.writes, self.chain))
    }

    /// Chain an entry and write it in the same batch as the change it
    /// records: a change is never without its entry, nor an entry without
    /// its change.
    fn record(&mut self, r: AuditEntry) -> AuditRef {
        let chained = self.chain.append(r, self.log_index);
        let audit = AuditRef {
            seq: chained.entry.seq,
            hash: chained.hash,
        };
        self.writes.push(Write::Audit(chained));
        audit
    }
}

fn record(kind: Kind, time_ms: i64, actor: &str, g: Option<&GrantRecord>) -> AuditEntry {
    let mut e = AuditEntry::new(kind, time_ms);
    e.actor = actor.to_string();
    if let Some(g) = g {
        e.subject = g.subject.clone();
        e.task_id = g.task_id.clone();
        e.grant_id = g.grant_id.clone();
        e.intent = g.intent.clone();
    }
    e
}

/// The `refused` entry of one refusal (or of `count` of them).
fn refused(r: &Refusal, now_ms: i64) -> AuditEntry {
    let mut e = AuditEntry::new(Kind::Refused, now_ms);
    e.actor = r.caller.clone();
    e.action = r.method.clone();
    e.subject = r.subject.clone();
    e.task_id = r.task_id.clone();
    e.grant_id = r.grant_id.clone();
    e.resource = r.resource.clone();
    e.decision = Decision::Deny;
    e.reason = format!("{}: {}", r.code, r.message);
    e.detail = serde_json::json!({
        "count": r.count,
        "first_ms": r.first_ms,
        "last_ms": r.last_ms,
        "node": r.node_id,
    })
    .to_string();
    e
}

/// A grant's resources, comma-separated: an entry's `resource`.
fn resources(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.resource.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A grant's whole scope, every resource with its actions, as an entry's
/// `detail` carries it (docs/audit-format.md).
fn scopes_json(scopes: &[Scope]) -> serde_json::Value {
    scopes
        .iter()
        .map(|s| serde_json::json!({ "resource": s.resource, "actions": s.actions }))
        .collect()
}

/// The audit entry of a membership change, applied at the time of the last
/// entry (a membership entry carries no leader time of its own). `actor`
/// is the leader that appended it, `node/<id>`.
pub fn apply_membership(
    voters: &str,
    learners: &str,
    actor: &str,
    time_ms: i64,
    ctx: ApplyCtx,
) -> Applied {
    let mut out = Out::new(ctx);
    let mut r = AuditEntry::new(Kind::Membership, time_ms);
    r.actor = actor.to_string();
    r.reason = "applied".into();
    r.detail = format!("voters={voters} learners={learners}");
    out.record(r);
    Applied {
        result: CommandResult::Nothing,
        writes: out.writes,
        chain: out.chain,
    }
}

/// Apply `cmd` at `ctx` against `state`. Deterministic: the same command,
/// context and state give the same [`Applied`] on every replica.
pub fn apply(
    cmd: &Command,
    ctx: ApplyCtx,
    state: &impl LedgerState,
) -> Result<Applied, StateError> {
    let log_index = ctx.log_index;
    let head_size = ctx.chain.size();
    let mut out = Out::new(ctx);
    let result = match cmd {
        Command::Issue(c) => issue(c, None, log_index, state, &mut out)?,
        Command::Issues(cs) => each(cs, state, &mut out, |c, view, out| {
            issue(c, None, log_index, view, out)
        })?,
        Command::Revokes(cs) => each(cs, state, &mut out, |c, view, out| revoke(c, view, out))?,
        Command::Delegate(d) => issue(&d.grant, Some(d), log_index, state, &mut out)?,
        Command::Checks { now_ms, checks } => {
            let mut outcomes = Vec::with_capacity(checks.len());
            for c in checks {
                outcomes.push(check(c, *now_ms, state, &mut out)?);
            }
            CommandResult::Checked(outcomes)
        }
        Command::Revoke(c) => revoke(c, state, &mut out)?,
        Command::Renew(c) => renew(c, state, &mut out)?,
        Command::BeginTask(c) => begin_task(c, log_index, state, &mut out)?,
        Command::CloseTask(c) => close_task(c, state, &mut out)?,
        Command::Sweep(c) => sweep(c, state, &mut out)?,
        Command::RegisterKey(c) => register_key(c, state, &mut out)?,
        Command::Checkpoint(c) => checkpoint(c, head_size, state, &mut out)?,
        Command::SetRoles(c) => set_roles(c, log_index, &mut out),
        Command::SetPolicy(c) => set_policy(c, log_index, &mut out),
        Command::PruneAudit(c) => prune_audit(c, state, &mut out)?,
        Command::MembershipRequest(c) => {
            let mut r = AuditEntry::new(Kind::Membership, c.now_ms);
            r.actor = c.actor.clone();
            r.reason = "requested".into();
            r.detail = c.change.clone();
            out.record(r);
            CommandResult::Nothing
        }
        Command::Refusals { now_ms, refusals } => {
            for r in refusals {
                out.record(refused(r, *now_ms));
            }
            CommandResult::Nothing
        }
    };
    let (writes, chain) = out.finish(state)?;
    Ok(Applied {
        result,
        writes,
        chain,
    })
}

/// Decide a batch of commands in one entry, in order, each on the state as
/// the ones before it left it: their writes, moved aside as each finishes,
/// are read first (a retried request id, a task's grant count, a grant
/// revoked just before); the active counters are `out`'s own, as in any
/// entry. The results and the state are those of one entry per command.
fn each<S: LedgerState, C>(
    cmds: &[C],
    state: &S,
    out: &mut Out,
    mut one: impl FnMut(&C, &Earlier<'_, S>, &mut Out) -> Result<CommandResult, StateError>,
) -> Result<CommandResult, StateError> {
    let mut earlier = Vec::new();
    let mut results = Vec::with_capacity(cmds.len());
    for c in cmds {
        let view = Earlier {
            state,
            writes: &earlier,
        };
        results.push(one(c, &view, out)?);
        earlier.append(&mut out.writes);
    }
    out.writes = earlier;
    Ok(CommandResult::Each(results))
}

/// The state as of some writes of this entry: what an issue or a revoke in
/// a batch reads (grants, dedupe records, tasks, children) comes from the
/// newest of them, everything else from `state`. The writes are few (a
/// batch's, bounded by `WRITES_PER_ENTRY_MAX`), so they are searched
/// newest first.
struct Earlier<'a, S> {
    state: &'a S,
    writes: &'a [Write],
}

impl<S> Earlier<'_, S> {
    /// `ids` and the grants the earlier writes inserted that `of` picks,
    /// at most `limit` in all.
    fn plus_inserted(
        &self,
        mut ids: Vec<String>,
        limit: usize,
        of: impl Fn(&GrantRecord) -> bool,
    ) -> Vec<String> {
        for w in self.writes {
            if let Write::InsertGrant(g) = w {
                if of(g) && ids.len() < limit {
                    ids.push(g.grant_id.clone());
                }
            }
        }
        ids
    }
}

impl<S: LedgerState> LedgerState for Earlier<'_, S> {
    fn grant(&self, grant_id: &str) -> Result<Option<GrantRecord>, StateError> {
        let newest = self.writes.iter().rev().find_map(|w| match w {
            Write::InsertGrant(g) | Write::Retire(g) | Write::Renew { grant: g, .. }
                if g.grant_id == grant_id =>
            {
                Some(Some(g.clone()))
            }
            Write::Purge(g) if g.grant_id == grant_id => Some(None),
            _ => None,
        });
        match newest {
            Some(g) => Ok(g),
            None => self.state.grant(grant_id),
        }
    }
    fn dedupe(&self, request_id: &str) -> Result<Option<DedupeRecord>, StateError> {
        for w in self.writes.iter().rev() {
            match w {
                Write::PutDedupe {
                    request_id: r,
                    record,
                } if r == request_id => return Ok(Some(record.clone())),
                Write::DeleteDedupe { request_id: r, .. } if r == request_id => return Ok(None),
                _ => {}
            }
        }
        self.state.dedupe(request_id)
    }
    fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, StateError> {
        let newest = self.writes.iter().rev().find_map(|w| match w {
            Write::PutTask(t) | Write::UpdateTask(t) if t.task_id == task_id => Some(t.clone()),
            _ => None,
        });
        match newest {
            Some(t) => Ok(Some(t)),
            None => self.state.task(task_id),
        }
    }
    fn task_grant_ids(&self, task_id: &str, limit: usize) -> Result<Vec<String>, StateError> {
        let ids = self.state.task_grant_ids(task_id, limit)?;
        Ok(self.plus_inserted(ids, limit, |g| g.task_id == task_id))
    }
    fn child_grant_ids(&self, grant_id: &str, limit: usize) -> Result<Vec<String>, StateError> {
        let ids = self.state.child_grant_ids(grant_id, limit)?;
        Ok(self.plus_inserted(ids, limit, |g| g.parent_grant_id == grant_id))
    }
    // Counted by `Out` across the whole entry, so read from the state.
    fn active_grants(&self, of: &Counted) -> Result<u64, StateError> {
        self.state.active_grants(of)
    }
    // Issues and revokes write none of the rest.
    fn tasks_past_deadline(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StateError> {
        self.state.tasks_past_deadline(now_ms, limit)
    }
    fn expired_grant_ids(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StateError> {
        self.state.expired_grant_ids(now_ms, limit)
    }
    fn retired_before(&self, before_ms: i64, limit: usize) -> Result<Vec<String>, StateError> {
        self.state.retired_before(before_ms, limit)
    }
    fn dedupe_older_than(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StateError> {
        self.state.dedupe_older_than(before_ms, limit)
    }
    fn roster_keys(&self, name: &str) -> Result<Vec<String>, StateError> {
        self.state.roster_keys(name)
    }
    fn token_key_known(&self, kid: &str) -> Result<bool, StateError> {
        self.state.token_key_known(kid)
    }
    fn tree_root(&self, size: u64) -> Result<Option<grant_proto::audit::Hash>, StateError> {
        self.state.tree_root(size)
    }
    fn latest_checkpoint_size(&self) -> Result<Option<u64>, StateError> {
        self.state.latest_checkpoint_size()
    }
    fn chain_start(&self) -> Result<ChainStart, StateError> {
        self.state.chain_start()
    }
    fn tasks_closed_before(&self, before_ms: i64, limit: usize) -> Result<Vec<String>, StateError> {
        self.state.tasks_closed_before(before_ms, limit)
    }
    fn checkpoints_below(&self, size: u64, limit: usize) -> Result<Vec<u64>, StateError> {
        self.state.checkpoints_below(size, limit)
    }
    fn policy(&self) -> Result<Option<std::sync::Arc<grant_policy::Compiled>>, StateError> {
        self.state.policy()
    }
}

/// Issue a grant, or delegate one (`delegation`): the same rules, and for
/// a delegation those of its parent grant.
fn issue(
    c: &IssueCmd,
    delegation: Option<&DelegateCmd>,
    log_index: u64,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<CommandResult, StateError> {
    if let Some(d) = state.dedupe(&c.request_id)? {
        if d.fingerprint != c.fingerprint {
            return Ok(CommandResult::Rejected(Rejection::FailedPrecondition(
                format!(
                    "request id {:?} was already used for a different request",
                    c.request_id
                ),
            )));
        }
        // A retry, possibly delayed past a revoke or expiry: answer with the
        // grant as it is now, never a new one.
        let Some(grant) = state.grant(&d.grant_id)? else {
            // It expired and left the state (the request id is remembered
            // longer than a grant is kept): still never a new one.
            return Ok(CommandResult::Rejected(Rejection::FailedPrecondition(
                format!(
                    "request id {:?} issued grant {}, which has expired and left the ledger \
                     (its history is in the audit chain); use a new request id for a new grant",
                    c.request_id, d.grant_id
                ),
            )));
        };
        // The receipt names the original entry: a replay appends none.
        return Ok(CommandResult::Issued {
            grant,
            replayed: true,
            audit: d.audit,
        });
    }
    let Some(mut task) = state.task(&c.task_id)? else {
        return Ok(CommandResult::Rejected(Rejection::NotFound(format!(
            "no task {:?}: begin it first (BeginTask)",
            c.task_id
        ))));
    };
    if let Some(refusal) = closed(&task, c.now_ms) {
        return Ok(CommandResult::Rejected(Rejection::FailedPrecondition(
            format!("{refusal}; it takes no new grants"),
        )));
    }
    if c.expires_at_ms > task.deadline_ms {
        // The API node caps the TTL at the deadline it read; this is a
        // request that raced a read of another state.
        return Ok(CommandResult::Rejected(Rejection::FailedPrecondition(
            format!(
                "the grant would outlive task {:?}, whose deadline is {} ms",
                c.task_id, task.deadline_ms
            ),
        )));
    }
    if task.grant_count >= limits::GRANTS_PER_TASK_MAX as u64 {
        return Ok(CommandResult::Rejected(Rejection::ResourceExhausted(
            format!(
                "task {:?} already holds {} grants (grants_per_task_max)",
                c.task_id,
                limits::GRANTS_PER_TASK_MAX
            ),
        )));
    }
    if let Some(over) = over_quota(c, out, state)? {
        return Ok(CommandResult::Rejected(Rejection::ResourceExhausted(over)));
    }
    let (parent_grant_id, sub_task, depth) = match delegation {
        None => (String::new(), String::new(), 0),
        Some(d) => match parent_allows(c, d, state)? {
            Ok(depth) => (d.parent_grant_id.clone(), d.sub_task.clone(), depth),
            Err(rejection) => return Ok(CommandResult::Rejected(rejection)),
        },
    };
    let kind = if delegation.is_some() {
        Kind::Delegate
    } else {
        Kind::Issue
    };
    let policy = match state.policy()? {
        Some(p) => match issue_policy(c, delegation.is_some(), &task, &p) {
            Ok(allowed) => Some(allowed),
            Err(denied) => return Ok(deny_issue(c, kind, denied, out)),
        },
        None => None,
    };
    let grant = GrantRecord {
        grant_id: c.grant_id.clone(),
        subject: c.subject.clone(),
        task_id: c.task_id.clone(),
        scopes: c.scopes.clone(),
        intent: c.intent.clone(),
        issuer: c.issuer.clone(),
        issued_at_ms: c.now_ms,
        expires_at_ms: c.expires_at_ms,
        token_hash: c.token_hash.clone(),
        max_expires_at_ms: c.max_expires_at_ms,
        state: GrantState::Active,
        revoked_at_ms: 0,
        revoke_reason: String::new(),
        issued_index: log_index,
        parent_grant_id,
        sub_task,
        depth,
    };
    if state.grant(&grant.grant_id)?.is_some() {
        // Grant ids are 128 random bits drawn by the leader: a collision is a bug.
        return Err(StateError(format!(
            "grant id {} already exists",
            grant.grant_id
        )));
    }
    let mut r = record(kind, c.now_ms, &c.issuer, Some(&grant));
    let mut detail = serde_json::json!({
        "scopes": scopes_json(&grant.scopes),
        "expires_at_ms": grant.expires_at_ms,
    });
    if delegation.is_some() {
        detail["parent_grant_id"] = grant.parent_grant_id.clone().into();
        detail["sub_task"] = grant.sub_task.clone().into();
        detail["depth"] = grant.depth.into();
    }
    r.detail = detail.to_string();
    r.resource = resources(&grant.scopes);
    if let Some(d) = policy {
        r.decision = Decision::Allow;
        r.reason = d.summary();
        r.policy_ids = d.policy_ids;
    }
    let audit = out.record(r);
    task.grant_count += 1;
    out.writes.push(Write::UpdateTask(task));
    out.insert_grant(grant.clone());
    out.writes.push(Write::PutDedupe {
        request_id: c.request_id.clone(),
        record: DedupeRecord {
            grant_id: c.grant_id.clone(),
            fingerprint: c.fingerprint.clone(),
            applied_at_ms: c.now_ms,
            audit: Some(audit),
        },
    });
    Ok(CommandResult::Issued {
        grant,
        replayed: false,
        audit: Some(audit),
    })
}

/// Which active-grant quota a new grant would pass, if any (0: no quota).
fn over_quota(
    c: &IssueCmd,
    out: &Out,
    state: &impl LedgerState,
) -> Result<Option<String>, StateError> {
    for (of, max, setting) in [
        (
            Counted::Subject(c.subject.clone()),
            c.quota.active_per_subject_max,
            "active_grants_per_subject_max",
        ),
        (
            Counted::Task(c.task_id.clone()),
            c.quota.active_per_task_max,
            "active_grants_per_task_max",
        ),
    ] {
        if max > 0 && out.active_now(&of, state)? >= max {
            return Ok(Some(format!(
                "{of} already holds {max} active grants ({setting}): revoke or complete some first"
            )));
        }
    }
    Ok(None)
}

/// Whether the parent of a delegation allows it: active, held by the
/// delegator, in the same task, covering every scope asked for, expiring
/// no sooner, and not at the deepest delegation allowed. The sub-grant's
/// depth, or why not.
fn parent_allows(
    c: &IssueCmd,
    d: &DelegateCmd,
    state: &impl LedgerState,
) -> Result<Result<u32, Rejection>, StateError> {
    let refuse = |m: String| Ok(Err(Rejection::FailedPrecondition(m)));
    let Some(parent) = state.grant(&d.parent_grant_id)? else {
        return Ok(Err(Rejection::NotFound(format!(
            "no grant {}",
            d.parent_grant_id
        ))));
    };
    match parent.state_at(c.now_ms) {
        GrantState::Active => {}
        s => return refuse(format!("parent grant {} is {s:?}", parent.grant_id).to_lowercase()),
    }
    if parent.subject != c.issuer {
        return refuse(format!(
            "only the holder of grant {} ({}) may delegate from it",
            parent.grant_id, parent.subject
        ));
    }
    if parent.task_id != c.task_id {
        return refuse(format!(
            "a delegated grant stays in its parent's task {:?}",
            parent.task_id
        ));
    }
    if let Some((resource, action)) = parent.widened_by(&c.scopes) {
        return refuse(format!(
            "grant {} does not cover {action:?} on {resource:?}: a delegation cannot widen it",
            parent.grant_id
        ));
    }
    if c.expires_at_ms > parent.expires_at_ms {
        return refuse(format!(
            "a delegated grant may not outlive its parent (expires at {} ms)",
            parent.expires_at_ms
        ));
    }
    let depth = parent.depth + 1;
    if depth > d.depth_max {
        return Ok(Err(Rejection::ResourceExhausted(format!(
            "grant {} is at delegation depth {}: delegation_depth_max is {}",
            parent.grant_id, parent.depth, d.depth_max
        ))));
    }
    Ok(Ok(depth))
}

/// An Issue denied by the policy: which scope, and the decision.
struct IssueDenial {
    resource: String,
    actions: Vec<String>,
    decision: grant_policy::Decision,
}

impl IssueDenial {
    /// Which policies refused, for the caller's message.
    fn by(&self) -> String {
        if self.decision.policy_ids.is_empty() {
            "no policy permits it".to_string()
        } else {
            format!("forbidden by {}", self.decision.policy_ids.join(", "))
        }
    }
}

/// What the policy is asked at an Issue, and again at a Renew: may the
/// issuer have `subject` hold these scopes, in this task, for this long?
struct IssueAsk<'a> {
    /// Asked as a delegation (Cedar action "delegate") rather than an issue.
    delegate: bool,
    issuer: &'a str,
    subject: &'a str,
    task: &'a TaskRecord,
    intent: &'a str,
    scopes: &'a [Scope],
    ttl_seconds: u64,
    now_ms: i64,
}

fn issue_policy(
    c: &IssueCmd,
    delegate: bool,
    task: &TaskRecord,
    p: &grant_policy::Compiled,
) -> Result<grant_policy::Decision, IssueDenial> {
    ask_issue(
        p,
        &IssueAsk {
            delegate,
            issuer: &c.issuer,
            subject: &c.subject,
            task,
            intent: &c.intent,
            scopes: &c.scopes,
            ttl_seconds: u64::try_from((c.expires_at_ms - c.now_ms) / 1000).unwrap_or(0),
            now_ms: c.now_ms,
        },
    )
}

/// Ask the policy about every scope: all must be allowed. The allowed
/// decision merges the policies of every scope.
fn ask_issue(
    p: &grant_policy::Compiled,
    a: &IssueAsk<'_>,
) -> Result<grant_policy::Decision, IssueDenial> {
    let mut merged = grant_policy::Decision {
        allow: true,
        policy_ids: Vec::new(),
        errors: Vec::new(),
    };
    for scope in a.scopes {
        let q = grant_policy::IssueQuery {
            caller: a.issuer,
            subject: a.subject,
            task: &a.task.task_id,
            declared_tools: &a.task.declared_tools,
            intent: a.intent,
            ttl_seconds: a.ttl_seconds,
            resource: &scope.resource,
            actions: &scope.actions,
            now_ms: a.now_ms,
        };
        let d = if a.delegate {
            p.delegate(&q)
        } else {
            p.issue(&q)
        };
        if !d.allow {
            return Err(IssueDenial {
                resource: scope.resource.clone(),
                actions: scope.actions.clone(),
                decision: d,
            });
        }
        merged.policy_ids.extend(d.policy_ids);
        merged.errors.extend(d.errors);
    }
    merged.policy_ids.sort();
    merged.policy_ids.dedup();
    Ok(merged)
}

/// Record a denied Issue: the entry says who asked what for whom, and
/// which policies refused. Nothing else is written (no grant, no dedupe:
/// a retry after a policy change is decided again).
fn deny_issue(c: &IssueCmd, kind: Kind, denied: IssueDenial, out: &mut Out) -> CommandResult {
    let mut r = AuditEntry::new(kind, c.now_ms);
    r.actor = c.issuer.clone();
    r.subject = c.subject.clone();
    r.task_id = c.task_id.clone();
    r.intent = c.intent.clone();
    r.resource = denied.resource.clone();
    r.action = denied.actions.join(",");
    r.decision = Decision::Deny;
    r.reason = denied.decision.summary();
    r.policy_ids = denied.decision.policy_ids.clone();
    let audit = out.record(r);
    CommandResult::PolicyDenied {
        message: format!(
            "policy denies {} {:?} on {:?} to {}: {}",
            if kind == Kind::Delegate {
                "delegating"
            } else {
                "issuing"
            },
            denied.actions,
            denied.resource,
            c.subject,
            denied.by()
        ),
        policy_ids: denied.decision.policy_ids,
        audit,
    }
}

/// Extend an active grant, as far as its maximum lifetime and its task's
/// deadline allow. The policy is asked again, as for an Issue by the
/// grant's issuer of the grant's whole lifetime, so that a renewal cannot
/// take a grant where an Issue could not.
fn renew(
    c: &RenewCmd,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<CommandResult, StateError> {
    let Some(mut g) = state.grant(&c.grant_id)? else {
        return Ok(CommandResult::Rejected(Rejection::NotFound(format!(
            "no grant {}",
            c.grant_id
        ))));
    };
    let refuse = |m: String| Ok(CommandResult::Rejected(Rejection::FailedPrecondition(m)));
    match g.state_at(c.now_ms) {
        GrantState::Active => {}
        GrantState::Revoked => return refuse(format!("grant {} is revoked", c.grant_id)),
        GrantState::Expired => {
            return refuse(format!("grant {} has expired: issue a new one", c.grant_id))
        }
    }
    let task = state.task(&g.task_id)?.ok_or_else(|| {
        StateError(format!(
            "grant {} names missing task {}",
            g.grant_id, g.task_id
        ))
    })?;
    if let Some(refusal) = closed(&task, c.now_ms) {
        return refuse(refusal);
    }
    // A delegated grant never outlives its parent, renewed or not.
    let parent_expiry = if g.parent_grant_id.is_empty() {
        i64::MAX
    } else {
        match state.grant(&g.parent_grant_id)? {
            Some(p) if p.state_at(c.now_ms) == GrantState::Active => p.expires_at_ms,
            _ => {
                return refuse(format!(
                    "the parent of grant {} is no longer active",
                    c.grant_id
                ))
            }
        }
    };
    let expires_at_ms = c
        .expires_at_ms
        .min(g.max_expires_at_ms)
        .min(task.deadline_ms)
        .min(parent_expiry);
    if expires_at_ms <= g.expires_at_ms {
        return Ok(CommandResult::Renewed {
            grant: g,
            extended: false,
            audit: None,
        });
    }
    let decided = match state.policy()? {
        Some(p) => {
            let lifetime = u64::try_from((expires_at_ms - g.issued_at_ms) / 1000).unwrap_or(0);
            let ask = IssueAsk {
                delegate: !g.parent_grant_id.is_empty(),
                issuer: &g.issuer,
                subject: &g.subject,
                task: &task,
                intent: &g.intent,
                scopes: &g.scopes,
                ttl_seconds: lifetime,
                now_ms: c.now_ms,
            };
            match ask_issue(&p, &ask) {
                Ok(d) => Some(d),
                Err(denied) => {
                    let mut r = record(Kind::Renew, c.now_ms, &c.actor, Some(&g));
                    r.resource = denied.resource.clone();
                    r.action = denied.actions.join(",");
                    r.decision = Decision::Deny;
                    r.reason = denied.decision.summary();
                    r.policy_ids = denied.decision.policy_ids.clone();
                    let audit = out.record(r);
                    return Ok(CommandResult::PolicyDenied {
                        message: format!(
                            "policy denies renewing grant {} to a lifetime of {lifetime} s on {:?}: {}",
                            g.grant_id,
                            denied.resource,
                            denied.by()
                        ),
                        policy_ids: denied.decision.policy_ids,
                        audit,
                    });
                }
            }
        }
        None => None,
    };
    let previous_expires_at_ms = g.expires_at_ms;
    g.expires_at_ms = expires_at_ms;
    let mut r = record(Kind::Renew, c.now_ms, &c.actor, Some(&g));
    r.resource = resources(&g.scopes);
    r.detail = serde_json::json!({
        "scopes": scopes_json(&g.scopes),
        "expires_at_ms": expires_at_ms,
        "previous_expires_at_ms": previous_expires_at_ms,
    })
    .to_string();
    if let Some(d) = decided {
        r.decision = Decision::Allow;
        r.reason = d.summary();
        r.policy_ids = d.policy_ids;
    }
    let audit = out.record(r);
    out.writes.push(Write::Renew {
        grant: g.clone(),
        previous_expires_at_ms,
    });
    Ok(CommandResult::Renewed {
        grant: g,
        extended: true,
        audit: Some(audit),
    })
}

fn check(
    c: &CheckCmd,
    now_ms: i64,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<CheckOutcome, StateError> {
    let grant = if c.grant_id.is_empty() || c.forged {
        None
    } else {
        state.grant(&c.grant_id)?
    };
    let reason = match &grant {
        None if c.forged => Reason::BadToken,
        // Its grant left the state after it expired (the sweep keeps a
        // grant until its expiry plus the clock-skew margin).
        None if c.token_expires_at_ms > 0 && c.token_expires_at_ms <= now_ms => Reason::Expired,
        None => Reason::UnknownGrant,
        Some(g) => match g.state_at(now_ms) {
            GrantState::Revoked => match state.task(&g.task_id)?.map(|t| t.state) {
                Some(TaskState::Completed) => Reason::TaskCompleted,
                Some(TaskState::Aborted) => Reason::TaskAborted,
                _ => Reason::Revoked,
            },
            GrantState::Expired => Reason::Expired,
            GrantState::Active if g.subject != c.identity => Reason::SubjectMismatch,
            GrantState::Active if !g.covers(&c.resource, &c.action) => Reason::OutOfScope,
            GrantState::Active => Reason::Allowed,
        },
    };
    // The grant allows: the policy in force has the last word.
    let policy = match (&grant, state.policy()?) {
        (Some(g), Some(p)) if reason == Reason::Allowed => {
            let declared_tools = state
                .task(&g.task_id)?
                .map(|t| t.declared_tools)
                .unwrap_or_default();
            Some(p.check(&grant_policy::CheckQuery {
                identity: &c.identity,
                resource: &c.resource,
                action: &c.action,
                task: &g.task_id,
                declared_tools: &declared_tools,
                intent: &g.intent,
                grant_id: &g.grant_id,
                issuer: &g.issuer,
                attributes: &c.attributes,
                now_ms,
            }))
        }
        _ => None,
    };
    let reason = match &policy {
        Some(d) if !d.allow => Reason::PolicyDenied,
        _ => reason,
    };
    let allow = reason == Reason::Allowed;
    // A bad token says nothing trustworthy about the grant it names.
    let known = grant.as_ref().filter(|_| reason != Reason::BadToken);
    let mut r = record(Kind::Check, now_ms, &c.actor, known);
    if known.is_none() {
        r.subject = c.identity.clone();
    }
    r.resource = c.resource.clone();
    r.action = c.action.clone();
    r.decision = if allow {
        Decision::Allow
    } else {
        Decision::Deny
    };
    r.reason = format!("{reason:?}");
    let policy_ids = policy
        .as_ref()
        .map(|d| d.policy_ids.clone())
        .unwrap_or_default();
    r.policy_ids = policy_ids.clone();
    r.detail = check_detail(c, policy.as_ref());
    let audit = out.record(r);
    Ok(CheckOutcome {
        allow,
        reason,
        grant_id: known.map(|g| g.grant_id.clone()).unwrap_or_default(),
        policy_ids,
        task_id: known.map(|g| g.task_id.clone()).unwrap_or_default(),
        expires_at_ms: known.map(|g| g.expires_at_ms).unwrap_or_default(),
        audit,
    })
}

/// A check entry's detail: the attributes the tool server sent and the
/// policies that failed to evaluate, as JSON; empty when there are none.
fn check_detail(c: &CheckCmd, policy: Option<&grant_policy::Decision>) -> String {
    let errors = policy.map(|d| d.errors.as_slice()).unwrap_or_default();
    if c.attributes.is_empty() && errors.is_empty() {
        return String::new();
    }
    let mut detail = serde_json::Map::new();
    if !c.attributes.is_empty() {
        detail.insert("attributes".into(), serde_json::json!(c.attributes));
    }
    if !errors.is_empty() {
        detail.insert("policy_errors".into(), serde_json::json!(errors));
    }
    serde_json::Value::Object(detail).to_string()
}

fn revoke(
    c: &RevokeCmd,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<CommandResult, StateError> {
    let Some(grant) = state.grant(&c.grant_id)? else {
        return Ok(CommandResult::Rejected(Rejection::NotFound(format!(
            "no grant {}",
            c.grant_id
        ))));
    };
    if grant.state != GrantState::Active {
        return Ok(CommandResult::Revoked {
            grant,
            already_inactive: true,
            audit: None,
            descendants_revoked: Vec::new(),
        });
    }
    if grant.state_at(c.now_ms) == GrantState::Expired {
        // Past its expiry but not swept yet: retire it as expired, which is
        // what it already was for every check.
        // Its delegated grants expire no later: they have too.
        let (grant, audit) = expire_grant(grant, c.now_ms, out);
        return Ok(CommandResult::Revoked {
            grant,
            already_inactive: true,
            audit: Some(audit),
            descendants_revoked: Vec::new(),
        });
    }
    let (grant, audit) = revoke_grant(grant, &c.reason, &c.actor, c.now_ms, out);
    let descendants_revoked = revoke_descendants(&grant.grant_id, c, state, out)?;
    Ok(CommandResult::Revoked {
        grant,
        already_inactive: false,
        audit: Some(audit),
        descendants_revoked,
    })
}

/// Revoke every active grant delegated, at any depth, from `root` (which
/// is being revoked in the same entry). They all live in root's task, so
/// there are at most GRANTS_PER_TASK_MAX.
fn revoke_descendants(
    root: &str,
    c: &RevokeCmd,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<Vec<String>, StateError> {
    let mut revoked = Vec::new();
    let mut parents = vec![root.to_string()];
    while let Some(parent) = parents.pop() {
        for id in state.child_grant_ids(&parent, limits::GRANTS_PER_TASK_MAX)? {
            let g = state.grant(&id)?.ok_or_else(|| {
                StateError(format!("children index points at missing grant {id}"))
            })?;
            // An inactive one took its own descendants with it.
            if g.state != GrantState::Active {
                continue;
            }
            if g.state_at(c.now_ms) == GrantState::Expired {
                expire_grant(g, c.now_ms, out);
                continue;
            }
            let reason = format!("parent grant {parent} revoked");
            revoke_grant(g, &reason, &c.actor, c.now_ms, out);
            revoked.push(id.clone());
            parents.push(id);
        }
    }
    Ok(revoked)
}

/// Revoke an active grant, with its revoke entry.
fn revoke_grant(
    mut g: GrantRecord,
    reason: &str,
    actor: &str,
    now_ms: i64,
    out: &mut Out,
) -> (GrantRecord, AuditRef) {
    g.state = GrantState::Revoked;
    g.revoked_at_ms = now_ms;
    g.revoke_reason = reason.to_string();
    let mut r = record(Kind::Revoke, now_ms, actor, Some(&g));
    r.reason = g.revoke_reason.clone();
    let audit = out.record(r);
    out.retire(g.clone());
    (g, audit)
}

/// Retire an active grant past its expiry, with its expire entry.
fn expire_grant(mut g: GrantRecord, now_ms: i64, out: &mut Out) -> (GrantRecord, AuditRef) {
    g.state = GrantState::Expired;
    let mut r = record(Kind::Expire, now_ms, "", Some(&g));
    r.reason = "expired".into();
    let audit = out.record(r);
    out.retire(g.clone());
    (g, audit)
}

/// Why a task takes no new grants, or None while it is open.
fn closed(task: &TaskRecord, now_ms: i64) -> Option<String> {
    let how = match task.state_at(now_ms) {
        TaskState::Open => return None,
        TaskState::Completed => "completed",
        TaskState::Aborted => "aborted",
        TaskState::Expired => "past its deadline",
    };
    Some(format!("task {:?} is {how}", task.task_id))
}

fn begin_task(
    c: &BeginTaskCmd,
    log_index: u64,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<CommandResult, StateError> {
    if let Some(task) = state.task(&c.task_id)? {
        if task.fingerprint == c.fingerprint {
            // A retry: the task as it is now, never a second one.
            return Ok(CommandResult::TaskBegun {
                task,
                replayed: true,
                audit: None,
            });
        }
        return Ok(CommandResult::Rejected(Rejection::AlreadyExists(format!(
            "task {:?} was already begun by {} with other parameters",
            c.task_id, task.owner
        ))));
    }
    if c.deadline_ms <= c.now_ms {
        return Ok(CommandResult::Rejected(Rejection::FailedPrecondition(
            format!("task {:?} would end before it begins", c.task_id),
        )));
    }
    let task = TaskRecord {
        task_id: c.task_id.clone(),
        owner: c.owner.clone(),
        intent: c.intent.clone(),
        declared_tools: c.declared_tools.clone(),
        begun_at_ms: c.now_ms,
        deadline_ms: c.deadline_ms,
        state: TaskState::Open,
        closed_at_ms: 0,
        closed_by: String::new(),
        close_reason: String::new(),
        grant_count: 0,
        fingerprint: c.fingerprint.clone(),
        begun_index: log_index,
    };
    let mut r = AuditEntry::new(Kind::BeginTask, c.now_ms);
    r.actor = c.owner.clone();
    r.task_id = c.task_id.clone();
    r.intent = c.intent.clone();
    r.resource = c.declared_tools.join(",");
    r.detail = serde_json::json!({ "deadline_ms": c.deadline_ms }).to_string();
    let audit = out.record(r);
    out.writes.push(Write::PutTask(task.clone()));
    Ok(CommandResult::TaskBegun {
        task,
        replayed: false,
        audit: Some(audit),
    })
}

/// Retire every active grant of a task: revoked with `reason` by `actor`,
/// each with its own revoke entry, or expired (with its expire entry) if
/// past its expiry. Returns the ids revoked.
fn retire_task_grants(
    task_id: &str,
    reason: &str,
    actor: &str,
    now_ms: i64,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<Vec<String>, StateError> {
    let mut revoked = Vec::new();
    for id in state.task_grant_ids(task_id, limits::GRANTS_PER_TASK_MAX)? {
        let g = state
            .grant(&id)?
            .ok_or_else(|| StateError(format!("task index points at missing grant {id}")))?;
        if g.state != GrantState::Active {
            continue;
        }
        if g.state_at(now_ms) == GrantState::Expired {
            expire_grant(g, now_ms, out);
            continue;
        }
        revoked.push(g.grant_id.clone());
        revoke_grant(g, reason, actor, now_ms, out);
    }
    Ok(revoked)
}

/// Close a task whose deadline has passed (the sweep, or a close that
/// came after the deadline): its grants have expired by then.
fn expire_task(
    mut task: TaskRecord,
    now_ms: i64,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<(TaskRecord, AuditRef), StateError> {
    retire_task_grants(
        &task.task_id,
        "task deadline passed",
        "",
        now_ms,
        state,
        out,
    )?;
    task.state = TaskState::Expired;
    task.closed_at_ms = now_ms;
    task.close_reason = "deadline passed".into();
    let mut r = AuditEntry::new(Kind::ExpireTask, now_ms);
    r.task_id = task.task_id.clone();
    r.reason = task.close_reason.clone();
    let audit = out.record(r);
    out.writes.push(Write::PutTask(task.clone()));
    Ok((task, audit))
}

fn close_task(
    c: &CloseTaskCmd,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<CommandResult, StateError> {
    let Some(mut task) = state.task(&c.task_id)? else {
        return Ok(CommandResult::Rejected(Rejection::NotFound(format!(
            "no task {:?}",
            c.task_id
        ))));
    };
    match task.state_at(c.now_ms) {
        TaskState::Open => {}
        TaskState::Expired if task.state == TaskState::Open => {
            // Past its deadline but not swept yet: close it as expired,
            // which is what it already was for every request.
            let (task, audit) = expire_task(task, c.now_ms, state, out)?;
            return Ok(CommandResult::TaskClosed {
                task,
                revoked_grant_ids: Vec::new(),
                already_closed: true,
                audit: Some(audit),
            });
        }
        _ => {
            return Ok(CommandResult::TaskClosed {
                task,
                revoked_grant_ids: Vec::new(),
                already_closed: true,
                audit: None,
            })
        }
    }
    let (kind, grant_reason) = match c.outcome {
        TaskState::Completed => (Kind::CompleteTask, "task completed"),
        TaskState::Aborted => (Kind::AbortTask, "task aborted"),
        other => {
            return Err(StateError(format!(
                "a task is closed by hand as completed or aborted, not {other:?}"
            )))
        }
    };
    let revoked = retire_task_grants(&c.task_id, grant_reason, &c.actor, c.now_ms, state, out)?;
    task.state = c.outcome;
    task.closed_at_ms = c.now_ms;
    task.closed_by = c.actor.clone();
    task.close_reason = c.reason.clone();
    let mut r = record(kind, c.now_ms, &c.actor, None);
    r.task_id = c.task_id.clone();
    r.reason = c.reason.clone();
    // Each revoked grant has its own revoke entry just before this one.
    r.detail = serde_json::json!({ "revoked": revoked.len() }).to_string();
    let audit = out.record(r);
    out.writes.push(Write::PutTask(task.clone()));
    Ok(CommandResult::TaskClosed {
        task,
        revoked_grant_ids: revoked,
        already_closed: false,
        audit: Some(audit),
    })
}

fn sweep(
    c: &SweepCmd,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<CommandResult, StateError> {
    let mut expired = 0u32;
    for id in state.expired_grant_ids(c.now_ms, limits::SWEEP_GRANTS_MAX)? {
        let g = state
            .grant(&id)?
            .ok_or_else(|| StateError(format!("expiry index points at missing grant {id}")))?;
        expire_grant(g, c.now_ms, out);
        expired += 1;
    }
    // Tasks once no grant is left to expire: a task's grants expire no
    // later than its deadline, so by then closing it retires none (which
    // keeps the entry small), and none is retired twice in one entry.
    let mut tasks_expired = 0u32;
    if expired == 0 {
        for id in state.tasks_past_deadline(c.now_ms, limits::SWEEP_TASKS_MAX)? {
            let task = state
                .task(&id)?
                .ok_or_else(|| StateError(format!("deadline index points at missing task {id}")))?;
            expire_task(task, c.now_ms, state, out)?;
            tasks_expired += 1;
        }
    }
    let mut dedupe_dropped = 0u32;
    for (at, request_id) in state.dedupe_older_than(
        c.now_ms - limits::DEDUPE_WINDOW_MS,
        limits::SWEEP_DEDUPE_MAX,
    )? {
        out.writes.push(Write::DeleteDedupe {
            request_id,
            applied_at_ms: at,
        });
        dedupe_dropped += 1;
    }
    // Retired grants past their expiry and the margin leave the state; no
    // audit entry (their revoke or expire entry closed their history).
    let mut purged = 0u32;
    if c.purge_before_ms > 0 {
        for id in state.retired_before(c.purge_before_ms, limits::SWEEP_PURGE_MAX)? {
            let g = state
                .grant(&id)?
                .ok_or_else(|| StateError(format!("retired index points at missing grant {id}")))?;
            out.writes.push(Write::Purge(g));
            purged += 1;
        }
    }
    // Closed tasks past their deadline and the margin, once none of their
    // grants is left (each leaves at its expiry plus the margin, no later
    // than the task's deadline plus it); no audit entry (their close entry
    // ended their history).
    let mut tasks_purged = 0u32;
    if c.purge_before_ms > 0 {
        for id in state.tasks_closed_before(c.purge_before_ms, limits::SWEEP_PURGE_MAX)? {
            if !state.task_grant_ids(&id, 1)?.is_empty() {
                continue;
            }
            let t = state.task(&id)?.ok_or_else(|| {
                StateError(format!("closed-task index points at missing task {id}"))
            })?;
            out.writes.push(Write::PurgeTask(t));
            tasks_purged += 1;
        }
    }
    // Checkpoints below the chain's start: what they sign was pruned.
    let mut checkpoints_dropped = 0u32;
    let start = state.chain_start()?.seq;
    if start > 0 {
        for size in state.checkpoints_below(start, limits::SWEEP_PURGE_MAX)? {
            out.writes.push(Write::DropCheckpoint { size });
            checkpoints_dropped += 1;
        }
    }
    Ok(CommandResult::Swept {
        expired,
        tasks_expired,
        dedupe_dropped,
        purged,
        tasks_purged,
        checkpoints_dropped,
    })
}

/// Replace the replicated role mapping. The API node has checked it; it is
/// checked again here so that a bad entry changes nothing on any replica.
fn set_roles(c: &SetRolesCmd, log_index: u64, out: &mut Out) -> CommandResult {
    if let Err(e) = crate::auth::roles::check_replicated(&c.roles_json) {
        return CommandResult::Rejected(Rejection::FailedPrecondition(e));
    }
    let mut r = AuditEntry::new(Kind::Roles, c.now_ms);
    r.actor = c.actor.clone();
    r.detail = c.roles_json.clone();
    r.reason = format!("sha256:{}", sha256_hex(&c.roles_json));
    let audit = out.record(r);
    out.writes.push(Write::PutRoles {
        index: log_index,
        roles_json: c.roles_json.clone(),
    });
    CommandResult::RolesSet { audit }
}

/// Replace the policy set. The API node has compiled it; it is compiled
/// again here so that a set that does not compile changes nothing on any
/// replica (every replica runs the same Cedar, so all refuse alike).
fn set_policy(c: &SetPolicyCmd, log_index: u64, out: &mut Out) -> CommandResult {
    let rec = &c.record;
    let compiled = match grant_policy::compile(&rec.policies, &rec.schema, rec.no_match) {
        Ok(p) => p,
        Err(e) => {
            return CommandResult::Rejected(Rejection::FailedPrecondition(format!(
                "policy set does not compile: {e}"
            )))
        }
    };
    let mut r = AuditEntry::new(Kind::Policy, c.now_ms);
    r.actor = c.actor.clone();
    r.reason = format!("sha256:{}", rec.policies_sha256());
    r.detail = serde_json::to_string(rec).expect("a policy record serializes");
    r.policy_ids = compiled.ids().to_vec();
    let audit = out.record(r);
    out.writes.push(Write::PutPolicy {
        index: log_index,
        record: rec.clone(),
    });
    CommandResult::PolicySet {
        policy_ids: compiled.ids().to_vec(),
        audit,
    }
}

/// Why the chain's start may not move to `seq` from `current`, with
/// checkpoints signed up to `covered` entries; None if it may. The leader
/// asks before it reads the start from its store, and apply again.
pub fn prune_refused(seq: u64, current: u64, covered: u64) -> Option<String> {
    if seq <= current {
        return Some(format!(
            "the audit chain already starts at entry {current}: nothing before {seq} is left \
             to prune"
        ));
    }
    if !seq.is_multiple_of(limits::AUDIT_SEGMENT_ENTRIES) {
        return Some(format!(
            "a prune removes whole segments: {seq} is not a multiple of {} (audit_segment_entries)",
            limits::AUDIT_SEGMENT_ENTRIES
        ));
    }
    if seq > covered {
        return Some(format!(
            "no signed checkpoint covers entry {}: the newest covers {covered} entries; prune \
             only what a checkpoint signs, so that the archive verifies",
            seq - 1
        ));
    }
    None
}

/// Move the chain's start forward, to a segment boundary that a signed
/// checkpoint covers: what an operator archived before the prune (an
/// export) verifies against that checkpoint. The leader read the start
/// from its store; its shape is checked here, so that a bad one changes
/// nothing on any replica.
fn prune_audit(
    c: &PruneAuditCmd,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<CommandResult, StateError> {
    let reject = |m: String| Ok(CommandResult::Rejected(Rejection::FailedPrecondition(m)));
    let previous = state.chain_start()?;
    let seq = c.start.seq;
    let covered = state.latest_checkpoint_size()?.unwrap_or(0);
    if let Some(why) = prune_refused(seq, previous.seq, covered) {
        return reject(why);
    }
    if let Err(e) = c.start.well_formed() {
        return reject(format!("the chain's start at {seq} is malformed: {e}"));
    }
    let mut r = AuditEntry::new(Kind::Prune, c.now_ms);
    r.actor = c.actor.clone();
    r.reason = c.reason.clone();
    r.detail = serde_json::json!({ "start": seq, "previous_start": previous.seq }).to_string();
    let audit = out.record(r);
    out.writes.push(Write::StartChain(c.start.clone()));
    Ok(CommandResult::Pruned {
        start: seq,
        previous: previous.seq,
        audit,
    })
}

fn register_key(
    c: &RegisterKeyCmd,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<CommandResult, StateError> {
    let key = match VerifierKey::parse(&c.verifier_key) {
        Ok(k) => k,
        Err(e) => {
            return Ok(CommandResult::Rejected(Rejection::FailedPrecondition(
                format!("bad verifier key: {e}"),
            )))
        }
    };
    let previous = state.roster_keys(&key.name)?;
    let token_known = c.token_kid.is_empty() || state.token_key_known(&c.token_kid)?;
    if previous.contains(&c.verifier_key) && token_known {
        return Ok(CommandResult::KeyRegistered { audit: None });
    }
    let mut r = AuditEntry::new(Kind::KeyRoster, c.now_ms);
    r.actor = key.name.clone();
    r.subject = format!("node/{}", c.node_id);
    r.reason = if !previous.is_empty() {
        "rotate".into()
    } else {
        "register".into()
    };
    r.detail = c.verifier_key.clone();
    // The token key's id, when the node has one: auditors see it appear.
    r.resource = c.token_kid.clone();
    let audit = out.record(r);
    out.writes.push(Write::RosterKey {
        name: key.name,
        verifier_key: c.verifier_key.clone(),
        seq: audit.seq,
    });
    if !c.token_kid.is_empty() {
        out.writes.push(Write::TokenKey {
            kid: c.token_kid.clone(),
            x: c.token_x.clone(),
        });
    }
    Ok(CommandResult::KeyRegistered { audit: Some(audit) })
}

/// Keep a checkpoint only if it is signed by the roster key of its signer
/// and states the root this replica computed at that size: a replica never
/// holds a signed checkpoint that its own entries contradict. It may lie
/// at most `CHECKPOINT_LAG_MAX` entries behind the head (`head_size`):
/// every replica, one begun from a snapshot too, holds the hashes for
/// those roots.
fn checkpoint(
    c: &CheckpointCmd,
    head_size: u64,
    state: &impl LedgerState,
    out: &mut Out,
) -> Result<CommandResult, StateError> {
    let reject = |m: String| Ok(CommandResult::Rejected(Rejection::FailedPrecondition(m)));
    let parsed = match note::parse(&c.note) {
        Ok(p) => p,
        Err(e) => return reject(format!("unreadable checkpoint: {e}")),
    };
    let mut trusted = Vec::new();
    for (name, _, _) in &parsed.signatures {
        for k in state.roster_keys(name)? {
            if let Ok(k) = VerifierKey::parse(&k) {
                trusted.push(k);
            }
        }
    }
    let cp = match note::verify(&c.note, &trusted) {
        Ok((cp, _)) => cp,
        Err(e) => return reject(format!("checkpoint not signed by a roster key: {e}")),
    };
    if let Some(latest) = state.latest_checkpoint_size()? {
        if cp.size <= latest {
            return reject(format!(
                "checkpoint of size {} is not newer than {latest}",
                cp.size
            ));
        }
    }
    if cp.size.saturating_add(crate::limits::CHECKPOINT_LAG_MAX) < head_size {
        return reject(format!(
            "checkpoint of size {} is more than {} entries behind the chain's head at {head_size} \
             (checkpoint_lag_max)",
            cp.size,
            crate::limits::CHECKPOINT_LAG_MAX
        ));
    }
    match state.tree_root(cp.size)? {
        Some(root) if root == cp.root => {}
        Some(_) => {
            return reject(format!(
                "checkpoint root at size {} differs from this log's",
                cp.size
            ))
        }
        None => return reject(format!("no tree head of size {} in this log", cp.size)),
    }
    out.writes.push(Write::PutCheckpoint {
        size: cp.size,
        note: c.note.clone(),
    });
    Ok(CommandResult::Checkpointed { size: cp.size })
}

#[cfg(test)]
mod tests;
