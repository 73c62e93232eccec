//! The watch cache: one etcd watch per resource, many API watchers.
//!
//! Each storage prefix (`/registry/core/ships/`) is listed once and then followed by a single
//! etcd watch. The cache keeps the current objects, a window of recent events and secondary
//! indexes; API watches and consistent lists are served from it, so a thousand `kubectl get -w`
//! cost one etcd watch.

use crate::error::ApiError;
use crate::kv::{prefix_end, Kv, KvError};
use bytes::Bytes;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tugboat_store::pb::mvccpb::{event::EventType as EtcdEventType, KeyValue};

/// Events kept for watchers that resume from an older resourceVersion.
pub const EVENT_WINDOW: usize = 8_192;
/// Live events buffered per watcher before it counts as lagging.
const FANOUT_CAPACITY: usize = 4096;
/// Capacity of a routed feed (one node's Ships): a node sees few events at a time, and one
/// that falls behind catches up from the window like any watcher.
const ROUTED_CAPACITY: usize = 256;
/// The field watchers may be routed by: Ships bound to one node (every node agent watches
/// exactly that, so one change wakes one agent's watch, not all of them).
pub const ROUTE_FIELD: &str = "/spec/nodeName";
/// Keys listed per page when (re)filling the cache.
const LIST_PAGE: i64 = 2000;

/// Kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one object at one revision.
#[derive(Debug)]
pub struct CacheEvent {
    /// What happened.
    pub kind: EventType,
    /// Revision of the change (the object's new resourceVersion; for deletes, the deletion's).
    pub rev: i64,
    /// etcd key.
    pub key: String,
    /// The object after the change (for deletes: its last state, resourceVersion = `rev`).
    pub object: Arc<Value>,
    /// The object before the change.
    pub prev: Option<Arc<Value>>,
    json: OnceLock<Bytes>,
}

impl CacheEvent {
    /// `{"type":…,"object":…}` serialized once and shared by every watcher.
    pub fn json_line(&self) -> Bytes {
        self.json
            .get_or_init(|| {
                // Serializing a Value cannot fail.
                let object = serde_json::to_vec(self.object.as_ref()).unwrap_or_default();
                event_line(self.kind.as_str(), &object)
            })
            .clone()
    }
}

/// One watch event line: `{"type":<kind>,"object":<object>}` and a newline.
pub fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// Computes index values of an object.
pub type IndexFn = fn(&Value) -> Vec<String>;

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<Value>>,
    events: VecDeque<Arc<CacheEvent>>,
    /// Events after this revision are all in `events` (or none happened).
    window_start: i64,
    rev: i64,
    ready: bool,
    indexes: HashMap<&'static str, HashMap<String, BTreeSet<String>>>,
}

/// Turns a stored value into the served object (resourceVersion set).
pub fn decode_stored(kv: &KeyValue) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).ok()?;
    set_resource_version(&mut v, kv.mod_revision);
    Some(v)
}

/// Writes `metadata.resourceVersion`.
pub fn set_resource_version(v: &mut Value, rev: i64) {
    if let Some(obj) = v.as_object_mut() {
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut() {
            m.insert("resourceVersion".into(), Value::String(rev.to_string()));
        }
    }
}

/// The watch cache of one storage prefix.
pub struct WatchCache {
    /// `core/ships`.
    pub storage: &'static str,
    prefix: String,
    state: RwLock<State>,
    fanout: Mutex<broadcast::Sender<Arc<CacheEvent>>>,
    /// Feeds of the events touching one value of [`ROUTE_FIELD`] (before or after the change).
    routes: Mutex<HashMap<String, broadcast::Sender<Arc<CacheEvent>>>>,
    rev_tx: watch::Sender<i64>,
    progress: Mutex<Option<crate::kv::WatchHandle>>,
    index_fns: Vec<(&'static str, IndexFn)>,
}

/// What a watcher receives from the cache.
pub enum Delivery {
    /// A change.
    Event(Arc<CacheEvent>),
    /// The watcher fell out of the window; it must re-list (410).
    Expired(String),
    /// The cache restarted from a fresh list; the watch ends and the client re-watches.
    Closed,
}

/// A subscription: the backlog to send first, then live events.
pub struct Subscription {
    /// Events after the requested revision already in the window.
    pub backlog: Vec<Arc<CacheEvent>>,
    /// Live events.
    pub live: broadcast::Receiver<Arc<CacheEvent>>,
    /// Last revision covered by the backlog (or the start revision).
    pub from: i64,
}

impl WatchCache {
    /// A cache of every key under `/registry/<storage>/`, with the given indexes.
    pub fn new(storage: &'static str, index_fns: Vec<(&'static str, IndexFn)>) -> Arc<Self> {
        let (fanout, _) = broadcast::channel(FANOUT_CAPACITY);
        let (rev_tx, _) = watch::channel(0);
        Arc::new(WatchCache {
            storage,
            prefix: format!("/registry/{storage}/"),
            state: RwLock::new(State::default()),
            fanout: Mutex::new(fanout),
            routes: Mutex::new(HashMap::new()),
            rev_tx,
            progress: Mutex::new(None),
            index_fns,
        })
    }

