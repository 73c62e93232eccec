//! The Ship scheduler.
//!
//! [`filter`] and [`score`] are pure functions over typed objects; [`schedule`] runs them over a
//! [`ClusterState`] and either picks a node or explains, kube-scheduler style, why none fits
//! (`0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match Ship's node
//! affinity/selector.`). [`run`] drives it from kube-rs reflectors and binds.
//!
//! Per-node facts (allocatable, readiness, images) are computed once when the state is built,
//! and Ship (anti-)affinity and topology spread counts per topology domain are built once per
//! distinct term and then kept current by [`ClusterState::place`], so a decision costs one pass
//! over the nodes, not one over the nodes times the placed Ships.

pub mod run;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim,
    PodAffinityTerm, Taint, Toleration, TopologySelectorTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sLabelSelector;
use tugboat_api::kinds::core::{
    ClusterNetworkClass, NetworkClass, Node, RuntimeClass, Ship, ShipClass, StorageClass,
};
use tugboat_api::kinds::parse_quantity;
use tugboat_api::selector::LabelSelector;

pub use run::{Scheduler, SchedulerConfig};

/// Node annotation: CPU overcommit ratio (a float, default 1.0).
pub const CPU_OVERCOMMIT_ANNOTATION: &str = "tugboat.io/cpu-overcommit";
/// Node annotation: memory overcommit ratio (a float, default 1.0).
pub const MEMORY_OVERCOMMIT_ANNOTATION: &str = "tugboat.io/memory-overcommit";
/// Node label: the RuntimeClass of the node's runtime.
pub const RUNTIME_CLASS_LABEL: &str = "tugboat.io/runtime-class";
/// Node label: `"false"` takes a node out of live migration even when its RuntimeClass has it
/// (e.g. a host without the shared storage or network migration needs).
pub const LIVE_MIGRATION_LABEL: &str = "tugboat.io/live-migration";

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
    /// A PersistentVolumeClaim of the Ship does not exist.
    #[error("persistentvolumeclaim {0:?} not found")]
    ClaimNotFound(String),
    /// A PersistentVolumeClaim of the Ship is being deleted.
    #[error("persistentvolumeclaim {0:?} is being deleted")]
    ClaimDeleting(String),
    /// A claim is bound to a PersistentVolume that does not exist.
    #[error("persistentvolume {pv:?} of claim {claim:?} not found")]
    VolumeNotFound {
        /// The claim.
        claim: String,
        /// The missing volume.
        pv: String,
    },
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
    /// Allocatable × overcommit, parsed once: filters run per Ship per node.
    alloc: Request,
    /// The `ships` allocatable, parsed once.
    max_ships: Option<usize>,
    /// The Ready condition, read once.
    ready: bool,
    /// Image name → size in bytes from `status.images`.
    images: HashMap<String, i64>,
}

