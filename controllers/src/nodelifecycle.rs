//! The Node lifecycle controller: notices nodes whose agent stopped renewing its Lease.
//!
//! Liveness is judged by this controller's own clock: for every node it records when it last
//! saw the node's Lease (`tugboat-node-lease/<node>`) change, never comparing the Lease's
//! `renewTime` with the local time, so clock skew between hosts does not matter (kube's node
//! lifecycle controller does the same). A new leadership term starts every node afresh, which
//! only delays a verdict.
//!
//! - Not renewed for [`NodeLifecycleConfig::grace`]: the node's `Ready` condition becomes
//!   `Unknown` (reason `NodeStatusUnknown`) and it gets the `node.kubernetes.io/unreachable`
//!   taints (`NoSchedule`, `NoExecute`).
//! - Still not renewed a further [`NodeLifecycleConfig::ship_eviction_timeout`] later (the
//!   Lease is read again from the apiserver right before): its Ships get `status.phase=Failed`
//!   with reason `NodeLost`, so their ReplicaSets can replace them. Stopped Ships stay Stopped.
//! - Renewed again: the taints are removed and the `Unknown` condition this controller wrote
//!   becomes `True` (reason `NodeLeaseRenewed`) until the agent's next status refresh replaces
//!   it; a condition the agent wrote is never touched.
//! - A Ship being deleted with `tugboat.io/force-delete-local-state: "true"` on an
//!   unreachable (or vanished) node loses the agent's `tugboat.io/agent` finalizer, so it can
//!   go while the node is gone (the agent would drop the same finalizer without a graceful
//!   stop if it were alive).
//!
//! Every write carries the resourceVersion it was computed from, so an agent write that lands
//! in between wins and the next pass decides again.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tugboat_api::kinds::core::{Node, Ship};

/// Taint key of nodes whose agent stopped renewing its Lease.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// Reason of the `Ready=Unknown` condition this controller writes.
pub const NODE_STATUS_UNKNOWN: &str = "NodeStatusUnknown";
/// Ship condition saying its deletion waits for an unreachable node's agent.
pub const DELETION_BLOCKED: &str = "DeletionBlocked";

fn has_condition(ship: &Ship, type_: &str) -> bool {
    ship.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_))
}

/// Reason of the `Ready=True` condition written when the Lease is renewed again.
pub const NODE_LEASE_RENEWED: &str = "NodeLeaseRenewed";
/// Reason given to Ships failed because their node was lost.
pub const NODE_LOST: &str = "NodeLost";
/// Finalizer the node agent puts on its Ships.
pub const AGENT_FINALIZER: &str = "tugboat.io/agent";
/// Annotation allowing a Ship's local state to be dropped without its agent.
pub const FORCE_DELETE_ANNOTATION: &str = "tugboat.io/force-delete-local-state";
/// Namespace of the node Leases.
pub const NODE_LEASE_NAMESPACE: &str = "tugboat-node-lease";

/// Errors of one pass over a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeLifecycleError {
    /// An object changed since it was read; the next pass decides again.
    #[error("{0} changed since it was read")]
    Conflict(String),
    /// Another apiserver error.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> NodeLifecycleError {
    let action = action.into();
    move |source| match &source {
        kube::Error::Api(s) if s.code == 409 => NodeLifecycleError::Conflict(action),
        _ => NodeLifecycleError::Api { action, source },
    }
}

/// Settings of a [`NodeLifecycleController`].
#[derive(Clone, Debug)]
pub struct NodeLifecycleConfig {
    /// How long a Lease may go unrenewed before the node is marked `Ready=Unknown`.
    pub grace: Duration,
    /// How long after that its Ships are marked Failed.
    pub ship_eviction_timeout: Duration,
    /// How often every node is looked at.
    pub monitor_period: Duration,
    /// Namespace of the node Leases.
    pub lease_namespace: String,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            grace: Duration::from_secs(40),
            ship_eviction_timeout: Duration::from_secs(30),
            monitor_period: Duration::from_secs(5),
            lease_namespace: NODE_LEASE_NAMESPACE.into(),
        }
    }
}

