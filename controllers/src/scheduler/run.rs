//! The scheduling loop: kube-rs reflectors of Nodes, Ships and the classes feed a queue of
//! unscheduled Ships (per-Ship exponential backoff); each is filtered and scored
//! ([`super::schedule`]) and bound with a JSON merge patch of `spec.nodeName` that carries the
//! Ship's `metadata.resourceVersion` as a precondition, so a Ship changed or bound by someone
//! else meanwhile is never double-bound (409 Conflict). Then `status.phase` becomes
//! `Scheduled`. When nothing fits, a `FailedScheduling` Warning Event explains why (throttled
//! per Ship).
//!
//! Binds are pipelined: a decision is assumed at once (the Ship counts on its node for every
//! later decision) and its bind runs in a task, up to [`SchedulerConfig::max_binds_in_flight`]
//! at a time; a failed bind drops the assumption and backs the Ship off. A Ship with a bind in
//! flight is never scheduled again, and the precondition makes a stale decision a 409, so no
//! Ship is bound twice.
//!
//! Only the leader schedules: [`Scheduler::run`] follows a leadership channel (see
//! [`crate::leader`]).

use crate::leader::wait_not_leader;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EventSource, Namespace, ObjectReference, PersistentVolume, PersistentVolumeClaim,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tugboat_api::kinds::core::{
    ClusterNetworkClass, Event, NetworkClass, Node, RuntimeClass, Ship, ShipClass, StorageClass,
};

use super::{nodes_to_find, schedule, ClusterState, ScheduleError};

/// Errors of binding one Ship.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The Ship changed (or was bound) since it was read: the precondition failed.
    #[error("ship {0} changed since it was read")]
    Conflict(String),
    /// Another apiserver error.
    #[error("binding ship {ship}: {source}")]
    Api {
        /// `namespace/name`.
        ship: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// Settings of a [`Scheduler`].
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// `source.component` / `reportingComponent` of the Events.
    pub component: String,
    /// `reportingInstance` of the Events (e.g. the host).
    pub instance: String,
    /// Backoff after the first failed attempt; doubles per failure.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// At most one `FailedScheduling` Event per Ship per this interval (unless its message
    /// changes).
    pub event_interval: Duration,
    /// Rescan period when no watch event arrives.
    pub resync: Duration,
    /// Bindings running at once; decisions wait for a slot beyond that.
    pub max_binds_in_flight: usize,
    /// Look at only part of a large cluster per decision (kube-scheduler's adaptive
    /// `percentageOfNodesToScore`, see [`super::nodes_to_find`]); `false`: every node.
    pub sample_nodes: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            component: "tugboat-scheduler".into(),
            instance: String::new(),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            event_interval: Duration::from_secs(30),
            resync: Duration::from_secs(1),
            max_binds_in_flight: 64,
            sample_nodes: true,
        }
    }
}

/// `namespace/name` of a Ship.
fn key(ship: &Ship) -> String {
    format!(
        "{}/{}",
        ship.metadata.namespace.as_deref().unwrap_or(""),
        ship.metadata.name.as_deref().unwrap_or("")
    )
}

#[derive(Clone, Debug)]
struct Backoff {
    failures: u32,
    next: Instant,
}

/// The reflector stores the scheduler reads.
#[derive(Clone)]
struct Stores {
    nodes: Store<Node>,
    ships: Store<Ship>,
    ship_classes: Store<ShipClass>,
    runtime_classes: Store<RuntimeClass>,
    network_classes: Store<NetworkClass>,
    cluster_network_classes: Store<ClusterNetworkClass>,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    storage_classes: Store<DynamicObject>,
    namespaces: Store<Namespace>,
}

/// A Ship the scheduler placed whose binding the reflector does not show yet.
#[derive(Clone, Debug)]
struct Assumed {
    node: String,
    /// When the decision (or, once the bind returned, the bind) happened.
    at: Instant,
    /// The bind request has not answered yet: the assumption never expires meanwhile.
    in_flight: bool,
}

/// The answer of one bind task: Ship key and result.
type BindResult = (String, Result<(), BindError>);

/// `ApiResource` of Tugboat's `v1` StorageClass (core group, unlike Kubernetes' storage.k8s.io).
fn storage_class_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("", "v1", "StorageClass"),
        "storageclasses",
    )
}

