//! Size: resident memory per node with N active grants (1 million by
//! default), the data directories' size, and the time a wiped node takes to
//! catch up through a snapshot at that size.
//!
//!   cargo build --release --bins && target/release/scale --grants 1000000
//!
//! Grants are issued through the API by 64 clients (TTL one day, so none
//! expires during the run); the cluster runs plaintext (`--insecure`) so
//! the figure is the store's, not the transport's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use grant_tests::*;

#[derive(Parser)]
#[command(about = "grant-ledger at size: memory, disk, snapshot catch-up")]
struct Args {
    /// Active grants to hold.
    #[arg(long, default_value_t = 1_000_000)]
    grants: usize,
    /// Concurrent clients issuing them.
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

/// A memory figure of /proc/<pid>/status in MiB: `VmRSS` (resident now)
/// or `VmHWM` (the most it was resident since it started).
fn mem_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn dir_bytes(path: &std::path::Path, keep: &dyn Fn(&std::path::Path) -> bool) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| dir_bytes(&e.path(), keep)).sum())
            .unwrap_or(0),
        Ok(m) if keep(path) => m.len(),
        _ => 0,
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Memory and disk of every running node, the disk by part: the Raft log,
/// the state (sled), the audit store (and the canonical entry bytes in
/// it), the snapshot; per grant where `grants` is above 0, beside the
/// targets of issue #24.
fn report(c: &Cluster, what: &str, grants: u64) {
    for n in &c.nodes {
        let Some(pid) = n.pid() else { continue };
        let dir = &n.data_dir;
        let all = |_: &std::path::Path| true;
        let under = |p: &str| dir_bytes(&dir.join(p), &all);
        let (wal, snapshot, total) = (under("raft-wal"), under("snapshot"), under(""));
        let is_audit = |p: &std::path::Path| p.to_string_lossy().contains(".audit/");
        let audit = dir_bytes(dir, &is_audit);
        let canonical = dir_bytes(dir, &|p: &std::path::Path| {
            is_audit(p) && p.extension().is_some_and(|e| e == "seg")
        });
        let state = total - wal - snapshot - audit;
        println!(
            "{what}: node {} RSS {:.0} MiB (peak {:.0} MiB), data directory {:.0} MiB: \
             log {:.0}, state {:.0}, audit {:.0} ({:.2}x its {:.0} MiB of entries), snapshot {:.0}",
            n.id,
            mem_mib(pid, "VmRSS:"),
            mem_mib(pid, "VmHWM:"),
            total as f64 / MIB,
            wal as f64 / MIB,
            state as f64 / MIB,
            audit as f64 / MIB,
            audit as f64 / canonical.max(1) as f64,
            canonical as f64 / MIB,
            snapshot as f64 / MIB,
        );
        if grants > 0 {
            println!(
                "  per grant: state + log {:.2} KiB (target <= 2 KiB), all {:.2} KiB; \
                 RSS {:.0} MiB (target <= 1024 at 1M); audit {:.2}x canonical (target <= 1.3x)",
                (state + wal) as f64 / 1024.0 / grants as f64,
                total as f64 / 1024.0 / grants as f64,
                mem_mib(pid, "VmRSS:"),
                audit as f64 / canonical.max(1) as f64,
            );
        }
    }
}

