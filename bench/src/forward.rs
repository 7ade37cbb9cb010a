//! What a follower's forwarding costs: the same calls sent to the leader
//! and to a follower (which forwards them to the leader), on a real
//! three-node cluster on loopback.
//!
//! Printed, for Check and Issue: one client's p50 and p99 latency, and the
//! calls per second of `--clients` concurrent clients, each way.
//!
//!   cargo build --release --bins
//!   GRANTD_BIN=target/release/grantd target/release/forward --seconds 10

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use grant_tests::grant_client::Client;
use grant_tests::{begin_req, check_req, issue_req, Cluster, IssueInTask, NO_QUOTAS};

#[derive(Parser)]
#[command(about = "grant-ledger: the cost of sending calls to a follower")]
struct Args {
    /// Sequential calls per latency measurement.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Concurrent clients of the throughput measurement.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of each throughput measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Issues made so far, over every client.
static ISSUED: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy)]
enum Call {
    Check,
    Issue,
}

async fn one(client: &Client, call: Call, token: &str) -> Result<(), String> {
    match call {
        Call::Check => client.check(check_req(token)).await.map(|_| ()),
        Call::Issue => {
            // A task holds at most GRANTS_PER_TASK_MAX grants: a new one
            // every 5000 issues, begun by the issue that finds it missing.
            let n = ISSUED.fetch_add(1, Ordering::Relaxed);
            let task = format!("forward-bench-{}", n / 5000);
            client.issue_in(issue_req(&task, 600)).await.map(|_| ())
        }
    }
    .map_err(|e| e.to_string())
}

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * p) as usize).min(v.len() - 1);
    v[i].as_secs_f64() * 1000.0
}

/// One client's latencies, in ms: (p50, p99).
async fn latency(client: &Client, call: Call, token: &str, calls: usize) -> (f64, f64) {
    let mut t = Vec::with_capacity(calls);
    for _ in 0..calls {
        let s = Instant::now();
        if let Err(e) = one(client, call, token).await {
            panic!("a call failed: {e}");
        }
        t.push(s.elapsed());
    }
    (percentile(&mut t, 0.5), percentile(&mut t, 0.99))
}

/// Calls per second of `n` concurrent clients for `secs`.
async fn throughput(
    make: impl Fn() -> Client,
    call: Call,
    token: &str,
    n: usize,
    secs: u64,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, stop, done, token) =
                (make(), stop.clone(), done.clone(), token.to_string());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if one(&client, call, &token).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / elapsed
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let c = Cluster::start_with(3, NO_QUOTAS).await;
    let (leader, follower) = c.leader_and_follower().await;
    let admin = c.client();
    admin.begin_task(begin_req("forward-bench")).await.unwrap();
    let token = admin
        .issue(issue_req("forward-bench", 3600))
        .await
        .unwrap()
        .token;
    println!(
        "forwarding: {} sequential calls per latency, {} clients for {} s per throughput",
        args.calls, args.clients, args.seconds
    );
    println!(
        "| call | to | p50 ms | p99 ms | calls/s at {} clients |",
        args.clients
    );
    println!("|---|---|---|---|---|");
    for (name, call) in [("Check", Call::Check), ("Issue", Call::Issue)] {
        for (to, id) in [("leader", leader), ("follower", follower)] {
            let path = match call {
                Call::Check => "tool/github",
                Call::Issue => "orchestrator",
            };
            let client = c.node_client_as(id, path);
            // Warm the channels (and the follower's to the leader).
            for _ in 0..50 {
                let _ = one(&client, call, &token).await;
            }
            let (p50, p99) = latency(&client, call, &token, args.calls).await;
            let rate = throughput(
                || c.node_client_as(id, path),
                call,
                &token,
                args.clients,
                args.seconds,
            )
            .await;
            println!("| {name} | {to} | {p50:.2} | {p99:.2} | {rate:.0} |");
        }
    }
}
