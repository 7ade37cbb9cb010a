//! Micro benchmarks (criterion): the audit hash (canonical bytes and
//! SHA-256 of one entry, and chaining it into the Merkle frontier), an
//! export line made from a stored entry (what Export does per entry), and the
//! apply path (the pure ledger rules deciding an Issue and a batch of
//! Checks, plus encoding their writes into sled operations, without and
//! with a policy set of 200).
//!
//!   cargo bench -p grant-bench --bench micro

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use grant_proto::audit::{Entry, Kind};
use grantd::ledger::{
    apply, ApplyCtx, Chain, ChainStart, CheckCmd, Command, Counted, DedupeRecord, GrantRecord,
    IssueCmd, LedgerState, Scope, StateError, TaskRecord, TaskState, Write,
};
use grantd::storage::keyspace::{audit_line, encode_write, WriteSet};

/// A map-backed state holding some grants.
#[derive(Default)]
struct Mem {
    grants: BTreeMap<String, GrantRecord>,
    policy: Option<std::sync::Arc<grant_policy::Compiled>>,
}

impl LedgerState for Mem {
    fn policy(&self) -> Result<Option<std::sync::Arc<grant_policy::Compiled>>, StateError> {
        Ok(self.policy.clone())
    }
    fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StateError> {
        Ok(self.grants.get(id).cloned())
    }
    fn dedupe(&self, _: &str) -> Result<Option<DedupeRecord>, StateError> {
        Ok(None)
    }
    fn task_grant_ids(&self, _: &str, _: usize) -> Result<Vec<String>, StateError> {
        Ok(Vec::new())
    }
    fn active_grants(&self, _: &Counted) -> Result<u64, StateError> {
        Ok(0)
    }
    fn child_grant_ids(&self, _: &str, _: usize) -> Result<Vec<String>, StateError> {
        Ok(Vec::new())
    }
    /// Every task is open, declared "github", and far from its deadline.
    fn task(&self, id: &str) -> Result<Option<TaskRecord>, StateError> {
        Ok(Some(TaskRecord {
            task_id: id.into(),
            owner: "spiffe://example.org/orchestrator".into(),
            intent: "triage issue 42".into(),
            declared_tools: vec!["github".into()],
            begun_at_ms: 1_700_000_000_000,
            deadline_ms: 1_900_000_000_000,
            state: TaskState::Open,
            closed_at_ms: 0,
            closed_by: String::new(),
            close_reason: String::new(),
            grant_count: 0,
            fingerprint: String::new(),
            begun_index: 1,
        }))
    }
    fn tasks_past_deadline(&self, _: i64, _: usize) -> Result<Vec<String>, StateError> {
        Ok(Vec::new())
    }
    fn expired_grant_ids(&self, _: i64, _: usize) -> Result<Vec<String>, StateError> {
        Ok(Vec::new())
    }
    fn retired_before(&self, _: i64, _: usize) -> Result<Vec<String>, StateError> {
        Ok(Vec::new())
    }
    fn tasks_closed_before(&self, _: i64, _: usize) -> Result<Vec<String>, StateError> {
        Ok(Vec::new())
    }
    fn checkpoints_below(&self, _: u64, _: usize) -> Result<Vec<u64>, StateError> {
        Ok(Vec::new())
    }
    fn dedupe_older_than(&self, _: i64, _: usize) -> Result<Vec<(i64, String)>, StateError> {
        Ok(Vec::new())
    }
    fn roster_keys(&self, _: &str) -> Result<Vec<String>, StateError> {
        Ok(Vec::new())
    }
    fn token_key_known(&self, _: &str) -> Result<bool, StateError> {
        Ok(true)
    }
    fn tree_root(&self, _: u64) -> Result<Option<grant_proto::audit::Hash>, StateError> {
        Ok(None)
    }
    fn latest_checkpoint_size(&self) -> Result<Option<u64>, StateError> {
        Ok(None)
    }
    fn chain_start(&self) -> Result<ChainStart, StateError> {
        Ok(ChainStart::default())
    }
}

const AGENT: &str = "spiffe://example.org/agent/planner";

