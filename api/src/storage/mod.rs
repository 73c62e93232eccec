//! Objects as JSON values under etcd keys, with optimistic concurrency and a watch cache.
//!
//! Layout: `/registry/<storage>/<namespace>/<name>` for namespaced kinds and
//! `/registry/<storage>/<name>` for cluster-scoped ones. A stored object carries no
//! `resourceVersion`: it is the key's mod revision, set on every read.

pub mod cache;

use crate::error::ApiError;
use crate::kv::{prefix_end, CasOutcome, Kv};
use crate::registry::{Registry, ResourceDef};
use base64::Engine;
use cache::{decode_stored, set_resource_version, IndexFn, WatchCache};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a consistent list waits for the watch cache before reading etcd instead.
const CACHE_WAIT: Duration = Duration::from_secs(3);

/// The etcd key of an object.
pub fn object_key(def: &ResourceDef, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if def.namespaced => format!("/registry/{}/{ns}/{name}", def.storage),
        _ => format!("/registry/{}/{name}", def.storage),
    }
}

/// The key prefix of a resource, optionally of one namespace.
pub fn list_prefix(def: &ResourceDef, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if def.namespaced => format!("/registry/{}/{ns}/", def.storage),
        _ => format!("/registry/{}/", def.storage),
    }
}

/// A page of a list.
pub struct ListPage {
    /// Matching objects in key order.
    pub items: Vec<Arc<Value>>,
    /// The revision the list reflects.
    pub revision: i64,
    /// Token for the next page.
    pub continue_token: Option<String>,
    /// Objects left after this page (approximate, as Kubernetes reports).
    pub remaining: Option<i64>,
}

