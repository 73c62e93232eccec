//! Latency histograms and the run report.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::config::{LoadConfig, Mode};

/// Error messages kept verbatim per recorder; the rest are only counted.
const KEPT_ERRORS: usize = 5;

/// Latencies and outcomes of one kind of operation, for one or many clients.
#[derive(Debug, Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    sample_errors: Vec<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder; microsecond resolution, up to one hour, 3 significant digits.
    pub fn new() -> Self {
        // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2*low, sigfig <= 5).
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("constant histogram bounds are valid");
        Recorder {
            hist,
            ok: 0,
            errors: 0,
            sample_errors: Vec::new(),
        }
    }

    /// Counts a successful operation that took `latency`.
    pub fn ok(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.hist.saturating_record(us);
        self.ok += 1;
    }

    /// Counts a failed operation.
    pub fn error(&mut self, what: impl std::fmt::Display) {
        self.errors += 1;
        if self.sample_errors.len() < KEPT_ERRORS {
            self.sample_errors.push(what.to_string());
        }
    }

    /// Counts `count` failed operations that share one cause.
    pub fn errors(&mut self, count: u64, what: impl std::fmt::Display) {
        if count == 0 {
            return;
        }
        self.errors += count - 1;
        self.error(what);
    }

    /// Adds `other`'s samples into this one.
    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have the same bounds, so add cannot fail on range; if
        // it somehow does, the count still tells the truth.
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        self.errors += other.errors;
        for e in &other.sample_errors {
            if self.sample_errors.len() < KEPT_ERRORS {
                self.sample_errors.push(e.clone());
            }
        }
    }

    /// Successful operations.
    pub fn ok_count(&self) -> u64 {
        self.ok
    }

    /// Failed operations.
    pub fn error_count(&self) -> u64 {
        self.errors
    }

    /// The summary of this recorder over `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> OpSummary {
        let ms = |us: u64| us as f64 / 1000.0;
        let secs = elapsed.as_secs_f64();
        let empty = self.hist.is_empty();
        let q = |p: f64| {
            if empty {
                0.0
            } else {
                ms(self.hist.value_at_quantile(p))
            }
        };
        OpSummary {
            ok: self.ok,
            errors: self.errors,
            per_sec: if secs > 0.0 {
                self.ok as f64 / secs
            } else {
                0.0
            },
            latency_ms: LatencySummary {
                mean: if empty {
                    0.0
                } else {
                    self.hist.mean() / 1000.0
                },
                p50: q(0.50),
                p90: q(0.90),
                p99: q(0.99),
                p999: q(0.999),
                max: if empty { 0.0 } else { ms(self.hist.max()) },
            },
        }
    }

    /// Messages of the first few errors.
    pub fn sample_errors(&self) -> &[String] {
        &self.sample_errors
    }
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

/// Throughput and latency of one kind of operation.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    /// Successful operations.
    pub ok: u64,
    /// Failed operations.
    pub errors: u64,
    /// Successful operations per second of the run.
    pub per_sec: f64,
    /// Latency of successful operations.
    pub latency_ms: LatencySummary,
}

/// The outcome of one run, printed as text or JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Endpoint the load went to.
    pub endpoint: String,
    /// Request kind.
    pub mode: Mode,
    /// Logical clients (watch: watchers).
    pub clients: usize,
    /// HTTP/2 connections.
    pub conns: usize,
    /// Key size in bytes.
    pub key_size: usize,
    /// Value size in bytes.
    pub val_size: usize,
    /// Distinct keys.
    pub key_space: u64,
    /// Whether ranges were serializable.
    pub serializable: bool,
    /// Wall time of the measured phase.
    pub elapsed_s: f64,
    /// The headline operation (watch: events received).
    pub ops: u64,
    /// Failed headline operations (watch: events that never arrived, plus stream errors).
    pub errors: u64,
    /// Headline operations per second.
    pub ops_per_sec: f64,
    /// Headline latency (watch: put sent to event received).
    pub latency_ms: LatencySummary,
    /// Per operation kind, e.g. `put` and `range` in mixed mode, `put` and `event` in watch mode.
    pub breakdown: BTreeMap<String, OpSummary>,
    /// The first few error messages.
    pub sample_errors: Vec<String>,
}

impl Report {
    /// Builds a report whose headline is `headline` and whose breakdown is `parts`.
    pub fn build(
        cfg: &LoadConfig,
        elapsed: Duration,
        headline: &Recorder,
        parts: Vec<(&str, &Recorder)>,
    ) -> Report {
        let head = headline.summary(elapsed);
        let mut sample_errors = headline.sample_errors().to_vec();
        let mut breakdown = BTreeMap::new();
        for (name, rec) in parts {
            for e in rec.sample_errors() {
                if sample_errors.len() < KEPT_ERRORS && !sample_errors.contains(e) {
                    sample_errors.push(e.clone());
                }
            }
            breakdown.insert(name.to_string(), rec.summary(elapsed));
        }
        Report {
            endpoint: String::new(),
            mode: cfg.mode,
            clients: cfg.clients,
            conns: cfg.conns,
            key_size: cfg.key_size,
            val_size: cfg.val_size,
            key_space: cfg.key_space,
            serializable: cfg.serializable,
            elapsed_s: elapsed.as_secs_f64(),
            ops: head.ok,
            errors: head.errors,
            ops_per_sec: head.per_sec,
            latency_ms: head.latency_ms,
            breakdown,
            sample_errors,
        }
    }

    /// The same report, naming the endpoint it measured.
    pub fn with_target(mut self, endpoint: &str) -> Report {
        self.endpoint = endpoint.to_string();
        self
    }

    /// A short human-readable rendering.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        out.push_str(&format!(
            "{:?} on {}: {} clients over {} conns, {:.2}s\n",
            self.mode, self.endpoint, self.clients, self.conns, self.elapsed_s
        ));
        out.push_str(&format!(
            "  ops {}  errors {}  {:.1} ops/s\n  latency ms: mean {:.3} p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}\n",
            self.ops, self.errors, self.ops_per_sec, l.mean, l.p50, l.p90, l.p99, l.p999, l.max
        ));
        for (name, s) in &self.breakdown {
            out.push_str(&format!(
                "  {name}: ok {} errors {} {:.1}/s p50 {:.3} p99 {:.3} max {:.3} ms\n",
                s.ok, s.errors, s.per_sec, s.latency_ms.p50, s.latency_ms.p99, s.latency_ms.max
            ));
        }
        for e in &self.sample_errors {
            out.push_str(&format!("  error: {e}\n"));
        }
        out
    }
}
