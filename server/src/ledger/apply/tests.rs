//! Unit tests of the ledger rules over an in-memory state.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

#[derive(Default)]
struct Mem {
    grants: BTreeMap<String, GrantRecord>,
    dedupe: BTreeMap<String, DedupeRecord>,
    tasks: BTreeMap<String, TaskRecord>,
    active: BTreeMap<Counted, u64>,
    /// Issue into a task only once it has begun; otherwise (the tests not
    /// about tasks) `run` opens the task of an Issue that names a new one.
    explicit_tasks: bool,
    audit: Vec<AuditEntry>,
    chain: Chain,
    roots: BTreeMap<u64, grant_proto::audit::Hash>,
    roster: BTreeMap<String, Vec<String>>,
    checkpoints: BTreeMap<u64, String>,
    token_keys: BTreeSet<String>,
    roles: Option<String>,
    policy: Option<std::sync::Arc<grant_policy::Compiled>>,
    index: u64,
    start: ChainStart,
}

impl LedgerState for Mem {
    fn chain_start(&self) -> Result<ChainStart, StateError> {
        Ok(self.start.clone())
    }
    fn policy(&self) -> Result<Option<std::sync::Arc<grant_policy::Compiled>>, StateError> {
        Ok(self.policy.clone())
    }
    fn roster_keys(&self, name: &str) -> Result<Vec<String>, StateError> {
        Ok(self.roster.get(name).cloned().unwrap_or_default())
    }
    fn token_key_known(&self, kid: &str) -> Result<bool, StateError> {
        Ok(self.token_keys.contains(kid))
    }
    fn tree_root(&self, size: u64) -> Result<Option<grant_proto::audit::Hash>, StateError> {
        Ok(self.roots.get(&size).copied())
    }
    fn latest_checkpoint_size(&self) -> Result<Option<u64>, StateError> {
        Ok(self.checkpoints.keys().next_back().copied())
    }
    fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StateError> {
        Ok(self.grants.get(id).cloned())
    }
    fn dedupe(&self, r: &str) -> Result<Option<DedupeRecord>, StateError> {
        Ok(self.dedupe.get(r).cloned())
    }
    fn task_grant_ids(&self, task: &str, limit: usize) -> Result<Vec<String>, StateError> {
        Ok(self
            .grants
            .values()
            .filter(|g| g.task_id == task)
            .map(|g| g.grant_id.clone())
            .take(limit)
            .collect())
    }
    fn active_grants(&self, of: &Counted) -> Result<u64, StateError> {
        Ok(self.active.get(of).copied().unwrap_or(0))
    }
    fn child_grant_ids(&self, parent: &str, limit: usize) -> Result<Vec<String>, StateError> {
        Ok(self
            .grants
            .values()
            .filter(|g| g.parent_grant_id == parent)
            .map(|g| g.grant_id.clone())
            .take(limit)
            .collect())
    }
    fn task(&self, task: &str) -> Result<Option<TaskRecord>, StateError> {
        Ok(self.tasks.get(task).cloned())
    }
    fn checkpoints_below(&self, size: u64, limit: usize) -> Result<Vec<u64>, StateError> {
        Ok(self
            .checkpoints
            .range(..size)
            .map(|(s, _)| *s)
            .take(limit)
            .collect())
    }
    fn tasks_closed_before(&self, before: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let mut v: Vec<_> = self
            .tasks
            .values()
            .filter(|t| t.state != TaskState::Open && t.deadline_ms < before)
            .map(|t| (t.deadline_ms, t.task_id.clone()))
            .collect();
        v.sort();
        Ok(v.into_iter().take(limit).map(|(_, id)| id).collect())
    }
    fn tasks_past_deadline(&self, now: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let mut v: Vec<_> = self
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Open && t.deadline_ms <= now)
            .map(|t| (t.deadline_ms, t.task_id.clone()))
            .collect();
        v.sort();
        Ok(v.into_iter().take(limit).map(|(_, id)| id).collect())
    }
    fn expired_grant_ids(&self, now: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let mut v: Vec<_> = self
            .grants
            .values()
            .filter(|g| g.state == GrantState::Active && g.expires_at_ms <= now)
            .map(|g| (g.expires_at_ms, g.grant_id.clone()))
            .collect();
        v.sort();
        Ok(v.into_iter().take(limit).map(|(_, id)| id).collect())
    }
    fn retired_before(&self, before: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let mut v: Vec<_> = self
            .grants
            .values()
            .filter(|g| g.state != GrantState::Active && g.expires_at_ms < before)
            .map(|g| (g.expires_at_ms, g.grant_id.clone()))
            .collect();
        v.sort();
        Ok(v.into_iter().take(limit).map(|(_, id)| id).collect())
    }
    fn dedupe_older_than(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StateError> {
        let mut v: Vec<_> = self
            .dedupe
            .iter()
            .filter(|(_, d)| d.applied_at_ms < before)
            .map(|(k, d)| (d.applied_at_ms, k.clone()))
            .collect();
        v.sort();
        Ok(v.into_iter().take(limit).collect())
    }
}

impl Mem {
    fn run(&mut self, cmd: Command) -> CommandResult {
        let issues = match &cmd {
            Command::Issue(c) => std::slice::from_ref(c),
            Command::Issues(cs) => cs.as_slice(),
            _ => &[],
        };
        for c in issues {
            if !self.explicit_tasks && !self.tasks.contains_key(&c.task_id) {
                self.tasks
                    .insert(c.task_id.clone(), open_task(&c.task_id, i64::MAX / 2));
            }
        }
        self.index += 1;
        let a = apply(
            &cmd,
            ApplyCtx {
                log_index: self.index,
                chain: self.chain.clone(),
            },
            self,
        )
        .unwrap();
        self.chain = a.chain;
        self.roots.insert(self.chain.size(), self.chain.root());
        for w in a.writes {
            match w {
                Write::InsertGrant(g) | Write::Retire(g) | Write::Renew { grant: g, .. } => {
                    self.grants.insert(g.grant_id.clone(), g);
                }
                Write::Purge(g) => {
                    self.grants.remove(&g.grant_id);
                }
                Write::PutDedupe { request_id, record } => {
                    self.dedupe.insert(request_id, record);
                }
                Write::DeleteDedupe { request_id, .. } => {
                    self.dedupe.remove(&request_id);
                }
                Write::ActiveCount { of, count } => {
                    self.active.insert(of, count);
                }
                Write::PurgeTask(t) => {
                    self.tasks.remove(&t.task_id);
                }
                Write::PutTask(t) | Write::UpdateTask(t) => {
                    self.tasks.insert(t.task_id.clone(), t);
                }
                Write::Audit(c) => self.audit.push(c.entry),
                Write::RosterKey {
                    name, verifier_key, ..
                } => {
                    self.roster.entry(name).or_default().push(verifier_key);
                }
                Write::StartChain(s) => self.start = s,
                Write::PutCheckpoint { size, note } => {
                    self.checkpoints.insert(size, note);
                }
                Write::DropCheckpoint { size } => {
                    self.checkpoints.remove(&size);
                }
                Write::TokenKey { kid, .. } => {
                    self.token_keys.insert(kid);
                }
                Write::PutRoles { roles_json, .. } => {
                    self.roles = Some(roles_json);
                }
                Write::PutPolicy { record, .. } => {
                    let p =
                        grant_policy::compile(&record.policies, &record.schema, record.no_match)
                            .expect("apply wrote a policy that compiles");
                    self.policy = Some(std::sync::Arc::new(p));
                }
            }
        }
        a.result
    }
}

const AGENT: &str = "spiffe://example.org/agent/planner";
const OWNER: &str = "spiffe://example.org/orchestrator";

/// An open task that declared "github", as a Begin at time 0 writes it.
fn open_task(task: &str, deadline_ms: i64) -> TaskRecord {
    TaskRecord {
        task_id: task.into(),
        owner: OWNER.into(),
        intent: "triage".into(),
        declared_tools: vec!["github".into()],
        begun_at_ms: 0,
        deadline_ms,
        state: TaskState::Open,
        closed_at_ms: 0,
        closed_by: String::new(),
        close_reason: String::new(),
        grant_count: 0,
        fingerprint: format!("begin-{task}"),
        begun_index: 0,
    }
}

