//! The ReplicaSet controller: keeps exactly `spec.replicas` Ships matching each ReplicaSet's
//! selector.
//!
//! A kube-runtime [`Controller`] over ReplicaSets, plus a watch on Ships mapped back to their
//! controlling ReplicaSet (by ownerReference) or, for orphans, to every ReplicaSet of the
//! namespace whose selector matches them. Reconciles read a separate Ship cache (a reflector);
//! every change that cache applies also triggers a pass over all ReplicaSets, so a reconcile
//! that ran on a cache older than its trigger is always followed by one on the newer cache.
//! One reconcile:
//!
//! 1. claims Ships: owned ones that still match stay, owned ones that no longer match are
//!    released (ownerReference removed), matching orphans are adopted (ownerReference added);
//!    Ships being deleted are ignored;
//! 2. creates missing Ships from `spec.shipTemplate` (`generateName: <rs-name>-`) or deletes
//!    the surplus (unscheduled first, then not Running, then newest);
//! 3. writes `status` through `/status` when it changed.
//!
//! The Ship cache lags behind our own writes, so creates and deletes are recorded as
//! *expectations*: a Ship we created counts as existing until the cache shows it, one we
//! deleted counts as gone until the cache drops it (each with a time-to-live, in case the
//! cache never sees the change). This keeps the controller from over-creating while its own
//! creates are in flight.
//!
//! Only the leader reconciles: [`ReplicaSetController::run`] follows a leadership channel (see
//! [`crate::leader`]).

