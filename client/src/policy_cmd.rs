//! `grantctl policy ...`: apply, read and validate the Cedar policy set
//! (docs/policy.md). `validate` and `schema` work offline, with the same
//! code the ledger evaluates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use crate::output::{to_json, Out};

use clap::Subcommand;
use grant_client::Client;
use grant_proto::v1 as pb;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Replace the policy set on every node from a file of Cedar policies.
    /// Committed and audited; refused with Cedar's diagnostics if it does
    /// not parse or fails validation against the schema.
    Apply {
        /// The file of Cedar policies to put in force.
        file: PathBuf,
        /// The Cedar schema to validate against (default: the built-in one,
        /// `grantctl policy schema`).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// The decision when no policy permits and none forbids.
        #[arg(long, default_value = "deny", value_parser = ["deny", "allow"])]
        no_match: String,
    },
    /// Print the policy set in force (with --schema: its schema).
    Get {
        /// Print the schema in force instead of the policies.
        #[arg(long)]
        schema: bool,
        /// Read this node's state without confirming leadership (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Validate a file of Cedar policies offline, against the built-in
    /// schema or --schema; exit 1 with Cedar's diagnostics if it fails.
    Validate {
        /// The file of Cedar policies to validate.
        file: PathBuf,
        /// The Cedar schema to validate against (default: the built-in one).
        #[arg(long)]
        schema: Option<PathBuf>,
    },
    /// Print the built-in schema: what the ledger supplies to policies.
    /// Copy it to declare your tools' actions and Check attributes.
    Schema,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn schema_text(schema: &Option<PathBuf>) -> Result<String, String> {
    match schema {
        Some(p) => read(p),
        None => Ok(grant_policy::SCHEMA_DEFAULT.to_string()),
    }
}

/// Whether the command needs a cluster at all.
pub fn offline(cmd: &PolicyCmd) -> bool {
    matches!(cmd, PolicyCmd::Validate { .. } | PolicyCmd::Schema)
}

pub fn run_offline(out: Out, cmd: PolicyCmd) -> Result<ExitCode, String> {
    match cmd {
        PolicyCmd::Validate { file, schema } => {
            let text = read(&file)?;
            match grant_policy::compile(&text, &schema_text(&schema)?, Default::default()) {
                Ok(p) => {
                    let ids: Vec<String> = p.ids().iter().map(|i| i.to_string()).collect();
                    out.show(&json!({ "valid": true, "policy_ids": ids }), || {
                        println!("valid: {} policies", ids.len());
                        for id in &ids {
                            println!("policy: {id}");
                        }
                    });
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if out.json() {
                        println!(
                            "{}",
                            to_json(&json!({ "valid": false, "diagnostics": e.to_string() }))
                        );
                    } else {
                        eprintln!("{}: invalid\n{e}", file.display());
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        PolicyCmd::Schema => {
            out.show(&json!({ "schema": grant_policy::SCHEMA_DEFAULT }), || {
                print!("{}", grant_policy::SCHEMA_DEFAULT)
            });
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("online commands go through run"),
    }
}

pub async fn run(client: &Client, out: Out, cmd: PolicyCmd) -> Result<ExitCode, String> {
    let e = |e: grant_client::ClientError| e.to_string();
    match cmd {
        PolicyCmd::Apply {
            file,
            schema,
            no_match,
        } => {
            let r = client
                .apply_policy(pb::ApplyPolicyRequest {
                    policies: read(&file)?,
                    schema: schema_text(&schema)?,
                    no_match,
                })
                .await
                .map_err(e)?;
            out.show(&r, || {
                println!("policy set applied: {} policies", r.policy_ids.len());
                println!("sha256: {}", r.policies_sha256);
                for id in &r.policy_ids {
                    println!("policy: {id}");
                }
                crate::print_receipt(&r.receipt);
            });
        }
        PolicyCmd::Get { schema, stale } => {
            let r = client.get_policy(stale).await.map_err(e)?;
            if out.json() {
                out.show(&r, || {});
                return Ok(ExitCode::SUCCESS);
            }
            if !r.in_force {
                println!("# no policy set in force: grants alone decide");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "// log index {}, no_match {}, sha256 {}",
                r.log_index, r.no_match, r.policies_sha256
            );
            print!("{}", if schema { &r.schema } else { &r.policies });
        }
        PolicyCmd::Validate { .. } | PolicyCmd::Schema => return run_offline(out, cmd),
    }
    Ok(ExitCode::SUCCESS)
}
