//! The agent's HTTPS endpoint (the kubelet's port 10250 in Kubernetes): serial logs and
//! consoles of this node's VMs, for the apiserver's `ships/log` and `ships/console`, and image
//! uploads into the node's cache, for `nodes/{name}/images`.
//!
//! - `GET /vms/{uid}/log?follow=true|false&tailLines=N&limitBytes=N` streams the VM's serial
//!   log. With `follow` it keeps streaming what is appended until the client goes away; a log
//!   that is truncated is read again from its start, one that is replaced (a new file at the
//!   path) is followed into the new file.
//! - `GET` or `POST /vms/{uid}/console` with `Connection: Upgrade` and
//!   `Upgrade: tugboat-console` answers `101 Switching Protocols` and then copies bytes both
//!   ways between the connection and the VM's console socket. One client per VM at a time: a
//!   second attach is `409 console already attached`, because QEMU's socket chardev serves
//!   one client and a second one would silently wait in its backlog.
//! - `POST /images/load` streams an OCI image layout tar archive (`tugboat image save`) into
//!   the runtime's image cache and answers `{"images": [...]}` with the references loaded; a
//!   malformed archive is 400 and adds no image (every image is checked before any is named); a
//!   node that cannot store it (disk full) is 503.
//! - Unknown uid: 404; a runtime without consoles: 503; errors are Kubernetes `Status` JSON.
//!
//! TLS requires a client certificate signed by the cluster CA, and only the apiserver's proxy
//! identity (CN [`PROXY_USER`]) or group `system:masters` is served; anyone else gets 403.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use tugboat_api::http::proxy::{CONSOLE_PROTOCOL, PROXY_USER};

use crate::runtime::{Runtime, RuntimeError};

/// Default port of the agent endpoint (the kubelet's).
pub const DEFAULT_PORT: u16 = 10250;
/// Group whose members may use the endpoint directly (operators debugging a node).
pub const MASTERS_GROUP: &str = "system:masters";

/// How often a followed log is checked for new bytes, truncation or replacement.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a console attach waits for a previous client's session to end.
const ATTACH_GRACE: Duration = Duration::from_secs(1);
/// Read size of log streaming.
const CHUNK: usize = 32 * 1024;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Errors of starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificates or key do not make a TLS configuration.
    #[error("agent endpoint TLS: {0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("binding the agent endpoint to {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Settings of an [`AgentServer`].
#[derive(Clone)]
pub struct AgentServerConfig {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// PEM of the cluster CA (client certificates must chain to it).
    pub ca_pem: Vec<u8>,
    /// PEM of the serving certificate (must name the node, which the apiserver verifies).
    pub cert_pem: Vec<u8>,
    /// PEM of its key.
    pub key_pem: Vec<u8>,
    /// Client certificate CNs served.
    pub allowed_users: Vec<String>,
    /// Client certificate groups (O) served.
    pub allowed_groups: Vec<String>,
}

impl AgentServerConfig {
    /// Serves the apiserver ([`PROXY_USER`]) and `system:masters` with these certificates.
    pub fn new(listen: SocketAddr, ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        Self {
            listen,
            ca_pem,
            cert_pem,
            key_pem,
            allowed_users: vec![PROXY_USER.to_string()],
            allowed_groups: vec![MASTERS_GROUP.to_string()],
        }
    }
}