/// Aborts the reflector tasks when dropped.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    notify: Arc<Notify>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
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
                tracing::debug!(error = %e, "scheduler watch error");
            }
            notify.notify_one();
        }
    }));
    reader
}

fn spawn_dynamic_reflector(
    api: Api<DynamicObject>,
    ar: ApiResource,
    notify: Arc<Notify>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<DynamicObject> {
    let writer = reflector::store::Writer::<DynamicObject>::new(ar);
    let reader = writer.as_reader();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).modify(crate::lean),
    )
    .default_backoff();
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::debug!(error = %e, "scheduler watch error");
            }
            notify.notify_one();
        }
    }));
    reader
}

/// The Ship scheduler (see the module docs).
pub struct Scheduler {
    client: Client,
    cfg: SchedulerConfig,
    backoff: HashMap<String, Backoff>,
    /// Ships bound by us that the reflector does not show bound yet.
    assumed: HashMap<String, Assumed>,
    /// Last FailedScheduling Event per Ship: (message, time).
    events: HashMap<String, (String, Instant)>,
    /// Fingerprint of the nodes at the last cycle: a change retries unschedulable Ships now.
    node_fingerprint: Vec<(String, String)>,
    /// Bind tasks answer here.
    results_tx: mpsc::UnboundedSender<BindResult>,
    results_rx: mpsc::UnboundedReceiver<BindResult>,
    /// Slots for binds in flight.
    bind_slots: Arc<Semaphore>,
}

impl Scheduler {
    /// A scheduler using `client`.
    pub fn new(client: Client, cfg: SchedulerConfig) -> Self {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let bind_slots = Arc::new(Semaphore::new(cfg.max_binds_in_flight.max(1)));
        Scheduler {
            client,
            cfg,
            backoff: HashMap::new(),
            assumed: HashMap::new(),
            events: HashMap::new(),
            node_fingerprint: Vec::new(),
            results_tx,
            results_rx,
            bind_slots,
        }
    }

    /// Schedules while `is_leader` is true; returns when its sender is dropped.
    pub async fn run(mut self, mut is_leader: watch::Receiver<bool>) {
        loop {
            // Wait for leadership (or the end).
            while !*is_leader.borrow_and_update() {
                if is_leader.changed().await.is_err() {
                    return;
                }
            }
            tracing::info!("scheduler active");
            let notify = Arc::new(Notify::new());
            let mut tasks = Vec::new();
            let c = &self.client;
            let stores = Stores {
                nodes: spawn_reflector(Api::all(c.clone()), notify.clone(), &mut tasks),
                ships: spawn_reflector(Api::all(c.clone()), notify.clone(), &mut tasks),
                ship_classes: spawn_reflector(Api::all(c.clone()), notify.clone(), &mut tasks),
                runtime_classes: spawn_reflector(Api::all(c.clone()), notify.clone(), &mut tasks),
                network_classes: spawn_reflector(Api::all(c.clone()), notify.clone(), &mut tasks),
                cluster_network_classes: spawn_reflector(
                    Api::all(c.clone()),
                    notify.clone(),
                    &mut tasks,
                ),
                claims: spawn_reflector(Api::all(c.clone()), notify.clone(), &mut tasks),
                volumes: spawn_reflector(Api::all(c.clone()), notify.clone(), &mut tasks),
                storage_classes: spawn_dynamic_reflector(
                    Api::all_with(c.clone(), &storage_class_resource()),
                    storage_class_resource(),
                    notify.clone(),
                    &mut tasks,
                ),
                namespaces: spawn_reflector(Api::all(c.clone()), notify.clone(), &mut tasks),
            };
            let tasks = Tasks(tasks);
            let ready = async {
                let _ = stores.nodes.wait_until_ready().await;
                let _ = stores.ships.wait_until_ready().await;
                let _ = stores.ship_classes.wait_until_ready().await;
                let _ = stores.runtime_classes.wait_until_ready().await;
                let _ = stores.network_classes.wait_until_ready().await;
                let _ = stores.cluster_network_classes.wait_until_ready().await;
                let _ = stores.claims.wait_until_ready().await;
                let _ = stores.volumes.wait_until_ready().await;
                let _ = stores.storage_classes.wait_until_ready().await;
                let _ = stores.namespaces.wait_until_ready().await;
            };
            let still_leader = tokio::select! {
                _ = ready => true,
                _ = wait_not_leader(&mut is_leader) => false,
            };
            if still_leader {
                loop {
                    self.cycle(&stores, &is_leader, &notify).await;
                    tokio::select! {
                        _ = notify.notified() => {}
                        _ = tokio::time::sleep(self.cfg.resync) => {}
                        _ = wait_not_leader(&mut is_leader) => break,
                    }
                }
            }
            drop(tasks);
            self.assumed.clear();
            self.backoff.clear();
            if is_leader.has_changed().is_err() {
                return;
            }
            tracing::info!("scheduler standing by");
        }
    }

