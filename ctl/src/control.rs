//! The control loops a store member runs beside its store and apiserver: the scheduler and the
//! controller-manager, each behind its own `coordination.k8s.io/v1` Lease so exactly one of each
//! is active per cluster, and the node agent when the host has a runtime (`--runtime`).
//!
//! Every loop is a kube-rs client of the apiserver over HTTPS, as an external one would be:
//! there is no back door into the store. Their client certificates are issued at start from
//! the cluster CA (store members hold its key), so nothing long-lived is written to disk.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tugboat_controllers::deployment::{DeploymentConfig, DeploymentController};
use tugboat_controllers::fleet::{FleetConfig, FleetController};
use tugboat_controllers::gc::{GarbageCollector, GcConfig};
use tugboat_controllers::leader::{LeaderElectionConfig, LeaderElector};
use tugboat_controllers::namespace::{NamespaceConfig, NamespaceController};
use tugboat_controllers::networkclass::{NetworkClassConfig, NetworkClassStatusController};
use tugboat_controllers::nodelifecycle::{NodeLifecycleConfig, NodeLifecycleController};
use tugboat_controllers::replicaset::{ReplicaSetConfig, ReplicaSetController};
use tugboat_controllers::scheduler::{Scheduler, SchedulerConfig};
use tugboat_nodeagent::{FakeConfig, FakeRuntime, NodeAgent, NodeAgentConfig, NodeResources};
use tugboat_qemu::accel::AccelChoice;
use tugboat_qemu::{QemuConfig, QemuRuntime};

use crate::hostruntime::HostRuntime;

/// User of the scheduler's and controller-manager's client certificate.
pub const CONTROLLER_MANAGER_USER: &str = "system:tugboat-controller-manager";
/// Group the node agents' certificates carry (the apiserver's node authorizer keys on it).
pub const NODES_GROUP: &str = "system:nodes";
/// Lease of the active scheduler.
pub const SCHEDULER_LEASE: &str = "tugboat-scheduler";
/// Lease of the active controller-manager.
pub const CONTROLLER_MANAGER_LEASE: &str = "tugboat-controller-manager";
/// Lifetime of the in-process clients' certificates (re-issued at every start).
const CLIENT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// The VM runtime the node agent drives (`--runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// No agent on this host: it serves the store and the control plane only.
    None,
    /// The in-memory fake runtime (demos, tests, scale simulations): Ships reach Running after
    /// `--fake-boot-delay-ms`, no VM is started.
    Fake,
    /// Real VMs: QEMU executed directly and driven over QMP (needs `qemu-system-x86_64` and
    /// `qemu-img`).
    Qemu,
}

/// The accelerator QEMU uses (`--accel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelFlag {
    /// KVM when a probe guest really runs under it, TCG otherwise.
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG (software emulation).
    Tcg,
}

/// Flags of the control loops (part of `tugboatd run`).
#[derive(Clone, Debug, clap::Args)]
pub struct ControlArgs {
    /// Run the scheduler and the controller-manager (leader-elected; one active per cluster).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub controllers: String,
    /// VM runtime of this host's node agent; `none` runs no agent.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Qemu)]
    pub runtime: RuntimeKind,
    /// QEMU runtime: accelerator (`auto` probes `/dev/kvm` with a tiny guest, cached per boot).
    #[arg(long, value_enum, default_value_t = AccelFlag::Auto)]
    pub accel: AccelFlag,
    /// QEMU runtime: registry hosts pulled over plain HTTP (`host:port`, repeatable or comma
    /// separated).
    #[arg(long = "insecure-registry", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// QEMU runtime: registry mirrors, `registry=mirror1;mirror2` (repeatable), tried in order
    /// before the registry itself.
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<String>,
    /// QEMU runtime: path of `qemu-system-x86_64` (default: found on PATH).
    #[arg(long)]
    pub qemu_binary: Option<std::path::PathBuf>,
    /// Fake runtime: milliseconds from start to Running.
    #[arg(long, default_value_t = 500)]
    pub fake_boot_delay_ms: u64,
    /// Fake runtime: probability in [0, 1] that a start fails.
    #[arg(long, default_value_t = 0.0)]
    pub fake_failure_rate: f64,
    /// Fake runtime: a running VM crashes this many seconds after it started.
    #[arg(long)]
    pub fake_crash_after_secs: Option<u64>,
    /// Fake runtime: serve a console socket and log per VM in this directory (tests).
    #[arg(long, hide = true)]
    pub fake_console_dir: Option<std::path::PathBuf>,
    /// Port of the node agent's HTTPS endpoint for Ship logs and consoles (the kubelet's
    /// 10250); `0` picks a free port. The Node advertises it in
    /// `status.daemonEndpoints.kubeletEndpoint.Port`.
    #[arg(long, default_value_t = tugboat_nodeagent::server::DEFAULT_PORT)]
    pub agent_port: u16,
    /// Fake runtime: CNI plugins the Node reports ready (`bridge,flannel,...`).
    #[arg(long, value_delimiter = ',')]
    pub fake_cni_plugins: Vec<String>,
    /// CPU cores the Node reports (default: the host's).
    #[arg(long)]
    pub node_cpu: Option<u32>,
    /// Memory the Node reports, as a quantity like `64Gi` (default: the host's).
    #[arg(long)]
    pub node_memory: Option<String>,
    /// Extra labels of this host's Node (`key=value,...`), e.g. topology.
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Seconds between renewals of the node's Lease.
    #[arg(long, default_value_t = 10)]
    pub node_heartbeat_interval: u64,
    /// Seconds without a node Lease renewal before the Node is marked NotReady (Unknown).
    #[arg(long, default_value_t = 40)]
    pub node_monitor_grace_period: u64,
    /// Seconds a Node stays NotReady before its Ships are marked Failed and replaced.
    #[arg(long, default_value_t = 30)]
    pub ship_eviction_timeout: u64,
}

