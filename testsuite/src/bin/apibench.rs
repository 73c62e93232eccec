//! `apibench`: benchmark the Kubernetes-shaped API of `tugboatd` over its own store and over
//! Debian's etcd (`--etcd-endpoints`), side by side on this machine.
//!
//! Per backend it starts a fresh single-node `tugboatd run` (and etcd), then measures Ship
//! creates (rate, p50/p99), `kubectl get ships -A` and raw list times with all Ships present,
//! watch delivery latency to many concurrent watchers, and tugboatd's (and etcd's) RSS. Prints
//! a Markdown table; `--json-out` / `--markdown-out` write the results for `scripts/bench.sh`.
//!
//! The `tugboatd` binary is `$TUGBOATD_BIN`, else `target/release/tugboatd` for a release build
//! of this tool (`cargo build --release -p tugboat-ctl -p tugboat-testsuite`).

#[path = "../apibench/mod.rs"]
mod apibench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use apibench::phases::Params;
use apibench::{Backend, Machine, RunOptions, RunReport};
use clap::Parser;

/// Command-line options; every one also reads an `APIBENCH_*` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "apibench",
    about = "Benchmark tugboatd's Kubernetes API (Ships) over its own store and over etcd"
)]
struct Cli {
    /// Backends to measure, in this order (comma-separated: tugboat, etcd).
    #[arg(
        long,
        env = "APIBENCH_BACKENDS",
        default_value = "tugboat,etcd",
        value_delimiter = ','
    )]
    backends: Vec<String>,
    /// Ships to create.
    #[arg(long, env = "APIBENCH_CREATES", default_value_t = 10_000)]
    creates: usize,
    /// Concurrent create requests.
    #[arg(long, env = "APIBENCH_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections shared by the creates.
    #[arg(long, env = "APIBENCH_CONNS", default_value_t = 4)]
    conns: usize,
    /// Namespace of the Ships.
    #[arg(long, env = "APIBENCH_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Timed runs of each list (median reported).
    #[arg(long, env = "APIBENCH_LIST_REPEAT", default_value_t = 3)]
    list_repeat: usize,
    /// kubectl binary.
    #[arg(long, env = "APIBENCH_KUBECTL", default_value = "/usr/bin/kubectl")]
    kubectl: PathBuf,
    /// Concurrent watchers (0 skips the watch test).
    #[arg(long, env = "APIBENCH_WATCHERS", default_value_t = 1000)]
    watchers: usize,
    /// HTTP/2 connections shared by the watchers (the server allows 1000 streams per connection).
    #[arg(long, env = "APIBENCH_WATCH_CONNS", default_value_t = 4)]
    watch_conns: usize,
    /// Updates every watcher must see.
    #[arg(long, env = "APIBENCH_UPDATES", default_value_t = 200)]
    updates: usize,
    /// Updates per second.
    #[arg(long, env = "APIBENCH_UPDATE_RATE", default_value_t = 20.0)]
    update_rate: f64,
    /// Seconds to wait after the last update for watchers still missing events.
    #[arg(long, env = "APIBENCH_DRAIN_SECS", default_value_t = 15.0)]
    drain_secs: f64,
    /// Seconds between the API's first answer and the idle RSS reading.
    #[arg(long, env = "APIBENCH_IDLE_SECS", default_value_t = 5.0)]
    idle_secs: f64,
    /// Seconds to wait for the API to answer after tugboatd is healthy.
    #[arg(long, env = "APIBENCH_READY_TIMEOUT", default_value_t = 90.0)]
    ready_timeout: f64,
    /// Extra `tugboatd run` argument (repeat for several).
    #[arg(long = "tugboatd-arg", allow_hyphen_values = true)]
    tugboatd_args: Vec<String>,
    /// RUST_LOG for tugboatd (default: its own default).
    #[arg(long, env = "APIBENCH_TUGBOATD_LOG")]
    tugboatd_log: Option<String>,
    /// Write the results as JSON here.
    #[arg(long, env = "APIBENCH_JSON_OUT")]
    json_out: Option<PathBuf>,
    /// Write the docs/benchmarks.md section (Markdown) here.
    #[arg(long, env = "APIBENCH_MARKDOWN_OUT")]
    markdown_out: Option<PathBuf>,
    /// Command line to name in the report (default: this process's).
    #[arg(long)]
    command: Option<String>,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let backends: Vec<Backend> = match cli
        .backends
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Backend::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("apibench: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.watchers > 0 && cli.watch_conns == 0 {
        eprintln!("apibench: --watch-conns must be at least 1");
        return ExitCode::from(2);
    }
    if cli.watchers > 1000 * cli.watch_conns {
        eprintln!(
            "apibench: {} watchers need at least {} connections (1000 streams each)",
            cli.watchers,
            cli.watchers.div_ceil(1000)
        );
        return ExitCode::from(2);
    }
    let params = Params {
        creates: cli.creates,
        concurrency: cli.concurrency.max(1),
        conns: cli.conns.max(1),
        namespace: cli.namespace.clone(),
        list_repeat: cli.list_repeat.max(1),
        kubectl: cli.kubectl.clone(),
        watchers: cli.watchers,
        watch_conns: cli.watch_conns.max(1),
        updates: cli.updates,
        update_rate: cli.update_rate,
        drain_secs: cli.drain_secs,
    };
    let opts = RunOptions {
        idle_secs: cli.idle_secs,
        ready_timeout: Duration::from_secs_f64(cli.ready_timeout),
        tugboatd_args: cli.tugboatd_args.clone(),
        rust_log: cli.tugboatd_log.clone(),
    };
    let command = cli.command.clone().unwrap_or_else(|| {
        let mut env: Vec<String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("APIBENCH_"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.sort();
        env.extend(
            std::env::args()
                .enumerate()
                .map(|(i, a)| if i == 0 { "apibench".into() } else { a }),
        );
        env.join(" ")
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apibench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let etcd_version = apibench::etcd_version();
    let mut report = RunReport {
        command,
        started_utc: apibench::command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine: Machine::probe(),
        params: params.clone(),
        idle_secs: opts.idle_secs,
        kubectl_version: apibench::kubectl_version(&params.kubectl),
        etcd_version: etcd_version.clone(),
        tugboat_commit: apibench::git_commit(),
        backends: Vec::new(),
    };
    for (i, b) in backends.iter().enumerate() {
        if i > 0 {
            // Let the previous servers' exit and page-cache writeback settle.
            std::thread::sleep(Duration::from_secs(3));
        }
        eprintln!("== apibench: {}", b.key());
        let r = rt.block_on(apibench::run_backend(*b, &params, &opts, &etcd_version));
        report.backends.push(r);
    }
    report.machine.loadavg_after = apibench::loadavg();

    let md = apibench::report::markdown(&report);
    println!("{}", apibench::report::table(&report));
    print!("{}", apibench::report::goals(&report));
    let problems = apibench::report::problems(&report);
    if !problems.is_empty() {
        print!("\nProblems:\n{problems}");
    }
    if let Some(path) = &cli.json_out {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => {
                if let Err(e) = std::fs::write(path, s + "\n") {
                    eprintln!("apibench: writing {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            Err(e) => {
                eprintln!("apibench: encoding the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = &cli.markdown_out {
        if let Err(e) = std::fs::write(path, &md) {
            eprintln!("apibench: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.backends.iter().any(|b| b.failure.is_some()) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
