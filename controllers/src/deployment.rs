//! The Deployment controller: rolls a Deployment's Ships from one Ship template to the next
//! through ReplicaSets, with Kubernetes' semantics.
//!
//! Each Ship template gets its own ReplicaSet `<deployment>-<hash>`, controlled by the
//! Deployment; the hash (of the template and `status.collisionCount`) is also the
//! `ship-template-hash` label of the ReplicaSet, its selector and its Ship template, so the
//! ReplicaSets of one Deployment never select each other's Ships. The ReplicaSet whose template
//! equals the Deployment's (ignoring that label) is the *new* one, every other is *old*.
//!
//! One reconcile does one step and returns; the caches (ReplicaSets, Ships) report every change
//! and trigger the next step:
//!
//! 1. adopt orphan ReplicaSets matching the selector;
//! 2. wait while a ReplicaSet write of ours is not in the cache yet (expectations), so a step
//!    never acts on a cache older than the previous step's writes;
//! 3. keep the `deployment.kubernetes.io/revision` annotations (the new ReplicaSet gets
//!    max(old) + 1, also when an old one is reused by `kubectl rollout undo`) and copy the
//!    Deployment's annotations to the new ReplicaSet;
//! 4. unless paused: `RollingUpdate` scales the new ReplicaSet up within `maxSurge` and old ones
//!    down within `maxUnavailable`; `Recreate` scales old ones to 0, waits until their Ships are
//!    gone, then creates the new one at full size;
//! 5. once the rollout is complete, deletes the oldest old ReplicaSets beyond
//!    `revisionHistoryLimit`;
//! 6. writes `status` (counts from the ReplicaSets' status, conditions `Available` and
//!    `Progressing`, reason `NewReplicaSetAvailable` once complete, as `kubectl rollout status`
//!    expects).
//!
//! Availability comes from the ReplicaSet controller's `status.availableReplicas` (Running
//! Ships; `minReadySeconds` is applied there). Old ReplicaSets are only scaled down while every
//! ReplicaSet's status is *synced* (`observedGeneration` = `generation` and `status.replicas` =
//! `spec.replicas`): a status written before a scale-down took effect may count Ships that are
//! already being deleted, and acting on it could take availability below
//! `replicas - maxUnavailable`.
//!
//! Not done: proportional scaling of several active ReplicaSets when a Deployment is scaled
//! mid-rollout (the rollout itself converges them), `progressDeadlineSeconds`
//! (`ProgressDeadlineExceeded`), and the `revision-history` annotation.
//!
//! Only the leader reconciles: [`DeploymentController::run`] follows a leadership channel (see
//! [`crate::leader`]).

use crate::backoff;
use crate::leader::wait_not_leader;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DeploymentCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tugboat_api::kinds::apps::{
    Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec, SHIP_TEMPLATE_HASH_LABEL,
};
use tugboat_api::kinds::core::{Ship, ShipTemplateSpec};
use tugboat_api::kinds::Selector;

/// Annotation with the revision of a Deployment and of each of its ReplicaSets.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// Deployment annotations that are not copied to its ReplicaSets (as Kubernetes).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The Deployment lacks a name, namespace or uid.
    #[error("deployment is missing metadata.{0}")]
    MissingMetadata(&'static str),
    /// A lock of the controller's state was poisoned by a panicking reconcile.
    #[error("controller state lock poisoned")]
    Poisoned,
    /// The ReplicaSet name for the template is taken by one that is not this template's.
    #[error("replicaset {0} exists with another template (hash collision)")]
    Collision(String),
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

/// Settings of a [`DeploymentController`].
#[derive(Clone, Debug)]
pub struct DeploymentConfig {
    /// Requeue delay after the first failed reconcile; doubles per consecutive failure.
    pub initial_backoff: Duration,
    /// Longest requeue delay after failures.
    pub max_backoff: Duration,
    /// Periodic resync of every Deployment.
    pub resync: Duration,
    /// How long an unobserved ReplicaSet write is waited for before acting anyway.
    pub expectation_ttl: Duration,
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        DeploymentConfig {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            resync: Duration::from_secs(300),
            expectation_ttl: Duration::from_secs(30),
        }
    }
}