impl ControlArgs {
    /// Checks the values clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.fake_failure_rate) {
            anyhow::bail!(
                "--fake-failure-rate must be between 0 and 1 (got {})",
                self.fake_failure_rate
            );
        }
        if self.node_heartbeat_interval == 0 {
            anyhow::bail!("--node-heartbeat-interval must be at least 1 second");
        }
        if self.node_monitor_grace_period <= self.node_heartbeat_interval {
            anyhow::bail!(
                "--node-monitor-grace-period ({} s) must be longer than --node-heartbeat-interval ({} s)",
                self.node_monitor_grace_period,
                self.node_heartbeat_interval
            );
        }
        if let Some(m) = &self.node_memory {
            tugboat_api::kinds::common::parse_quantity(m)
                .map_err(|e| anyhow::anyhow!("--node-memory {m:?}: {e}"))?;
        }
        if self.node_cpu == Some(0) {
            anyhow::bail!("--node-cpu must be at least 1");
        }
        self.mirrors()?;
        self.labels().map(|_| ())
    }

    fn mirrors(&self) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let mut out = BTreeMap::new();
        for m in &self.registry_mirrors {
            let Some((registry, mirrors)) = m.split_once('=') else {
                anyhow::bail!("--registry-mirror {m:?} is not registry=mirror[;mirror...]");
            };
            let list: Vec<String> = mirrors
                .split(';')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if registry.is_empty() || list.is_empty() {
                anyhow::bail!("--registry-mirror {m:?} is not registry=mirror[;mirror...]");
            }
            out.insert(registry.to_string(), list);
        }
        Ok(out)
    }

    fn labels(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.node_labels
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => anyhow::bail!("--node-labels: {l:?} is not key=value"),
            })
            .collect()
    }
}

/// A kube client of the apiserver at `server` (`https://…`) authenticated as `user` in
/// `groups`, with a client certificate issued now from `DATA/pki/ca.key`.
pub async fn client_for(
    data_dir: &Path,
    server: &str,
    user: &str,
    groups: &[String],
) -> anyhow::Result<kube::Client> {
    let yaml = crate::kubeconfig::issue(data_dir, Some(server), user, groups, CLIENT_CERT_LIFETIME)
        .with_context(|| format!("issuing the client certificate of {user}"))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).context("parsing kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("building the client configuration")?;
    kube::Client::try_from(config).context("building the API client")
}

/// Where this member's own loops reach its apiserver.
pub fn local_api_url(api_addr: SocketAddr, advertise: Option<std::net::IpAddr>) -> String {
    crate::listen::url("https", crate::listen::advertised(api_addr, advertise))
}

