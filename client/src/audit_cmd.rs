//! `grantctl audit ...`: export, verify offline, prove inclusion, roster.

use std::process::ExitCode;

use serde_json::json;

use crate::output::Out;

use clap::Subcommand;
use ed25519_dalek::SigningKey;
use grant_client::{entry_from_pb, Client};
use grant_proto::audit::export::{self, parse_trusted_keys};
use grant_proto::audit::note;
use grant_proto::audit::proof::InclusionProof;
use grant_proto::audit::witness::{self, CosignerKey};

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
    /// Make a witness's signing key (a new file, mode 0600); prints the
    /// witness's verifier key for auditors to trust.
    WitnessKey {
        /// Where to write the key (32 bytes); an existing file is refused.
        #[arg(long)]
        out: std::path::PathBuf,
        /// The witness's name, a schema-less URL such as witness.example.org/w1.
        #[arg(long)]
        name: String,
    },
    /// Witness the log once: fetch its newest checkpoint and a consistency
    /// proof from the last one this witness accepted, and co-sign it only
    /// if it extends it (exit 1 and no cosignature on a fork or rollback).
    Witness {
        /// The witness's signing key (from `grantctl audit witness-key`).
        #[arg(long, value_name = "FILE")]
        witness_key: std::path::PathBuf,
        /// The witness's name, as given to `witness-key`.
        #[arg(long)]
        name: String,
        /// The file where the witness keeps the last checkpoint it accepted
        /// (created on the first run; written durably before the cosignature is printed).
        #[arg(long)]
        state: std::path::PathBuf,
        /// File of the log's verifier keys, one per line (see `grantctl audit roster`).
        #[arg(long)]
        trusted_keys: std::path::PathBuf,
        /// The log's origin.
        #[arg(long, default_value = "grant-ledger")]
        origin: String,
        /// Also write the cosigned checkpoint here.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Check a cosigned checkpoint offline: signed by a trusted log key and
    /// cosigned by every witness in WITNESS_KEYS; exit 1 otherwise.
    VerifyCosigned {
        /// The cosigned checkpoint (from `grantctl audit witness --out`).
        file: std::path::PathBuf,
        /// File of the log's verifier keys.
        #[arg(long)]
        trusted_keys: std::path::PathBuf,
        /// File of witness verifier keys, one per line (`grantctl audit witness-key` prints one).
        #[arg(long)]
        witness_keys: std::path::PathBuf,
    },
    /// Remove the entries before BEFORE (down to a multiple of 16,384) from
    /// every node, after archiving them with `grantctl audit export`: what
    /// remains still verifies (docs/operations.md, "Retention"). Only what
    /// a signed checkpoint covers may go. Needs the admin role.
    Prune {
        /// The first entry to keep (rounded down to a segment boundary).
        #[arg(long)]
        before: u64,
        /// Why, for the record (the prune entry holds it).
        #[arg(long, default_value = "")]
        reason: String,
    },
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

/// The verifier keys in a trusted-keys file.
fn trusted_keys_in(path: &std::path::Path) -> Result<Vec<note::VerifierKey>, String> {
    parse_trusted_keys(&read(path)?).map_err(|err| err.to_string())
}

/// Proof hashes as the Audit service sends them: 32 bytes each.
fn hashes(raw: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, String> {
    raw.iter()
        .map(|h| {
            h.as_slice()
                .try_into()
                .map_err(|_| "proof hash is not 32 bytes".to_string())
        })
        .collect()
}

impl AuditCmd {
    /// Commands that work on files alone: no connection settings needed.
    pub fn offline(&self) -> bool {
        matches!(
            self,
            AuditCmd::Verify { .. }
                | AuditCmd::VerifyProof { .. }
                | AuditCmd::WitnessKey { .. }
                | AuditCmd::VerifyCosigned { .. }
        )
    }
}

/// A witness's signing key: 32 bytes, readable by its owner only.
fn read_witness_key(path: &std::path::Path) -> Result<SigningKey, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} can be read by others: chmod 600 it (a witness key signs for the witness)",
            path.display()
        ));
    }
    let raw = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let seed: [u8; 32] = raw
        .try_into()
        .map_err(|_| format!("{} is not a 32-byte witness key", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// What a witness keeps between runs: the last checkpoint it accepted.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WitnessState {
    origin: String,
    /// The log's signed note, as accepted.
    checkpoint: String,
}

/// Where a file is written before it is made durable and renamed into place.
fn partial(path: &std::path::Path) -> std::path::PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    tmp.into()
}

