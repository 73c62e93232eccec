//! `ships/{name}/log` and `ships/{name}/console`: proxied to the node agent of the Ship's node,
//! as kube-apiserver proxies `pods/log` and `pods/attach` to the kubelet. `nodes/{name}/images`
//! (POST an OCI image layout tar) streams an image archive into that node's cache, for
//! air-gapped sites that load images into the whole cluster.
//!
//! The apiserver reads the Ship (`spec.nodeName`, `metadata.uid`) and its Node (`InternalIP`
//! address, `status.daemonEndpoints.kubeletEndpoint.Port`), dials the agent with TLS, verifies
//! the agent's serving certificate against the cluster CA for the node's *name* (every node
//! certificate carries it as a SAN, so one node cannot answer for another), and presents its
//! own client certificate (CN [`PROXY_USER`], issued in memory at start from the CA key).
//! Logs stream through; a console is an HTTP/1.1 upgrade on both sides with the bytes copied
//! both ways.

use crate::error::ApiError;
use crate::registry::ResourceDef;
use crate::storage;

use super::request::{Query, ResourceRequest};
use super::ApiServer;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// User (certificate CN) the apiserver presents to node agents.
pub const PROXY_USER: &str = "system:tugboat-apiserver";
/// The `Upgrade` protocol of a console attach (apiserver and agent).
pub const CONSOLE_PROTOCOL: &str = "tugboat-console";
/// The console client's escape byte (Ctrl-]); documented here for both ends.
pub const ESCAPE_BYTE: u8 = 0x1d;

/// Lifetime of the proxy client certificate (re-issued at every start, kept in memory).
const PROXY_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the TCP connect and the TLS handshake with an agent may take, each.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of an agent's error body that are read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Most bytes of an agent's answer to an image upload (the list of references loaded).
const UPLOAD_ANSWER_LIMIT: usize = 1024 * 1024;

/// Why an apiserver without the CA key cannot proxy.
const NO_CA_KEY: &str = "this apiserver holds no cluster CA key, so it has no client certificate \
                         for node agents; ship logs and consoles are unavailable through it";

/// How the apiserver reaches node agents: its TLS client configuration, or why it has none.
pub struct AgentDialer {
    tls: Result<Arc<rustls::ClientConfig>, String>,
}

impl AgentDialer {
    /// Issues the proxy client certificate from the cluster CA (`ca_key_pem`); without a CA key
    /// (an apiserver on foreign etcd without the key) every proxied request answers 503.
    pub fn new(ca_pem: &[u8], ca_key_pem: Option<&str>) -> Self {
        let tls = match ca_key_pem {
            None => Err(NO_CA_KEY.to_string()),
            Some(key) => client_tls(ca_pem, key).map_err(|e| {
                format!("the apiserver's client certificate for node agents is unusable: {e}")
            }),
        };
        if let Err(e) = &tls {
            tracing::warn!(error = %e, "ship logs and consoles disabled");
        }
        AgentDialer { tls }
    }

