//! What a partition costs the clients of the healthy majority, and the
//! clients of the node cut off: on a real three-node cluster, each node in
//! a network namespace of its own (root and iproute2 needed).
//!
//! - **heal gap**: a follower is cut off from its peers for longer than an
//!   election timeout, then healed. Without pre-vote it raised its term
//!   while alone and deposes the healthy leader when it returns. Printed:
//!   the longest time between two successful writes around each heal.
//! - **cut-off leader**: the leader is cut off from its peers; a write is
//!   sent to it directly once its lease has run out. Printed: how long it
//!   takes to answer, and with what.
//!
//!   cargo build --bins
//!   target/debug/heal --rounds 5       # GRANTD_BIN=... for another build

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use grant_tests::grant_client::v1 as pb;
use grant_tests::{begin_req, Cluster};

#[derive(Parser)]
#[command(about = "grant-ledger: the cost of a partition and of its heal")]
struct Args {
    /// Partitions of each kind.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// How long each partition lasts, in ms (the harness's election
    /// timeout is 300-600 ms).
    #[arg(long, default_value_t = 3000)]
    cut_ms: u64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A call's outcome, as its gRPC code and `x-grant-error`, within 10 s.
async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, grant_tests::grant_client::ClientError>>,
) -> String {
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(_)) => "answered".into(),
        Ok(Err(e)) => format!("{:?} {}", e.grpc_code(), e.code().unwrap_or("")),
        Err(_) => "no answer within 10 s".into(),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let Some(c) = Cluster::start_partitionable(3).await else {
        eprintln!("network namespaces are needed (root, iproute2)");
        std::process::exit(2);
    };
    let stop = Arc::new(AtomicBool::new(false));
    // When each write was acknowledged, from two writers.
    let acks: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (client, stop, acks) = (c.client(), stop.clone(), acks.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if client
                        .begin_task(begin_req(&format!("heal-{w}-{i}")))
                        .await
                        .is_ok()
                    {
                        acks.lock().unwrap().push(Instant::now());
                    }
                }
            })
        })
        .collect();

    let mut gaps = Vec::new();
    for round in 0..args.rounds {
        let leader = c.wait_leader().await;
        let follower = [1, 2, 3u64].into_iter().find(|&i| i != leader).unwrap();
        let term = c.status(leader).await.map(|s| s.term).unwrap_or(0);
        c.cut(follower);
        tokio::time::sleep(Duration::from_millis(args.cut_ms)).await;
        let healed = Instant::now();
        c.heal(follower);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = c.wait_leader().await;
        let term_after = c.status(now).await.map(|s| s.term).unwrap_or(0);
        let times = acks.lock().unwrap().clone();
        let window: Vec<Instant> = times
            .into_iter()
            .filter(|t| *t + Duration::from_millis(500) >= healed)
            .collect();
        let gap = window
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0;
        println!(
            "heal {round}: follower {follower} cut {} ms; leader {leader} term {term} -> leader {now} term {term_after}; longest gap between writes around the heal {gap:.0} ms",
            args.cut_ms
        );
        gaps.push(gap);
    }

    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let leader = c.wait_leader().await;
        c.cut(leader);
        // Past the lease (election_timeout_max, 600 ms in the harness).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let direct = c.node_client(leader);
        let t = Instant::now();
        let w = timed(direct.begin_task(begin_req(&format!("cut-{round}")))).await;
        let write_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let r = timed(direct.get_task(pb::GetTaskRequest {
            task_id: "heal-0-1".into(),
            allow_stale: false,
        }))
        .await;
        let read_ms = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "cut-off leader {round}: node {leader} answered a write in {write_ms:.0} ms ({w}), a linearizable read in {read_ms:.0} ms ({r})"
        );
        writes.push(write_ms);
        reads.push(read_ms);
        c.heal(leader);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    println!(
        "median over {} rounds: heal gap {:.0} ms; a cut-off leader answers a write in {:.0} ms, a read in {:.0} ms",
        args.rounds,
        median(&mut gaps),
        median(&mut writes),
        median(&mut reads)
    );
}
