//! grantd: start one grant-ledger node.

use clap::Parser;
use grantd::config::{Args, Config, LogFormat, Sub};
use tokio::sync::watch;

/// mimalloc, not glibc's malloc: grantd allocates many small, short-lived
/// buffers per request (sled nodes, protobuf, JSON) on several threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("grantd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return std::process::ExitCode::SUCCESS;
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object per line, with the fields of the enclosing spans
        // (request_id, rpc) beside the event's own.
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(Sub::Restore { backup, members }) = &args.command {
        return restore(&rt, &config, backup, members);
    }
    let res = rt.block_on(async move {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = tx.send(true);
        });
        grantd::node::run(config, rx).await
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "grantd failed");
            eprintln!("grantd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn restore(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    backup: &std::path::Path,
    members: &[String],
) -> std::process::ExitCode {
    let members = match members
        .iter()
        .map(|m| grant_proto::v1::Node::parse_member(m))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("grantd restore: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(grantd::restore::restore(
        backup,
        &config.data_dir,
        config.node_id,
        &members,
    )) {
        Ok(r) => {
            println!(
                "restored node {} in {}: state at log index {}, {} audit entries, voters {:?}",
                config.node_id,
                config.data_dir.display(),
                r.last_log_index,
                r.audit_size,
                r.voters
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("grantd restore: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