    async fn dial(&self, node: &str, addr: SocketAddr) -> Result<TlsStream<TcpStream>, ApiError> {
        let tls = self.tls.clone().map_err(ApiError::Unavailable)?;
        let tcp = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(bad_gateway(format!(
                    "dialing the agent of node {node} at {addr}: {e}"
                )))
            }
            Err(_) => {
                return Err(bad_gateway(format!(
                    "dialing the agent of node {node} at {addr}: timed out after {DIAL_TIMEOUT:?}"
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        let server_name = rustls::pki_types::ServerName::try_from(node.to_string())
            .map_err(|_| bad_gateway(format!("node name {node:?} is not a TLS server name")))?;
        match tokio::time::timeout(
            DIAL_TIMEOUT,
            TlsConnector::from(tls).connect(server_name, tcp),
        )
        .await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(bad_gateway(format!(
                "TLS handshake with the agent of node {node} at {addr}: {e}"
            ))),
            Err(_) => Err(bad_gateway(format!(
                "TLS handshake with the agent of node {node} at {addr}: timed out"
            ))),
        }
    }
}

/// Client TLS towards agents: the cluster CA as the only root, a fresh proxy certificate,
/// HTTP/1.1 only (upgrades need it).
fn client_tls(ca_pem: &[u8], ca_key_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let issued = tugboat_pki::issue_client_cert_from_pem(
        ca_pem,
        ca_key_pem,
        PROXY_USER,
        &[],
        PROXY_CERT_LIFETIME,
    )
    .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots
            .add(c.map_err(|e| format!("CA certificate: {e}"))?)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    let certs = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("proxy certificate: {e}"))?;
    let key = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())
        .map_err(|e| format!("proxy key: {e}"))?
        .ok_or("proxy key: no private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn bad_gateway(message: String) -> ApiError {
    ApiError::Agent { code: 502, message }
}

fn unavailable(message: String) -> ApiError {
    ApiError::Agent { code: 503, message }
}

/// Whether this request is served by proxying to a node agent.
pub fn is_proxied(r: &ResourceRequest) -> bool {
    r.def.group.is_empty()
        && match r.def.kind {
            "Ship" => matches!(r.subresource.as_str(), "log" | "console"),
            "Node" => r.subresource == "images",
            _ => false,
        }
}

/// Where a Ship's VM is served.
struct AgentTarget {
    ship: String,
    node: String,
    addr: SocketAddr,
    uid: String,
}

/// Serves `ships/{name}/log`, `ships/{name}/console` and `nodes/{name}/images` (authorized
/// already).
pub async fn handle(
    api: &ApiServer,
    r: ResourceRequest,
    method: &Method,
    headers: &HeaderMap,
    q: &Query,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = r
        .name
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest("a name is required".into()))?;
    if r.def.kind == "Node" {
        let target = locate_node(api, &r.def, name, None).await?;
        return load_images(api, &target, headers, body).await;
    }
    match r.subresource.as_str() {
        "log" => {
            if method != Method::GET {
                return Err(ApiError::MethodNotAllowed(
                    "ships/log only supports GET".into(),
                ));
            }
            let path = log_path(q)?;
            let target = locate(api, &r.def, r.namespace.as_deref(), name).await?;
            log(api, &target, &path).await
        }
        "console" => {
            let Some(on_upgrade) = on_upgrade.filter(|_| wants_console_upgrade(headers)) else {
                return Err(ApiError::BadRequest(format!(
                    "ships/console needs an HTTP/1.1 upgrade: send Connection: Upgrade and \
                     Upgrade: {CONSOLE_PROTOCOL}"
                )));
            };
            let target = locate(api, &r.def, r.namespace.as_deref(), name).await?;
            console(api, &target, on_upgrade).await
        }
        _ => Err(ApiError::NoRoute),
    }
}

/// `Connection` lists `upgrade` and `Upgrade` names the console protocol.
pub fn wants_console_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(CONSOLE_PROTOCOL));
    connection_upgrade && protocol
}

/// The agent path and query of a log request, from `follow`, `tailLines` and `limitBytes`.
fn log_path(q: &Query) -> Result<String, ApiError> {
    let mut params = vec![format!("follow={}", q.flag("follow"))];
    if let Some(n) = q.int("tailLines")? {
        if n < 0 {
            return Err(ApiError::BadRequest(format!(
                "tailLines must be greater than or equal to 0, got {n}"
            )));
        }
        params.push(format!("tailLines={n}"));
    }
    if let Some(n) = q.int("limitBytes")? {
        if n < 1 {
            return Err(ApiError::BadRequest(format!(
                "limitBytes must be greater than 0, got {n}"
            )));
        }
        params.push(format!("limitBytes={n}"));
    }
    Ok(params.join("&"))
}