/// A ReplicaSet write the cache has not shown yet: `name` at `generation` or later.
#[derive(Debug)]
struct Expected {
    name: String,
    generation: i64,
    at: Instant,
}

/// State shared by the reconciles of one leadership term.
struct Context {
    client: Client,
    cfg: DeploymentConfig,
    replicasets: Store<ReplicaSet>,
    ships: Store<Ship>,
    /// Deployment uid → its unobserved ReplicaSet writes.
    expectations: Mutex<HashMap<String, Vec<Expected>>>,
    /// Deployment `namespace/name` → consecutive failures.
    failures: Mutex<HashMap<String, u32>>,
}

/// The Deployment controller (see the module docs).
pub struct DeploymentController {
    client: Client,
    cfg: DeploymentConfig,
}

impl DeploymentController {
    /// A controller using `client`.
    pub fn new(client: Client, cfg: DeploymentConfig) -> Self {
        DeploymentController { client, cfg }
    }

    /// Reconciles while `is_leader` is true; returns when its sender is dropped.
    pub async fn run(self, is_leader: watch::Receiver<bool>) {
        crate::leader::run_terms("deployment controller", is_leader, |rx| self.run_term(rx)).await;
    }

    /// One leadership term: runs the Controller until leadership is lost.
    async fn run_term(&self, is_leader: watch::Receiver<bool>) {
        // Every change either cache applies asks for a pass over all Deployments (coalesced),
        // so a step that waited for the cache runs as soon as the cache has what it needs.
        let (cache_tx, cache_rx) = tokio::sync::mpsc::channel::<()>(1);
        let (rs_reader, rs_task) = spawn_cache::<ReplicaSet>(&self.client, cache_tx.clone());
        let (ship_reader, ship_task) = spawn_cache::<Ship>(&self.client, cache_tx);
        let cache_changed = futures::stream::unfold(cache_rx, |mut rx| async move {
            rx.recv().await.map(|()| ((), rx))
        });
        let mut leader_rx = is_leader.clone();
        let ready = tokio::select! {
            r = async {
                rs_reader.wait_until_ready().await?;
                ship_reader.wait_until_ready().await
            } => r.is_ok(),
            _ = wait_not_leader(&mut leader_rx) => false,
        };
        if ready {
            let ctx = Arc::new(Context {
                client: self.client.clone(),
                cfg: self.cfg.clone(),
                replicasets: rs_reader,
                ships: ship_reader,
                expectations: Mutex::new(HashMap::new()),
                failures: Mutex::new(HashMap::new()),
            });
            let mut shutdown_rx = is_leader;
            Controller::new(
                Api::<Deployment>::all(self.client.clone()),
                watcher::Config::default(),
            )
            .reconcile_all_on(cache_changed)
            .graceful_shutdown_on(async move { wait_not_leader(&mut shutdown_rx).await })
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "deployment reconcile");
                }
            })
            .await;
        }
        rs_task.abort();
        ship_task.abort();
    }
}

/// A reflector over every `K`, signalling `changed` after each change it applies.
pub(crate) fn spawn_cache<K>(
    client: &Client,
    changed: tokio::sync::mpsc::Sender<()>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
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
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()).modify(crate::lean),
    )
    .default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => {
                    let _ = changed.try_send(());
                }
                Err(e) => tracing::debug!(error = %e, "controller cache watch error"),
            }
        }
    });
    (reader, task)
}

fn deployment_key(d: &Deployment) -> String {
    format!(
        "{}/{}",
        d.metadata.namespace.as_deref().unwrap_or(""),
        d.metadata.name.as_deref().unwrap_or("")
    )
}

fn error_policy(d: Arc<Deployment>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    let key = deployment_key(&d);
    let failures = match ctx.failures.lock() {
        Ok(mut m) => {
            let f = m.entry(key.clone()).or_insert(0);
            *f = f.saturating_add(1);
            *f
        }
        Err(_) => 1,
    };
    let delay = backoff(ctx.cfg.initial_backoff, ctx.cfg.max_backoff, failures);
    tracing::warn!(deployment = %key, error = %err, ?delay, "reconcile failed; requeueing");
    Action::requeue(delay)
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    move |source| ReconcileError::Api { action, source }
}