impl std::fmt::Debug for AgentServerConfig {
    // The key must never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServerConfig")
            .field("listen", &self.listen)
            .field("allowed_users", &self.allowed_users)
            .field("allowed_groups", &self.allowed_groups)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A running endpoint; dropping it stops accepting (attached consoles run on until they end).
#[derive(Debug)]
pub struct AgentServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl AgentServer {
    /// Binds and serves `runtime`'s VMs in a background task.
    pub async fn start<R: Runtime>(
        runtime: Arc<R>,
        config: AgentServerConfig,
    ) -> Result<Self, ServerError> {
        let tls = tls_config(&config)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let state = Arc::new(State {
            runtime,
            attached: Arc::new(Mutex::new(HashSet::new())),
            allowed_users: config.allowed_users,
            allowed_groups: config.allowed_groups,
        });
        let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(tls), state));
        tracing::info!(%addr, "node agent endpoint listening");
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for AgentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls_config(cfg: &AgentServerConfig) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let err = |what: &str, e: &dyn std::fmt::Display| ServerError::Tls(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &cfg.ca_pem[..]) {
        let c = c.map_err(|e| err("CA certificate", &e))?;
        roots.add(c).map_err(|e| err("CA certificate", &e))?;
    }
    // Client certificates are required: nothing here is for anonymous callers.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| err("client verifier", &e))?;
    let certs = rustls_pemfile::certs(&mut &cfg.cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("serving certificate", &e))?;
    let key = rustls_pemfile::private_key(&mut &cfg.key_pem[..])
        .map_err(|e| err("serving key", &e))?
        .ok_or_else(|| ServerError::Tls("serving key: no private key".into()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| err("serving certificate", &e))?;
    // HTTP/1.1 only: the console is an HTTP/1.1 upgrade.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

struct State<R> {
    runtime: Arc<R>,
    /// UIDs of the VMs with an attached console client.
    attached: Arc<Mutex<HashSet<String>>>,
    allowed_users: Vec<String>,
    allowed_groups: Vec<String>,
}

/// Who a connection's client certificate names.
#[derive(Clone, Debug, Default)]
struct Peer {
    user: String,
    groups: Vec<String>,
}

async fn accept_loop<R: Runtime>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State<R>>,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "agent endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "agent endpoint TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| {
                    let pem = tugboat_pki::cert_der_to_pem(c.as_ref());
                    tugboat_pki::cert_subject(pem.as_bytes()).ok()
                })
                .map(|s| Peer {
                    user: s.common_name,
                    groups: s.organizations,
                })
                .unwrap_or_default();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (state, peer) = (state.clone(), peer.clone());
                async move { Ok::<_, Infallible>(route(&state, &peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "agent endpoint connection ended");
            }
        });
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A Kubernetes `Status` failure.
fn status(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    let reason = match code {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::CONFLICT => "Conflict",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    };
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.into(),
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn route<R: Runtime>(
    state: &State<R>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Response<Body> {
    let allowed = state.allowed_users.contains(&peer.user)
        || peer
            .groups
            .iter()
            .any(|g| state.allowed_groups.iter().any(|a| a == g));
    if !allowed {
        return status(
            StatusCode::FORBIDDEN,
            format!(
                "user {:?} may not use the node agent endpoint (only the apiserver, {PROXY_USER}, and group {MASTERS_GROUP} may)",
                peer.user
            ),
        );
    }
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segs.as_slice()) {
        (&Method::GET, ["healthz"]) => Response::new(full("ok")),
        (&Method::POST, ["images", "load"]) => load_images(state, req).await,
        (m, ["images", "load"]) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{m} is not allowed on {path}: POST an image archive"),
        ),
        (m, ["vms", uid, what @ ("log" | "console")]) => {
            if !valid_uid(uid) {
                return status(StatusCode::BAD_REQUEST, format!("invalid VM uid {uid:?}"));
            }
            match (*what, m) {
                ("log", &Method::GET) => {
                    let uid = uid.to_string();
                    log(state, &uid, req.uri().query()).await
                }
                ("console", &Method::GET | &Method::POST) => {
                    let uid = uid.to_string();
                    console(state, peer, &uid, req).await
                }
                _ => status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{m} is not allowed on {path}"),
                ),
            }
        }
        _ => status(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// UIDs name files of the runtime: letters, digits, `-`, `_` and `.` only.
fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 128
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !uid.starts_with('.')
}

fn runtime_error(uid: &str, e: RuntimeError) -> Response<Body> {
    match e {
        RuntimeError::NotFound(_) => status(
            StatusCode::NOT_FOUND,
            format!("no VM with uid {uid} on this node"),
        ),
        RuntimeError::Unavailable(m) => status(StatusCode::SERVICE_UNAVAILABLE, m),
        other => status(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// `POST /images/load`: the body is an OCI image layout tar archive, streamed into the
/// runtime's image cache as it arrives (never held whole in memory or spooled to a file).
async fn load_images<R: Runtime>(state: &State<R>, req: Request<Incoming>) -> Response<Body> {
    let data = req
        .into_body()
        .into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(data));
    match state.runtime.load_images(Box::new(reader)).await {
        Ok(images) => {
            tracing::info!(?images, "images loaded from an upload");
            let body = serde_json::json!({"images": images});
            let mut resp = Response::new(full(body.to_string()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(RuntimeError::Unavailable(m)) => status(StatusCode::SERVICE_UNAVAILABLE, m),
        // The archive is the client's: a bad one is its error.
        Err(RuntimeError::Image { message, .. }) => status(
            StatusCode::BAD_REQUEST,
            format!("loading the image archive: {message}"),
        ),
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Options of a log request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming appended bytes.
    pub follow: bool,
    /// Start this many lines before the end (`None`: from the start).
    pub tail_lines: Option<u64>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Parses `follow=…&tailLines=…&limitBytes=…` (other parameters are ignored).
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut out = LogOptions::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("invalid value for {k}: {v:?}"))
            };
            match k {
                "follow" => {
                    out.follow = match v {
                        "true" | "1" => true,
                        "false" | "0" | "" => false,
                        _ => return Err(format!("invalid value for follow: {v:?}")),
                    }
                }
                "tailLines" => out.tail_lines = Some(number(v)?),
                "limitBytes" => {
                    let n = number(v)?;
                    if n == 0 {
                        return Err("limitBytes must be greater than 0".into());
                    }
                    out.limit_bytes = Some(n);
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

async fn log<R: Runtime>(state: &State<R>, uid: &str, query: Option<&str>) -> Response<Body> {
    let opts = match LogOptions::parse(query) {
        Ok(o) => o,
        Err(e) => return status(StatusCode::BAD_REQUEST, e),
    };
    let endpoints = match state.runtime.console(uid).await {
        Ok(e) => e,
        Err(e) => return runtime_error(uid, e),
    };
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    tokio::spawn(stream_log(endpoints.log, opts, tx));
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(Frame::data)))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// The log file being read, and which file it is (device, inode).
struct OpenLog {
    file: tokio::fs::File,
    id: (u64, u64),
    pos: u64,
}

impl OpenLog {
    /// Opens `path` positioned `tail_lines` lines before its end (at its start for `None`);
    /// `Ok(None)` when it does not exist (yet).
    async fn open(path: &Path, tail_lines: Option<u64>) -> std::io::Result<Option<Self>> {
        let path = path.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<Option<OpenLog>> {
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let meta = file.metadata()?;
            let pos = match tail_lines {
                Some(n) => tail_offset(&mut file, meta.len(), n)?,
                None => 0,
            };
            file.seek(SeekFrom::Start(pos))?;
            Ok(Some(OpenLog {
                file: tokio::fs::File::from_std(file),
                id: (meta.dev(), meta.ino()),
                pos,
            }))
        })
        .await
        .map_err(std::io::Error::other)?;
        opened
    }

    /// Sends what is there up to the end of the file; `Ok(false)` when streaming is over (the
    /// client went away or the byte limit is reached).
    async fn drain(
        &mut self,
        tx: &mpsc::Sender<std::io::Result<Bytes>>,
        remaining: &mut u64,
    ) -> std::io::Result<bool> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if *remaining == 0 {
                return Ok(false);
            }
            let want = usize::try_from(*remaining).unwrap_or(CHUNK).min(CHUNK);
            let n = self.file.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(true);
            }
            self.pos += n as u64;
            *remaining -= n as u64;
            if tx
                .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
    }
}

/// Streams the log at `path` into `tx` until done (or, following, until the receiver is gone).
async fn stream_log(path: PathBuf, opts: LogOptions, tx: mpsc::Sender<std::io::Result<Bytes>>) {
    if let Err(e) = follow_log(&path, opts, &tx).await {
        tracing::debug!(path = %path.display(), error = %e, "log stream failed");
        let _ = tx.send(Err(e)).await;
    }
}

async fn follow_log(
    path: &Path,
    opts: LogOptions,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let mut remaining = opts.limit_bytes.unwrap_or(u64::MAX);
    let mut current = OpenLog::open(path, opts.tail_lines).await?;
    loop {
        if let Some(log) = current.as_mut() {
            if !log.drain(tx, &mut remaining).await? {
                return Ok(());
            }
        }
        if !opts.follow {
            return Ok(());
        }
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        let meta = match tokio::fs::metadata(path).await {
            Ok(m) => m,
            // Removed: keep reading the old file, whose writer may still hold it open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match current.as_mut() {
            None => current = OpenLog::open(path, None).await?,
            Some(log) if (meta.dev(), meta.ino()) != log.id => {
                // Replaced (rotated or recreated): finish the old file, then read the new one
                // from its start.
                if !log.drain(tx, &mut remaining).await? {
                    return Ok(());
                }
                current = OpenLog::open(path, None).await?;
            }
            Some(log) if meta.len() < log.pos => {
                // Truncated in place: what is there now is new.
                log.file.seek(SeekFrom::Start(0)).await?;
                log.pos = 0;
            }
            Some(_) => {}
        }
    }
}

/// Offset of the start of the last `lines` lines of a file of `len` bytes (a final newline
/// ends the last line rather than starting an empty one).
pub fn tail_offset<F: Read + Seek>(f: &mut F, len: u64, lines: u64) -> std::io::Result<u64> {
    if lines == 0 {
        return Ok(len);
    }
    let mut seen = 0u64;
    let mut end = len;
    let mut buf = vec![0u8; 8192];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            let at = start + i as u64;
            if *b == b'\n' && at + 1 != len {
                seen += 1;
                if seen == lines {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// Marks a VM's console as attached; dropping it releases the console.
struct Claim {
    set: Arc<Mutex<HashSet<String>>>,
    uid: String,
}

impl Claim {
    fn take(set: &Arc<Mutex<HashSet<String>>>, uid: &str) -> Option<Claim> {
        let fresh = set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_string());
        fresh.then(|| Claim {
            set: set.clone(),
            uid: uid.to_string(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.uid);
    }
}

async fn console<R: Runtime>(
    state: &State<R>,
    peer: &Peer,
    uid: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if !tugboat_api::http::proxy::wants_console_upgrade(req.headers()) {
        return status(
            StatusCode::BAD_REQUEST,
            format!("the console needs Connection: Upgrade and Upgrade: {CONSOLE_PROTOCOL}"),
        );
    }
    let endpoints = match state.runtime.console(uid).await {
        Ok(e) => e,
        Err(e) => return runtime_error(uid, e),
    };
    // A client that just detached may still hold the console for a moment while its session
    // winds down; a re-attach waits for that instead of failing.
    let mut claim = Claim::take(&state.attached, uid);
    for _ in 0..(ATTACH_GRACE.as_millis() / 50) {
        if claim.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        claim = Claim::take(&state.attached, uid);
    }
    let Some(claim) = claim else {
        return status(
            StatusCode::CONFLICT,
            format!("console already attached: VM {uid} has a console client; its serial socket takes one at a time"),
        );
    };
    let socket = match UnixStream::connect(&endpoints.socket).await {
        Ok(s) => s,
        Err(e) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the console of VM {uid} is not available (is the VM running?): {}: {e}",
                    endpoints.socket.display()
                ),
            )
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (uid, user) = (uid.to_string(), peer.user.clone());
    tokio::spawn(async move {
        let _claim = claim;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%uid, error = %e, "console upgrade failed");
                return;
            }
        };
        tracing::info!(%uid, %user, "console attached");
        let end = pipe(TokioIo::new(upgraded), socket).await;
        tracing::info!(%uid, %user, %end, "console detached");
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(
        header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    resp.headers_mut().insert(
        header::UPGRADE,
        http::HeaderValue::from_static(CONSOLE_PROTOCOL),
    );
    resp
}

/// Copies bytes both ways until either side is done, and says which. The session ends when
/// the client stops sending (it went away or closed its side) even if the VM side stays open:
/// a serial socket does not answer a half-close, and the console must be free for the next
/// client.
async fn pipe<C, V>(client: C, vm: V) -> String
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    V: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut vm_rd, mut vm_wr) = tokio::io::split(vm);
    tokio::select! {
        r = tokio::io::copy(&mut client_rd, &mut vm_wr) => match r {
            Ok(n) => format!("client closed after sending {n} bytes"),
            Err(e) => format!("client: {e}"),
        },
        r = tokio::io::copy(&mut vm_rd, &mut client_wr) => match r {
            Ok(n) => format!("console socket closed after {n} bytes"),
            Err(e) => format!("console: {e}"),
        },
    }
}

#[cfg(test)]
mod tests;