use crate::leader::wait_not_leader;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tugboat_api::kinds::apps::{ReplicaSet, ReplicaSetStatus};
use tugboat_api::kinds::core::Ship;

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The ReplicaSet lacks a name, namespace or uid.
    #[error("replicaset is missing metadata.{0}")]
    MissingMetadata(&'static str),
    /// A lock of the controller's state was poisoned by a panicking reconcile.
    #[error("controller state lock poisoned")]
    Poisoned,
    /// A Ship changed since it was read (resourceVersion precondition failed).
    #[error("ship {0} changed since it was read")]
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

/// Settings of a [`ReplicaSetController`].
#[derive(Clone, Debug)]
pub struct ReplicaSetConfig {
    /// Requeue delay after the first failed reconcile; doubles per consecutive failure.
    pub initial_backoff: Duration,
    /// Longest requeue delay after failures.
    pub max_backoff: Duration,
    /// Periodic resync of every ReplicaSet.
    pub resync: Duration,
    /// How long an unobserved create/delete expectation is trusted.
    pub expectation_ttl: Duration,
}

impl Default for ReplicaSetConfig {
    fn default() -> Self {
        ReplicaSetConfig {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            resync: Duration::from_secs(300),
            expectation_ttl: Duration::from_secs(30),
        }
    }
}

/// Creates and deletes of one ReplicaSet that the Ship cache has not shown yet.
#[derive(Default, Debug)]
struct Expectations {
    /// Names of Ships we created → when.
    created: HashMap<String, Instant>,
    /// Names of Ships we deleted → when.
    deleted: HashMap<String, Instant>,
}

/// State shared by the reconciles of one leadership term.
struct Context {
    client: Client,
    cfg: ReplicaSetConfig,
    ships: Store<Ship>,
    /// ReplicaSet uid → expectations.
    expectations: Mutex<HashMap<String, Expectations>>,
    /// ReplicaSet `namespace/name` → consecutive failures.
    failures: Mutex<HashMap<String, u32>>,
}

/// The ReplicaSet controller (see the module docs).
pub struct ReplicaSetController {
    client: Client,
    cfg: ReplicaSetConfig,
}

fn rs_key(rs: &ReplicaSet) -> String {
    format!(
        "{}/{}",
        rs.metadata.namespace.as_deref().unwrap_or(""),
        rs.metadata.name.as_deref().unwrap_or("")
    )
}

/// The controlling ownerReference of `ship`, if any.
fn controller_ref(ship: &Ship) -> Option<&OwnerReference> {
    ship.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

fn labels_of(ship: &Ship) -> BTreeMap<String, String> {
    ship.metadata.labels.clone().unwrap_or_default()
}

fn phase(ship: &Ship) -> Option<&str> {
    ship.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn is_running(ship: &Ship) -> bool {
    phase(ship) == Some("Running")
}

fn is_scheduled(ship: &Ship) -> bool {
    ship.spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty())
}

/// Maps a Ship to the ReplicaSets that may care about it: its controlling ReplicaSet, or for
/// an orphan every ReplicaSet of its namespace whose selector matches it.
fn ship_to_replicasets(ship: &Ship, replicasets: &Store<ReplicaSet>) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = ship.metadata.namespace.clone().unwrap_or_default();
    if let Some(owner) = controller_ref(ship) {
        if owner.kind == "ReplicaSet" && owner.api_version.starts_with("apps/") {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return Vec::new();
    }
    let labels = labels_of(ship);
    replicasets
        .state()
        .iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|rs| !rs.spec.selector.is_empty() && rs.spec.selector.matches(&labels))
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

/// Order of surplus deletion: unscheduled first, then not Running, then newest.
fn deletion_order(a: &Ship, b: &Ship) -> std::cmp::Ordering {
    let ts = |s: &Ship| s.metadata.creation_timestamp.as_ref().map(|t| t.0);
    is_scheduled(a)
        .cmp(&is_scheduled(b))
        .then(is_running(a).cmp(&is_running(b)))
        .then(ts(b).cmp(&ts(a)))
        .then(b.metadata.name.cmp(&a.metadata.name))
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    move |source| ReconcileError::Api { action, source }
}

impl ReplicaSetController {
    /// A controller using `client`.
    pub fn new(client: Client, cfg: ReplicaSetConfig) -> Self {
        ReplicaSetController { client, cfg }
    }

    /// Reconciles while `is_leader` is true; returns when its sender is dropped.
    pub async fn run(self, is_leader: watch::Receiver<bool>) {
        crate::leader::run_terms("replicaset controller", is_leader, |rx| self.run_term(rx)).await;
    }

    /// One leadership term: runs the Controller until leadership is lost.
    async fn run_term(&self, is_leader: watch::Receiver<bool>) {
        let ships_all: Api<Ship> = Api::all(self.client.clone());
        let (reader, writer) = reflector::store::<Ship>();
        let stream = reflector::reflector(
            writer,
            watcher(ships_all.clone(), watcher::Config::default()).modify(crate::lean),
        )
        .default_backoff();
        // The Controller's own Ship watch (below) may run ahead of this cache: a reconcile it
        // triggers can read a stale cache and find nothing to do. So every change the cache
        // applies also asks for a pass over the ReplicaSets (coalesced: capacity 1).
        let (cache_tx, cache_rx) = tokio::sync::mpsc::channel::<()>(1);
        let reflector_task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => {
                        let _ = cache_tx.try_send(());
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "replicaset controller ship watch error");
                    }
                }
            }
        });
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
                ships: reader,
                expectations: Mutex::new(HashMap::new()),
                failures: Mutex::new(HashMap::new()),
            });
            let controller = Controller::new(
                Api::<ReplicaSet>::all(self.client.clone()),
                watcher::Config::default(),
            );
            let rs_store = controller.store();
            let mut shutdown_rx = is_leader;
            controller
                .watches(ships_all, watcher::Config::default(), move |ship| {
                    ship_to_replicasets(&ship, &rs_store)
                })
                .reconcile_all_on(cache_changed)
                .graceful_shutdown_on(async move { wait_not_leader(&mut shutdown_rx).await })
                .run(reconcile, error_policy, ctx)
                .for_each(|r| async move {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "replicaset reconcile");
                    }
                })
                .await;
        }
        reflector_task.abort();
    }
}

/// Deletes `ship` (this very object: uid precondition); gone already is fine.
async fn delete_ship(api: &Api<Ship>, ship: &Ship) -> Result<(), ReconcileError> {
    let ship_name = ship.name_any();
    let dp = DeleteParams {
        preconditions: ship
            .metadata
            .uid
            .clone()
            .map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
        ..DeleteParams::default()
    };
    match api.delete(&ship_name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(api_err(format!(
            "deleting ship {}/{ship_name}",
            ship.metadata.namespace.as_deref().unwrap_or("")
        ))(e)),
    }
}

fn error_policy(rs: Arc<ReplicaSet>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    let key = rs_key(&rs);
    let failures = match ctx.failures.lock() {
        Ok(mut m) => {
            let f = m.entry(key.clone()).or_insert(0);
            *f = f.saturating_add(1);
            *f
        }
        Err(_) => 1,
    };
    let delay = crate::backoff(ctx.cfg.initial_backoff, ctx.cfg.max_backoff, failures);
    tracing::warn!(replicaset = %key, error = %err, ?delay, "reconcile failed; requeueing");
    Action::requeue(delay)
}

