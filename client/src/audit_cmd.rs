//! `grantctl audit ...`: export, verify offline, prove inclusion, roster.

use std::process::ExitCode;

use serde_json::json;

use crate::output::Out;

use clap::Subcommand;
use grant_client::{entry_from_pb, Client};
use grant_proto::audit::export::{self, parse_trusted_keys};
use grant_proto::audit::proof::InclusionProof;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Write the audit log as an export file (docs/audit-format.md).
    Export {
        /// Where to write the export (JSON lines, docs/audit-format.md).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Export this node's copy (host:port) instead of any node's.
        #[arg(long)]
        node: Option<String>,
    },
    /// Verify an export offline against trusted keys; exit 1 on the first problem.
    Verify {
        /// The export to verify.
        file: std::path::PathBuf,
        /// File of trusted verifier keys, one per line (see `grantctl audit roster`).
        #[arg(long)]
        trusted_keys: std::path::PathBuf,
        /// A checkpoint you accepted before (a signed note, as written by
        /// --save-checkpoint): the export must hold its entries and rebuild
        /// its root, or history you saw was cut back or rewritten.
        #[arg(long, value_name = "CHECKPOINT_FILE")]
        since: Option<std::path::PathBuf>,
        /// Fail if the last entries of the export are signed by no checkpoint.
        #[arg(long)]
        require_covered: bool,
        /// The log's origin, as you learned it with the keys (`grantctl audit
        /// roster` prints it): the export must be of that log.
        #[arg(long)]
        origin: Option<String>,
        /// After a successful verification, write the newest checkpoint to
        /// this file, to pin with --since next time.
        #[arg(long, value_name = "FILE")]
        save_checkpoint: Option<std::path::PathBuf>,
    },
    /// Fetch a proof that entry SEQ is in a signed checkpoint, check it, and
    /// print it (entry, audit path, checkpoint) for anyone to check offline.
    Prove {
        /// The audit entry's sequence number.
        seq: u64,
        /// Prove against the checkpoint of this size (default: the newest).
        #[arg(long, default_value_t = 0)]
        tree_size: u64,
        /// File of trusted verifier keys, one per line (see `grantctl audit roster`).
        #[arg(long)]
        trusted_keys: std::path::PathBuf,
        /// Also write the proof file (docs/audit-format.md, "Inclusion
        /// proofs") here, for `grantctl audit verify-proof`.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Check an inclusion proof file offline against trusted keys; exit 1
    /// if it does not prove its entry.
    VerifyProof {
        /// The proof file (from `grantctl audit prove --out`).
        file: std::path::PathBuf,
        /// File of trusted verifier keys, one per line (see `grantctl audit roster`).
        #[arg(long)]
        trusted_keys: std::path::PathBuf,
    },
    /// Print the key roster as verifier keys (one per line). Decide out of
    /// band which of them to trust.
    Roster,
    /// Replace the signing key of one node; prints the new and the retired key.
    RotateKey {
        /// The node whose key to rotate (host:port of its API).
        #[arg(long)]
        node: String,
    },
}

