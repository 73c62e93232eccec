//! `tugboatd run`: opens (or bootstraps) a member and serves it until SIGTERM.

use crate::authority::AuthorityFixStream;
use crate::listen;
use anyhow::Context;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server};
use tugboat_consensus::{Bootstrap, Node, NodeConfig};
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
    /// Most voters the cluster keeps (odd: 1, 3, 5, 7); further store members are standbys.
    #[arg(long, default_value_t = 3)]
    pub max_voters: usize,
    /// Standbys (non-voting members with a full copy) kept besides the voters; nodes joining
    /// beyond voters + standbys become workers, which hold no copy of the store.
    #[arg(long, default_value_t = 2)]
    pub standbys: usize,
    /// Seconds a voter may be unreachable before a healthy standby replaces it.
    #[arg(long, default_value_t = 30)]
    pub dead_voter_timeout: u64,
    /// Address of the Kubernetes-shaped API (HTTPS with the cluster CA); "off" disables it.
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub api_listen: String,
    /// Let requests without credentials in as `system:anonymous` (RBAC still applies).
    #[arg(long)]
    pub anonymous_auth: bool,
    /// Write a JSON line per API request (who, verb, resource, code, latency) to this file.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Serve the API from these etcd endpoints (comma-separated URLs) instead of this member's
    /// own store.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// CA bundle for `https://` etcd endpoints.
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for `https://` etcd endpoints.
    #[arg(long)]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for `https://` etcd endpoints.
    #[arg(long)]
    pub etcd_keyfile: Option<PathBuf>,
    /// The scheduler, the controller-manager and the node agent.
    #[command(flatten)]
    pub control: crate::control::ControlArgs,
}

