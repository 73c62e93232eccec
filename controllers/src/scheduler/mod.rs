//! The Ship scheduler.
//!
//! [`filter`] and [`score`] are pure functions over typed objects; [`schedule`] runs them over a
//! [`ClusterState`] and either picks a node or explains, kube-scheduler style, why none fits
//! (`0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match Ship's node
//! affinity/selector.`). [`run`] drives it from kube-rs reflectors and binds.

pub mod run;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};
use tugboat_api::kinds::core::{
    ClusterNetworkClass, NetworkClass, Node, RuntimeClass, Ship, ShipClass,
};
use tugboat_api::kinds::parse_quantity;

pub use run::{Scheduler, SchedulerConfig};

/// Node annotation: CPU overcommit ratio (a float, default 1.0).
pub const CPU_OVERCOMMIT_ANNOTATION: &str = "tugboat.io/cpu-overcommit";
/// Node annotation: memory overcommit ratio (a float, default 1.0).
pub const MEMORY_OVERCOMMIT_ANNOTATION: &str = "tugboat.io/memory-overcommit";
/// Node label: the RuntimeClass of the node's runtime.
pub const RUNTIME_CLASS_LABEL: &str = "tugboat.io/runtime-class";

/// Why a Ship cannot be scheduled at all (independently of nodes).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// The Ship's ShipClass does not exist.
    #[error("ShipClass {0:?} not found")]
    ShipClassNotFound(String),
    /// The ShipClass memory size is not a valid quantity.
    #[error("ShipClass {0:?} has an invalid memory size")]
    InvalidShipClass(String),
    /// The Ship's RuntimeClass does not exist.
    #[error("RuntimeClass {0:?} not found")]
    RuntimeClassNotFound(String),
    /// The Ship's NetworkClass or ClusterNetworkClass does not exist.
    #[error("{0} not found")]
    NetworkClassNotFound(String),
    /// No node passed the filters; the message lists the reasons per node.
    #[error("{0}")]
    NoFit(String),
}

/// Resources a Ship asks for: CPU in millicores and memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Request {
    /// Millicores.
    pub cpu_milli: f64,
    /// Bytes.
    pub memory: f64,
}

impl std::ops::AddAssign for Request {
    fn add_assign(&mut self, o: Request) {
        self.cpu_milli += o.cpu_milli;
        self.memory += o.memory;
    }
}

/// The request of a Ship of class `class`.
pub fn request_of(class: &ShipClass) -> Result<Request, ScheduleError> {
    let name = class.metadata.name.clone().unwrap_or_default();
    let memory = parse_quantity(&class.spec.memory.size.0)
        .map_err(|_| ScheduleError::InvalidShipClass(name))?;
    Ok(Request {
        cpu_milli: f64::from(class.spec.cpu.cores.max(0)) * 1000.0,
        memory,
    })
}

/// The part of a node a filter or score looks at: the node and what is already placed on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node.
    pub node: Arc<Node>,
    /// Sum of the requests of the Ships bound (or assumed bound) to it.
    pub requested: Request,
    /// Number of Ships bound to it.
    pub ship_count: usize,
    /// Ships bound to it per controller (ownerReference with `controller: true`) uid.
    pub by_controller: HashMap<String, usize>,
}

