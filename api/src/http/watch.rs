//! Watches as newline-delimited JSON, served from the watch cache.

use super::table::{table, IncludeObject};
use crate::error::ApiError;
use crate::registry::ResourceDef;
use crate::storage::cache::{CacheEvent, EventType, Subscription, WatchCache};
use axum::body::Body;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Selects the objects a watcher sees.
pub type Filter = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// A watch request, parsed.
pub struct WatchParams {
    /// Start after this revision; `None` = send the current objects as ADDED first.
    pub resource_version: Option<i64>,
    /// `sendInitialEvents=true`: current objects first, then a bookmark marking their end.
    pub send_initial: bool,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// When the watch ends.
    pub timeout: Duration,
    /// Each event as a one-row Table (kubectl get -w).
    pub table: Option<IncludeObject>,
    /// Which objects.
    pub filter: Filter,
    /// Key range of the watched namespace (or all).
    pub range: (String, String),
    /// The value of the cache's route field the field selector pins, if any (a node agent's
    /// `spec.nodeName=<node>`): only events touching it wake this watch.
    pub route: Option<String>,
}

/// A watch body holding just one ERROR event.
fn error_body(e: &ApiError) -> Body {
    let status = serde_json::to_vec(&e.status()).unwrap_or_default();
    Body::from(crate::storage::cache::event_line("ERROR", &status))
}

/// How often a bookmark goes out when the revision moved.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// Starts a watch; the body streams events until the timeout or the client leaves.
pub async fn watch_body(
    cache: Arc<WatchCache>,
    def: ResourceDef,
    p: WatchParams,
) -> Result<Body, ApiError> {
    let (initial, sub) = match p.resource_version {
        Some(rv) if !p.send_initial => {
            if rv > cache.revision() {
                cache.wait_for(rv, Duration::from_secs(5)).await?;
            }
            match cache.subscribe(Some(rv), p.route.as_deref()) {
                Ok(sub) => (Vec::new(), sub),
                // Clients re-list on an ERROR event carrying 410, not on an HTTP 410.
                Err(e @ ApiError::Expired(_)) => return Ok(error_body(&e)),
                Err(e) => return Err(e),
            }
        }
        _ => {
            let (objs, sub) =
                cache.subscribe_with_snapshot(&p.range.0, &p.range.1, p.route.as_deref())?;
            (objs, sub)
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(run(cache, def, p, initial, sub, tx));
    Ok(Body::from_stream(futures::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<Bytes, std::io::Error>,
    )))
}

struct Sender {
    tx: mpsc::Sender<Bytes>,
    def: ResourceDef,
    table: Option<IncludeObject>,
    sent_columns: bool,
    api_version: String,
}

impl Sender {
    async fn send_line(&mut self, line: Bytes) -> bool {
        self.tx.send(line).await.is_ok()
    }

    async fn send_object(&mut self, kind: &str, obj: &Value) -> bool {
        if let Some(include) = self.table {
            let rv = crate::meta::resource_version(obj)
                .ok()
                .flatten()
                .unwrap_or(0);
            let with_columns = !self.sent_columns;
            self.sent_columns = true;
            let t = table(
                &self.def,
                std::iter::once(obj),
                rv,
                None,
                include,
                with_columns,
            );
            return self.send_bytes(kind, &t).await;
        }
        if obj.get("apiVersion").and_then(Value::as_str) == Some(self.api_version.as_str()) {
            return self.send_raw(kind, obj).await;
        }
        let mut o = obj.clone();
        crate::storage::set_api_version(&mut o, &self.def);
        self.send_raw(kind, &o).await
    }

    async fn send_bytes(&mut self, kind: &str, object: &[u8]) -> bool {
        self.send_line(crate::storage::cache::event_line(kind, object))
            .await
    }

    async fn send_raw(&mut self, kind: &str, obj: &Value) -> bool {
        let object = serde_json::to_vec(obj).unwrap_or_default();
        self.send_bytes(kind, &object).await
    }

    async fn send_event(&mut self, ev: &CacheEvent, filter: &Filter) -> bool {
        let now = filter(&ev.object);
        let before = ev.prev.as_deref().map(|p| filter(p)).unwrap_or(false);
        let kind = match (ev.kind, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            (EventType::Deleted, _, true) => "DELETED",
            (EventType::Deleted, true, false) => "DELETED",
            _ => return true,
        };
        if self.table.is_none()
            && kind == ev.kind.as_str()
            && ev.object.get("apiVersion").and_then(Value::as_str)
                == Some(self.api_version.as_str())
        {
            return self.send_line(ev.json_line()).await;
        }
        self.send_object(kind, &ev.object).await
    }

    async fn send_bookmark(&mut self, rev: i64, initial_end: bool) -> bool {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.def.kind, "apiVersion": self.api_version, "metadata": meta});
        self.send_raw("BOOKMARK", &obj).await
    }

    async fn send_error(&mut self, e: &ApiError) {
        let _ = self.send_raw("ERROR", &e.status()).await;
    }
}

async fn run(
    cache: Arc<WatchCache>,
    def: ResourceDef,
    p: WatchParams,
    initial: Vec<Arc<Value>>,
    sub: Subscription,
    tx: mpsc::Sender<Bytes>,
) {
    let api_version = def.api_version();
    let mut s = Sender {
        tx,
        def,
        table: p.table,
        sent_columns: false,
        api_version,
    };
    let deadline = tokio::time::Instant::now() + p.timeout;
    let mut last = sub.from;
    for obj in &initial {
        if (p.filter)(obj) && !s.send_object("ADDED", obj).await {
            return;
        }
    }
    if p.send_initial && p.bookmarks && !s.send_bookmark(last, true).await {
        return;
    }
    for ev in &sub.backlog {
        if !s.send_event(ev, &p.filter).await {
            return;
        }
        last = ev.rev;
    }
    let mut live = sub.live;
    let mut bookmark_tick = tokio::time::interval(BOOKMARK_EVERY);
    bookmark_tick.tick().await;
    let mut bookmarked = last;
    // One timer for the whole watch (a fresh one per event would be re-registered every time).
    let expiry = tokio::time::sleep_until(deadline);
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = &mut expiry => return,
            _ = s.tx.closed() => return,
            _ = bookmark_tick.tick(), if p.bookmarks => {
                let rev = cache.revision().max(last);
                if rev > bookmarked {
                    if !s.send_bookmark(rev, false).await { return; }
                    bookmarked = rev;
                }
            }
            msg = live.recv() => match msg {
                Ok(ev) => {
                    if ev.rev <= last { continue; }
                    if !s.send_event(&ev, &p.filter).await { return; }
                    last = ev.rev;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the live feed: catch up from the window, or end with 410.
                    match cache.replay_after(last) {
                        Ok(evs) => {
                            live = live.resubscribe();
                            for ev in evs {
                                if !s.send_event(&ev, &p.filter).await { return; }
                                last = ev.rev;
                            }
                        }
                        Err(m) => {
                            s.send_error(&ApiError::Expired(m)).await;
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