impl NodeInfo {
    /// An empty node.
    pub fn new(node: Arc<Node>) -> Self {
        let status = node.status.as_ref();
        let quantity = |key: &str| -> Option<f64> {
            status
                .and_then(|s| s.allocatable.get(key).or_else(|| s.capacity.get(key)))
                .and_then(|q| parse_quantity(&q.0).ok())
        };
        let alloc = Request {
            cpu_milli: quantity("cpu").unwrap_or(0.0)
                * 1000.0
                * overcommit(&node, CPU_OVERCOMMIT_ANNOTATION),
            memory: quantity("memory").unwrap_or(0.0)
                * overcommit(&node, MEMORY_OVERCOMMIT_ANNOTATION),
        };
        let max_ships = quantity("ships").map(|v| v.max(0.0) as usize);
        let ready = filter_ready(&node).is_ok();
        let mut images = HashMap::new();
        for image in status.map(|s| s.images.as_slice()).unwrap_or(&[]) {
            let size = image.size_bytes.unwrap_or(0).max(0);
            for name in image.names.iter().flatten() {
                images.insert(name.clone(), size);
            }
        }
        NodeInfo {
            node,
            requested: Request::default(),
            ship_count: 0,
            by_controller: HashMap::new(),
            alloc,
            max_ships,
            ready,
            images,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    /// Allocatable (or, when absent, capacity) scaled by the overcommit ratio.
    pub fn allocatable(&self) -> Request {
        self.alloc
    }

    /// The `ships` allocatable (max Ships on the node), if set.
    pub fn max_ships(&self) -> Option<usize> {
        self.max_ships
    }

    /// The value of node label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    }

    /// Size in bytes of image `name` if the node reports it in `status.images`.
    pub fn image_size(&self, name: &str) -> Option<i64> {
        self.images.get(name).copied()
    }

    /// Accounts one more Ship with request `req` and controller `controller`.
    pub fn add(&mut self, req: Request, controller: Option<&str>) {
        self.requested += req;
        self.ship_count += 1;
        if let Some(c) = controller {
            match self.by_controller.get_mut(c) {
                Some(n) => *n += 1,
                None => {
                    self.by_controller.insert(c.to_string(), 1);
                }
            }
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

/// Everything the filters need about a Ship besides the node: its request, RuntimeClass, the
/// CNI plugins of its network and its claims.
#[derive(Clone, Debug, Default)]
pub struct ShipNeeds {
    /// CPU and memory.
    pub request: Request,
    /// The Ship's RuntimeClass, if it names one.
    pub runtime_class: Option<Arc<RuntimeClass>>,
    /// CNI plugins that must be ready on the node.
    pub cni_plugins: Vec<String>,
    /// The Ship's PersistentVolumeClaims, resolved.
    pub claims: Vec<ClaimNeed>,
}

/// One PersistentVolumeClaim of a Ship as StorageFit sees it.
#[derive(Clone, Debug)]
pub struct ClaimNeed {
    /// `(namespace, claim name)`.
    pub key: (String, String),
    /// Only one node may use it at a time (ReadWriteOnce / ReadWriteOncePod, no shared mode).
    pub single_node: bool,
    /// ReadWriteOncePod: only one Ship may use it at all.
    pub single_ship: bool,
    /// Where the claim's volume can be.
    pub binding: ClaimBinding,
}

/// The volume side of a claim.
#[derive(Clone, Debug)]
pub enum ClaimBinding {
    /// Bound: the volume's node affinity must match the node.
    Bound(Arc<PersistentVolume>),
    /// Not bound yet: bindable on a node where one of the available volumes fits or the
    /// StorageClass can provision.
    Unbound {
        /// Available volumes that satisfy the claim (class, modes, size).
        volumes: Vec<Arc<PersistentVolume>>,
        /// The claim's StorageClass, if it exists (dynamic provisioning).
        class: Option<Arc<StorageClass>>,
    },
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
    /// A bound volume's node affinity excludes the node.
    VolumeNodeAffinity,
    /// No available volume or provisioner can serve an unbound claim on the node.
    UnboundClaim,
    /// A single-node claim is in use by a Ship on another node (or, ReadWriteOncePod, by any).
    VolumeInUse,
    /// A required Ship affinity term has no matching Ship in the node's domain.
    ShipAffinity,
    /// A required Ship anti-affinity term has a matching Ship in the node's domain.
    ShipAntiAffinity,
    /// A placed Ship's required anti-affinity term matches this Ship in the node's domain.
    ExistingAntiAffinity,
    /// A DoNotSchedule topology spread constraint would exceed its maxSkew.
    TopologySpread,
    /// The node lacks the topology key of a DoNotSchedule spread constraint.
    TopologySpreadLabel,
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
            Unfit::VolumeNodeAffinity => f.write_str("node(s) had volume node affinity conflict"),
            Unfit::UnboundClaim => {
                f.write_str("node(s) didn't find available persistent volumes to bind")
            }
            Unfit::VolumeInUse => {
                f.write_str("node(s) had a ReadWriteOnce volume in use by another Ship")
            }
            Unfit::ShipAffinity => f.write_str("node(s) didn't match Ship affinity rules"),
            Unfit::ShipAntiAffinity => f.write_str("node(s) didn't match Ship anti-affinity rules"),
            Unfit::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing Ships' anti-affinity rules")
            }
            Unfit::TopologySpread => {
                f.write_str("node(s) didn't match Ship topology spread constraints")
            }
            Unfit::TopologySpreadLabel => f.write_str(
                "node(s) didn't match Ship topology spread constraints (missing required label)",
            ),
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

/// RuntimeClassFit: the Ship's `runtimeClass` must be offered by the node (its
/// `tugboat.io/runtime-class` label, or `status.runtimeClasses` when the agent reports them; a
/// node with neither accepts any class). A Ship whose RuntimeClass has `liveMigration: true`
/// asks for live migration: the node must offer a RuntimeClass with `liveMigration: true` and
/// not carry `tugboat.io/live-migration: "false"`.
pub fn filter_runtime_class(
    ship: &Ship,
    needs: &ShipNeeds,
    node: &Node,
    runtime_classes: &HashMap<String, Arc<RuntimeClass>>,
) -> Result<(), Unfit> {
    let Some(wanted) = ship.spec.runtime_class.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let labels = node.metadata.labels.as_ref();
    let label = labels
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
        let opted_out = labels
            .and_then(|l| l.get(LIVE_MIGRATION_LABEL))
            .is_some_and(|v| v == "false");
        // The node proves the capability through a class it declares, never by default.
        let offered = label.into_iter().chain(reported.iter().map(String::as_str));
        let capable = offered
            .filter_map(|name| runtime_classes.get(name))
            .any(|rc| rc.spec.live_migration == Some(true));
        if opted_out || !capable {
            return Err(Unfit::LiveMigration);
        }
    }
    Ok(())
}

/// NetworkFit: every CNI plugin of the Ship's network must be ready in `Node.status.cniPlugins`.
pub fn filter_network(needs: &ShipNeeds, node: &Node) -> Result<(), Unfit> {
    if needs.cni_plugins.is_empty() {
        return Ok(());
    }
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

/// Whether a volume's required node affinity (terms ORed) admits `node`; none admits all.
pub fn volume_fits_node(pv: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or("");
    required
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, labels, name))
}

/// Whether a StorageClass's `allowedTopologies` admit `node` (none: every node).
pub fn class_fits_node(class: &StorageClass, node: &Node) -> bool {
    let terms: &[TopologySelectorTerm] = class.allowed_topologies.as_deref().unwrap_or(&[]);
    if terms.is_empty() {
        return true;
    }
    let labels = node.metadata.labels.as_ref();
    terms.iter().any(|t| {
        t.match_label_expressions.iter().flatten().all(|r| {
            labels
                .and_then(|l| l.get(&r.key))
                .is_some_and(|v| r.values.iter().any(|x| x == v))
        })
    })
}

/// StorageFit: bound claims need a volume whose node affinity admits the node; unbound ones an
/// available volume or a provisioner that can serve the node; a single-node claim already used
/// by a Ship on another node rules the node out (`users`: claim → nodes of the Ships using it).
pub fn filter_storage(
    needs: &ShipNeeds,
    node: &Node,
    users: &HashMap<(String, String), BTreeSet<String>>,
) -> Result<(), Unfit> {
    let name = node.metadata.name.as_deref().unwrap_or("");
    for claim in &needs.claims {
        if let Some(nodes) = users.get(&claim.key) {
            let elsewhere = nodes.iter().any(|n| n != name);
            if (claim.single_ship && !nodes.is_empty()) || (claim.single_node && elsewhere) {
                return Err(Unfit::VolumeInUse);
            }
        }
        match &claim.binding {
            ClaimBinding::Bound(pv) => {
                if !volume_fits_node(pv, node) {
                    return Err(Unfit::VolumeNodeAffinity);
                }
            }
            ClaimBinding::Unbound { volumes, class } => {
                let static_fit = volumes.iter().any(|pv| volume_fits_node(pv, node));
                let dynamic_fit = class
                    .as_ref()
                    .is_some_and(|c| !c.provisioner.is_empty() && class_fits_node(c, node));
                if !static_fit && !dynamic_fit {
                    return Err(Unfit::UnboundClaim);
                }
            }
        }
    }
    Ok(())
}

/// Runs the node-local filters in order; the first failing one explains the rejection.
pub fn filter(
    ship: &Ship,
    needs: &ShipNeeds,
    info: &NodeInfo,
    runtime_classes: &HashMap<String, Arc<RuntimeClass>>,
) -> Result<(), Vec<Unfit>> {
    let node = &info.node;
    let ready = if info.ready {
        Ok(())
    } else {
        Err(Unfit::NotReady)
    };
    filter_node_name(ship, node)
        .and_then(|()| filter_unschedulable(ship, node))
        .and(ready)
        .and_then(|()| filter_node_affinity(ship, node))
        .and_then(|()| filter_taints(ship, node))
        .and_then(|()| filter_runtime_class(ship, needs, node, runtime_classes))
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

/// Image sizes below this score 0 in ImageLocality (small images are cheap to pull anyway).
pub const IMAGE_LOCALITY_MIN_BYTES: f64 = 64.0 * 1024.0 * 1024.0;
/// Image sizes at or above this score 100 in ImageLocality (VM disks, not container layers).
pub const IMAGE_LOCALITY_MAX_BYTES: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0;

/// ImageLocality: 0–100, higher when the node already has the Ship's image, weighted by how
/// many nodes have it (kube-scheduler's spread factor, so one node holding a popular image does
/// not attract every Ship): `size × nodes_with_image / nodes`, scaled between
/// [`IMAGE_LOCALITY_MIN_BYTES`] and [`IMAGE_LOCALITY_MAX_BYTES`].
pub fn score_image_locality(
    image: &str,
    info: &NodeInfo,
    nodes_with_image: usize,
    nodes: usize,
) -> f64 {
    let Some(size) = info.image_size(image) else {
        return 0.0;
    };
    if nodes == 0 {
        return 0.0;
    }
    let scaled = size as f64 * nodes_with_image as f64 / nodes as f64;
    let clamped = scaled.clamp(IMAGE_LOCALITY_MIN_BYTES, IMAGE_LOCALITY_MAX_BYTES);
    100.0 * (clamped - IMAGE_LOCALITY_MIN_BYTES)
        / (IMAGE_LOCALITY_MAX_BYTES - IMAGE_LOCALITY_MIN_BYTES)
}

// ---------------------------------------------------------------------------------------------
// Ship affinity, anti-affinity and topology spread: counts per topology domain.

/// The namespaces a term selects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespaces {
    /// Every namespace (`namespaceSelector: {}`).
    All,
    /// These namespaces.
    Names(BTreeSet<String>),
}

impl Namespaces {
    fn contains(&self, ns: &str) -> bool {
        match self {
            Namespaces::All => true,
            Namespaces::Names(n) => n.contains(ns),
        }
    }
}

/// Identity of a counted term: which Ships (namespaces, selector) per which topology key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TermKey {
    /// Namespaces of the selected Ships.
    pub namespaces: Namespaces,
    /// The label selector, canonical JSON (`None`: a nil selector, which selects nothing).
    pub selector: Option<String>,
    /// Node label whose values are the domains.
    pub topology_key: String,
}

/// Matching Ships per domain of one term, kept current as Ships are placed.
#[derive(Clone, Debug)]
pub struct TermCounts {
    namespaces: Namespaces,
    selector: Option<LabelSelector>,
    topology_key: String,
    /// Domain value → matching Ships there.
    pub counts: HashMap<String, usize>,
    /// Matching Ships anywhere (also on nodes without the topology key).
    pub total: usize,
}

impl TermCounts {
    /// Whether Ship `ship` is selected by the term.
    pub fn selects(&self, ship: &Ship) -> bool {
        let ns = ship.metadata.namespace.as_deref().unwrap_or("");
        let Some(sel) = &self.selector else {
            return false;
        };
        let empty = BTreeMap::new();
        self.namespaces.contains(ns) && sel.matches(ship.metadata.labels.as_ref().unwrap_or(&empty))
    }

    /// Matching Ships in the domain of `info` (0 when the node lacks the topology key).
    pub fn in_domain(&self, info: &NodeInfo) -> usize {
        info.label(&self.topology_key)
            .and_then(|v| self.counts.get(v))
            .copied()
            .unwrap_or(0)
    }

    fn add(&mut self, ship: &Ship, node: &NodeInfo) {
        if self.selects(ship) {
            self.total += 1;
            if let Some(v) = node.label(&self.topology_key) {
                *self.counts.entry(v.to_string()).or_default() += 1;
            }
        }
    }
}

/// A required anti-affinity term of placed Ships with the domains they occupy (the symmetric
/// side: a new Ship must not land in a domain whose Ships' terms select it).
#[derive(Clone, Debug)]
pub struct ExistingAntiTerm {
    namespaces: Namespaces,
    selector: Option<LabelSelector>,
    topology_key: String,
    /// Domain value → placed Ships with this term there.
    pub owners: HashMap<String, usize>,
}

/// A term's compiled selector and namespaces, resolved for the Ship that carries it.
fn compile_term(
    owner_ns: &str,
    namespaces: Option<&[String]>,
    namespace_selector: Option<&K8sLabelSelector>,
    selector: Option<&K8sLabelSelector>,
    topology_key: &str,
    namespace_labels: &HashMap<String, BTreeMap<String, String>>,
) -> (TermKey, Namespaces, Option<LabelSelector>) {
    let mut names: BTreeSet<String> = namespaces.unwrap_or(&[]).iter().cloned().collect();
    let mut all = false;
    match namespace_selector {
        Some(ns_sel)
            if ns_sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && ns_sel
                    .match_expressions
                    .as_ref()
                    .is_none_or(|e| e.is_empty()) =>
        {
            all = true;
        }
        Some(ns_sel) => {
            let compiled = serde_json::to_value(ns_sel)
                .ok()
                .and_then(|v| LabelSelector::from_k8s(&v).ok());
            if let Some(c) = compiled {
                names.extend(
                    namespace_labels
                        .iter()
                        .filter(|(_, l)| c.matches(l))
                        .map(|(n, _)| n.clone()),
                );
            }
        }
        None if names.is_empty() => {
            names.insert(owner_ns.to_string());
        }
        None => {}
    }
    let ns = if all {
        Namespaces::All
    } else {
        Namespaces::Names(names)
    };
    // An invalid selector selects nothing, like a nil one: the API validates selectors, so this
    // only guards against objects written around validation.
    let canonical = selector.and_then(|s| serde_json::to_string(s).ok());
    let compiled = selector
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| LabelSelector::from_k8s(&v).ok());
    let canonical = compiled.as_ref().and(canonical);
    (
        TermKey {
            namespaces: ns.clone(),
            selector: canonical,
            topology_key: topology_key.to_string(),
        },
        ns,
        compiled,
    )
}

fn affinity_term_key(
    owner_ns: &str,
    t: &PodAffinityTerm,
    namespace_labels: &HashMap<String, BTreeMap<String, String>>,
) -> (TermKey, Namespaces, Option<LabelSelector>) {
    compile_term(
        owner_ns,
        t.namespaces.as_deref(),
        t.namespace_selector.as_ref(),
        t.label_selector.as_ref(),
        &t.topology_key,
        namespace_labels,
    )
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
    /// PersistentVolumeClaims by `(namespace, name)` (Tugboat's kind has the Kubernetes shape).
    pub claims: HashMap<(String, String), Arc<PersistentVolumeClaim>>,
    /// PersistentVolumes by name.
    pub volumes: HashMap<String, Arc<PersistentVolume>>,
    /// StorageClasses by name.
    pub storage_classes: HashMap<String, Arc<StorageClass>>,
    /// Namespace labels (for affinity terms' `namespaceSelector`).
    pub namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// Claim `(namespace, name)` → nodes of the placed Ships using it.
    pub claim_users: HashMap<(String, String), BTreeSet<String>>,
    /// How many nodes report each image.
    pub image_nodes: HashMap<String, usize>,
    /// Placed Ships with their node, for building term counts on first use.
    placed: Vec<(Arc<Ship>, String)>,
    /// Counts of the affinity and spread terms used so far, kept current by `place`.
    terms: HashMap<TermKey, TermCounts>,
    /// Required anti-affinity terms of placed Ships.
    existing_anti: HashMap<TermKey, ExistingAntiTerm>,
    /// Stop looking after this many feasible nodes (0: consider every node); see
    /// [`nodes_to_find`].
    pub feasible_limit: usize,
    /// Where the next decision starts looking, so a partial search rotates over the nodes.
    next_start: usize,
}

/// kube-scheduler's adaptive `percentageOfNodesToScore`: every node up to 100, then a share
/// that shrinks from 50% by 1% per 125 nodes down to 5% (at least 100 nodes).
pub fn nodes_to_find(nodes: usize) -> usize {
    if nodes <= 100 {
        return 0;
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(100)
}

impl ClusterState {
    /// Builds the state from the nodes and classes; Ships are accounted with [`Self::place`].
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
        let nodes: BTreeMap<String, NodeInfo> = nodes
            .into_iter()
            .map(|n| (name(&n.metadata), NodeInfo::new(n)))
            .collect();
        let mut image_nodes: HashMap<String, usize> = HashMap::new();
        for info in nodes.values() {
            for image in info.images.keys() {
                *image_nodes.entry(image.clone()).or_default() += 1;
            }
        }
        ClusterState {
            nodes,
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
            image_nodes,
            ..ClusterState::default()
        }
    }

    /// Adds storage objects (call before placing Ships).
    pub fn with_storage(
        mut self,
        claims: impl IntoIterator<Item = Arc<PersistentVolumeClaim>>,
        volumes: impl IntoIterator<Item = Arc<PersistentVolume>>,
        storage_classes: impl IntoIterator<Item = Arc<StorageClass>>,
    ) -> Self {
        for c in claims {
            let key = (
                c.metadata.namespace.clone().unwrap_or_default(),
                c.metadata.name.clone().unwrap_or_default(),
            );
            self.claims.insert(key, c);
        }
        for v in volumes {
            self.volumes
                .insert(v.metadata.name.clone().unwrap_or_default(), v);
        }
        for s in storage_classes {
            self.storage_classes
                .insert(s.metadata.name.clone().unwrap_or_default(), s);
        }
        self
    }

    /// Accounts a Ship placed on `node` (resources only for unknown nodes: none).
    pub fn place(&mut self, ship: &Arc<Ship>, node: &str) {
        let req = self
            .ship_classes
            .get(&ship.spec.ship_class)
            .and_then(|c| request_of(c).ok())
            .unwrap_or_default();
        let Some(info) = self.nodes.get_mut(node) else {
            return;
        };
        info.add(req, controller_uid(ship));
        let info = &self.nodes[node];
        let ns = ship.metadata.namespace.as_deref().unwrap_or("");
        for claim in claim_names(ship) {
            self.claim_users
                .entry((ns.to_string(), claim.to_string()))
                .or_default()
                .insert(node.to_string());
        }
        for t in self.terms.values_mut() {
            t.add(ship, info);
        }
        let required_anti = ship
            .spec
            .affinity
            .as_ref()
            .and_then(|a| a.ship_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or(&[]);
        for t in required_anti {
            let (key, namespaces, selector) = affinity_term_key(ns, t, &self.namespace_labels);
            let Some(domain) = info.label(&t.topology_key) else {
                continue;
            };
            let e = self
                .existing_anti
                .entry(key)
                .or_insert_with(|| ExistingAntiTerm {
                    namespaces,
                    selector,
                    topology_key: t.topology_key.clone(),
                    owners: HashMap::new(),
                });
            *e.owners.entry(domain.to_string()).or_default() += 1;
        }
        self.placed.push((ship.clone(), node.to_string()));
    }

    /// The counts of a term, built from the placed Ships on first use.
    fn term(
        &mut self,
        key: TermKey,
        namespaces: Namespaces,
        selector: Option<LabelSelector>,
    ) -> &TermCounts {
        let nodes = &self.nodes;
        let placed = &self.placed;
        self.terms.entry(key.clone()).or_insert_with(|| {
            let mut t = TermCounts {
                namespaces,
                selector,
                topology_key: key.topology_key.clone(),
                counts: HashMap::new(),
                total: 0,
            };
            for (ship, node) in placed {
                if let Some(info) = nodes.get(node) {
                    t.add(ship, info);
                }
            }
            t
        })
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
            // The same plugins NetworkClass readiness (`status.readyNodes`) counts: the main
            // one and every chained `config.plugins[].type`.
            cni_plugins.extend(crate::networkclass::required_plugins(&c.spec));
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
            cni_plugins.extend(crate::networkclass::required_plugins(&c.spec));
        }
        if !ship.spec.port_mappings.is_empty() {
            cni_plugins.push("portmap".to_string());
        }
        cni_plugins.sort();
        cni_plugins.dedup();
        let ns = ship.metadata.namespace.as_deref().unwrap_or("");
        let mut claims = Vec::new();
        for name in claim_names(ship) {
            claims.push(self.claim_need(ns, name)?);
        }
        Ok(ShipNeeds {
            request,
            runtime_class,
            cni_plugins,
            claims,
        })
    }

    fn claim_need(&self, ns: &str, name: &str) -> Result<ClaimNeed, ScheduleError> {
        let key = (ns.to_string(), name.to_string());
        let pvc = self
            .claims
            .get(&key)
            .ok_or_else(|| ScheduleError::ClaimNotFound(name.to_string()))?;
        if pvc.metadata.deletion_timestamp.is_some() {
            return Err(ScheduleError::ClaimDeleting(name.to_string()));
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        let bound_to = spec.volume_name.as_deref().filter(|v| !v.is_empty());
        let (binding, modes) = match bound_to {
            Some(pv_name) => {
                let pv = self.volumes.get(pv_name).cloned().ok_or_else(|| {
                    ScheduleError::VolumeNotFound {
                        claim: name.to_string(),
                        pv: pv_name.to_string(),
                    }
                })?;
                let modes = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.access_modes.clone())
                    .or_else(|| spec.access_modes.clone())
                    .unwrap_or_default();
                (ClaimBinding::Bound(pv), modes)
            }
            None => {
                let class_name = spec.storage_class_name.as_deref().unwrap_or("");
                let volumes = self
                    .volumes
                    .values()
                    .filter(|pv| volume_satisfies(pv, &key, &spec))
                    .cloned()
                    .collect();
                let class = self.storage_classes.get(class_name).cloned();
                (
                    ClaimBinding::Unbound { volumes, class },
                    spec.access_modes.clone().unwrap_or_default(),
                )
            }
        };
        let shared = modes
            .iter()
            .any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany");
        Ok(ClaimNeed {
            key,
            single_node: !shared,
            single_ship: !shared && modes.iter().any(|m| m == "ReadWriteOncePod"),
            binding,
        })
    }
}

/// Names of the PersistentVolumeClaims a Ship uses (`persistentVolumeClaim` or the legacy
/// `volumeClaimRef`).
pub fn claim_names(ship: &Ship) -> impl Iterator<Item = &str> {
    ship.spec.volumes.iter().filter_map(|v| {
        v.persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str())
            .or_else(|| v.volume_claim_ref.as_ref().map(|c| c.name.as_str()))
    })
}

