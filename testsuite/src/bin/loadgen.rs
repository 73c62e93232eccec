//! `tugboat-loadgen`: drive put/range/watch/mixed load at an etcd v3 endpoint
//! (Tugboat or etcd) and report throughput and latency quantiles.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tugboat_testsuite::load::{self, Bound, LoadConfig, Mode, Target, TlsFiles};

/// Command-line options; see `--help`.
#[derive(Debug, Parser)]
#[command(
    name = "tugboat-loadgen",
    about = "Load generator for etcd v3 endpoints"
)]
struct Args {
    /// http://host:port or https://host:port.
    #[arg(long)]
    endpoint: String,
    /// CA certificate for https endpoints.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate for https endpoints.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key for https endpoints.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Server name to verify instead of the URL host.
    #[arg(long)]
    tls_server_name: Option<String>,
    /// Request kind.
    #[arg(long, value_enum, default_value_t = Mode::Put)]
    mode: Mode,
    /// Concurrent logical clients (watch: watchers).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// HTTP/2 connections shared by the clients.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Stop after this many operations (watch: puts). Default 10000 unless --duration.
    #[arg(long, conflicts_with = "duration")]
    total: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// Key prefix (watchers watch it).
    #[arg(long, default_value = "lg/")]
    prefix: String,
    /// Serializable ranges (local reads) instead of linearizable.
    #[arg(long)]
    serializable: bool,
    /// Mixed mode: fraction of reads.
    #[arg(long, default_value_t = 0.5)]
    read_ratio: f64,
    /// Range mode: skip writing the key space first.
    #[arg(long)]
    no_prefill: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn secs(s: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("{what}: {e}"))
}

fn config(args: &Args) -> Result<(Target, LoadConfig), String> {
    let tls = match (&args.cacert, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            server_name: args.tls_server_name.clone(),
        }),
        (None, None, None) => None,
        _ => return Err("--cacert, --cert and --key go together".into()),
    };
    let bound = match (args.total, args.duration) {
        (Some(n), _) => Bound::Total(n),
        (None, Some(d)) => Bound::Duration(secs(d, "--duration")?),
        (None, None) => Bound::Total(10_000),
    };
    let cfg = LoadConfig {
        mode: args.mode,
        clients: args.clients,
        conns: args.conns,
        bound,
        key_size: args.key_size,
        val_size: args.val_size,
        key_space: args.key_space,
        prefix: args.prefix.clone(),
        serializable: args.serializable,
        read_ratio: args.read_ratio,
        prefill: !args.no_prefill,
        request_timeout: secs(args.timeout, "--timeout")?,
        ..LoadConfig::default()
    };
    let target = Target {
        endpoint: args.endpoint.clone(),
        tls,
    };
    Ok((target, cfg))
}

/// The error's message followed by the causes its message does not already show.
fn with_causes(e: &load::LoadError) -> String {
    use std::error::Error;
    let mut msg = e.to_string();
    // LoadError's message already includes its direct source; add the deeper ones.
    let mut cause = e.source().and_then(|s| s.source());
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (target, cfg) = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tugboat-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match load::run(&target, &cfg).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tugboat-loadgen: {}", with_causes(&e));
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("tugboat-loadgen: cannot encode report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.to_text());
    }
    // Nothing succeeded: the numbers are meaningless, so say so in the status.
    if report.ops == 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
