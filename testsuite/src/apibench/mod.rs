//! `apibench`: the Kubernetes-shaped API of `tugboatd` over its own store and over Debian's
//! etcd (`--etcd-endpoints`), measured side by side: Ship creates, `kubectl get ships -A`,
//! watch fan-out and RSS.

pub mod client;
pub mod phases;
pub mod report;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use phases::{CreateResult, ListResult, Params, WatchResult};
use tugboat_testsuite::procstat::{status_kib, RssSampler};
use tugboat_testsuite::{EtcdNode, EtcdOptions, TugboatNode, TugboatOptions};

/// Where the apiserver keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `tugboatd run` serving the API from its own (in-process) store.
    Tugboat,
    /// The same `tugboatd` with `--etcd-endpoints` pointing at Debian's etcd.
    Etcd,
}

impl Backend {
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "tugboat" => Ok(Backend::Tugboat),
            "etcd" => Ok(Backend::Etcd),
            other => anyhow::bail!("unknown backend {other:?} (tugboat or etcd)"),
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Backend::Tugboat => "tugboat",
            Backend::Etcd => "etcd",
        }
    }
}

/// Memory of the processes involved, in KiB.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// tugboatd (apiserver + its own store) VmRSS 5 s after the API answered.
    pub tugboatd_idle_kib: Option<u64>,
    /// Peak during the creates.
    pub tugboatd_creates_peak_kib: Option<u64>,
    /// Right after the creates.
    pub tugboatd_after_creates_kib: Option<u64>,
    /// Peak during the lists.
    pub tugboatd_lists_peak_kib: Option<u64>,
    /// Peak while the watchers were open and the updates went out.
    pub tugboatd_watch_peak_kib: Option<u64>,
    /// VmHWM at the end.
    pub tugboatd_hwm_kib: Option<u64>,
    /// Debian etcd (etcd backend only), same points.
    pub etcd_idle_kib: Option<u64>,
    pub etcd_after_creates_kib: Option<u64>,
    pub etcd_watch_peak_kib: Option<u64>,
    pub etcd_hwm_kib: Option<u64>,
}

/// Everything measured on one backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendResult {
    pub backend: Backend,
    pub label: String,
    pub api_url: String,
    pub creates: Option<CreateResult>,
    pub lists: Option<ListResult>,
    pub watch: Option<WatchResult>,
    pub memory: Memory,
    /// A phase that could not run, and why.
    pub failure: Option<String>,
}

/// Process-level options besides [`Params`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Seconds between "API ready" and the idle RSS reading.
    pub idle_secs: f64,
    /// Seconds to wait for the API after `tugboatd` is healthy.
    pub ready_timeout: Duration,
    /// Extra `tugboatd run` arguments.
    pub tugboatd_args: Vec<String>,
    /// `RUST_LOG` for tugboatd (None: its default).
    pub rust_log: Option<String>,
}

/// Runs every phase on one backend; servers are started fresh and stopped at the end.
pub async fn run_backend(
    backend: Backend,
    p: &Params,
    o: &RunOptions,
    etcd_version: &str,
) -> BackendResult {
    let label = match backend {
        Backend::Tugboat => "apiserver on tugboat's store".to_string(),
        Backend::Etcd => format!("apiserver on etcd {etcd_version}"),
    };
    let mut res = BackendResult {
        backend,
        label,
        api_url: String::new(),
        creates: None,
        lists: None,
        watch: None,
        memory: Memory::default(),
        failure: None,
    };
    if let Err(e) = run_phases(backend, p, o, &mut res).await {
        eprintln!("apibench: {}: {e:#}", backend.key());
        res.failure = Some(format!("{e:#}"));
    }
    res
}

async fn run_phases(
    backend: Backend,
    p: &Params,
    o: &RunOptions,
    res: &mut BackendResult,
) -> Result<()> {
    let etcd = match backend {
        Backend::Etcd => Some(
            tokio::task::spawn_blocking(|| EtcdNode::start(EtcdOptions::default()))
                .await?
                .context("starting etcd")?,
        ),
        Backend::Tugboat => None,
    };
    let mut extra = o.tugboatd_args.clone();
    if let Some(e) = &etcd {
        extra.push("--etcd-endpoints".into());
        extra.push(e.plain_endpoint());
    }
    let mut env = Vec::new();
    if let Some(l) = &o.rust_log {
        env.push(("RUST_LOG".to_string(), l.clone()));
    }
    let opts = TugboatOptions {
        name: "apibench".into(),
        api: true,
        extra_args: extra,
        env,
        ..TugboatOptions::default()
    };
    let node = tokio::task::spawn_blocking(move || TugboatNode::start(opts))
        .await?
        .context("starting tugboatd")?;
    let result = measure(&node, etcd.as_ref(), p, o, res).await;
    if result.is_err() {
        eprintln!("--- tugboatd log tail ---\n{}\n---", node.log_tail(40));
    }
    let tpid = node.pid();
    res.memory.tugboatd_hwm_kib = tpid.and_then(|pid| status_kib(pid, "VmHWM"));
    res.memory.etcd_hwm_kib = etcd
        .as_ref()
        .and_then(|e| e.pid())
        .and_then(|pid| status_kib(pid, "VmHWM"));
    drop(node);
    drop(etcd);
    result
}