fn read(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl AuditCmd {
    /// Commands that work on files alone: no connection settings needed.
    pub fn offline(&self) -> bool {
        matches!(self, AuditCmd::Verify { .. } | AuditCmd::VerifyProof { .. })
    }
}

/// Print a failed check: `FAILED at POSITION: PROBLEM` and its evidence,
/// or the same as JSON; the caller exits 1.
fn failed(out: Out, at: Option<String>, problem: &str, evidence: &[String]) {
    let value = json!({ "ok": false, "at": at, "problem": problem, "evidence": evidence });
    out.show(&value, || {
        match &at {
            Some(at) => println!("FAILED at {at}: {problem}"),
            None => println!("FAILED: {problem}"),
        }
        for ev in evidence {
            println!("evidence: {ev}");
        }
    });
}

pub async fn run(client: &Client, out: Out, cmd: AuditCmd) -> Result<ExitCode, String> {
    let e = |e: grant_client::ClientError| e.to_string();
    match cmd {
        AuditCmd::Export {
            out: out_file,
            node,
        } => {
            // Received beside the target, then made durable and renamed:
            // the file is the whole export or absent.
            let mut tmp = out_file.as_os_str().to_owned();
            tmp.push(".partial");
            let tmp = std::path::PathBuf::from(tmp);
            let bar = crate::progress::bytes("exporting the audit log", None);
            let got = client
                .audit_export_to(node.as_deref(), &tmp, &|n| bar.set_position(n))
                .await
                .map_err(e)
                .and_then(|()| {
                    crate::publish_durably(&tmp, &out_file)
                        .map_err(|err| format!("cannot write {}: {err}", out_file.display()))
                });
            bar.finish_and_clear();
            if got.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            got?;
            let bytes = std::fs::metadata(&out_file).map(|m| m.len()).unwrap_or(0);
            let to = out_file;
            out.show(&json!({ "file": to, "bytes": bytes }), || {
                println!("wrote {bytes} bytes to {}", to.display())
            });
        }
        AuditCmd::Verify {
            file,
            trusted_keys,
            since,
            require_covered,
            origin,
            save_checkpoint,
        } => {
            let trusted =
                parse_trusted_keys(&read(&trusted_keys)?).map_err(|err| err.to_string())?;
            let opts = export::Options {
                since: since.as_deref().map(read).transpose()?,
                require_covered,
                origin,
            };
            let text = read(&file)?;
            let bar = crate::progress::bytes("verifying", Some(text.len() as u64));
            let verified =
                export::verify_observed(&text, &trusted, &opts, &mut |n| bar.set_position(n));
            bar.finish_and_clear();
            if let (Ok(s), Some(to)) = (&verified, &save_checkpoint) {
                std::fs::write(to, &s.latest_checkpoint)
                    .map_err(|err| format!("cannot write {}: {err}", to.display()))?;
            }
            match verified {
                Ok(s) if out.json() => out.show(
                    &json!({
                        "ok": true,
                        "entries": s.entries,
                        "checkpoints": s.checkpoints,
                        "covered": s.covered,
                        "uncovered": s.uncovered,
                        "since": s.since,
                        "origin": s.origin,
                        "first_time_ms": s.first_time_ms,
                        "last_time_ms": s.last_time_ms,
                        "signers": s.signers,
                    }),
                    || {},
                ),
                Ok(s) => {
                    println!(
                        "ok: {} entries, {} checkpoints, {} entries covered by a signed checkpoint",
                        s.entries, s.checkpoints, s.covered
                    );
                    println!("origin: {}", s.origin);
                    if let (Some(a), Some(b)) = (s.first_time_ms, s.last_time_ms) {
                        println!("time span (ms since epoch): {a} .. {b}");
                    }
                    println!(
                        "signers: {}",
                        s.signers.into_iter().collect::<Vec<_>>().join(", ")
                    );
                    if let Some(size) = s.since {
                        println!("consistent with the pinned checkpoint of size {size}");
                    }
                    println!(
                        "uncovered: {} entries (from seq {}) are signed by no checkpoint yet",
                        s.uncovered, s.covered
                    );
                }
                Err(err) => {
                    failed(out, Some(err.at.to_string()), &err.problem, &err.evidence);
                    return Ok(ExitCode::from(1));
                }
            }
        }
        AuditCmd::VerifyProof { file, trusted_keys } => {
            let trusted =
                parse_trusted_keys(&read(&trusted_keys)?).map_err(|err| err.to_string())?;
            let checked = InclusionProof::parse(&read(&file)?)
                .and_then(|p| p.verify(&trusted).map(|got| (p, got)));
            match checked {
                Ok((p, got)) => out.show(
                    &json!({
                        "ok": true,
                        "origin": got.origin,
                        "seq": got.seq,
                        "tree_size": got.tree_size,
                        "signers": got.signers,
                        "entry_hash": p.entry_hash,
                    }),
                    || {
                        println!(
                            "ok: entry {} is in log {} at checkpoint size {}, signed by {}",
                            got.seq,
                            got.origin,
                            got.tree_size,
                            got.signers.join(", ")
                        );
                        println!("entry hash: {}", p.entry_hash);
                    },
                ),
                Err(problem) => {
                    failed(out, None, &problem, &[]);
                    return Ok(ExitCode::from(1));
                }
            }
        }
        AuditCmd::Prove {
            seq,
            tree_size,
            trusted_keys,
            out: out_file,
        } => {
            let trusted =
                parse_trusted_keys(&read(&trusted_keys)?).map_err(|err| err.to_string())?;
            let p = client.inclusion_proof(seq, tree_size).await.map_err(e)?;
            let entry = entry_from_pb(p.entry.as_ref().ok_or("no entry in the proof")?)?;
            let path: Vec<[u8; 32]> = p
                .proof
                .iter()
                .map(|h| {
                    h.as_slice()
                        .try_into()
                        .map_err(|_| "proof hash is not 32 bytes".to_string())
                })
                .collect::<Result<_, _>>()?;
            if entry.seq != seq {
                return Err(format!(
                    "asked for entry {seq}, the node sent {}",
                    entry.seq
                ));
            }
            // The same check a third party runs on the file.
            let proof = InclusionProof::new(entry, p.tree_size, &path, p.checkpoint_note);
            let got = match proof.verify(&trusted) {
                Ok(got) => got,
                Err(problem) => {
                    failed(out, None, &problem, &[]);
                    return Ok(ExitCode::from(1));
                }
            };
            if let Some(to) = &out_file {
                let mut text = proof.to_json();
                text.push('\n');
                std::fs::write(to, text)
                    .map_err(|err| format!("cannot write {}: {err}", to.display()))?;
            }
            if out.json() {
                println!("{}", proof.to_json());
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "ok: entry {seq} is in the log at checkpoint size {}, signed by {}",
                got.tree_size,
                got.signers.join(", ")
            );
            println!(
                "entry: {}",
                serde_json::to_string(&proof.entry).unwrap_or_default()
            );
            println!("entry hash: {}", proof.entry_hash);
            println!("leaf index: {} of {}", proof.leaf_index, proof.tree_size);
            for (i, h) in proof.path.iter().enumerate() {
                println!("path {i}: {h}");
            }
            println!("checkpoint:\n{}", proof.checkpoint);
        }
        AuditCmd::RotateKey { node } => {
            let r = client.rotate_key(&node).await.map_err(e)?;
            out.show(&r, || {
                println!("new: {}", r.verifier_key);
                println!("retired: {}", r.retired_verifier_key);
            });
        }
        AuditCmd::Roster => {
            let r = client.roster().await.map_err(e)?;
            let rows: Vec<Vec<String>> = r.keys.iter().map(|k| vec![k.clone()]).collect();
            out.rows(&r, &["VERIFIER_KEY"], &rows, || {
                println!("# origin: {}", r.origin);
                for k in &r.keys {
                    println!("{k}");
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