/// Runs the scheduler and the controller-manager until `stop` turns true. Both campaign for
/// their Lease as `identity`; the losers stand by and take over within a lease duration of
/// the holder's death.
pub async fn run_control_plane(
    client: kube::Client,
    identity: String,
    args: ControlArgs,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let scheduler_election = LeaderElector::new(
        client.clone(),
        LeaderElectionConfig::new(SCHEDULER_LEASE, identity.clone()),
    )
    .spawn();
    let manager_election = LeaderElector::new(
        client.clone(),
        LeaderElectionConfig::new(CONTROLLER_MANAGER_LEASE, identity.clone()),
    )
    .spawn();

    let scheduler_cfg = SchedulerConfig {
        instance: identity.clone(),
        ..SchedulerConfig::default()
    };
    let lifecycle = NodeLifecycleConfig {
        grace: Duration::from_secs(args.node_monitor_grace_period),
        ship_eviction_timeout: Duration::from_secs(args.ship_eviction_timeout),
        // Checked a few times per grace period, so a short test grace is still honoured.
        monitor_period: Duration::from_secs(args.node_monitor_grace_period.div_ceil(4).clamp(1, 5)),
        ..NodeLifecycleConfig::default()
    };
    let mut loops = tokio::task::JoinSet::new();
    let (c, sched) = (client.clone(), scheduler_election.is_leader.clone());
    supervise(&mut loops, "scheduler", &stop, move || {
        Scheduler::new(c.clone(), scheduler_cfg.clone()).run(sched.clone())
    });
    let manager = manager_election.is_leader.clone();
    let (c, m) = (client.clone(), manager.clone());
    supervise(&mut loops, "replicaset controller", &stop, move || {
        ReplicaSetController::new(c.clone(), ReplicaSetConfig::default()).run(m.clone())
    });
    let (c, m) = (client.clone(), manager.clone());
    supervise(&mut loops, "deployment controller", &stop, move || {
        DeploymentController::new(c.clone(), DeploymentConfig::default()).run(m.clone())
    });
    let (c, m) = (client.clone(), manager.clone());
    supervise(&mut loops, "fleet controller", &stop, move || {
        FleetController::new(c.clone(), FleetConfig::default()).run(m.clone())
    });
    let (c, m) = (client.clone(), manager.clone());
    supervise(&mut loops, "namespace controller", &stop, move || {
        NamespaceController::new(c.clone(), NamespaceConfig::default()).run(m.clone())
    });
    let (c, m) = (client.clone(), manager.clone());
    supervise(
        &mut loops,
        "networkclass status controller",
        &stop,
        move || {
            NetworkClassStatusController::new(c.clone(), NetworkClassConfig::default())
                .run(m.clone())
        },
    );
    let (c, m) = (client.clone(), manager.clone());
    supervise(&mut loops, "node lifecycle controller", &stop, move || {
        NodeLifecycleController::new(c.clone(), lifecycle.clone()).run(m.clone())
    });
    let (c, m) = (client.clone(), manager);
    supervise(&mut loops, "garbage collector", &stop, move || {
        GarbageCollector::new(c.clone(), GcConfig::default()).run(m.clone())
    });
    tracing::info!(%identity, "scheduler and controller-manager campaigning");

    let _ = stop.wait_for(|s| *s).await;
    // Releasing the Leases lets a standby take over at once instead of after a lease duration.
    scheduler_election.stop().await;
    manager_election.stop().await;
    loops.shutdown().await;
    Ok(())
}

/// Runs the loop `make` builds until `stop`; a loop that ends or panics before then is logged
/// and started again (after 1 s, doubling to a minute), so one bad object cannot silently
/// switch a controller off for the whole cluster while this member keeps its Lease.
fn supervise<F, Fut>(
    loops: &mut tokio::task::JoinSet<()>,
    name: &'static str,
    stop: &watch::Receiver<bool>,
    make: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut stop = stop.clone();
    loops.spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            let mut run = tokio::spawn(make());
            let ended = tokio::select! {
                ended = &mut run => ended,
                _ = stop.wait_for(|s| *s) => {
                    run.abort();
                    return;
                }
            };
            if *stop.borrow() {
                return;
            }
            if matches!(&ended, Err(e) if e.is_panic()) {
                tracing::error!(component = name, retry_in = ?delay, "panicked; restarting");
            } else {
                tracing::error!(component = name, retry_in = ?delay, "stopped; restarting");
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    });
}

/// The node agent's settings from the flags.
pub fn agent_config(args: &ControlArgs, node_name: &str, internal_ip: String) -> NodeAgentConfig {
    let mut cfg = NodeAgentConfig::new(node_name);
    cfg.labels = args.labels().unwrap_or_default();
    cfg.internal_ip = internal_ip;
    cfg.heartbeat_interval = Duration::from_secs(args.node_heartbeat_interval);
    cfg.lease_duration = Duration::from_secs(args.node_monitor_grace_period);
    match args.runtime {
        RuntimeKind::Fake => {
            cfg.runtime_class = "fake".into();
            cfg.cni_plugins = args.fake_cni_plugins.clone();
        }
        RuntimeKind::Qemu | RuntimeKind::None => cfg.runtime_class = "qemu".into(),
    }
    if args.node_cpu.is_some() || args.node_memory.is_some() {
        // What is not overridden is read from the host.
        let host = NodeResources::from_host().ok();
        let cpu = args
            .node_cpu
            .map(|c| c.to_string())
            .or_else(|| host.as_ref().map(|h| h.cpu.clone()))
            .unwrap_or_else(|| "1".into());
        let memory = args
            .node_memory
            .clone()
            .or_else(|| host.as_ref().map(|h| h.memory.clone()))
            .unwrap_or_else(|| "1Gi".into());
        cfg.capacity = Some(NodeResources { cpu, memory });
    }
    cfg
}