async fn measure(
    node: &TugboatNode,
    etcd: Option<&EtcdNode>,
    p: &Params,
    o: &RunOptions,
    res: &mut BackendResult,
) -> Result<()> {
    res.api_url = node.api_url();
    let tpid = node.pid().context("tugboatd has no pid")?;
    let epid = etcd.and_then(|e| e.pid());
    let kubeconfig = node.kubeconfig_path();
    eprintln!("   waiting for the API at {}", res.api_url);
    let (target, first) = phases::wait_ready(&kubeconfig, &p.namespace, o.ready_timeout).await?;
    tokio::time::sleep(Duration::from_secs_f64(o.idle_secs)).await;
    let m = &mut res.memory;
    m.tugboatd_idle_kib = status_kib(tpid, "VmRSS");
    m.etcd_idle_kib = epid.and_then(|pid| status_kib(pid, "VmRSS"));

    eprintln!(
        "   creating {} Ships ({} concurrent, {} connections)",
        p.creates, p.concurrency, p.conns
    );
    let mut conns = vec![first.clone()];
    conns.extend(target.connect_many(p.conns.saturating_sub(1)).await?);
    let sampler = RssSampler::start(tpid);
    let c = phases::creates(&conns, p).await;
    res.memory.tugboatd_creates_peak_kib = Some(sampler.finish());
    res.memory.tugboatd_after_creates_kib = status_kib(tpid, "VmRSS");
    res.memory.etcd_after_creates_kib = epid.and_then(|pid| status_kib(pid, "VmRSS"));
    eprintln!(
        "   {} created in {:.1} s ({:.0}/s, p99 {:.1} ms), {} errors",
        c.ok, c.seconds, c.creates_per_sec, c.latency.p99_ms, c.errors.count
    );
    for e in &c.errors.samples {
        eprintln!("     error: {e}");
    }
    let created = c.ok;
    res.creates = Some(c);
    drop(conns);

    eprintln!("   listing ({} runs each)", p.list_repeat);
    let cache = tempfile::Builder::new()
        .prefix("apibench-kubectl-cache-")
        .tempdir()
        .context("kubectl cache dir")?;
    let sampler = RssSampler::start(tpid);
    let l = phases::lists(&first, p, &kubeconfig, cache.path()).await;
    res.memory.tugboatd_lists_peak_kib = Some(sampler.finish());
    for e in l
        .kubectl
        .errors
        .samples
        .iter()
        .chain(&l.raw_json.errors.samples)
        .chain(&l.table.errors.samples)
    {
        eprintln!("     error: {e}");
    }
    eprintln!(
        "   kubectl get ships -A: median {} ms ({} rows); raw JSON list {} ms; Table {} ms",
        fmt_opt(l.kubectl.median_ms),
        l.kubectl
            .rows
            .map(|r| r.to_string())
            .unwrap_or_else(|| "?".into()),
        fmt_opt(l.raw_json.median_ms),
        fmt_opt(l.table.median_ms)
    );
    res.lists = Some(l);

    if p.watchers > 0 && p.updates > 0 {
        eprintln!(
            "   watch: {} watchers over {} connections, {} updates at {}/s",
            p.watchers, p.watch_conns, p.updates, p.update_rate
        );
        let sampler = RssSampler::start(tpid);
        let esampler = epid.map(RssSampler::start);
        let targets = (created as usize).clamp(1, p.creates.max(1));
        let w = phases::watch(&target, &first, p, targets).await;
        res.memory.tugboatd_watch_peak_kib = Some(sampler.finish());
        res.memory.etcd_watch_peak_kib = esampler.map(|s| s.finish());
        let w = w?;
        eprintln!(
            "   {} of {} watchers complete, {} of {} deliveries; from ack p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            w.complete_watchers,
            w.watchers,
            w.delivered,
            w.expected_deliveries,
            w.latency_from_ack.p50_ms,
            w.latency_from_ack.p99_ms,
            w.latency_from_ack.max_ms
        );
        for e in &w.errors.samples {
            eprintln!("     error: {e}");
        }
        res.watch = Some(w);
    }
    Ok(())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "n/a".into())
}

/// The whole run, as written to the JSON result file.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub command: String,
    pub started_utc: String,
    pub machine: Machine,
    pub params: Params,
    pub idle_secs: f64,
    pub etcd_version: String,
    pub kubectl_version: String,
    /// `git rev-parse --short HEAD` of the source tree (with " (dirty tree)" when modified).
    pub tugboat_commit: String,
    pub backends: Vec<BackendResult>,
}

/// Where it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub loadavg_before: String,
    pub loadavg_after: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .map(|kib| kib / 1024.0 / 1024.0)
            .unwrap_or(0.0);
        let kernel = command_line("uname", &["-sr"]);
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu,
            mem_gib,
            kernel,
            loadavg_before: loadavg(),
            loadavg_after: String::new(),
        }
    }
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// First line of a command's stdout (empty on failure).
pub fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

/// etcd's version (`etcd --version`).
pub fn etcd_version() -> String {
    let out = std::process::Command::new(tugboat_testsuite::harness::ETCD_BIN)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "3.4".into())
}

/// kubectl's client version.
pub fn kubectl_version(kubectl: &PathBuf) -> String {
    let out = std::process::Command::new(kubectl)
        .args(["version", "--client", "-o", "json"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["clientVersion"]["gitVersion"].as_str().map(String::from))
        .unwrap_or_else(|| "unknown".into())
}

/// The source tree's commit, as bench.sh reports it.
pub fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let rev = command_line("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    if rev.is_empty() {
        return "unknown".into();
    }
    let dirty = std::process::Command::new("git")
        .args(["-C", dir, "status", "--porcelain"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{rev} (dirty tree)")
    } else {
        rev
    }
}
