//! Mass expiry: N grants that expire within the same second, on a real
//! three-node cluster. Prints how long the leader's sweep takes to retire
//! them all, and Check latency before and while it does (the sweep retires
//! at most SWEEP_GRANTS_MAX grants per log entry, so checks interleave).
//!
//!   cargo build --release --bins
//!   target/release/expiry --grants 100000

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use grant_tests::{check_req, http_get, issue_req, sample, Cluster, IssueInTask, NO_QUOTAS};

#[derive(Parser)]
#[command(about = "grant-ledger mass-expiry benchmark")]
struct Args {
    /// Grants that expire together.
    #[arg(long, default_value_t = 100_000)]
    grants: usize,
    /// Concurrent clients issuing them.
    #[arg(long, default_value_t = 64)]
    issuers: usize,
    /// Concurrent clients checking long-lived grants throughout.
    #[arg(long, default_value_t = 4)]
    checkers: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// Check latencies, each with the time it started (ms since the epoch).
type Samples = Arc<Mutex<Vec<(i64, Duration)>>>;

fn window(samples: &[(i64, Duration)], from: i64, to: i64) -> Vec<Duration> {
    let mut v: Vec<Duration> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, d)| *d)
        .collect();
    v.sort();
    v
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let c = Cluster::start_with(3, NO_QUOTAS).await;
    let client = Arc::new(c.client());

    // Checkers run throughout, on grants that outlive the run.
    let mut tokens = Vec::new();
    for i in 0..20 {
        tokens.push(
            client
                .issue_in(issue_req(&format!("keep-{i}"), 3600))
                .await
                .unwrap()
                .token,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let mut checkers = Vec::new();
    for w in 0..args.checkers {
        let (client, stop, samples, tokens) = (
            client.clone(),
            stop.clone(),
            samples.clone(),
            tokens.clone(),
        );
        checkers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let at = now_ms();
                let t = Instant::now();
                if client
                    .check(check_req(&tokens[i % tokens.len()]))
                    .await
                    .is_ok()
                {
                    samples.lock().unwrap().push((at, t.elapsed()));
                }
                i += 1;
            }
        }));
    }

    // Issue: the first 2% at a long TTL measures the issue rate; then
    // every grant gets the TTL that makes it expire at the same second.
    let probe = (args.grants / 50).max(args.issuers);
    let started = Instant::now();
    let issue = |n: usize, offset: usize, ttl_of: Arc<dyn Fn() -> u64 + Send + Sync>| {
        let mut tasks = Vec::new();
        for w in 0..args.issuers {
            let (client, ttl_of) = (client.clone(), ttl_of.clone());
            let issuers = args.issuers;
            let share = n / issuers + usize::from(w < n % issuers);
            tasks.push(tokio::spawn(async move {
                for i in 0..share {
                    // GRANTS_PER_TASK_MAX is 10,000: spread over tasks.
                    let task = format!("exp-{}", (offset + i * issuers + w) / 5000);
                    client.issue_in(issue_req(&task, ttl_of())).await.unwrap();
                }
            }));
        }
        tasks
    };
    // The probe grants expire with the rest: their TTL is set below too.
    let target = Arc::new(Mutex::new(i64::MAX));
    let ttl_to_target = {
        let target = target.clone();
        Arc::new(move || {
            let t = *target.lock().unwrap();
            if t == i64::MAX {
                3600
            } else {
                // Past the target (issuing ran slower than probed): 1 s.
                ((t - now_ms()).max(0) as u64).div_ceil(1000).max(1)
            }
        })
    };
    for t in issue(probe, 0, Arc::new(|| 3600)) {
        t.await.unwrap();
    }
    let rate = probe as f64 / started.elapsed().as_secs_f64();
    let rest = args.grants - probe;
    let expire_at = now_ms() + ((rest as f64 / rate) * 1500.0) as i64 + 5000;
    *target.lock().unwrap() = expire_at;
    for t in issue(rest, probe, ttl_to_target) {
        t.await.unwrap();
    }
    println!(
        "issued {} grants in {:.1} s ({:.0}/s); {} expire within one second of the target",
        args.grants,
        started.elapsed().as_secs_f64(),
        args.grants as f64 / started.elapsed().as_secs_f64(),
        rest
    );
    // The probe grants (long TTL) stay active; the rest expire together.
    let leader = c.wait_leader().await;
    let active = |c: &Cluster| {
        let addr = c.node(leader).metrics_addr.clone();
        async move {
            http_get(&addr, "/metrics")
                .await
                .and_then(|m| sample(&m, "grantd_grants_active"))
                .unwrap_or(f64::NAN)
        }
    };
    let before = active(&c).await;
    let wait = (expire_at + 1000 - now_ms()).max(0) as u64;
    if wait == 0 {
        println!("warning: issuing ran past the target; the expiries are spread out");
    }
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let t0 = Instant::now();
    let floor = before - rest as f64;
    loop {
        let a = active(&c).await;
        if a <= floor {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(3600), "retiring stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retire = t0.elapsed();
    let done_ms = now_ms();
    stop.store(true, Ordering::Relaxed);
    for t in checkers {
        t.await.unwrap();
    }
    let samples = samples.lock().unwrap();
    let calm = window(&samples, expire_at - 11_000, expire_at - 1000);
    let during = window(&samples, expire_at + 1000, done_ms);
    println!(
        "retired {rest} expired grants in {:.1} s ({:.0}/s)",
        retire.as_secs_f64(),
        rest as f64 / retire.as_secs_f64()
    );
    println!(
        "{:<22} {:>8} {:>9} {:>9} {:>9}",
        "check latency", "checks", "p50 ms", "p99 ms", "max ms"
    );
    for (name, v, secs) in [
        ("10 s before expiry", &calm, 10.0),
        ("while retiring", &during, retire.as_secs_f64().max(0.001)),
    ] {
        println!(
            "{:<22} {:>8} {:>9.2} {:>9.2} {:>9.2}   ({:.0} checks/s)",
            name,
            v.len(),
            pct(v, 0.5),
            pct(v, 0.99),
            pct(v, 1.0),
            v.len() as f64 / secs
        );
    }
}