// ---------------------------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------------------------

/// The `ship-template-hash` of `template` with `collision_count`: FNV-1a (32 bit) of its JSON,
/// written with the consonant-and-digit alphabet Kubernetes uses for generated names (no
/// vowels, so no words, and no look-alike characters).
pub fn ship_template_hash(template: &ShipTemplateSpec, collision_count: Option<i32>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    // Struct fields in declaration order and BTreeMaps: equal templates give equal text.
    feed(
        serde_json::to_string(template)
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|d| char::from(ALPHABET[usize::from(d - b'0')]))
        .collect()
}

/// `template` without the `ship-template-hash` label.
fn without_hash(template: &ShipTemplateSpec) -> ShipTemplateSpec {
    let mut t = template.clone();
    if let Some(labels) = &mut t.metadata.labels {
        labels.remove(SHIP_TEMPLATE_HASH_LABEL);
        if labels.is_empty() {
            t.metadata.labels = None;
        }
    }
    t
}

/// `selector` also requiring `label = value` (a plain map stays a plain map).
fn with_label(selector: &Selector, label: &str, value: &str) -> Selector {
    let mut s = selector.clone();
    match &mut s {
        Selector::Map(m) => {
            m.insert(label.to_string(), value.to_string());
        }
        Selector::LabelSelector(l) => {
            l.match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(label.to_string(), value.to_string());
        }
    }
    s
}

/// `value` of `maxSurge`/`maxUnavailable` against `total` replicas: an integer as is, a
/// percentage rounded up (`round_up`) or down.
pub fn scaled_value(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match value {
        None => 0,
        Some(IntOrString::Int(i)) => (*i).max(0),
        Some(IntOrString::String(s)) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            // Spec values are client-controlled: no arithmetic here may overflow.
            let product = pct
                .clamp(0, 100_000)
                .saturating_mul(i64::from(total.max(0)));
            let v = if round_up {
                (product + 99) / 100
            } else {
                product / 100
            };
            i32::try_from(v).unwrap_or(i32::MAX)
        }
    }
}

/// `(maxSurge, maxUnavailable)` of `d` as numbers (Kubernetes' fenceposts: surge rounds up,
/// unavailable rounds down, and both 0 makes unavailable 1). Recreate: `(0, replicas)`.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let replicas = d.spec.replicas.unwrap_or(1).max(0);
    let strategy = d.spec.strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, replicas);
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let default = IntOrString::String("25%".into());
    let surge_v = ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&default);
    let unavail_v = ru
        .and_then(|r| r.max_unavailable.as_ref())
        .unwrap_or(&default);
    let surge = scaled_value(Some(surge_v), replicas, true);
    let unavailable = scaled_value(Some(unavail_v), replicas, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let st = rs.status.clone().unwrap_or_default();
    (
        st.replicas,
        st.ready_replicas.unwrap_or(0),
        st.available_replicas.unwrap_or(0),
    )
}

/// The ReplicaSet controller has acted on the current spec and its status counts it.
fn synced(rs: &ReplicaSet) -> bool {
    let st = rs.status.as_ref();
    st.and_then(|s| s.observed_generation) >= rs.metadata.generation
        && st.map(|s| s.replicas) == Some(spec_replicas(rs))
}

fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

