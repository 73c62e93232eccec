//! The Fleet controller: one ReplicaSet per Fleet component, all on the Fleet's network.
//!
//! For each component the Fleet owns (controller reference) a ReplicaSet `<fleet>-<component>`
//! selecting the labels `tugboat.io/fleet=<fleet>` and `tugboat.io/fleet-component=<component>`,
//! which its Ship template carries besides the component's own labels. The Fleet's
//! `spec.networkClassName` is written into every Ship template (`spec.networkClassName`,
//! replacing a `clusterNetworkClassName`: the components share the Fleet's private network).
//! A component's replicas and template changes are written to its ReplicaSet (which, like a
//! Kubernetes ReplicaSet, applies a new template to the Ships it creates from then on); the
//! ReplicaSets of removed components are deleted (their Ships with them). `status` counts the
//! components whose ReplicaSet has all its Ships ready.
//!
//! Only the leader reconciles: [`FleetController::run`] follows a leadership channel (see
//! [`crate::leader`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tugboat_api::kinds::apps::{
    Fleet, FleetComponent, FleetComponentStatus, FleetStatus, ReplicaSet, ReplicaSetSpec,
};
use tugboat_api::kinds::{Condition, Selector};

use crate::backoff;
use crate::deployment::spawn_cache;
use crate::leader::wait_not_leader;

/// Label naming the Fleet of a component's ReplicaSet and Ships.
pub const FLEET_LABEL: &str = "tugboat.io/fleet";
/// Label naming the component of a Fleet's ReplicaSet and Ships.
pub const COMPONENT_LABEL: &str = "tugboat.io/fleet-component";

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The Fleet lacks a name, namespace or uid.
    #[error("fleet is missing metadata.{0}")]
    MissingMetadata(&'static str),
    /// A component's ReplicaSet name is taken by a ReplicaSet the Fleet does not control.
    #[error("replicaset {0} exists and is not controlled by the fleet")]
    NotOurs(String),
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

/// Settings of a [`FleetController`].
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Requeue delay after the first failed reconcile; doubles per consecutive failure.
    pub initial_backoff: Duration,
    /// Longest requeue delay after failures.
    pub max_backoff: Duration,
    /// Periodic resync of every Fleet.
    pub resync: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            resync: Duration::from_secs(300),
        }
    }
}

/// State shared by the reconciles of one leadership term.
struct Context {
    client: Client,
    cfg: FleetConfig,
    replicasets: Store<ReplicaSet>,
    /// Fleet `namespace/name` → consecutive failures.
    failures: Mutex<HashMap<String, u32>>,
}

/// The Fleet controller (see the module docs).
pub struct FleetController {
    client: Client,
    cfg: FleetConfig,
}

impl FleetController {
    /// A controller using `client`.
    pub fn new(client: Client, cfg: FleetConfig) -> Self {
        FleetController { client, cfg }
    }

    /// Reconciles while `is_leader` is true; returns when its sender is dropped.
    pub async fn run(self, is_leader: watch::Receiver<bool>) {
        crate::leader::run_terms("fleet controller", is_leader, |rx| self.run_term(rx)).await;
    }

    /// One leadership term: runs the Controller until leadership is lost.
    async fn run_term(&self, is_leader: watch::Receiver<bool>) {
        // ReplicaSet changes (status above all) trigger a pass over the Fleets, after the cache
        // the reconciles read has applied them.
        let (cache_tx, cache_rx) = tokio::sync::mpsc::channel::<()>(1);
        let (reader, task) = spawn_cache::<ReplicaSet>(&self.client, cache_tx);
        let cache_changed = futures::stream::unfold(cache_rx, |mut rx| async move {
            rx.recv().await.map(|()| ((), rx))
        });
        let mut leader_rx = is_leader.clone();
        let ready = tokio::select! {
            r = reader.wait_until_ready() => r.is_ok(),
            _ = wait_not_leader(&mut leader_rx) => false,
        };
        if ready {
            let ctx = Arc::new(Context {
                client: self.client.clone(),
                cfg: self.cfg.clone(),
                replicasets: reader,
                failures: Mutex::new(HashMap::new()),
            });
            let mut shutdown_rx = is_leader;
            Controller::new(
                Api::<Fleet>::all(self.client.clone()),
                watcher::Config::default(),
            )
            .reconcile_all_on(cache_changed)
            .graceful_shutdown_on(async move { wait_not_leader(&mut shutdown_rx).await })
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "fleet reconcile");
                }
            })
            .await;
        }
        task.abort();
    }
}