/// Whether an available volume can be bound to claim `key` with `spec`: same class, every
/// requested access mode, enough capacity, same volume mode, and not claimed by another claim.
fn volume_satisfies(
    pv: &PersistentVolume,
    key: &(String, String),
    spec: &k8s_openapi::api::core::v1::PersistentVolumeClaimSpec,
) -> bool {
    let Some(pvs) = pv.spec.as_ref() else {
        return false;
    };
    if pv.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase.is_some_and(|p| p != "Available") {
        return false;
    }
    if let Some(r) = &pvs.claim_ref {
        if r.namespace.as_deref() != Some(key.0.as_str()) || r.name.as_deref() != Some(&key.1) {
            return false;
        }
    }
    let class = |c: Option<&str>| c.unwrap_or("").to_string();
    if class(pvs.storage_class_name.as_deref()) != class(spec.storage_class_name.as_deref()) {
        return false;
    }
    let pv_modes = pvs.access_modes.as_deref().unwrap_or(&[]);
    if !spec
        .access_modes
        .iter()
        .flatten()
        .all(|m| pv_modes.contains(m))
    {
        return false;
    }
    let mode = |m: Option<&str>| m.unwrap_or("Filesystem").to_string();
    if mode(pvs.volume_mode.as_deref()) != mode(spec.volume_mode.as_deref()) {
        return false;
    }
    let wanted = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| parse_quantity(&q.0).ok())
        .unwrap_or(0.0);
    let has = pvs
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .and_then(|q| parse_quantity(&q.0).ok())
        .unwrap_or(0.0);
    has >= wanted
}

