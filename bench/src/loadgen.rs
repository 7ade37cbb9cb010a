//! Load generator: starts a local three-node cluster (real grantd processes,
//! release build recommended), runs N concurrent clients of one operation
//! for a fixed time, and prints ops/s with p50 and p99 latency.
//!
//!   cargo build --release --bins
//!   target/release/loadgen --clients 1,16,64 --seconds 10
//!   target/release/loadgen --ops check --policies 200   # with Cedar policy

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use grant_tests::grant_client::v1 as pb;
use grant_tests::{check_req, issue_req, Cluster, IssueInTask, NO_QUOTAS};

#[derive(Parser)]
#[command(about = "grant-ledger load generator")]
struct Args {
    /// Client counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Run the cluster with plaintext (`grantd --insecure`) instead of mTLS.
    #[arg(long)]
    insecure: bool,
    /// Operations: issue, check, revoke.
    #[arg(long, value_delimiter = ',', default_value = "issue,check,revoke")]
    ops: Vec<String>,
    /// Apply a realistic Cedar policy set of this many policies first
    /// (grant_tests::policies); 0 runs without policy.
    #[arg(long, default_value_t = 0)]
    policies: usize,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The most revokes per second a run prepares grants for.
const REVOKES_PER_SECOND_MAX: usize = 10_000;

async fn run(c: &Cluster, op: &str, clients: usize, secs: u64) -> (usize, usize, Vec<Duration>) {
    // Revoke and check need grants to work on: issue them before the clock
    // starts, enough for up to REVOKES_PER_SECOND_MAX revokes a second.
    let per_client = if op == "issue" {
        0
    } else {
        (REVOKES_PER_SECOND_MAX * secs as usize).div_ceil(clients)
    };
    let client = Arc::new(c.client());
    // Every client fills its own pool at once (one after the other took
    // minutes for a revoke run's 100,000 grants).
    let n = if op == "check" { 50 } else { per_client };
    let mut filling = Vec::new();
    for w in 0..clients {
        let (client, op) = (client.clone(), op.to_string());
        filling.push(tokio::spawn(async move {
            let mut pool = Vec::with_capacity(n);
            for i in 0..n {
                let r = client
                    .issue_in(issue_req(&format!("bench-{op}-{clients}-{w}-{i}"), 3600))
                    .await
                    .unwrap();
                pool.push((r.grant.unwrap().grant_id, r.token));
            }
            pool
        }));
    }
    let mut pools = Vec::new();
    for f in filling {
        pools.push(f.await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (w, pool) in pools.into_iter().enumerate() {
        let (client, stop, op) = (client.clone(), stop.clone(), op.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = match op.as_str() {
                    "issue" => client
                        .issue_in(issue_req(&format!("bench-w{w}"), 3600))
                        .await
                        .is_ok(),
                    "check" => client
                        .check(check_req(&pool[i % pool.len()].1))
                        .await
                        .is_ok(),
                    "revoke" => {
                        if i >= pool.len() {
                            break;
                        }
                        client
                            .revoke(pb::RevokeRequest {
                                request_id: String::new(),
                                grant_id: pool[i].0.clone(),
                                reason: String::new(),
                            })
                            .await
                            .is_ok()
                    }
                    other => panic!("unknown op {other}"),
                };
                i += 1;
                if ok {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let _ = start;
    all.sort();
    (all.len(), errors, all)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // mTLS by default, as users run it; --insecure measures plaintext.
    let c = if args.insecure {
        Cluster::start_with(3, &[&["--insecure"], NO_QUOTAS].concat()).await
    } else {
        Cluster::start_with(3, NO_QUOTAS).await
    };
    if args.policies > 0 {
        let r = c
            .client()
            .apply_policy(pb::ApplyPolicyRequest {
                policies: grant_tests::policies::realistic(args.policies),
                ..Default::default()
            })
            .await
            .expect("the benchmark's policy set applies");
        println!("policy set: {} policies", r.policy_ids.len());
    }
    println!(
        "{:<8} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "op", "clients", "ops/s", "p50 ms", "p99 ms", "errors"
    );
    for op in &args.ops {
        for &n in &args.clients {
            let (count, errors, lat) = run(&c, op, n, args.seconds).await;
            println!(
                "{:<8} {:>8} {:>10.0} {:>10.2} {:>10.2} {:>8}",
                op,
                n,
                count as f64 / args.seconds as f64,
                pct(&lat, 0.50).as_secs_f64() * 1000.0,
                pct(&lat, 0.99).as_secs_f64() * 1000.0,
                errors
            );
        }
    }
}