fn owner_ref(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The annotations a ReplicaSet of `d` carries besides its revision.
fn copied_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reconcile
// ---------------------------------------------------------------------------------------------

/// What one reconcile knows about a Deployment.
struct View<'a> {
    d: &'a Deployment,
    name: String,
    ns: String,
    uid: String,
    replicas: i32,
    rs_api: Api<ReplicaSet>,
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = d
        .metadata
        .name
        .clone()
        .ok_or(ReconcileError::MissingMetadata("name"))?;
    let ns = d
        .metadata
        .namespace
        .clone()
        .ok_or(ReconcileError::MissingMetadata("namespace"))?;
    let uid = d
        .metadata
        .uid
        .clone()
        .ok_or(ReconcileError::MissingMetadata("uid"))?;
    if d.metadata.deletion_timestamp.is_some() {
        // The apiserver's garbage collection removes the ReplicaSets and their Ships.
        return Ok(Action::await_change());
    }
    let v = View {
        d: &d,
        replicas: d.spec.replicas.unwrap_or(1).max(0),
        rs_api: Api::namespaced(ctx.client.clone(), &ns),
        name,
        ns,
        uid,
    };

    // 1. Adopt orphans; our ReplicaSets from the cache.
    let mut all: Vec<ReplicaSet> = Vec::new();
    for rs in ctx.replicasets.state() {
        if rs.metadata.namespace.as_deref() != Some(v.ns.as_str())
            || rs.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        match controller_uid(&rs.metadata) {
            Some(u) if u == v.uid => all.push((*rs).clone()),
            Some(_) => {}
            None => {
                let labels = rs.metadata.labels.clone().unwrap_or_default();
                if !d.spec.selector.is_empty() && d.spec.selector.matches(&labels) {
                    all.push(adopt(&v, &rs).await?);
                }
            }
        }
    }

    // 2. Wait for our own writes to reach the cache.
    if pending_writes(&ctx, &v, &all)? {
        return Ok(Action::requeue(ctx.cfg.expectation_ttl));
    }

    // 3. New and old ReplicaSets, revisions.
    let (mut new_rs, mut old): (Vec<ReplicaSet>, Vec<ReplicaSet>) = all
        .into_iter()
        .partition(|rs| without_hash(&rs.spec.ship_template) == d.spec.ship_template);
    new_rs.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    if new_rs.len() > 1 {
        // Two ReplicaSets with one template (a collision handled earlier): the oldest is new.
        old.extend(new_rs.drain(1..));
    }
    let mut new_rs = new_rs.pop();
    old.sort_by_key(revision_of);
    let new_revision = old
        .iter()
        .map(revision_of)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let paused = d.spec.paused == Some(true);

    if let Some(rs) = &new_rs {
        if let Some(updated) = sync_new_annotations(&ctx, &v, rs, new_revision).await? {
            new_rs = Some(updated);
            return finish(&ctx, &v, new_rs.as_ref(), &old, paused, false).await;
        }
    }
    sync_deployment_revision(&ctx, &v, new_rs.as_ref()).await?;

    if paused {
        return finish(&ctx, &v, new_rs.as_ref(), &old, paused, false).await;
    }

    // 4. Roll.
    let recreate = d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let acted = if recreate {
        roll_recreate(&ctx, &v, new_rs.as_ref(), &old, new_revision).await?
    } else {
        roll_rolling(&ctx, &v, new_rs.as_ref(), &old, new_revision).await?
    };
    if let Some(created) = acted.created {
        return finish(&ctx, &v, Some(&created), &old, paused, true).await;
    }
    if acted.scaled {
        return finish(&ctx, &v, new_rs.as_ref(), &old, paused, false).await;
    }

    // 5. History.
    if let Some(rs) = &new_rs {
        if complete(&v, rs, &old) {
            cleanup_history(&v, &old).await?;
        }
    }
    finish(&ctx, &v, new_rs.as_ref(), &old, paused, false).await
}

/// Adds our controller reference to an orphan ReplicaSet (conditional on its resourceVersion).
async fn adopt(v: &View<'_>, rs: &ReplicaSet) -> Result<ReplicaSet, ReconcileError> {
    let rs_name = rs.name_any();
    let mut refs: Vec<OwnerReference> = rs.metadata.owner_references.clone().unwrap_or_default();
    refs.push(owner_ref(&v.name, &v.uid));
    let patch = json!({"metadata": {
        "resourceVersion": rs.metadata.resource_version,
        "ownerReferences": refs,
    }});
    let adopted = v
        .rs_api
        .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(format!("adopting replicaset {}/{rs_name}", v.ns)))?;
    tracing::info!(deployment = %v.name, replicaset = %rs_name, "adopted");
    Ok(adopted)
}

