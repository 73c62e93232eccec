//! The scheduling benchmark: one real `tugboatd` (store, apiserver and, by default, its own
//! scheduler and controllers) and many simulated nodes in this process, each a
//! [`tugboat_nodeagent::NodeAgent`] over a [`tugboat_nodeagent::FakeRuntime`], all sharing one
//! kube client. Ships are created through the API in parallel; a watch records when each one
//! is bound (`spec.nodeName` set) and when it is Running.

pub mod report;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde::Serialize;
use tokio::sync::watch;
use tugboat_api::kinds::core::{Node, Ship, ShipClass};
use tugboat_controllers::scheduler::{Scheduler, SchedulerConfig};
use tugboat_nodeagent::{FakeConfig, FakeRuntime, NodeAgent, NodeAgentConfig, NodeResources};
use tugboat_testsuite::harness::{TugboatNode, TugboatOptions};

use tugboat_testsuite::procstat::{cpu_seconds, status_kib, RssSampler};

/// Where the scheduler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerPlace {
    /// Inside `tugboatd` (`--controllers on`), as a cluster runs it.
    Tugboatd,
    /// In this process (`tugboatd --controllers off`); its CPU then counts as the bench's.
    InProcess,
}

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    /// Simulated nodes.
    pub nodes: usize,
    /// Ships to create.
    pub ships: usize,
    /// Concurrent create requests.
    pub create_concurrency: usize,
    /// Nodes registered at once while starting the agents.
    pub agent_start_concurrency: usize,
    /// Fake runtime: time from start to Running.
    pub boot_delay_ms: u64,
    /// CPU cores per simulated node.
    pub node_cpu: u32,
    /// Memory per simulated node.
    pub node_memory: String,
    /// Zones the nodes are spread over (label `topology.kubernetes.io/zone`).
    pub zones: usize,
    /// Where the scheduler runs.
    pub scheduler: SchedulerPlace,
    /// Give up waiting for Running after this long.
    pub timeout_secs: f64,
}

/// Everything measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    /// Seconds to start every agent and see every Node Ready.
    pub nodes_ready_secs: f64,
    /// Ships created (of `ships`).
    pub created: usize,
    /// Create errors.
    pub create_errors: usize,
    /// First create error, if any.
    pub create_error_sample: Option<String>,
    /// Seconds from the first create to the last answer.
    pub create_secs: f64,
    /// Ships seen bound by the watch.
    pub bound: usize,
    /// Ships seen Running by the watch.
    pub running: usize,
    /// Seconds from the first create to the last binding.
    pub all_bound_secs: Option<f64>,
    /// Seconds from the first create to the last Running.
    pub all_running_secs: Option<f64>,
    /// Bound Ships / seconds from the first to the last binding.
    pub bind_rate: f64,
    /// Most bindings seen in one second.
    pub peak_bind_rate_1s: usize,
    /// Create (sent) to bound (seen), p50 / p99 / max ms.
    pub create_to_bound_ms: [f64; 3],
    /// Bound (seen) to Running (seen), p50 / p99 / max ms.
    pub bound_to_running_ms: [f64; 3],
    /// Ships placed on the busiest node, and on the least busy.
    pub max_per_node: usize,
    /// Fewest Ships on a node.
    pub min_per_node: usize,
    /// Bindings the watch saw change to another node (must be 0).
    pub rebinds: usize,
    /// tugboatd CPU seconds from the first create until all Running (or the timeout).
    pub tugboatd_cpu_secs: f64,
    /// tugboatd VmRSS before the creates, KiB.
    pub tugboatd_rss_before_kib: u64,
    /// tugboatd VmRSS peak during the run (100 ms samples), KiB.
    pub tugboatd_rss_peak_kib: u64,
    /// tugboatd VmHWM at the end, KiB.
    pub tugboatd_hwm_kib: u64,
    /// This process's CPU seconds over the same span.
    pub bench_cpu_secs: f64,
    /// This process's VmRSS peak, KiB.
    pub bench_rss_peak_kib: u64,
}

/// Per-Ship timeline as the watch saw it.
#[derive(Default)]
struct Timeline {
    sent: HashMap<String, Instant>,
    bound: HashMap<String, (Instant, String)>,
    running: HashMap<String, Instant>,
    rebinds: usize,
}

fn percentiles(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    [at(0.5), at(0.99), v[v.len() - 1]]
}

/// A kube client with the node's cluster-admin kubeconfig.
async fn client_for(node: &TugboatNode) -> Result<Client> {
    let path = node.kubeconfig_path();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("kube config")?;
    Client::try_from(config).context("kube client")
}

