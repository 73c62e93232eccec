//! What a load run does and how long it lasts.

use std::time::Duration;

use super::LoadError;

/// The kind of requests a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `KV/Put` of random keys in the key space.
    Put,
    /// `KV/Range` of one random key (the key space is filled first).
    Range,
    /// Watchers on a prefix and one writer; measures put-to-event latency.
    Watch,
    /// Puts and single-key ranges, `read_ratio` of them reads.
    Mixed,
}

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// After this many operations in total (over all clients; watch: puts).
    Total(u64),
    /// After this much wall time.
    Duration(Duration),
}

/// A complete description of one load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Request kind.
    pub mode: Mode,
    /// Concurrent logical clients (watch mode: number of watchers).
    pub clients: usize,
    /// HTTP/2 connections shared by the clients.
    pub conns: usize,
    /// When to stop.
    pub bound: Bound,
    /// Key length in bytes (at least long enough for prefix + index).
    pub key_size: usize,
    /// Value length in bytes (watch mode: at least 8 for the timestamp).
    pub val_size: usize,
    /// Number of distinct keys.
    pub key_space: u64,
    /// Every key starts with this; watchers watch it.
    pub prefix: String,
    /// Range requests are serializable (local read) instead of linearizable.
    pub serializable: bool,
    /// Mixed mode: fraction of operations that are reads.
    pub read_ratio: f64,
    /// Range mode: write every key once before measuring.
    pub prefill: bool,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// Watch mode: how long watchers wait for the last events after the writer stops.
    pub drain_timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            mode: Mode::Put,
            clients: 1,
            conns: 1,
            bound: Bound::Total(10_000),
            key_size: 16,
            val_size: 256,
            key_space: 10_000,
            prefix: "lg/".to_string(),
            serializable: false,
            read_ratio: 0.5,
            prefill: true,
            request_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl LoadConfig {
    /// Rejects option combinations that would make the numbers meaningless.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |msg: &str| Err(LoadError::Config(msg.to_string()));
        if self.clients == 0 {
            return bad("--clients must be at least 1");
        }
        if self.conns == 0 {
            return bad("--conns must be at least 1");
        }
        if self.key_space == 0 {
            return bad("--key-space must be at least 1");
        }
        if self.prefix.is_empty() {
            return bad("--prefix must not be empty");
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return bad("--read-ratio must be within 0..=1");
        }
        match self.bound {
            Bound::Total(0) => return bad("--total must be at least 1"),
            Bound::Duration(d) if d.is_zero() => return bad("--duration must be positive"),
            _ => {}
        }
        if self.mode == Mode::Watch && self.val_size < super::keys::STAMP_LEN {
            return bad("watch mode needs --val-size >= 8 to carry the send timestamp");
        }
        Ok(())
    }
}