/// Whether a ReplicaSet write of ours is still missing from the cache (expired ones dropped).
fn pending_writes(ctx: &Context, v: &View<'_>, all: &[ReplicaSet]) -> Result<bool, ReconcileError> {
    let mut exp = ctx
        .expectations
        .lock()
        .map_err(|_| ReconcileError::Poisoned)?;
    let Some(list) = exp.get_mut(&v.uid) else {
        return Ok(false);
    };
    let ttl = ctx.cfg.expectation_ttl;
    list.retain(|e| {
        let seen = all.iter().any(|rs| {
            rs.metadata.name.as_deref() == Some(e.name.as_str())
                && rs.metadata.generation.unwrap_or(0) >= e.generation
        });
        !seen && e.at.elapsed() < ttl
    });
    Ok(!list.is_empty())
}

fn expect(ctx: &Context, uid: &str, rs: &ReplicaSet) {
    if let Ok(mut exp) = ctx.expectations.lock() {
        exp.entry(uid.to_string()).or_default().push(Expected {
            name: rs.name_any(),
            generation: rs.metadata.generation.unwrap_or(0),
            at: Instant::now(),
        });
    }
}

/// Gives the new ReplicaSet the next revision (when it was an old one, e.g. after an undo) and
/// the Deployment's annotations; returns the updated ReplicaSet when it wrote.
async fn sync_new_annotations(
    ctx: &Context,
    v: &View<'_>,
    rs: &ReplicaSet,
    new_revision: i64,
) -> Result<Option<ReplicaSet>, ReconcileError> {
    let current = rs.annotations();
    let mut patch = serde_json::Map::new();
    for (k, val) in copied_annotations(v.d) {
        if current.get(&k) != Some(&val) {
            patch.insert(k, json!(val));
        }
    }
    if revision_of(rs) < new_revision {
        patch.insert(REVISION_ANNOTATION.into(), json!(new_revision.to_string()));
    }
    if patch.is_empty() {
        return Ok(None);
    }
    let rs_name = rs.name_any();
    let updated = v
        .rs_api
        .patch(
            &rs_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": patch}})),
        )
        .await
        .map_err(api_err(format!("annotating replicaset {}/{rs_name}", v.ns)))?;
    expect(ctx, &v.uid, &updated);
    Ok(Some(updated))
}

/// The Deployment's revision annotation follows its new ReplicaSet's.
async fn sync_deployment_revision(
    ctx: &Context,
    v: &View<'_>,
    new_rs: Option<&ReplicaSet>,
) -> Result<(), ReconcileError> {
    let Some(rs) = new_rs else { return Ok(()) };
    let revision = revision_of(rs);
    if revision == 0 {
        return Ok(());
    }
    let want = revision.to_string();
    if v.d.annotations().get(REVISION_ANNOTATION) == Some(&want) {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &v.ns);
    api.patch(
        &v.name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {REVISION_ANNOTATION: want}}})),
    )
    .await
    .map_err(api_err(format!(
        "annotating deployment {}/{}",
        v.ns, v.name
    )))?;
    Ok(())
}

/// What a rollout step wrote.
#[derive(Default)]
struct Acted {
    created: Option<ReplicaSet>,
    scaled: bool,
}