/// The controlling ownerReference to the ReplicaSet `name` (`uid`).
fn owner_ref(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = rs
        .metadata
        .name
        .clone()
        .ok_or(ReconcileError::MissingMetadata("name"))?;
    let ns = rs
        .metadata
        .namespace
        .clone()
        .ok_or(ReconcileError::MissingMetadata("namespace"))?;
    let uid = rs
        .metadata
        .uid
        .clone()
        .ok_or(ReconcileError::MissingMetadata("uid"))?;
    let ships_api: Api<Ship> = Api::namespaced(ctx.client.clone(), &ns);
    let rs_deleting = rs.metadata.deletion_timestamp.is_some();
    let selector = &rs.spec.selector;

    // 1. Claim: adopt matching orphans, release owned Ships that no longer match.
    let mut claimed: Vec<Ship> = Vec::new();
    for ship in ctx.ships.state() {
        if ship.metadata.namespace.as_deref() != Some(ns.as_str())
            || ship.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let matches = !selector.is_empty() && selector.matches(&labels_of(&ship));
        let ship_name = ship.name_any();
        match controller_ref(&ship) {
            Some(r) if r.uid == uid => {
                if matches {
                    claimed.push((*ship).clone());
                } else {
                    let refs: Vec<&OwnerReference> = ship
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .filter(|r| r.uid != uid)
                        .collect();
                    patch_owners(&ships_api, &ship, &refs).await?;
                    tracing::info!(replicaset = %name, ship = %ship_name, "released");
                }
            }
            Some(_) => {}
            None if matches && !rs_deleting => {
                let ours = owner_ref(&name, &uid);
                let mut refs: Vec<&OwnerReference> =
                    ship.metadata.owner_references.iter().flatten().collect();
                refs.push(&ours);
                let adopted = patch_owners(&ships_api, &ship, &refs).await?;
                tracing::info!(replicaset = %name, ship = %ship_name, "adopted");
                claimed.push(adopted);
            }
            None => {}
        }
    }

    // 2. Expectations: settle what the cache shows, then count what it does not yet.
    let now = Instant::now();
    let ttl = ctx.cfg.expectation_ttl;
    let in_cache: HashSet<String> = ctx
        .ships
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
        .map(|s| s.name_any())
        .collect();
    let (pending_created, pending_deleted) = {
        let mut all = ctx
            .expectations
            .lock()
            .map_err(|_| ReconcileError::Poisoned)?;
        let exp = all.entry(uid.clone()).or_default();
        exp.created
            .retain(|n, t| !in_cache.contains(n) && now.duration_since(*t) < ttl);
        exp.deleted
            .retain(|n, t| in_cache.contains(n) && now.duration_since(*t) < ttl);
        (
            exp.created.keys().cloned().collect::<HashSet<_>>(),
            exp.deleted.keys().cloned().collect::<HashSet<_>>(),
        )
    };
    // A Failed Ship (its VM failed for good, or its node was lost) is replaced, not waited for:
    // it is deleted, and the node's agent finalizes it when (if ever) it can. Until the cache
    // shows the deletion it counts as pending-deleted, not live.
    let mut pending_deleted = pending_deleted;
    for ship in claimed.iter().filter(|s| phase(s) == Some("Failed")) {
        let ship_name = ship.name_any();
        if pending_deleted.contains(&ship_name) {
            continue;
        }
        delete_ship(&ships_api, ship).await?;
        tracing::info!(replicaset = %name, ship = %ship_name, "deleted failed ship");
        if let Ok(mut all) = ctx.expectations.lock() {
            all.entry(uid.clone())
                .or_default()
                .deleted
                .insert(ship_name.clone(), Instant::now());
        }
        pending_deleted.insert(ship_name);
    }
    let mut live: Vec<Ship> = claimed
        .iter()
        .filter(|s| !pending_deleted.contains(&s.name_any()))
        .cloned()
        .collect();
    let desired = usize::try_from(rs.spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let current = live.len() + pending_created.len();

    // 3. Create or delete.
    if !rs_deleting && current < desired {
        for _ in current..desired {
            let created = create_ship(&ships_api, &rs, &name, &uid).await?;
            let created_name = created.name_any();
            tracing::info!(replicaset = %name, ship = %created_name, "created");
            if let Ok(mut all) = ctx.expectations.lock() {
                all.entry(uid.clone())
                    .or_default()
                    .created
                    .insert(created_name, Instant::now());
            }
        }
    } else if !rs_deleting && current > desired {
        let mut victims = live.clone();
        victims.sort_by(deletion_order);
        victims.truncate(current - desired);
        // The status below counts what stays: a Deployment reading it right after a
        // scale-down must not see the victims as still available.
        live.retain(|s| !victims.iter().any(|v| v.metadata.uid == s.metadata.uid));
        for ship in &victims {
            let ship_name = ship.name_any();
            delete_ship(&ships_api, ship).await?;
            tracing::info!(replicaset = %name, ship = %ship_name, "deleted surplus");
            if let Ok(mut all) = ctx.expectations.lock() {
                all.entry(uid.clone())
                    .or_default()
                    .deleted
                    .insert(ship_name, Instant::now());
            }
        }
    }

    // 4. Status, from what the cache shows (the watch brings the rest).
    let template_labels = rs.spec.ship_template.labels();
    let min_ready = Duration::from_secs(
        u64::try_from(rs.spec.min_ready_seconds.unwrap_or(0).max(0)).unwrap_or(0),
    );
    let mut requeue_for_availability: Option<Duration> = None;
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let fully_labeled = live
        .iter()
        .filter(|s| {
            let l = labels_of(s);
            template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
        })
        .count();
    let ready: Vec<&Ship> = live.iter().filter(|s| is_running(s)).collect();
    let available = ready
        .iter()
        .filter(|s| {
            if min_ready.is_zero() {
                return true;
            }
            let since = s
                .status
                .as_ref()
                .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0);
            let Some(since) = since else { return false };
            let elapsed = jiff::Timestamp::now().duration_since(since);
            let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
            if elapsed >= min_ready {
                true
            } else {
                let left = min_ready - elapsed;
                requeue_for_availability =
                    Some(requeue_for_availability.map_or(left, |d| d.min(left)));
                false
            }
        })
        .count();
    let old = rs.status.clone().unwrap_or_default();
    let new = ReplicaSetStatus {
        replicas: count(live.len()),
        fully_labeled_replicas: Some(count(fully_labeled)),
        ready_replicas: Some(count(ready.len())),
        available_replicas: Some(count(available)),
        observed_generation: rs.metadata.generation,
        conditions: old.conditions.clone(),
    };
    if new != old {
        let patch = json!({ "status": {
            "replicas": new.replicas,
            "fullyLabeledReplicas": new.fully_labeled_replicas,
            "readyReplicas": new.ready_replicas,
            "availableReplicas": new.available_replicas,
            "observedGeneration": new.observed_generation,
        }});
        rs_api(&ctx.client, &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!(
                "updating status of replicaset {ns}/{name}"
            )))?;
    }

    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&rs_key(&rs));
    }
    // Unobserved expectations: look again soon (their TTL bounds how long they count).
    let expecting = !pending_created.is_empty() || !pending_deleted.is_empty();
    Ok(match requeue_for_availability {
        Some(d) => Action::requeue(d),
        None if expecting => Action::requeue(ctx.cfg.expectation_ttl),
        None => Action::requeue(ctx.cfg.resync),
    })
}