/// Flags of `tugboatd join`.
#[derive(Clone, Debug, clap::Args)]
pub struct JoinArgs {
    /// Peer address (`host:port`) of a member to join through.
    pub peer: String,
    /// Join token from `tugboat token create`.
    #[arg(long, env = "TUGBOAT_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Everything `tugboatd run` takes.
    #[command(flatten)]
    pub run: RunArgs,
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

/// Flags of `tugboatd recover`.
#[derive(Clone, Debug, clap::Args)]
pub struct RecoverArgs {
    /// Data dir of the stopped member to recover.
    #[arg(long, default_value = "/var/lib/tugboat")]
    pub data_dir: PathBuf,
}

/// `tugboatd recover`: turns a stopped member into a new single-voter cluster keeping its data.
pub fn recover(args: RecoverArgs) -> anyhow::Result<()> {
    let member = crate::local::read_member_file(&args.data_dir)?;
    let db_dir = args.data_dir.join("db");
    if !db_dir.exists() {
        anyhow::bail!("{} holds no store to recover", args.data_dir.display());
    }
    let db = sled::Config::new().path(&db_dir).open().with_context(|| {
        format!(
            "opening {} (is the member still running? stop it first)",
            db_dir.display()
        )
    })?;
    let info = tugboat_consensus::MemberInfo {
        name: member.name.clone(),
        peer_url: member.peer_url.clone(),
        client_urls: vec![member.client_url.clone()],
    };
    let report = tugboat_consensus::force_new_cluster(&db, &args.data_dir, info)
        .context("recovering the member")?;
    db.flush().context("flushing the database")?;
    // A recovered member is no longer a joiner waiting for admission.
    let _ = std::fs::remove_file(args.data_dir.join(crate::join::JOIN_STATE_FILE));
    println!(
        "member {} ({:x}) now forms cluster {:x} alone (was {:x}); log up to index {}",
        member.name,
        report.member_id,
        report.new_cluster_id,
        report.old_cluster_id,
        report.last_log_index
    );
    for (id, name) in &report.removed_members {
        println!("  dropped member {name} ({id:x}): wipe its data dir and join it again");
    }
    println!(
        "start it with: tugboatd run --data-dir {}",
        args.data_dir.display()
    );
    Ok(())
}

/// Listeners and identity derived from the flags.
struct Prepared {
    name: String,
    peer_listen: SocketAddr,
    etcd_listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    plain_listen: Option<SocketAddr>,
    peer_adv: SocketAddr,
    etcd_adv: SocketAddr,
    api_listen: Option<SocketAddr>,
    identity: NodeIdentity,
}

fn prepare(args: &RunArgs) -> anyhow::Result<Prepared> {
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
    if args.max_voters == 0 || args.max_voters.is_multiple_of(2) || args.max_voters > 7 {
        anyhow::bail!(
            "--max-voters must be odd and between 1 and 7 (got {})",
            args.max_voters
        );
    }
    args.control.validate()?;
    if args.dead_voter_timeout == 0 {
        anyhow::bail!("--dead-voter-timeout must be at least 1 second");
    }
    let api_listen = match args.api_listen.as_str() {
        "off" => None,
        v => Some(listen::parse("--api-listen", v)?),
    };
    let peer_adv = listen::advertised(peer_listen, args.advertise_address);
    let etcd_adv = listen::advertised(etcd_listen, args.advertise_address);
    let mut ips: Vec<IpAddr> = vec![peer_adv.ip(), etcd_adv.ip()];
    if let Some(a) = api_listen {
        ips.push(listen::advertised(a, args.advertise_address).ip());
        if !a.ip().is_unspecified() {
            ips.push(a.ip());
        }
    }
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
    Ok(Prepared {
        name,
        peer_listen,
        etcd_listen,
        metrics_listen,
        plain_listen,
        peer_adv,
        etcd_adv,
        api_listen,
        identity,
    })
}

/// `tugboatd join`: exchanges the token for a certificate, then runs as a member (or worker)
/// and asks to be admitted.
pub async fn join(args: JoinArgs) -> anyhow::Result<()> {
    let prepared = prepare(&args.run)?;
    let data_dir = &args.run.data_dir;
    if data_dir.join("db").exists() || crate::join::read_state(data_dir)?.is_some() {
        anyhow::bail!(
            "{} already holds a member; start it with `tugboatd run --data-dir {}`",
            data_dir.display(),
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let joined =
        crate::join::exchange_token(data_dir, &args.peer, &args.token, &prepared.identity).await;
    if let Err(e) = joined {
        // Nothing was added to the cluster: leave no half-prepared data dir behind either.
        let _ = std::fs::remove_dir_all(data_dir.join("pki"));
        let _ = std::fs::remove_file(data_dir.join(crate::join::JOIN_STATE_FILE));
        return Err(e);
    }
    run(args.run).await
}

/// Runs a member until SIGTERM/SIGINT: bootstraps a new cluster on an empty data dir, resumes
/// otherwise, and finishes an interrupted join.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let Prepared {
        name,
        peer_listen,
        etcd_listen,
        metrics_listen,
        plain_listen,
        peer_adv,
        etcd_adv,
        api_listen,
        identity,
    } = prepare(&args)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let joined = crate::join::read_state(&args.data_dir)?;
    if let Some(state) = &joined {
        if state.role == crate::join::server::ROLE_WORKER {
            return crate::worker::run(&args, &name, state.clone()).await;
        }
    }
    let bootstrap = match &joined {
        Some(state) => Bootstrap::Join {
            member_id: state.member_id,
            cluster_id: state.cluster_id,
        },
        None => Bootstrap::NewCluster,
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
    let node = Node::open_with(
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
            require_peer_cert: true,
            max_voters: args.max_voters,
            dead_voter_after: Duration::from_secs(args.dead_voter_timeout),
        },
        db.clone(),
        machine,
        bootstrap,
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
    let etcd_tls =
        tls_acceptor(&server_tls, ClientAuth::Required).context("etcd listener TLS setup")?;
    // Joiners have no certificate yet: the peer listener lets them reach the join service, and
    // every other call there checks for a client certificate itself. The CA goes along with the
    // peer certificate so joiners can match it against their token's fingerprint.
    let peer_server_tls = tls_acceptor(&peer_tls, ClientAuth::OptionalWithChain)
        .context("peer listener TLS setup")?;

    let etcd_routes = services(server.clone()).routes();
    let etcd_routes_for_api = services(server.clone()).routes();
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
    let join_service = crate::join::server::JoinService::new(
        server.clone(),
        args.data_dir.clone(),
        crate::join::server::RolePolicy {
            max_voters: args.max_voters,
            standbys: args.standbys,
        },
    );
    tasks.spawn(serve(
        "raft peers (mTLS)",
        tonic::service::Routes::new(node.peer_service()).add_service(join_service),
        listener,
        Some(peer_server_tls),
        stop_rx.clone(),
    ));
    if matches!(&joined, Some(state) if !state.admitted) {
        let data_dir = args.data_dir.clone();
        let name = name.clone();
        let peer_url = listen::url("https", peer_adv);
        let client_urls = vec![listen::url("https", etcd_adv)];
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                done = crate::join::admit(&data_dir, &name, Some(peer_url), client_urls) => done?,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
            // Stay in the task set like the listeners: admission is done, wait for shutdown.
            let _ = stop.wait_for(|s| *s).await;
            Ok(())
        });
    }
    tasks.spawn(watch_removal(node.clone(), stop_rx.clone()));
    if let Some(addr) = api_listen {
        let api = start_api(&args, &pki, addr, etcd_routes_for_api, stop_rx.clone()).await?;
        tracing::info!(addr = %api.addr, "Kubernetes API ready");
        let routes = services(server.clone()).routes();
        start_control_loops(
            &args, &name, routes, api.addr, etcd_adv, &mut tasks, &stop_rx,
        )
        .await?;
    }

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
    server.close_streams();
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

/// Starts the apiserver on this member: in-process to its own store, or to `--etcd-endpoints`.
/// Writes `DATA/admin.kubeconfig` for the cluster admin.
async fn start_api(
    args: &RunArgs,
    pki: &tugboat_pki::PkiPaths,
    addr: SocketAddr,
    routes: tonic::service::Routes,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tugboat_api::apiserver::RunningApi> {
    use tugboat_api::apiserver::{ApiConfig, Backend};
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let backend = if args.etcd_endpoints.is_empty() {
        Backend::InProcess(routes)
    } else {
        let identity = match (&args.etcd_certfile, &args.etcd_keyfile) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => anyhow::bail!("--etcd-certfile and --etcd-keyfile go together"),
        };
        let ca_pem = match &args.etcd_cafile {
            Some(p) => Some(read(p)?),
            None => None,
        };
        Backend::Endpoints(
            args.etcd_endpoints.clone(),
            tugboat_api::kv::EtcdTls { ca_pem, identity },
        )
    };
    let ca_key_pem = std::fs::read_to_string(&pki.ca_key).ok();
    let cfg = ApiConfig {
        listen: addr,
        backend,
        ca_pem: read(&pki.ca_cert)?,
        ca_key_pem,
        server_cert_pem: read(&pki.server_cert)?,
        server_key_pem: read(&pki.server_key)?,
        anonymous: args.anonymous_auth,
        audit_log: args.audit_log.clone(),
        compaction_interval: Duration::from_secs(300),
    };
    let api = tugboat_api::apiserver::start(cfg, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await?;
    let server_url = listen::url(
        "https",
        listen::advertised(api.addr, args.advertise_address),
    );
    let path = crate::kubeconfig::write_admin(&args.data_dir, &server_url)
        .context("writing admin.kubeconfig")?;
    tracing::info!(path = %path.display(), "admin kubeconfig written");
    Ok(api)
}

/// Starts the scheduler and controller-manager (unless `--controllers off`) and the node agent
/// (with `--runtime`), each a client of this member's apiserver at `api_addr`.
async fn start_control_loops(
    args: &RunArgs,
    name: &str,
    routes: tonic::service::Routes,
    api_addr: SocketAddr,
    etcd_adv: SocketAddr,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use crate::control;
    let server = control::local_api_url(api_addr, args.advertise_address);
    if args.etcd_endpoints.is_empty() {
        let kv = tugboat_api::kv::Kv::in_process(routes);
        if let Err(e) = control::publish_api_endpoint(&kv, name, &server).await {
            // Workers then use the other members' apiservers; nothing here depends on it.
            tracing::warn!(error = %format!("{e:#}"), "could not publish the apiserver URL");
        }
    }
    if args.control.controllers == "on" {
        let client = control::client_for(
            &args.data_dir,
            &server,
            control::CONTROLLER_MANAGER_USER,
            &[crate::kubeconfig::MASTERS_GROUP.to_string()],
        )
        .await?;
        tasks.spawn(control::run_control_plane(
            client,
            name.to_string(),
            args.control.clone(),
            stop.clone(),
        ));
    }
    if args.control.runtime != control::RuntimeKind::None {
        let client = control::client_for(
            &args.data_dir,
            &server,
            &format!("system:node:{name}"),
            &[control::NODES_GROUP.to_string()],
        )
        .await?;
        let mut config = control::agent_config(&args.control, name, etcd_adv.ip().to_string());
        // Opened before the agent starts, so a missing QEMU fails `tugboatd run` at once.
        let runtime = control::make_runtime(&args.control, &args.data_dir).await?;
        if let Some(rt) = &runtime {
            config.runtime_conditions = control::runtime_conditions(rt);
            let mut stop_endpoint = stop.clone();
            let port = crate::agentserver::serve(
                &args.data_dir,
                name,
                &config.internal_ip,
                args.control.agent_port,
                rt.clone(),
                async move {
                    let _ = stop_endpoint.wait_for(|s| *s).await;
                },
            )
            .await?;
            config.server_port = Some(port);
        }
        tasks.spawn(control::run_agent(
            client,
            args.control.clone(),
            config,
            runtime,
            stop.clone(),
        ));
    }
    Ok(())
}

/// Ends with an error when this member is removed from the cluster, as etcd members stop
/// when removed: it gets no more entries and must not campaign on a stale view.
async fn watch_removal(
    node: Node,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut status = node.subscribe();
    let mut seen_self = false;
    loop {
        let current = status.borrow_and_update().clone();
        let present = current.members.iter().any(|m| m.id == node.member_id());
        if present {
            seen_self = true;
        }
        // Either the log told this member, or (when the leader stopped replicating to it
        // before it learnt) the other voters did.
        if (seen_self && !present && !current.members.is_empty()) || node.was_removed() {
            anyhow::bail!(
                "this member ({:x}) was removed from the cluster; wipe its data dir before it joins again",
                node.member_id()
            );
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// Streams a client may reset before the server accepted them (h2's rapid-reset guard).
const MAX_PENDING_RESETS: usize = 1000;

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for tonic to pick them up.
const ACCEPT_QUEUE: usize = 64;

/// How a TLS listener treats client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuth {
    /// A certificate signed by the cluster CA is required.
    Required,
    /// Verified when presented, but optional; the CA certificate is sent with ours.
    OptionalWithChain,
}

/// A rustls acceptor checking client certificates against the cluster CA.
fn tls_acceptor(
    files: &tugboat_pki::TlsFiles,
    auth: ClientAuth,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&files.ca_pem) {
        roots
            .add(ca.context("parsing the CA certificate")?)
            .context("adding the CA certificate")?;
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::OptionalWithChain => builder.allow_unauthenticated(),
    };
    let verifier = builder
        .build()
        .context("building the client certificate verifier")?;
    let mut chain = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the server certificate")?;
    if auth == ClientAuth::OptionalWithChain {
        for ca in CertificateDer::pem_slice_iter(&files.ca_pem) {
            chain.push(ca.context("parsing the CA certificate")?);
        }
    }
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
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Raft peers cancel every request a frozen member did not answer in time; when it
        // thaws, h2's rapid-reset guard (20 by default) would drop the whole connection.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS));
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

pub(crate) async fn shutdown_signal() -> &'static str {
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
