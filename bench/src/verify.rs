//! Offline verification throughput: builds an export of N audit entries
//! (default one million) with checkpoints every 10,000 entries, then times
//! `grant_proto::audit::export::verify` over it, as an auditor would run it.
//!
//!   cargo build --release --bins && target/release/verify --entries 1000000

use std::time::Instant;

use clap::Parser;
use ed25519_dalek::SigningKey;
use grant_proto::audit::export::{verify, Line};
use grant_proto::audit::merkle::Frontier;
use grant_proto::audit::note::{sign, Checkpoint, VerifierKey};
use grant_proto::audit::{Decision, Entry, Kind};

#[derive(Parser)]
#[command(about = "grant-ledger audit verification benchmark")]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    #[arg(long, default_value_t = 10_000)]
    checkpoint_every: u64,
}

fn main() {
    let args = Args::parse();
    let key = SigningKey::from_bytes(&[5; 32]);
    let name = "grant-ledger-node-1";
    let vk = VerifierKey::new(name, key.verifying_key());
    let t = Instant::now();
    let mut out = String::new();
    let mut prev = [0u8; 32];
    let mut f = Frontier::default();
    let mut notes = Vec::new();
    for seq in 0..args.entries {
        let mut e = Entry::new(
            if seq == 0 {
                Kind::KeyRoster
            } else {
                Kind::Check
            },
            1_700_000_000_000 + seq as i64,
        );
        if seq == 0 {
            e.actor = name.into();
            e.detail = vk.encode();
        } else {
            e.subject = "spiffe://example.org/agent/planner".into();
            e.task_id = format!("task-{}", seq / 16);
            e.grant_id = format!("{:032x}", seq / 4);
            e.resource = "github".into();
            e.action = "read".into();
            e.intent = "triage issue 42".into();
            e.decision = Decision::Allow;
            e.reason = "Allowed".into();
        }
        e.seq = seq;
        e.log_index = seq + 1;
        e.prev_hash = prev;
        prev = e.hash();
        f.push(e.leaf_hash());
        out.push_str(&Line::entry(e).to_json());
        out.push('\n');
        if f.size % args.checkpoint_every == 0 || f.size == args.entries {
            let cp = Checkpoint {
                origin: "bench".into(),
                size: f.size,
                root: f.root(),
                time_ms: 1,
            };
            notes.push(
                Line::Checkpoint {
                    note: sign(&cp, name, &key),
                }
                .to_json(),
            );
        }
    }
    let header = Line::header("bench", args.entries, notes.len() as u64).to_json();
    let text = format!("{header}\n{out}{}\n", notes.join("\n"));
    println!(
        "built an export of {} entries, {} checkpoints, {:.0} MiB in {:.1} s",
        args.entries,
        notes.len(),
        text.len() as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let s = verify(&text, &[vk]).expect("export verifies");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(s.entries, args.entries);
    println!(
        "verified {} entries and {} checkpoints in {:.2} s: {:.0} entries/s, {:.0} MiB/s of export",
        s.entries,
        s.checkpoints,
        secs,
        s.entries as f64 / secs,
        text.len() as f64 / 1048576.0 / secs
    );
}
