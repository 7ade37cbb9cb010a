//! `grantctl audit ...`: export, verify offline, prove inclusion, roster.

use std::process::ExitCode;

use serde_json::json;

use crate::output::Out;

use clap::Subcommand;
use grant_client::{entry_from_pb, Client};
use grant_proto::audit::export::{self, parse_trusted_keys};
use grant_proto::audit::{merkle, note};

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
    },
    /// Fetch and verify a proof that entry SEQ is in a signed checkpoint.
    Prove {
        /// The audit entry's sequence number.
        seq: u64,
        /// Prove against the checkpoint of this size (default: the newest).
        #[arg(long, default_value_t = 0)]
        tree_size: u64,
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
        AuditCmd::Verify { file, trusted_keys } => {
            let trusted =
                parse_trusted_keys(&read(&trusted_keys)?).map_err(|err| err.to_string())?;
            let text = read(&file)?;
            let bar = crate::progress::bytes("verifying", Some(text.len() as u64));
            let verified = export::verify_observed(&text, &trusted, &mut |n| bar.set_position(n));
            bar.finish_and_clear();
            match verified {
                Ok(s) if out.json() => out.show(
                    &json!({
                        "ok": true,
                        "entries": s.entries,
                        "checkpoints": s.checkpoints,
                        "covered": s.covered,
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
                    if s.covered < s.entries {
                        println!(
                            "note: the last {} entries are not yet covered by a checkpoint",
                            s.entries - s.covered
                        );
                    }
                }
                Err(err) => {
                    let value = json!({
                        "ok": false,
                        "at": err.at.to_string(),
                        "problem": err.problem.to_string(),
                        "evidence": err.evidence.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    });
                    out.show(&value, || {
                        println!("FAILED at {}: {}", err.at, err.problem);
                        for ev in &err.evidence {
                            println!("evidence: {ev}");
                        }
                    });
                    return Ok(ExitCode::from(1));
                }
            }
        }
        AuditCmd::Prove {
            seq,
            tree_size,
            trusted_keys,
        } => {
            let trusted =
                parse_trusted_keys(&read(&trusted_keys)?).map_err(|err| err.to_string())?;
            let p = client.inclusion_proof(seq, tree_size).await.map_err(e)?;
            let entry = entry_from_pb(p.entry.as_ref().ok_or("no entry in the proof")?)?;
            let (cp, signers) = note::verify(&p.checkpoint_note, &trusted)
                .map_err(|err| format!("checkpoint: {err}"))?;
            if cp.size != p.tree_size {
                return Err(format!(
                    "proof is for size {} but the checkpoint is of size {}",
                    p.tree_size, cp.size
                ));
            }
            let proof: Vec<[u8; 32]> = p
                .proof
                .iter()
                .map(|h| {
                    h.as_slice()
                        .try_into()
                        .map_err(|_| "proof hash is not 32 bytes".to_string())
                })
                .collect::<Result<_, _>>()?;
            if !merkle::verify_inclusion(seq, cp.size, &entry.leaf_hash(), &proof, &cp.root) {
                let problem = format!(
                    "entry {seq} is not in the tree of the signed checkpoint of size {}",
                    cp.size
                );
                out.show(&json!({ "ok": false, "problem": problem }), || {
                    println!("FAILED: {problem}")
                });
                return Ok(ExitCode::from(1));
            }
            if out.json() {
                out.show(
                    &json!({
                        "ok": true,
                        "seq": seq,
                        "tree_size": cp.size,
                        "signers": signers,
                        "entry": entry,
                        "entry_hash": hex::encode(entry.hash()),
                        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
                        "checkpoint": p.checkpoint_note,
                    }),
                    || {},
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "ok: entry {seq} is in the log at checkpoint size {}, signed by {}",
                cp.size,
                signers.join(", ")
            );
            println!(
                "entry: {}",
                serde_json::to_string(&entry).unwrap_or_default()
            );
            println!("entry hash: {}", hex::encode(entry.hash()));
            println!("checkpoint:\n{}", p.checkpoint_note);
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
