//! With compaction (and defragmentation), overwriting a bounded key set keeps
//! the data dir bounded no matter how many bytes go through it.
//!
//! Each round overwrites 1000 keys with fresh 1 KiB values, then compacts to
//! the current revision; every few rounds it also calls Maintenance/Defragment.
//! The largest size during the warm-up rounds is the baseline; rounds continue
//! until 3x the baseline has been written after it, and the final size must
//! stay below 3x the baseline. A store that never reclaims space grows by at
//! least the bytes written and fails. The per-round sizes are printed.
//!
//! Validate against real etcd with `TUGBOAT_TEST_TARGET=etcd`.

use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tonic::transport::Channel;
use tugboat_store::pb::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, CompactionRequest,
    DefragmentRequest, PutRequest,
};
use tugboat_testsuite::load::kvutil::{dir_usage, fetch_prefix, kv, plain_channel};
use tugboat_testsuite::{start_server, EtcdNode, EtcdOptions, ServerNode, TargetKind};

const PREFIX: &str = "cd/";
const KEYS: usize = 1000;
const VALUE_SIZE: usize = 1024;
const WRITERS: usize = 32;
/// Rounds before the baseline size is taken: 20,000 revisions, two snapshot
/// intervals at the default `--snapshot-count` of 10,000, so the baseline already
/// includes a full cycle of raft-log retention and not just a young store.
const WARMUP_ROUNDS: usize = 20;
const DEFRAG_EVERY: usize = 5;
/// Bytes written after the baseline must reach this multiple of the baseline
/// size; a store that reclaims nothing then ends above SIZE_FACTOR x baseline.
const WRITE_FACTOR: u64 = 3;
/// The final size must stay below this multiple of the baseline.
const SIZE_FACTOR: u64 = 3;
const MIN_ROUNDS: usize = 60;
/// Overrides MIN_ROUNDS, to watch a store over a longer run by hand.
const MIN_ROUNDS_ENV: &str = "TUGBOAT_COMPACTION_MIN_ROUNDS";
/// Stops a runaway test; reaching it is a failure (the baseline was enormous).
const MAX_ROUNDS: usize = 3000;
/// Guards against a hung server; not a performance expectation.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

const MIB: f64 = 1024.0 * 1024.0;

/// Overwrites every key once; returns the highest revision acknowledged.
async fn overwrite_round(channel: &Channel, round: usize) -> Result<i64, String> {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut kvc: KvClient<Channel> = kv(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64((round * WRITERS + w) as u64);
            let mut top = 0i64;
            for k in (w..KEYS).step_by(WRITERS) {
                // Fresh random bytes so no layer can share or compress old values.
                let mut value = vec![0u8; VALUE_SIZE];
                rng.fill_bytes(&mut value);
                let req = PutRequest {
                    key: format!("{PREFIX}{k:05}").into_bytes(),
                    value,
                    ..Default::default()
                };
                let resp = tokio::time::timeout(REQUEST_TIMEOUT, kvc.put(req))
                    .await
                    .map_err(|_| format!("put of key {k} timed out"))?
                    .map_err(|s| format!("put of key {k}: {s}"))?;
                top = top.max(resp.into_inner().header.map(|h| h.revision).unwrap_or(0));
            }
            Ok::<i64, String>(top)
        }));
    }
    let mut top = 0;
    for t in tasks {
        top = top.max(t.await.map_err(|e| format!("writer task: {e}"))??);
    }
    Ok(top)
}

async fn compact(channel: &Channel, revision: i64) -> Result<(), String> {
    let req = CompactionRequest {
        revision,
        // Wait until the compaction is applied to the backend, so `du` sees its effect.
        physical: true,
    };
    tokio::time::timeout(REQUEST_TIMEOUT, kv(channel.clone()).compact(req))
        .await
        .map_err(|_| "compact timed out".to_string())?
        .map_err(|s| format!("compact to {revision}: {s}"))?;
    Ok(())
}

async fn defragment(channel: &Channel) -> Result<(), String> {
    let mut m = MaintenanceClient::new(channel.clone());
    tokio::time::timeout(REQUEST_TIMEOUT, m.defragment(DefragmentRequest {}))
        .await
        .map_err(|_| "defragment timed out".to_string())?
        .map_err(|s| format!("Maintenance/Defragment: {s}"))?;
    Ok(())
}

fn usage(dir: &Path) -> (u64, u64) {
    dir_usage(dir).unwrap_or_else(|e| panic!("measuring {}: {e}", dir.display()))
}