/// What this controller observed of one node's Lease, on its own clock.
#[derive(Debug)]
struct Health {
    /// The Lease's identity and renew time last seen (`None`: no Lease).
    renewal: Option<String>,
    /// When `renewal` was last seen to change.
    changed_at: Instant,
    /// When this controller first judged the node unreachable in the current outage.
    unreachable_since: Option<Instant>,
}

/// The Node lifecycle controller (see the module docs).
pub struct NodeLifecycleController {
    client: Client,
    cfg: NodeLifecycleConfig,
}

/// What identifies one renewal of a Lease: its uid (a re-created Lease counts as renewed) and
/// its renewTime as written.
fn renewal_of(lease: &Lease) -> String {
    let renew = lease
        .spec
        .as_ref()
        .and_then(|s| s.renew_time.as_ref())
        .and_then(|t| serde_json::to_string(t).ok())
        .unwrap_or_default();
    format!("{}@{renew}", lease.metadata.uid.as_deref().unwrap_or(""))
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
}

/// The node carries the `Ready=Unknown` condition written by this controller.
fn marked_unknown_by_us(node: &Node) -> bool {
    ready_condition(node)
        .is_some_and(|c| c.status == "Unknown" && c.reason.as_deref() == Some(NODE_STATUS_UNKNOWN))
}

fn taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn has_unreachable_taints(node: &Node) -> bool {
    taints(node).iter().any(|t| t.key == UNREACHABLE_TAINT)
}

fn now_time() -> Time {
    Time(jiff::Timestamp::now())
}

/// The node's conditions with `Ready` replaced by `ready`.
fn with_ready(node: &Node, ready: NodeCondition) -> Vec<NodeCondition> {
    let mut conditions: Vec<NodeCondition> = node
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != "Ready");
    conditions.push(ready);
    conditions
}