fn begin_cmd(task: &str, deadline_ms: i64, now: i64) -> Command {
    Command::BeginTask(BeginTaskCmd {
        task_id: task.into(),
        owner: OWNER.into(),
        intent: "triage".into(),
        declared_tools: vec!["github".into()],
        deadline_ms,
        fingerprint: format!("begin-{task}"),
        now_ms: now,
    })
}

fn close_cmd(task: &str, outcome: TaskState, now: i64) -> Command {
    Command::CloseTask(CloseTaskCmd {
        task_id: task.into(),
        outcome,
        reason: "done".into(),
        actor: OWNER.into(),
        now_ms: now,
    })
}

fn issue_cmd(req: &str, grant: &str, task: &str, now: i64, ttl_ms: i64) -> Command {
    Command::Issue(IssueCmd {
        request_id: req.into(),
        fingerprint: format!("fp-{task}"),
        grant_id: grant.into(),
        subject: AGENT.into(),
        task_id: task.into(),
        scopes: vec![Scope {
            resource: "github".into(),
            actions: vec!["read".into()],
        }],
        intent: "read the issue".into(),
        issuer: "spiffe://example.org/orchestrator".into(),
        token_hash: format!("hash-{grant}"),
        now_ms: now,
        expires_at_ms: now + ttl_ms,
        max_expires_at_ms: now + 3_600_000,
        quota: Quota::default(),
    })
}

fn check_cmd(grant: &str, identity: &str, resource: &str, action: &str, now: i64) -> Command {
    Command::Checks {
        now_ms: now,
        checks: vec![CheckCmd {
            grant_id: grant.into(),
            forged: false,
            identity: identity.into(),
            resource: resource.into(),
            action: action.into(),
            actor: String::new(),
            attributes: Default::default(),
            token_expires_at_ms: 0,
        }],
    }
}

fn reason(r: CommandResult) -> Reason {
    match r {
        CommandResult::Checked(v) => v[0].reason,
        other => panic!("not a check result: {other:?}"),
    }
}

#[test]
fn issue_check_revoke_check() {
    let mut m = Mem::default();
    assert!(matches!(
        m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000)),
        CommandResult::Issued {
            replayed: false,
            ..
        }
    ));
    assert_eq!(
        reason(m.run(check_cmd("g1", AGENT, "github", "read", 2000))),
        Reason::Allowed
    );
    let r = m.run(Command::Revoke(RevokeCmd {
        grant_id: "g1".into(),
        reason: "done".into(),
        actor: "x".into(),
        now_ms: 3000,
    }));
    assert!(matches!(
        r,
        CommandResult::Revoked {
            already_inactive: false,
            ..
        }
    ));
    assert_eq!(
        reason(m.run(check_cmd("g1", AGENT, "github", "read", 4000))),
        Reason::Revoked
    );
    // Revoke again: idempotent, says it was already inactive.
    let r = m.run(Command::Revoke(RevokeCmd {
        grant_id: "g1".into(),
        reason: "again".into(),
        actor: "x".into(),
        now_ms: 5000,
    }));
    assert!(matches!(
        r,
        CommandResult::Revoked {
            already_inactive: true,
            ..
        }
    ));
    assert_eq!(m.grants["g1"].revoke_reason, "done");
}

#[test]
fn deny_reasons() {
    let mut m = Mem::default();
    m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
    assert_eq!(
        reason(m.run(check_cmd(
            "g1",
            "spiffe://example.org/agent/other",
            "github",
            "read",
            2000
        ))),
        Reason::SubjectMismatch
    );
    assert_eq!(
        reason(m.run(check_cmd("g1", AGENT, "github", "write", 2000))),
        Reason::OutOfScope
    );
    assert_eq!(
        reason(m.run(check_cmd("g1", AGENT, "jira", "read", 2000))),
        Reason::OutOfScope
    );
    assert_eq!(
        reason(m.run(check_cmd("nope", AGENT, "github", "read", 2000))),
        Reason::UnknownGrant
    );
    assert_eq!(
        reason(m.run(check_cmd("g1", AGENT, "github", "read", 61_000))),
        Reason::Expired
    );
    let mut bad = check_cmd("g1", AGENT, "github", "read", 2000);
    if let Command::Checks { checks, .. } = &mut bad {
        checks[0].forged = true;
    }
    assert_eq!(reason(m.run(bad)), Reason::BadToken);
    // Every decision is on the record.
    assert_eq!(m.audit.iter().filter(|r| r.kind == Kind::Check).count(), 6);
    assert!(m
        .audit
        .iter()
        .filter(|r| r.kind == Kind::Check)
        .all(|r| r.decision == Decision::Deny));
}

#[test]
fn retry_returns_same_grant_even_after_revoke() {
    let mut m = Mem::default();
    let first = match m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000)) {
        CommandResult::Issued { audit, .. } => audit.expect("an issue appends an entry"),
        other => panic!("{other:?}"),
    };
    m.run(Command::Revoke(RevokeCmd {
        grant_id: "g1".into(),
        reason: "done".into(),
        actor: "x".into(),
        now_ms: 2000,
    }));
    // A delayed retry with a fresh grant id drawn by a new leader.
    match m.run(issue_cmd("r1", "g2", "t1", 3000, 60_000)) {
        CommandResult::Issued {
            grant,
            replayed,
            audit,
        } => {
            assert!(replayed);
            assert_eq!(grant.grant_id, "g1");
            assert_eq!(grant.state, GrantState::Revoked);
            // The replay's receipt names the original entry.
            assert_eq!(audit, Some(first));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.grants.len(), 1);
    // The same request id with other parameters is refused.
    let r = m.run(issue_cmd("r1", "g3", "other-task", 3000, 60_000));
    assert!(matches!(
        r,
        CommandResult::Rejected(Rejection::FailedPrecondition(_))
    ));
    assert_eq!(m.grants.len(), 1);
}

