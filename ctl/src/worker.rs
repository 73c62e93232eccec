//! A worker: a joined node that holds no copy of the store. It reaches the
//! store through any member's client URL (with its node certificate) and
//! shows it is alive by keeping a leased heartbeat key; the node agent of a
//! later stage runs here.

use crate::daemon::RunArgs;
use crate::join::JoinState;
use anyhow::Context;
use std::time::Duration;
use tonic::transport::Channel;
use tugboat_pki::PkiPaths;
use tugboat_store::pb::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest,
    PutRequest,
};

/// Key prefix of worker heartbeats (each on a lease of [`HEARTBEAT_TTL_SECS`]).
pub const HEARTBEAT_KEY_PREFIX: &str = "/tugboat/worker-heartbeats/";
/// Lease TTL of a heartbeat: a worker silent this long shows as unreachable.
pub const HEARTBEAT_TTL_SECS: i64 = 10;

/// A channel to the first reachable member client URL, authenticated with the node certificate.
async fn member_channel(data_dir: &std::path::Path, urls: &[String]) -> anyhow::Result<Channel> {
    let paths = PkiPaths::new(data_dir);
    let ca = std::fs::read(&paths.ca_cert).context("reading the CA certificate")?;
    let cert = std::fs::read(&paths.peer_cert).context("reading the node certificate")?;
    let key = std::fs::read(&paths.peer_key).context("reading the node key")?;
    let mut last = anyhow::anyhow!("no member client URL known");
    for url in urls {
        // No per-call timeout: the keep-alive stream lives as long as the worker.
        let identity = Some((cert.as_slice(), key.as_slice()));
        match crate::local::tls_channel(url, &ca, identity, Duration::from_secs(3), None).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Keeps the heartbeat alive through one member until that fails.
async fn heartbeat(channel: Channel, name: &str) -> anyhow::Result<()> {
    let lease = LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest {
            ttl: HEARTBEAT_TTL_SECS,
            id: 0,
        })
        .await
        .context("granting the heartbeat lease")?
        .into_inner();
    KvClient::new(channel.clone())
        .put(PutRequest {
            key: format!("{HEARTBEAT_KEY_PREFIX}{name}").into_bytes(),
            value: b"alive".to_vec(),
            lease: lease.id,
            ..Default::default()
        })
        .await
        .context("writing the heartbeat")?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut responses = LeaseClient::new(channel)
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("keeping the heartbeat alive")?
        .into_inner();
    loop {
        tx.send(LeaseKeepAliveRequest { id: lease.id })
            .await
            .context("keep-alive stream closed")?;
        match responses.message().await {
            Ok(Some(r)) if r.ttl > 0 => {}
            Ok(_) => anyhow::bail!("heartbeat lease expired"),
            Err(e) => return Err(e).context("keep-alive"),
        }
        tokio::time::sleep(Duration::from_secs((HEARTBEAT_TTL_SECS / 3).max(1) as u64)).await;
    }
}

/// Runs a worker until SIGTERM/SIGINT.
pub async fn run(args: &RunArgs, name: &str, state: JoinState) -> anyhow::Result<()> {
    if !state.admitted {
        crate::join::admit(&args.data_dir, name, None, Vec::new()).await?;
    }
    tracing::info!(%name, members = ?state.client_urls, "running as a worker (no copy of the store)");
    let work = async {
        loop {
            match member_channel(&args.data_dir, &state.client_urls).await {
                Ok(channel) => {
                    if let Err(e) = heartbeat(channel, name).await {
                        tracing::warn!(error = %format!("{e:#}"), "heartbeat interrupted; reconnecting");
                    }
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "no member reachable"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        _ = work => Ok(()),
        sig = crate::daemon::shutdown_signal() => {
            tracing::info!(signal = sig, "worker stopped");
            Ok(())
        }
    }
}