fn issue(i: u64) -> Command {
    Command::Issue(IssueCmd {
        request_id: format!("req-{i}"),
        fingerprint: "f".repeat(64),
        grant_id: format!("{i:032x}"),
        subject: AGENT.into(),
        task_id: format!("task-{}", i / 10),
        scopes: vec![Scope {
            resource: "github".into(),
            actions: vec!["read".into(), "comment".into()],
        }],
        intent: "triage issue 42".into(),
        issuer: "spiffe://example.org/orchestrator".into(),
        token_hash: "a".repeat(64),
        now_ms: 1_800_000_000_000,
        expires_at_ms: 1_800_000_300_000,
        max_expires_at_ms: 1_800_003_600_000,
        quota: Default::default(),
    })
}

fn check_entry() -> Entry {
    let mut e = Entry::new(Kind::Check, 1_800_000_000_000);
    e.seq = 123_456;
    e.log_index = 234_567;
    e.actor = "spiffe://example.org/tool/github".into();
    e.subject = AGENT.into();
    e.task_id = "task-1".into();
    e.grant_id = "0f".repeat(16);
    e.resource = "github".into();
    e.action = "read".into();
    e.intent = "triage issue 42".into();
    e.reason = "Allowed".into();
    e
}

fn audit_hash(c: &mut Criterion) {
    let e = check_entry();
    c.bench_function("audit entry hash (canonical bytes + SHA-256)", |b| {
        b.iter(|| std::hint::black_box(&e).hash())
    });
    c.bench_function("audit chain append (hash, leaf, frontier)", |b| {
        b.iter_batched(
            || (Chain::default(), check_entry()),
            |(mut chain, e)| chain.append(e, 1),
            BatchSize::SmallInput,
        )
    });
    let stored = check_entry().canonical_bytes();
    c.bench_function(
        "export line from a stored entry (read canonical bytes, SHA-256, JSON)",
        |b| b.iter(|| audit_line(std::hint::black_box(&stored)).unwrap()),
    );
}

/// What a replica does with an entry before sled: decide, then encode.
fn apply_and_encode(cmd: &Command, log_index: u64, state: &Mem) -> WriteSet {
    let a = apply(
        cmd,
        ApplyCtx {
            log_index,
            chain: Chain::default(),
        },
        state,
    )
    .unwrap();
    let mut ws = WriteSet::default();
    for w in &a.writes {
        encode_write(w, &mut ws);
    }
    ws
}

fn apply_path(c: &mut Criterion) {
    c.bench_function("apply issue (rules + audit entry + encoded writes)", |b| {
        let state = Mem::default();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            apply_and_encode(&issue(i), i, &state)
        })
    });
    // A state with 1000 grants, and a batch of 256 checks of them.
    let mut state = Mem::default();
    for i in 0..1000u64 {
        let a = apply(
            &issue(i),
            ApplyCtx {
                log_index: i + 1,
                chain: Chain::default(),
            },
            &state,
        )
        .unwrap();
        for w in a.writes {
            if let Write::InsertGrant(g) = w {
                state.grants.insert(g.grant_id.clone(), g);
            }
        }
    }
    let checks = Command::Checks {
        now_ms: 1_800_000_001_000,
        checks: (0..256u64)
            .map(|i| CheckCmd {
                grant_id: format!("{:032x}", i * 3),
                forged: false,
                identity: AGENT.into(),
                resource: "github".into(),
                action: "read".into(),
                actor: "spiffe://example.org/tool/github".into(),
                attributes: Default::default(),
                token_expires_at_ms: 1_800_000_300_000,
            })
            .collect(),
    };
    c.bench_function("apply a batch of 256 checks (per batch)", |b| {
        b.iter(|| apply_and_encode(&checks, 5000, &state))
    });
    // The same batch decided against a realistic policy set of 200.
    let policies = grant_tests::policies::realistic(200);
    let compiled =
        grant_policy::compile(&policies, grant_policy::SCHEMA_DEFAULT, Default::default())
            .expect("the benchmark's policies compile");
    state.policy = Some(std::sync::Arc::new(compiled));
    c.bench_function(
        "apply a batch of 256 checks, 200 policies (per batch)",
        |b| b.iter(|| apply_and_encode(&checks, 5000, &state)),
    );
}

criterion_group!(benches, audit_hash, apply_path);
criterion_main!(benches);