/// One required or preferred (anti-)affinity term or spread constraint, resolved for a
/// decision.
#[derive(Clone, Debug)]
struct Resolved {
    key: TermKey,
    /// Preferred terms: weight (negative for anti-affinity). Spread: maxSkew.
    weight: i64,
}

/// The cross-node facts of one decision: affinity terms with their counts, domains forbidden
/// by placed Ships' anti-affinity, and spread constraints with their minimum counts.
struct Decide<'a> {
    state: &'a ClusterState,
    required_affinity: Vec<&'a TermCounts>,
    /// No Ship matches the required affinity terms yet and this Ship matches them all: the
    /// first of a group may go anywhere (kube-scheduler's rule).
    affinity_bootstrap: bool,
    required_anti: Vec<&'a TermCounts>,
    /// (topology key, domain) pairs where placed Ships' anti-affinity selects this Ship.
    forbidden: Vec<(&'a str, &'a HashMap<String, usize>)>,
    preferred: Vec<(&'a TermCounts, i64)>,
    /// Hard spread constraints: counts, maxSkew, minimum over eligible domains, self-match.
    hard_spread: Vec<(&'a TermCounts, i64, usize, usize)>,
    soft_spread: Vec<&'a TermCounts>,
}

impl Decide<'_> {
    fn check(&self, ship: &Ship, needs: &ShipNeeds, info: &NodeInfo) -> Result<(), Unfit> {
        if !needs.claims.is_empty() {
            filter_storage(needs, &info.node, &self.state.claim_users)?;
        }
        if !self.affinity_bootstrap {
            for t in &self.required_affinity {
                if info.label(&t.topology_key).is_none() || t.in_domain(info) == 0 {
                    return Err(Unfit::ShipAffinity);
                }
            }
        }
        for t in &self.required_anti {
            if t.in_domain(info) > 0 {
                return Err(Unfit::ShipAntiAffinity);
            }
        }
        for (key, owners) in &self.forbidden {
            if info
                .label(key)
                .is_some_and(|d| owners.get(d).is_some_and(|n| *n > 0))
            {
                return Err(Unfit::ExistingAntiAffinity);
            }
        }
        for (t, max_skew, min, self_match) in &self.hard_spread {
            if info.label(&t.topology_key).is_none() {
                return Err(Unfit::TopologySpreadLabel);
            }
            let skew = (t.in_domain(info) + self_match) as i64 - *min as i64;
            if skew > *max_skew {
                return Err(Unfit::TopologySpread);
            }
        }
        let _ = ship;
        Ok(())
    }

    /// Preferred (anti-)affinity: Σ weight × matching Ships in the node's domain.
    fn affinity_raw(&self, info: &NodeInfo) -> f64 {
        self.preferred
            .iter()
            .map(|(t, w)| (*w * t.in_domain(info) as i64) as f64)
            .sum()
    }

    /// ScheduleAnyway spread: matching Ships in the node's domains (fewer is better); NaN for a
    /// node lacking a constraint's topology key, which scores 0 (kube-scheduler's rule).
    fn spread_raw(&self, info: &NodeInfo) -> f64 {
        if self
            .soft_spread
            .iter()
            .any(|t| info.label(&t.topology_key).is_none())
        {
            return f64::NAN;
        }
        self.soft_spread
            .iter()
            .map(|t| t.in_domain(info) as f64)
            .sum()
    }
}