/// Finds the agent serving the Ship `name`: its node's InternalIP and advertised port.
async fn locate(
    api: &ApiServer,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
) -> Result<AgentTarget, ApiError> {
    let ship = api
        .storage
        .get(def, ns, name)
        .await?
        .ok_or_else(|| storage::not_found(def, name))?;
    let node = ship
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "ship {name} is not scheduled: it has no spec.nodeName yet"
            ))
        })?
        .to_string();
    let uid = ship
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .filter(|u| valid_uid(u))
        .ok_or_else(|| ApiError::Internal(format!("ship {name} has no usable metadata.uid")))?
        .to_string();
    let nodes = api
        .registry
        .get("", "v1", "nodes")
        .ok_or(ApiError::NoRoute)?;
    let mut target = locate_node(api, nodes, &node, Some(name)).await?;
    target.ship = name.to_string();
    target.uid = uid;
    Ok(target)
}

/// Finds the agent of node `node` (for the Ship `ship`, when a Ship's request got here).
async fn locate_node(
    api: &ApiServer,
    nodes: &ResourceDef,
    node: &str,
    ship: Option<&str>,
) -> Result<AgentTarget, ApiError> {
    let node_obj = match (api.storage.get(nodes, None, node).await?, ship) {
        (Some(n), _) => n,
        (None, Some(ship)) => {
            return Err(unavailable(format!(
                "node {node} of ship {ship} does not exist"
            )))
        }
        (None, None) => return Err(storage::not_found(nodes, node)),
    };
    let ip: IpAddr = node_obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|addrs| {
            addrs
                .iter()
                .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        })
        .and_then(|a| a.get("address").and_then(Value::as_str))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| unavailable(format!("node {node} reports no usable InternalIP address")))?;
    let port = node_obj
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            unavailable(format!(
                "node {node} advertises no agent endpoint \
                 (status.daemonEndpoints.kubeletEndpoint.Port): its agent serves no logs, \
                 consoles or image uploads"
            ))
        })?;
    Ok(AgentTarget {
        ship: String::new(),
        node: node.to_string(),
        addr: SocketAddr::new(ip, port),
        uid: String::new(),
    })
}

/// UIDs go into the agent's path: letters, digits, `-`, `_` and `.` only.
fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 128
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && uid != "."
        && uid != ".."
}

/// Sends one request over a fresh connection to the agent; the connection is driven (with
/// upgrades) by a task of its own, which ends with the response body or the upgraded stream.
async fn send<B>(
    api: &ApiServer,
    t: &AgentTarget,
    req: Request<B>,
) -> Result<hyper::Response<hyper::body::Incoming>, ApiError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = api.agents.dial(&t.node, t.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway(format!("the agent of node {}: {e}", t.node)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "agent connection ended");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| bad_gateway(format!("the agent of node {}: {e}", t.node)))
}

fn agent_request(t: &AgentTarget, path: &str) -> http::request::Builder {
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::HOST, t.addr.to_string())
        .header(header::USER_AGENT, "tugboat-apiserver")
}

async fn log(api: &ApiServer, t: &AgentTarget, query: &str) -> Result<Response, ApiError> {
    let req = agent_request(t, &format!("/vms/{}/log?{query}", t.uid))
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(format!("building the agent request: {e}")))?;
    let resp = send(api, t, req).await?;
    if resp.status() != StatusCode::OK {
        return Err(agent_error(t, resp).await);
    }
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Ok(out)
}

async fn console(
    api: &ApiServer,
    t: &AgentTarget,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Result<Response, ApiError> {
    let req = agent_request(t, &format!("/vms/{}/console", t.uid))
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, CONSOLE_PROTOCOL)
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(format!("building the agent request: {e}")))?;
    let resp = send(api, t, req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(agent_error(t, resp).await);
    }
    let upstream = hyper::upgrade::on(resp).await.map_err(|e| {
        bad_gateway(format!(
            "upgrading the agent connection of node {}: {e}",
            t.node
        ))
    })?;
    let (ship, node) = (t.ship.clone(), t.node.clone());
    tokio::spawn(async move {
        let client = match on_upgrade.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%ship, error = %e, "console client upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                tracing::debug!(%ship, %node, up, down, "console detached")
            }
            Err(e) => tracing::debug!(%ship, %node, error = %e, "console ended"),
        }
    });
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    out.headers_mut().insert(
        header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    out.headers_mut().insert(
        header::UPGRADE,
        http::HeaderValue::from_static(CONSOLE_PROTOCOL),
    );
    Ok(out)
}

