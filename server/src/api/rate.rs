//! The issue rate per caller: a token bucket (GCRA, from `governor`) per
//! calling identity, on the node that takes the write (the leader: a
//! follower refuses writes before proposing anything). A leader change
//! starts the new leader's buckets full; the limit protects the log from
//! one runaway orchestrator, it is not a billing meter.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota};

use super::errors::ApiError;
use crate::limits::RATE_LIMITED_CALLERS_MAX;

pub struct IssueRate {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    per_second: u32,
}

impl IssueRate {
    /// `per_second` 0: no limit.
    pub fn new(per_second: u32, burst: u32) -> IssueRate {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            DefaultKeyedRateLimiter::hashmap(Quota::per_second(rate).allow_burst(burst))
        });
        IssueRate {
            limiter,
            per_second,
        }
    }

    /// Take one issue from `caller`'s bucket, or say when to come back.
    pub fn take(&self, caller: &str) -> Result<(), ApiError> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        // Buckets that have refilled hold nothing worth keeping.
        if l.len() >= RATE_LIMITED_CALLERS_MAX {
            l.retain_recent();
        }
        l.check_key(&caller.to_string()).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(l.clock()));
            ApiError::ResourceExhausted(format!(
                "{caller} is over its issue rate of {}/s (issue_rate_per_caller): retry in {} ms",
                self.per_second,
                wait.as_millis().max(1)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_caller_waits_and_others_do_not() {
        let r = IssueRate::new(1, 3);
        for _ in 0..3 {
            r.take("a").unwrap();
        }
        let e = r.take("a").unwrap_err();
        assert!(
            matches!(e, ApiError::ResourceExhausted(ref m) if m.contains("retry in")),
            "{e}"
        );
        r.take("b").unwrap();
        let off = IssueRate::new(0, 0);
        for _ in 0..10_000 {
            off.take("a").unwrap();
        }
    }
}
