//! A watcher that resumes from `last_seen + 1` across server restarts sees the
//! store's history exactly: nothing lost, duplicated or reordered.
//!
//! A writer puts and deletes keys under a prefix without pause while the server
//! is restarted four times (SIGTERM, kill -9, SIGTERM, kill -9). At the end the
//! watcher's list is compared with a fresh watch from the first revision (no
//! compaction happened) and with the writer's acknowledged revisions.
//!
//! Validate against real etcd with `TUGBOAT_TEST_TARGET=etcd`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;
use tugboat_store::pb::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, DeleteRangeRequest, PutRequest,
    RangeRequest, WatchCreateRequest, WatchRequest,
};
use tugboat_store::pb::mvccpb::event::EventType;
use tugboat_testsuite::load::kvutil::{kv, plain_channel};
use tugboat_testsuite::load::prefix_end;
use tugboat_testsuite::{start_server, TargetKind};

const PREFIX: &[u8] = b"wr/";
const KEYS: u32 = 20;
/// Acknowledged writes between two restarts (and before the first / after the last).
const WRITES_PER_PHASE: u64 = 150;
/// Guards against hangs; not performance expectations.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const HANG_GUARD: Duration = Duration::from_secs(300);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    Sigterm,
    Kill9,
}

const RESTARTS: [Restart; 4] = [
    Restart::Sigterm,
    Restart::Kill9,
    Restart::Sigterm,
    Restart::Kill9,
];

/// One change as (key, revision, PUT/DELETE).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    key: Vec<u8>,
    revision: i64,
    kind: i32,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.kind == EventType::Delete as i32 {
            "DELETE"
        } else {
            "PUT"
        };
        write!(
            f,
            "{kind} {}@{}",
            String::from_utf8_lossy(&self.key),
            self.revision
        )
    }
}

/// What the resuming watcher saw.
#[derive(Debug, Default)]
struct WatchLog {
    changes: Vec<Change>,
    /// Established streams that broke (server went away).
    breaks: u32,
    /// Attempts to reconnect or re-create the watch that failed.
    failed_attempts: u32,
    problems: Vec<String>,
}

/// Opens a watch on PREFIX from `start` (inclusive) and reads events until the
/// stream breaks or `stop` holds a revision already reached. Returns true when done.
async fn watch_once(
    endpoint: &str,
    start: i64,
    stop: &mut signal::Receiver<Option<i64>>,
    log: &mut WatchLog,
) -> Result<bool, String> {
    let channel = plain_channel(endpoint).await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(4);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: PREFIX.to_vec(),
            range_end: prefix_end(PREFIX),
            start_revision: start,
            ..Default::default()
        })),
    };
    tx.send(create).await.map_err(|_| "request stream closed")?;
    let mut stream = WatchClient::new(channel)
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("watch call: {s}"))?
        .into_inner();
    let mut created = false;
    loop {
        let last = log.changes.last().map(|c| c.revision).unwrap_or(start - 1);
        let stop_at = *stop.borrow();
        if let Some(r) = stop_at {
            if last >= r {
                return Ok(true);
            }
        }
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    Ok(None) | Err(_) if created => {
                        log.breaks += 1;
                        return Ok(false);
                    }
                    Ok(None) => return Err("stream ended before the watch was created".into()),
                    Err(s) => return Err(format!("before creation: {s}")),
                };
                if resp.canceled {
                    log.problems.push(format!(
                        "watch from {start} canceled: {:?} (compact_revision {})",
                        resp.cancel_reason, resp.compact_revision
                    ));
                    return Ok(true);
                }
                if resp.created {
                    created = true;
                }
                for ev in resp.events {
                    let Some(kv) = ev.kv else {
                        log.problems.push("event without kv".into());
                        continue;
                    };
                    log.changes.push(Change { key: kv.key, revision: kv.mod_revision, kind: ev.r#type });
                }
            }
            changed = stop.changed(), if stop_at.is_none() => {
                if changed.is_err() {
                    return Ok(true);
                }
            }
        }
    }
}