/// The resolved terms of a Ship, before their counts are borrowed.
struct Terms {
    required_affinity: Vec<Resolved>,
    required_anti: Vec<Resolved>,
    preferred: Vec<Resolved>,
    hard_spread: Vec<(Resolved, Option<i32>)>,
    soft_spread: Vec<Resolved>,
}

impl Terms {
    fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && self.preferred.is_empty()
            && self.hard_spread.is_empty()
            && self.soft_spread.is_empty()
    }
}

/// Resolves `ship`'s affinity terms and spread constraints and makes sure their counts exist.
fn resolve_terms(ship: &Ship, state: &mut ClusterState) -> Terms {
    let ns = ship.metadata.namespace.clone().unwrap_or_default();
    let mut terms = Terms {
        required_affinity: Vec::new(),
        required_anti: Vec::new(),
        preferred: Vec::new(),
        hard_spread: Vec::new(),
        soft_spread: Vec::new(),
    };
    let ensure = |state: &mut ClusterState,
                  compiled: (TermKey, Namespaces, Option<LabelSelector>),
                  weight: i64| {
        let (key, namespaces, selector) = compiled;
        state.term(key.clone(), namespaces, selector);
        Resolved { key, weight }
    };
    let affinity = ship.spec.affinity.as_ref();
    if let Some(a) = affinity.and_then(|a| a.ship_affinity.as_ref()) {
        for t in a
            .required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            let c = affinity_term_key(&ns, t, &state.namespace_labels);
            let r = ensure(state, c, 0);
            terms.required_affinity.push(r);
        }
        for w in a
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            let c = affinity_term_key(&ns, &w.pod_affinity_term, &state.namespace_labels);
            let r = ensure(state, c, i64::from(w.weight));
            terms.preferred.push(r);
        }
    }
    if let Some(a) = affinity.and_then(|a| a.ship_anti_affinity.as_ref()) {
        for t in a
            .required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            let c = affinity_term_key(&ns, t, &state.namespace_labels);
            let r = ensure(state, c, 0);
            terms.required_anti.push(r);
        }
        for w in a
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            let c = affinity_term_key(&ns, &w.pod_affinity_term, &state.namespace_labels);
            let r = ensure(state, c, -i64::from(w.weight));
            terms.preferred.push(r);
        }
    }
    for c in &ship.spec.topology_spread_constraints {
        let compiled = compile_term(
            &ns,
            None,
            None,
            c.label_selector.as_ref(),
            &c.topology_key,
            &state.namespace_labels,
        );
        let r = ensure(state, compiled, i64::from(c.max_skew.max(1)));
        if c.when_unsatisfiable == "ScheduleAnyway" {
            terms.soft_spread.push(r);
        } else {
            terms.hard_spread.push((r, c.min_domains));
        }
    }
    terms
}

