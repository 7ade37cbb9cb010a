//! Fault injection for the crash tests: with `GRANTD_CRASH_AT=<point>:<n>`
//! in its environment, grantd aborts (SIGABRT, no clean-up, as a kill -9
//! would leave it) the n-th time apply passes `<point>`:
//!
//! - `audit-appended`: an entry's audit entries are in the audit store, the
//!   state that counts them is not written;
//! - `state-written`: the entry's state is written, nothing is synced.
//!
//! Unset, each point costs one load of an initialised `OnceLock`. The tests
//! in `tests/tests/t24_audit_crash.rs` restart the node without it and
//! compare every replica's state and chain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    AuditAppended,
    StateWritten,
}

impl CrashPoint {
    fn name(self) -> &'static str {
        match self {
            CrashPoint::AuditAppended => "audit-appended",
            CrashPoint::StateWritten => "state-written",
        }
    }
}

pub const ENV: &str = "GRANTD_CRASH_AT";

static PLAN: OnceLock<Option<(CrashPoint, AtomicU64)>> = OnceLock::new();

fn plan() -> Option<(CrashPoint, AtomicU64)> {
    let v = std::env::var(ENV).ok()?;
    let (point, n) = v.split_once(':').unwrap_or((&v, "1"));
    let point = [CrashPoint::AuditAppended, CrashPoint::StateWritten]
        .into_iter()
        .find(|p| p.name() == point)
        .unwrap_or_else(|| panic!("{ENV}={v}: no such crash point"));
    let n: u64 = n
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| panic!("{ENV}={v}: the count is a number above 0"));
    Some((point, AtomicU64::new(n)))
}

/// Abort here if the plan says this is the passage to crash at.
pub fn crash_point(at: CrashPoint) {
    if let Some((point, left)) = PLAN.get_or_init(plan) {
        if *point == at && left.fetch_sub(1, Ordering::Relaxed) == 1 {
            eprintln!("{ENV}: crashing at {}", at.name());
            std::process::abort();
        }
    }
}
