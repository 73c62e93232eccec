//! Linearizability of a member's KV API under crashes: concurrent clients
//! put, read and delete a few keys while the member is killed with SIGKILL
//! and restarted; the recorded history (writes whose answer was lost count
//! as "may or may not have happened") must have a linearization, checked by
//! `tugboat_testsuite::linearizability`. Cluster faults (partitions, member
//! changes) join this test with issue 3.

use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tugboat_store::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use tugboat_testsuite::linearizability::{check, Event, Op, Verdict};
use tugboat_testsuite::load::kvutil::{kv, plain_channel};
use tugboat_testsuite::{TugboatNode, TugboatOptions};

const CLIENTS: usize = 6;
const KEYS: usize = 3;
/// How long clients run; `TUGBOAT_LINEARIZABLE_SECS` makes it a longer soak.
const DEFAULT_SECS: u64 = 8;
/// Guards against a hung server; not a performance expectation.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// After a failed request, waits until the member answers again, so that each
/// client leaves at most one operation of unknown outcome per outage (each one
/// multiplies the checker's search space).
async fn wait_until_serving(
    client: &mut tugboat_store::pb::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
    stop_at: Instant,
) {
    while Instant::now() < stop_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let probe = RangeRequest {
            key: b"lin/".to_vec(),
            serializable: true,
            count_only: true,
            ..Default::default()
        };
        if let Ok(Ok(_)) = tokio::time::timeout(REQUEST_TIMEOUT, client.range(probe)).await {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_kill9_is_linearizable() {
    let secs = std::env::var("TUGBOAT_LINEARIZABLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    let node = tokio::task::spawn_blocking(|| TugboatNode::start(TugboatOptions::default()))
        .await
        .expect("join")
        .expect("start tugboatd");
    let endpoint = node.plain_endpoint();
    let node = Arc::new(Mutex::new(node));
    let start = Instant::now();
    let stop_at = start + Duration::from_secs(secs);
    let now = move || start.elapsed().as_nanos() as u64;
    let history: Arc<Mutex<Vec<Event>>> = Arc::default();

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let history = history.clone();
        let endpoint = endpoint.clone();
        clients.push(tokio::spawn(async move {
            let channel = plain_channel(&endpoint).await.expect("connect");
            let mut client = kv(channel);
            let mut seq = 0u64;
            while Instant::now() < stop_at {
                let key = format!("lin/{}", rand::rng().random_range(0..KEYS)).into_bytes();
                let roll: u8 = rand::rng().random_range(0..10);
                let call = now();
                if roll < 4 {
                    let value = format!("c{c}-{seq}").into_bytes();
                    seq += 1;
                    let req = PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    };
                    let ok = tokio::time::timeout(REQUEST_TIMEOUT, client.put(req))
                        .await
                        .is_ok_and(|r| r.is_ok());
                    let ret = ok.then(now);
                    history.lock().expect("history").push(Event {
                        key,
                        op: Op::Write(value),
                        call,
                        ret,
                    });
                    if !ok {
                        wait_until_serving(&mut client, stop_at).await;
                    }
                } else if roll < 5 {
                    let req = DeleteRangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    };
                    let ok = tokio::time::timeout(REQUEST_TIMEOUT, client.delete_range(req))
                        .await
                        .is_ok_and(|r| r.is_ok());
                    let ret = ok.then(now);
                    history.lock().expect("history").push(Event {
                        key,
                        op: Op::Delete,
                        call,
                        ret,
                    });
                    if !ok {
                        wait_until_serving(&mut client, stop_at).await;
                    }
                } else {
                    let req = RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    };
                    if let Ok(Ok(resp)) =
                        tokio::time::timeout(REQUEST_TIMEOUT, client.range(req)).await
                    {
                        let seen = resp.into_inner().kvs.into_iter().next().map(|kv| kv.value);
                        let ret = Some(now());
                        history.lock().expect("history").push(Event {
                            key,
                            op: Op::Read(seen),
                            call,
                            ret,
                        });
                    } else {
                        // A failed read has no effect and tells nothing: not recorded.
                        wait_until_serving(&mut client, stop_at).await;
                    }
                }
                if Instant::now() >= stop_at {
                    break;
                }
            }
        }));
    }

    // Nemesis: two SIGKILL + restart cycles while the clients run.
    let nemesis_node = node.clone();
    let nemesis = tokio::task::spawn_blocking(move || {
        let mut kills = 0;
        for at in [secs / 4, secs / 2] {
            std::thread::sleep(Duration::from_secs(at.max(1)).saturating_sub(Duration::ZERO));
            let mut n = nemesis_node.lock().expect("node");
            n.kill9();
            n.restart().expect("restart after kill -9");
            kills += 1;
        }
        kills
    });
    for c in clients {
        c.await.expect("client");
    }
    let kills = nemesis.await.expect("nemesis");

    // Final reads after the dust settles.
    let channel = plain_channel(&endpoint).await.expect("connect");
    let mut client = kv(channel);
    for k in 0..KEYS {
        let key = format!("lin/{k}").into_bytes();
        let call = now();
        let resp = client
            .range(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await
            .expect("final read");
        let seen = resp.into_inner().kvs.into_iter().next().map(|kv| kv.value);
        history.lock().expect("history").push(Event {
            key,
            op: Op::Read(seen),
            call,
            ret: Some(now()),
        });
    }

    let history = std::mem::take(&mut *history.lock().expect("history"));
    let unknown = history.iter().filter(|e| e.ret.is_none()).count();
    let reads = history
        .iter()
        .filter(|e| matches!(e.op, Op::Read(_)))
        .count();
    eprintln!(
        "linearizability: {} operations ({reads} reads, {unknown} with unknown outcome), {kills} kill -9 cycles, {secs} s",
        history.len()
    );
    assert!(
        history.len() > 100,
        "too few operations to mean anything: {}",
        history.len()
    );
    assert_eq!(check(&history), Verdict::Linearizable);
}