impl ClusterState {
    fn decide<'a>(&'a self, ship: &Ship, terms: &Terms) -> Decide<'a> {
        let get = |r: &Resolved| self.terms.get(&r.key);
        let required_affinity: Vec<&TermCounts> =
            terms.required_affinity.iter().filter_map(get).collect();
        let affinity_bootstrap = !required_affinity.is_empty()
            && required_affinity.iter().all(|t| t.total == 0)
            && required_affinity.iter().all(|t| t.selects(ship));
        let forbidden = self
            .existing_anti
            .values()
            .filter(|e| {
                let ns = ship.metadata.namespace.as_deref().unwrap_or("");
                let empty = BTreeMap::new();
                e.namespaces.contains(ns)
                    && e.selector
                        .as_ref()
                        .is_some_and(|s| s.matches(ship.metadata.labels.as_ref().unwrap_or(&empty)))
            })
            .map(|e| (e.topology_key.as_str(), &e.owners))
            .collect();
        let mut hard_spread = Vec::new();
        if !terms.hard_spread.is_empty() {
            for (r, min_domains) in &terms.hard_spread {
                let Some(t) = get(r) else { continue };
                // Domains of the nodes the Ship may use (node affinity honoured, taints not:
                // kube-scheduler's default policies).
                let mut domains: HashMap<&str, usize> = HashMap::new();
                for info in self.nodes.values() {
                    if filter_node_affinity(ship, &info.node).is_err() {
                        continue;
                    }
                    if let Some(d) = info.label(&t.topology_key) {
                        domains.insert(d, t.counts.get(d).copied().unwrap_or(0));
                    }
                }
                let mut min = domains.values().copied().min().unwrap_or(0);
                if min_domains.is_some_and(|m| domains.len() < m.max(0) as usize) {
                    min = 0;
                }
                let self_match = usize::from(t.selects(ship));
                hard_spread.push((t, r.weight, min, self_match));
            }
        }
        Decide {
            state: self,
            required_affinity,
            affinity_bootstrap,
            required_anti: terms.required_anti.iter().filter_map(get).collect(),
            forbidden,
            preferred: terms
                .preferred
                .iter()
                .filter_map(|r| get(r).map(|t| (t, r.weight)))
                .collect(),
            hard_spread,
            soft_spread: terms.soft_spread.iter().filter_map(get).collect(),
        }
    }
}

