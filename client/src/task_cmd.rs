//! `grantctl task ...`: begin, complete, abort and show tasks. Grants are
//! issued only under an open task, and none outlives its deadline.

use std::process::ExitCode;

use crate::output::Out;

use clap::Subcommand;
use grant_client::Client;
use grant_proto::v1 as pb;

#[derive(Subcommand)]
pub enum TaskCmd {
    /// Begin a task you own: grants can then be issued under it until it
    /// is completed, aborted, or its deadline passes. Safe to repeat with
    /// the same parameters.
    Begin {
        /// The task id you choose (1-256 characters): the idempotency key.
        task: String,
        /// A tool (scope resource) the task will use; repeat for several.
        /// Policies see them as context.declared_tools.
        #[arg(long = "tool", required = true)]
        tools: Vec<String>,
        /// What the task is for: recorded with it and in the audit log.
        /// Required unless the cluster runs with intent_required = false.
        #[arg(long, default_value = "")]
        intent: String,
        /// Seconds until the deadline; 0 takes the server's default.
        #[arg(long, default_value_t = 0)]
        deadline: u64,
    },
    /// Complete a task: revoke all its grants in one step, refuse new ones.
    Complete {
        /// The task to complete.
        task: String,
        /// Recorded in the audit entry.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Abort a task: as complete, recorded as an abort with its reason.
    Abort {
        /// The task to abort.
        task: String,
        /// Why it was stopped (required; recorded in the audit entry).
        #[arg(long)]
        reason: String,
    },
    /// Show one task.
    Get {
        /// The task to show.
        task: String,
        /// Read this node's state without confirming leadership (may be stale).
        #[arg(long)]
        stale: bool,
    },
}

fn state_name(s: i32) -> &'static str {
    pb::TaskState::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn print_task(t: &Option<pb::Task>) {
    let Some(t) = t else { return };
    println!("task: {}", t.task_id);
    println!("owner: {}", t.owner);
    println!("intent: {}", t.intent);
    for tool in &t.declared_tools {
        println!("tool: {tool}");
    }
    println!("state: {}", state_name(t.state));
    println!("begun_at_ms: {}", t.begun_at_ms);
    println!("deadline_ms: {}", t.deadline_ms);
    println!("grants: {}", t.grant_count);
    if t.closed_at_ms != 0 {
        println!("closed_at_ms: {}", t.closed_at_ms);
        println!("closed_by: {}", t.closed_by);
        println!("close_reason: {}", t.close_reason);
    }
}

fn print_closed(revoked: &[String], already_closed: bool) {
    for id in revoked {
        println!("revoked: {id}");
    }
    println!("already_closed: {already_closed}");
}

pub async fn run(client: &Client, out: Out, cmd: TaskCmd) -> Result<ExitCode, String> {
    let e = |e: grant_client::ClientError| e.to_string();
    match cmd {
        TaskCmd::Begin {
            task,
            tools,
            intent,
            deadline,
        } => {
            let r = client
                .begin_task(pb::BeginTaskRequest {
                    task_id: task,
                    intent,
                    declared_tools: tools,
                    deadline_seconds: deadline,
                })
                .await
                .map_err(e)?;
            out.show(&r, || {
                print_task(&r.task);
                println!("replayed: {}", r.replayed);
                crate::print_receipt(&r.receipt);
            });
        }
        TaskCmd::Complete { task, reason } => {
            let r = client
                .complete_task(pb::CompleteTaskRequest {
                    request_id: String::new(),
                    task_id: task,
                    reason,
                })
                .await
                .map_err(e)?;
            out.show(&r, || {
                print_closed(&r.revoked_grant_ids, r.already_closed);
                print_task(&r.task);
                crate::print_receipt(&r.receipt);
            });
        }
        TaskCmd::Abort { task, reason } => {
            let r = client
                .abort_task(pb::AbortTaskRequest {
                    request_id: String::new(),
                    task_id: task,
                    reason,
                })
                .await
                .map_err(e)?;
            out.show(&r, || {
                print_closed(&r.revoked_grant_ids, r.already_closed);
                print_task(&r.task);
                crate::print_receipt(&r.receipt);
            });
        }
        TaskCmd::Get { task, stale } => {
            let r = client
                .get_task(pb::GetTaskRequest {
                    task_id: task,
                    allow_stale: stale,
                })
                .await
                .map_err(e)?;
            out.show(&r, || {
                print_task(&r.task);
                println!("applied_index: {}", r.applied_index);
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
