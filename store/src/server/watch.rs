//! etcdserverpb.Watch: one task per client stream multiplexes its watchers.
//! Each stream follows the store's publication channel; what happened before
//! a watcher's start (or while the stream lagged) is replayed from the
//! backend history first, so a watcher sees every revision exactly once, in
//! order, across replay and live delivery.

use super::EtcdServer;
use crate::error::{StoreError, MAX_REQUEST_BYTES};
use crate::mvcc::{KeyRange, RevisionEvents};
use crate::pb::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::pb::mvccpb::{event::EventType, Event};
use futures::Stream;
use prost::Message;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The Watch service.
pub struct WatchService(pub Arc<EtcdServer>);

/// Events read from history per backend pass while catching a watcher up.
const REPLAY_BATCH_EVENTS: usize = 1000;
/// Records scanned per backend pass (writes wait during a pass).
const REPLAY_BATCH_SCAN: usize = 10_000;
/// Responses buffered per stream before the stream task waits for the client.
const STREAM_BUFFER: usize = 256;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.0.check_leader(&request)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let session = WatchSession::new(self.0.clone(), tx)?;
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Watcher {
    range: KeyRange,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// The first revision this watcher still has to see.
    next_rev: i64,
    /// Whether anything was sent since the last progress tick.
    active: bool,
}

impl Watcher {
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| {
                let is_put = e.r#type == EventType::Put as i32;
                !(is_put && self.no_put || !is_put && self.no_delete)
                    && e.kv.as_ref().is_some_and(|kv| self.range.contains(&kv.key))
            })
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

/// Why a session stops.
enum Stop {
    ClientGone,
}

struct WatchSession {
    server: Arc<EtcdServer>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    events: tokio::sync::broadcast::Receiver<Arc<RevisionEvents>>,
    /// Every revision up to this one has been delivered to every watcher of the stream.
    delivered: i64,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
}

