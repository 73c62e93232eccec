//! The NetworkClass status controller: `status.readyNodes` (and a `Ready` condition and
//! `observedGeneration`) of every NetworkClass and ClusterNetworkClass.
//!
//! A node is ready for a network when its `Ready` condition is `True` and its agent reports
//! every CNI plugin the network needs as ready in `status.cniPlugins`. A network needs its
//! `spec.cniPlugin` and, when `spec.config` is a CNI configuration list, the `type` of every
//! plugin chained in it (`plugins[].type`).
//!
//! Three reflectors (Nodes, NetworkClasses, ClusterNetworkClasses) feed one coalescing
//! trigger; each pass recomputes every class from the caches and writes `/status` only where
//! it changed, so a flood of Node heartbeats costs no writes.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tugboat_api::kinds::common::Condition;
use tugboat_api::kinds::core::{
    ClusterNetworkClass, NetworkClass, NetworkClassSpec, NetworkClassStatus, Node,
};

/// Errors of writing one class's status.
#[derive(Debug, thiserror::Error)]
pub enum NetworkClassError {
    /// An apiserver error.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// Settings of a [`NetworkClassStatusController`].
#[derive(Clone, Debug)]
pub struct NetworkClassConfig {
    /// Delay before retrying after a pass with failed writes; doubles per failed pass.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Periodic recomputation even without changes.
    pub resync: Duration,
}

impl Default for NetworkClassConfig {
    fn default() -> Self {
        NetworkClassConfig {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            resync: Duration::from_secs(300),
        }
    }
}

/// The NetworkClass status controller (see the module docs).
pub struct NetworkClassStatusController {
    client: Client,
    cfg: NetworkClassConfig,
}

/// The CNI plugins a network needs on a node.
pub fn required_plugins(spec: &NetworkClassSpec) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !spec.cni_plugin.is_empty() {
        out.insert(spec.cni_plugin.clone());
    }
    let parsed;
    let config = match &spec.config {
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s).ok();
            parsed.as_ref()
        }
        other => other.as_ref(),
    };
    if let Some(plugins) = config
        .and_then(|c| c.get("plugins"))
        .and_then(Value::as_array)
    {
        out.extend(
            plugins
                .iter()
                .filter_map(|p| p.get("type").and_then(Value::as_str))
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        );
    }
    out
}

/// The node's `Ready` condition is `True`.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Names of the ready nodes that have every plugin in `needs` ready, sorted.
pub fn ready_nodes<'a>(
    needs: &BTreeSet<String>,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .into_iter()
        .filter(|n| node_is_ready(n))
        .filter(|n| {
            let plugins = n
                .status
                .as_ref()
                .map(|s| s.cni_plugins.as_slice())
                .unwrap_or_default();
            needs
                .iter()
                .all(|p| plugins.iter().any(|s| &s.name == p && s.ready))
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The status a class should have, keeping the transition time of an unchanged condition.
pub fn desired_status(
    old: Option<&NetworkClassStatus>,
    ready: Vec<String>,
    generation: Option<i64>,
) -> NetworkClassStatus {
    let (status, reason, message) = if ready.is_empty() {
        (
            "False",
            "NoReadyNodes",
            "no ready node has every CNI plugin of the network ready",
        )
    } else {
        (
            "True",
            "NodesReady",
            "at least one ready node has every CNI plugin of the network ready",
        )
    };
    let previous = old.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let transition = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        )),
    };
    let mut conditions: Vec<Condition> = old
        .map(|s| {
            s.conditions
                .iter()
                .filter(|c| c.type_ != "Ready")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    conditions.push(Condition {
        type_: "Ready".into(),
        status: status.into(),
        observed_generation: generation,
        last_probe_time: None,
        last_transition_time: transition,
        reason: Some(reason.into()),
        message: Some(message.into()),
    });
    NetworkClassStatus {
        ready_nodes: ready,
        conditions,
        observed_generation: generation,
    }
}

/// Two statuses are the same apart from a Ready condition's transition time.
fn same_status(old: Option<&NetworkClassStatus>, new: &NetworkClassStatus) -> bool {
    let Some(old) = old else { return false };
    let strip = |s: &NetworkClassStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = None;
        }
        s
    };
    strip(old) == strip(new)
}

/// Something that carries a network spec and status (both class kinds).
trait NetworkKind: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned {
    fn spec(&self) -> &NetworkClassSpec;
    fn status(&self) -> Option<&NetworkClassStatus>;
    /// The API of the class's kind in the class's scope.
    fn api(&self, client: &Client) -> Api<Self>;
}

impl NetworkKind for NetworkClass {
    fn spec(&self) -> &NetworkClassSpec {
        &self.spec
    }
    fn status(&self) -> Option<&NetworkClassStatus> {
        self.status.as_ref()
    }
    fn api(&self, client: &Client) -> Api<Self> {
        Api::namespaced(
            client.clone(),
            self.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }
}

impl NetworkKind for ClusterNetworkClass {
    fn spec(&self) -> &NetworkClassSpec {
        &self.spec
    }
    fn status(&self) -> Option<&NetworkClassStatus> {
        self.status.as_ref()
    }
    fn api(&self, client: &Client) -> Api<Self> {
        Api::all(client.clone())
    }
}

impl NetworkClassStatusController {
    /// A controller using `client`.
    pub fn new(client: Client, cfg: NetworkClassConfig) -> Self {
        NetworkClassStatusController { client, cfg }
    }

    /// Reconciles while `is_leader` is true; returns when its sender is dropped.
    pub async fn run(self, is_leader: watch::Receiver<bool>) {
        crate::leader::run_terms("networkclass status controller", is_leader, |rx| {
            crate::leader::until_not_leader(self.run_term(), rx)
        })
        .await;
    }