/// Creates the new ReplicaSet with `replicas`.
async fn create_new(
    ctx: &Context,
    v: &View<'_>,
    replicas: i32,
    revision: i64,
) -> Result<ReplicaSet, ReconcileError> {
    let d = v.d;
    let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = ship_template_hash(&d.spec.ship_template, collision_count);
    let rs_name = format!("{}-{hash}", v.name);
    let mut template = d.spec.ship_template.clone();
    template
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(SHIP_TEMPLATE_HASH_LABEL.into(), hash.clone());
    let mut annotations = copied_annotations(d);
    annotations.insert(REVISION_ANNOTATION.into(), revision.to_string());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(rs_name.clone()),
            namespace: Some(v.ns.clone()),
            labels: template.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(&v.name, &v.uid)]),
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: d.spec.min_ready_seconds,
            selector: with_label(&d.spec.selector, SHIP_TEMPLATE_HASH_LABEL, &hash),
            ship_template: template,
            template: None,
        },
        ..ReplicaSet::default()
    };
    match v.rs_api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            tracing::info!(deployment = %v.name, replicaset = %rs_name, replicas, "created");
            expect(ctx, &v.uid, &created);
            Ok(created)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Ours with this template (the cache has not shown it yet) is fine; anything else
            // is a collision: the next hash includes a bumped collisionCount.
            let existing = v
                .rs_api
                .get(&rs_name)
                .await
                .map_err(api_err(format!("reading replicaset {}/{rs_name}", v.ns)))?;
            if controller_uid(&existing.metadata) == Some(v.uid.as_str())
                && without_hash(&existing.spec.ship_template) == d.spec.ship_template
            {
                expect(ctx, &v.uid, &existing);
                return Ok(existing);
            }
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &v.ns);
            let next = collision_count.unwrap_or(0).saturating_add(1);
            api.patch_status(
                &v.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"collisionCount": next}})),
            )
            .await
            .map_err(api_err(format!(
                "bumping collisionCount of {}/{}",
                v.ns, v.name
            )))?;
            Err(ReconcileError::Collision(rs_name))
        }
        Err(e) => Err(api_err(format!("creating replicaset {}/{rs_name}", v.ns))(
            e,
        )),
    }
}

/// Sets `rs`'s `spec.replicas`.
async fn scale(
    ctx: &Context,
    v: &View<'_>,
    rs: &ReplicaSet,
    replicas: i32,
) -> Result<(), ReconcileError> {
    let rs_name = rs.name_any();
    let scaled = v
        .rs_api
        .patch(
            &rs_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
        )
        .await
        .map_err(api_err(format!("scaling replicaset {}/{rs_name}", v.ns)))?;
    tracing::info!(
        deployment = %v.name,
        replicaset = %rs_name,
        from = spec_replicas(rs),
        to = replicas,
        "scaled"
    );
    expect(ctx, &v.uid, &scaled);
    Ok(())
}

/// One `RollingUpdate` step.
async fn roll_rolling(
    ctx: &Context,
    v: &View<'_>,
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    new_revision: i64,
) -> Result<Acted, ReconcileError> {
    let (surge, max_unavailable) = surge_and_unavailable(v.d);
    let total: i32 = old
        .iter()
        .map(spec_replicas)
        .fold(0i32, i32::saturating_add)
        .saturating_add(new_rs.map(spec_replicas).unwrap_or(0));
    let old_active = old.iter().any(|rs| spec_replicas(rs) > 0);

    // The new ReplicaSet: created, or scaled up within maxSurge (down when over replicas).
    let new_current = new_rs.map(spec_replicas).unwrap_or(0);
    let new_target = if !old_active || new_current > v.replicas {
        v.replicas
    } else {
        let room = v
            .replicas
            .saturating_add(surge)
            .saturating_sub(total)
            .max(0);
        new_current.saturating_add(room.min(v.replicas.saturating_sub(new_current)))
    };

    match new_rs {
        None => {
            let created = create_new(ctx, v, new_target, new_revision).await?;
            return Ok(Acted {
                created: Some(created),
                scaled: false,
            });
        }
        Some(rs) if new_target != new_current => {
            scale(ctx, v, rs, new_target).await?;
            return Ok(Acted {
                created: None,
                scaled: true,
            });
        }
        Some(_) => {}
    }
    let Some(new_rs) = new_rs else {
        return Ok(Acted::default());
    };

    // Old ReplicaSets: scaled down only on synced statuses (see the module docs).
    if !old_active || !old.iter().all(synced) || !synced(new_rs) {
        return Ok(Acted::default());
    }
    let min_available = v.replicas - max_unavailable;
    let new_unavailable = (spec_replicas(new_rs) - status_of(new_rs).2).max(0);
    let max_scaled_down = total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Ok(Acted::default());
    }
    // First the old Ships that are not available anyway (the ReplicaSet controller deletes
    // those first), oldest ReplicaSet first.
    let mut budget = max_scaled_down;
    let mut scaled = false;
    let mut after: Vec<(usize, i32)> = Vec::new();
    for (i, rs) in old.iter().enumerate() {
        let current = spec_replicas(rs);
        let unavailable = (current - status_of(rs).2).max(0);
        let down = unavailable.min(budget);
        if down > 0 {
            budget -= down;
            scale(ctx, v, rs, current - down).await?;
            scaled = true;
        }
        after.push((i, current - down));
    }
    if scaled {
        return Ok(Acted {
            created: None,
            scaled: true,
        });
    }
    // Then available ones, down to minAvailable.
    let available: i32 = old.iter().map(|rs| status_of(rs).2).sum::<i32>() + status_of(new_rs).2;
    if available <= min_available {
        return Ok(Acted::default());
    }
    let mut budget = (available - min_available).min(max_scaled_down);
    for (i, current) in after {
        if budget <= 0 {
            break;
        }
        let down = current.min(budget);
        if down > 0 {
            budget -= down;
            scale(ctx, v, &old[i], current - down).await?;
            scaled = true;
        }
    }
    Ok(Acted {
        created: None,
        scaled,
    })
}

