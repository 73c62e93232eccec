//! The garbage collector: deletes dependents whose owners are gone, and finishes foreground
//! deletions the apiserver left unfinished.
//!
//! The apiserver already propagates deletes (Background, Foreground, Orphan) through its
//! owner-uid index, but only for the dependents it sees at that moment, from a task of the
//! apiserver that handled the DELETE. A dependent created while its owner was being deleted
//! (a ReplicaSet creating a Ship as the ReplicaSet goes), or a foreground deletion whose task
//! gave up or died with its apiserver, is left behind; this controller is the backstop.
//!
//! It watches a configurable set of kinds (by default `v1` Ship, `apps/v1` ReplicaSet and
//! Deployment) as dynamic objects. An object is checked shortly after it is added or changed,
//! its dependents shortly after it is deleted, and everything on a slow periodic scan:
//!
//! - every owner it references is looked up, first in the caches by uid and, when absent
//!   there, with a GET (the caches may lag); an owner is gone when the GET finds nothing or an
//!   object with another uid;
//! - all owners gone: the object is deleted (uid precondition, Background propagation); some
//!   gone: the dangling references are removed;
//! - an object in foreground deletion (`foregroundDeletion` finalizer) that this controller
//!   has seen so for [`GcConfig::foreground_grace`] gets its watched dependents deleted and,
//!   once none are left, the finalizer removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// The finalizer of an object waiting for its dependents (foreground deletion).
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The shortest allowed periodic scan interval.
pub const MIN_RESYNC: Duration = Duration::from_secs(30);

/// Errors of checking one object.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// An object changed since it was read; it is checked again.
    #[error("{0} changed since it was read")]
    Conflict(String),
    /// An owner's kind could not be resolved through discovery.
    #[error("resolving owner kind {api_version} {kind}: {source}")]
    Discovery {
        /// The owner reference's apiVersion.
        api_version: String,
        /// The owner reference's kind.
        kind: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
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

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> GcError {
    let action = action.into();
    move |source| match &source {
        kube::Error::Api(s) if s.code == 409 => GcError::Conflict(action),
        _ => GcError::Api { action, source },
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// One kind the collector watches.
#[derive(Clone, Debug)]
pub struct GcResource {
    /// The kind's API resource.
    pub resource: ApiResource,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
}

impl GcResource {
    /// A namespaced kind `group/version` `kind` served as `plural`.
    pub fn namespaced(group: &str, version: &str, kind: &str, plural: &str) -> Self {
        GcResource {
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind),
                plural,
            ),
            namespaced: true,
        }
    }
}

/// Settings of a [`GarbageCollector`].
#[derive(Clone, Debug)]
pub struct GcConfig {
    /// The kinds watched (as dependents, and as owners found in the caches).
    pub resources: Vec<GcResource>,
    /// Interval of the full scan (raised to [`MIN_RESYNC`] if shorter).
    pub resync: Duration,
    /// Delay between an event and the check it causes: lets the apiserver's own propagation
    /// go first and coalesces bursts.
    pub settle: Duration,
    /// How long an object must have been seen in foreground deletion before this collector
    /// finishes it in place of the apiserver.
    pub foreground_grace: Duration,
    /// Delay before re-checking an object whose check failed; doubles per failure.
    pub initial_backoff: Duration,
    /// Longest such delay.
    pub max_backoff: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            resources: vec![
                GcResource::namespaced("", "v1", "Ship", "ships"),
                GcResource::namespaced("apps", "v1", "ReplicaSet", "replicasets"),
                GcResource::namespaced("apps", "v1", "Deployment", "deployments"),
            ],
            resync: Duration::from_secs(300),
            settle: Duration::from_secs(5),
            foreground_grace: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// An object to check: index into the watched kinds, namespace, name.
type Key = (usize, String, String);

/// What the watch tasks report to the worker.
enum Signal {
    /// This object changed.
    Changed(Key),
    /// An object with this uid was deleted: check its dependents.
    OwnerGone(String),
}

/// The garbage collector (see the module docs).
pub struct GarbageCollector {
    client: Client,
    cfg: GcConfig,
}

/// State of one leadership term.
struct Term {
    client: Client,
    cfg: GcConfig,
    stores: Vec<Store<DynamicObject>>,
    /// Object key → when to check it.
    due: HashMap<Key, Instant>,
    /// Object key → consecutive failed checks.
    failures: HashMap<Key, u32>,
    /// uid → when first seen in foreground deletion.
    foreground_since: HashMap<String, Instant>,
    /// Owner kinds resolved through discovery: (apiVersion, kind) → resource, namespaced.
    resolved: HashMap<(String, String), GcResource>,
}

fn controller_or_all(obj: &DynamicObject) -> &[OwnerReference] {
    obj.metadata.owner_references.as_deref().unwrap_or_default()
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

impl GarbageCollector {
    /// A collector using `client`.
    pub fn new(client: Client, cfg: GcConfig) -> Self {
        GarbageCollector { client, cfg }
    }

    /// Collects while `is_leader` is true; returns when its sender is dropped.
    pub async fn run(self, is_leader: watch::Receiver<bool>) {
        crate::leader::run_terms("garbage collector", is_leader, |rx| {
            crate::leader::until_not_leader(self.run_term(), rx)
        })
        .await;
    }

    async fn run_term(&self) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
        let mut tasks = Vec::new();
        let mut stores = Vec::new();
        for (i, r) in self.cfg.resources.iter().enumerate() {
            let writer = Writer::<DynamicObject>::new(r.resource.clone());
            stores.push(writer.as_reader());
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &r.resource);
            let stream = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).modify(crate::lean),
            )
            .default_backoff();
            tasks.push(tokio::spawn(forward_events(i, stream, tx.clone())));
        }
        drop(tx);
        let _guard = AbortOnDrop(tasks);
        for s in &stores {
            if s.wait_until_ready().await.is_err() {
                return;
            }
        }
        let mut term = Term {
            client: self.client.clone(),
            cfg: self.cfg.clone(),
            stores,
            due: HashMap::new(),
            failures: HashMap::new(),
            foreground_since: HashMap::new(),
            resolved: HashMap::new(),
        };
        let resync = self.cfg.resync.max(MIN_RESYNC);
        let mut scan = tokio::time::interval(resync);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = term.due.values().min().copied();
            let sleep = async move {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => futures::future::pending::<()>().await,
                }
            };
            tokio::select! {
                sig = rx.recv() => match sig {
                    Some(sig) => term.signal(sig),
                    None => return,
                },
                _ = scan.tick() => term.schedule_all(),
                () = sleep => term.check_due().await,
            }
        }
    }
}