    /// Keeps the cache filled and following etcd until the process ends.
    pub async fn run(self: Arc<Self>, kv: Kv) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.fill_and_follow(&kv).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(storage = self.storage, error = %e, "watch cache restarting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn fill_and_follow(&self, kv: &Kv) -> Result<(), KvError> {
        let start = self.prefix.as_bytes().to_vec();
        let end = prefix_end(&start);
        // List at one revision, page by page.
        let mut objects = BTreeMap::new();
        let mut from = start.clone();
        let mut rev = 0;
        loop {
            let (kvs, more, r) = kv.range(&from, &end, LIST_PAGE, rev).await?;
            if rev == 0 {
                rev = r;
            }
            let last = kvs.last().map(|k| k.key.clone());
            for item in &kvs {
                let key = String::from_utf8_lossy(&item.key).into_owned();
                match decode_stored(item) {
                    Some(v) => {
                        objects.insert(key, Arc::new(v));
                    }
                    None => tracing::warn!(key, "undecodable object in store; not served"),
                }
            }
            match (more, last) {
                (true, Some(mut k)) => {
                    k.push(0);
                    from = k;
                }
                _ => break,
            }
        }
        let (handle, mut stream) = kv.watch(&start, &end, rev + 1).await?;
        {
            let mut st = self.state.write().map_err(|_| poisoned())?;
            let mut indexes: HashMap<&'static str, HashMap<String, BTreeSet<String>>> =
                HashMap::new();
            for (name, f) in &self.index_fns {
                let map = indexes.entry(name).or_default();
                for (k, v) in &objects {
                    for iv in f(v) {
                        map.entry(iv).or_default().insert(k.clone());
                    }
                }
            }
            let had_watchers = st.ready;
            *st = State {
                objects,
                events: VecDeque::new(),
                window_start: rev,
                rev,
                ready: true,
                indexes,
            };
            if had_watchers {
                // Watchers of the old generation may have missed events: end them.
                let (fresh, _) = broadcast::channel(FANOUT_CAPACITY);
                if let Ok(mut f) = self.fanout.lock() {
                    *f = fresh;
                }
                if let Ok(mut r) = self.routes.lock() {
                    r.clear();
                }
            }
        }
        // send_replace: a plain send is dropped when nobody is waiting at that moment.
        self.rev_tx.send_replace(rev);
        if let Ok(mut p) = self.progress.lock() {
            *p = Some(handle);
        }
        tracing::debug!(storage = self.storage, rev, "watch cache filled");
        while let Some(resp) = stream.message().await? {
            if resp.canceled {
                if resp.compact_revision > 0 {
                    return Err(KvError::Compacted(resp.compact_revision));
                }
                return Err(KvError::Unavailable(format!(
                    "watch canceled: {}",
                    resp.cancel_reason
                )));
            }
            if resp.created {
                // The creation answer's header is the store's revision, not what this
                // stream has delivered: history replay may still follow.
                continue;
            }
            let header_rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
            if resp.events.is_empty() {
                // Progress notification: nothing under this prefix up to header_rev.
                self.advance(header_rev);
                continue;
            }
            self.apply(resp.events);
        }
        Err(KvError::Unavailable("watch stream ended".into()))
    }