impl NodeInfo {
    /// An empty node.
    pub fn new(node: Arc<Node>) -> Self {
        NodeInfo {
            node,
            requested: Request::default(),
            ship_count: 0,
            by_controller: HashMap::new(),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    /// Allocatable (or, when absent, capacity) scaled by the overcommit ratio.
    pub fn allocatable(&self) -> Request {
        let status = self.node.status.as_ref();
        let get = |key: &str| -> f64 {
            status
                .and_then(|s| s.allocatable.get(key).or_else(|| s.capacity.get(key)))
                .and_then(|q| parse_quantity(&q.0).ok())
                .unwrap_or(0.0)
        };
        Request {
            cpu_milli: get("cpu") * 1000.0 * overcommit(&self.node, CPU_OVERCOMMIT_ANNOTATION),
            memory: get("memory") * overcommit(&self.node, MEMORY_OVERCOMMIT_ANNOTATION),
        }
    }

    /// The `ships` allocatable (max Ships on the node), if set.
    pub fn max_ships(&self) -> Option<usize> {
        let status = self.node.status.as_ref()?;
        let q = status
            .allocatable
            .get("ships")
            .or_else(|| status.capacity.get("ships"))?;
        parse_quantity(&q.0).ok().map(|v| v.max(0.0) as usize)
    }

    /// Accounts one more Ship with request `req` and controller `controller`.
    pub fn add(&mut self, req: Request, controller: Option<&str>) {
        self.requested += req;
        self.ship_count += 1;
        if let Some(c) = controller {
            *self.by_controller.entry(c.to_string()).or_default() += 1;
        }
    }
}

/// A node's overcommit ratio from annotation `key` (default 1.0; invalid or non-positive → 1.0).
pub fn overcommit(node: &Node, key: &str) -> f64 {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(1.0)
}

/// The uid of a Ship's controlling owner.
pub fn controller_uid(ship: &Ship) -> Option<&str> {
    ship.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// Everything the filters need about a Ship besides the node: its request, RuntimeClass and
/// the CNI plugins of its network.
#[derive(Clone, Debug, Default)]
pub struct ShipNeeds {
    /// CPU and memory.
    pub request: Request,
    /// The Ship's RuntimeClass, if it names one.
    pub runtime_class: Option<Arc<RuntimeClass>>,
    /// CNI plugins that must be ready on the node.
    pub cni_plugins: Vec<String>,
}

/// Why a node was filtered out. `Display` gives kube-scheduler's wording.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unfit {
    /// `spec.nodeName` pins the Ship to another node.
    NodeName,
    /// The node is cordoned.
    Unschedulable,
    /// The node's Ready condition is not True.
    NotReady,
    /// nodeSelector or required node affinity did not match.
    NodeAffinity,
    /// A NoSchedule/NoExecute taint is not tolerated.
    Taint(String),
    /// The node's runtime class differs from the Ship's.
    RuntimeClass,
    /// The Ship needs live migration but the node's runtime lacks it.
    LiveMigration,
    /// A CNI plugin of the Ship's network is not ready on the node.
    Network,
    /// Not enough CPU.
    InsufficientCpu,
    /// Not enough memory.
    InsufficientMemory,
    /// The node holds its maximum number of Ships.
    TooManyShips,
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Unfit::Unschedulable => f.write_str("node(s) were unschedulable"),
            Unfit::NotReady => f.write_str("node(s) were not ready"),
            Unfit::NodeAffinity => {
                f.write_str("node(s) didn't match Ship's node affinity/selector")
            }
            Unfit::Taint(t) => write!(f, "node(s) had untolerated taint {{{t}}}"),
            Unfit::RuntimeClass => f.write_str("node(s) didn't match Ship's runtime class"),
            Unfit::LiveMigration => f.write_str("node(s) didn't support live migration"),
            Unfit::Network => f.write_str("node(s) didn't have the Ship's network plugins ready"),
            Unfit::InsufficientCpu => f.write_str("Insufficient cpu"),
            Unfit::InsufficientMemory => f.write_str("Insufficient memory"),
            Unfit::TooManyShips => f.write_str("Too many ships"),
        }
    }
}

/// NodeName: a Ship pinned by `spec.nodeName` only fits that node.
pub fn filter_node_name(ship: &Ship, node: &Node) -> Result<(), Unfit> {
    match ship.spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) if Some(n) != node.metadata.name.as_deref() => Err(Unfit::NodeName),
        _ => Ok(()),
    }
}

/// Unschedulable: cordoned nodes take no new Ships (unless the Ship tolerates
/// `node.kubernetes.io/unschedulable`).
pub fn filter_unschedulable(ship: &Ship, node: &Node) -> Result<(), Unfit> {
    let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Taint::default()
    };
    if cordoned && !ship.spec.tolerations.iter().any(|t| tolerates(t, &taint)) {
        return Err(Unfit::Unschedulable);
    }
    Ok(())
}