fn phase(ship: &Ship) -> Option<&str> {
    ship.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn node_of(ship: &Ship) -> Option<&str> {
    ship.spec.node_name.as_deref().filter(|n| !n.is_empty())
}

impl NodeLifecycleController {
    /// A controller using `client`.
    pub fn new(client: Client, cfg: NodeLifecycleConfig) -> Self {
        NodeLifecycleController { client, cfg }
    }

    /// Monitors nodes while `is_leader` is true; returns when its sender is dropped.
    pub async fn run(self, is_leader: watch::Receiver<bool>) {
        crate::leader::run_terms("node lifecycle controller", is_leader, |rx| {
            crate::leader::until_not_leader(self.run_term(), rx)
        })
        .await;
    }

    async fn run_term(&self) {
        let mut tasks = Vec::new();
        let nodes = spawn_reflector::<Node>(Api::all(self.client.clone()), &mut tasks);
        let leases = spawn_reflector::<Lease>(
            Api::namespaced(self.client.clone(), &self.cfg.lease_namespace),
            &mut tasks,
        );
        let ships = spawn_reflector::<Ship>(Api::all(self.client.clone()), &mut tasks);
        let _guard = AbortOnDrop(tasks);
        if nodes.wait_until_ready().await.is_err()
            || leases.wait_until_ready().await.is_err()
            || ships.wait_until_ready().await.is_err()
        {
            return;
        }
        let mut health: HashMap<String, Health> = HashMap::new();
        let mut tick = tokio::time::interval(self.cfg.monitor_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.pass(&nodes, &leases, &ships, &mut health).await;
        }
    }

    /// One look at every node (and every node name Ships are bound to).
    async fn pass(
        &self,
        nodes: &Store<Node>,
        leases: &Store<Lease>,
        ships: &Store<Ship>,
        health: &mut HashMap<String, Health>,
    ) {
        let now = Instant::now();
        let node_objs: HashMap<String, std::sync::Arc<Node>> = nodes
            .state()
            .into_iter()
            .map(|n| (n.name_any(), n))
            .collect();
        let lease_objs: HashMap<String, std::sync::Arc<Lease>> = leases
            .state()
            .into_iter()
            .map(|l| (l.name_any(), l))
            .collect();
        let all_ships = ships.state();
        let mut names: BTreeSet<String> = node_objs.keys().cloned().collect();
        names.extend(
            all_ships
                .iter()
                .filter_map(|s| node_of(s).map(str::to_string)),
        );
        health.retain(|n, _| names.contains(n));

        for name in names {
            let renewal = lease_objs.get(&name).map(|l| renewal_of(l));
            let h = health.entry(name.clone()).or_insert_with(|| Health {
                renewal: renewal.clone(),
                changed_at: now,
                unreachable_since: None,
            });
            if h.renewal != renewal {
                h.renewal = renewal;
                h.changed_at = now;
                h.unreachable_since = None;
            }
            let stale = now.duration_since(h.changed_at) >= self.cfg.grace;
            let node = node_objs.get(&name).map(AsRef::as_ref);
            let ships_here: Vec<&Ship> = all_ships
                .iter()
                .map(AsRef::as_ref)
                .filter(|s| node_of(s) == Some(name.as_str()))
                .collect();
            let result = if stale {
                let since = *h.unreachable_since.get_or_insert(now);
                self.unreachable(&name, node, &ships_here, now.duration_since(since), h)
                    .await
            } else {
                h.unreachable_since = None;
                match node {
                    Some(n) => self.reachable(n).await,
                    None => Ok(()),
                }
            };
            match result {
                Ok(()) => {}
                Err(e @ NodeLifecycleError::Conflict(_)) => {
                    tracing::debug!(node = %name, error = %e, "node lifecycle raced; next pass")
                }
                Err(e) => tracing::warn!(node = %name, error = %e, "node lifecycle"),
            }
        }
    }

    /// A node whose Lease went unrenewed for the grace period (`down_for` since then).
    async fn unreachable(
        &self,
        name: &str,
        node: Option<&Node>,
        ships: &[&Ship],
        down_for: Duration,
        health: &mut Health,
    ) -> Result<(), NodeLifecycleError> {
        // Releasing force-deleted Ships needs no second look: their owner asked to drop the
        // local state, and the agent is not there to do it.
        for ship in ships.iter().filter(|s| {
            s.metadata.deletion_timestamp.is_some()
                && s.annotations()
                    .get(FORCE_DELETE_ANNOTATION)
                    .is_some_and(|v| v == "true")
                && s.finalizers().iter().any(|f| f == AGENT_FINALIZER)
        }) {
            self.release_finalizer(ship).await?;
        }
        // Other deletions wait for the agent; say so on the Ship, with the way out.
        for ship in ships.iter().filter(|s| {
            s.metadata.deletion_timestamp.is_some()
                && s.finalizers().iter().any(|f| f == AGENT_FINALIZER)
                && s.annotations()
                    .get(FORCE_DELETE_ANNOTATION)
                    .is_none_or(|v| v != "true")
                && !has_condition(s, DELETION_BLOCKED)
        }) {
            self.mark_deletion_blocked(ship, name).await?;
        }
        if let Some(node) = node {
            self.mark_unreachable(node).await?;
        }
        if down_for < self.cfg.ship_eviction_timeout {
            return Ok(());
        }
        let victims: Vec<&&Ship> = ships
            .iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .filter(|s| !matches!(phase(s), Some("Failed" | "Stopped")))
            .collect();
        if victims.is_empty() {
            return Ok(());
        }
        // The caches may lag: read the Lease itself before failing anything.
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.cfg.lease_namespace);
        let live = leases
            .get_opt(name)
            .await
            .map_err(api_err(format!("reading the lease of node {name}")))?
            .map(|l| renewal_of(&l));
        if live != health.renewal {
            tracing::info!(node = %name, "lease renewed just before eviction; not failing ships");
            health.renewal = live;
            health.changed_at = Instant::now();
            health.unreachable_since = None;
            return Ok(());
        }
        for ship in victims {
            self.fail_ship(ship, name).await?;
        }
        Ok(())
    }

    /// Writes `Ready=Unknown` and the unreachable taints (whichever is missing).
    async fn mark_unreachable(&self, node: &Node) -> Result<(), NodeLifecycleError> {
        let name = node.name_any();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut rv = node.metadata.resource_version.clone();
        if ready_condition(node).is_none_or(|c| c.status != "Unknown") {
            let previous = ready_condition(node);
            let condition = NodeCondition {
                type_: "Ready".into(),
                status: "Unknown".into(),
                reason: Some(NODE_STATUS_UNKNOWN.into()),
                message: Some(format!(
                    "Tugboat agent stopped renewing the node lease (not renewed for at least {:?}).",
                    self.cfg.grace
                )),
                last_heartbeat_time: previous.and_then(|c| c.last_heartbeat_time.clone()),
                last_transition_time: Some(now_time()),
            };
            let patch = json!({
                "metadata": {"resourceVersion": rv},
                "status": {"conditions": with_ready(node, condition)},
            });
            let updated = nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err(format!("marking node {name} Ready=Unknown")))?;
            rv = updated.metadata.resource_version.clone();
            tracing::warn!(node = %name, grace = ?self.cfg.grace, "node lease not renewed; marked Ready=Unknown");
        }
        let mut current = taints(node);
        let mut added = false;
        for effect in ["NoSchedule", "NoExecute"] {
            if !current
                .iter()
                .any(|t| t.key == UNREACHABLE_TAINT && t.effect == effect)
            {
                current.push(Taint {
                    key: UNREACHABLE_TAINT.into(),
                    effect: effect.into(),
                    time_added: (effect == "NoExecute").then(now_time),
                    value: None,
                });
                added = true;
            }
        }
        if added {
            let patch = json!({
                "metadata": {"resourceVersion": rv},
                "spec": {"taints": current},
            });
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err(format!("tainting node {name} unreachable")))?;
            tracing::info!(node = %name, "tainted unreachable");
        }
        Ok(())
    }

    /// A node whose Lease is being renewed: undoes what [`Self::mark_unreachable`] wrote.
    async fn reachable(&self, node: &Node) -> Result<(), NodeLifecycleError> {
        let name = node.name_any();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut rv = node.metadata.resource_version.clone();
        if marked_unknown_by_us(node) {
            let condition = NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some(NODE_LEASE_RENEWED.into()),
                message: Some(
                    "The node lease is being renewed again; the agent refreshes this condition."
                        .into(),
                ),
                last_heartbeat_time: Some(now_time()),
                last_transition_time: Some(now_time()),
            };
            let patch = json!({
                "metadata": {"resourceVersion": rv},
                "status": {"conditions": with_ready(node, condition)},
            });
            let updated = nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err(format!("clearing Ready=Unknown of node {name}")))?;
            rv = updated.metadata.resource_version.clone();
            tracing::info!(node = %name, "node lease renewed again; Ready=Unknown cleared");
        }
        if has_unreachable_taints(node) {
            let kept: Vec<Taint> = taints(node)
                .into_iter()
                .filter(|t| t.key != UNREACHABLE_TAINT)
                .collect();
            let patch = json!({
                "metadata": {"resourceVersion": rv},
                "spec": {"taints": kept},
            });
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err(format!(
                    "removing the unreachable taints of node {name}"
                )))?;
            tracing::info!(node = %name, "unreachable taints removed");
        }
        Ok(())
    }

    async fn fail_ship(&self, ship: &Ship, node: &str) -> Result<(), NodeLifecycleError> {
        let ns = ship.namespace().unwrap_or_default();
        let name = ship.name_any();
        let api: Api<Ship> = Api::namespaced(self.client.clone(), &ns);
        let patch = json!({
            "metadata": {"resourceVersion": ship.meta().resource_version},
            "status": {
                "phase": "Failed",
                "reason": NODE_LOST,
                "message": format!("Node {node} stopped renewing its lease; the Ship is considered lost."),
            },
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::warn!(ship = %format!("{ns}/{name}"), %node, "ship failed: node lost");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_err(format!("failing ship {ns}/{name}"))(e)),
        }
    }

    /// Records on a terminating Ship that its node cannot delete the VM now.
    async fn mark_deletion_blocked(
        &self,
        ship: &Ship,
        node: &str,
    ) -> Result<(), NodeLifecycleError> {
        let ns = ship.namespace().unwrap_or_default();
        let name = ship.name_any();
        let api: Api<Ship> = Api::namespaced(self.client.clone(), &ns);
        let mut conditions: Vec<Value> = ship
            .status
            .as_ref()
            .map(|s| {
                s.conditions
                    .iter()
                    .filter_map(|c| serde_json::to_value(c).ok())
                    .collect()
            })
            .unwrap_or_default();
        conditions.push(json!({
            "type": DELETION_BLOCKED,
            "status": "True",
            "reason": "NodeUnreachable",
            "message": format!(
                "node {node} is unreachable; the Ship goes away once its agent has deleted the VM. \
                 To remove it now and leave the VM's local state behind, annotate it \
                 {FORCE_DELETE_ANNOTATION}=true"
            ),
            "lastTransitionTime": jiff::Timestamp::now().to_string(),
        }));
        let patch = json!({
            "metadata": {"resourceVersion": ship.meta().resource_version},
            "status": {"conditions": conditions},
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // Gone, or changed meanwhile (the next pass looks again).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(api_err(format!(
                "marking ship {ns}/{name} deletion-blocked"
            ))(e)),
        }
    }

    async fn release_finalizer(&self, ship: &Ship) -> Result<(), NodeLifecycleError> {
        let ns = ship.namespace().unwrap_or_default();
        let name = ship.name_any();
        let api: Api<Ship> = Api::namespaced(self.client.clone(), &ns);
        let kept: Vec<&String> = ship
            .finalizers()
            .iter()
            .filter(|f| f.as_str() != AGENT_FINALIZER)
            .collect();
        let patch = json!({
            "metadata": {
                "resourceVersion": ship.meta().resource_version,
                "finalizers": kept,
            },
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::warn!(ship = %format!("{ns}/{name}"), "force-deleted ship on a lost node released");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_err(format!("releasing ship {ns}/{name}"))(e)),
        }
    }
}

