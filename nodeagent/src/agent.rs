//! The node agent: Node registration, Lease heartbeats and the Ship reconciler.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;
use tugboat_api::kinds::core::ShipSpec;

use crate::resolve::{registry_hosts, resolve_vm_spec, ResolveError};
use crate::runtime::{RegistryHosts, Runtime, RuntimeError, VmSpec, VmState, VmStatus};

/// Finalizer the agent puts on every Ship bound to its node.
pub const FINALIZER: &str = "tugboat.io/agent";
/// Annotation that makes the agent drop a Ship's VM and local state without a graceful stop
/// and without failing on runtime errors.
pub const FORCE_DELETE_ANNOTATION: &str = "tugboat.io/force-delete-local-state";
/// Namespace of node heartbeat Leases (apart from the control plane's Leases, so no node name can
/// take one of those over); the apiserver creates it at bootstrap.
pub const LEASE_NAMESPACE: &str = "tugboat-node-lease";
/// Annotation `tugboat restart` sets (a timestamp); a running VM is restarted when it changes.
pub const RESTART_ANNOTATION: &str = "tugboat.io/restartedAt";
/// Annotation `tugboat pause` sets to `"true"`: a running VM's vCPUs are paused while it is, and
/// resumed when it goes (`tugboat unpause`).
pub const PAUSE_ANNOTATION: &str = "tugboat.io/paused";
/// Label carrying the node's runtime class.
pub const RUNTIME_CLASS_LABEL: &str = "tugboat.io/runtime-class";

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An apiserver request failed.
    #[error("apiserver: {0}")]
    Kube(#[from] kube::Error),
    /// A runtime operation failed.
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// An object from the apiserver did not have the expected shape.
    #[error("invalid {what}: {message}")]
    InvalidObject {
        /// Which object.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// Host resources could not be read.
    #[error("reading host resources: {0}")]
    Host(String),
}

/// CPU and memory of a node as Kubernetes quantities (`"8"`, `"16Gi"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeResources {
    /// CPU cores.
    pub cpu: String,
    /// Memory.
    pub memory: String,
}

impl NodeResources {
    /// The host's CPUs (`available_parallelism`) and memory (`MemTotal` of `/proc/meminfo`).
    pub fn from_host() -> Result<Self, AgentError> {
        let cpu = std::thread::available_parallelism()
            .map_err(|e| AgentError::Host(format!("cpu count: {e}")))?
            .get();
        let meminfo = std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| AgentError::Host(format!("/proc/meminfo: {e}")))?;
        let kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| AgentError::Host("no MemTotal in /proc/meminfo".into()))?;
        Ok(Self {
            cpu: cpu.to_string(),
            memory: format!("{kib}Ki"),
        })
    }
}

/// Settings of a [`NodeAgent`].
#[derive(Clone, Debug)]
pub struct NodeAgentConfig {
    /// Name of the Node (and of its Lease).
    pub node_name: String,
    /// Runtime class of the node (`tugboat.io/runtime-class` label, `status.runtimeClasses`).
    pub runtime_class: String,
    /// Extra labels (topology, …) merged over the standard ones.
    pub labels: BTreeMap<String, String>,
    /// Capacity; `None` reads the host.
    pub capacity: Option<NodeResources>,
    /// Allocatable; `None` is the capacity.
    pub allocatable: Option<NodeResources>,
    /// `InternalIP` address of the node (also the Ships' `status.hostIP`).
    pub internal_ip: String,
    /// CNI plugins the node reports ready in `status.cniPlugins` (which NetworkClasses need).
    pub cni_plugins: Vec<String>,
    /// Namespace of the node Lease.
    pub lease_namespace: String,
    /// How often the Lease is renewed.
    pub heartbeat_interval: Duration,
    /// How often the Node's Ready condition heartbeat is refreshed.
    pub status_interval: Duration,
    /// `leaseDurationSeconds` of the Lease.
    pub lease_duration: Duration,
    /// How often VMs without a Ship are looked for and deleted.
    pub gc_interval: Duration,
    /// First delay before restarting a crashed VM (doubles per crash).
    pub restart_backoff_base: Duration,
    /// Largest restart delay.
    pub restart_backoff_max: Duration,
    /// Node conditions the runtime contributes besides Ready (e.g. whether KVM works), as
    /// `(type, status, reason, message)`.
    pub runtime_conditions: Vec<(String, String, String, String)>,
    /// First requeue delay after a failed reconcile (doubles per failure).
    pub error_backoff_base: Duration,
    /// Largest requeue delay after failed reconciles.
    pub error_backoff_max: Duration,
    /// Port of the agent's endpoint for logs and consoles ([`crate::AgentServer`]), advertised
    /// as `status.daemonEndpoints.kubeletEndpoint.Port`; `None` advertises none.
    pub server_port: Option<u16>,
}