/// Streams an image archive (the request body) to the node's agent, which loads it into the
/// node's image cache; answers the agent's `{"images": [...]}` with the node's name added.
async fn load_images(
    api: &ApiServer,
    t: &AgentTarget,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut req = agent_request(t, "/images/load")
        .method(Method::POST)
        .header(header::CONTENT_TYPE, "application/x-tar");
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        req = req.header(header::CONTENT_LENGTH, len.clone());
    }
    let req = req
        .body(body)
        .map_err(|e| ApiError::Internal(format!("building the agent request: {e}")))?;
    let resp = send(api, t, req).await?;
    if resp.status() != StatusCode::OK {
        return Err(agent_error(t, resp).await);
    }
    let answer = http_body_util::Limited::new(resp.into_body(), UPLOAD_ANSWER_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| bad_gateway(format!("the agent of node {}: {e}", t.node)))?;
    let images: Value = serde_json::from_slice::<Value>(&answer)
        .ok()
        .and_then(|v| v.get("images").cloned())
        .ok_or_else(|| {
            bad_gateway(format!(
                "the agent of node {} answered the upload without an image list",
                t.node
            ))
        })?;
    let out = serde_json::json!({"node": t.node, "images": images});
    Ok(super::body::json_response(StatusCode::OK, &out, &[]))
}

/// An agent's non-success answer as an API error with the agent's code and message.
async fn agent_error(t: &AgentTarget, resp: hyper::Response<hyper::body::Incoming>) -> ApiError {
    let code = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), ERROR_BODY_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let detail = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    let message = if t.ship.is_empty() {
        format!("node {}: {detail}", t.node)
    } else {
        format!("ship {} on node {}: {detail}", t.ship, t.node)
    };
    match code {
        400 | 404 | 409 | 501 | 503 | 504 => ApiError::Agent { code, message },
        // The apiserver itself was refused (403) or the agent failed: the client cannot fix
        // either, so both are the gateway's failure.
        _ => bad_gateway(format!("{message} (agent answered {code})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_headers_are_matched_loosely() {
        let mut h = HeaderMap::new();
        assert!(!wants_console_upgrade(&h));
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(!wants_console_upgrade(&h));
        h.insert(header::UPGRADE, "Tugboat-Console".parse().unwrap());
        assert!(wants_console_upgrade(&h));
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!wants_console_upgrade(&h));
    }

    #[test]
    fn log_queries_are_checked() {
        let q = Query::parse(Some("follow=true&tailLines=10&limitBytes=5"));
        assert_eq!(
            log_path(&q).unwrap(),
            "follow=true&tailLines=10&limitBytes=5"
        );
        assert_eq!(log_path(&Query::parse(None)).unwrap(), "follow=false");
        for bad in ["tailLines=-1", "limitBytes=0", "tailLines=x"] {
            assert!(
                matches!(
                    log_path(&Query::parse(Some(bad))),
                    Err(ApiError::BadRequest(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn uids_are_path_safe() {
        assert!(valid_uid("5f0c6a6e-1b9b-4a8e-9d55-0c9e2b1f7a10"));
        for bad in ["", ".", "..", "a/b", "a b", "a%2f"] {
            assert!(!valid_uid(bad), "{bad}");
        }
    }

    #[test]
    fn a_dialer_without_ca_key_explains_itself() {
        let d = AgentDialer::new(b"", None);
        let e = d.tls.clone().err().unwrap_or_default();
        assert!(e.contains("no cluster CA key"), "{e}");
    }
}