/// Runs the whole benchmark against a fresh tugboatd.
pub async fn run(p: &Params, tugboatd_args: Vec<String>) -> Result<Results> {
    let opts = TugboatOptions {
        name: "schedbench".into(),
        api: true,
        controllers: p.scheduler == SchedulerPlace::Tugboatd,
        extra_args: tugboatd_args,
        ..TugboatOptions::default()
    };
    let node = tokio::task::spawn_blocking(move || TugboatNode::start(opts))
        .await?
        .context("starting tugboatd")?;
    let r = measure(&node, p).await;
    if r.is_err() {
        eprintln!("--- tugboatd log tail ---\n{}\n---", node.log_tail(40));
    }
    drop(node);
    r
}

async fn measure(node: &TugboatNode, p: &Params) -> Result<Results> {
    let pid = node.pid().context("tugboatd has no pid")?;
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(90);
    // tugboatd writes the admin kubeconfig once its apiserver is up, after the store answers.
    while !node.kubeconfig_path().is_file() {
        if Instant::now() > deadline {
            bail!("{} never appeared", node.kubeconfig_path().display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = client_for(node).await?;
    loop {
        match Api::<Node>::all(client.clone())
            .list(&ListParams::default().limit(1))
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => bail!("API not ready: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let mut class = ShipClass::default();
    class.metadata.name = Some("bench".into());
    class.spec.cpu.cores = 1;
    class.spec.memory.size = Quantity("1Gi".into());
    Api::<ShipClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .context("creating the ShipClass")?;

    // The simulated nodes.
    let mut res = Results::default();
    eprintln!("   starting {} node agents", p.nodes);
    let started = Instant::now();
    let agents = start_agents(&client, p).await?;
    wait_nodes_ready(&client, p.nodes, Duration::from_secs(120)).await?;
    res.nodes_ready_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "   {} nodes Ready after {:.1} s",
        p.nodes, res.nodes_ready_secs
    );

    let (leader_tx, leader_rx) = watch::channel(true);
    let in_process = (p.scheduler == SchedulerPlace::InProcess).then(|| {
        let s = Scheduler::new(client.clone(), SchedulerConfig::default());
        tokio::spawn(s.run(leader_rx))
    });

    // Let the control plane settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let recorder = tokio::spawn(record(client.clone(), timeline.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    res.tugboatd_rss_before_kib = status_kib(pid, "VmRSS").unwrap_or(0);
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let bench_cpu0 = cpu_seconds(me).unwrap_or(0.0);
    let sampler = RssSampler::start(pid);
    let bench_sampler = RssSampler::start(me);
    let t0 = Instant::now();
    eprintln!(
        "   creating {} Ships ({} concurrent)",
        p.ships, p.create_concurrency
    );
    let ships: Api<Ship> = Api::namespaced(client.clone(), "default");
    let results: Vec<Result<(), String>> = futures::stream::iter(0..p.ships)
        .map(|i| {
            let ships = ships.clone();
            let timeline = timeline.clone();
            async move {
                let name = format!("s-{i:06}");
                let mut s = Ship::default();
                s.metadata.name = Some(name.clone());
                s.spec.image = "registry.example/bench/ubuntu:24.04".into();
                s.spec.ship_class = "bench".into();
                if let Ok(mut t) = timeline.lock() {
                    t.sent.insert(format!("default/{name}"), Instant::now());
                }
                ships
                    .create(&PostParams::default(), &s)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(p.create_concurrency.max(1))
        .collect()
        .await;
    res.create_secs = t0.elapsed().as_secs_f64();
    res.created = results.iter().filter(|r| r.is_ok()).count();
    res.create_errors = results.len() - res.created;
    res.create_error_sample = results.iter().find_map(|r| r.clone().err());
    eprintln!(
        "   {} created in {:.1} s ({:.0}/s), {} errors",
        res.created,
        res.create_secs,
        res.created as f64 / res.create_secs.max(1e-9),
        res.create_errors
    );

    // Wait for every created Ship to run.
    let timeout = Duration::from_secs_f64(p.timeout_secs);
    let mut last_report = Instant::now();
    loop {
        let (bound, running) = {
            let t = timeline.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            (t.bound.len(), t.running.len())
        };
        if running >= res.created {
            break;
        }
        if t0.elapsed() > timeout {
            eprintln!("   timeout: {bound} bound, {running} running");
            break;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "   t={:.1}s bound {bound} running {running}",
                t0.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    res.tugboatd_cpu_secs = cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    res.bench_cpu_secs = cpu_seconds(me).unwrap_or(0.0) - bench_cpu0;
    res.tugboatd_rss_peak_kib = sampler.finish();
    res.bench_rss_peak_kib = bench_sampler.finish();
    res.tugboatd_hwm_kib = status_kib(pid, "VmHWM").unwrap_or(0);

    {
        let t = timeline.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        res.bound = t.bound.len();
        res.running = t.running.len();
        res.rebinds = t.rebinds;
        let bound_at: Vec<Instant> = t.bound.values().map(|(at, _)| *at).collect();
        if res.bound >= res.created && res.created > 0 {
            res.all_bound_secs = bound_at.iter().max().map(|m| (*m - t0).as_secs_f64());
        }
        if res.running >= res.created && res.created > 0 {
            res.all_running_secs = t.running.values().max().map(|m| (*m - t0).as_secs_f64());
        }
        if let (Some(first), Some(last)) = (bound_at.iter().min(), bound_at.iter().max()) {
            let span = (*last - *first).as_secs_f64();
            res.bind_rate = if span > 0.0 {
                bound_at.len() as f64 / span
            } else {
                bound_at.len() as f64
            };
            let mut per_sec: HashMap<u64, usize> = HashMap::new();
            for at in &bound_at {
                *per_sec.entry((*at - *first).as_secs()).or_default() += 1;
            }
            res.peak_bind_rate_1s = per_sec.values().copied().max().unwrap_or(0);
        }
        res.create_to_bound_ms = percentiles(
            t.bound
                .iter()
                .filter_map(|(k, (at, _))| {
                    t.sent
                        .get(k)
                        .map(|s| at.saturating_duration_since(*s).as_secs_f64() * 1e3)
                })
                .collect(),
        );
        res.bound_to_running_ms = percentiles(
            t.running
                .iter()
                .filter_map(|(k, at)| {
                    t.bound
                        .get(k)
                        .map(|(b, _)| at.saturating_duration_since(*b).as_secs_f64() * 1e3)
                })
                .collect(),
        );
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for (_, n) in t.bound.values() {
            *per_node.entry(n.as_str()).or_default() += 1;
        }
        res.max_per_node = per_node.values().copied().max().unwrap_or(0);
        res.min_per_node = if per_node.len() < p.nodes {
            0
        } else {
            per_node.values().copied().min().unwrap_or(0)
        };
    }
    recorder.abort();
    drop(leader_tx);
    if let Some(h) = in_process {
        h.abort();
    }
    for a in agents {
        a.shutdown().await;
    }
    Ok(res)
}

/// Starts the agents, `agent_start_concurrency` registrations at a time.
async fn start_agents(client: &Client, p: &Params) -> Result<Vec<NodeAgent>> {
    let fake = FakeConfig {
        boot_delay: Duration::from_millis(p.boot_delay_ms),
        ..FakeConfig::default()
    };
    let agents: Vec<Result<NodeAgent>> = futures::stream::iter(0..p.nodes)
        .map(|i| {
            let client = client.clone();
            let fake = fake.clone();
            async move {
                let name = format!("node-{i:04}");
                let mut cfg = NodeAgentConfig::new(&name);
                cfg.runtime_class = "fake".into();
                let res = NodeResources {
                    cpu: p.node_cpu.to_string(),
                    memory: p.node_memory.clone(),
                };
                cfg.capacity = Some(res.clone());
                cfg.allocatable = Some(res);
                cfg.internal_ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
                cfg.labels.insert(
                    "topology.kubernetes.io/zone".into(),
                    format!("zone-{}", i % p.zones.max(1)),
                );
                let runtime = Arc::new(FakeRuntime::new(FakeConfig {
                    seed: i as u64,
                    ..fake
                }));
                NodeAgent::start(client, runtime, cfg)
                    .await
                    .with_context(|| format!("starting agent {name}"))
            }
        })
        .buffer_unordered(p.agent_start_concurrency.max(1))
        .collect()
        .await;
    agents.into_iter().collect()
}

async fn wait_nodes_ready(client: &Client, want: usize, within: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await?;
        let ready = nodes
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                    .is_some_and(|c| c.status == "True")
            })
            .count();
        if ready >= want {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!("only {ready} of {want} nodes Ready after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Records bindings and Running transitions from a watch of every Ship.
async fn record(client: Client, timeline: Arc<Mutex<Timeline>>) {
    let api: Api<Ship> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).applied_objects();
    let mut stream = std::pin::pin!(stream);
    loop {
        let ship = match stream.try_next().await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "ship watch");
                continue;
            }
        };
        let now = Instant::now();
        let key = format!(
            "{}/{}",
            ship.metadata.namespace.as_deref().unwrap_or(""),
            ship.metadata.name.as_deref().unwrap_or("")
        );
        let Ok(mut t) = timeline.lock() else { return };
        if let Some(n) = ship.spec.node_name.as_deref().filter(|n| !n.is_empty()) {
            match t.bound.get(&key) {
                Some((_, prev)) if prev != n => t.rebinds += 1,
                Some(_) => {}
                None => {
                    t.bound.insert(key.clone(), (now, n.to_string()));
                }
            }
        }
        let running = ship.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running && !t.running.contains_key(&key) {
            t.running.insert(key, now);
        }
    }
}