/// Wait until node `id` (just spawned) has applied `target`, printing its
/// resident memory every half second; how long that took.
async fn back_at(c: &Cluster, id: u64, target: u64, doing: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    let pid = c.node(id).pid().expect("running");
    let mut sampled = Instant::now();
    loop {
        if sampled.elapsed() >= Duration::from_millis(500) {
            sampled = Instant::now();
            println!(
                "  {doing}, {:.0} s: node {id} RSS {:.0} MiB",
                t.elapsed().as_secs_f64(),
                mem_mib(pid, "VmRSS:")
            );
        }
        if let Some(s) = c.status(id).await {
            if s.applied_index >= target {
                return t.elapsed();
            }
        }
        assert!(
            t.elapsed() < limit,
            "node {id}: {doing} took over {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// grantd's default `snapshot_logs_since_last`.
const SNAPSHOT_LOGS_SINCE_LAST: u64 = 10_000;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // Snapshots every SNAPSHOT_LOGS_SINCE_LAST entries, as the default config.
    let flags = [&["--insecure", "--ttl-seconds-max", "86400"], NO_QUOTAS].concat();
    let mut c = Cluster::start_with(3, &flags).await;
    report(&c, "empty", 0);
    let client = Arc::new(c.client());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let (client, next, total) = (client.clone(), next.clone(), args.grants);
        tasks.push(tokio::spawn(async move {
            // Each client fills tasks of its own, 500 grants each (within
            // the per-task quota), so few Issues have to begin a task.
            for mine in 0.. {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let mut req = issue_req(&format!("scale-{w}-{}", mine / 500), 86_400);
                req.request_id = format!("scale-{i}");
                client.issue_in(req).await.expect("issue");
                if i > 0 && i % 100_000 == 0 {
                    eprintln!("{i} grants issued");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    println!(
        "issued {} grants in {:.0} s ({:.0}/s)",
        args.grants,
        took.as_secs_f64(),
        args.grants as f64 / took.as_secs_f64()
    );
    report(&c, "loaded", args.grants as u64);

    // Let the leader's snapshot catch up with the load first: a snapshot
    // of a million grants takes minutes to build, so the one in force when
    // the load stops is far behind it, and the leader builds the next one
    // (and purges the log up to it) while a wiped node installs the old one,
    // which then needs a second snapshot. docs/operations.md says what to
    // do about that on a busy cluster (logs_kept_after_snapshot).
    let (leader, follower) = c.leader_and_follower().await;
    let settling = Instant::now();
    let snapshot_index = loop {
        let s = c.status(leader).await.unwrap();
        if s.snapshot_index + SNAPSHOT_LOGS_SINCE_LAST > s.applied_index {
            break s.snapshot_index;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "leader's snapshot at index {snapshot_index} {:.0} s after the load",
        settling.elapsed().as_secs_f64()
    );

    // Wipe a follower and time its return through a snapshot.
    let target = c.status(leader).await.unwrap().applied_index;
    c.kill(follower);
    c.wipe(follower);
    c.spawn(follower);
    // When its metric shows the chain below the snapshot missing, and
    // then whole again.
    let chain_back = {
        let (metrics_addr, started) = (c.node(follower).metrics_addr.clone(), Instant::now());
        // Or, should the fetch be over between two polls, when the node's
        // log says so (the log from this start on).
        let log = c.dir.path().join(format!("node{follower}.log"));
        let from = std::fs::metadata(&log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        tokio::spawn(async move {
            let mut seen_missing = false;
            loop {
                let missing = http_get(&metrics_addr, "/metrics")
                    .await
                    .and_then(|m| sample(&m, "grantd_audit_missing_entries"));
                let fetched = || {
                    std::fs::read(&log).is_ok_and(|b| {
                        String::from_utf8_lossy(&b[from.min(b.len())..])
                            .contains("fetched the audit chain below")
                    })
                };
                match missing {
                    Some(m) if m > 0.0 => seen_missing = true,
                    Some(_) if seen_missing || fetched() => return started.elapsed(),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let took = back_at(
        &c,
        follower,
        target,
        "catching up",
        Duration::from_secs(3600),
    )
    .await;
    println!(
        "wiped node {follower} caught up to index {target} in {:.1} s (target <= 10 s)",
        took.as_secs_f64()
    );
    // The chain below its snapshot comes from a peer in the background.
    let chain_back = tokio::time::timeout(Duration::from_secs(3600), chain_back)
        .await
        .expect("the chain never came back")
        .unwrap();
    println!(
        "wiped node {follower} held the whole audit chain {:.1} s after its start (target <= 60 s)",
        chain_back.as_secs_f64()
    );
    report(&c, "after catch-up", args.grants as u64);

    // The same node restarted: what it holds when it pages its state in on
    // demand instead of having just loaded all of it.
    c.terminate(follower);
    c.spawn(follower);
    let took = back_at(&c, follower, target, "restarting", Duration::from_secs(600)).await;
    println!(
        "node {follower} restarted and back at index {target} in {:.1} s",
        took.as_secs_f64()
    );
    report(&c, "after its restart", args.grants as u64);
    let keep = std::path::Path::new("target").join(format!("scale-node{follower}.log"));
    if std::fs::copy(c.dir.path().join(format!("node{follower}.log")), &keep).is_ok() {
        println!("the caught-up node's log: {}", keep.display());
    }
}