fn write_durably(path: &std::path::Path, text: &str) -> Result<(), String> {
    let tmp = partial(path);
    std::fs::write(&tmp, text)
        .and_then(|()| crate::publish_durably(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
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
            let tmp = partial(&out_file);
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
            let trusted = trusted_keys_in(&trusted_keys)?;
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
                        "start": s.start,
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
                    if s.start > 0 {
                        println!(
                            "start: the chain was pruned before seq {}; the export begins there",
                            s.start
                        );
                    }
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
        AuditCmd::Prune { before, reason } => {
            let r = client.prune_audit(before, &reason).await.map_err(e)?;
            let seq = r.receipt.as_ref().map(|r| r.audit_seq);
            out.show(
                &json!({
                    "start": r.start,
                    "previous_start": r.previous_start,
                    "pruned_entries": r.start - r.previous_start,
                    "audit_seq": seq,
                }),
                || {
                    println!(
                        "the audit chain starts at entry {} now (it started at {}): {} entries pruned",
                        r.start,
                        r.previous_start,
                        r.start - r.previous_start
                    );
                    if let Some(seq) = seq {
                        println!("recorded as audit entry {seq}");
                    }
                },
            );
        }
        AuditCmd::VerifyProof { file, trusted_keys } => {
            let trusted = trusted_keys_in(&trusted_keys)?;
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
            let trusted = trusted_keys_in(&trusted_keys)?;
            let p = client.inclusion_proof(seq, tree_size).await.map_err(e)?;
            let entry = entry_from_pb(p.entry.as_ref().ok_or("no entry in the proof")?)?;
            let path = hashes(&p.proof)?;
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
        AuditCmd::WitnessKey { out: to, name } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let public = CosignerKey {
                name,
                key: key.verifying_key(),
            };
            // Checked like a verifier key is, before anything is written.
            CosignerKey::parse(&public.encode()).map_err(|e| format!("witness name: {e}"))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&to)
                .map_err(|e| format!("cannot create {}: {e}", to.display()))?;
            f.write_all(key.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
            let vkey = public.encode();
            out.show(&json!({ "file": to, "witness_key": vkey }), || {
                println!("{vkey}")
            });
        }
        AuditCmd::Witness {
            witness_key,
            name,
            state,
            trusted_keys,
            origin,
            out: out_file,
        } => {
            let trusted = trusted_keys_in(&trusted_keys)?;
            let key = read_witness_key(&witness_key)?;
            let seen_state: Option<WitnessState> = match std::fs::read_to_string(&state) {
                Ok(text) => Some(
                    serde_json::from_str(&text)
                        .map_err(|e| format!("{}: not a witness state: {e}", state.display()))?,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(format!("cannot read {}: {e}", state.display())),
            };
            if let Some(s) = &seen_state {
                if s.origin != origin {
                    return Err(format!(
                        "{} holds log {:?}, not {origin:?}",
                        state.display(),
                        s.origin
                    ));
                }
            }
            let seen = match &seen_state {
                Some(s) => Some(
                    note::parse(&s.checkpoint)
                        .map_err(|e| format!("{}: {e}", state.display()))?
                        .checkpoint,
                ),
                None => None,
            };
            let shown = client.latest_checkpoint().await.map_err(e)?.note;
            if shown.is_empty() {
                return Err("the log has signed no checkpoint yet".into());
            }
            let shown_size = note::parse(&shown)
                .map_err(|err| format!("the checkpoint shown: {err}"))?
                .checkpoint
                .size;
            let proof = match &seen {
                Some(s) if shown_size > s.size => {
                    match client.consistency_proof(s.size, shown_size).await {
                        Ok(p) => hashes(&p.proof)?,
                        // An honest log proves consistency from any size it
                        // published; one that cannot has another history.
                        Err(err) if err.code() == Some("failed_precondition") => {
                            let problem = format!(
                            "not co-signed: the log cannot prove that its {shown_size} entries extend the {} the witness saw ({err})",
                            s.size
                        );
                            failed(out, None, &problem, &[shown]);
                            return Ok(ExitCode::from(1));
                        }
                        Err(err) => return Err(err.to_string()),
                    }
                }
                _ => Vec::new(),
            };
            let cp = match witness::check(seen.as_ref(), &origin, &shown, &trusted, &proof) {
                Ok(cp) => cp,
                Err(refusal) => {
                    failed(out, None, &format!("not co-signed: {refusal}"), &[shown]);
                    return Ok(ExitCode::from(1));
                }
            };
            // The state moves first: a cosignature is never given for a
            // checkpoint the witness would not hold the log to.
            let next = WitnessState {
                origin: origin.clone(),
                checkpoint: shown.clone(),
            };
            write_durably(
                &state,
                &serde_json::to_string(&next).expect("state serializes"),
            )?;
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let cosigned =
                witness::cosign(&shown, &name, &key, now_s).map_err(|e| e.to_string())?;
            if let Some(to) = &out_file {
                write_durably(to, &cosigned)?;
            }
            out.show(
                &json!({
                    "ok": true,
                    "origin": cp.origin,
                    "tree_size": cp.size,
                    "previous_size": seen.map(|s| s.size),
                    "cosigned": cosigned,
                }),
                || print!("{cosigned}"),
            );
        }
        AuditCmd::VerifyCosigned {
            file,
            trusted_keys,
            witness_keys,
        } => {
            let trusted = trusted_keys_in(&trusted_keys)?;
            let witnesses: Vec<CosignerKey> = read(&witness_keys)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(CosignerKey::parse)
                .collect::<Result<_, _>>()
                .map_err(|err| err.to_string())?;
            if witnesses.is_empty() {
                return Err(format!("{} names no witness", witness_keys.display()));
            }
            let text = read(&file)?;
            let checked = note::verify(&text, &trusted)
                .map_err(|err| format!("log signature: {err}"))
                .and_then(|(cp, _)| {
                    witnesses
                        .iter()
                        .map(|w| {
                            witness::verify_cosignature(&text, w)
                                .map(|t| (w.name.clone(), t))
                                .map_err(|err| format!("witness {}: {err}", w.name))
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(|times| (cp, times))
                });
            match checked {
                Ok((cp, times)) => out.show(
                    &json!({
                        "ok": true,
                        "origin": cp.origin,
                        "tree_size": cp.size,
                        "witnesses": times.iter().map(|(n, t)| json!({"name": n, "time": t})).collect::<Vec<_>>(),
                    }),
                    || {
                        println!(
                            "ok: {} at size {}, cosigned by {}",
                            cp.origin,
                            cp.size,
                            times
                                .iter()
                                .map(|(n, t)| format!("{n} (at {t})"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    },
                ),
                Err(problem) => {
                    failed(out, None, &problem, &[]);
                    return Ok(ExitCode::from(1));
                }
            }
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
