//! Starts the node agent's HTTPS endpoint ([`tugboat_nodeagent::AgentServer`], `--agent-port`)
//! with a serving certificate for this node.
//!
//! The apiserver verifies the endpoint's certificate against the cluster CA for the node's
//! *name*. A store member holds the CA key and issues itself a serving certificate at every
//! start (CN and SAN the node name, plus its InternalIP, localhost and loopback; kept in memory
//! only). A worker has no CA key and serves with its node certificate (`DATA/pki/peer.crt`),
//! which carries the node name as a SAN and server-auth usage since it was signed at join; a
//! certificate without either is refused here with the reason.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tugboat_nodeagent::{AgentServer, AgentServerConfig, Runtime};
use tugboat_pki::PkiPaths;

/// Lifetime of a member's in-memory serving certificate (re-issued at every start).
const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Certificate and key PEM the endpoint of node `name` serves with: issued from the CA when
/// this host holds its key, else the node certificate.
fn serving_identity(
    data_dir: &Path,
    name: &str,
    internal_ip: &str,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let paths = PkiPaths::new(data_dir);
    if paths.ca_key.exists() {
        let ips: Vec<IpAddr> = internal_ip.parse().into_iter().collect();
        let issued =
            tugboat_pki::issue_node_serving_cert(&paths, name, &ips, SERVING_CERT_LIFETIME)
                .with_context(|| format!("issuing the agent serving certificate of {name}"))?;
        return Ok((issued.cert_pem.into_bytes(), issued.key_pem.into_bytes()));
    }
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let cert = read(&paths.peer_cert)?;
    let key = read(&paths.peer_key)?;
    if let Some(reason) = tugboat_pki::serving_problem(&cert, name)? {
        anyhow::bail!(
            "{} cannot serve the agent endpoint of node {name}: {reason}; rejoin the node to get \
             a node certificate for its name",
            paths.peer_cert.display()
        );
    }
    Ok((cert, key))
}

/// Starts the endpoint of node `name` on `port` (all addresses; `0` picks a free port) for
/// `runtime`'s VMs, serving until `shutdown` resolves; returns the bound port, which the Node
/// advertises.
pub async fn serve<R: Runtime>(
    data_dir: &Path,
    name: &str,
    internal_ip: &str,
    port: u16,
    runtime: Arc<R>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<u16> {
    let ca_pem = std::fs::read(PkiPaths::new(data_dir).ca_cert)
        .context("reading the cluster CA certificate")?;
    let (cert_pem, key_pem) = serving_identity(data_dir, name, internal_ip)?;
    let any = match internal_ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let config = AgentServerConfig::new(SocketAddr::new(any, port), ca_pem, cert_pem, key_pem);
    let server = AgentServer::start(runtime, config)
        .await
        .with_context(|| format!("starting the agent endpoint (--agent-port {port})"))?;
    let bound = server.local_addr().port();
    tokio::spawn(async move {
        shutdown.await;
        server.shutdown();
    });
    Ok(bound)
}
