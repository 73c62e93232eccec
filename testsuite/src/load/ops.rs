//! Closed-loop request/response load: put, range and mixed modes.
//!
//! Each logical client sends one request, waits for the answer, records the
//! latency and sends the next, like etcd's `benchmark put`/`range`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tugboat_store::pb::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};

use super::config::{Bound, LoadConfig, Mode};
use super::keys::{filler, KeyShape};
use super::stats::{Recorder, Report};
use super::LoadError;

/// Hands out permission for the next operation until the run's bound is hit.
#[derive(Debug)]
pub struct Budget {
    remaining: Option<AtomicU64>,
    deadline: Option<Instant>,
}

impl Budget {
    /// A budget that starts now.
    pub fn start(bound: Bound) -> Budget {
        match bound {
            Bound::Total(n) => Budget {
                remaining: Some(AtomicU64::new(n)),
                deadline: None,
            },
            Bound::Duration(d) => Budget {
                remaining: None,
                deadline: Some(Instant::now() + d),
            },
        }
    }

    /// Claims one operation; false once the bound is reached.
    pub fn take(&self) -> bool {
        if let Some(rem) = &self.remaining {
            return rem
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
        }
        match self.deadline {
            Some(d) => Instant::now() < d,
            None => false,
        }
    }
}

/// Per-client tallies, merged after the run.
#[derive(Debug, Default)]
struct ClientTally {
    puts: Recorder,
    ranges: Recorder,
}

/// Runs a put, range or mixed load over `channels`.
pub async fn run(channels: &[Channel], cfg: &LoadConfig) -> Result<Report, LoadError> {
    let shape = KeyShape::new(&cfg.prefix, cfg.key_size, cfg.key_space);
    if cfg.mode == Mode::Range && cfg.prefill {
        prefill(channels, cfg, &shape).await?;
    }
    let budget = Arc::new(Budget::start(cfg.bound));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.clients);
    for id in 0..cfg.clients {
        let kv = KvClient::new(channels[id % channels.len()].clone());
        let cfg = cfg.clone();
        let shape = shape.clone();
        let budget = budget.clone();
        tasks.push(tokio::spawn(client_loop(id, kv, cfg, shape, budget)));
    }
    let mut puts = Recorder::new();
    let mut ranges = Recorder::new();
    for t in tasks {
        match t.await {
            Ok(tally) => {
                puts.merge(&tally.puts);
                ranges.merge(&tally.ranges);
            }
            Err(join) => puts.error(format!("client task failed: {join}")),
        }
    }
    let elapsed = started.elapsed();
    let report = match cfg.mode {
        Mode::Put => Report::build(cfg, elapsed, &puts, vec![]),
        Mode::Range => Report::build(cfg, elapsed, &ranges, vec![]),
        _ => {
            let mut all = puts.clone();
            all.merge(&ranges);
            Report::build(cfg, elapsed, &all, vec![("put", &puts), ("range", &ranges)])
        }
    };
    Ok(report)
}

async fn client_loop(
    id: usize,
    mut kv: KvClient<Channel>,
    cfg: LoadConfig,
    shape: KeyShape,
    budget: Arc<Budget>,
) -> ClientTally {
    let mut rng = StdRng::seed_from_u64(0x7467_6c64 ^ id as u64);
    let value = filler(cfg.val_size);
    let mut tally = ClientTally::default();
    while budget.take() {
        let key = shape.key(rng.random_range(0..cfg.key_space));
        let read = match cfg.mode {
            Mode::Range => true,
            Mode::Mixed => rng.random_bool(cfg.read_ratio),
            _ => false,
        };
        let sent = Instant::now();
        if read {
            let req = RangeRequest {
                key,
                serializable: cfg.serializable,
                ..Default::default()
            };
            match call(cfg.request_timeout, kv.range(req)).await {
                Ok(_) => tally.ranges.ok(sent.elapsed()),
                Err(e) => tally.ranges.error(e),
            }
        } else {
            let req = PutRequest {
                key,
                value: value.clone(),
                ..Default::default()
            };
            match call(cfg.request_timeout, kv.put(req)).await {
                Ok(_) => tally.puts.ok(sent.elapsed()),
                Err(e) => tally.puts.error(e),
            }
        }
    }
    tally
}

/// Awaits a unary call with a deadline, flattening both failures into a message.
pub(crate) async fn call<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("timed out after {:.1}s", limit.as_secs_f64())),
    }
}

/// Writes every key of the key space once so that reads find data.
async fn prefill(
    channels: &[Channel],
    cfg: &LoadConfig,
    shape: &KeyShape,
) -> Result<(), LoadError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 0..cfg.clients.min(64) {
        let mut kv = KvClient::new(channels[id % channels.len()].clone());
        let next = next.clone();
        let shape = shape.clone();
        let value = filler(cfg.val_size);
        let space = cfg.key_space;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= space {
                    return Ok(());
                }
                let req = PutRequest {
                    key: shape.key(i),
                    value: value.clone(),
                    ..Default::default()
                };
                kv.put(req).await.map_err(LoadError::Prefill)?;
            }
        }));
    }
    for t in tasks {
        match t.await {
            Ok(r) => r?,
            Err(join) => {
                return Err(LoadError::Prefill(tonic::Status::internal(format!(
                    "prefill task failed: {join}"
                ))))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_budget_hands_out_exactly_n() {
        let b = Budget::start(Bound::Total(3));
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        assert!(!b.take());
    }

    #[test]
    fn duration_budget_expires() {
        let b = Budget::start(Bound::Duration(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!b.take());
    }
}
