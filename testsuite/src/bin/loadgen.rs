//! `tugboat-loadgen`: drive put/range/watch/mixed load at an etcd v3 endpoint
//! (Tugboat or etcd) and report throughput and latency quantiles.
//!
//! Two subcommands time cluster events for `scripts/bench.sh`:
//! `failover-probe` (write outage after killing the leader) and `join-timer`
//! (time until joining members are voters).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;
use tugboat_testsuite::load::cluster::{self, JoinWaitConfig, MemberRef, ProbeConfig};
use tugboat_testsuite::load::{self, Bound, LoadConfig, Mode, Target, TlsFiles};

/// Command-line options; see `--help`.
#[derive(Debug, Parser)]
#[command(
    name = "tugboat-loadgen",
    about = "Load generator for etcd v3 endpoints",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: Args,
}

/// Cluster timings instead of a load run.
#[derive(Debug, Subcommand)]
enum Command {
    /// Put to a follower every few ms, SIGKILL the leader, report the write outage (JSON).
    FailoverProbe(ProbeArgs),
    /// Poll the member list until the given members are voters, report the times (JSON).
    JoinTimer(JoinTimerArgs),
}

/// Options of `failover-probe`.
#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// Plain http://host:port of a follower that stays up.
    #[arg(long)]
    endpoint: String,
    /// Pid of the leader's process, killed with SIGKILL after the warm-up.
    #[arg(long)]
    kill_pid: i32,
    /// Seconds of writes before the kill.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Milliseconds between puts (sent whether or not earlier ones were answered).
    #[arg(long, default_value_t = 5.0)]
    interval_ms: f64,
    /// Per-put timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Seconds after the kill to give up waiting for writes and a new leader.
    #[arg(long, default_value_t = 30.0)]
    max_wait: f64,
    /// Key prefix of the probe's puts.
    #[arg(long, default_value = "fo/")]
    prefix: String,
}

/// Options of `join-timer`.
#[derive(Debug, clap::Args)]
struct JoinTimerArgs {
    /// Plain http://host:port of a member that stays up.
    #[arg(long)]
    endpoint: String,
    /// Joining member: NAME or NAME@HOST:PORT (its peer address); repeat for each.
    #[arg(long = "member", required = true)]
    members: Vec<String>,
    /// When the join started, in nanoseconds since the Unix epoch (`date +%s%N`).
    #[arg(long)]
    since_unix_ns: u64,
    /// Promote members while they are learners (etcd's `member promote`).
    #[arg(long)]
    promote: bool,
    /// Milliseconds between member-list polls.
    #[arg(long, default_value_t = 10.0)]
    poll_ms: f64,
    /// Seconds (from --since-unix-ns) to wait at most.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

/// Options of a load run.
#[derive(Debug, clap::Args)]
struct Args {
    /// http://host:port or https://host:port; a comma-separated list spreads the
    /// connections (--conns, rounded up to a multiple of the list) and so the clients
    /// evenly over the members.
    #[arg(long, alias = "endpoints", required = true)]
    endpoint: Option<String>,
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
        endpoint: args.endpoint.clone().ok_or("--endpoint is required")?,
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

fn print_json(value: &impl Serialize) -> Result<(), String> {
    let s =
        serde_json::to_string_pretty(value).map_err(|e| format!("cannot encode report: {e}"))?;
    println!("{s}");
    Ok(())
}

async fn failover_probe(a: ProbeArgs) -> Result<ExitCode, String> {
    let cfg = ProbeConfig {
        target: Target::plain(a.endpoint),
        kill_pid: a.kill_pid,
        warmup: secs(a.warmup, "--warmup")?,
        interval: secs(a.interval_ms / 1000.0, "--interval-ms")?,
        request_timeout: secs(a.timeout, "--timeout")?,
        max_wait: secs(a.max_wait, "--max-wait")?,
        prefix: a.prefix,
        ..ProbeConfig::default()
    };
    let report = cluster::failover_probe(&cfg)
        .await
        .map_err(|e| with_causes(&e))?;
    print_json(&report)?;
    // Without a new leader and a write after the kill there is no measurement.
    Ok(
        if report.write_gap_ms.is_some() && report.leader_gap_ms.is_some() {
            ExitCode::SUCCESS
        } else {
            eprintln!("tugboat-loadgen: no new leader or no write within --max-wait");
            ExitCode::FAILURE
        },
    )
}

async fn join_timer(a: JoinTimerArgs) -> Result<ExitCode, String> {
    let members = a
        .members
        .iter()
        .map(|m| MemberRef::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = JoinWaitConfig {
        target: Target::plain(a.endpoint),
        members,
        since: cluster::unix_nanos(a.since_unix_ns),
        promote: a.promote,
        poll: secs(a.poll_ms / 1000.0, "--poll-ms")?,
        timeout: secs(a.timeout, "--timeout")?,
    };
    let times = cluster::wait_voters(&cfg)
        .await
        .map_err(|e| with_causes(&e))?;
    print_json(&times)?;
    Ok(if times.all_voters_ms.is_some() {
        ExitCode::SUCCESS
    } else {
        eprintln!("tugboat-loadgen: not every member became a voter within --timeout");
        ExitCode::FAILURE
    })
}

async fn load_run(args: Args) -> Result<ExitCode, String> {
    let (target, cfg) = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tugboat-loadgen: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let report = load::run(&target, &cfg)
        .await
        .map_err(|e| with_causes(&e))?;
    if args.json {
        print_json(&report)?;
    } else {
        print!("{}", report.to_text());
    }
    // Nothing succeeded: the numbers are meaningless, so say so in the status.
    if report.ops == 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::FailoverProbe(a)) => failover_probe(a).await,
        Some(Command::JoinTimer(a)) => join_timer(a).await,
        None => load_run(cli.load).await,
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tugboat-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