    /// Takes in the answers of finished binds.
    fn collect_results(&mut self) {
        while let Ok((k, result)) = self.results_rx.try_recv() {
            let Some(a) = self.assumed.get_mut(&k).filter(|a| a.in_flight) else {
                // From an earlier leadership term: the assumption is gone already.
                continue;
            };
            match result {
                Ok(()) => {
                    a.in_flight = false;
                    a.at = Instant::now();
                    self.backoff.remove(&k);
                    self.events.remove(&k);
                }
                Err(e) => {
                    if !matches!(e, BindError::Conflict(_)) {
                        tracing::warn!(error = %e, "bind failed");
                    }
                    // Someone else changed the Ship (or the bind failed): decide again after
                    // the backoff, from what the watch shows by then.
                    self.assumed.remove(&k);
                    self.fail(&k);
                }
            }
        }
    }

    /// One pass over the unscheduled Ships.
    async fn cycle(
        &mut self,
        stores: &Stores,
        is_leader: &watch::Receiver<bool>,
        notify: &Arc<Notify>,
    ) {
        self.collect_results();
        let nodes = stores.nodes.state();
        let mut fingerprint: Vec<(String, String)> = nodes
            .iter()
            .map(|n| {
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    n.metadata.resource_version.clone().unwrap_or_default(),
                )
            })
            .collect();
        fingerprint.sort();
        if fingerprint != self.node_fingerprint {
            // Nodes changed: Ships that did not fit may fit now.
            self.backoff.clear();
            self.node_fingerprint = fingerprint;
        }

        let ships = stores.ships.state();
        let now = Instant::now();
        let mut pending = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(ships.len());
        for ship in &ships {
            let k = key(ship);
            let bound = ship
                .spec
                .node_name
                .as_deref()
                .is_some_and(|n| !n.is_empty());
            if bound {
                self.assumed.remove(&k);
            } else if !self.assumed.contains_key(&k)
                && ship.metadata.deletion_timestamp.is_none()
                && self.backoff.get(&k).is_none_or(|b| b.next <= now)
            {
                pending.push(ship.clone());
            }
            seen.insert(k);
        }
        // Forget Ships that are gone, and finished binds the watch never confirmed.
        self.assumed.retain(|k, a| {
            seen.contains(k) && (a.in_flight || a.at.elapsed() < Duration::from_secs(30))
        });
        self.backoff.retain(|k, _| seen.contains(k));
        self.events.retain(|k, _| seen.contains(k));
        if pending.is_empty() {
            return;
        }

