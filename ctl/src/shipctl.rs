//! `tugboat start|stop|restart|pause|unpause|logs|console SHIP`: Ship operations through the
//! apiserver with a kubeconfig's credentials, as kubectl does them.
//!
//! `start` and `stop` merge-patch `spec.runStrategy` (`Always`, `Halted`); `restart`
//! merge-patches the annotation `tugboat.io/restartedAt` with the current time, and the node
//! agent restarts a running VM whose token changed; `pause` sets `tugboat.io/paused: "true"`
//! and `unpause` removes it, and the agent pauses or resumes the VM's vCPUs over QMP. `logs` streams `ships/NAME/log`.
//! `console` opens an HTTP/1.1 upgrade (`Upgrade: tugboat-console`) on
//! `ships/NAME/console` and copies the terminal to the serial console and back: a terminal is
//! put in raw mode (restored on every exit) and Ctrl-] detaches; piped input is sent until its
//! end, then output is read until the server closes or `--timeout` passes.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tugboat_api::http::proxy::{CONSOLE_PROTOCOL, ESCAPE_BYTE};
use tugboat_nodeagent::agent::{
    node_resource, ship_resource, PAUSE_ANNOTATION, RESTART_ANNOTATION,
};

/// How long connecting to the apiserver may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the Ship commands.
#[derive(Debug, thiserror::Error)]
pub enum ShipCtlError {
    /// The kubeconfig could not be read or lacks something needed.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// The apiserver refused, as kubectl prints it.
    #[error("Error from server ({reason}): {message}")]
    Server {
        /// HTTP status code.
        code: u16,
        /// Status reason (`Forbidden`, `NotFound`, …).
        reason: String,
        /// Status message.
        message: String,
    },
    /// The apiserver could not be reached.
    #[error("connecting to {server}: {message}")]
    Connect {
        /// Server URL.
        server: String,
        /// What failed.
        message: String,
    },
    /// A client error other than an API refusal.
    #[error("{0}")]
    Client(String),
    /// Reading or writing the terminal or a stream failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<kube::Error> for ShipCtlError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => ShipCtlError::Server {
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            other => ShipCtlError::Client(other.to_string()),
        }
    }
}

/// Which Ship, where, and with which credentials.
#[derive(Clone, Debug, clap::Args)]
pub struct ShipTarget {
    /// Name of the Ship.
    pub name: String,
    /// Namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// The Ship subcommands of `tugboat`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum ShipCommand {
    /// Start a Ship (`spec.runStrategy: Always`).
    Start(ShipTarget),
    /// Stop a Ship (`spec.runStrategy: Halted`).
    Stop(ShipTarget),
    /// Restart a Ship's running VM (annotation `tugboat.io/restartedAt`).
    Restart(ShipTarget),
    /// Pause a Ship's vCPUs, keeping its memory and devices (annotation `tugboat.io/paused`).
    Pause(ShipTarget),
    /// Resume a paused Ship.
    Unpause(ShipTarget),
    /// Print a Ship's serial console log.
    Logs {
        /// The Ship.
        #[command(flatten)]
        target: ShipTarget,
        /// Keep streaming what the VM writes.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
        /// At most N bytes.
        #[arg(long)]
        limit_bytes: Option<u64>,
    },
    /// Attach to a Ship's serial console (Ctrl-] detaches).
    Console {
        /// The Ship.
        #[command(flatten)]
        target: ShipTarget,
        /// With piped input: how long to keep reading output after the input ended.
        #[arg(long, default_value = "5s")]
        timeout: String,
    },
}

/// Runs one Ship subcommand.
pub async fn run(cmd: ShipCommand) -> anyhow::Result<()> {
    match cmd {
        ShipCommand::Start(t) => {
            let (client, ns) = client(&t).await?;
            set_run_strategy(&client, &ns, &t.name, "Always").await?;
            println!("ship/{} started", t.name);
        }
        ShipCommand::Stop(t) => {
            let (client, ns) = client(&t).await?;
            set_run_strategy(&client, &ns, &t.name, "Halted").await?;
            println!("ship/{} stopped", t.name);
        }
        ShipCommand::Restart(t) => {
            let (client, ns) = client(&t).await?;
            request_restart(&client, &ns, &t.name, jiff::Timestamp::now()).await?;
            println!("ship/{} restart requested", t.name);
        }
        ShipCommand::Pause(t) => {
            let (client, ns) = client(&t).await?;
            set_paused(&client, &ns, &t.name, true).await?;
            println!("ship/{} paused", t.name);
        }
        ShipCommand::Unpause(t) => {
            let (client, ns) = client(&t).await?;
            set_paused(&client, &ns, &t.name, false).await?;
            println!("ship/{} unpaused", t.name);
        }
        ShipCommand::Logs {
            target,
            follow,
            tail,
            limit_bytes,
        } => {
            let (client, ns) = client(&target).await?;
            let query = log_query(follow, tail, limit_bytes);
            logs(&client, &ns, &target.name, &query).await?;
        }
        ShipCommand::Console { target, timeout } => {
            let timeout = crate::token::parse_duration(&timeout)?;
            let (config, ns) = load_config(&target).await?;
            console(&config, &ns, &target.name, timeout).await?;
        }
    }
    Ok(())
}

