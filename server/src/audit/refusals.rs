//! Refused calls on their way into the audit chain (docs/audit-format.md,
//! "Refused calls").
//!
//! Every node keeps a recorder. A refusal it sees (`api::refusals`) is
//! queued as it is, up to a per-caller rate; beyond that rate it is only
//! counted, per caller and method, and the count goes in as one aggregate
//! entry when the window closes. So a flood of refusals costs at most a
//! bounded number of entries per window, and none goes unrecorded.
//!
//! The leader's recorder proposes what is due every REFUSAL_FLUSH_MS as one
//! `Refusals` command; a follower's sends what is due to the leader's
//! recorder (the `Refusals` peer RPC), which proposes it with its own. What
//! cannot be delivered (no leader) waits in the queue; what overflows the
//! queue is folded into the aggregates. A node that crashes loses what it
//! had not yet handed on: at most one flush interval of refusals and the
//! aggregates of the open window. The metrics count every refusal.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::ledger::Refusal;
use crate::limits::{
    REFUSALS_PER_CALLER, REFUSALS_PER_WINDOW, REFUSAL_AGGREGATES_MAX, REFUSAL_BATCH_MAX,
    REFUSAL_FIELD_BYTES_MAX, REFUSAL_FLUSH_MS, REFUSAL_QUEUE_MAX,
};

/// What a refused request named, as far as it could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub subject: String,
    pub task_id: String,
    pub grant_id: String,
    pub resource: String,
}

/// The caller and method an aggregate stands for when there are too many
/// of them to count apart.
pub const OTHERS: &str = "*";