/// One `Recreate` step.
async fn roll_recreate(
    ctx: &Context,
    v: &View<'_>,
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    new_revision: i64,
) -> Result<Acted, ReconcileError> {
    let mut scaled = false;
    for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
        scale(ctx, v, rs, 0).await?;
        scaled = true;
    }
    if scaled {
        return Ok(Acted {
            created: None,
            scaled: true,
        });
    }
    // Wait until every old Ship is gone (also those still being deleted).
    let old_uids: Vec<&str> = old
        .iter()
        .filter_map(|rs| rs.metadata.uid.as_deref())
        .collect();
    let old_ships = ctx
        .ships
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(v.ns.as_str()))
        .filter(|s| controller_uid(&s.metadata).is_some_and(|u| old_uids.contains(&u)))
        .count();
    if old_ships > 0 || !old.iter().all(synced) {
        return Ok(Acted::default());
    }
    match new_rs {
        None => Ok(Acted {
            created: Some(create_new(ctx, v, v.replicas, new_revision).await?),
            scaled: false,
        }),
        Some(rs) if spec_replicas(rs) != v.replicas => {
            scale(ctx, v, rs, v.replicas).await?;
            Ok(Acted {
                created: None,
                scaled: true,
            })
        }
        Some(_) => Ok(Acted::default()),
    }
}

/// Only the new ReplicaSet has Ships, all of them available.
fn complete(v: &View<'_>, new_rs: &ReplicaSet, old: &[ReplicaSet]) -> bool {
    let (replicas, _, available) = status_of(new_rs);
    spec_replicas(new_rs) == v.replicas
        && replicas == v.replicas
        && available >= v.replicas
        && old
            .iter()
            .all(|rs| spec_replicas(rs) == 0 && status_of(rs).0 == 0)
}

