//! `tugboatd run`: opens (or bootstraps) a member and serves it until SIGTERM.

use crate::authority::AuthorityFixStream;
use crate::listen;
use anyhow::Context;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server};
use tugboat_consensus::{Node, NodeConfig};
use tugboat_pki::NodeIdentity;
use tugboat_store::lease::LeaseClock;
use tugboat_store::machine::StoreMachine;
use tugboat_store::mvcc::KvStore;
use tugboat_store::{services, EtcdServer, ServerConfig};

/// Flags of `tugboatd run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Where the member keeps its store, raft log, snapshots and PKI.
    #[arg(long, default_value = "/var/lib/tugboat")]
    pub data_dir: PathBuf,
    /// Member name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Address for raft peers (mTLS).
    #[arg(long, default_value = "0.0.0.0:2380")]
    pub peer_listen: String,
    /// Address for etcd clients (TLS, client certificate required).
    #[arg(long, default_value = "0.0.0.0:2379")]
    pub etcd_listen: String,
    /// Plaintext etcd listener for local tools; refused unless loopback.
    #[arg(long)]
    pub etcd_listen_plain: Option<String>,
    /// Prometheus metrics and health over plain HTTP; refused unless loopback. "off" disables it.
    #[arg(long, default_value = "127.0.0.1:2381")]
    pub metrics_listen: String,
    /// Address advertised to peers and clients when listening on 0.0.0.0 (default 127.0.0.1).
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Raft election timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Raft entries between snapshots.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Seconds between progress notifications to watchers that asked for them.
    #[arg(long, default_value_t = 600)]
    pub watch_progress_notify_interval: u64,
    /// Memory budget of the storage engine's page cache, in MiB.
    #[arg(long, default_value_t = 16)]
    pub cache_mb: u64,
}

fn member_name(arg: &Option<String>) -> String {
    if let Some(n) = arg {
        return n.clone();
    }
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tugboat".to_string())
}

/// Minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds (as etcd).
fn min_lease_ttl(election_timeout_ms: u64) -> i64 {
    let ms = election_timeout_ms * 3 / 2;
    ms.div_ceil(1000).max(1) as i64
}

/// Runs a member until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let name = member_name(&args.name);
    let peer_listen = listen::parse("--peer-listen", &args.peer_listen)?;
    let etcd_listen = listen::parse("--etcd-listen", &args.etcd_listen)?;
    let metrics_listen = match args.metrics_listen.as_str() {
        "off" => None,
        v => Some(listen::parse_plain("--metrics-listen", v)?),
    };
    let plain_listen = match &args.etcd_listen_plain {
        Some(v) => Some(listen::parse_plain("--etcd-listen-plain", v)?),
        None => None,
    };
    if args.election_timeout < 2 * args.heartbeat_interval {
        anyhow::bail!(
            "--election-timeout ({} ms) must be at least twice --heartbeat-interval ({} ms)",
            args.election_timeout,
            args.heartbeat_interval
        );
    }
    let peer_adv = listen::advertised(peer_listen, args.advertise_address);
    let etcd_adv = listen::advertised(etcd_listen, args.advertise_address);

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let mut ips: Vec<IpAddr> = vec![peer_adv.ip(), etcd_adv.ip()];
    for a in [peer_listen, etcd_listen] {
        if !a.ip().is_unspecified() {
            ips.push(a.ip());
        }
    }
    ips.sort();
    ips.dedup();
    let identity = NodeIdentity {
        name: name.clone(),
        dns_names: Vec::new(),
        ip_addrs: ips,
    };
    let pki = tugboat_pki::ensure_node_pki(&args.data_dir, &identity)
        .context("preparing certificates")?;
    tracing::info!(dir = %pki.dir.display(), "certificates ready");

    let db = sled::Config::new()
        .path(args.data_dir.join("db"))
        .cache_capacity(args.cache_mb * 1024 * 1024)
        .open()
        .with_context(|| {
            format!(
                "opening the database in {}",
                args.data_dir.join("db").display()
            )
        })?;
    let kv = Arc::new(KvStore::open(db.clone(), "kv").context("opening the key-value store")?);
    let leases = Arc::new(LeaseClock::default());
    let machine = Arc::new(StoreMachine::new(
        kv.clone(),
        leases.clone(),
        min_lease_ttl(args.election_timeout),
    ));

    let peer_tls = tugboat_pki::load_peer_tls(&pki)?;
    let node = Node::open(
        NodeConfig {
            name: name.clone(),
            data_dir: args.data_dir.clone(),
            peer_url: listen::url("https", peer_adv),
            client_urls: vec![listen::url("https", etcd_adv)],
            heartbeat_interval_ms: args.heartbeat_interval,
            election_timeout_ms: args.election_timeout,
            snapshot_every: args.snapshot_count,
            peer_tls: Some(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&peer_tls.ca_pem))
                    .identity(Identity::from_pem(&peer_tls.cert_pem, &peer_tls.key_pem)),
            ),
        },
        db.clone(),
        machine,
    )
    .await
    .context("starting raft")?;
    tracing::info!(
        member = %format!("{:x}", node.member_id()),
        cluster = %format!("{:x}", node.cluster_id()),
        %name,
        "member started"
    );

    let server = EtcdServer::new(
        kv.clone(),
        leases,
        node.clone(),
        ServerConfig {
            watch_progress_interval: Duration::from_secs(
                args.watch_progress_notify_interval.max(1),
            ),
            tmp_dir: args.data_dir.join("tmp"),
            db_dir: Some(args.data_dir.join("db")),
            ..ServerConfig::default()
        },
    );
    let expiry = tokio::spawn(server.clone().run_lease_expiry());
    crate::local::write_member_file(
        &args.data_dir,
        &crate::local::MemberFile {
            name: name.clone(),
            client_url: listen::url("https", etcd_adv),
            peer_url: listen::url("https", peer_adv),
        },
    )?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    let server_tls = tugboat_pki::load_server_tls(&pki)?;
    let etcd_tls = tls_acceptor(&server_tls).context("etcd listener TLS setup")?;
    let peer_server_tls = tls_acceptor(&peer_tls).context("peer listener TLS setup")?;

    let etcd_routes = services(server.clone()).routes();
    let listener = bind(etcd_listen).await?;
    tasks.spawn(serve(
        "etcd (mTLS)",
        etcd_routes.clone(),
        listener,
        Some(etcd_tls),
        stop_rx.clone(),
    ));
    if let Some(addr) = metrics_listen {
        let listener = bind(addr).await?;
        tasks.spawn(crate::metrics::serve(
            listener,
            server.clone(),
            stop_rx.clone(),
        ));
    }
    if let Some(addr) = plain_listen {
        let listener = bind(addr).await?;
        tasks.spawn(serve(
            "etcd (plaintext, loopback)",
            etcd_routes,
            listener,
            None,
            stop_rx.clone(),
        ));
    }
    let listener = bind(peer_listen).await?;
    tasks.spawn(serve(
        "raft peers (mTLS)",
        tonic::service::Routes::new(node.peer_service()),
        listener,
        Some(peer_server_tls),
        stop_rx.clone(),
    ));

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut failed: Option<anyhow::Error> = None;
    tokio::select! {
        sig = &mut signal => tracing::info!(signal = sig, "shutting down"),
        res = tasks.join_next() => {
            let err = match res {
                Some(Ok(Err(e))) => e,
                Some(Err(e)) => anyhow::anyhow!("listener task failed: {e}"),
                _ => anyhow::anyhow!("listener stopped unexpectedly"),
            };
            tracing::error!(error = %err, "a listener failed; shutting down");
            failed = Some(err);
        }
    }
    let _ = stop_tx.send(true);
    expiry.abort();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("listeners did not drain within 5 s");
    }
    if let Err(e) = node.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown reported an error");
    }
    db.flush().context("flushing the database")?;
    tracing::info!("stopped");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for tonic to pick them up.