/// Ready: the node's `Ready` condition must be `True`.
pub fn filter_ready(node: &Node) -> Result<(), Unfit> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    if ready {
        Ok(())
    } else {
        Err(Unfit::NotReady)
    }
}

/// nodeSelector and required node affinity (Kubernetes semantics: terms are ORed, the
/// expressions of a term ANDed; an empty term matches nothing).
pub fn filter_node_affinity(ship: &Ship, node: &Node) -> Result<(), Unfit> {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if !ship
        .spec
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return Err(Unfit::NodeAffinity);
    }
    let required = ship
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(sel) = required {
        let name = node.metadata.name.as_deref().unwrap_or("");
        if !sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, labels, name))
        {
            return Err(Unfit::NodeAffinity);
        }
    }
    Ok(())
}

fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then_some(name);
            requirement_matches(r, v)
        })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    let number = |s: &str| s.trim().parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|s| number(s)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether toleration `t` tolerates taint `taint` (Kubernetes semantics).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" => {
            key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// Taints: every `NoSchedule`/`NoExecute` taint of the node must be tolerated.
pub fn filter_taints(ship: &Ship, node: &Node) -> Result<(), Unfit> {
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[]);
    for taint in taints {
        if !matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute") {
            continue;
        }
        if !ship.spec.tolerations.iter().any(|t| tolerates(t, taint)) {
            return Err(Unfit::Taint(format!(
                "{}: {}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            )));
        }
    }
    Ok(())
}

/// RuntimeClassFit: the Ship's `runtimeClass` must equal the node's `tugboat.io/runtime-class`
/// label when the node has one (or be among `status.runtimeClasses` when the agent reports
/// them); a RuntimeClass with `liveMigration: true` needs a node whose runtime can migrate.
pub fn filter_runtime_class(ship: &Ship, needs: &ShipNeeds, node: &Node) -> Result<(), Unfit> {
    let Some(wanted) = ship.spec.runtime_class.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let label = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(RUNTIME_CLASS_LABEL))
        .map(String::as_str);
    let reported = node
        .status
        .as_ref()
        .map(|s| s.runtime_classes.as_slice())
        .unwrap_or(&[]);
    let label_ok = label.is_none_or(|l| l == wanted);
    let reported_ok = reported.is_empty() || reported.iter().any(|r| r == wanted);
    if !label_ok || !reported_ok {
        return Err(Unfit::RuntimeClass);
    }
    let needs_migration = needs
        .runtime_class
        .as_ref()
        .and_then(|rc| rc.spec.live_migration)
        == Some(true);
    if needs_migration {
        // The node proves the capability by label or by reporting the class.
        let proven = label == Some(wanted) || reported.iter().any(|r| r == wanted);
        if !proven {
            return Err(Unfit::LiveMigration);
        }
    }
    Ok(())
}

/// NetworkFit: every CNI plugin of the Ship's network must be ready in `Node.status.cniPlugins`.
pub fn filter_network(needs: &ShipNeeds, node: &Node) -> Result<(), Unfit> {
    let plugins = node
        .status
        .as_ref()
        .map(|s| s.cni_plugins.as_slice())
        .unwrap_or(&[]);
    let ok = needs
        .cni_plugins
        .iter()
        .all(|p| plugins.iter().any(|s| &s.name == p && s.ready));
    if ok {
        Ok(())
    } else {
        Err(Unfit::Network)
    }
}

/// ResourceFit: the Ship's request must fit in allocatable × overcommit minus what is bound.
pub fn filter_resources(needs: &ShipNeeds, info: &NodeInfo) -> Result<(), Vec<Unfit>> {
    let alloc = info.allocatable();
    let mut unfit = Vec::new();
    if info.max_ships().is_some_and(|m| info.ship_count + 1 > m) {
        unfit.push(Unfit::TooManyShips);
    }
    if info.requested.cpu_milli + needs.request.cpu_milli > alloc.cpu_milli {
        unfit.push(Unfit::InsufficientCpu);
    }
    if info.requested.memory + needs.request.memory > alloc.memory {
        unfit.push(Unfit::InsufficientMemory);
    }
    if unfit.is_empty() {
        Ok(())
    } else {
        Err(unfit)
    }
}

