//! `schedbench`: how fast one `tugboatd` schedules and starts Ships on many simulated nodes.
//!
//! Starts a fresh single-node `tugboatd run` (its scheduler and controllers on, unless
//! `--scheduler in-process`), runs `--nodes` node agents over the fake runtime in this process,
//! creates `--ships` Ships through the API and reports scheduling throughput, time until all
//! run, and tugboatd's CPU and memory as a Markdown table.
//!
//! The `tugboatd` binary is `$TUGBOATD_BIN`, else `target/release/tugboatd` for a release build
//! of this tool (`cargo build --release -p tugboat-ctl -p tugboat-testsuite`).

#[path = "../schedbench/mod.rs"]
mod schedbench;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use schedbench::report::Report;
use schedbench::{Params, SchedulerPlace};

/// Command-line options; every one also reads a `SCHEDBENCH_*` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "schedbench",
    about = "Benchmark Ship scheduling with many simulated nodes against one tugboatd"
)]
struct Cli {
    /// Simulated nodes.
    #[arg(long, env = "SCHEDBENCH_NODES", default_value_t = 1000)]
    nodes: usize,
    /// Ships to create.
    #[arg(long, env = "SCHEDBENCH_SHIPS", default_value_t = 10_000)]
    ships: usize,
    /// Concurrent create requests.
    #[arg(long, env = "SCHEDBENCH_CONCURRENCY", default_value_t = 64)]
    concurrency: usize,
    /// Node registrations at once while starting the agents.
    #[arg(long, env = "SCHEDBENCH_AGENT_START_CONCURRENCY", default_value_t = 32)]
    agent_start_concurrency: usize,
    /// Fake runtime: milliseconds from start to Running.
    #[arg(long, env = "SCHEDBENCH_BOOT_DELAY_MS", default_value_t = 100)]
    boot_delay_ms: u64,
    /// CPU cores per simulated node.
    #[arg(long, env = "SCHEDBENCH_NODE_CPU", default_value_t = 64)]
    node_cpu: u32,
    /// Memory per simulated node.
    #[arg(long, env = "SCHEDBENCH_NODE_MEMORY", default_value = "256Gi")]
    node_memory: String,
    /// Zones the nodes are spread over.
    #[arg(long, env = "SCHEDBENCH_ZONES", default_value_t = 3)]
    zones: usize,
    /// Where the scheduler runs.
    #[arg(long, env = "SCHEDBENCH_SCHEDULER", value_enum, default_value_t = SchedulerPlace::Tugboatd)]
    scheduler: SchedulerPlace,
    /// Seconds to wait for every Ship to be Running.
    #[arg(long, env = "SCHEDBENCH_TIMEOUT", default_value_t = 120.0)]
    timeout: f64,
    /// Extra `tugboatd run` argument (repeat for several).
    #[arg(long = "tugboatd-arg", allow_hyphen_values = true)]
    tugboatd_args: Vec<String>,
    /// Write the results as JSON here.
    #[arg(long, env = "SCHEDBENCH_JSON_OUT")]
    json_out: Option<PathBuf>,
    /// Write the docs/benchmarks.md section (Markdown) here.
    #[arg(long, env = "SCHEDBENCH_MARKDOWN_OUT")]
    markdown_out: Option<PathBuf>,
    /// Command line to name in the report (default: this process's).
    #[arg(long)]
    command: Option<String>,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "{} CPUs ({model}), kernel {}",
        sh("nproc", &[]),
        sh("uname", &["-r"])
    )
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let params = Params {
        nodes: cli.nodes,
        ships: cli.ships,
        create_concurrency: cli.concurrency.max(1),
        agent_start_concurrency: cli.agent_start_concurrency.max(1),
        boot_delay_ms: cli.boot_delay_ms,
        node_cpu: cli.node_cpu.max(1),
        node_memory: cli.node_memory.clone(),
        zones: cli.zones.max(1),
        scheduler: cli.scheduler,
        timeout_secs: cli.timeout,
    };
    let command = cli.command.clone().unwrap_or_else(|| {
        let mut env: Vec<String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("SCHEDBENCH_"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.sort();
        env.extend(
            std::env::args()
                .enumerate()
                .map(|(i, a)| if i == 0 { "schedbench".into() } else { a }),
        );
        env.join(" ")
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("schedbench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let loadavg_before = loadavg();
    let started_utc = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let results = match rt.block_on(schedbench::run(&params, cli.tugboatd_args.clone())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("schedbench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut commit = sh("git", &["rev-parse", "--short", "HEAD"]);
    if !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" (dirty tree)");
    }
    let report = Report {
        command,
        started_utc,
        machine: machine(),
        loadavg_before,
        loadavg_after: loadavg(),
        commit,
        params,
        results,
    };
    println!("{}", schedbench::report::table(&report));
    print!("{}", schedbench::report::goals(&report));
    if let Some(path) = &cli.json_out {
        let json = match serde_json::to_string_pretty(&report) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("schedbench: encoding the report: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("schedbench: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &cli.markdown_out {
        if let Err(e) = std::fs::write(path, schedbench::report::markdown(&report)) {
            eprintln!("schedbench: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