/// The client configuration of the kubeconfig `--kubeconfig` names (else `$KUBECONFIG`, else
/// `~/.kube/config`) and the namespace to use.
pub async fn load_config(t: &ShipTarget) -> Result<(kube::Config, String), ShipCtlError> {
    let config = kube_config(t.kubeconfig.as_deref()).await?;
    let ns = t
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((config, ns))
}

/// The client configuration of the kubeconfig at `path` (else `$KUBECONFIG`, else
/// `~/.kube/config`).
pub async fn kube_config(path: Option<&std::path::Path>) -> Result<kube::Config, ShipCtlError> {
    let kubeconfig = match path {
        Some(p) => Kubeconfig::read_from(p)
            .map_err(|e| ShipCtlError::Kubeconfig(format!("{}: {e}", p.display())))?,
        None => Kubeconfig::read().map_err(|e| ShipCtlError::Kubeconfig(e.to_string()))?,
    };
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| ShipCtlError::Kubeconfig(e.to_string()))
}

async fn client(t: &ShipTarget) -> Result<(kube::Client, String), ShipCtlError> {
    let (config, ns) = load_config(t).await?;
    let client =
        kube::Client::try_from(config).map_err(|e| ShipCtlError::Kubeconfig(e.to_string()))?;
    Ok((client, ns))
}

fn ships(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ship_resource())
}

