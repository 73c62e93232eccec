//! `tugboatd`: the Tugboat daemon.

use clap::{Parser, Subcommand};
use tugboat_ctl::daemon::{self, JoinArgs, RecoverArgs, RunArgs};
use tugboat_ctl::logging::{self, LogFormat};

/// Tugboat: declarative virtual machines on one binary per host.
#[derive(Parser, Debug)]
#[command(name = "tugboatd", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a member: bootstrap a new cluster on an empty data dir, resume otherwise.
    Run(RunArgs),
    /// Join an existing cluster through one of its members, then run.
    Join(JoinArgs),
    /// After losing quorum: make this (stopped) member a new single-voter cluster that keeps
    /// its data. Old members must be wiped and joined again.
    Recover(RecoverArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tugboatd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => daemon::run(args).await,
            Command::Join(args) => daemon::join(args).await,
            Command::Recover(args) => daemon::recover(args),
        }
    });
    // Stray blocking tasks (a history replay, a DNS lookup) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tugboatd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
