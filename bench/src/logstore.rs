//! Micro benchmark of the Raft log store: append + durable sync of realistic
//! Issue entries, one at a time and in batches, on this machine's disk.
//! Compare with the storage floor in ../shared/STACK-NOTES.md (plain append +
//! fdatasync, and the raft-log crate) to judge the choice in docs/storage.md.
//!
//!   cargo build --release --bins && target/release/logstore

use std::time::{Duration, Instant};

use clap::Parser;
use grantd::ledger::{Command, IssueCmd, Scope};
use grantd::raft::typ::Entry;
use grantd::raft::TypeConfig;
use grantd::storage::LogStore;
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorageExt;

#[derive(Parser)]
#[command(about = "grant-ledger log store micro benchmark")]
struct Args {
    /// Appends per batch size.
    #[arg(long, default_value_t = 2000)]
    appends: usize,
    /// Batch sizes (entries per append), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    batches: Vec<usize>,
}

fn entry(index: u64) -> Entry {
    let cmd = Command::Issue(IssueCmd {
        request_id: format!("{index:032x}"),
        fingerprint: "f".repeat(64),
        grant_id: format!("{index:032x}"),
        subject: "spiffe://example.org/agent/planner".into(),
        task_id: format!("task-{index}"),
        scopes: vec![Scope {
            resource: "github".into(),
            actions: vec!["read".into()],
        }],
        intent: "triage issue 42".into(),
        issuer: String::new(),
        token_hash: "a".repeat(64),
        now_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_300_000,
        max_expires_at_ms: 1_700_003_600_000,
        quota: Default::default(),
    });
    Entry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), cmd)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!(
        "{:>6} {:>10} {:>12} {:>10} {:>10}",
        "batch", "appends", "entries/s", "p50 us", "p99 us"
    );
    for &batch in &args.batches {
        let dir = tempfile::tempdir_in(".").expect("tempdir on the working directory's disk");
        let mut store = LogStore::open(dir.path()).unwrap();
        let mut lat: Vec<Duration> = Vec::with_capacity(args.appends);
        let mut index = 1u64;
        let start = Instant::now();
        for _ in 0..args.appends {
            let entries: Vec<Entry> = (0..batch).map(|i| entry(index + i as u64)).collect();
            index += batch as u64;
            let t = Instant::now();
            store.blocking_append(entries).await.unwrap();
            lat.push(t.elapsed());
        }
        let total = start.elapsed();
        lat.sort();
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        println!(
            "{:>6} {:>10} {:>12.0} {:>10.0} {:>10.0}",
            batch,
            args.appends,
            (args.appends * batch) as f64 / total.as_secs_f64(),
            p(0.5),
            p(0.99)
        );
    }
}