fn rs_api(client: &Client, ns: &str) -> Api<ReplicaSet> {
    Api::namespaced(client.clone(), ns)
}

/// Replaces `ship`'s ownerReferences with `refs`, conditional on its resourceVersion.
async fn patch_owners(
    api: &Api<Ship>,
    ship: &Ship,
    refs: &[&OwnerReference],
) -> Result<Ship, ReconcileError> {
    let ship_name = ship.name_any();
    let patch = json!({
        "metadata": {
            "resourceVersion": ship.metadata.resource_version,
            "ownerReferences": refs,
        }
    });
    match api
        .patch(&ship_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(s) => Ok(s),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(ReconcileError::Conflict(ship_name)),
        Err(e) => Err(api_err(format!("patching owners of ship {ship_name}"))(e)),
    }
}

/// Creates one Ship from `rs`'s template.
async fn create_ship(
    api: &Api<Ship>,
    rs: &ReplicaSet,
    name: &str,
    uid: &str,
) -> Result<Ship, ReconcileError> {
    let template = &rs.spec.ship_template;
    let ship = Ship {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: rs.metadata.namespace.clone(),
            labels: template.metadata.labels.clone(),
            annotations: template.metadata.annotations.clone(),
            owner_references: Some(vec![owner_ref(name, uid)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        ..Ship::default()
    };
    api.create(&PostParams::default(), &ship)
        .await
        .map_err(api_err(format!("creating a ship for replicaset {name}")))
}