impl WatchSession {
    fn new(
        server: Arc<EtcdServer>,
        out: mpsc::Sender<Result<WatchResponse, Status>>,
    ) -> Result<Self, Status> {
        // Subscribe before reading the revision: every later revision then
        // reaches us through the channel (or a lag we recover from history).
        let events = server.kv.subscribe();
        let delivered = server.kv.revisions()?.0;
        Ok(WatchSession {
            server,
            out,
            events,
            delivered,
            watchers: BTreeMap::new(),
            next_id: 0,
        })
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Stop> {
        self.out.send(Ok(resp)).await.map_err(|_| Stop::ClientGone)
    }

    async fn run(mut self, mut incoming: Streaming<WatchRequest>) {
        let metrics = &self.server.metrics;
        metrics.watch_streams.fetch_add(1, Ordering::Relaxed);
        self.serve(&mut incoming).await;
        let metrics = &self.server.metrics;
        metrics.watch_streams.fetch_sub(1, Ordering::Relaxed);
        metrics
            .watchers
            .fetch_sub(self.watchers.len() as i64, Ordering::Relaxed);
    }

    async fn serve(&mut self, incoming: &mut Streaming<WatchRequest>) {
        let period = self.server.cfg.watch_progress_interval;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let closed = self.server.closed();
        tokio::pin!(closed);
        loop {
            let step = tokio::select! {
                _ = &mut closed => Err(Stop::ClientGone),
                req = incoming.message() => match req {
                    Ok(Some(req)) => self.handle(req).await,
                    Ok(None) => Err(Stop::ClientGone),
                    Err(e) => {
                        tracing::debug!(error = %e, "watch stream closed by client");
                        Err(Stop::ClientGone)
                    }
                },
                ev = self.events.recv() => match ev {
                    Ok(batch) => self.deliver_live(&batch).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "watch stream lagged; replaying from history");
                        self.catch_up().await
                    }
                    Err(RecvError::Closed) => Err(Stop::ClientGone),
                },
                _ = progress.tick() => self.notify_progress().await,
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Stop> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    self.server.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
                    self.send(WatchResponse {
                        header: self.server.header(self.delivered),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // The revision this stream has delivered, never a newer one:
                // clients treat it as "nothing up to here is still coming".
                self.send(WatchResponse {
                    header: self.server.header(self.delivered),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Stop> {
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self
                    .send(WatchResponse {
                        header: self.server.header(self.delivered),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream"
                            .into(),
                        ..Default::default()
                    })
                    .await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let watcher = Watcher {
            range: KeyRange::from_etcd(&c.key, &c.range_end),
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: c.prev_kv,
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            next_rev: if c.start_revision > 0 {
                c.start_revision
            } else {
                self.delivered + 1
            },
            active: false,
        };
        self.send(WatchResponse {
            header: self.server.header(self.delivered),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        self.watchers.insert(id, watcher);
        self.server.metrics.watchers.fetch_add(1, Ordering::Relaxed);
        self.replay(id, self.delivered).await
    }

    /// Sends watcher `id` its history up to revision `to`.
    async fn replay(&mut self, id: i64, to: i64) -> Result<(), Stop> {
        loop {
            let Some(w) = self.watchers.get(&id) else {
                return Ok(());
            };
            if w.next_rev > to {
                return Ok(());
            }
            let history = self.server.kv.history(
                &w.range,
                w.next_rev,
                to,
                w.prev_kv,
                REPLAY_BATCH_EVENTS,
                REPLAY_BATCH_SCAN,
            );
            let history = match history {
                Ok(h) => h,
                Err(StoreError::Compacted) => return self.cancel_compacted(id).await,
                Err(e) => {
                    tracing::error!(error = %e, watch_id = id, "watch history read failed");
                    let _ = self.out.send(Err(e.into())).await;
                    return Err(Stop::ClientGone);
                }
            };
            let reached = history.reached;
            let mut events = Vec::new();
            if let Some(w) = self.watchers.get(&id) {
                for b in &history.batches {
                    events.extend(w.select(&b.events));
                }
            }
            if !events.is_empty() {
                self.send_events(id, to, events).await?;
            }
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = reached + 1;
            }
        }
    }

    async fn cancel_compacted(&mut self, id: i64) -> Result<(), Stop> {
        if self.watchers.remove(&id).is_some() {
            self.server.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
        }
        let (_, compacted) = self.server.kv.revisions().unwrap_or((0, 0));
        self.send(WatchResponse {
            header: self.server.header(self.delivered),
            watch_id: id,
            canceled: true,
            compact_revision: compacted,
            cancel_reason: StoreError::Compacted.to_string(),
            ..Default::default()
        })
        .await
    }

    /// Sends events to one watcher, split into fragments when it asked for them and they are large.
    async fn send_events(
        &mut self,
        id: i64,
        revision: i64,
        events: Vec<Event>,
    ) -> Result<(), Stop> {
        let fragment = self.watchers.get(&id).is_some_and(|w| w.fragment);
        self.server
            .metrics
            .watch_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        if let Some(w) = self.watchers.get_mut(&id) {
            w.active = true;
        }
        let header = self.server.header(revision);
        let whole = WatchResponse {
            header,
            watch_id: id,
            events,
            ..Default::default()
        };
        if !fragment || whole.encoded_len() <= MAX_REQUEST_BYTES {
            return self.send(whole).await;
        }
        let mut chunk: Vec<Event> = Vec::new();
        let mut size = 0usize;
        let mut pending = whole.events.into_iter().peekable();
        while let Some(ev) = pending.next() {
            let len = ev.encoded_len() + 8;
            if !chunk.is_empty() && size + len > MAX_REQUEST_BYTES {
                self.send(WatchResponse {
                    header,
                    watch_id: id,
                    fragment: true,
                    events: std::mem::take(&mut chunk),
                    ..Default::default()
                })
                .await?;
                size = 0;
            }
            size += len;
            chunk.push(ev);
            if pending.peek().is_none() {
                self.send(WatchResponse {
                    header,
                    watch_id: id,
                    fragment: false,
                    events: std::mem::take(&mut chunk),
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn deliver_live(&mut self, batch: &RevisionEvents) -> Result<(), Stop> {
        if batch.revision <= self.delivered {
            return Ok(());
        }
        if batch.revision > self.delivered + 1 {
            // A revision went missing between history and the channel; recover it from history.
            self.catch_up_to(batch.revision - 1).await?;
        }
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            if w.next_rev > batch.revision {
                continue;
            }
            let events = w.select(&batch.events);
            if !events.is_empty() {
                self.send_events(id, batch.revision, events).await?;
            }
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = batch.revision + 1;
            }
        }
        self.delivered = batch.revision;
        Ok(())
    }

    async fn catch_up(&mut self) -> Result<(), Stop> {
        let current = self
            .server
            .kv
            .revisions()
            .map(|r| r.0)
            .unwrap_or(self.delivered);
        self.catch_up_to(current).await
    }

    async fn catch_up_to(&mut self, to: i64) -> Result<(), Stop> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.replay(id, to).await?;
        }
        self.delivered = self.delivered.max(to);
        Ok(())
    }

    async fn notify_progress(&mut self) -> Result<(), Stop> {
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && !w.active)
            .map(|(id, _)| *id)
            .collect();
        for w in self.watchers.values_mut() {
            w.active = false;
        }
        for id in ids {
            self.send(WatchResponse {
                header: self.server.header(self.delivered),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}