/// Watches PREFIX from `first`, resuming at `last_seen + 1` whenever the stream breaks.
async fn resuming_watcher(
    endpoint: String,
    first: i64,
    mut stop: signal::Receiver<Option<i64>>,
) -> WatchLog {
    let mut log = WatchLog::default();
    let began = Instant::now();
    loop {
        let start = log.changes.last().map(|c| c.revision + 1).unwrap_or(first);
        match watch_once(&endpoint, start, &mut stop, &mut log).await {
            Ok(true) => return log,
            Ok(false) => {}
            Err(_) => {
                log.failed_attempts += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        if began.elapsed() > HANG_GUARD {
            log.problems
                .push("watcher gave up: hang guard expired".into());
            return log;
        }
    }
}

/// What the writer did.
#[derive(Debug, Default)]
struct WriteLog {
    acked: Vec<Change>,
    failed: u64,
}

/// Puts and deletes random keys until `done`, reconnecting after failures.
async fn writer(endpoint: String, acks: Arc<AtomicU64>, done: Arc<AtomicBool>) -> WriteLog {
    let mut log = WriteLog::default();
    let mut client = None;
    let mut n = 0u64;
    while !done.load(Ordering::SeqCst) {
        let mut kvc = match client.take() {
            Some(c) => c,
            None => match plain_channel(&endpoint).await {
                Ok(ch) => kv(ch),
                Err(_) => {
                    log.failed += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            },
        };
        n += 1;
        let (j, delete) = {
            let mut rng = rand::rng();
            (rng.random_range(0..KEYS), rng.random_bool(0.3))
        };
        let mut key = PREFIX.to_vec();
        key.extend_from_slice(format!("k{j:02}").as_bytes());
        let outcome = if delete {
            let req = DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, kvc.delete_range(req)).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let rev = r.header.map(|h| h.revision).unwrap_or(0);
                    // Deleting an absent key changes nothing and makes no event.
                    Ok((r.deleted > 0).then_some((rev, EventType::Delete)))
                }
                Ok(Err(s)) => Err(s.to_string()),
                Err(_) => Err("timeout".to_string()),
            }
        } else {
            let req = PutRequest {
                key: key.clone(),
                value: format!("v{n}").into_bytes(),
                ..Default::default()
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, kvc.put(req)).await {
                Ok(Ok(r)) => {
                    let rev = r.into_inner().header.map(|h| h.revision).unwrap_or(0);
                    Ok(Some((rev, EventType::Put)))
                }
                Ok(Err(s)) => Err(s.to_string()),
                Err(_) => Err("timeout".to_string()),
            }
        };
        match outcome {
            Ok(change) => {
                if let Some((revision, kind)) = change {
                    log.acked.push(Change {
                        key,
                        revision,
                        kind: kind as i32,
                    });
                }
                acks.fetch_add(1, Ordering::SeqCst);
                client = Some(kvc);
            }
            Err(_) => {
                // The server is restarting: drop the connection and try again.
                log.failed += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    log
}

/// The store's current revision.
async fn current_revision(endpoint: &str) -> Result<i64, String> {
    let mut kvc = kv(plain_channel(endpoint).await.map_err(|e| e.to_string())?);
    let resp = kvc
        .range(RangeRequest {
            key: PREFIX.to_vec(),
            range_end: prefix_end(PREFIX),
            count_only: true,
            ..Default::default()
        })
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    resp.header
        .map(|h| h.revision)
        .ok_or_else(|| "range response without header".to_string())
}

/// Whether `status` is a clean exit after SIGTERM for this implementation.
///
/// tugboatd must exit 0; Go's etcd shuts down cleanly and then re-raises the
/// signal, so it reports "killed by SIGTERM".
fn clean_exit(kind: TargetKind, status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    match kind {
        TargetKind::Tugboat => status.success(),
        TargetKind::Etcd => status.success() || status.signal() == Some(libc::SIGTERM),
    }
}

fn wait_for_acks(acks: &AtomicU64, target: u64, what: &str) {
    let began = Instant::now();
    while acks.load(Ordering::SeqCst) < target {
        assert!(
            began.elapsed() < HANG_GUARD,
            "{what}: only {} of {target} writes acknowledged after {HANG_GUARD:?}",
            acks.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn watcher_resumes_across_restarts_without_gaps() {
    let kind = TargetKind::from_env().unwrap_or_else(|e| panic!("{e}"));
    let rt = tugboat_testsuite::test_runtime();
    let mut node = start_server(kind).unwrap_or_else(|e| panic!("starting {kind}: {e}"));
    let endpoint = node.plain_endpoint();

    let first = rt
        .block_on(current_revision(&endpoint))
        .unwrap_or_else(|e| panic!("initial revision: {e}"))
        + 1;
    let (stop_tx, stop_rx) = signal::channel(None);
    let watcher = rt.spawn(resuming_watcher(endpoint.clone(), first, stop_rx));
    let acks = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = rt.spawn(writer(endpoint.clone(), acks.clone(), done.clone()));

    let mut target = WRITES_PER_PHASE;
    for (i, how) in RESTARTS.iter().enumerate() {
        wait_for_acks(&acks, target, &format!("before restart {i} ({how:?})"));
        match how {
            Restart::Sigterm => {
                let status = node
                    .sigterm()
                    .unwrap_or_else(|e| panic!("restart {i}: SIGTERM failed: {e}"));
                assert!(
                    clean_exit(kind, status),
                    "restart {i}: {kind} exited with {status} after SIGTERM; log:\n{}",
                    node.log_tail(60)
                );
                node.restart()
                    .unwrap_or_else(|e| panic!("restart {i} after SIGTERM failed: {e}"));
            }
            Restart::Kill9 => {
                node.kill9();
                node.restart()
                    .unwrap_or_else(|e| panic!("restart {i} after kill -9 failed: {e}"));
            }
        }
        eprintln!(
            "restart {i} ({how:?}) done after {} acknowledged writes",
            acks.load(Ordering::SeqCst)
        );
        target = acks.load(Ordering::SeqCst) + WRITES_PER_PHASE;
    }
    wait_for_acks(&acks, target, "after the last restart");
    done.store(true, Ordering::SeqCst);
    let writes = rt
        .block_on(async { tokio::time::timeout(HANG_GUARD, writer).await })
        .unwrap_or_else(|_| panic!("writer did not stop"))
        .unwrap_or_else(|e| panic!("writer task failed: {e}"));

    let last = rt
        .block_on(current_revision(&endpoint))
        .unwrap_or_else(|e| panic!("final revision: {e}"));
    // The watcher stops once it has seen everything up to the final revision.
    let _ = stop_tx.send(Some(last));
    let seen = rt
        .block_on(async { tokio::time::timeout(HANG_GUARD, watcher).await })
        .unwrap_or_else(|_| panic!("watcher did not reach revision {last}"))
        .unwrap_or_else(|e| panic!("watcher task failed: {e}"));

    // Ground truth: one uninterrupted watch over the whole (uncompacted) history.
    let (_tx, history_stop) = signal::channel(Some(last));
    let history = rt.block_on(async {
        let mut stop = history_stop;
        let mut log = WatchLog::default();
        match watch_once(&endpoint, first, &mut stop, &mut log).await {
            Ok(true) => log,
            Ok(false) => panic!("history watch broke"),
            Err(e) => panic!("history watch: {e}"),
        }
    });

    let mut problems = seen.problems.clone();
    problems.extend(history.problems.iter().map(|p| format!("history: {p}")));
    for pair in seen.changes.windows(2) {
        if pair[1].revision <= pair[0].revision {
            problems.push(format!(
                "revisions not strictly increasing: {} then {}",
                pair[0], pair[1]
            ));
        }
    }
    if seen.changes != history.changes {
        let at = seen
            .changes
            .iter()
            .zip(&history.changes)
            .position(|(a, b)| a != b)
            .unwrap_or(seen.changes.len().min(history.changes.len()));
        let show = |v: &[Change]| {
            v.iter()
                .skip(at.saturating_sub(2))
                .take(5)
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        problems.push(format!(
            "watcher saw {} events, history has {}; first difference at index {at}: watcher [{}] \
             history [{}]",
            seen.changes.len(),
            history.changes.len(),
            show(&seen.changes),
            show(&history.changes)
        ));
    }
    let in_history: HashMap<i64, &Change> =
        history.changes.iter().map(|c| (c.revision, c)).collect();
    for a in &writes.acked {
        match in_history.get(&a.revision) {
            Some(h) if *h == a => {}
            Some(h) => problems.push(format!("acknowledged {a} but history has {h}")),
            None => problems.push(format!("acknowledged {a} is missing from the history")),
        }
    }
    if seen.breaks < RESTARTS.len() as u32 {
        problems.push(format!(
            "the watch stream broke only {} times for {} restarts: the restarts did not reach it",
            seen.breaks,
            RESTARTS.len()
        ));
    }
    if writes.acked.is_empty() || history.changes.len() < writes.acked.len() {
        problems.push(format!(
            "history ({} events) is shorter than the acknowledged changes ({})",
            history.changes.len(),
            writes.acked.len()
        ));
    }

    eprintln!(
        "revisions {first}..={last}: writer acked {} requests ({} changes), {} failed attempts; \
         watcher saw {} events over {} stream breaks and {} failed reconnects; history {} events",
        acks.load(Ordering::SeqCst),
        writes.acked.len(),
        writes.failed,
        seen.changes.len(),
        seen.breaks,
        seen.failed_attempts,
        history.changes.len()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s) against {kind}:\n{}\nserver log:\n{}",
        problems.len(),
        problems.join("\n"),
        node.log_tail(60)
    );
}