impl NodeAgentConfig {
    /// Defaults for a node named `node_name` (host resources, runtime class `qemu`).
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            runtime_class: "qemu".into(),
            labels: BTreeMap::new(),
            capacity: None,
            allocatable: None,
            internal_ip: "127.0.0.1".into(),
            cni_plugins: Vec::new(),
            lease_namespace: LEASE_NAMESPACE.into(),
            heartbeat_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(60),
            lease_duration: Duration::from_secs(40),
            gc_interval: Duration::from_secs(60),
            restart_backoff_base: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(300),
            runtime_conditions: Vec::new(),
            error_backoff_base: Duration::from_millis(500),
            error_backoff_max: Duration::from_secs(60),
            server_port: None,
        }
    }
}

/// `ApiResource` of Tugboat's `v1` Ship.
pub fn ship_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Ship"), "ships")
}

/// `ApiResource` of Tugboat's `v1` Node.
pub fn node_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Node"), "nodes")
}

/// A running agent; dropping it (or [`NodeAgent::shutdown`]) stops its tasks but leaves the
/// VMs running.
#[derive(Debug)]
pub struct NodeAgent {
    node_name: String,
    tasks: Vec<JoinHandle<()>>,
}

struct Ctx<R> {
    client: Client,
    runtime: Arc<R>,
    config: NodeAgentConfig,
    ships: ApiResource,
    failures: Mutex<HashMap<String, u32>>,
    crashes: Mutex<HashMap<String, CrashRecord>>,
}

#[derive(Clone, Copy, Debug)]
struct CrashRecord {
    count: u32,
    restart_at: Option<Instant>,
}

impl NodeAgent {
    /// Registers the Node, takes its Lease, deletes VMs without a Ship, then runs the
    /// heartbeat, garbage collection and Ship reconciler in background tasks.
    pub async fn start<R: Runtime>(
        client: Client,
        runtime: Arc<R>,
        config: NodeAgentConfig,
    ) -> Result<Self, AgentError> {
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            runtime,
            config,
            ships: ship_resource(),
            failures: Mutex::new(HashMap::new()),
            crashes: Mutex::new(HashMap::new()),
        });
        let ready_since = register_node(&ctx.client, &ctx.config).await?;
        renew_lease(&ctx.client, &ctx.config).await?;
        collect_orphans(&ctx).await?;

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(heartbeat_loop(ctx.clone(), ready_since)));
        tasks.push(tokio::spawn(gc_loop(ctx.clone())));

        let api: Api<DynamicObject> = Api::all_with(client, &ctx.ships);
        let wc =
            watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.config.node_name));
        let events = ctx.runtime.events();
        let triggers = futures::stream::unfold(events, |mut rx| async move {
            match rx.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        });
        let controller = Controller::new_with(api, wc, ctx.ships.clone())
            .reconcile_all_on(triggers)
            .run(reconcile::<R>, error_policy::<R>, ctx.clone())
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "ship reconcile");
                }
            });
        tasks.push(tokio::spawn(controller));
        Ok(Self {
            node_name: ctx.config.node_name.clone(),
            tasks,
        })
    }

    /// Name of the agent's Node.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Stops the agent's tasks and waits for them (VMs keep running).
    pub async fn shutdown(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Node and Lease.

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn now_time() -> Value {
    serde_json::to_value(Time(jiff::Timestamp::now())).unwrap_or(Value::Null)
}

fn node_labels(config: &NodeAgentConfig) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/arch".to_string(), go_arch().to_string()),
        (
            "kubernetes.io/os".to_string(),
            std::env::consts::OS.to_string(),
        ),
        (
            "kubernetes.io/hostname".to_string(),
            config.node_name.clone(),
        ),
        (
            RUNTIME_CLASS_LABEL.to_string(),
            config.runtime_class.clone(),
        ),
    ]);
    labels.extend(config.labels.clone());
    labels
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn node_status(config: &NodeAgentConfig, capacity: &NodeResources, ready_since: &Value) -> Value {
    let allocatable = config
        .allocatable
        .clone()
        .unwrap_or_else(|| capacity.clone());
    json!({
        "capacity": {"cpu": capacity.cpu, "memory": capacity.memory},
        "allocatable": {"cpu": allocatable.cpu, "memory": allocatable.memory},
        "conditions": conditions(config, ready_since),
        "addresses": [
            {"type": "InternalIP", "address": config.internal_ip},
            {"type": "Hostname", "address": config.node_name},
        ],
        "nodeInfo": {
            "architecture": go_arch(),
            "operatingSystem": std::env::consts::OS,
            "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
            "machineID": read_trimmed("/etc/machine-id"),
            "systemUUID": read_trimmed("/etc/machine-id"),
            "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
            "osImage": std::env::consts::OS,
            "containerRuntimeVersion": format!("{}://{}", config.runtime_class, env!("CARGO_PKG_VERSION")),
            "kubeletVersion": format!("tugboat-agent/{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
        },
        "runtimeClasses": [config.runtime_class],
        "cniPlugins": config
            .cni_plugins
            .iter()
            .map(|p| json!({"name": p, "ready": true}))
            .collect::<Vec<_>>(),
        "phase": "Running",
        // null (no endpoint) removes a port an earlier run advertised: this is a merge patch.
        "daemonEndpoints": config
            .server_port
            .map(|port| json!({"kubeletEndpoint": {"Port": port}})),
    })
}

/// Ready plus the runtime's conditions (a merge patch replaces the whole list, so every write
/// carries all of them).
fn conditions(config: &NodeAgentConfig, ready_since: &Value) -> Vec<Value> {
    let mut out = vec![ready_condition(ready_since)];
    for (type_, status, reason, message) in &config.runtime_conditions {
        out.push(json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now_time(),
            "lastTransitionTime": ready_since,
        }));
    }
    out
}