#[test]
fn complete_task_revokes_all_and_closes_task() {
    let mut m = Mem::default();
    m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
    m.run(issue_cmd("r2", "g2", "t1", 1000, 60_000));
    m.run(issue_cmd("r3", "g3", "t2", 1000, 60_000));
    match m.run(close_cmd("t1", TaskState::Completed, 2000)) {
        CommandResult::TaskClosed {
            revoked_grant_ids,
            already_closed,
            task,
            ..
        } => {
            assert_eq!(revoked_grant_ids, vec!["g1".to_string(), "g2".to_string()]);
            assert!(!already_closed);
            assert_eq!((task.state, task.grant_count), (TaskState::Completed, 2));
        }
        other => panic!("{other:?}"),
    }
    // The task's entry, after one revoke entry per grant that names it.
    let n = m.audit.len();
    let e = &m.audit[n - 1];
    assert_eq!(
        (e.kind, e.detail.as_str()),
        (Kind::CompleteTask, r#"{"revoked":2}"#)
    );
    let named: Vec<(Kind, &str, &str, &str)> = m.audit[n - 3..n - 1]
        .iter()
        .map(|e| {
            (
                e.kind,
                e.grant_id.as_str(),
                e.task_id.as_str(),
                e.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        named,
        [
            (Kind::Revoke, "g1", "t1", "task completed"),
            (Kind::Revoke, "g2", "t1", "task completed")
        ]
    );
    assert_eq!(m.audit[n - 2].actor, e.actor);
    assert_eq!(
        reason(m.run(check_cmd("g1", AGENT, "github", "read", 3000))),
        Reason::TaskCompleted
    );
    assert_eq!(
        reason(m.run(check_cmd("g3", AGENT, "github", "read", 3000))),
        Reason::Allowed
    );
    let r = m.run(issue_cmd("r4", "g4", "t1", 3000, 60_000));
    assert!(matches!(
        r,
        CommandResult::Rejected(Rejection::FailedPrecondition(_))
    ));
    // Closing again, either way, changes nothing and appends nothing.
    let entries = m.audit.len();
    for outcome in [TaskState::Completed, TaskState::Aborted] {
        let again = m.run(close_cmd("t1", outcome, 4000));
        assert!(
            matches!(again, CommandResult::TaskClosed { already_closed: true, ref revoked_grant_ids, audit: None, ref task } if revoked_grant_ids.is_empty() && task.state == TaskState::Completed)
        );
    }
    assert_eq!(m.audit.len(), entries);
}

#[test]
fn grants_are_issued_only_under_an_open_task_and_within_its_deadline() {
    let mut m = Mem {
        explicit_tasks: true,
        ..Mem::default()
    };
    let r = m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
    assert!(
        matches!(r, CommandResult::Rejected(Rejection::NotFound(_))),
        "{r:?}"
    );
    assert!(m.grants.is_empty() && m.audit.is_empty());

    assert!(matches!(
        m.run(begin_cmd("t1", 50_000, 1000)),
        CommandResult::TaskBegun {
            replayed: false,
            audit: Some(_),
            ..
        }
    ));
    let e = m.audit.last().unwrap();
    assert_eq!(
        (e.kind, e.actor.as_str(), e.resource.as_str()),
        (Kind::BeginTask, OWNER, "github")
    );
    // A retry is answered with the task; other parameters are refused.
    assert!(matches!(
        m.run(begin_cmd("t1", 50_000, 2000)),
        CommandResult::TaskBegun {
            replayed: true,
            audit: None,
            ..
        }
    ));
    let mut other = begin_cmd("t1", 90_000, 2000);
    if let Command::BeginTask(c) = &mut other {
        c.fingerprint = "other".into();
    }
    assert!(matches!(
        m.run(other),
        CommandResult::Rejected(Rejection::AlreadyExists(_))
    ));
    assert_eq!(m.tasks["t1"].deadline_ms, 50_000);

    // A grant that would outlive the deadline is refused (the API node
    // caps its TTL; this is the ledger's own guard).
    let r = m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
    assert!(
        matches!(r, CommandResult::Rejected(Rejection::FailedPrecondition(_))),
        "{r:?}"
    );
    assert!(matches!(
        m.run(issue_cmd("r2", "g2", "t1", 1000, 49_000)),
        CommandResult::Issued {
            replayed: false,
            ..
        }
    ));
    assert_eq!(m.tasks["t1"].grant_count, 1);

    // Past the deadline: no grant, even before the sweep closes the task.
    let r = m.run(issue_cmd("r3", "g3", "t1", 50_000, 1));
    assert!(
        matches!(r, CommandResult::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("deadline")),
        "{r:?}"
    );
    assert!(!m.grants.contains_key("g3"));
}

#[test]
fn aborting_a_task_revokes_its_grants_with_the_reason() {
    let mut m = Mem::default();
    m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
    // One grant already past its expiry: retired as expired, with its entry.
    m.run(issue_cmd("r2", "g2", "t1", 1000, 500));
    match m.run(close_cmd("t1", TaskState::Aborted, 2000)) {
        CommandResult::TaskClosed {
            revoked_grant_ids,
            task,
            ..
        } => {
            assert_eq!(revoked_grant_ids, vec!["g1".to_string()]);
            assert_eq!(
                (task.state, task.close_reason.as_str()),
                (TaskState::Aborted, "done")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.grants["g2"].state, GrantState::Expired);
    let kinds: Vec<Kind> = m.audit.iter().rev().take(2).map(|e| e.kind).collect();
    assert_eq!(kinds, vec![Kind::AbortTask, Kind::Expire]);
    assert_eq!(
        reason(m.run(check_cmd("g1", AGENT, "github", "read", 3000))),
        Reason::TaskAborted
    );
}

#[test]
fn the_sweep_closes_a_task_at_its_deadline_once_its_grants_have_expired() {
    let mut m = Mem {
        explicit_tasks: true,
        ..Mem::default()
    };
    m.run(begin_cmd("t1", 10_000, 1000));
    m.run(begin_cmd("t2", 99_000, 1000));
    m.run(issue_cmd("r1", "g1", "t1", 1000, 9_000));
    // The grants first: a sweep that expires some closes no task.
    assert_eq!(
        m.run(Command::Sweep(SweepCmd {
            now_ms: 10_000,
            purge_before_ms: 0
        })),
        CommandResult::Swept {
            expired: 1,
            tasks_expired: 0,
            dedupe_dropped: 0,
            purged: 0,
            tasks_purged: 0,
            checkpoints_dropped: 0
        }
    );
    assert_eq!(
        m.run(Command::Sweep(SweepCmd {
            now_ms: 10_001,
            purge_before_ms: 0
        })),
        CommandResult::Swept {
            expired: 0,
            tasks_expired: 1,
            dedupe_dropped: 0,
            purged: 0,
            tasks_purged: 0,
            checkpoints_dropped: 0
        }
    );
    assert_eq!(m.tasks["t1"].state, TaskState::Expired);
    assert_eq!(m.tasks["t2"].state, TaskState::Open);
    let e = m.audit.last().unwrap();
    assert_eq!((e.kind, e.task_id.as_str()), (Kind::ExpireTask, "t1"));
    // Closing it by hand now changes nothing.
    assert!(matches!(
        m.run(close_cmd("t1", TaskState::Completed, 11_000)),
        CommandResult::TaskClosed {
            already_closed: true,
            audit: None,
            ..
        }
    ));
}

#[test]
fn closing_a_task_past_its_deadline_before_the_sweep_expires_it() {
    let mut m = Mem {
        explicit_tasks: true,
        ..Mem::default()
    };
    m.run(begin_cmd("t1", 10_000, 1000));
    m.run(issue_cmd("r1", "g1", "t1", 1000, 9_000));
    match m.run(close_cmd("t1", TaskState::Completed, 12_000)) {
        CommandResult::TaskClosed {
            already_closed: true,
            audit: Some(_),
            task,
            revoked_grant_ids,
        } => {
            assert_eq!(task.state, TaskState::Expired);
            assert!(revoked_grant_ids.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.grants["g1"].state, GrantState::Expired);
    let kinds: Vec<Kind> = m.audit.iter().rev().take(2).map(|e| e.kind).collect();
    assert_eq!(kinds, vec![Kind::ExpireTask, Kind::Expire]);
}

#[test]
fn sweep_retires_expired_and_old_dedupe() {
    let mut m = Mem::default();
    m.run(issue_cmd("r1", "g1", "t1", 1000, 1000));
    m.run(issue_cmd("r2", "g2", "t1", 1000, 60_000));
    assert_eq!(
        m.run(Command::Sweep(SweepCmd {
            now_ms: 2000,
            purge_before_ms: 0
        })),
        CommandResult::Swept {
            expired: 1,
            tasks_expired: 0,
            dedupe_dropped: 0,
            purged: 0,
            tasks_purged: 0,
            checkpoints_dropped: 0
        }
    );
    assert_eq!(m.grants["g1"].state, GrantState::Expired);
    assert_eq!(m.grants["g2"].state, GrantState::Active);
    let later = 1000 + limits::DEDUPE_WINDOW_MS + 1;
    assert_eq!(
        m.run(Command::Sweep(SweepCmd {
            now_ms: later,
            purge_before_ms: 0
        })),
        CommandResult::Swept {
            expired: 1,
            tasks_expired: 0,
            dedupe_dropped: 2,
            purged: 0,
            tasks_purged: 0,
            checkpoints_dropped: 0
        }
    );
}

/// A retired grant leaves the state once past its expiry and the margin
/// the sweep is given; an active one never does. A check of its token then
/// answers EXPIRED, a retry of its Issue is refused rather than answered
/// with a new grant, and its history stays in the chain.
#[test]
fn the_sweep_purges_retired_grants_past_the_margin_and_nothing_else() {
    let mut m = Mem::default();
    m.run(issue_cmd("r1", "g1", "t1", 1000, 1000)); // expires at 2000
    m.run(issue_cmd("r2", "g2", "t1", 1000, 60_000)); // revoked below
    m.run(issue_cmd("r3", "g3", "t1", 1000, 60_000)); // stays active
    m.run(Command::Revoke(RevokeCmd {
        grant_id: "g2".into(),
        reason: "done".into(),
        actor: String::new(),
        now_ms: 1500,
    }));
    let sweep = |now_ms, purge_before_ms| {
        Command::Sweep(SweepCmd {
            now_ms,
            purge_before_ms,
        })
    };
    assert!(matches!(
        m.run(sweep(2000, 0)),
        CommandResult::Swept {
            expired: 1,
            purged: 0,
            ..
        }
    ));
    let chain_before = m.audit.len();
    // Not yet past the margin: the expiry must be before purge_before.
    assert!(matches!(
        m.run(sweep(3000, 2000)),
        CommandResult::Swept { purged: 0, .. }
    ));
    assert!(matches!(
        m.run(sweep(3000, 2001)),
        CommandResult::Swept { purged: 1, .. }
    ));
    assert!(!m.grants.contains_key("g1"));
    assert!(m.grants.contains_key("g2"), "revoked, expiry not yet past");
    // A revoked grant goes once its expiry is past the margin; an active
    // one at any age is the expiry sweep's.
    assert!(matches!(
        m.run(sweep(61_000, 61_001)),
        CommandResult::Swept {
            expired: 1,
            purged: 1,
            ..
        }
    ));
    assert!(!m.grants.contains_key("g2"));
    assert_eq!(m.grants["g3"].state, GrantState::Expired);
    // The purge itself appends nothing to the chain (the expiry of g3 did).
    assert_eq!(m.audit.len(), chain_before + 1);
    assert!(m
        .audit
        .iter()
        .any(|e| e.grant_id == "g1" && e.kind == Kind::Expire));

    // Its token, still carrying a valid signature: EXPIRED, not unknown.
    let mut c = check_cmd("g1", AGENT, "github", "read", 62_000);
    if let Command::Checks { checks, .. } = &mut c {
        checks[0].token_expires_at_ms = 2000;
    }
    assert_eq!(reason(m.run(c)), Reason::Expired);
    assert_eq!(
        reason(m.run(check_cmd("g1", AGENT, "github", "read", 62_000))),
        Reason::UnknownGrant
    );
    // A retry of its Issue: refused, no second grant.
    let grants = m.grants.len();
    match m.run(issue_cmd("r1", "g9", "t1", 62_000, 1000)) {
        CommandResult::Rejected(Rejection::FailedPrecondition(why)) => {
            assert!(why.contains("left the ledger"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.grants.len(), grants);
}

/// A closed task leaves the state once its deadline is past the margin
/// and none of its grants is left; an open one, or one with a grant left,
/// stays. Its id may then be begun again, as a new task.
#[test]
fn the_sweep_purges_closed_tasks_past_the_margin_once_their_grants_left() {
    let mut m = Mem {
        explicit_tasks: true,
        ..Mem::default()
    };
    m.run(begin_cmd("t1", 5000, 0));
    m.run(begin_cmd("t2", 5000, 0));
    m.run(issue_cmd("r1", "g1", "t1", 1000, 2000)); // expires at 3000
    m.run(close_cmd("t1", TaskState::Completed, 1500));
    let sweep = |now_ms, purge_before_ms| {
        Command::Sweep(SweepCmd {
            now_ms,
            purge_before_ms,
        })
    };
    let tasks_purged = |r: CommandResult| match r {
        CommandResult::Swept { tasks_purged, .. } => tasks_purged,
        other => panic!("{other:?}"),
    };
    // Before its deadline and the margin: it stays, and its grant too.
    assert_eq!(tasks_purged(m.run(sweep(4000, 2000))), 0);
    assert!(m.tasks.contains_key("t1") && m.grants.contains_key("g1"));
    // Past both: its grant goes in this sweep, and t2 is closed at its
    // deadline; t1 waits for the next, when no grant of it is left.
    let chain_before = m.audit.len();
    let r = m.run(sweep(9000, 5001));
    assert!(
        matches!(
            r,
            CommandResult::Swept {
                purged: 1,
                tasks_expired: 1,
                tasks_purged: 0,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(m.tasks.contains_key("t1") && !m.grants.contains_key("g1"));
    assert_eq!(m.tasks["t2"].state, TaskState::Expired);
    // Then both go, and neither leaves an entry in the chain.
    assert_eq!(tasks_purged(m.run(sweep(9001, 5001))), 2);
    assert!(m.tasks.is_empty());
    assert!(m.audit[chain_before..]
        .iter()
        .all(|e| e.kind == Kind::ExpireTask && e.task_id == "t2"));
    // The id may be begun again: a new task.
    assert!(matches!(
        m.run(begin_cmd("t1", 20_000, 10_000)),
        CommandResult::TaskBegun {
            replayed: false,
            ..
        }
    ));
    assert_eq!(m.tasks["t1"].state, TaskState::Open);
}

#[test]
fn apply_is_deterministic() {
    let cmds = vec![
        issue_cmd("r1", "g1", "t1", 1000, 5000),
        check_cmd("g1", AGENT, "github", "read", 1500),
        Command::Sweep(SweepCmd {
            now_ms: 7000,
            purge_before_ms: 0,
        }),
        Command::Revoke(RevokeCmd {
            grant_id: "g1".into(),
            reason: "x".into(),
            actor: "a".into(),
            now_ms: 8000,
        }),
    ];
    let (mut a, mut b) = (Mem::default(), Mem::default());
    let ra: Vec<_> = cmds.iter().cloned().map(|c| a.run(c)).collect();
    let rb: Vec<_> = cmds.into_iter().map(|c| b.run(c)).collect();
    assert_eq!(ra, rb);
    assert_eq!(a.audit, b.audit);
    assert_eq!(a.grants, b.grants);
    let seqs: Vec<u64> = a.audit.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
}

mod audit_chain {
    use super::*;
    use ed25519_dalek::SigningKey;
    use grant_proto::audit::note::{sign, Checkpoint, VerifierKey};

    fn register(m: &mut Mem, key: &SigningKey, name: &str) -> CommandResult {
        m.run(Command::RegisterKey(RegisterKeyCmd {
            node_id: 1,
            verifier_key: VerifierKey::new(name, key.verifying_key()).encode(),
            token_kid: String::new(),
            token_x: String::new(),
            now_ms: 10,
        }))
    }

    fn checkpoint(
        m: &mut Mem,
        key: &SigningKey,
        name: &str,
        size: u64,
        root: grant_proto::audit::Hash,
    ) -> CommandResult {
        let note = sign(
            &Checkpoint {
                origin: "o".into(),
                size,
                root,
                time_ms: 1,
            },
            name,
            key,
        );
        m.run(Command::Checkpoint(CheckpointCmd { note }))
    }

    #[test]
    fn entries_chain_and_every_state_change_has_one() {
        let mut m = Mem::default();
        m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
        m.run(check_cmd("g1", AGENT, "github", "read", 1500));
        m.run(Command::Revoke(RevokeCmd {
            grant_id: "g1".into(),
            reason: "x".into(),
            actor: "a".into(),
            now_ms: 2000,
        }));
        let kinds: Vec<Kind> = m.audit.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![Kind::Issue, Kind::Check, Kind::Revoke]);
        for (i, e) in m.audit.iter().enumerate() {
            assert_eq!(e.seq, i as u64);
            let prev = if i == 0 {
                [0; 32]
            } else {
                m.audit[i - 1].hash()
            };
            assert_eq!(e.prev_hash, prev);
        }
        assert_eq!(m.chain.size(), 3);
        assert_eq!(m.audit[1].decision, Decision::Allow);
    }

    fn prune(m: &mut Mem, start: ChainStart) -> CommandResult {
        m.run(Command::PruneAudit(PruneAuditCmd {
            start,
            actor: "spiffe://example.org/sre".into(),
            reason: "archived to cold storage".into(),
            now_ms: 50,
        }))
    }

    /// The start of a chain pruned at `seq`, shaped as a store makes it.
    fn start_at(seq: u64) -> ChainStart {
        let tiles = crate::storage::audit_store::start_tile_ranges(seq)
            .into_iter()
            .map(|(level, from, to)| StartTiles {
                level,
                from,
                hashes: hex::encode([4u8; 32].repeat((to - from) as usize)),
            })
            .collect();
        ChainStart {
            seq,
            prev_hash: [3; 32],
            tiles,
            roster: vec![],
        }
    }

    #[test]
    fn a_prune_moves_the_start_to_a_checkpointed_segment_boundary_and_is_recorded() {
        let seg = crate::limits::AUDIT_SEGMENT_ENTRIES;
        let mut m = Mem::default();
        m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
        let rejected = |r: CommandResult, why: &str| match r {
            CommandResult::Rejected(Rejection::FailedPrecondition(m)) => {
                assert!(m.contains(why), "{m}")
            }
            other => panic!("{other:?}"),
        };
        // No checkpoint signs what would be pruned.
        rejected(prune(&mut m, start_at(seg)), "no signed checkpoint covers");
        m.checkpoints.insert(seg + 5, "note".into());
        // Not a segment boundary; a start of the wrong shape.
        let mut off = start_at(seg);
        off.seq = seg + 256;
        rejected(prune(&mut m, off), "not a multiple");
        let mut bad = start_at(seg);
        bad.tiles.clear();
        rejected(prune(&mut m, bad), "malformed");
        assert_eq!(m.audit.len(), 1);
        assert_eq!(m.start, ChainStart::default());
        // Then it moves, with an entry saying who and why.
        match prune(&mut m, start_at(seg)) {
            CommandResult::Pruned {
                start, previous, ..
            } => assert_eq!((start, previous), (seg, 0)),
            other => panic!("{other:?}"),
        }
        assert_eq!(m.start, start_at(seg));
        let e = m.audit.last().unwrap();
        assert_eq!(e.kind, Kind::Prune);
        assert_eq!(e.actor, "spiffe://example.org/sre");
        assert_eq!(e.reason, "archived to cold storage");
        assert_eq!(e.detail, format!(r#"{{"start":{seg},"previous_start":0}}"#));
        // Never back, nor to where it is.
        rejected(
            prune(&mut m, start_at(seg)),
            &format!("already starts at entry {seg}"),
        );
        // The sweep then drops the checkpoints that sign less than the
        // start: what they sign is gone. The one past it stays.
        m.checkpoints.insert(7, "old".into());
        m.checkpoints.insert(seg - 1, "old".into());
        let r = m.run(Command::Sweep(SweepCmd {
            now_ms: 60,
            purge_before_ms: 0,
        }));
        assert!(
            matches!(
                r,
                CommandResult::Swept {
                    checkpoints_dropped: 2,
                    ..
                }
            ),
            "{r:?}"
        );
        assert_eq!(
            m.checkpoints.keys().copied().collect::<Vec<_>>(),
            vec![seg + 5]
        );
    }

    #[test]
    fn only_roster_signed_checkpoints_of_this_log_are_kept() {
        let mut m = Mem::default();
        let k = SigningKey::from_bytes(&[1; 32]);
        assert!(matches!(
            register(&mut m, &k, "node-1"),
            CommandResult::KeyRegistered {
                audit: Some(AuditRef { seq: 0, .. })
            }
        ));
        // Registering the same key again appends nothing.
        assert!(matches!(
            register(&mut m, &k, "node-1"),
            CommandResult::KeyRegistered { audit: None }
        ));
        m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
        let (size, root) = (m.chain.size(), m.chain.root());
        // Signed by a key outside the roster: refused.
        let stranger = SigningKey::from_bytes(&[2; 32]);
        assert!(matches!(
            checkpoint(&mut m, &stranger, "node-9", size, root),
            CommandResult::Rejected(_)
        ));
        // A root this log never had: refused.
        assert!(matches!(
            checkpoint(&mut m, &k, "node-1", size, [7; 32]),
            CommandResult::Rejected(_)
        ));
        assert!(m.checkpoints.is_empty());
        assert_eq!(
            checkpoint(&mut m, &k, "node-1", size, root),
            CommandResult::Checkpointed { size }
        );
        // Not newer than the last one: refused.
        assert!(matches!(
            checkpoint(&mut m, &k, "node-1", size, root),
            CommandResult::Rejected(_)
        ));
        assert_eq!(m.checkpoints.len(), 1);
        // Checkpoints are not entries: the tree did not grow.
        assert_eq!(m.chain.size(), size);
        // A true root further behind the head than checkpoint_lag_max:
        // refused (a replica begun from a snapshot lacks those hashes).
        m.run(check_cmd("g1", AGENT, "github", "read", 1500));
        let (old, old_root) = (m.chain.size(), m.chain.root());
        let Command::Checks { now_ms, checks } = check_cmd("g1", AGENT, "github", "read", 1500)
        else {
            unreachable!()
        };
        let lag = crate::limits::CHECKPOINT_LAG_MAX as usize;
        m.run(Command::Checks {
            now_ms,
            checks: checks.iter().cycle().take(lag).cloned().collect(),
        });
        assert_eq!(m.chain.size(), old + lag as u64);
        assert_eq!(
            checkpoint(&mut m, &k, "node-1", old, old_root),
            CommandResult::Checkpointed { size: old },
            "exactly checkpoint_lag_max behind is kept"
        );
        // Two more entries: size old + 1 is now lag + 1 behind.
        m.run(check_cmd("g1", AGENT, "github", "read", 1500));
        m.run(check_cmd("g1", AGENT, "github", "read", 1500));
        match checkpoint(&mut m, &k, "node-1", old + 1, [0; 32]) {
            CommandResult::Rejected(r) => {
                assert!(format!("{r:?}").contains("checkpoint_lag_max"), "{r:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rotated_key_is_recorded_and_both_keys_verify() {
        let mut m = Mem::default();
        let old = SigningKey::from_bytes(&[1; 32]);
        let new = SigningKey::from_bytes(&[3; 32]);
        register(&mut m, &old, "node-1");
        m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
        let (size, root) = (m.chain.size(), m.chain.root());
        assert_eq!(
            checkpoint(&mut m, &old, "node-1", size, root),
            CommandResult::Checkpointed { size }
        );
        assert!(matches!(
            register(&mut m, &new, "node-1"),
            CommandResult::KeyRegistered { audit: Some(_) }
        ));
        let last = m.audit.last().unwrap();
        assert_eq!(
            (last.kind, last.reason.as_str()),
            (Kind::KeyRoster, "rotate")
        );
        assert_eq!(m.roster["node-1"].len(), 2);
        let (size, root) = (m.chain.size(), m.chain.root());
        assert_eq!(
            checkpoint(&mut m, &new, "node-1", size, root),
            CommandResult::Checkpointed { size }
        );
    }
}

fn set_policy(policies: &str, no_match: NoMatch, now: i64) -> Command {
    Command::SetPolicy(SetPolicyCmd {
        record: PolicyRecord {
            policies: policies.into(),
            schema: grant_policy::SCHEMA_DEFAULT.into(),
            no_match,
        },
        actor: "spiffe://example.org/ops/admin".into(),
        now_ms: now,
    })
}

const ORCH_ONLY: &str = r#"
@id("orch") permit (principal, action == Action::"issue", resource)
  when { principal.path == "/orchestrator" };
@id("reads") permit (principal, action == Action::"read", resource);
@id("no-prod-without-ticket") forbid (principal, action, resource)
  when { resource.name like "prod/*" }
  unless { context has request && context.request has ticket };
"#;

#[test]
fn policy_set_is_recorded_with_its_hash_and_ids() {
    let mut m = Mem::default();
    match m.run(set_policy(ORCH_ONLY, NoMatch::Deny, 1000)) {
        CommandResult::PolicySet { policy_ids, .. } => {
            assert_eq!(policy_ids, vec!["orch", "reads", "no-prod-without-ticket"])
        }
        other => panic!("{other:?}"),
    }
    let e = m.audit.last().unwrap();
    assert_eq!(e.kind, Kind::Policy);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ORCH_ONLY.as_bytes()));
    assert_eq!(e.reason, format!("sha256:{sha}"));
    assert!(m.policy.is_some());
}

#[test]
fn a_policy_set_that_does_not_compile_changes_nothing() {
    let mut m = Mem::default();
    m.run(set_policy(ORCH_ONLY, NoMatch::Deny, 1000));
    let before = (m.audit.len(), m.policy.as_ref().unwrap().ids().to_vec());
    let r = m.run(set_policy(
        "permit (principal, action, resource) when { principal.nope };",
        NoMatch::Deny,
        2000,
    ));
    assert!(
        matches!(r, CommandResult::Rejected(Rejection::FailedPrecondition(_))),
        "{r:?}"
    );
    assert_eq!(
        (m.audit.len(), m.policy.as_ref().unwrap().ids().to_vec()),
        before
    );
}

#[test]
fn policy_decides_issue_and_records_the_denial() {
    let mut m = Mem::default();
    m.run(set_policy(ORCH_ONLY, NoMatch::Deny, 1000));
    // The orchestrator may issue: the entry names the permit.
    assert!(matches!(
        m.run(issue_cmd("r1", "g1", "t1", 2000, 60_000)),
        CommandResult::Issued { .. }
    ));
    let e = m.audit.last().unwrap();
    assert_eq!(
        (e.decision, e.policy_ids.clone()),
        (Decision::Allow, vec!["orch".to_string()])
    );
    // Another issuer: no permit. Recorded, and nothing issued.
    let mut cmd = issue_cmd("r2", "g2", "t1", 3000, 60_000);
    if let Command::Issue(c) = &mut cmd {
        c.issuer = "spiffe://example.org/ci".into();
    }
    match m.run(cmd.clone()) {
        CommandResult::PolicyDenied {
            message,
            policy_ids,
            ..
        } => {
            assert!(policy_ids.is_empty());
            assert!(message.contains("no policy permits"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let e = m.audit.last().unwrap();
    assert_eq!((e.kind, e.decision), (Kind::Issue, Decision::Deny));
    assert!(!m.grants.contains_key("g2") && !m.dedupe.contains_key("r2"));
    // A production tool forbidden by name at issue (no request attributes there).
    let mut cmd = issue_cmd("r3", "g3", "t1", 3000, 60_000);
    if let Command::Issue(c) = &mut cmd {
        c.scopes[0].resource = "prod/db".into();
    }
    match m.run(cmd) {
        CommandResult::PolicyDenied { policy_ids, .. } => {
            assert_eq!(policy_ids, vec!["no-prod-without-ticket"])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn policy_decides_check_with_the_tool_servers_attributes() {
    let mut m = Mem::default();
    m.run(issue_cmd("r1", "g1", "t1", 1000, 600_000));
    let mut write = issue_cmd("r2", "g2", "t2", 1000, 600_000);
    if let Command::Issue(c) = &mut write {
        c.scopes[0].actions = vec!["read".into(), "write".into()];
    }
    m.run(write);
    m.run(set_policy(ORCH_ONLY, NoMatch::Deny, 1500));
    let checked = |r: CommandResult| match r {
        CommandResult::Checked(v) => (v[0].reason, v[0].policy_ids.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        checked(m.run(check_cmd("g1", AGENT, "github", "read", 2000))),
        (Reason::Allowed, vec!["reads".to_string()])
    );
    // Covered by the grant, but no policy permits writes.
    assert_eq!(
        checked(m.run(check_cmd("g2", AGENT, "github", "write", 2000))),
        (Reason::PolicyDenied, vec![])
    );
    // The grant alone denies: the policy is not asked.
    assert_eq!(
        checked(m.run(check_cmd("g1", AGENT, "github", "write", 2000))),
        (Reason::OutOfScope, vec![])
    );
    // A grant on a production tool: the ticket comes from the tool server.
    let mut prod = issue_cmd("r3", "g3", "t3", 1000, 600_000);
    if let Command::Issue(c) = &mut prod {
        c.issuer = "spiffe://example.org/orchestrator".into();
        c.scopes[0].resource = "prod/db".into();
        c.now_ms = 1000;
    }
    // Issued before the policy forbade it? No: issued now, so it is denied.
    assert!(matches!(m.run(prod), CommandResult::PolicyDenied { .. }));
    m.run(set_policy(r#"@id("reads") permit (principal, action == Action::"read", resource) when { context.request has ticket };"#, NoMatch::Deny, 2500));
    let mut with_ticket = check_cmd("g1", AGENT, "github", "read", 3000);
    if let Command::Checks { checks, .. } = &mut with_ticket {
        checks[0].attributes.insert("ticket".into(), "OPS-7".into());
    }
    assert_eq!(
        checked(m.run(with_ticket)),
        (Reason::Allowed, vec!["reads".to_string()])
    );
    let e = m.audit.last().unwrap();
    assert_eq!(e.detail, r#"{"attributes":{"ticket":"OPS-7"}}"#);
    assert_eq!(
        checked(m.run(check_cmd("g1", AGENT, "github", "read", 3000))),
        (Reason::PolicyDenied, vec![])
    );
}

#[test]
fn no_match_allow_lets_through_what_no_policy_forbids() {
    let mut m = Mem::default();
    m.run(issue_cmd("r1", "g1", "t1", 1000, 600_000));
    m.run(set_policy(
        r#"@id("f") forbid (principal, action == Action::"write", resource);"#,
        NoMatch::Allow,
        1500,
    ));
    assert_eq!(
        reason(m.run(check_cmd("g1", AGENT, "github", "read", 2000))),
        Reason::Allowed
    );
    assert!(matches!(
        m.run(issue_cmd("r2", "g2", "t1", 2000, 60_000)),
        CommandResult::Issued { .. }
    ));
}

fn renew_cmd(grant: &str, to_ms: i64, now: i64) -> Command {
    Command::Renew(RenewCmd {
        grant_id: grant.into(),
        expires_at_ms: to_ms,
        actor: AGENT.into(),
        now_ms: now,
    })
}

#[test]
fn issue_delegate_and_renew_entries_carry_the_whole_scope() {
    let mut m = Mem {
        explicit_tasks: true,
        ..Mem::default()
    };
    m.run(begin_cmd("t1", 100_000, 0));
    let Command::Issue(mut c) = issue_cmd("r1", "g1", "t1", 1000, 10_000) else {
        unreachable!()
    };
    c.scopes.push(Scope {
        resource: "jira".into(),
        actions: vec!["read".into(), "comment".into()],
    });
    m.run(Command::Issue(c));
    let scopes = |e: &grant_proto::audit::Entry| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&e.detail).unwrap()["scopes"].clone()
    };
    let both = serde_json::json!([
        { "resource": "github", "actions": ["read"] },
        { "resource": "jira", "actions": ["read", "comment"] },
    ]);
    let e = m.audit.last().unwrap();
    assert_eq!((e.kind, e.resource.as_str()), (Kind::Issue, "github,jira"));
    assert_eq!(scopes(e), both);
    m.run(renew_cmd("g1", 20_000, 2000));
    let e = m.audit.last().unwrap();
    assert_eq!((e.kind, e.resource.as_str()), (Kind::Renew, "github,jira"));
    assert_eq!(scopes(e), both);
    m.run(delegate_cmd(
        "d1",
        "c1",
        "g1",
        AGENT,
        &[("jira", &["comment"])],
        3000,
        5000,
    ));
    let e = m.audit.last().unwrap();
    assert_eq!((e.kind, e.resource.as_str()), (Kind::Delegate, "jira"));
    assert_eq!(
        scopes(e),
        serde_json::json!([{ "resource": "jira", "actions": ["comment"] }])
    );
}

fn expiry_after(r: CommandResult) -> (i64, bool) {
    match r {
        CommandResult::Renewed {
            grant, extended, ..
        } => (grant.expires_at_ms, extended),
        other => panic!("not a renewal: {other:?}"),
    }
}

#[test]
fn renew_extends_within_the_maximum_lifetime_and_the_task_deadline() {
    let mut m = Mem {
        explicit_tasks: true,
        ..Mem::default()
    };
    m.run(begin_cmd("t1", 100_000, 0));
    m.run(begin_cmd("t2", 10_000_000, 0));
    // Issued at 1 s for 10 s; the maximum lifetime is an hour.
    m.run(issue_cmd("r1", "g1", "t1", 1000, 10_000));
    assert_eq!(
        expiry_after(m.run(renew_cmd("g1", 25_000, 5000))),
        (25_000, true)
    );
    let e = m.audit.last().unwrap();
    assert_eq!(
        (e.kind, e.grant_id.as_str(), e.actor.as_str()),
        (Kind::Renew, "g1", AGENT)
    );
    assert!(
        e.detail.contains("\"previous_expires_at_ms\":11000"),
        "{}",
        e.detail
    );
    // The task's deadline caps it, then nothing moves (and nothing is recorded).
    assert_eq!(
        expiry_after(m.run(renew_cmd("g1", 500_000, 6000))),
        (100_000, true)
    );
    let entries = m.audit.len();
    assert_eq!(
        expiry_after(m.run(renew_cmd("g1", 500_000, 7000))),
        (100_000, false)
    );
    assert_eq!(m.audit.len(), entries);
    // The maximum lifetime caps it (issue time + an hour).
    m.run(issue_cmd("r2", "g2", "t2", 1000, 10_000));
    assert_eq!(
        expiry_after(m.run(renew_cmd("g2", 9_000_000, 8000))),
        (3_601_000, true)
    );
    // Neither a revoked nor an expired grant renews; nor an unknown one.
    m.run(Command::Revoke(RevokeCmd {
        grant_id: "g2".into(),
        reason: "done".into(),
        actor: OWNER.into(),
        now_ms: 9000,
    }));
    assert!(matches!(
        m.run(renew_cmd("g2", 20_000, 10_000)),
        CommandResult::Rejected(Rejection::FailedPrecondition(_))
    ));
    assert!(matches!(
        m.run(renew_cmd("g1", 200_000, 100_000)),
        CommandResult::Rejected(Rejection::FailedPrecondition(_))
    ));
    assert!(matches!(
        m.run(renew_cmd("nope", 20_000, 10_000)),
        CommandResult::Rejected(Rejection::NotFound(_))
    ));
}

#[test]
fn renew_asks_the_policy_about_the_whole_lifetime() {
    let mut m = Mem::default();
    let short_lived = r#"
@id("short-grants") permit (principal, action == Action::"issue", resource)
  when { context.ttl_seconds <= 60 };
"#;
    m.run(set_policy(short_lived, NoMatch::Deny, 0));
    m.run(issue_cmd("r1", "g1", "t1", 1000, 30_000));
    // 50 s of lifetime in all: allowed, with the permit on the record.
    assert_eq!(
        expiry_after(m.run(renew_cmd("g1", 51_000, 2000))),
        (51_000, true)
    );
    assert_eq!(m.audit.last().unwrap().policy_ids, vec!["short-grants"]);
    // 120 s in all: denied, recorded, the expiry stays.
    match m.run(renew_cmd("g1", 121_000, 3000)) {
        CommandResult::PolicyDenied { message, .. } => {
            assert!(message.contains("lifetime of 120 s"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let e = m.audit.last().unwrap();
    assert_eq!((e.kind, e.decision), (Kind::Renew, Decision::Deny));
    assert_eq!(m.grants["g1"].expires_at_ms, 51_000);
}

const HELPER: &str = "spiffe://example.org/agent/helper";

/// `holder` delegates `scopes` of `parent` to HELPER as grant `id`.
fn delegate_cmd(
    req: &str,
    id: &str,
    parent: &str,
    holder: &str,
    scopes: &[(&str, &[&str])],
    now: i64,
    ttl_ms: i64,
) -> Command {
    let Command::Issue(mut grant) = issue_cmd(req, id, "t1", now, ttl_ms) else {
        unreachable!()
    };
    grant.issuer = holder.into();
    grant.subject = HELPER.into();
    grant.scopes = scopes
        .iter()
        .map(|(r, a)| Scope {
            resource: r.to_string(),
            actions: a.iter().map(|a| a.to_string()).collect(),
        })
        .collect();
    Command::Delegate(DelegateCmd {
        grant,
        parent_grant_id: parent.into(),
        sub_task: "summarise".into(),
        depth_max: 2,
    })
}

fn rejected(r: CommandResult) -> Rejection {
    match r {
        CommandResult::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn delegation_cannot_widen_outlive_or_go_too_deep() {
    let mut m = Mem::default();
    // The parent: github read+comment... as issue_cmd gives github read.
    m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
    let read: &[(&str, &[&str])] = &[("github", &["read"])];
    // Not its holder; wider scopes (another action, another tool); longer.
    for (what, cmd) in [
        (
            "not the holder",
            delegate_cmd("d", "x", "g1", HELPER, read, 2000, 10_000),
        ),
        (
            "another action",
            delegate_cmd(
                "d",
                "x",
                "g1",
                AGENT,
                &[("github", &["read", "write"])],
                2000,
                10_000,
            ),
        ),
        (
            "another tool",
            delegate_cmd("d", "x", "g1", AGENT, &[("jira", &["read"])], 2000, 10_000),
        ),
        (
            "outlives it",
            delegate_cmd("d", "x", "g1", AGENT, read, 2000, 60_000),
        ),
    ] {
        assert!(
            matches!(rejected(m.run(cmd)), Rejection::FailedPrecondition(_)),
            "{what}"
        );
    }
    assert!(matches!(
        rejected(m.run(delegate_cmd("d", "x", "nope", AGENT, read, 2000, 10_000))),
        Rejection::NotFound(_)
    ));
    assert!(!m.grants.contains_key("x"));
    // Within: depth 1, recorded as a delegation by the holder.
    match m.run(delegate_cmd("d1", "c1", "g1", AGENT, read, 2000, 10_000)) {
        CommandResult::Issued { grant, .. } => {
            assert_eq!((grant.depth, grant.parent_grant_id.as_str()), (1, "g1"));
            assert_eq!(grant.subject, HELPER);
        }
        other => panic!("{other:?}"),
    }
    let e = m.audit.last().unwrap();
    assert_eq!((e.kind, e.actor.as_str()), (Kind::Delegate, AGENT));
    assert!(
        e.detail.contains("\"parent_grant_id\":\"g1\""),
        "{}",
        e.detail
    );
    // Depth 2 from it; depth 3 is past depth_max.
    m.run(delegate_cmd("d2", "c2", "c1", HELPER, read, 2000, 5_000));
    assert_eq!(m.grants["c2"].depth, 2);
    assert!(matches!(
        rejected(m.run(delegate_cmd("d3", "c3", "c2", HELPER, read, 2000, 1_000))),
        Rejection::ResourceExhausted(_)
    ));
    // A renewal of a delegated grant stops at its parent's expiry.
    assert_eq!(
        expiry_after(m.run(renew_cmd("c2", 50_000, 3000))),
        (12_000, true)
    );
}

#[test]
fn revoking_a_grant_revokes_everything_delegated_from_it() {
    let mut m = Mem::default();
    let read: &[(&str, &[&str])] = &[("github", &["read"])];
    m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
    m.run(issue_cmd("r2", "g2", "t1", 1000, 60_000));
    m.run(delegate_cmd("d1", "c1", "g1", AGENT, read, 2000, 10_000));
    m.run(delegate_cmd("d2", "c2", "c1", HELPER, read, 2000, 10_000));
    m.run(delegate_cmd("d3", "c3", "g2", AGENT, read, 2000, 10_000));
    match m.run(Command::Revoke(RevokeCmd {
        grant_id: "g1".into(),
        reason: "done".into(),
        actor: OWNER.into(),
        now_ms: 3000,
    })) {
        CommandResult::Revoked {
            mut descendants_revoked,
            ..
        } => {
            descendants_revoked.sort();
            assert_eq!(descendants_revoked, vec!["c1", "c2"]);
        }
        other => panic!("{other:?}"),
    }
    for id in ["c1", "c2"] {
        assert_eq!(m.grants[id].state, GrantState::Revoked);
        assert_eq!(
            reason(m.run(check_cmd(id, HELPER, "github", "read", 3500))),
            Reason::Revoked
        );
    }
    assert_eq!(m.grants["c3"].state, GrantState::Active, "another parent's");
    // Each revocation is on the record.
    let revokes = m.audit.iter().filter(|e| e.kind == Kind::Revoke).count();
    assert_eq!(revokes, 3);
    // Completing the task takes the rest, delegated ones included.
    match m.run(close_cmd("t1", TaskState::Completed, 4000)) {
        CommandResult::TaskClosed {
            revoked_grant_ids, ..
        } => assert_eq!(revoked_grant_ids, vec!["c3".to_string(), "g2".to_string()]),
        other => panic!("{other:?}"),
    }
}

fn with_quota(cmd: Command, per_subject: u64, per_task: u64) -> Command {
    let Command::Issue(mut c) = cmd else {
        unreachable!()
    };
    c.quota = Quota {
        active_per_subject_max: per_subject,
        active_per_task_max: per_task,
    };
    Command::Issue(c)
}

#[test]
fn quotas_count_active_grants_and_refuse_changing_nothing() {
    let mut m = Mem::default();
    let subject = Counted::Subject(AGENT.into());
    for (i, task) in ["t1", "t2"].iter().enumerate() {
        let r = m.run(with_quota(
            issue_cmd(&format!("r{i}"), &format!("g{i}"), task, 1000, 5_000),
            2,
            0,
        ));
        assert!(matches!(r, CommandResult::Issued { .. }), "{r:?}");
    }
    assert_eq!(m.active[&subject], 2);
    let entries = m.audit.len();
    let over = m.run(with_quota(issue_cmd("r2", "g2", "t3", 1000, 5_000), 2, 0));
    assert!(
        matches!(over, CommandResult::Rejected(Rejection::ResourceExhausted(ref msg)) if msg.contains("active_grants_per_subject_max")),
        "{over:?}"
    );
    assert_eq!(
        (m.grants.len(), m.audit.len()),
        (2, entries),
        "nothing changed"
    );
    // A revoke frees a place; so does the sweep retiring an expired grant.
    m.run(Command::Revoke(RevokeCmd {
        grant_id: "g0".into(),
        reason: "done".into(),
        actor: OWNER.into(),
        now_ms: 2000,
    }));
    assert_eq!(m.active[&subject], 1);
    assert!(matches!(
        m.run(with_quota(issue_cmd("r2", "g2", "t3", 2000, 60_000), 2, 0)),
        CommandResult::Issued { .. }
    ));
    m.run(Command::Sweep(SweepCmd {
        now_ms: 7000,
        purge_before_ms: 0,
    }));
    assert_eq!(m.active[&subject], 1, "g1 expired");
    // Per task: the second active grant of t3 is refused, another task's is not.
    let r = m.run(with_quota(issue_cmd("r3", "g3", "t3", 8000, 60_000), 0, 1));
    assert!(
        matches!(r, CommandResult::Rejected(Rejection::ResourceExhausted(ref msg)) if msg.contains("active_grants_per_task_max")),
        "{r:?}"
    );
    assert!(matches!(
        m.run(with_quota(issue_cmd("r4", "g4", "t4", 8000, 60_000), 0, 1)),
        CommandResult::Issued { .. }
    ));
    // Completing a task gives its places back.
    m.run(close_cmd("t3", TaskState::Completed, 9000));
    assert_eq!(
        m.active
            .get(&Counted::Task("t3".into()))
            .copied()
            .unwrap_or(0),
        0
    );
    assert_eq!(m.active[&subject], 1);
}

fn issue_of(cmd: Command) -> IssueCmd {
    let Command::Issue(c) = cmd else {
        unreachable!()
    };
    c
}

/// A batch of issues in one entry decides each as if it were an entry of
/// its own: a retried request id within the batch gets the grant of the
/// first, and quotas count the grants issued before it in the batch.
#[test]
fn a_batch_of_issues_decides_each_on_what_the_ones_before_it_wrote() {
    let cmds = || {
        vec![
            issue_of(with_quota(issue_cmd("r1", "g1", "t1", 1000, 60_000), 0, 2)),
            // r1 again (a client's retry), with the fresh grant id a node draws.
            issue_of(with_quota(issue_cmd("r1", "g1b", "t1", 1001, 60_000), 0, 2)),
            issue_of(with_quota(issue_cmd("r2", "g2", "t1", 1002, 60_000), 0, 2)),
            // A third active grant of t1: over its quota of two.
            issue_of(with_quota(issue_cmd("r3", "g3", "t1", 1003, 60_000), 0, 2)),
            // r2 reused for another task: refused.
            issue_of(with_quota(issue_cmd("r2", "g4", "t2", 1004, 60_000), 0, 2)),
            issue_of(with_quota(issue_cmd("r5", "g5", "t2", 1005, 60_000), 0, 2)),
        ]
    };
    let mut batched = Mem::default();
    let CommandResult::Each(results) = batched.run(Command::Issues(cmds())) else {
        panic!("a batch answers with one result per issue")
    };
    let mut one_by_one = Mem::default();
    let separate: Vec<CommandResult> = cmds()
        .into_iter()
        .map(|c| one_by_one.run(Command::Issue(c)))
        .collect();

    assert_eq!(results.len(), 6);
    let issued = |r: &CommandResult| match r {
        CommandResult::Issued {
            grant, replayed, ..
        } => Some((grant.grant_id.clone(), *replayed)),
        _ => None,
    };
    assert_eq!(issued(&results[0]), Some(("g1".into(), false)));
    assert_eq!(
        issued(&results[1]),
        Some(("g1".into(), true)),
        "{:?}",
        results[1]
    );
    assert_eq!(issued(&results[2]), Some(("g2".into(), false)));
    assert!(
        matches!(&results[3], CommandResult::Rejected(Rejection::ResourceExhausted(m)) if m.contains("active_grants_per_task_max")),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(
            &results[4],
            CommandResult::Rejected(Rejection::FailedPrecondition(_))
        ),
        "{:?}",
        results[4]
    );
    assert_eq!(issued(&results[5]), Some(("g5".into(), false)));

    // The same results and the same state as six entries of one issue each
    // (audit entries aside: theirs name six log indexes, the batch's one).
    for (b, s) in results.iter().zip(&separate) {
        assert_eq!(issued(b), issued(s));
        assert_eq!(
            std::mem::discriminant(b),
            std::mem::discriminant(s),
            "{b:?} / {s:?}"
        );
    }
    // Grants name the entry that issued them, dedupe records its audit
    // entry (whose hash covers the log index): the rest is the same.
    let grants = |m: &Mem| {
        m.grants
            .values()
            .map(|g| GrantRecord {
                issued_index: 0,
                ..g.clone()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(grants(&batched), grants(&one_by_one));
    let dedupe = |m: &Mem| {
        m.dedupe
            .iter()
            .map(|(r, d)| (r.clone(), d.grant_id.clone(), d.fingerprint.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(dedupe(&batched), dedupe(&one_by_one));
    assert_eq!(batched.tasks, one_by_one.tasks);
    assert_eq!(batched.active, one_by_one.active);
    assert_eq!(batched.tasks["t1"].grant_count, 2);
    let kinds = |m: &Mem| {
        m.audit
            .iter()
            .map(|e| (e.kind, e.grant_id.clone(), e.seq))
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&batched), kinds(&one_by_one));
    assert!(batched.audit.iter().all(|e| e.log_index == 1), "one entry");
}

/// A batch of revokes decides each on what the ones before it wrote: a
/// grant revoked earlier in the entry (by itself or with its parent) is
/// already inactive, as it would be in an entry of its own.
#[test]
fn a_batch_of_revokes_decides_each_on_what_the_ones_before_it_wrote() {
    let read: &[(&str, &[&str])] = &[("github", &["read"])];
    let setup = || {
        let mut m = Mem::default();
        m.run(issue_cmd("r1", "g1", "t1", 1000, 60_000));
        m.run(issue_cmd("r2", "g2", "t1", 1000, 60_000));
        m.run(delegate_cmd("d1", "c1", "g2", AGENT, read, 2000, 10_000));
        m
    };
    let revoke = |id: &str| RevokeCmd {
        grant_id: id.into(),
        reason: "done".into(),
        actor: OWNER.into(),
        now_ms: 3000,
    };
    let cmds = || {
        vec![
            revoke("g1"),
            revoke("g1"),
            revoke("g2"),
            revoke("c1"),
            revoke("nope"),
        ]
    };
    let mut batched = setup();
    let CommandResult::Each(results) = batched.run(Command::Revokes(cmds())) else {
        panic!("a batch answers with one result per revoke")
    };
    let mut one_by_one = setup();
    let separate: Vec<CommandResult> = cmds()
        .into_iter()
        .map(|c| one_by_one.run(Command::Revoke(c)))
        .collect();

    let revoked = |r: &CommandResult| match r {
        CommandResult::Revoked {
            grant,
            already_inactive,
            descendants_revoked,
            ..
        } => Some((
            grant.grant_id.clone(),
            *already_inactive,
            descendants_revoked.clone(),
        )),
        _ => None,
    };
    assert_eq!(revoked(&results[0]), Some(("g1".into(), false, vec![])));
    assert_eq!(revoked(&results[1]), Some(("g1".into(), true, vec![])));
    assert_eq!(
        revoked(&results[2]),
        Some(("g2".into(), false, vec!["c1".to_string()]))
    );
    assert_eq!(revoked(&results[3]), Some(("c1".into(), true, vec![])));
    assert!(matches!(
        &results[4],
        CommandResult::Rejected(Rejection::NotFound(_))
    ));
    for (b, s) in results.iter().zip(&separate) {
        assert_eq!(revoked(b), revoked(s));
    }
    assert_eq!(batched.grants, one_by_one.grants);
    assert_eq!(batched.active, one_by_one.active);
    let entries = |m: &Mem| {
        m.audit
            .iter()
            .map(|e| (e.kind, e.grant_id.clone(), e.seq))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        entries(&batched),
        entries(&one_by_one),
        "one entry per revocation"
    );
}