/// Where a list starts and how much it returns.
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    /// `limit` (0 = no limit).
    pub limit: i64,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion` (`None` = most recent, consistent; `Some(0)` = any, from the cache).
    pub resource_version: Option<i64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    /// Revision of the list's first page.
    rv: i64,
    /// First key of the next page.
    start: String,
}

fn encode_continue(rv: i64, start: &str) -> String {
    let raw = serde_json::json!({"rv": rv, "start": start}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str, prefix: &str) -> Result<ContinueToken, ApiError> {
    let bad = || ApiError::BadRequest(format!("continue key is not valid: {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if !t.start.starts_with(prefix) || t.rv <= 0 {
        return Err(bad());
    }
    Ok(t)
}

/// Objects in etcd behind the kinds of a registry.
pub struct Storage {
    kv: Kv,
    caches: HashMap<&'static str, Arc<WatchCache>>,
}

impl Storage {
    /// Storage over `kv` with one watch cache per storage prefix of `registry`, each with the
    /// indexes given for it. The caches start filling at once (needs a tokio runtime).
    pub fn new(
        kv: Kv,
        registry: &Registry,
        indexes: &[(&'static str, &'static str, IndexFn)],
    ) -> Arc<Self> {
        let mut caches = HashMap::new();
        for def in registry.all() {
            caches.entry(def.storage).or_insert_with(|| {
                let idx = indexes
                    .iter()
                    .filter(|(s, _, _)| *s == def.storage)
                    .map(|(_, n, f)| (*n, *f))
                    .collect();
                WatchCache::new(def.storage, idx)
            });
        }
        for c in caches.values() {
            tokio::spawn(c.clone().run(kv.clone()));
        }
        Arc::new(Storage { kv, caches })
    }

    /// The etcd client.
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    /// The watch cache of a storage prefix.
    pub fn cache(&self, storage: &str) -> Option<&Arc<WatchCache>> {
        self.caches.get(storage)
    }

    /// Whether every cache has completed its first list.
    pub fn ready(&self) -> bool {
        self.caches.values().all(|c| c.is_ready())
    }

    /// One object, read linearizably from etcd, with `apiVersion` of `def`.
    pub async fn get(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        let key = object_key(def, namespace, name);
        let (kv, _) = self.kv.get(key.as_bytes()).await?;
        Ok(kv.and_then(|k| decode_stored(&k)).map(|mut v| {
            set_api_version(&mut v, def);
            v
        }))
    }

    /// One object from the watch cache (`resourceVersion=0` reads).
    pub fn get_cached(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let key = object_key(def, namespace, name);
        let v = self.caches.get(def.storage)?.get(&key)?;
        let mut v = v.as_ref().clone();
        set_api_version(&mut v, def);
        Some(v)
    }

    /// A page of objects that pass `keep`, consistent at one revision.
    ///
    /// Served from the watch cache when it can prove it is current (it waits until it has seen
    /// etcd's present revision), from etcd's history otherwise (continuations of a list whose
    /// revision the cache has moved past).
    pub async fn list(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        req: &ListRequest,
        keep: &(dyn Fn(&Value) -> bool + Sync),
    ) -> Result<ListPage, ApiError> {
        let prefix = list_prefix(def, namespace);
        let end = String::from_utf8_lossy(&prefix_end(prefix.as_bytes())).into_owned();
        let (start, want_rev) = match &req.continue_token {
            Some(t) => {
                let t = decode_continue(t, &prefix)?;
                (t.start, Some(t.rv))
            }
            None => (prefix.clone(), None),
        };
        let cache = self
            .caches
            .get(def.storage)
            .ok_or_else(|| ApiError::Internal(format!("no cache for {}", def.storage)))?;
        // Decide the revision and whether the cache can serve it.
        let from_cache = match (want_rev, req.resource_version) {
            (Some(rv), _) => cache.revision() == rv,
            (None, Some(0)) => cache.is_ready(),
            (None, Some(rv)) => cache.is_ready() && cache.wait_for(rv, CACHE_WAIT).await.is_ok(),
            (None, None) => {
                let current = self.kv.current_revision().await?;
                cache.is_ready() && cache.wait_for(current, CACHE_WAIT).await.is_ok()
            }
        };
        let mut page = if from_cache {
            let (items, rev) = cache.snapshot(&start, &end);
            if want_rev.is_some_and(|w| w != rev) {
                // Changed between the check and the snapshot: fall back to etcd.
                self.list_etcd(def, &start, &end, want_rev.unwrap_or(0), req.limit, keep)
                    .await?
            } else {
                page_from(items, rev, req.limit, keep, def)
            }
        } else {
            let rev = want_rev.or(req.resource_version).unwrap_or(0);
            self.list_etcd(def, &start, &end, rev, req.limit, keep)
                .await?
        };
        if let Some(next) = page.continue_token.take() {
            page.continue_token = Some(encode_continue(page.revision, &next));
        }
        Ok(page)
    }

    async fn list_etcd(
        &self,
        def: &ResourceDef,
        start: &str,
        end: &str,
        rev: i64,
        limit: i64,
        keep: &(dyn Fn(&Value) -> bool + Sync),
    ) -> Result<ListPage, ApiError> {
        let mut items = Vec::new();
        let mut from = start.as_bytes().to_vec();
        let mut rev = rev;
        let page = if limit > 0 { limit.max(100) } else { 5000 };
        loop {
            let (kvs, more, r) = self.kv.range(&from, end.as_bytes(), page, rev).await?;
            if rev == 0 {
                rev = r;
            }
            let last_key = kvs.last().map(|k| k.key.clone());
            for (i, k) in kvs.iter().enumerate() {
                let Some(mut v) = decode_stored(k) else {
                    continue;
                };
                if !keep(&v) {
                    continue;
                }
                set_api_version(&mut v, def);
                items.push(Arc::new(v));
                if limit > 0 && items.len() as i64 >= limit {
                    let has_more = more || i + 1 < kvs.len();
                    let next = if has_more {
                        let mut n = k.key.clone();
                        n.push(0);
                        Some(String::from_utf8_lossy(&n).into_owned())
                    } else {
                        None
                    };
                    return Ok(ListPage {
                        items,
                        revision: rev,
                        continue_token: next,
                        remaining: None,
                    });
                }
            }
            match (more, last_key) {
                (true, Some(mut k)) => {
                    k.push(0);
                    from = k;
                }
                _ => break,
            }
        }
        Ok(ListPage {
            items,
            revision: rev,
            continue_token: None,
            remaining: None,
        })
    }

    /// Creates an object (fails with AlreadyExists). Returns it with its resourceVersion.
    pub async fn create(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let key = object_key(def, namespace, name);
        strip_resource_version(&mut obj);
        let bytes = serde_json::to_vec(&obj).map_err(|e| ApiError::Internal(e.to_string()))?;
        match self.kv.put_if(key.as_bytes(), bytes, 0).await? {
            CasOutcome::Written(rev) => {
                set_resource_version(&mut obj, rev);
                Ok(obj)
            }
            CasOutcome::Failed(_) => Err(ApiError::AlreadyExists {
                qualified: def.qualified(),
                group: def.group.to_string(),
                kind: def.plural.to_string(),
                name: name.to_string(),
            }),
        }
    }

    /// Replaces an object whose current resourceVersion is `expected` (409 Conflict otherwise).
    pub async fn update(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        mut obj: Value,
        expected: i64,
    ) -> Result<Value, ApiError> {
        let key = object_key(def, namespace, name);
        strip_resource_version(&mut obj);
        let bytes = serde_json::to_vec(&obj).map_err(|e| ApiError::Internal(e.to_string()))?;
        match self.kv.put_if(key.as_bytes(), bytes, expected).await? {
            CasOutcome::Written(rev) => {
                set_resource_version(&mut obj, rev);
                Ok(obj)
            }
            CasOutcome::Failed(None) => Err(not_found(def, name)),
            CasOutcome::Failed(Some(_)) => Err(conflict(def, name)),
        }
    }

    /// Deletes an object whose current resourceVersion is `expected`. Returns the last state
    /// with the deletion's revision.
    pub async fn delete(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        mut last: Value,
        expected: i64,
    ) -> Result<Value, ApiError> {
        let key = object_key(def, namespace, name);
        match self.kv.delete_if(key.as_bytes(), expected).await? {
            CasOutcome::Written(rev) => {
                set_resource_version(&mut last, rev);
                Ok(last)
            }
            CasOutcome::Failed(None) => Err(not_found(def, name)),
            CasOutcome::Failed(Some(_)) => Err(conflict(def, name)),
        }
    }
}

fn page_from(
    items: Vec<(String, Arc<Value>)>,
    rev: i64,
    limit: i64,
    keep: &(dyn Fn(&Value) -> bool + Sync),
    def: &ResourceDef,
) -> ListPage {
    let mut out = Vec::new();
    let total = items.len();
    for (i, (key, v)) in items.into_iter().enumerate() {
        if !keep(&v) {
            continue;
        }
        let v = if api_version_matches(&v, def) {
            v
        } else {
            let mut c = v.as_ref().clone();
            set_api_version(&mut c, def);
            Arc::new(c)
        };
        out.push(v);
        if limit > 0 && out.len() as i64 >= limit && i + 1 < total {
            return ListPage {
                items: out,
                revision: rev,
                continue_token: Some(format!("{key}\0")),
                remaining: Some((total - i - 1) as i64),
            };
        }
    }
    ListPage {
        items: out,
        revision: rev,
        continue_token: None,
        remaining: None,
    }
}

fn api_version_matches(v: &Value, def: &ResourceDef) -> bool {
    v.get("apiVersion").and_then(Value::as_str) == Some(def.api_version().as_str())
}

/// Sets `apiVersion` to the served group/version (objects shared by two groups are stored once).
pub fn set_api_version(v: &mut Value, def: &ResourceDef) {
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(def.api_version()));
        o.insert("kind".into(), Value::String(def.kind.to_string()));
    }
}

fn strip_resource_version(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
}

/// `ships "x" not found`.
pub fn not_found(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::NotFound {
        qualified: def.qualified(),
        group: def.group.to_string(),
        kind: def.plural.to_string(),
        name: name.to_string(),
    }
}

/// The optimistic-concurrency conflict in Kubernetes wording.
pub fn conflict(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::Conflict {
        message: format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            def.qualified()
        ),
        group: def.group.to_string(),
        kind: def.plural.to_string(),
        name: name.to_string(),
    }
}

impl crate::auth::ObjectSource for Storage {
    fn list(&self, storage: &str, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let Some(c) = self.caches.get(storage) else {
            return Vec::new();
        };
        let prefix = match namespace {
            Some(ns) => format!("/registry/{storage}/{ns}/"),
            None => format!("/registry/{storage}/"),
        };
        let end = String::from_utf8_lossy(&prefix_end(prefix.as_bytes())).into_owned();
        c.snapshot(&prefix, &end)
            .0
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    fn get(&self, storage: &str, namespace: Option<&str>, name: &str) -> Option<Arc<Value>> {
        let c = self.caches.get(storage)?;
        let key = match namespace {
            Some(ns) => format!("/registry/{storage}/{ns}/{name}"),
            None => format!("/registry/{storage}/{name}"),
        };
        c.get(&key)
    }

    fn by_index(&self, storage: &str, index: &str, value: &str) -> Vec<Arc<Value>> {
        self.caches
            .get(storage)
            .map(|c| c.by_index(index, value))
            .unwrap_or_default()
    }
}
