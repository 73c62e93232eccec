//! Watch fan-out latency: W watchers on one prefix, one writer.
//!
//! The writer stamps each value with its send time (monotonic, process-local),
//! so a watcher's latency is "put sent" to "event received": commit latency
//! plus the server's event delivery.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;
use tugboat_store::pb::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, PutRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use tugboat_store::pb::mvccpb::event::EventType;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::client::prefix_end;
use super::config::LoadConfig;
use super::keys::{filler, read_stamp, stamp, KeyShape};
use super::ops::{call, Budget};
use super::stats::{Recorder, Report};
use super::LoadError;

/// One created watch stream; the sender keeps the request side open.
struct OpenWatch {
    _requests: mpsc::Sender<WatchRequest>,
    events: Streaming<WatchResponse>,
}

/// Opens a watch on `prefix` and waits for the server to confirm it.
async fn open_watch(
    channel: Channel,
    prefix: &[u8],
    limit: Duration,
) -> Result<OpenWatch, LoadError> {
    let (tx, rx) = mpsc::channel(4);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        })),
    };
    tx.send(create)
        .await
        .map_err(|_| LoadError::WatchSetup("request stream closed".into()))?;
    let mut client = WatchClient::new(channel);
    let setup = async {
        let mut events = client
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|s| LoadError::WatchSetup(s.to_string()))?
            .into_inner();
        match events.message().await {
            Ok(Some(first)) if first.created && !first.canceled => Ok(events),
            Ok(Some(first)) => Err(LoadError::WatchSetup(format!(
                "first response was not a creation: {first:?}"
            ))),
            Ok(None) => Err(LoadError::WatchSetup("stream ended before creation".into())),
            Err(s) => Err(LoadError::WatchSetup(s.to_string())),
        }
    };
    let events = tokio::time::timeout(limit, setup)
        .await
        .map_err(|_| LoadError::WatchSetup("no creation response in time".into()))??;
    Ok(OpenWatch {
        _requests: tx,
        events,
    })
}

/// What one watcher saw.
struct WatcherTally {
    events: Recorder,
    received: u64,
}

async fn watcher_loop(
    mut w: OpenWatch,
    base: Instant,
    mut stop: signal::Receiver<Option<i64>>,
    drain: Duration,
) -> WatcherTally {
    let mut tally = WatcherTally {
        events: Recorder::new(),
        received: 0,
    };
    let mut last_rev = 0i64;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let stop_rev = *stop.borrow();
        if let Some(r) = stop_rev {
            if last_rev >= r {
                break;
            }
            if deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + drain);
            }
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            msg = w.events.message() => match msg {
                Ok(Some(resp)) => {
                    if resp.canceled {
                        tally.events.error(format!("watch canceled: {}", resp.cancel_reason));
                        break;
                    }
                    let now = base.elapsed();
                    for ev in resp.events {
                        let Some(kv) = ev.kv else { continue };
                        last_rev = last_rev.max(kv.mod_revision);
                        if ev.r#type != EventType::Put as i32 {
                            continue;
                        }
                        tally.received += 1;
                        match read_stamp(&kv.value) {
                            Some(sent) => tally
                                .events
                                .ok(now.saturating_sub(Duration::from_nanos(sent))),
                            None => tally.events.error("event value carries no timestamp"),
                        }
                    }
                }
                Ok(None) => {
                    tally.events.error("watch stream ended");
                    break;
                }
                Err(s) => {
                    tally.events.error(format!("watch stream failed: {s}"));
                    break;
                }
            },
            changed = stop.changed(), if stop_rev.is_none() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => break,
        }
    }
    tally
}

/// Runs the watch load: open every watcher, then write, then drain.
pub async fn run(channels: &[Channel], cfg: &LoadConfig) -> Result<Report, LoadError> {
    let shape = KeyShape::new(&cfg.prefix, cfg.key_size, cfg.key_space);
    let prefix = cfg.prefix.as_bytes().to_vec();
    let base = Instant::now();
    let (stop_tx, stop_rx) = signal::channel(None);
    let mut watchers = Vec::with_capacity(cfg.clients);
    for id in 0..cfg.clients {
        let w = open_watch(
            channels[id % channels.len()].clone(),
            &prefix,
            cfg.request_timeout,
        )
        .await?;
        watchers.push(tokio::spawn(watcher_loop(
            w,
            base,
            stop_rx.clone(),
            cfg.drain_timeout,
        )));
    }

    let started = Instant::now();
    let mut kv = KvClient::new(channels[0].clone());
    let budget = Budget::start(cfg.bound);
    let mut rng = StdRng::seed_from_u64(0x7761_7463);
    let mut puts = Recorder::new();
    let mut last_rev = 0i64;
    while budget.take() {
        let mut value = filler(cfg.val_size);
        stamp(&mut value, base);
        let req = PutRequest {
            key: shape.key(rng.random_range(0..cfg.key_space)),
            value,
            ..Default::default()
        };
        let sent = Instant::now();
        match call(cfg.request_timeout, kv.put(req)).await {
            Ok(resp) => {
                puts.ok(sent.elapsed());
                if let Some(h) = resp.header {
                    last_rev = last_rev.max(h.revision);
                }
            }
            Err(e) => puts.error(e),
        }
    }
    // A receiver that already quit is fine: it simply stops counting.
    let _ = stop_tx.send(Some(last_rev));

    let mut events = Recorder::new();
    let expected = puts.ok_count();
    for w in watchers {
        match w.await {
            Ok(t) => {
                events.merge(&t.events);
                events.errors(
                    expected.saturating_sub(t.received),
                    format!(
                        "watcher missed {} of {expected} events",
                        expected.saturating_sub(t.received)
                    ),
                );
            }
            Err(join) => events.error(format!("watcher task failed: {join}")),
        }
    }
    let elapsed = started.elapsed();
    Ok(Report::build(
        cfg,
        elapsed,
        &events,
        vec![("put", &puts), ("event", &events)],
    ))
}
