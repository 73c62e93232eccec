//! Load generation against an etcd v3 endpoint (Tugboat or real etcd).
//!
//! Shared by the `tugboat-loadgen` binary and by tests that need a ready-made
//! client connection. Modelled on etcd's own `benchmark` tool: many logical
//! clients multiplexed over a few HTTP/2 connections, latency in an HDR
//! histogram, bounded by a total operation count or a duration.

pub mod client;
pub mod cluster;
pub mod config;
pub mod keys;
pub mod kvutil;
pub mod ops;
pub mod stats;
pub mod watch;

pub use client::{connect, prefix_end, Target, TlsFiles};
pub use config::{Bound, LoadConfig, Mode};
pub use stats::Report;

/// Everything that can stop a load run before it produces a report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The endpoint URL is malformed or the TLS settings were rejected.
    #[error("invalid endpoint {endpoint}: {source}")]
    Endpoint {
        /// The URL as given.
        endpoint: String,
        /// The transport's reason.
        source: tonic::transport::Error,
    },
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TCP/TLS/HTTP2 connection could not be established.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The URL as given.
        endpoint: String,
        /// The transport's reason.
        source: tonic::transport::Error,
    },
    /// Inconsistent options.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Filling the key space before a read benchmark failed.
    #[error("prefill failed: {0}")]
    Prefill(tonic::Status),
    /// A watcher could not be created.
    #[error("watch setup failed: {0}")]
    WatchSetup(String),
}

/// Runs one load described by `cfg` against `target` and returns its report.
pub async fn run(target: &Target, cfg: &LoadConfig) -> Result<Report, LoadError> {
    cfg.validate()?;
    let channels = connect(target, cfg.conns).await?;
    let report = match cfg.mode {
        Mode::Put | Mode::Range | Mode::Mixed => ops::run(&channels, cfg).await?,
        Mode::Watch => watch::run(&channels, cfg).await?,
    };
    Ok(report.with_target(&target.endpoint))
}