        let mut state = ClusterState::new(
            nodes,
            stores.ship_classes.state(),
            stores.runtime_classes.state(),
            stores.network_classes.state(),
            stores.cluster_network_classes.state(),
        )
        .with_storage(
            stores.claims.state(),
            stores.volumes.state(),
            stores
                .storage_classes
                .state()
                .iter()
                .filter_map(|o| dynamic_to_storage_class(o).map(Arc::new)),
        );
        state.namespace_labels = stores
            .namespaces
            .state()
            .iter()
            .map(|n| {
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    n.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect();
        if self.cfg.sample_nodes {
            state.feasible_limit = nodes_to_find(state.nodes.len());
        }
        for ship in &ships {
            match ship.spec.node_name.as_deref().filter(|n| !n.is_empty()) {
                Some(node) => {
                    if !matches!(
                        ship.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Failed")
                    ) {
                        state.place(ship, node);
                    }
                }
                None => {
                    if let Some(a) = self.assumed.get(&key(ship)) {
                        state.place(ship, &a.node);
                    }
                }
            }
        }
        drop(ships);

        pending.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        for ship in pending {
            if !*is_leader.borrow() {
                return;
            }
            let k = key(&ship);
            match schedule(&ship, &mut state) {
                Ok(decision) => {
                    tracing::debug!(ship = %k, node = %decision.node, "assumed");
                    state.place(&ship, &decision.node);
                    self.assumed.insert(
                        k.clone(),
                        Assumed {
                            node: decision.node.clone(),
                            at: Instant::now(),
                            in_flight: true,
                        },
                    );
                    // Waiting for a slot is the backpressure: decisions stay at most
                    // `max_binds_in_flight` ahead of the apiserver.
                    let Ok(permit) = self.bind_slots.clone().acquire_owned().await else {
                        return;
                    };
                    let client = self.client.clone();
                    let tx = self.results_tx.clone();
                    let notify = notify.clone();
                    tokio::spawn(async move {
                        let r = bind(&client, &ship, &decision.node).await;
                        drop(permit);
                        if r.is_err() {
                            // Only failures need the loop's attention soon.
                            notify.notify_one();
                        }
                        let _ = tx.send((k, r));
                    });
                }
                Err(e) => {
                    self.fail(&k);
                    self.record_failure(&ship, &e);
                }
            }
        }
        self.collect_results();
    }

    fn fail(&mut self, k: &str) {
        let b = self.backoff.entry(k.to_string()).or_insert(Backoff {
            failures: 0,
            next: Instant::now(),
        });
        b.failures = b.failures.saturating_add(1);
        let delay = crate::backoff(self.cfg.initial_backoff, self.cfg.max_backoff, b.failures);
        b.next = Instant::now() + delay;
    }

    /// Binds `ship` to `node` (see [`bind`]).
    pub async fn bind(&self, ship: &Ship, node: &str) -> Result<(), BindError> {
        bind(&self.client, ship, node).await
    }

    /// Records a `FailedScheduling` Warning Event (throttled per Ship).
    fn record_failure(&mut self, ship: &Ship, err: &ScheduleError) {
        let k = key(ship);
        let message = err.to_string();
        if let Some((last, at)) = self.events.get(&k) {
            if *last == message && at.elapsed() < self.cfg.event_interval {
                return;
            }
        }
        self.events
            .insert(k.clone(), (message.clone(), Instant::now()));
        let ns = ship
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let ship_name = ship.metadata.name.clone().unwrap_or_default();
        let now = jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{ship_name}.{:016x}", rand::random::<u64>())),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Ship".into()),
                name: Some(ship_name),
                namespace: Some(ns.clone()),
                uid: ship.metadata.uid.clone(),
                resource_version: ship.metadata.resource_version.clone(),
                ..ObjectReference::default()
            },
            reason: Some("FailedScheduling".into()),
            message: Some(message),
            source: Some(EventSource {
                component: Some(self.cfg.component.clone()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            type_: Some("Warning".into()),
            event_time: Some(MicroTime(now)),
            action: Some("Scheduling".into()),
            reporting_component: Some(self.cfg.component.clone()),
            reporting_instance: Some(self.cfg.instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        // Off the scheduling path: an Event is best effort and must not slow decisions.
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(ship = %k, error = %e, "recording FailedScheduling event failed");
            }
        });
    }
}

/// Binds `ship` to `node` through the Ship's `binding` subresource: one write that sets
/// `spec.nodeName` only if the Ship is still unbound (and still the same object), adds the
/// agent's finalizer and records phase `Scheduled`.
pub async fn bind(client: &Client, ship: &Ship, node: &str) -> Result<(), BindError> {
    let k = key(ship);
    let ns = ship.metadata.namespace.as_deref().unwrap_or("default");
    let name = ship.metadata.name.as_deref().unwrap_or("");
    let api: Api<Ship> = Api::namespaced(client.clone(), ns);
    // The `binding` subresource assigns only an unbound Ship (409 otherwise) and, in the same
    // write, adds the agent's finalizer and phase Scheduled; naming the uid keeps a Ship
    // deleted and re-created under the same name from being bound by an old decision.
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": ship.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    match api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => return Err(BindError::Conflict(k)),
        Err(source) => return Err(BindError::Api { ship: k, source }),
    }
    Ok(())
}

/// Tugboat's StorageClass from a dynamic object (`None` if it does not decode).
fn dynamic_to_storage_class(o: &DynamicObject) -> Option<StorageClass> {
    let mut value = o.data.clone();
    let map = value.as_object_mut()?;
    map.insert("metadata".into(), serde_json::to_value(&o.metadata).ok()?);
    serde_json::from_value(value).ok()
}