/// The runtime `--runtime` names (`None` for `none`); the QEMU runtime keeps its VMs and
/// image cache under `data_dir`.
pub async fn make_runtime(
    args: &ControlArgs,
    data_dir: &Path,
) -> anyhow::Result<Option<Arc<HostRuntime>>> {
    Ok(match args.runtime {
        RuntimeKind::None => None,
        RuntimeKind::Fake => Some(Arc::new(HostRuntime::Fake(FakeRuntime::new(FakeConfig {
            boot_delay: Duration::from_millis(args.fake_boot_delay_ms),
            failure_rate: args.fake_failure_rate,
            crash_after: args.fake_crash_after_secs.map(Duration::from_secs),
            crash_boots: None,
            seed: rand::random(),
            console_dir: args.fake_console_dir.clone(),
        })))),
        RuntimeKind::Qemu => {
            let mut cfg = QemuConfig::new(data_dir);
            cfg.accel = match args.accel {
                AccelFlag::Auto => AccelChoice::Auto,
                AccelFlag::Kvm => AccelChoice::Kvm,
                AccelFlag::Tcg => AccelChoice::Tcg,
            };
            if let Some(q) = &args.qemu_binary {
                cfg.qemu_binary = q.clone();
            }
            cfg.insecure_registries = args.insecure_registries.clone();
            cfg.mirrors = args.mirrors()?;
            let rt = QemuRuntime::new(cfg)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Some(Arc::new(HostRuntime::Qemu(rt)))
        }
    })
}

/// Node conditions the runtime reports: `KVMAvailable` for QEMU (and why it is not).
pub fn runtime_conditions(runtime: &HostRuntime) -> Vec<(String, String, String, String)> {
    match runtime {
        HostRuntime::Fake(_) => Vec::new(),
        HostRuntime::Qemu(q) => {
            let probe = q.accel();
            let (status, reason) = match probe.accel {
                tugboat_qemu::accel::Accel::Kvm => ("True", "KVMWorks"),
                tugboat_qemu::accel::Accel::Tcg => ("False", "SoftwareEmulation"),
            };
            vec![(
                "KVMAvailable".into(),
                status.into(),
                reason.into(),
                format!(
                    "VMs run with accel={}: {}",
                    probe.accel.as_str(),
                    probe.reason
                ),
            )]
        }
    }
}

/// Runs this host's node agent with the runtime `--runtime` names until `stop` turns true;
/// retries registration while the apiserver is unreachable. VMs outlive the agent.
pub async fn run_agent(
    client: kube::Client,
    args: ControlArgs,
    config: NodeAgentConfig,
    runtime: Option<Arc<HostRuntime>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(runtime) = runtime else {
        return Ok(());
    };
    let node = config.node_name.clone();
    let mut delay = Duration::from_millis(200);
    let agent = loop {
        tokio::select! {
            started = NodeAgent::start(client.clone(), runtime.clone(), config.clone()) => match started {
                Ok(agent) => break agent,
                Err(e) => {
                    tracing::warn!(%node, error = %e, retry_in = ?delay, "node agent could not start");
                }
            },
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    };
    tracing::info!(%node, runtime = ?args.runtime, "node agent running");
    let _ = stop.wait_for(|s| *s).await;
    drop(agent);
    Ok(())
}

/// Store key prefix under which each member publishes its apiserver URL (workers find an
/// apiserver there, through the store connection they already have).
pub const API_ENDPOINTS_PREFIX: &str = "/tugboat/apiservers/";

/// Publishes this member's apiserver URL under [`API_ENDPOINTS_PREFIX`]`<name>` (kept as is
/// when unchanged, so restarts write nothing).
pub async fn publish_api_endpoint(
    kv: &tugboat_api::kv::Kv,
    name: &str,
    url: &str,
) -> anyhow::Result<()> {
    let key = format!("{API_ENDPOINTS_PREFIX}{name}");
    for _ in 0..3 {
        let (current, _) = kv.get(key.as_bytes()).await?;
        if current
            .as_ref()
            .is_some_and(|kv| kv.value == url.as_bytes())
        {
            return Ok(());
        }
        let rev = current.map(|kv| kv.mod_revision).unwrap_or(0);
        match kv
            .put_if(key.as_bytes(), url.as_bytes().to_vec(), rev)
            .await?
        {
            tugboat_api::kv::CasOutcome::Written(_) => return Ok(()),
            // Someone else wrote meanwhile (a restart of this member racing itself): read again.
            tugboat_api::kv::CasOutcome::Failed(_) => {}
        }
    }
    anyhow::bail!("publishing the apiserver URL kept racing other writes")
}