/// Turns one kind's reflected watch events into signals for the worker.
async fn forward_events(
    index: usize,
    stream: impl futures::Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>>,
    tx: mpsc::UnboundedSender<Signal>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        let key = |o: &DynamicObject| (index, o.namespace().unwrap_or_default(), o.name_any());
        let sig = match ev {
            Ok(watcher::Event::Apply(o)) => Signal::Changed(key(&o)),
            Ok(watcher::Event::Delete(o)) => match o.uid() {
                Some(uid) => Signal::OwnerGone(uid),
                None => continue,
            },
            // The initial listing is covered by the scan every term starts with.
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "garbage collector watch error");
                continue;
            }
        };
        if tx.send(sig).is_err() {
            return;
        }
    }
}

impl Term {
    fn schedule(&mut self, key: Key, after: Duration) {
        let at = Instant::now() + after;
        self.due
            .entry(key)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }

    fn signal(&mut self, sig: Signal) {
        match sig {
            Signal::Changed(key) => {
                let interesting = self.get(&key).is_some_and(|o| {
                    !controller_or_all(&o).is_empty()
                        || o.finalizers().iter().any(|f| f == FOREGROUND_FINALIZER)
                });
                if interesting {
                    self.schedule(key, self.cfg.settle);
                }
            }
            Signal::OwnerGone(uid) => {
                for key in self.dependents_of(&uid) {
                    self.schedule(key, self.cfg.settle);
                }
            }
        }
    }