    fn advance(&self, rev: i64) {
        let Ok(mut st) = self.state.write() else {
            return;
        };
        if rev > st.rev {
            st.rev = rev;
        }
        let rev = st.rev;
        drop(st);
        self.rev_tx.send_if_modified(|cur| {
            let moved = rev > *cur;
            if moved {
                *cur = rev;
            }
            moved
        });
    }

    fn apply(&self, events: Vec<tugboat_store::pb::mvccpb::Event>) {
        let Ok(mut st) = self.state.write() else {
            return;
        };
        let Ok(fanout) = self.fanout.lock() else {
            return;
        };
        let mut last_rev = st.rev;
        for ev in events {
            let Some(kv) = ev.kv else { continue };
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let prev = st.objects.get(&key).cloned();
            let (kind, object) = if ev.r#type == EtcdEventType::Delete as i32 {
                let Some(mut last) = prev
                    .as_deref()
                    .cloned()
                    .or_else(|| ev.prev_kv.as_ref().and_then(decode_stored))
                else {
                    continue;
                };
                set_resource_version(&mut last, kv.mod_revision);
                st.objects.remove(&key);
                (EventType::Deleted, Arc::new(last))
            } else {
                let Some(v) = decode_stored(&kv) else {
                    tracing::warn!(key, "undecodable object in store; skipped");
                    continue;
                };
                let v = Arc::new(v);
                st.objects.insert(key.clone(), v.clone());
                let kind = if prev.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                (kind, v)
            };
            // Indexes.
            for (name, f) in &self.index_fns {
                let map = st.indexes.entry(name).or_default();
                if let Some(p) = &prev {
                    for iv in f(p) {
                        if let Some(set) = map.get_mut(&iv) {
                            set.remove(&key);
                            if set.is_empty() {
                                map.remove(&iv);
                            }
                        }
                    }
                }
                if kind != EventType::Deleted {
                    for iv in f(&object) {
                        map.entry(iv).or_default().insert(key.clone());
                    }
                }
            }
            last_rev = last_rev.max(kv.mod_revision);
            let event = Arc::new(CacheEvent {
                kind,
                rev: kv.mod_revision,
                key,
                object,
                prev,
                json: OnceLock::new(),
            });
            st.events.push_back(event.clone());
            if st.events.len() > EVENT_WINDOW {
                if let Some(old) = st.events.pop_front() {
                    st.window_start = old.rev;
                }
            }
            if let Ok(mut routes) = self.routes.lock() {
                if !routes.is_empty() {
                    let now = event.object.pointer(ROUTE_FIELD).and_then(Value::as_str);
                    let before = event
                        .prev
                        .as_deref()
                        .and_then(|p| p.pointer(ROUTE_FIELD))
                        .and_then(Value::as_str);
                    for value in [now, before.filter(|b| Some(*b) != now)]
                        .into_iter()
                        .flatten()
                    {
                        let gone = match routes.get(value) {
                            Some(tx) => tx.send(event.clone()).is_err(),
                            None => false,
                        };
                        if gone {
                            // Its last watcher left.
                            routes.remove(value);
                        }
                    }
                }
            }
            let _ = fanout.send(event);
        }
        st.rev = last_rev;
        drop(fanout);
        drop(st);
        self.rev_tx.send_replace(last_rev);
    }

    /// The cache's revision (0 until filled).
    pub fn revision(&self) -> i64 {
        *self.rev_tx.borrow()
    }

    /// Waits until the cache has seen everything up to `rev` (asking etcd for progress), or
    /// gives up after `timeout`.
    pub async fn wait_for(&self, rev: i64, timeout: Duration) -> Result<(), ApiError> {
        let mut rx = self.rev_tx.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if *rx.borrow_and_update() >= rev {
                return Ok(());
            }
            if let Ok(p) = self.progress.lock() {
                if let Some(h) = p.as_ref() {
                    h.request_progress();
                }
            }
            let step = tokio::time::Instant::now() + Duration::from_millis(50);
            match tokio::time::timeout_at(step.min(deadline), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ApiError::Unavailable("watch cache stopped".into())),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(ApiError::Timeout(format!(
                        "Too large resource version: {rev}, current: {}",
                        self.revision()
                    )))
                }
                Err(_) => {}
            }
        }
    }

    /// Whether the first list has completed.
    pub fn is_ready(&self) -> bool {
        self.state.read().map(|s| s.ready).unwrap_or(false)
    }

    /// A consistent snapshot: the objects with keys in `[from, to)` and the cache revision.
    pub fn snapshot(&self, from: &str, to: &str) -> (Vec<(String, Arc<Value>)>, i64) {
        let Ok(st) = self.state.read() else {
            return (Vec::new(), 0);
        };
        let items = st
            .objects
            .range(from.to_string()..to.to_string())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (items, st.rev)
    }

    /// One object by key.
    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.state.read().ok()?.objects.get(key).cloned()
    }

    /// Objects whose index `index` has value `value`.
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<Value>> {
        let Ok(st) = self.state.read() else {
            return Vec::new();
        };
        let Some(keys) = st.indexes.get(index).and_then(|m| m.get(value)) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| st.objects.get(k).cloned())
            .collect()
    }

    /// Subscribes from `rev`: events with revision > `rev` from the window, then live ones.
    /// `None` = from now (the caller sends the current objects itself, from `snapshot`).
    /// `route`: only events whose object has (or had) this [`ROUTE_FIELD`] value are delivered
    /// live (the backlog is not narrowed; watchers filter anyway).
    pub fn subscribe(
        &self,
        rev: Option<i64>,
        route: Option<&str>,
    ) -> Result<Subscription, ApiError> {
        let st = self
            .state
            .read()
            .map_err(|_| ApiError::Internal("watch cache lock poisoned".into()))?;
        let live = self.live_feed(route)?;
        let from = rev.unwrap_or(st.rev);
        if from < st.window_start {
            return Err(ApiError::Expired(format!(
                "too old resource version: {from} ({})",
                st.window_start
            )));
        }
        let backlog = st.events.iter().filter(|e| e.rev > from).cloned().collect();
        Ok(Subscription {
            backlog,
            live,
            from,
        })
    }

    /// Subscribes from now together with the objects in `[from, to)` at that same revision, so
    /// initial ADDED events and live events neither overlap nor leave a gap.
    pub fn subscribe_with_snapshot(
        &self,
        from: &str,
        to: &str,
        route: Option<&str>,
    ) -> Result<(Vec<Arc<Value>>, Subscription), ApiError> {
        let st = self
            .state
            .read()
            .map_err(|_| ApiError::Internal("watch cache lock poisoned".into()))?;
        let live = self.live_feed(route)?;
        let objects = st
            .objects
            .range(from.to_string()..to.to_string())
            .map(|(_, v)| v.clone())
            .collect();
        Ok((
            objects,
            Subscription {
                backlog: Vec::new(),
                live,
                from: st.rev,
            },
        ))
    }

    /// The live feed: every event, or the routed one for `route`. Called with the state lock
    /// held, so no event falls between the snapshot or backlog and the feed.
    fn live_feed(
        &self,
        route: Option<&str>,
    ) -> Result<broadcast::Receiver<Arc<CacheEvent>>, ApiError> {
        let poisoned = || ApiError::Internal("watch cache lock poisoned".into());
        match route {
            None => Ok(self.fanout.lock().map_err(|_| poisoned())?.subscribe()),
            Some(value) => {
                let mut routes = self.routes.lock().map_err(|_| poisoned())?;
                // Feeds whose watchers all left go now, not only when their next event comes:
                // watches on values that never see an event must not pile up.
                routes.retain(|_, tx| tx.receiver_count() > 0);
                Ok(routes
                    .entry(value.to_string())
                    .or_insert_with(|| broadcast::channel(ROUTED_CAPACITY).0)
                    .subscribe())
            }
        }
    }

    /// After a watcher lagged: the events after `rev` still in the window.
    pub fn replay_after(&self, rev: i64) -> Result<Vec<Arc<CacheEvent>>, String> {
        let st = self.state.read().map_err(|_| "lock poisoned".to_string())?;
        if rev < st.window_start {
            return Err(format!(
                "too old resource version: {rev} ({})",
                st.window_start
            ));
        }
        Ok(st.events.iter().filter(|e| e.rev > rev).cloned().collect())
    }
}

fn poisoned() -> KvError {
    KvError::Other("watch cache lock poisoned".into())
}