    async fn run_term(&self) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let mut tasks = Vec::new();
        let nodes = spawn_reflector::<Node>(Api::all(self.client.clone()), &tx, &mut tasks);
        let classes =
            spawn_reflector::<NetworkClass>(Api::all(self.client.clone()), &tx, &mut tasks);
        let cluster_classes =
            spawn_reflector::<ClusterNetworkClass>(Api::all(self.client.clone()), &tx, &mut tasks);
        let _guard = AbortOnDrop(tasks);
        if nodes.wait_until_ready().await.is_err()
            || classes.wait_until_ready().await.is_err()
            || cluster_classes.wait_until_ready().await.is_err()
        {
            return;
        }
        let mut failures = 0u32;
        loop {
            let nodes_now = nodes.state();
            let node_refs: Vec<&Node> = nodes_now.iter().map(AsRef::as_ref).collect();
            let mut failed = false;
            for c in classes.state() {
                if let Err(e) = sync_one(&self.client, c.as_ref(), &node_refs).await {
                    tracing::warn!(error = %e, "networkclass status");
                    failed = true;
                }
            }
            for c in cluster_classes.state() {
                if let Err(e) = sync_one(&self.client, c.as_ref(), &node_refs).await {
                    tracing::warn!(error = %e, "clusternetworkclass status");
                    failed = true;
                }
            }
            let wait = if failed {
                failures = failures.saturating_add(1);
                crate::backoff(self.cfg.initial_backoff, self.cfg.max_backoff, failures)
            } else {
                failures = 0;
                self.cfg.resync
            };
            if failed {
                // Sit the backoff out before looking at events again: with many nodes an event
                // arrives every few milliseconds, and a failing write would be retried at that
                // pace instead.
                tokio::time::sleep(wait).await;
                continue;
            }
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Writes the status of one class when it differs from the computed one.
async fn sync_one<K: NetworkKind>(
    client: &Client,
    class: &K,
    nodes: &[&Node],
) -> Result<(), NetworkClassError> {
    if class.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let needs = required_plugins(class.spec());
    let ready = ready_nodes(&needs, nodes.iter().copied());
    let new = desired_status(class.status(), ready, class.meta().generation);
    if same_status(class.status(), &new) {
        return Ok(());
    }
    let name = class.name_any();
    let api = class.api(client);
    // A merge patch of the whole status: an empty readyNodes must be written as [] to clear it.
    let patch = json!({"status": {
        "readyNodes": new.ready_nodes,
        "conditions": new.conditions,
        "observedGeneration": new.observed_generation,
    }});
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(class = %name, ready_nodes = ?new.ready_nodes, "network readiness changed");
            Ok(())
        }
        // Deleted meanwhile: nothing to report on.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(NetworkClassError::Api {
            action: format!("updating the status of {} {name}", K::kind(&())),
            source,
        }),
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

/// A reflector over `api` whose every applied change pokes `notify` (coalesced).
fn spawn_reflector<K>(
    api: Api<K>,
    notify: &mpsc::Sender<()>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
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
    tasks.push(tokio::spawn(poke_on_events(stream, notify.clone())));
    reader
}

async fn poke_on_events<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    notify: mpsc::Sender<()>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => {
                let _ = notify.try_send(());
            }
            Err(e) => tracing::debug!(error = %e, "networkclass controller watch error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeCondition;
    use tugboat_api::kinds::core::{CniPluginStatus, NodeStatus};

    fn node(name: &str, ready: &str, plugins: &[(&str, bool)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.status = Some(NodeStatus {
            conditions: vec![NodeCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..NodeCondition::default()
            }],
            cni_plugins: plugins
                .iter()
                .map(|(p, r)| CniPluginStatus {
                    name: (*p).into(),
                    ready: *r,
                    message: None,
                })
                .collect(),
            ..NodeStatus::default()
        });
        n
    }

    #[test]
    fn plugins_come_from_the_spec_and_a_conflist() {
        let spec = NetworkClassSpec {
            cni_plugin: "flannel".into(),
            config: Some(json!({"plugins": [{"type": "flannel"}, {"type": "portmap"}]})),
            ..NetworkClassSpec::default()
        };
        let want: BTreeSet<String> = ["flannel", "portmap"].map(String::from).into();
        assert_eq!(required_plugins(&spec), want);
        let as_string = NetworkClassSpec {
            config: Some(json!(r#"{"plugins":[{"type":"portmap"}]}"#)),
            ..spec
        };
        assert_eq!(required_plugins(&as_string), want);
    }

    #[test]
    fn only_ready_nodes_with_every_plugin_count() {
        let needs: BTreeSet<String> = ["bridge".to_string()].into();
        let nodes = [
            node("b", "True", &[("bridge", true)]),
            node("a", "True", &[("bridge", true), ("portmap", false)]),
            node("c", "True", &[("bridge", false)]),
            node("d", "Unknown", &[("bridge", true)]),
            node("e", "True", &[]),
        ];
        assert_eq!(ready_nodes(&needs, nodes.iter()), vec!["a", "b"]);
    }

    #[test]
    fn unchanged_status_is_not_rewritten() {
        let first = desired_status(None, vec!["a".into()], Some(1));
        let again = desired_status(Some(&first), vec!["a".into()], Some(1));
        assert!(same_status(Some(&first), &again));
        assert_eq!(
            first.conditions[0].last_transition_time,
            again.conditions[0].last_transition_time
        );
        let gone = desired_status(Some(&first), Vec::new(), Some(1));
        assert!(!same_status(Some(&first), &gone));
        assert_eq!(gone.conditions[0].status, "False");
    }
}
