//! A worker: a joined node that holds no copy of the store. It reaches the
//! store through any member's client URL (with its node certificate) and
//! shows it is alive by keeping a leased heartbeat key. With `--runtime` it
//! runs the node agent against a member's apiserver (found under
//! [`crate::control::API_ENDPOINTS_PREFIX`] in the store), authenticated as
//! `system:node:<name>` by the same node certificate, and moves to another
//! member's apiserver when that one stops answering.

use crate::daemon::RunArgs;
use crate::join::JoinState;
use anyhow::Context;
use std::time::Duration;
use tonic::transport::Channel;
use tugboat_pki::PkiPaths;
use tugboat_store::pb::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest,
    PutRequest, RangeRequest,
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
    let agent = agent_loop(args, name, &state.client_urls);
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
        _ = agent => Ok(()),
        sig = crate::daemon::shutdown_signal() => {
            tracing::info!(signal = sig, "worker stopped");
            Ok(())
        }
    }
}

/// Checks between apiserver health probes of a running agent.
const API_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Failed probes in a row after which the agent moves to another apiserver.
const API_PROBE_FAILURES: u32 = 3;
/// Longest wait between attempts to start the agent (doubling from 0.5 s).
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long one probe may take.
const API_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The apiserver URLs members published in the store.
async fn api_endpoints(channel: Channel) -> anyhow::Result<Vec<String>> {
    let prefix = crate::control::API_ENDPOINTS_PREFIX.as_bytes().to_vec();
    let mut end = prefix.clone();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let resp = KvClient::new(channel)
        .range(RangeRequest {
            key: prefix,
            range_end: end,
            ..Default::default()
        })
        .await
        .context("listing apiserver endpoints")?
        .into_inner();
    Ok(resp
        .kvs
        .into_iter()
        .filter_map(|kv| String::from_utf8(kv.value).ok())
        .collect())
}

/// A client of the apiserver at `server` authenticated by this node's certificate.
async fn node_client(
    data_dir: &std::path::Path,
    server: &str,
    name: &str,
) -> anyhow::Result<kube::Client> {
    let paths = PkiPaths::new(data_dir);
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let yaml = crate::kubeconfig::render(
        server,
        &read(&paths.ca_cert)?,
        &read(&paths.peer_cert)?,
        &read(&paths.peer_key)?,
        name,
        crate::kubeconfig::DEFAULT_CLUSTER,
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).context("parsing kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("building the client configuration")?;
    kube::Client::try_from(config).context("building the API client")
}

/// Runs the node agent (when `--runtime` names one) against any member's apiserver, moving on
/// when it stops answering. The runtime, and so the VMs, outlive every switch.
async fn agent_loop(args: &RunArgs, name: &str, client_urls: &[String]) {
    let runtime = match crate::control::make_runtime(&args.control, &args.data_dir).await {
        Ok(Some(r)) => r,
        Ok(None) => return std::future::pending().await,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the VM runtime could not start; this worker runs no agent");
            return std::future::pending().await;
        }
    };
    let ip = args
        .advertise_address
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let mut config = crate::control::agent_config(&args.control, name, ip.to_string());
    config.runtime_conditions = crate::control::runtime_conditions(&runtime);
    // Without the endpoint the agent still runs the VMs; only logs and consoles are missing.
    match crate::agentserver::serve(
        &args.data_dir,
        name,
        &config.internal_ip,
        args.control.agent_port,
        runtime.clone(),
        std::future::pending(),
    )
    .await
    {
        Ok(port) => config.server_port = Some(port),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "no agent endpoint: ship logs and consoles of this node are unavailable")
        }
    }
    let mut next = 0usize;
    let mut backoff = Duration::from_millis(500);
    loop {
        let endpoints = match member_channel(&args.data_dir, client_urls).await {
            Ok(channel) => api_endpoints(channel).await,
            Err(e) => Err(e),
        };
        let endpoints = match endpoints {
            Ok(e) if !e.is_empty() => e,
            Ok(_) => {
                tracing::warn!("no member has published an apiserver yet");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "looking for an apiserver");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let server = &endpoints[next % endpoints.len()];
        next = next.wrapping_add(1);
        let client = match node_client(&args.data_dir, server, name).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%server, error = %format!("{e:#}"), "apiserver client");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RETRY);
                continue;
            }
        };
        let agent = match tugboat_nodeagent::NodeAgent::start(
            client.clone(),
            runtime.clone(),
            config.clone(),
        )
        .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%server, error = %e, retry_in = ?backoff, "node agent could not start");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RETRY);
                continue;
            }
        };
        tracing::info!(%server, node = %name, "node agent running");
        backoff = Duration::from_millis(500);
        // The probe reads this node's own Node: a linearizable read, so an apiserver whose
        // member lost the store's quorum fails it (its /version would still answer), and the
        // agent moves before the grace period runs out and its Ships are declared lost.
        let nodes: kube::Api<kube::api::DynamicObject> =
            kube::Api::all_with(client.clone(), &tugboat_nodeagent::agent::node_resource());
        let mut failures = 0;
        while failures < API_PROBE_FAILURES {
            tokio::time::sleep(API_PROBE_INTERVAL).await;
            let probe = tokio::time::timeout(API_PROBE_TIMEOUT, nodes.get(name)).await;
            match probe {
                Ok(Ok(_)) => failures = 0,
                Ok(Err(e)) => {
                    failures += 1;
                    tracing::warn!(%server, error = %e, failures, "apiserver probe failed");
                }
                Err(_) => {
                    failures += 1;
                    tracing::warn!(%server, failures, "apiserver probe timed out");
                }
            }
        }
        tracing::warn!(%server, "apiserver unreachable; moving the node agent to another member");
        drop(agent);
    }
}
