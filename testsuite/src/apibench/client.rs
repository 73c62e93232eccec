//! A small HTTP/2 client for the apiserver: TLS with the cluster CA and the client certificate
//! from a kubeconfig, a handful of multiplexed connections, whole-body requests and streamed
//! watch bodies.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Per-stream and per-connection receive windows: a 10,000-object list is several MB, and
/// the 64 KiB HTTP/2 default would make the client's window updates the bottleneck.
const STREAM_WINDOW: u32 = 16 << 20;
const CONN_WINDOW: u32 = 64 << 20;

/// Everything needed to open connections to one apiserver.
#[derive(Clone)]
pub struct ApiTarget {
    /// `https://host:port` (no trailing slash).
    pub base: String,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl ApiTarget {
    /// Reads the current context's cluster and user of a kubeconfig whose credentials are
    /// inline (`certificate-authority-data`, `client-certificate-data`, `client-key-data`) or
    /// file paths (relative to the kubeconfig's directory).
    pub fn from_kubeconfig(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let current = doc["current-context"].as_str();
        let context = named(&doc["contexts"], current)
            .map(|c| c["context"].clone())
            .ok_or_else(|| anyhow!("kubeconfig has no context"))?;
        let cluster = named(&doc["clusters"], context["cluster"].as_str())
            .map(|c| c["cluster"].clone())
            .ok_or_else(|| anyhow!("kubeconfig has no cluster"))?;
        let user = named(&doc["users"], context["user"].as_str())
            .map(|c| c["user"].clone())
            .ok_or_else(|| anyhow!("kubeconfig has no user"))?;
        let server = cluster["server"]
            .as_str()
            .ok_or_else(|| anyhow!("kubeconfig cluster has no server"))?
            .trim_end_matches('/')
            .to_string();
        let ca = data_or_file(&cluster, "certificate-authority", dir)?;
        let cert = data_or_file(&user, "client-certificate", dir)?;
        let key = data_or_file(&user, "client-key", dir)?;
        Self::new(&server, &ca, &cert, &key)
    }

    /// A target from PEM material.
    pub fn new(server: &str, ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let hostport = server
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("server {server} is not https://"))?;
        let addr: SocketAddr = hostport
            .parse()
            .or_else(|_| {
                use std::net::ToSocketAddrs;
                hostport
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or(())
            })
            .map_err(|_| anyhow!("cannot resolve {hostport}"))?;
        let host = match hostport.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => hostport,
        };
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| anyhow!("server name {host}: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
            roots.add(c.context("CA certificate")?)?;
        }
        let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<std::result::Result<_, _>>()
            .context("client certificate")?;
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .context("client key")?
            .ok_or_else(|| anyhow!("no private key in the kubeconfig"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ApiTarget {
            base: server.trim_end_matches('/').to_string(),
            addr,
            server_name,
            tls: TlsConnector::from(Arc::new(cfg)),
        })
    }

    /// Opens one HTTP/2 connection.
    pub async fn connect(&self) -> Result<H2> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(self.addr))
            .await
            .map_err(|_| anyhow!("connecting to {}: timed out", self.addr))?
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| anyhow!("TLS handshake with {}: timed out", self.addr))?
        .with_context(|| format!("TLS handshake with {}", self.addr))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("{} did not negotiate h2 (ALPN)", self.addr);
        }
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(1 << 20)
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .handshake(TokioIo::new(tls))
            .await
            .context("HTTP/2 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2 {
            send,
            base: self.base.clone(),
        })
    }

    /// Opens `n` connections.
    pub async fn connect_many(&self, n: usize) -> Result<Vec<H2>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            out.push(self.connect().await?);
        }
        Ok(out)
    }
}

fn named<'a>(list: &'a serde_yaml::Value, name: Option<&str>) -> Option<&'a serde_yaml::Value> {
    let items = list.as_sequence()?;
    match name {
        Some(n) => items.iter().find(|i| i["name"].as_str() == Some(n)),
        None => items.first(),
    }
}

fn data_or_file(v: &serde_yaml::Value, field: &str, dir: &Path) -> Result<Vec<u8>> {
    if let Some(data) = v[format!("{field}-data").as_str()].as_str() {
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .with_context(|| format!("decoding {field}-data"));
    }
    if let Some(file) = v[field].as_str() {
        let p = dir.join(file);
        return std::fs::read(&p).with_context(|| format!("reading {}", p.display()));
    }
    bail!("kubeconfig lacks {field}(-data)")
}

/// One multiplexed HTTP/2 connection (cheap to clone: clones share the connection).
#[derive(Clone)]
pub struct H2 {
    send: SendRequest<Full<Bytes>>,
    base: String,
}

/// A whole response.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as (lossy) text, shortened, for error messages.
    pub fn snippet(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        let s = s.trim();
        if s.len() > 300 {
            let mut end = 300;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &s[..end])
        } else {
            s.to_string()
        }
    }
}

impl H2 {
    /// Sends a request and returns the response head with its streaming body.
    pub async fn start(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<http::Response<Incoming>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.unwrap_or_default()))?;
        let mut send = self.send.clone();
        send.ready().await.context("connection closed")?;
        Ok(send.send_request(req).await?)
    }

    /// Sends a request and reads the whole body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Reply> {
        let resp = self.start(method, path, headers, body).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    }

    /// GET with `Accept: application/json`.
    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.call(Method::GET, path, &[("accept", "application/json")], None)
            .await
    }
}