/// Merge-patches `spec.runStrategy`.
pub async fn set_run_strategy(
    client: &kube::Client,
    ns: &str,
    name: &str,
    strategy: &str,
) -> Result<(), ShipCtlError> {
    let patch = json!({"spec": {"runStrategy": strategy}});
    ships(client, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Merge-patches the restart annotation with `at` (RFC 3339).
pub async fn request_restart(
    client: &kube::Client,
    ns: &str,
    name: &str,
    at: jiff::Timestamp,
) -> Result<(), ShipCtlError> {
    let patch = json!({"metadata": {"annotations": {RESTART_ANNOTATION: at.to_string()}}});
    ships(client, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Sets (`"true"`) or removes the pause annotation; the node agent pauses or resumes the VM.
pub async fn set_paused(
    client: &kube::Client,
    ns: &str,
    name: &str,
    paused: bool,
) -> Result<(), ShipCtlError> {
    let value = if paused { json!("true") } else { Value::Null };
    let patch = json!({"metadata": {"annotations": {PAUSE_ANNOTATION: value}}});
    ships(client, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The query of a `ships/log` request.
pub fn log_query(follow: bool, tail: Option<u64>, limit_bytes: Option<u64>) -> String {
    let mut q = vec![format!("follow={follow}")];
    if let Some(n) = tail {
        q.push(format!("tailLines={n}"));
    }
    if let Some(n) = limit_bytes {
        q.push(format!("limitBytes={n}"));
    }
    q.join("&")
}

/// Streams `ships/NAME/log?QUERY` to stdout.
pub async fn logs(
    client: &kube::Client,
    ns: &str,
    name: &str,
    query: &str,
) -> Result<(), ShipCtlError> {
    use futures::AsyncReadExt as _;
    let req = Request::get(format!("/api/v1/namespaces/{ns}/ships/{name}/log?{query}"))
        .body(Vec::new())
        .map_err(|e| ShipCtlError::Client(e.to_string()))?;
    let mut body = client.request_stream(req).await?;
    let mut out = tokio::io::stdout();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = body.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await?;
        out.flush().await?;
    }
    Ok(())
}

/// Where the apiserver of a kubeconfig is, split for a raw connection.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
    /// Path prefix of the server URL (empty or `/prefix`).
    base: String,
}

fn endpoint(uri: &http::Uri) -> Result<Endpoint, ShipCtlError> {
    if uri.scheme_str() != Some("https") {
        return Err(ShipCtlError::Kubeconfig(format!(
            "server {uri}: consoles and image uploads need an https:// server"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| ShipCtlError::Kubeconfig(format!("server {uri} has no host")))?;
    Ok(Endpoint {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: uri.port_u16().unwrap_or(443),
        base: uri.path().trim_end_matches('/').to_string(),
    })
}

fn decode_b64(what: &str, data: &str) -> Result<Vec<u8>, ShipCtlError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ShipCtlError::Kubeconfig(format!("{what}: invalid base64: {e}")))
}

fn read_file(what: &str, path: &str) -> Result<Vec<u8>, ShipCtlError> {
    std::fs::read(path).map_err(|e| ShipCtlError::Kubeconfig(format!("{what} {path}: {e}")))
}

/// The kubeconfig user's inline-or-file value `key` (`client-certificate`, …).
fn user_material(auth: &Value, key: &str) -> Result<Option<Vec<u8>>, ShipCtlError> {
    if let Some(data) = auth.get(format!("{key}-data")).and_then(Value::as_str) {
        return decode_b64(key, data).map(Some);
    }
    match auth.get(key).and_then(Value::as_str) {
        Some(path) => read_file(key, path).map(Some),
        None => Ok(None),
    }
}

/// Client TLS and bearer token from a kube client configuration.
fn client_tls(
    config: &kube::Config,
) -> Result<(Arc<rustls::ClientConfig>, Option<String>), ShipCtlError> {
    if config.accept_invalid_certs {
        return Err(ShipCtlError::Kubeconfig(
            "insecure-skip-tls-verify is not supported by tugboat console".into(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for der in config.root_cert.iter().flatten() {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| ShipCtlError::Kubeconfig(format!("certificate-authority: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ShipCtlError::Kubeconfig(
            "the cluster has no certificate-authority(-data) to verify the server with".into(),
        ));
    }
    // kube keeps the client key as a secret type; its serialized form is the kubeconfig's
    // own fields, which saves a dependency on the secret crate.
    let auth = serde_json::to_value(&config.auth_info)
        .map_err(|e| ShipCtlError::Kubeconfig(format!("user: {e}")))?;
    let cert = user_material(&auth, "client-certificate")?;
    let key = user_material(&auth, "client-key")?;
    let token = match (
        auth.get("token").and_then(Value::as_str),
        auth.get("tokenFile").and_then(Value::as_str),
    ) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(path)) => Some(
            String::from_utf8_lossy(&read_file("tokenFile", path)?)
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ShipCtlError::Client(e.to_string()))?
        .with_root_certificates(roots);
    let mut tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            let certs = rustls_pemfile::certs(&mut &cert[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ShipCtlError::Kubeconfig(format!("client-certificate: {e}")))?;
            let key = rustls_pemfile::private_key(&mut &key[..])
                .map_err(|e| ShipCtlError::Kubeconfig(format!("client-key: {e}")))?
                .ok_or_else(|| ShipCtlError::Kubeconfig("client-key: no private key".into()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ShipCtlError::Kubeconfig(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    // The upgrade is HTTP/1.1 only.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(tls), token))
}

/// A raw HTTP/1.1 connection to the kubeconfig's apiserver, for what kube's client does not
/// do: upgrades (consoles) and streamed request bodies (image uploads).
struct ApiConnection<B> {
    sender: hyper::client::conn::http1::SendRequest<B>,
    server: String,
    authority: String,
    base: String,
    token: Option<String>,
}

impl<B> ApiConnection<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async fn open(config: &kube::Config) -> Result<Self, ShipCtlError> {
        let server = config.cluster_url.to_string();
        let connect_err = |message: String| ShipCtlError::Connect {
            server: server.clone(),
            message,
        };
        let ep = endpoint(&config.cluster_url)?;
        let (tls, token) = client_tls(config)?;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
        )
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let sni = config.tls_server_name.clone().unwrap_or(ep.host.clone());
        let server_name = rustls::pki_types::ServerName::try_from(sni.clone())
            .map_err(|_| connect_err(format!("{sni:?} is not a TLS server name")))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| connect_err(format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let authority = match config.cluster_url.authority() {
            Some(a) => a.to_string(),
            None => ep.host.clone(),
        };
        Ok(ApiConnection {
            sender,
            server,
            authority,
            base: ep.base,
            token,
        })
    }

    /// A request to `path` (below the server URL's path) with host, agent and credentials.
    fn request(&self, method: http::Method, path: &str) -> http::request::Builder {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::HOST, self.authority.clone())
            .header(
                header::USER_AGENT,
                concat!("tugboat/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        req
    }

    async fn send(
        &mut self,
        req: Request<B>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ShipCtlError> {
        self.sender
            .send_request(req)
            .await
            .map_err(|e| ShipCtlError::Connect {
                server: self.server.clone(),
                message: e.to_string(),
            })
    }
}

async fn error_of(resp: hyper::Response<hyper::body::Incoming>) -> ShipCtlError {
    let code = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    server_error(code, &body)
}

/// Opens the console of Ship `ns/name`: the upgraded connection through the apiserver.
pub async fn open_console(
    config: &kube::Config,
    ns: &str,
    name: &str,
) -> Result<TokioIo<hyper::upgrade::Upgraded>, ShipCtlError> {
    let mut conn = ApiConnection::<Empty<Bytes>>::open(config).await?;
    let req = conn
        .request(
            http::Method::POST,
            &format!("/api/v1/namespaces/{ns}/ships/{name}/console"),
        )
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, CONSOLE_PROTOCOL)
        .body(Empty::<Bytes>::new())
        .map_err(|e| ShipCtlError::Client(e.to_string()))?;
    let resp = conn.send(req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(error_of(resp).await);
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| ShipCtlError::Connect {
            server: conn.server.clone(),
            message: format!("upgrade: {e}"),
        })?;
    Ok(TokioIo::new(upgraded))
}

/// Streams the image archive at `archive` into node `node`'s image cache through the
/// apiserver (`POST nodes/NODE/images`), counting bytes sent on `task`; returns the
/// references the node loaded.
pub async fn upload_images(
    config: &kube::Config,
    node: &str,
    archive: &std::path::Path,
    task: tugboat_qemu::image::Task,
) -> Result<Vec<String>, ShipCtlError> {
    use futures::StreamExt as _;
    let read_err = |e: std::io::Error| ShipCtlError::Client(format!("{}: {e}", archive.display()));
    let file = tokio::fs::File::open(archive).await.map_err(read_err)?;
    let len = file.metadata().await.map_err(read_err)?.len();
    task.set_total(len);
    let counted = task.clone();
    let frames = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(move |chunk| {
        chunk.map(|bytes| {
            counted.inc(bytes.len() as u64);
            hyper::body::Frame::data(bytes)
        })
    });
    let body = http_body_util::StreamBody::new(frames);
    let mut conn = ApiConnection::open(config).await?;
    let req = conn
        .request(http::Method::POST, &format!("/api/v1/nodes/{node}/images"))
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(|e| ShipCtlError::Client(e.to_string()))?;
    let resp = conn.send(req).await?;
    if resp.status() != StatusCode::OK {
        return Err(error_of(resp).await);
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ShipCtlError::Client(e.to_string()))?;
    let answer: Value = serde_json::from_slice(&body)
        .map_err(|e| ShipCtlError::Client(format!("the apiserver's answer: {e}")))?;
    task.finish("");
    Ok(answer
        .get("images")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

/// Checks that Node `name` exists and that this user may upload images to it.
pub async fn check_node(client: &kube::Client, name: &str) -> Result<(), ShipCtlError> {
    let nodes: Api<DynamicObject> = Api::all_with(client.clone(), &node_resource());
    nodes.get(name).await?;
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "verb": "create", "resource": "nodes", "subresource": "images", "name": name,
        }},
    });
    let req = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        .header(header::CONTENT_TYPE, "application/json")
        .body(review.to_string().into_bytes())
        .map_err(|e| ShipCtlError::Client(e.to_string()))?;
    let answer: Value = client.request(req).await?;
    if answer.pointer("/status/allowed") == Some(&Value::Bool(true)) {
        Ok(())
    } else {
        Err(ShipCtlError::Server {
            code: 403,
            reason: "Forbidden".into(),
            message: format!(
                "you may not upload images to node {name} (RBAC: create nodes/images)"
            ),
        })
    }
}

/// Names of every Node of the cluster.
pub async fn node_names(client: &kube::Client) -> Result<Vec<String>, ShipCtlError> {
    let nodes: Api<DynamicObject> = Api::all_with(client.clone(), &node_resource());
    let list = nodes.list(&Default::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

/// A refusal as kubectl reports it, from a `Status` body when there is one.
fn server_error(code: StatusCode, body: &[u8]) -> ShipCtlError {
    let status: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        status
            .as_ref()
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    ShipCtlError::Server {
        code: code.as_u16(),
        reason: field("reason")
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| code.canonical_reason().unwrap_or("Unknown").to_string()),
        message: field("message")
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string()),
    }
}

/// What a chunk of terminal input means: the bytes to send, and whether the escape byte
/// (Ctrl-]) came, which detaches (bytes after it are dropped).
pub fn scan_escape(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|b| *b == ESCAPE_BYTE) {
        Some(i) => (&input[..i], true),
        None => (input, false),
    }
}

/// Puts a terminal in raw mode and restores its settings when dropped (also on an error or a
/// panic unwinding through the console).
struct RawMode {
    fd: libc::c_int,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: libc::c_int) -> std::io::Result<Self> {
        // SAFETY: termios is plain data for which all-zero bytes are a valid value; tcgetattr
        // overwrites it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid, writable termios; `fd` is only read.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios obtained from tcgetattr.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios; tcsetattr only reads it.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: `saved` is the termios tcgetattr returned for this fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Reads stdin on a thread of its own (a blocked read must not keep the runtime from shutting
/// down) and hands chunks over; `None` marks the end of the input.
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Attaches the terminal (or piped stdin/stdout) to Ship `ns/name`'s console.
pub async fn console(
    config: &kube::Config,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<(), ShipCtlError> {
    let io = open_console(config, ns, name).await?;
    let tty = stdin_is_tty();
    let newline = if tty { "\r\n" } else { "\n" };
    eprint!("Connected to ship {ns}/{name} (escape character is ^]){newline}");
    let _raw = if tty {
        Some(RawMode::enter(libc::STDIN_FILENO)?)
    } else {
        None
    };
    let (mut from_vm, mut to_vm) = tokio::io::split(io);
    let mut input = stdin_reader();
    let mut input_open = true;
    let mut out = tokio::io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    // Set once piped input has ended.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            chunk = input.recv(), if input_open => match chunk.flatten() {
                Some(bytes) => {
                    let (send, detach) = if tty { scan_escape(&bytes) } else { (&bytes[..], false) };
                    to_vm.write_all(send).await?;
                    to_vm.flush().await?;
                    if detach {
                        eprint!("\r\n[detached]\r\n");
                        return Ok(());
                    }
                }
                None => {
                    input_open = false;
                    if tty {
                        return Ok(());
                    }
                    // Piped input is over: what the VM answers still comes, for a while.
                    deadline = Some(tokio::time::Instant::now() + timeout);
                }
            },
            n = from_vm.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    if tty {
                        eprint!("\r\n[connection closed]\r\n");
                    }
                    return Ok(());
                }
                out.write_all(&buf[..n]).await?;
                out.flush().await?;
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_detaches_and_drops_the_rest() {
        assert_eq!(scan_escape(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(scan_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(scan_escape(b"\x1d"), (&b""[..], true));
        assert_eq!(scan_escape(b""), (&b""[..], false));
    }

    #[test]
    fn log_queries() {
        assert_eq!(log_query(false, None, None), "follow=false");
        assert_eq!(
            log_query(true, Some(10), Some(4096)),
            "follow=true&tailLines=10&limitBytes=4096"
        );
    }

    #[test]
    fn endpoints_of_server_urls() {
        let ep = |s: &str| endpoint(&s.parse().expect("uri"));
        assert_eq!(
            ep("https://127.0.0.1:6443").expect("ep"),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 6443,
                base: String::new()
            }
        );
        assert_eq!(
            ep("https://[::1]/k8s/").expect("ep"),
            Endpoint {
                host: "::1".into(),
                port: 443,
                base: "/k8s".into()
            }
        );
        assert!(ep("http://127.0.0.1:8080").is_err());
    }

    #[test]
    fn server_errors_read_status_bodies() {
        let body = br#"{"kind":"Status","reason":"Forbidden","message":"nope","code":403}"#;
        let e = server_error(StatusCode::FORBIDDEN, body);
        assert_eq!(e.to_string(), "Error from server (Forbidden): nope");
        let e = server_error(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(
            e.to_string(),
            "Error from server (Bad Gateway): upstream down"
        );
    }
}