fn ready_condition(ready_since: &Value) -> Value {
    json!({
        "type": "Ready",
        "status": "True",
        "reason": "AgentReady",
        "message": "tugboat node agent is posting ready status",
        "lastHeartbeatTime": now_time(),
        "lastTransitionTime": ready_since,
    })
}

/// Creates or updates the Node and writes its status; returns the Ready transition time.
async fn register_node(client: &Client, config: &NodeAgentConfig) -> Result<Value, AgentError> {
    let capacity = match &config.capacity {
        Some(c) => c.clone(),
        None => NodeResources::from_host()?,
    };
    let ar = node_resource();
    let nodes: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let labels = node_labels(config);
    let existing = nodes.get_opt(&config.node_name).await?;
    let ready_since = existing
        .as_ref()
        .and_then(|n| n.data.pointer("/status/conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter().find(|c| {
                c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True"))
            })
        })
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(now_time);
    match existing {
        None => {
            let mut node = DynamicObject::new(&config.node_name, &ar).data(json!({"spec": {}}));
            node.metadata.labels = Some(labels);
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(_) => {
            let patch = json!({"metadata": {"labels": labels}});
            nodes
                .patch(
                    &config.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
    }
    let status = json!({"status": node_status(config, &capacity, &ready_since)});
    nodes
        .patch_status(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
    Ok(ready_since)
}

async fn refresh_node_ready(
    client: &Client,
    config: &NodeAgentConfig,
    ready_since: &Value,
) -> Result<(), AgentError> {
    let nodes: Api<DynamicObject> = Api::all_with(client.clone(), &node_resource());
    let patch = json!({"status": {"conditions": conditions(config, ready_since)}});
    nodes
        .patch_status(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

async fn renew_lease(client: &Client, config: &NodeAgentConfig) -> Result<(), AgentError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.lease_namespace);
    let now = MicroTime(jiff::Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(config.node_name.clone()),
        lease_duration_seconds: Some(
            i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX),
        ),
        renew_time: Some(now.clone()),
        ..Default::default()
    };
    if leases.get_opt(&config.node_name).await?.is_none() {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.node_name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                acquire_time: Some(now),
                ..spec.clone()
            }),
        };
        match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let patch = json!({"spec": spec});
    leases
        .patch(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

async fn heartbeat_loop<R: Runtime>(ctx: Arc<Ctx<R>>, ready_since: Value) {
    let mut last_status = Instant::now();
    let mut reported_vms: Option<usize> = None;
    let mut reported_images: Option<Vec<Value>> = None;
    loop {
        tokio::time::sleep(ctx.config.heartbeat_interval).await;
        if let Err(e) = renew_lease(&ctx.client, &ctx.config).await {
            tracing::warn!(node = %ctx.config.node_name, error = %e, "renewing node lease");
        }
        // `status.shipCount` (the SHIPS column) follows the VMs the runtime has, written only
        // when it changes.
        if let Ok(vms) = ctx.runtime.list().await {
            if reported_vms != Some(vms.len()) {
                let nodes: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &node_resource());
                let patch = json!({"status": {"shipCount": vms.len()}});
                match nodes
                    .patch_status(
                        &ctx.config.node_name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => reported_vms = Some(vms.len()),
                    Err(e) => {
                        tracing::warn!(node = %ctx.config.node_name, error = %e, "reporting the ship count")
                    }
                }
            }
        }
        // `status.images` follows the runtime's image cache, written only when it changes.
        let images: Vec<Value> = ctx
            .runtime
            .images()
            .await
            .into_iter()
            .map(|i| json!({"names": i.names, "sizeBytes": i.size_bytes}))
            .collect();
        if reported_images.as_ref() != Some(&images) {
            let nodes: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &node_resource());
            let patch = json!({"status": {"images": images}});
            match nodes
                .patch_status(
                    &ctx.config.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => reported_images = Some(images),
                Err(e) => {
                    tracing::warn!(node = %ctx.config.node_name, error = %e, "reporting images")
                }
            }
        }
        if last_status.elapsed() >= ctx.config.status_interval {
            match refresh_node_ready(&ctx.client, &ctx.config, &ready_since).await {
                Ok(()) => last_status = Instant::now(),
                Err(e) => {
                    tracing::warn!(node = %ctx.config.node_name, error = %e, "refreshing node status")
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Orphan VMs.

/// Deletes VMs the runtime has but no Ship bound to this node names (created before the list).
async fn collect_orphans<R: Runtime>(ctx: &Ctx<R>) -> Result<usize, AgentError> {
    let listed_at = jiff::Timestamp::now();
    let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &ctx.ships);
    let lp = ListParams::default().fields(&format!("spec.nodeName={}", ctx.config.node_name));
    let ships = api.list(&lp).await?;
    let known: BTreeSet<String> = ships.items.iter().filter_map(|s| s.uid()).collect();
    let mut deleted = 0;
    for uid in ctx.runtime.list().await? {
        if known.contains(&uid) {
            continue;
        }
        let Some(status) = ctx.runtime.status(&uid).await? else {
            continue;
        };
        if status.created_at >= listed_at {
            continue;
        }
        tracing::info!(node = %ctx.config.node_name, %uid, "deleting VM without a Ship");
        match ctx.runtime.stop(&uid, false).await {
            Ok(()) | Err(RuntimeError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        ctx.runtime.delete(&uid).await?;
        deleted += 1;
    }
    Ok(deleted)
}

async fn gc_loop<R: Runtime>(ctx: Arc<Ctx<R>>) {
    loop {
        tokio::time::sleep(ctx.config.gc_interval).await;
        if let Err(e) = collect_orphans(&ctx).await {
            tracing::warn!(node = %ctx.config.node_name, error = %e, "collecting orphan VMs");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ship reconciler.

/// What to do with a Ship's VM given the run strategy and the VM's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create/boot the VM.
    Start,
    /// Stop the VM.
    Stop,
    /// Boot a crashed VM again (after the backoff).
    Restart,
    /// Nothing to change in the runtime; report the state.
    Report,
}

/// The reconcile decision table (pure, so it is unit-tested).
pub fn decide(run_strategy: &str, vm: Option<VmState>) -> Step {
    match (run_strategy, vm) {
        ("Halted", Some(VmState::Starting | VmState::Running)) => Step::Stop,
        ("Halted" | "Manual", _) => Step::Report,
        (_, None) => Step::Start,
        ("Always", Some(VmState::Stopped)) => Step::Start,
        (_, Some(VmState::Crashed)) => Step::Restart,
        _ => Step::Report,
    }
}

/// The phase reported for a VM state under a run strategy.
pub fn phase_for(run_strategy: &str, vm: Option<VmState>) -> &'static str {
    match (run_strategy, vm) {
        (_, Some(VmState::Running)) => "Running",
        (_, Some(VmState::Starting)) => "Starting",
        ("Manual", Some(VmState::Crashed)) => "Failed",
        ("Always" | "RerunOnFailure", Some(VmState::Crashed)) => "Starting",
        ("Always" | "RerunOnFailure", None) => "Pending",
        _ => "Stopped",
    }
}

fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.min(20)).min(max)
}

fn invalid(obj: &DynamicObject, message: impl Into<String>) -> AgentError {
    AgentError::InvalidObject {
        what: format!(
            "Ship {}/{}",
            obj.namespace().unwrap_or_default(),
            obj.name_any()
        ),
        message: message.into(),
    }
}

async fn reconcile<R: Runtime>(
    obj: Arc<DynamicObject>,
    ctx: Arc<Ctx<R>>,
) -> Result<Action, AgentError> {
    let action = reconcile_inner(&obj, &ctx).await?;
    if let Some(uid) = obj.uid() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
    }
    Ok(action)
}

fn error_policy<R: Runtime>(obj: Arc<DynamicObject>, err: &AgentError, ctx: Arc<Ctx<R>>) -> Action {
    let n = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(obj.uid().unwrap_or_default()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(
        ctx.config.error_backoff_base,
        ctx.config.error_backoff_max,
        n - 1,
    );
    tracing::warn!(
        ship = %obj.name_any(),
        namespace = %obj.namespace().unwrap_or_default(),
        error = %err,
        retry_in = ?delay,
        "ship reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_inner<R: Runtime>(
    obj: &DynamicObject,
    ctx: &Ctx<R>,
) -> Result<Action, AgentError> {
    let uid = obj.uid().ok_or_else(|| invalid(obj, "no metadata.uid"))?;
    let namespace = obj
        .namespace()
        .ok_or_else(|| invalid(obj, "no metadata.namespace"))?;
    let spec: ShipSpec = serde_json::from_value(obj.data.get("spec").cloned().unwrap_or_default())
        .map_err(|e| invalid(obj, format!("spec: {e}")))?;
    if spec.node_name.as_deref() != Some(ctx.config.node_name.as_str()) {
        return Ok(Action::await_change());
    }
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &ctx.ships);
    let name = obj.name_any();

    if obj.metadata.deletion_timestamp.is_some() {
        return finalize(obj, ctx, &api, &uid).await;
    }
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        let mut updated = obj.clone();
        updated.finalizers_mut().push(FINALIZER.to_string());
        api.replace(&name, &PostParams::default(), &updated).await?;
        // The write comes back through the watch.
        return Ok(Action::await_change());
    }

    let strategy = spec.run_strategy.clone().unwrap_or_else(|| "Always".into());
    let vm = ctx.runtime.status(&uid).await?;
    let mut reason: Option<String> = None;
    let mut requeue: Option<Duration> = None;
    match decide(&strategy, vm.as_ref().map(|v| v.state)) {
        Step::Start => {
            let Some((vm_spec, registries)) =
                resolve_or_report(obj, ctx, &api, &spec, &strategy).await?
            else {
                return Ok(Action::requeue(Duration::from_secs(10)));
            };
            boot(obj, ctx, &api, &strategy, &vm_spec, &registries).await?;
        }
        Step::Stop => ctx.runtime.stop(&uid, true).await?,
        Step::Restart => {
            let now = Instant::now();
            let wait = {
                let mut crashes = ctx.crashes.lock().unwrap_or_else(|e| e.into_inner());
                let rec = crashes.entry(uid.clone()).or_insert(CrashRecord {
                    count: 0,
                    restart_at: None,
                });
                let at = *rec.restart_at.get_or_insert_with(|| {
                    let d = backoff(
                        ctx.config.restart_backoff_base,
                        ctx.config.restart_backoff_max,
                        rec.count,
                    );
                    rec.count = rec.count.saturating_add(1);
                    now + d
                });
                at.checked_duration_since(now)
            };
            match wait {
                Some(d) if !d.is_zero() => {
                    reason = Some("CrashLoopBackOff".into());
                    requeue = Some(d);
                }
                _ => {
                    let Some((spec_vm, registries)) =
                        resolve_or_report(obj, ctx, &api, &spec, &strategy).await?
                    else {
                        return Ok(Action::requeue(Duration::from_secs(10)));
                    };
                    boot(obj, ctx, &api, &strategy, &spec_vm, &registries).await?;
                    if let Some(rec) = ctx
                        .crashes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_mut(&uid)
                    {
                        rec.restart_at = None;
                    }
                }
            }
        }
        Step::Report => {
            // `tugboat restart`: a running VM whose restart token differs from the Ship's
            // annotation is restarted by the runtime.
            let wanted = obj.annotations().get(RESTART_ANNOTATION).cloned();
            if wanted.is_some()
                && matches!(
                    vm.as_ref().map(|v| v.state),
                    Some(VmState::Running | VmState::Starting)
                )
            {
                let current = ctx.runtime.spec(&uid).await?.and_then(|s| s.restart_token);
                if current != wanted {
                    if let Some((vm_spec, _)) =
                        resolve_or_report(obj, ctx, &api, &spec, &strategy).await?
                    {
                        tracing::info!(ship = %name, %namespace, "restarting VM on request");
                        ctx.runtime.start(&vm_spec).await?;
                    }
                }
            }
            // `tugboat pause` / `unpause`: the annotation says what the vCPUs should do. The
            // state is read again (a restart above changes it); a failure is logged and retried
            // with the next reconcile, and the status below is written either way.
            let now = ctx.runtime.status(&uid).await?;
            if let Some(v) = now.as_ref().filter(|v| v.state == VmState::Running) {
                let want_paused = obj
                    .annotations()
                    .get(PAUSE_ANNOTATION)
                    .is_some_and(|a| a == "true");
                let result = if want_paused && !v.is_paused() {
                    tracing::info!(ship = %name, %namespace, "pausing VM on request");
                    ctx.runtime.pause(&uid).await
                } else if !want_paused && v.is_paused() {
                    tracing::info!(ship = %name, %namespace, "resuming VM on request");
                    ctx.runtime.resume(&uid).await
                } else {
                    Ok(())
                };
                if let Err(e) = result {
                    tracing::warn!(ship = %name, %namespace, error = %e, "pause/resume failed");
                    requeue = Some(Duration::from_secs(5));
                }
            }
        }
    }
    let vm = ctx.runtime.status(&uid).await?;
    if let Some(VmStatus {
        state: VmState::Running,
        started_at: Some(t),
        ..
    }) = &vm
    {
        // A VM that stayed up for the longest backoff has its crash history forgotten.
        let up = jiff::Timestamp::now().duration_since(*t);
        if up.as_secs()
            >= i64::try_from(ctx.config.restart_backoff_max.as_secs()).unwrap_or(i64::MAX)
        {
            ctx.crashes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
        }
    }
    report(obj, ctx, &api, &strategy, vm.as_ref(), reason).await?;
    Ok(match (requeue, vm.map(|v| v.state)) {
        (Some(d), _) => Action::requeue(d),
        // Runtime events trigger a reconcile; this is the safety net.
        (None, Some(VmState::Starting)) => Action::requeue(Duration::from_secs(5)),
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

/// Patches `status` with the fields that differ from what the VM shows (nothing if none do).
async fn report<R: Runtime>(
    obj: &DynamicObject,
    ctx: &Ctx<R>,
    api: &Api<DynamicObject>,
    strategy: &str,
    vm: Option<&VmStatus>,
    reason: Option<String>,
) -> Result<(), AgentError> {
    let mut want = Map::new();
    let phase = phase_for(strategy, vm.map(|v| v.state));
    want.insert("phase".into(), json!(phase));
    let current = obj.data.get("status");
    // Conditions this agent owns, each replaced only when its status changes (so its
    // transition time moves only then); other components' conditions are kept.
    let mut conditions: Vec<Value> = current
        .and_then(|c| c.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut conditions_changed = false;
    // `Ready` (what ReplicaSets count, with minReadySeconds, as available): true while Running.
    let ready = if phase == "Running" { "True" } else { "False" };
    conditions_changed |= set_condition(
        &mut conditions,
        "Ready",
        Some(json!({
            "type": "Ready",
            "status": ready,
            "reason": if ready == "True" { "VmRunning" } else { "VmNotRunning" },
        })),
    );
    // `Paused` while the vCPUs are paused (as KubeVirt reports it); none otherwise.
    let paused = vm.is_some_and(VmStatus::is_paused);
    conditions_changed |= set_condition(
        &mut conditions,
        "Paused",
        paused.then(|| {
            json!({
                "type": "Paused",
                "status": "True",
                "reason": "PausedByUser",
                "message": format!("vCPUs paused ({PAUSE_ANNOTATION}=true)"),
            })
        }),
    );
    if conditions_changed {
        want.insert("conditions".into(), json!(conditions));
    }
    if phase == "Running" {
        // What another component said about a Ship that was not running (e.g. NodeLost) no
        // longer holds.
        want.insert("message".into(), Value::Null);
    }
    want.insert("nodeName".into(), json!(ctx.config.node_name));
    want.insert("hostIP".into(), json!(ctx.config.internal_ip));
    want.insert(
        "ipAddresses".into(),
        json!(vm.map(|v| v.ip_addresses.clone()).unwrap_or_default()),
    );
    // The runtime's own reason (guest-shutdown, guest-panicked, …) when the agent has none;
    // `Paused` for a running VM with paused vCPUs.
    let reason = reason.or_else(|| {
        if paused {
            return Some("Paused".to_string());
        }
        vm.filter(|v| v.state != VmState::Running)
            .and_then(|v| v.reason.clone())
    });
    want.insert("reason".into(), json!(reason));
    // The facts the guest gave; none once the VM is down.
    let guest = vm
        .filter(|v| matches!(v.state, VmState::Running))
        .and_then(|v| v.guest.as_ref())
        .map(|g| {
            let facts: Map<String, Value> = [
                ("name", &g.os_name),
                ("version", &g.os_version),
                ("kernelRelease", &g.kernel_release),
                ("hostname", &g.hostname),
            ]
            .into_iter()
            // Absent facts as null: a merge patch then removes one the guest stopped giving.
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
            Value::Object(facts)
        });
    want.insert("guestOSInfo".into(), guest.unwrap_or(Value::Null));
    if let Some(v) = vm {
        want.insert(
            "restartCount".into(),
            json!(i32::try_from(v.restarts).unwrap_or(i32::MAX)),
        );
        if let (VmState::Running, Some(t)) = (v.state, v.started_at) {
            want.insert(
                "startTime".into(),
                serde_json::to_value(Time(t)).unwrap_or(Value::Null),
            );
        }
    }
    if let Some(g) = obj.metadata.generation {
        want.insert("observedGeneration".into(), json!(g));
    }
    let diff: Map<String, Value> = want
        .into_iter()
        .filter(|(k, v)| !same(current.and_then(|c| c.get(k)), v))
        .collect();
    if diff.is_empty() {
        return Ok(());
    }
    let patch = json!({ "status": diff });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Makes condition `kind` of `conditions` be `want` (`None`: absent), keeping the present one
/// when its status is the same; a new one gets the current transition time. Whether it changed.
fn set_condition(conditions: &mut Vec<Value>, kind: &str, want: Option<Value>) -> bool {
    let present = conditions
        .iter()
        .position(|c| c.get("type") == Some(&json!(kind)));
    let unchanged = match (present, &want) {
        (Some(i), Some(w)) => conditions[i].get("status") == w.get("status"),
        _ => false,
    };
    match (present, want) {
        _ if unchanged => false,
        (None, None) => false,
        (Some(i), None) => {
            conditions.remove(i);
            true
        }
        (present, Some(mut w)) => {
            if let Some(i) = present {
                conditions.remove(i);
            }
            if let Some(o) = w.as_object_mut() {
                o.insert("lastTransitionTime".into(), json!(now_time()));
            }
            conditions.push(w);
            true
        }
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn same(current: Option<&Value>, want: &Value) -> bool {
    match current {
        None => is_empty_value(want),
        Some(c) => {
            c == want || (is_empty_value(c) && is_empty_value(want)) || c == &without_nulls(want)
        }
    }
}

/// `v` as stored after a merge patch: object members that are null are absent.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The VmSpec for a Ship and the registry settings to pull its image with, or `None` after
/// reporting why it cannot be built (a missing ShipClass or Secret, an invalid quantity): the
/// Ship stays Pending with that reason.
async fn resolve_or_report<R: Runtime>(
    obj: &DynamicObject,
    ctx: &Ctx<R>,
    api: &Api<DynamicObject>,
    spec: &ShipSpec,
    strategy: &str,
) -> Result<Option<(VmSpec, RegistryHosts)>, AgentError> {
    let resolved = async {
        let vm = resolve_vm_spec(&ctx.client, obj, spec).await?;
        let registries = registry_hosts(&ctx.client).await?;
        Ok::<_, ResolveError>((vm, registries))
    };
    match resolved.await {
        Ok(both) => Ok(Some(both)),
        Err(ResolveError::Kube(e)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(ship = %obj.name_any(), error = %e, "cannot build the VM");
            report_cannot_run(obj, api, strategy, e.reason(), &e.to_string()).await?;
            Ok(None)
        }
    }
}

/// Pulls the image and starts the VM. A failure is written to the Ship's status
/// (`ImagePullFailed` or `StartFailed`, with the runtime's message) before it is retried with
/// backoff, so `kubectl describe` says why a Ship does not run.
async fn boot<R: Runtime>(
    obj: &DynamicObject,
    ctx: &Ctx<R>,
    api: &Api<DynamicObject>,
    strategy: &str,
    vm_spec: &VmSpec,
    registries: &RegistryHosts,
) -> Result<(), AgentError> {
    let result = match ctx.runtime.prepare_image(&vm_spec.image, registries).await {
        Err(e) => Err(("ImagePullFailed", e)),
        Ok(()) => ctx
            .runtime
            .start(vm_spec)
            .await
            .map_err(|e| ("StartFailed", e)),
    };
    let Err((reason, e)) = result else {
        return Ok(());
    };
    if let Err(pe) = report_cannot_run(obj, api, strategy, reason, &e.to_string()).await {
        tracing::warn!(ship = %obj.name_any(), error = %pe, "reporting a failed start");
    }
    Err(e.into())
}

/// Writes why the Ship's VM cannot run (`reason`, `message`) with the phase of a VM that is
/// not there.
async fn report_cannot_run(
    obj: &DynamicObject,
    api: &Api<DynamicObject>,
    strategy: &str,
    reason: &str,
    message: &str,
) -> Result<(), kube::Error> {
    let patch = json!({"status": {
        "phase": phase_for(strategy, None),
        "reason": reason,
        "message": message,
    }});
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

/// Deletion: stop and delete the VM, then drop the finalizer once the runtime no longer has it.
async fn finalize<R: Runtime>(
    obj: &DynamicObject,
    ctx: &Ctx<R>,
    api: &Api<DynamicObject>,
    uid: &str,
) -> Result<Action, AgentError> {
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let force = obj
        .annotations()
        .get(FORCE_DELETE_ANNOTATION)
        .is_some_and(|v| v == "true");
    let stopped = match ctx.runtime.stop(uid, !force).await {
        Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    };
    let deleted = stopped.and(ctx.runtime.delete(uid).await);
    match deleted {
        Ok(()) => {}
        Err(e) if force => {
            tracing::warn!(%uid, error = %e, "force-deleting local state; ignoring runtime error")
        }
        Err(e) => return Err(e.into()),
    }
    if !force && ctx.runtime.list().await?.iter().any(|u| u == uid) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    ctx.crashes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(uid);
    let mut updated = obj.clone();
    updated.finalizers_mut().retain(|f| f != FINALIZER);
    match api
        .replace(&obj.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_change_only_with_their_status_and_others_are_kept() {
        let mut cs = vec![
            json!({"type": "Scheduled", "status": "True"}),
            json!({"type": "Ready", "status": "True", "lastTransitionTime": "t0"}),
        ];
        let ready = |s: &str| Some(json!({"type": "Ready", "status": s}));
        assert!(!set_condition(&mut cs, "Ready", ready("True")));
        assert_eq!(
            cs[1]["lastTransitionTime"], "t0",
            "same status keeps its time"
        );
        assert!(set_condition(&mut cs, "Ready", ready("False")));
        let r = cs.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(r["status"], "False");
        assert_ne!(r["lastTransitionTime"], "t0");
        assert!(!set_condition(&mut cs, "Paused", None));
        assert!(set_condition(
            &mut cs,
            "Paused",
            Some(json!({"type": "Paused", "status": "True"}))
        ));
        assert!(set_condition(&mut cs, "Paused", None));
        assert!(cs.iter().all(|c| c["type"] != "Paused"));
        assert_eq!(
            cs[0]["type"], "Scheduled",
            "another component's condition stays"
        );
    }

    #[test]
    fn decisions() {
        use VmState::*;
        assert_eq!(decide("Always", None), Step::Start);
        assert_eq!(decide("Always", Some(Stopped)), Step::Start);
        assert_eq!(decide("Always", Some(Crashed)), Step::Restart);
        assert_eq!(decide("Always", Some(Running)), Step::Report);
        assert_eq!(decide("RerunOnFailure", None), Step::Start);
        assert_eq!(decide("RerunOnFailure", Some(Crashed)), Step::Restart);
        assert_eq!(decide("RerunOnFailure", Some(Stopped)), Step::Report);
        assert_eq!(decide("Halted", Some(Running)), Step::Stop);
        assert_eq!(decide("Halted", Some(Starting)), Step::Stop);
        assert_eq!(decide("Halted", None), Step::Report);
        assert_eq!(decide("Manual", None), Step::Report);
        assert_eq!(decide("Manual", Some(Crashed)), Step::Report);
        assert_eq!(decide("Manual", Some(Running)), Step::Report);
    }

    #[test]
    fn phases() {
        use VmState::*;
        assert_eq!(phase_for("Always", Some(Running)), "Running");
        assert_eq!(phase_for("Halted", Some(Stopped)), "Stopped");
        assert_eq!(phase_for("Halted", None), "Stopped");
        assert_eq!(phase_for("Manual", Some(Crashed)), "Failed");
        assert_eq!(phase_for("RerunOnFailure", Some(Crashed)), "Starting");
        assert_eq!(phase_for("Always", None), "Pending");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(10);
        assert_eq!(backoff(b, m, 0), b);
        assert_eq!(backoff(b, m, 2), Duration::from_secs(4));
        assert_eq!(backoff(b, m, 40), m);
    }

    #[test]
    fn status_comparison_treats_empty_as_missing() {
        assert!(same(None, &json!([])));
        assert!(same(None, &Value::Null));
        assert!(same(Some(&json!([])), &Value::Null));
        assert!(!same(None, &json!("Running")));
        assert!(same(Some(&json!("Running")), &json!("Running")));
    }

    #[test]
    fn labels_include_the_standard_ones() {
        let mut c = NodeAgentConfig::new("n1");
        c.runtime_class = "fake".into();
        c.labels
            .insert("topology.kubernetes.io/zone".into(), "z1".into());
        let l = node_labels(&c);
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l[RUNTIME_CLASS_LABEL], "fake");
        assert_eq!(l["topology.kubernetes.io/zone"], "z1");
        assert!(l.contains_key("kubernetes.io/arch"));
    }

    #[test]
    fn host_resources_are_readable() {
        let r = NodeResources::from_host().unwrap();
        assert!(r.cpu.parse::<u32>().unwrap() > 0);
        assert!(r.memory.ends_with("Ki"));
    }
}
