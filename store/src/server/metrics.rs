//! Request counters of the etcd facade, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// RPCs counted by method.
pub const METHODS: [&str; 5] = ["Range", "Put", "DeleteRange", "Txn", "Compact"];

/// Counters shared by the services.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; METHODS.len()],
    failures: [AtomicU64; METHODS.len()],
    /// Watch streams currently open.
    pub watch_streams: AtomicI64,
    /// Watchers currently registered across streams.
    pub watchers: AtomicI64,
    /// Events sent to watchers.
    pub watch_events: AtomicU64,
}

impl Metrics {
    /// Counts one request of `method` and whether it failed.
    pub fn observe<T, E>(&self, method: &str, result: &Result<T, E>) {
        if let Some(i) = METHODS.iter().position(|m| *m == method) {
            self.requests[i].fetch_add(1, Ordering::Relaxed);
            if result.is_err() {
                self.failures[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Appends the counters to a Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP tugboat_etcd_requests_total etcd API requests by method."
        );
        let _ = writeln!(out, "# TYPE tugboat_etcd_requests_total counter");
        for (i, m) in METHODS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tugboat_etcd_requests_total{{method=\"{m}\"}} {}",
                self.requests[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tugboat_etcd_request_failures_total etcd API requests answered with an error."
        );
        let _ = writeln!(out, "# TYPE tugboat_etcd_request_failures_total counter");
        for (i, m) in METHODS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tugboat_etcd_request_failures_total{{method=\"{m}\"}} {}",
                self.failures[i].load(Ordering::Relaxed)
            );
        }
        let gauges = [
            (
                "tugboat_watch_streams",
                "Open watch streams.",
                self.watch_streams.load(Ordering::Relaxed),
            ),
            (
                "tugboat_watchers",
                "Registered watchers.",
                self.watchers.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP tugboat_watch_events_total Events sent to watchers.\n# TYPE tugboat_watch_events_total counter\ntugboat_watch_events_total {}",
            self.watch_events.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        m.observe::<(), ()>("Put", &Ok(()));
        m.observe::<(), ()>("Put", &Err(()));
        let mut s = String::new();
        m.render(&mut s);
        assert!(s.contains("tugboat_etcd_requests_total{method=\"Put\"} 2"));
        assert!(s.contains("tugboat_etcd_request_failures_total{method=\"Put\"} 1"));
    }
}
