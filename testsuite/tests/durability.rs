//! kill -9 loses no acknowledged write and never leaves half a transaction.
//!
//! Eight writers stream puts and two-key transactions over the plain endpoint;
//! after a few hundred acknowledgements the server is SIGKILLed, restarted on
//! the same data dir, and every acknowledged write must be there with its
//! value and the revision the server acknowledged. Five cycles on one data dir.
//!
//! Validate against real etcd with `TUGBOAT_TEST_TARGET=etcd`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tonic::transport::Channel;
use tugboat_store::pb::etcdserverpb::{
    compare, kv_client::KvClient, request_op, Compare, PutRequest, RequestOp, TxnRequest,
};
use tugboat_testsuite::load::kvutil::{fetch_prefix, kv, plain_channel};
use tugboat_testsuite::{start_server, TargetKind};

const WRITERS: usize = 8;
const CYCLES: usize = 5;
/// Every fourth operation of a writer is a two-key transaction.
const TXN_EVERY: u64 = 4;
/// Guards against a hung server; not a performance expectation.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Guards against a writer set that never reaches the kill point.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// One write the server acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    key: Vec<u8>,
    value: Vec<u8>,
    revision: i64,
}

/// What one writer did during one cycle.
#[derive(Debug, Default)]
struct WriterLog {
    acked: Vec<Acked>,
    /// Every transaction sent, acknowledged or not: (key a, key b).
    txns: Vec<(Vec<u8>, Vec<u8>)>,
    /// The key of the request that was in flight when the server died.
    in_flight: Option<Vec<u8>>,
    /// An error that happened before the kill: a test failure.
    unexpected: Option<String>,
}

fn txn_put_pair(a: &[u8], b: &[u8], value: &[u8]) -> TxnRequest {
    let put = |k: &[u8]| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    };
    TxnRequest {
        // Create-only guard: the keys are unique, so this must succeed; it makes
        // the transaction exercise the compare path too.
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: a.to_vec(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            range_end: Vec::new(),
        }],
        success: vec![put(a), put(b)],
        failure: Vec::new(),
    }
}

async fn writer(
    mut kv: KvClient<Channel>,
    cycle: usize,
    id: usize,
    acks: Arc<AtomicU64>,
    killed: Arc<AtomicBool>,
) -> WriterLog {
    let mut log = WriterLog::default();
    let mut n: u64 = 0;
    loop {
        n += 1;
        // Random payload so that a value can only match if this exact write landed.
        let token: u64 = rand::rng().random();
        let value = format!("c{cycle}-w{id}-n{n}-{token:016x}").into_bytes();
        let outcome: Result<Vec<Acked>, String> = if n.is_multiple_of(TXN_EVERY) {
            let a = format!("a/c{cycle}-w{id}-n{n}").into_bytes();
            let b = format!("b/c{cycle}-w{id}-n{n}").into_bytes();
            log.txns.push((a.clone(), b.clone()));
            log.in_flight = Some(a.clone());
            match tokio::time::timeout(REQUEST_TIMEOUT, kv.txn(txn_put_pair(&a, &b, &value))).await
            {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    let rev = resp.header.map(|h| h.revision).unwrap_or(0);
                    if resp.succeeded {
                        Ok(vec![
                            Acked {
                                key: a,
                                value: value.clone(),
                                revision: rev,
                            },
                            Acked {
                                key: b,
                                value,
                                revision: rev,
                            },
                        ])
                    } else {
                        Err(format!(
                            "create-only txn on fresh key {a:?} did not succeed"
                        ))
                    }
                }
                Ok(Err(status)) => Err(format!("txn: {status}")),
                Err(_) => Err("txn timed out".into()),
            }
        } else {
            let key = format!("d/c{cycle}-w{id}-n{n}").into_bytes();
            log.in_flight = Some(key.clone());
            let req = PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, kv.put(req)).await {
                Ok(Ok(resp)) => {
                    let rev = resp.into_inner().header.map(|h| h.revision).unwrap_or(0);
                    Ok(vec![Acked {
                        key,
                        value,
                        revision: rev,
                    }])
                }
                Ok(Err(status)) => Err(format!("put: {status}")),
                Err(_) => Err("put timed out".into()),
            }
        };
        match outcome {
            Ok(writes) => {
                log.in_flight = None;
                log.acked.extend(writes);
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                if !killed.load(Ordering::SeqCst) {
                    log.unexpected = Some(format!("writer {id} before the kill: {e}"));
                }
                return log;
            }
        }
    }
}

/// Reads every test key once; (header revision, key -> (value, mod_revision)).
async fn snapshot(endpoint: &str) -> Result<(i64, HashMap<Vec<u8>, (Vec<u8>, i64)>), String> {
    let ch = plain_channel(endpoint).await.map_err(|e| e.to_string())?;
    let mut kv = kv(ch);
    let mut all = HashMap::new();
    let mut newest = 0;
    for prefix in [&b"d/"[..], b"a/", b"b/"] {
        let (rev, kvs) = fetch_prefix(&mut kv, prefix)
            .await
            .map_err(|s| format!("range {prefix:?}: {s}"))?;
        newest = newest.max(rev);
        for item in kvs {
            all.insert(item.key, (item.value, item.mod_revision));
        }
    }
    Ok((newest, all))
}