fn fleet_key(f: &Fleet) -> String {
    format!(
        "{}/{}",
        f.metadata.namespace.as_deref().unwrap_or(""),
        f.metadata.name.as_deref().unwrap_or("")
    )
}

fn error_policy(f: Arc<Fleet>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    let key = fleet_key(&f);
    let failures = match ctx.failures.lock() {
        Ok(mut m) => {
            let n = m.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let delay = backoff(ctx.cfg.initial_backoff, ctx.cfg.max_backoff, failures);
    tracing::warn!(fleet = %key, error = %err, ?delay, "reconcile failed; requeueing");
    Action::requeue(delay)
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    move |source| ReconcileError::Api { action, source }
}

fn controller_uid(rs: &ReplicaSet) -> Option<&str> {
    rs.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// The ReplicaSet spec and labels component `c` of Fleet `fleet` should have.
fn desired_spec(
    fleet: &str,
    network: Option<&str>,
    c: &FleetComponent,
) -> (BTreeMap<String, String>, ReplicaSetSpec) {
    let ours: BTreeMap<String, String> = [
        (FLEET_LABEL.to_string(), fleet.to_string()),
        (COMPONENT_LABEL.to_string(), c.name.clone()),
    ]
    .into();
    let mut template = c.ship_template.clone();
    template
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(ours.clone());
    if let Some(n) = network {
        template.spec.network_class_name = Some(n.to_string());
        template.spec.cluster_network_class_name = None;
    }
    template.spec.apply_defaults();
    let spec = ReplicaSetSpec {
        replicas: Some(c.replicas.unwrap_or(1)),
        min_ready_seconds: None,
        selector: Selector::Map(ours.clone()),
        ship_template: template,
        template: None,
    };
    (ours, spec)
}

async fn reconcile(fleet: Arc<Fleet>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = fleet
        .metadata
        .name
        .clone()
        .ok_or(ReconcileError::MissingMetadata("name"))?;
    let ns = fleet
        .metadata
        .namespace
        .clone()
        .ok_or(ReconcileError::MissingMetadata("namespace"))?;
    let uid = fleet
        .metadata
        .uid
        .clone()
        .ok_or(ReconcileError::MissingMetadata("uid"))?;
    if fleet.metadata.deletion_timestamp.is_some() {
        // The apiserver's garbage collection removes the ReplicaSets and their Ships.
        return Ok(Action::await_change());
    }
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let owned: BTreeMap<String, ReplicaSet> = ctx
        .replicasets
        .state()
        .iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|rs| controller_uid(rs) == Some(uid.as_str()))
        .map(|rs| (rs.name_any(), (**rs).clone()))
        .collect();
    let network = fleet.spec.network_class_name.as_deref();

    let mut statuses = Vec::new();
    let mut wanted = BTreeSet::new();
    for c in &fleet.spec.components {
        let rs_name = format!("{name}-{}", c.name);
        wanted.insert(rs_name.clone());
        let (labels, spec) = desired_spec(&name, network, c);
        let rs = match owned.get(&rs_name) {
            Some(rs) => update_replicaset(&api, rs, &labels, spec).await?,
            None => create_replicaset(&api, &name, &uid, &rs_name, labels, spec).await?,
        };
        let desired = c.replicas.unwrap_or(1);
        let st = rs.status.clone().unwrap_or_default();
        let current =
            rs.metadata.generation.is_some() && st.observed_generation >= rs.metadata.generation;
        let ready = st.ready_replicas.unwrap_or(0);
        statuses.push(FleetComponentStatus {
            name: c.name.clone(),
            replicas: Some(st.replicas),
            ready_replicas: Some(ready),
            // The ReplicaSet has acted on the component's current template and count.
            updated_replicas: Some(if current { st.replicas } else { 0 }),
            ready: Some(current && st.replicas == desired && ready >= desired),
        });
    }

    // Components removed from the Fleet.
    for (rs_name, rs) in &owned {
        if wanted.contains(rs_name) || rs.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(rs_name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(fleet = %name, replicaset = %rs_name, "deleted removed component")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting replicaset {ns}/{rs_name}"))(e)),
        }
    }

    write_status(&ctx, &fleet, &ns, &name, statuses).await?;
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&fleet_key(&fleet));
    }
    Ok(Action::requeue(ctx.cfg.resync))
}