const ACCEPT_QUEUE: usize = 64;

/// A rustls acceptor requiring client certificates signed by the cluster CA.
fn tls_acceptor(files: &tugboat_pki::TlsFiles) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&files.ca_pem) {
        roots
            .add(ca.context("parsing the CA certificate")?)
            .context("adding the CA certificate")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("building the client certificate verifier")?;
    let chain = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&files.key_pem).context("parsing the server key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("loading the server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `routes` on `listener` (with mTLS when `tls` is set) until `stop`.
///
/// Every connection goes through [`AuthorityFixStream`] so Go clients that send
/// a URL as `:authority` are served, as etcd serves them.
async fn serve(
    what: &'static str,
    routes: tonic::service::Routes,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving {what}");
    let mut builder = Server::builder().http2_keepalive_interval(Some(Duration::from_secs(30)));
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let served = match tls {
        Some(acceptor) => {
            let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
            tokio::spawn(accept_loop(what, listener, tx, move |tcp, tx| {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let peer = tcp.peer_addr().ok();
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(AuthorityFixStream::new(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                    }
                });
            }));
            builder
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming(rx), shutdown)
                .await
        }
        None => {
            let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
            tokio::spawn(accept_loop(what, listener, tx, |tcp, tx| {
                // The accept loop must not wait on tonic here, so hand over without blocking.
                if let Err(tokio::sync::mpsc::error::TrySendError::Full(conn)) =
                    tx.try_send(AuthorityFixStream::new(tcp))
                {
                    tokio::spawn(async move {
                        let _ = tx.send(conn).await;
                    });
                }
            }));
            builder
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming(rx), shutdown)
                .await
        }
    };
    served.with_context(|| format!("serving {what} on {addr}"))
}

/// The connections an accept loop hands over, as the stream tonic serves.
fn incoming<IO>(
    rx: tokio::sync::mpsc::Receiver<IO>,
) -> impl tokio_stream::Stream<Item = Result<IO, std::io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}

/// Accepts TCP connections and passes each to `handle` until tonic drops the receiver.
async fn accept_loop<IO, H>(
    what: &'static str,
    listener: tokio::net::TcpListener,
    tx: tokio::sync::mpsc::Sender<IO>,
    handle: H,
) where
    H: Fn(tokio::net::TcpStream, tokio::sync::mpsc::Sender<IO>),
{
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    // tonic's own nodelay setting does not apply to a custom incoming stream.
                    let _ = tcp.set_nodelay(true);
                    handle(tcp, tx.clone());
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a {what} connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn min_lease_ttl_matches_etcd() {
        assert_eq!(super::min_lease_ttl(1000), 2);
        assert_eq!(super::min_lease_ttl(500), 1);
        assert_eq!(super::min_lease_ttl(3000), 5);
    }
}