#[test]
fn acknowledged_writes_survive_kill9() {
    let kind = TargetKind::from_env().unwrap_or_else(|e| panic!("{e}"));
    let rt = tugboat_testsuite::test_runtime();
    let mut node = start_server(kind).unwrap_or_else(|e| panic!("starting {kind}: {e}"));
    let endpoint = node.plain_endpoint();

    let mut all_acked: Vec<Acked> = Vec::new();
    let mut all_txns: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut revision_floor = 0i64;

    for cycle in 0..CYCLES {
        let acks = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let kill_after: u64 = rand::rng().random_range(200..800);
        let channel = rt
            .block_on(plain_channel(&endpoint))
            .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"));
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| {
                rt.spawn(writer(
                    kv(channel.clone()),
                    cycle,
                    id,
                    acks.clone(),
                    killed.clone(),
                ))
            })
            .collect();

        let waiting = Instant::now();
        while acks.load(Ordering::SeqCst) < kill_after {
            assert!(
                waiting.elapsed() < HANG_GUARD,
                "cycle {cycle}: only {} acks after {HANG_GUARD:?}; log:\n{}",
                acks.load(Ordering::SeqCst),
                node.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        killed.store(true, Ordering::SeqCst);
        node.kill9();

        let logs: Vec<WriterLog> = rt.block_on(async {
            let mut logs = Vec::new();
            for w in writers {
                match tokio::time::timeout(HANG_GUARD, w).await {
                    Ok(Ok(log)) => logs.push(log),
                    Ok(Err(join)) => panic!("writer task failed: {join}"),
                    Err(_) => panic!("writer did not stop after the server was killed"),
                }
            }
            logs
        });
        drop(channel);

        node.restart()
            .unwrap_or_else(|e| panic!("cycle {cycle}: restart after kill -9 failed: {e}"));

        let mut cycle_acked = 0usize;
        let mut in_flight = Vec::new();
        for log in logs {
            if let Some(e) = log.unexpected {
                problems.push(format!("cycle {cycle}: {e}"));
            }
            for a in &log.acked {
                if a.revision <= revision_floor {
                    problems.push(format!(
                        "cycle {cycle}: {:?} acknowledged at revision {} which is not above the \
                         revision {revision_floor} seen after the previous restart",
                        String::from_utf8_lossy(&a.key),
                        a.revision
                    ));
                }
            }
            cycle_acked += log.acked.len();
            all_acked.extend(log.acked);
            all_txns.extend(log.txns);
            in_flight.extend(log.in_flight);
        }

        let (store_rev, store) = rt
            .block_on(snapshot(&endpoint))
            .unwrap_or_else(|e| panic!("cycle {cycle}: reading back after restart: {e}"));
        let max_acked = all_acked.iter().map(|a| a.revision).max().unwrap_or(0);
        if store_rev < max_acked {
            problems.push(format!(
                "cycle {cycle}: store revision {store_rev} after restart is below the highest \
                 acknowledged revision {max_acked}"
            ));
        }
        revision_floor = store_rev;

        let mut missing = 0usize;
        for a in &all_acked {
            match store.get(&a.key) {
                None => {
                    missing += 1;
                    if missing <= 10 {
                        problems.push(format!(
                            "cycle {cycle}: acknowledged {:?} (revision {}) is missing",
                            String::from_utf8_lossy(&a.key),
                            a.revision
                        ));
                    }
                }
                Some((value, mod_rev)) => {
                    if value != &a.value || *mod_rev != a.revision {
                        problems.push(format!(
                            "cycle {cycle}: {:?} acknowledged as {:?}@{} but reads {:?}@{}",
                            String::from_utf8_lossy(&a.key),
                            String::from_utf8_lossy(&a.value),
                            a.revision,
                            String::from_utf8_lossy(value),
                            mod_rev
                        ));
                    }
                }
            }
        }
        if missing > 10 {
            problems.push(format!(
                "cycle {cycle}: {missing} acknowledged writes missing in all"
            ));
        }

        let mut txns_applied = 0usize;
        for (a, b) in &all_txns {
            match (store.get(a), store.get(b)) {
                (Some(x), Some(y)) => {
                    txns_applied += 1;
                    if x != y {
                        problems.push(format!(
                            "cycle {cycle}: txn halves {:?} and {:?} differ: {x:?} vs {y:?}",
                            String::from_utf8_lossy(a),
                            String::from_utf8_lossy(b)
                        ));
                    }
                }
                (None, None) => {}
                (x, y) => problems.push(format!(
                    "cycle {cycle}: partial txn: {:?} present={} {:?} present={}",
                    String::from_utf8_lossy(a),
                    x.is_some(),
                    String::from_utf8_lossy(b),
                    y.is_some()
                )),
            }
        }
        let in_flight_landed = in_flight.iter().filter(|k| store.contains_key(*k)).count();
        eprintln!(
            "cycle {cycle}: killed after {} acked requests ({cycle_acked} acked keys this cycle, \
             {} in total); {} txns sent so far, {txns_applied} applied; {} requests in flight at \
             the kill, {in_flight_landed} of them applied; store revision {store_rev}",
            acks.load(Ordering::SeqCst),
            all_acked.len(),
            all_txns.len(),
            in_flight.len()
        );
    }

    assert!(
        problems.is_empty(),
        "{} problem(s) against {kind}:\n{}\nserver log:\n{}",
        problems.len(),
        problems.join("\n"),
        node.log_tail(60)
    );
    assert!(
        all_acked.len() >= CYCLES * 200,
        "the test wrote too little to mean anything: {} acked keys",
        all_acked.len()
    );
}