async fn create_replicaset(
    api: &Api<ReplicaSet>,
    fleet: &str,
    uid: &str,
    rs_name: &str,
    labels: BTreeMap<String, String>,
    spec: ReplicaSetSpec,
) -> Result<ReplicaSet, ReconcileError> {
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(rs_name.to_string()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Fleet".into(),
                name: fleet.to_string(),
                uid: uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec,
        ..ReplicaSet::default()
    };
    match api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            tracing::info!(fleet = %fleet, replicaset = %rs_name, "created");
            Ok(created)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // The cache has not shown our own create yet, or the name is someone else's.
            let existing = api
                .get(rs_name)
                .await
                .map_err(api_err(format!("reading replicaset {rs_name}")))?;
            if controller_uid(&existing) == Some(uid) {
                Ok(existing)
            } else {
                Err(ReconcileError::NotOurs(rs_name.to_string()))
            }
        }
        Err(e) => Err(api_err(format!("creating replicaset {rs_name}"))(e)),
    }
}

/// Replaces `rs`'s replicas, template and labels when they differ from the component's
/// (a replace, not a merge patch, so labels removed from the template go).
async fn update_replicaset(
    api: &Api<ReplicaSet>,
    rs: &ReplicaSet,
    labels: &BTreeMap<String, String>,
    spec: ReplicaSetSpec,
) -> Result<ReplicaSet, ReconcileError> {
    let rs_labels = rs.metadata.labels.clone().unwrap_or_default();
    let labels_ok = labels.iter().all(|(k, v)| rs_labels.get(k) == Some(v));
    if labels_ok && rs.spec.replicas == spec.replicas && rs.spec.ship_template == spec.ship_template
    {
        return Ok(rs.clone());
    }
    let mut next = rs.clone();
    next.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels.clone());
    next.spec.replicas = spec.replicas;
    next.spec.ship_template = spec.ship_template;
    let rs_name = rs.name_any();
    // Carries the cached resourceVersion: a concurrent change makes this a 409 and a retry.
    let updated = api
        .replace(&rs_name, &PostParams::default(), &next)
        .await
        .map_err(api_err(format!("updating replicaset {rs_name}")))?;
    tracing::info!(replicaset = %rs_name, "updated from its fleet component");
    Ok(updated)
}

async fn write_status(
    ctx: &Context,
    fleet: &Fleet,
    ns: &str,
    name: &str,
    components: Vec<FleetComponentStatus>,
) -> Result<(), ReconcileError> {
    let prev = fleet.status.clone().unwrap_or_default();
    let total = i32::try_from(components.len()).unwrap_or(i32::MAX);
    let ready = i32::try_from(components.iter().filter(|c| c.ready == Some(true)).count())
        .unwrap_or(i32::MAX);
    let (status, reason, message) = if ready == total {
        (
            "True",
            "AllComponentsReady",
            "Every component has all its Ships ready.".to_string(),
        )
    } else {
        (
            "False",
            "ComponentsNotReady",
            format!("{ready} of {total} components have all their Ships ready."),
        )
    };
    let prev_ready = prev.conditions.iter().find(|c| c.type_ == "Ready");
    let unchanged = prev_ready.is_some_and(|c| {
        c.status == status
            && c.reason.as_deref() == Some(reason)
            && c.message.as_ref() == Some(&message)
            && c.observed_generation == fleet.metadata.generation
    });
    let ready_cond = match prev_ready {
        Some(c) if unchanged => c.clone(),
        _ => Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            // A new generation with the same status is no transition.
            last_transition_time: match prev_ready {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => Some(Time(jiff::Timestamp::now())),
            },
            last_probe_time: None,
            observed_generation: fleet.metadata.generation,
        },
    };
    let mut conditions: Vec<Condition> = prev
        .conditions
        .iter()
        .filter(|c| c.type_ != "Ready")
        .cloned()
        .collect();
    conditions.push(ready_cond);
    let new = FleetStatus {
        observed_generation: fleet.metadata.generation,
        ready_components: Some(ready),
        total_components: Some(total),
        components,
        conditions,
    };
    if new != prev {
        let api: Api<Fleet> = Api::namespaced(ctx.client.clone(), ns);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": new })),
        )
        .await
        .map_err(api_err(format!("updating status of fleet {ns}/{name}")))?;
    }
    Ok(())
}