pub struct Refusals {
    node_id: u64,
    /// The rate's window (config `refusal_window_ms`).
    window_ms: i64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    window_start_ms: i64,
    /// Refusals queued one by one in this window: per caller, and in all.
    per_caller: HashMap<String, u32>,
    in_window: u32,
    /// Refusals beyond the rate, per (caller, method).
    aggregates: HashMap<(String, String), Refusal>,
    queue: VecDeque<Refusal>,
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl Inner {
    /// Close the window if it is over: its aggregates become due.
    fn roll(&mut self, now_ms: i64, window_ms: i64) {
        if now_ms - self.window_start_ms < window_ms {
            return;
        }
        let mut closed: Vec<Refusal> = self.aggregates.drain().map(|(_, r)| r).collect();
        // The same order on every run: by when they began.
        closed.sort_by(|a, b| {
            (a.first_ms, &a.caller, &a.method).cmp(&(b.first_ms, &b.caller, &b.method))
        });
        self.queue.extend(closed);
        self.per_caller.clear();
        self.in_window = 0;
        self.window_start_ms = now_ms;
    }

    /// Count `r` into the aggregate of its caller and method.
    fn fold(&mut self, r: Refusal, window_ms: i64) {
        let mut key = (r.caller.clone(), r.method.clone());
        if !self.aggregates.contains_key(&key) && self.aggregates.len() >= REFUSAL_AGGREGATES_MAX {
            key = (OTHERS.to_string(), OTHERS.to_string());
        }
        let others = key.0 == OTHERS;
        let a = self.aggregates.entry(key).or_insert_with(|| Refusal {
            caller: if others {
                OTHERS.into()
            } else {
                r.caller.clone()
            },
            method: if others {
                OTHERS.into()
            } else {
                r.method.clone()
            },
            subject: String::new(),
            task_id: String::new(),
            grant_id: String::new(),
            resource: String::new(),
            code: r.code.clone(),
            message: format!(
                "refusals beyond {REFUSALS_PER_CALLER} a caller per {window_ms} ms, counted"
            ),
            count: 0,
            first_ms: r.first_ms,
            last_ms: r.last_ms,
            node_id: r.node_id,
        });
        a.count += r.count;
        a.first_ms = a.first_ms.min(r.first_ms);
        a.last_ms = a.last_ms.max(r.last_ms);
    }
}

impl Refusals {
    pub fn new(node_id: u64, window_ms: u64) -> Refusals {
        Refusals {
            node_id,
            window_ms: window_ms.max(1) as i64,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A call from `caller` to `method` was refused with `code`: `message`.
    pub fn record(&self, caller: &str, method: &str, target: Target, code: &str, message: &str) {
        let now = crate::api::now_ms();
        let f = REFUSAL_FIELD_BYTES_MAX;
        let r = Refusal {
            caller: cut(caller, f),
            method: cut(method, f),
            subject: cut(&target.subject, f),
            task_id: cut(&target.task_id, f),
            grant_id: cut(&target.grant_id, f),
            resource: cut(&target.resource, f),
            code: cut(code, f),
            message: cut(message, 4 * f),
            count: 1,
            first_ms: now,
            last_ms: now,
            node_id: self.node_id,
        };
        let mut i = self.inner.lock().expect("refusals lock");
        i.roll(now, self.window_ms);
        let n = i.per_caller.get(&r.caller).copied().unwrap_or(0);
        if n < REFUSALS_PER_CALLER
            && i.in_window < REFUSALS_PER_WINDOW
            && i.queue.len() < REFUSAL_QUEUE_MAX
        {
            *i.per_caller.entry(r.caller.clone()).or_default() += 1;
            i.in_window += 1;
            i.queue.push_back(r);
        } else {
            i.fold(r, self.window_ms);
        }
    }

    /// Refusals another node sends on to this one (the leader).
    pub fn accept(&self, batch: Vec<Refusal>) {
        let mut i = self.inner.lock().expect("refusals lock");
        for r in batch {
            if i.queue.len() < REFUSAL_QUEUE_MAX {
                i.queue.push_back(r);
            } else {
                i.fold(r, self.window_ms);
            }
        }
    }

    /// What is due now, at most REFUSAL_BATCH_MAX.
    fn take(&self, now_ms: i64) -> Vec<Refusal> {
        let mut i = self.inner.lock().expect("refusals lock");
        i.roll(now_ms, self.window_ms);
        let n = i.queue.len().min(REFUSAL_BATCH_MAX);
        i.queue.drain(..n).collect()
    }

    /// A batch that was not delivered goes back to the front.
    fn put_back(&self, batch: Vec<Refusal>) {
        let mut i = self.inner.lock().expect("refusals lock");
        for r in batch.into_iter().rev() {
            if i.queue.len() < REFUSAL_QUEUE_MAX {
                i.queue.push_front(r);
            } else {
                i.fold(r, self.window_ms);
            }
        }
    }

    /// Refusals waiting: queued, and counted in open aggregates.
    pub fn pending(&self) -> u64 {
        let i = self.inner.lock().expect("refusals lock");
        i.queue.len() as u64 + i.aggregates.values().map(|a| a.count).sum::<u64>()
    }

    /// Hand on what is due every REFUSAL_FLUSH_MS until shutdown: `deliver`
    /// proposes it (on the leader) or sends it to the leader; a batch it
    /// fails to deliver is kept for the next round.
    pub async fn run<F, Fut>(&self, deliver: F, mut shutdown: watch::Receiver<bool>)
    where
        F: Fn(Vec<Refusal>) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut tick = tokio::time::interval(Duration::from_millis(REFUSAL_FLUSH_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            loop {
                let batch = self.take(crate::api::now_ms());
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == REFUSAL_BATCH_MAX;
                if let Err(e) = deliver(batch.clone()).await {
                    tracing::debug!(error = %e, n = batch.len(), "refusals not recorded yet");
                    self.put_back(batch);
                    break;
                }
                if !full {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000;

    fn take_all(r: &Refusals, now: i64) -> Vec<Refusal> {
        let mut all = Vec::new();
        loop {
            let b = r.take(now);
            if b.is_empty() {
                return all;
            }
            all.extend(b);
        }
    }

    #[test]
    fn a_flood_is_recorded_in_bounded_entries_and_counted_whole() {
        let r = Refusals::new(1, W);
        let target = Target {
            subject: "spiffe://example.org/agent/x".into(),
            ..Target::default()
        };
        for _ in 0..10_000 {
            r.record(
                "spiffe://example.org/agent/a",
                "/grantledger.v1.Grants/Issue",
                target.clone(),
                "permission_denied",
                "no",
            );
        }
        r.record(
            "spiffe://example.org/agent/b",
            "/grantledger.v1.Grants/Revoke",
            Target::default(),
            "permission_denied",
            "no",
        );
        let now = crate::api::now_ms();
        let first = take_all(&r, now);
        // The rate's worth one by one, and the other caller's.
        assert_eq!(first.len(), REFUSALS_PER_CALLER as usize + 1);
        assert!(first.iter().all(|x| x.count == 1));
        assert_eq!(first[0].subject, "spiffe://example.org/agent/x");
        // The rest as one entry when the window closes.
        let later = take_all(&r, now + W as i64);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].count, 10_000 - REFUSALS_PER_CALLER as u64);
        assert_eq!(later[0].caller, "spiffe://example.org/agent/a");
        assert_eq!(later[0].method, "/grantledger.v1.Grants/Issue");
        let total: u64 = first.iter().chain(&later).map(|x| x.count).sum();
        assert_eq!(total, 10_001);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn many_callers_fold_into_a_bounded_number_of_aggregates() {
        let r = Refusals::new(1, W);
        let callers = REFUSALS_PER_WINDOW as usize + REFUSAL_AGGREGATES_MAX + 50;
        for c in 0..callers {
            let id = format!("spiffe://example.org/agent/{c}");
            r.record(
                &id,
                "/grantledger.v1.Grants/Issue",
                Target::default(),
                "permission_denied",
                "no",
            );
        }
        let now = crate::api::now_ms();
        let first = take_all(&r, now);
        assert_eq!(first.len(), REFUSALS_PER_WINDOW as usize);
        let later = take_all(&r, now + W as i64);
        assert_eq!(later.len(), REFUSAL_AGGREGATES_MAX + 1);
        assert!(later.iter().any(|a| a.caller == OTHERS && a.count == 50));
        let total: u64 = first.iter().chain(&later).map(|x| x.count).sum();
        assert_eq!(total, callers as u64);
    }

    #[test]
    fn what_was_not_delivered_comes_back_first_and_long_fields_are_cut() {
        let r = Refusals::new(1, W);
        let long = "é".repeat(REFUSAL_FIELD_BYTES_MAX);
        r.record(
            "a",
            "/m",
            Target {
                task_id: long.clone(),
                ..Target::default()
            },
            "not_found",
            "x",
        );
        r.record("a", "/m", Target::default(), "not_found", "y");
        let now = crate::api::now_ms();
        let b = r.take(now);
        assert!(b[0].task_id.len() <= REFUSAL_FIELD_BYTES_MAX && long.starts_with(&b[0].task_id));
        r.put_back(b.clone());
        assert_eq!(r.take(now), b);
    }
}