    /// Schedules every cached object that has owners or waits for dependents.
    fn schedule_all(&mut self) {
        let keys: Vec<Key> = self
            .stores
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.state()
                    .into_iter()
                    .filter(|o| {
                        !controller_or_all(o).is_empty()
                            || o.finalizers().iter().any(|f| f == FOREGROUND_FINALIZER)
                    })
                    .map(move |o| (i, o.namespace().unwrap_or_default(), o.name_any()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for k in keys {
            self.schedule(k, Duration::ZERO);
        }
    }

    fn get(&self, key: &Key) -> Option<Arc<DynamicObject>> {
        let (i, ns, name) = key;
        let r = self.cfg.resources.get(*i)?;
        let mut oref = ObjectRef::<DynamicObject>::new_with(name, r.resource.clone());
        if r.namespaced {
            oref = oref.within(ns);
        }
        self.stores.get(*i)?.get(&oref)
    }

    /// Cached objects that reference `uid` as an owner.
    fn dependents_of(&self, uid: &str) -> Vec<Key> {
        self.stores
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.state()
                    .into_iter()
                    .filter(|o| controller_or_all(o).iter().any(|r| r.uid == uid))
                    .map(move |o| (i, o.namespace().unwrap_or_default(), o.name_any()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn cached_uids(&self) -> HashSet<String> {
        self.stores
            .iter()
            .flat_map(|s| s.state().into_iter().filter_map(|o| o.uid()))
            .collect()
    }

    async fn check_due(&mut self) {
        let now = Instant::now();
        let ready: Vec<Key> = self
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        if ready.is_empty() {
            return;
        }
        let uids = self.cached_uids();
        for key in ready {
            self.due.remove(&key);
            match self.check(&key, &uids).await {
                Ok(None) => {
                    self.failures.remove(&key);
                }
                Ok(Some(again)) => {
                    self.failures.remove(&key);
                    self.schedule(key, again);
                }
                Err(e) => {
                    let n = self.failures.entry(key.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                    let delay = crate::backoff(self.cfg.initial_backoff, self.cfg.max_backoff, *n);
                    if matches!(e, GcError::Conflict(_)) {
                        tracing::debug!(object = ?key, error = %e, "gc raced; rechecking");
                    } else {
                        tracing::warn!(object = ?key, error = %e, ?delay, "gc check failed");
                    }
                    self.schedule(key, delay);
                }
            }
        }
    }

    /// Checks one object; `Some(d)` asks to look again after `d`.
    async fn check(
        &mut self,
        key: &Key,
        uids: &HashSet<String>,
    ) -> Result<Option<Duration>, GcError> {
        let Some(obj) = self.get(key) else {
            return Ok(None);
        };
        if obj.metadata.deletion_timestamp.is_some() {
            if obj.finalizers().iter().any(|f| f == FOREGROUND_FINALIZER) {
                return self.finish_foreground(key, &obj).await;
            }
            return Ok(None);
        }
        let refs = controller_or_all(&obj);
        if refs.is_empty() {
            return Ok(None);
        }
        let mut dangling = Vec::new();
        for r in refs {
            if uids.contains(&r.uid) {
                continue;
            }
            if !self.owner_exists(key, r).await? {
                dangling.push(r.uid.clone());
            }
        }
        if dangling.is_empty() {
            return Ok(None);
        }
        let api = self.api_for(key);
        let name = obj.name_any();
        let what = format!("{} {}/{}", obj_kind(&self.cfg, key), key.1, name);
        if dangling.len() == refs.len() {
            let dp = DeleteParams {
                preconditions: obj.uid().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => tracing::info!(object = %what, owners = ?dangling, "deleted: owner gone"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api_err(format!("deleting {what}"))(e)),
            }
        } else {
            let kept: Vec<&OwnerReference> =
                refs.iter().filter(|r| !dangling.contains(&r.uid)).collect();
            let patch = json!({"metadata": {
                "resourceVersion": obj.metadata.resource_version,
                "ownerReferences": kept,
            }});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(object = %what, owners = ?dangling, "removed dangling owner references")
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api_err(format!("dropping dangling owners of {what}"))(e)),
            }
        }
        Ok(None)
    }

    fn api_for(&self, key: &Key) -> Api<DynamicObject> {
        let r = &self.cfg.resources[key.0];
        if r.namespaced {
            Api::namespaced_with(self.client.clone(), &key.1, &r.resource)
        } else {
            Api::all_with(self.client.clone(), &r.resource)
        }
    }

    /// Whether the owner `r` of the object `key` exists (with the referenced uid).
    async fn owner_exists(&mut self, key: &Key, r: &OwnerReference) -> Result<bool, GcError> {
        let owner = self.owner_resource(r).await?;
        let api: Api<DynamicObject> = if owner.namespaced {
            // Owners are in their dependent's namespace; a cluster-scoped dependent cannot
            // have a namespaced owner, which then counts as gone.
            if key.1.is_empty() {
                return Ok(false);
            }
            Api::namespaced_with(self.client.clone(), &key.1, &owner.resource)
        } else {
            Api::all_with(self.client.clone(), &owner.resource)
        };
        let found = api
            .get_opt(&r.name)
            .await
            .map_err(api_err(format!("reading owner {} {}", r.kind, r.name)))?;
        Ok(found.is_some_and(|o| o.uid().as_deref() == Some(r.uid.as_str())))
    }

    /// The API resource of an owner reference's kind: a watched one, or found by discovery.
    async fn owner_resource(&mut self, r: &OwnerReference) -> Result<GcResource, GcError> {
        let group = group_of(&r.api_version);
        if let Some(known) = self
            .cfg
            .resources
            .iter()
            .find(|k| k.resource.kind == r.kind && k.resource.group == group)
        {
            return Ok(known.clone());
        }
        let cache_key = (r.api_version.clone(), r.kind.clone());
        if let Some(known) = self.resolved.get(&cache_key) {
            return Ok(known.clone());
        }
        let (g, v) = r
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", r.api_version.as_str()));
        let gvk = GroupVersionKind::gvk(g, v, &r.kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|source| GcError::Discovery {
                api_version: r.api_version.clone(),
                kind: r.kind.clone(),
                source,
            })?;
        let res = GcResource {
            resource: ar,
            namespaced: caps.scope == Scope::Namespaced,
        };
        self.resolved.insert(cache_key, res.clone());
        Ok(res)
    }

    /// Backstop for a foreground deletion the apiserver did not finish.
    async fn finish_foreground(
        &mut self,
        key: &Key,
        obj: &DynamicObject,
    ) -> Result<Option<Duration>, GcError> {
        let uid = obj.uid().unwrap_or_default();
        let seen_for = self
            .foreground_since
            .entry(uid.clone())
            .or_insert_with(Instant::now)
            .elapsed();
        if seen_for < self.cfg.foreground_grace {
            return Ok(Some(self.cfg.foreground_grace - seen_for));
        }
        let deps = self.dependents_of(&uid);
        for dep in &deps {
            let Some(d) = self.get(dep) else { continue };
            if d.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = d.name_any();
            let dp = DeleteParams {
                preconditions: d.uid().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::foreground()
            };
            match self.api_for(dep).delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(dependent = %name, owner = %obj.name_any(), "deleted dependent of a foreground deletion")
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api_err(format!("deleting dependent {name}"))(e)),
            }
        }
        if !deps.is_empty() {
            return Ok(Some(self.cfg.settle.max(Duration::from_secs(1))));
        }
        let kept: Vec<&String> = obj
            .finalizers()
            .iter()
            .filter(|f| f.as_str() != FOREGROUND_FINALIZER)
            .collect();
        let patch = json!({"metadata": {
            "resourceVersion": obj.metadata.resource_version,
            "finalizers": kept,
        }});
        let name = obj.name_any();
        match self
            .api_for(key)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(object = %name, "finished a foreground deletion"),
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(api_err(format!(
                    "finishing the foreground deletion of {name}"
                ))(e))
            }
        }
        self.foreground_since.remove(&uid);
        Ok(None)
    }
}

fn obj_kind<'a>(cfg: &'a GcConfig, key: &Key) -> &'a str {
    cfg.resources
        .get(key.0)
        .map_or("object", |r| r.resource.kind.as_str())
}

/// Aborts the watch tasks of a term when it ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_api_versions() {
        assert_eq!(group_of("v1"), "");
        assert_eq!(group_of("apps/v1"), "apps");
    }

    #[test]
    fn the_default_kinds_are_ships_replicasets_deployments() {
        let kinds: Vec<String> = GcConfig::default()
            .resources
            .iter()
            .map(|r| r.resource.kind.clone())
            .collect();
        assert_eq!(kinds, ["Ship", "ReplicaSet", "Deployment"]);
        assert!(GcConfig::default().resync >= MIN_RESYNC);
    }
}