/// Aborts the reflector tasks of a term when it ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn spawn_reflector<K>(api: Api<K>, tasks: &mut Vec<tokio::task::JoinHandle<()>>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).modify(crate::lean),
    )
    .default_backoff();
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::debug!(error = %e, "node lifecycle watch error");
            }
        }
    }));
    reader
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use tugboat_api::kinds::core::NodeStatus;

    #[test]
    fn renewal_changes_with_renew_time_and_uid() {
        let mut l = Lease::default();
        l.metadata.uid = Some("u1".into());
        l.spec = Some(LeaseSpec {
            renew_time: Some(MicroTime(jiff::Timestamp::UNIX_EPOCH)),
            ..LeaseSpec::default()
        });
        let a = renewal_of(&l);
        l.metadata.uid = Some("u2".into());
        assert_ne!(a, renewal_of(&l));
        let b = renewal_of(&l);
        if let Some(s) = l.spec.as_mut() {
            s.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        }
        assert_ne!(b, renewal_of(&l));
    }

    #[test]
    fn only_our_unknown_condition_is_cleared() {
        let mut n = Node::default();
        let cond = |status: &str, reason: &str| NodeCondition {
            type_: "Ready".into(),
            status: status.into(),
            reason: Some(reason.into()),
            ..NodeCondition::default()
        };
        n.status = Some(NodeStatus {
            conditions: vec![cond("Unknown", NODE_STATUS_UNKNOWN)],
            ..NodeStatus::default()
        });
        assert!(marked_unknown_by_us(&n));
        let replaced = with_ready(&n, cond("True", "AgentReady"));
        assert_eq!(replaced.len(), 1);
        n.status = Some(NodeStatus {
            conditions: vec![cond("True", "AgentReady")],
            ..NodeStatus::default()
        });
        assert!(!marked_unknown_by_us(&n));
    }
}