/// Runs every filter in order; the first failing one explains the rejection.
pub fn filter(ship: &Ship, needs: &ShipNeeds, info: &NodeInfo) -> Result<(), Vec<Unfit>> {
    let node = &info.node;
    filter_node_name(ship, node)
        .and_then(|()| filter_unschedulable(ship, node))
        .and_then(|()| filter_ready(node))
        .and_then(|()| filter_node_affinity(ship, node))
        .and_then(|()| filter_taints(ship, node))
        .and_then(|()| filter_runtime_class(ship, needs, node))
        .and_then(|()| filter_network(needs, node))
        .map_err(|e| vec![e])?;
    filter_resources(needs, info)
}

/// LeastAllocated: 0–100, higher when more CPU and memory stay free after placing the Ship.
pub fn score_least_allocated(needs: &ShipNeeds, info: &NodeInfo) -> f64 {
    let alloc = info.allocatable();
    let free = |cap: f64, used: f64| {
        if cap <= 0.0 {
            0.0
        } else {
            ((cap - used) / cap).clamp(0.0, 1.0) * 100.0
        }
    };
    let cpu = free(
        alloc.cpu_milli,
        info.requested.cpu_milli + needs.request.cpu_milli,
    );
    let mem = free(alloc.memory, info.requested.memory + needs.request.memory);
    (cpu + mem) / 2.0
}

/// Spread: 0–100, higher on nodes holding fewer Ships of the same controller (`max` is the
/// largest such count over the candidate nodes).
pub fn score_spread(controller: Option<&str>, info: &NodeInfo, max: usize) -> f64 {
    let Some(c) = controller else { return 0.0 };
    if max == 0 {
        return 100.0;
    }
    let n = info.by_controller.get(c).copied().unwrap_or(0);
    100.0 * (max.saturating_sub(n)) as f64 / max as f64
}

/// The scheduler's view of the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Nodes with what is placed on them, by name.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// ShipClasses by name.
    pub ship_classes: HashMap<String, Arc<ShipClass>>,
    /// RuntimeClasses by name.
    pub runtime_classes: HashMap<String, Arc<RuntimeClass>>,
    /// NetworkClasses by `(namespace, name)`.
    pub network_classes: HashMap<(String, String), Arc<NetworkClass>>,
    /// ClusterNetworkClasses by name.
    pub cluster_network_classes: HashMap<String, Arc<ClusterNetworkClass>>,
}