/// Deletes the oldest scaled-down old ReplicaSets beyond `revisionHistoryLimit`.
async fn cleanup_history(v: &View<'_>, old: &[ReplicaSet]) -> Result<(), ReconcileError> {
    let limit = usize::try_from(v.d.spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(0);
    // `old` is sorted by revision, oldest first.
    let idle: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| spec_replicas(rs) == 0 && status_of(rs).0 == 0 && synced(rs))
        .collect();
    let surplus = idle.len().saturating_sub(limit);
    for rs in idle.into_iter().take(surplus) {
        let rs_name = rs.name_any();
        let dp = DeleteParams {
            preconditions: rs.metadata.uid.clone().map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match v.rs_api.delete(&rs_name, &dp).await {
            Ok(_) => {
                tracing::info!(deployment = %v.name, replicaset = %rs_name, "deleted old revision")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                return Err(api_err(format!("deleting replicaset {}/{rs_name}", v.ns))(
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// One condition, keeping the transition (and update) time of an unchanged old one.
fn condition(
    old: &[DeploymentCondition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> DeploymentCondition {
    let now = Time(jiff::Timestamp::now());
    let prev = old.iter().find(|c| c.type_ == type_);
    let same_status = prev.is_some_and(|c| c.status == status);
    let same_all = prev.is_some_and(|c| {
        c.status == status
            && c.reason.as_deref() == Some(reason)
            && c.message.as_ref() == Some(&message)
    });
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: if same_all {
            prev.and_then(|c| c.last_update_time.clone())
        } else {
            Some(now.clone())
        },
        last_transition_time: if same_status {
            prev.and_then(|c| c.last_transition_time.clone())
        } else {
            Some(now)
        },
    }
}

/// Writes the status (when it changed) and says when to look again.
async fn finish(
    ctx: &Context,
    v: &View<'_>,
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    paused: bool,
    just_created: bool,
) -> Result<Action, ReconcileError> {
    let prev = v.d.status.clone().unwrap_or_default();
    let all = old.iter().chain(new_rs);
    let (mut replicas, mut ready, mut available, mut spec_total) = (0, 0, 0, 0);
    for rs in all {
        let (r, rd, a) = status_of(rs);
        replicas = i32::saturating_add(replicas, r);
        ready = i32::saturating_add(ready, rd);
        available = i32::saturating_add(available, a);
        spec_total = i32::saturating_add(spec_total, spec_replicas(rs));
    }
    let updated = new_rs.map(|rs| status_of(rs).0).unwrap_or(0);
    let (_, max_unavailable) = surge_and_unavailable(v.d);
    let available_cond = if available >= v.replicas - max_unavailable {
        condition(
            &prev.conditions,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        condition(
            &prev.conditions,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let progressing = match new_rs {
        _ if paused => Some(condition(
            &prev.conditions,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
        )),
        Some(rs) if just_created => Some(condition(
            &prev.conditions,
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{}\"", rs.name_any()),
        )),
        Some(rs) if complete(v, rs, old) => Some(condition(
            &prev.conditions,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!(
                "ReplicaSet \"{}\" has successfully progressed.",
                rs.name_any()
            ),
        )),
        Some(rs) => Some(condition(
            &prev.conditions,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{}\" is progressing.", rs.name_any()),
        )),
        None => prev
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .cloned(),
    };
    let mut conditions = vec![available_cond];
    conditions.extend(progressing);
    let new = DeploymentStatus {
        observed_generation: v.d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((spec_total - available).max(0)),
        conditions,
        collision_count: prev.collision_count,
    };
    if new != prev {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &v.ns);
        api.patch_status(
            &v.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": new })),
        )
        .await
        .map_err(api_err(format!(
            "updating status of deployment {}/{}",
            v.ns, v.name
        )))?;
    }
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&deployment_key(v.d));
    }
    Ok(Action::requeue(ctx.cfg.resync))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_like_kubernetes() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled_value(Some(&pct("25%")), 3, true), 1);
        assert_eq!(scaled_value(Some(&pct("25%")), 3, false), 0);
        assert_eq!(scaled_value(Some(&pct("25%")), 4, true), 1);
        assert_eq!(scaled_value(Some(&pct("50%")), 5, false), 2);
        assert_eq!(scaled_value(Some(&IntOrString::Int(2)), 5, false), 2);
        let mut d = Deployment::default();
        d.spec.replicas = Some(1);
        // 25% of 1: surge 1, unavailable 0.
        assert_eq!(surge_and_unavailable(&d), (1, 0));
        d.spec.strategy = Some(k8s_openapi::api::apps::v1::DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(0)),
                max_unavailable: Some(IntOrString::String("10%".into())),
            }),
        });
        // Both 0: unavailable becomes 1.
        assert_eq!(surge_and_unavailable(&d), (0, 1));
    }

    #[test]
    fn hash_is_stable_and_depends_on_template_and_collisions() {
        let mut t = ShipTemplateSpec::default();
        t.spec.image = "a".into();
        let h = ship_template_hash(&t, None);
        assert_eq!(h, ship_template_hash(&t.clone(), None));
        assert!(h
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
        assert_ne!(h, ship_template_hash(&t, Some(1)));
        t.spec.image = "b".into();
        assert_ne!(h, ship_template_hash(&t, None));
    }

    #[test]
    fn selector_extension_keeps_its_form() {
        let map = Selector::Map([("app".to_string(), "x".to_string())].into());
        let Selector::Map(m) = with_label(&map, "h", "1") else {
            panic!("not a map")
        };
        assert_eq!(m.get("h").map(String::as_str), Some("1"));
    }
}