/// The result of a successful scheduling cycle.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The chosen node.
    pub node: String,
    /// How many nodes passed the filters (of those looked at: see
    /// [`ClusterState::feasible_limit`]).
    pub feasible: usize,
}

/// Min-max normalization to 0–100 over the feasible nodes (`invert`: smaller raw is better).
fn normalize(raw: f64, min: f64, max: f64, invert: bool) -> f64 {
    if max - min <= f64::EPSILON {
        return if invert { 100.0 } else { 0.0 };
    }
    let x = (raw - min) / (max - min) * 100.0;
    if invert {
        100.0 - x
    } else {
        x
    }
}

/// Filters and scores the nodes for `ship`; the best-scoring feasible node wins (ties broken
/// at random so equal nodes share the load). With [`ClusterState::feasible_limit`] set it stops
/// looking after that many feasible nodes, starting where the previous decision stopped.
pub fn schedule(ship: &Ship, state: &mut ClusterState) -> Result<Decision, ScheduleError> {
    let needs = state.needs(ship)?;
    let terms = resolve_terms(ship, state);
    let total = state.nodes.len();
    let start = if total == 0 {
        0
    } else {
        state.next_start % total
    };
    let limit = if state.feasible_limit == 0 {
        usize::MAX
    } else {
        state.feasible_limit
    };
    let st: &ClusterState = state;
    let decide = st.decide(ship, &terms);
    let cross_node = !terms.is_empty() || !needs.claims.is_empty() || !decide.forbidden.is_empty();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    let mut looked = 0;
    for info in st
        .nodes
        .values()
        .skip(start)
        .chain(st.nodes.values().take(start))
    {
        looked += 1;
        let verdict = filter(ship, &needs, info, &st.runtime_classes).and_then(|()| {
            if cross_node {
                decide.check(ship, &needs, info).map_err(|e| vec![e])
            } else {
                Ok(())
            }
        });
        match verdict {
            Ok(()) => {
                feasible.push(info);
                if feasible.len() >= limit {
                    break;
                }
            }
            Err(unfit) => {
                for u in unfit {
                    *reasons.entry(u.to_string()).or_default() += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        return Err(ScheduleError::NoFit(no_fit_message(total, &reasons)));
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
    let image_nodes = st.image_nodes.get(&ship.spec.image).copied().unwrap_or(0);
    let bounds =
        |f: &dyn Fn(&NodeInfo) -> f64| -> Vec<f64> { feasible.iter().map(|i| f(i)).collect() };
    let affinity_raw = if decide.preferred.is_empty() {
        Vec::new()
    } else {
        bounds(&|i| decide.affinity_raw(i))
    };
    let spread_raw = if decide.soft_spread.is_empty() {
        Vec::new()
    } else {
        bounds(&|i| decide.spread_raw(i))
    };
    let range = |v: &[f64]| {
        v.iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)))
    };
    let (a_lo, a_hi) = range(&affinity_raw);
    let (s_lo, s_hi) = range(&spread_raw);
    let mut best: Vec<(&NodeInfo, f64)> = Vec::new();
    for (idx, info) in feasible.iter().enumerate() {
        let mut s = score_least_allocated(&needs, info) + score_spread(controller, info, max);
        if image_nodes > 0 {
            s += score_image_locality(&ship.spec.image, info, image_nodes, total);
        }
        // kube-scheduler weighs InterPodAffinity and PodTopologySpread twice.
        if let Some(raw) = affinity_raw.get(idx) {
            s += 2.0 * normalize(*raw, a_lo, a_hi, false);
        }
        if let Some(raw) = spread_raw.get(idx).filter(|r| !r.is_nan()) {
            s += 2.0 * normalize(*raw, s_lo, s_hi, true);
        }
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
    let feasible = feasible.len();
    state.next_start = (start + looked) % total.max(1);
    Ok(Decision { node, feasible })
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