impl ClusterState {
    /// Builds the state: `bound` lists each placed Ship's node name and controller uid next to
    /// its ShipClass name (Ships whose class is unknown count for nothing but the Ship count).
    pub fn new(
        nodes: impl IntoIterator<Item = Arc<Node>>,
        ship_classes: impl IntoIterator<Item = Arc<ShipClass>>,
        runtime_classes: impl IntoIterator<Item = Arc<RuntimeClass>>,
        network_classes: impl IntoIterator<Item = Arc<NetworkClass>>,
        cluster_network_classes: impl IntoIterator<Item = Arc<ClusterNetworkClass>>,
    ) -> Self {
        let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.name.clone().unwrap_or_default()
        };
        ClusterState {
            nodes: nodes
                .into_iter()
                .map(|n| (name(&n.metadata), NodeInfo::new(n)))
                .collect(),
            ship_classes: ship_classes
                .into_iter()
                .map(|c| (name(&c.metadata), c))
                .collect(),
            runtime_classes: runtime_classes
                .into_iter()
                .map(|c| (name(&c.metadata), c))
                .collect(),
            network_classes: network_classes
                .into_iter()
                .map(|c| {
                    let ns = c.metadata.namespace.clone().unwrap_or_default();
                    ((ns, name(&c.metadata)), c)
                })
                .collect(),
            cluster_network_classes: cluster_network_classes
                .into_iter()
                .map(|c| (name(&c.metadata), c))
                .collect(),
        }
    }

    /// Accounts a Ship placed on `node` (no-op for unknown nodes).
    pub fn place(&mut self, ship: &Ship, node: &str) {
        let req = self
            .ship_classes
            .get(&ship.spec.ship_class)
            .and_then(|c| request_of(c).ok())
            .unwrap_or_default();
        if let Some(info) = self.nodes.get_mut(node) {
            info.add(req, controller_uid(ship));
        }
    }

    /// What `ship` needs from a node.
    pub fn needs(&self, ship: &Ship) -> Result<ShipNeeds, ScheduleError> {
        let class = self
            .ship_classes
            .get(&ship.spec.ship_class)
            .ok_or_else(|| ScheduleError::ShipClassNotFound(ship.spec.ship_class.clone()))?;
        let request = request_of(class)?;
        let runtime_class = match ship.spec.runtime_class.as_deref().filter(|s| !s.is_empty()) {
            Some(rc) => Some(
                self.runtime_classes
                    .get(rc)
                    .cloned()
                    .ok_or_else(|| ScheduleError::RuntimeClassNotFound(rc.to_string()))?,
            ),
            None => None,
        };
        let mut cni_plugins = Vec::new();
        if let Some(nc) = ship
            .spec
            .network_class_name
            .as_deref()
            .filter(|s| !s.is_empty())
        {
            let ns = ship.metadata.namespace.clone().unwrap_or_default();
            let c = self
                .network_classes
                .get(&(ns, nc.to_string()))
                .ok_or_else(|| {
                    ScheduleError::NetworkClassNotFound(format!("NetworkClass {nc:?}"))
                })?;
            cni_plugins.push(c.spec.cni_plugin.clone());
        }
        if let Some(nc) = ship
            .spec
            .cluster_network_class_name
            .as_deref()
            .filter(|s| !s.is_empty())
        {
            let c = self.cluster_network_classes.get(nc).ok_or_else(|| {
                ScheduleError::NetworkClassNotFound(format!("ClusterNetworkClass {nc:?}"))
            })?;
            cni_plugins.push(c.spec.cni_plugin.clone());
        }
        if !ship.spec.port_mappings.is_empty() {
            cni_plugins.push("portmap".to_string());
        }
        Ok(ShipNeeds {
            request,
            runtime_class,
            cni_plugins,
        })
    }
}

/// The result of a successful scheduling cycle.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The chosen node.
    pub node: String,
    /// How many nodes passed the filters.
    pub feasible: usize,
}

/// Filters and scores every node for `ship`; the best-scoring feasible node wins (ties broken
/// at random so equal nodes share the load).
pub fn schedule(ship: &Ship, state: &ClusterState) -> Result<Decision, ScheduleError> {
    let needs = state.needs(ship)?;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible = Vec::new();
    for info in state.nodes.values() {
        match filter(ship, &needs, info) {
            Ok(()) => feasible.push(info),
            Err(unfit) => {
                for u in unfit {
                    *reasons.entry(u.to_string()).or_default() += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        return Err(ScheduleError::NoFit(no_fit_message(
            state.nodes.len(),
            &reasons,
        )));
    }
    let controller = controller_uid(ship);
    let max = controller
        .map(|c| {
            feasible
                .iter()
                .map(|i| i.by_controller.get(c).copied().unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let mut best: Vec<(&NodeInfo, f64)> = Vec::new();
    for info in &feasible {
        let s = score_least_allocated(&needs, info) + score_spread(controller, info, max);
        match best.first() {
            Some((_, b)) if s < *b - 1e-9 => {}
            Some((_, b)) if s <= *b + 1e-9 => best.push((info, s)),
            _ => best = vec![(info, s)],
        }
    }
    let pick = if best.len() > 1 {
        rand::random_range(0..best.len())
    } else {
        0
    };
    let node = best
        .get(pick)
        .map(|(i, _)| i.name().to_string())
        .unwrap_or_default();
    Ok(Decision {
        node,
        feasible: feasible.len(),
    })
}

/// `0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match …` (reasons sorted).
pub fn no_fit_message(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if reasons.is_empty() {
        return format!("0/{nodes} nodes are available.");
    }
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests;