/// Allocated size of each entry two levels down, largest first, to show what takes the space.
fn breakdown(dir: &Path) -> String {
    let mut entries: Vec<(u64, String)> = Vec::new();
    let mut visit = |p: &Path| {
        let (alloc, _) = dir_usage(p).unwrap_or((0, 0));
        let shown = p.strip_prefix(dir).unwrap_or(p).display().to_string();
        entries.push((alloc, shown));
    };
    let Ok(top) = std::fs::read_dir(dir) else {
        return String::new();
    };
    for entry in top.flatten() {
        let path = entry.path();
        match std::fs::read_dir(&path) {
            Ok(sub) => sub.flatten().for_each(|e| visit(&e.path())),
            Err(_) => visit(&path),
        }
    }
    entries.sort_by(|a, b| b.cmp(a));
    entries
        .iter()
        .take(15)
        .map(|(alloc, name)| format!("  {:8.1} MiB  {name}", *alloc as f64 / MIB))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts the server under test.
///
/// etcd keeps five 64 MB write-ahead-log segments by default (plus one
/// preallocated), snapshots every 100,000 entries and purges old segments only
/// every 30 s; that log retention, not the MVCC store this test is about, would
/// dominate `du`. It runs with Tugboat's log policy instead: snapshot every
/// 10,000 entries and keep no more log than needed.
fn start(kind: TargetKind) -> tugboat_testsuite::harness::Result<Box<dyn ServerNode>> {
    match kind {
        TargetKind::Tugboat => start_server(kind),
        TargetKind::Etcd => Ok(Box::new(EtcdNode::start(EtcdOptions {
            extra_args: [
                "--snapshot-count=10000",
                "--max-wals=1",
                "--max-snapshots=1",
            ]
            .map(String::from)
            .to_vec(),
            ..EtcdOptions::default()
        })?)),
    }
}

#[test]
fn compaction_keeps_disk_usage_bounded() {
    let kind = TargetKind::from_env().unwrap_or_else(|e| panic!("{e}"));
    let rt = tugboat_testsuite::test_runtime();
    let node = start(kind).unwrap_or_else(|e| panic!("starting {kind}: {e}"));
    let endpoint = node.plain_endpoint();
    let data_dir = node.data_dir().to_path_buf();
    let channel = rt
        .block_on(plain_channel(&endpoint))
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"));

    let (empty_alloc, _) = usage(&data_dir);
    eprintln!(
        "{kind}: {KEYS} keys x {VALUE_SIZE} B per round; empty data dir {:.1} MiB",
        empty_alloc as f64 / MIB
    );
    let min_rounds = match std::env::var(MIN_ROUNDS_ENV) {
        Ok(v) => v
            .parse::<usize>()
            .unwrap_or_else(|e| panic!("{MIN_ROUNDS_ENV}={v:?}: {e}")),
        Err(_) => MIN_ROUNDS,
    };
    let round_bytes = (KEYS * VALUE_SIZE) as u64;
    let mut baseline: Option<u64> = None;
    let mut written_after_baseline = 0u64;
    let mut sizes: Vec<u64> = Vec::new();
    let mut round = 0usize;
    loop {
        round += 1;
        let outcome = rt.block_on(async {
            let rev = overwrite_round(&channel, round).await?;
            compact(&channel, rev).await?;
            let defragged = round.is_multiple_of(DEFRAG_EVERY);
            if defragged {
                defragment(&channel).await?;
            }
            Ok::<(i64, bool), String>((rev, defragged))
        });
        let (rev, defragged) = outcome.unwrap_or_else(|e| {
            panic!(
                "round {round} against {kind}: {e}\nserver log:\n{}",
                node.log_tail(60)
            )
        });
        let (alloc, apparent) = usage(&data_dir);
        sizes.push(alloc);
        if baseline.is_some() {
            written_after_baseline += round_bytes;
        }
        eprintln!(
            "round {round:4}: revision {rev:7}, written {:7.1} MiB, du {:7.1} MiB (apparent {:7.1} \
             MiB){}",
            (round as u64 * round_bytes) as f64 / MIB,
            alloc as f64 / MIB,
            apparent as f64 / MIB,
            if defragged { ", defragmented" } else { "" }
        );
        if round == WARMUP_ROUNDS {
            baseline = sizes.iter().copied().max();
        }
        if let Some(base) = baseline {
            if round >= min_rounds && written_after_baseline >= WRITE_FACTOR * base {
                break;
            }
        }
        assert!(
            round < MAX_ROUNDS.max(min_rounds),
            "wrote {MAX_ROUNDS} rounds without reaching {WRITE_FACTOR}x the baseline {:?}",
            baseline
        );
    }

    // The data must still be there: compaction keeps the newest version of every key.
    let (_, kvs) = rt
        .block_on(async {
            let mut kvc = kv(channel.clone());
            fetch_prefix(&mut kvc, PREFIX.as_bytes()).await
        })
        .unwrap_or_else(|s| panic!("reading back: {s}"));
    assert_eq!(kvs.len(), KEYS, "keys present after the last round");

    let base = baseline.unwrap_or(0);
    let last = sizes.last().copied().unwrap_or(0);
    let peak_after = sizes[WARMUP_ROUNDS..].iter().copied().max().unwrap_or(0);
    eprintln!(
        "{kind}: {round} rounds, {:.1} MiB written ({:.1} MiB after the baseline); baseline (max of \
         first {WARMUP_ROUNDS} rounds) {:.1} MiB, peak after it {:.1} MiB, last {:.1} MiB \
         ({:.2}x baseline)",
        (round as u64 * round_bytes) as f64 / MIB,
        written_after_baseline as f64 / MIB,
        base as f64 / MIB,
        peak_after as f64 / MIB,
        last as f64 / MIB,
        last as f64 / base.max(1) as f64
    );
    eprintln!("data dir by entry:\n{}", breakdown(&data_dir));
    assert!(
        last < SIZE_FACTOR * base,
        "{kind}: data dir grew to {:.1} MiB, at least {SIZE_FACTOR}x the baseline {:.1} MiB, \
         after {:.1} MiB of overwrites with compaction",
        last as f64 / MIB,
        base as f64 / MIB,
        written_after_baseline as f64 / MIB
    );
}
