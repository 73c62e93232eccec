//! Assembles an apiserver: store client, watch caches, authentication, RBAC, bootstrap objects,
//! and the HTTPS listener.

use crate::auth::{self, audit::AuditLog, Authenticator, Authorizer, JwtKey};
use crate::http::{serve, ApiServer, ServeConfig};
use crate::kv::{EtcdTls, Kv};
use crate::storage::cache::IndexFn;
use crate::storage::Storage;
use anyhow::Context;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the apiserver finds its data.
pub enum Backend {
    /// The local member's etcd services, in-process.
    InProcess(tonic::service::Routes),
    /// Any etcd endpoints over gRPC.
    Endpoints(Vec<String>, EtcdTls),
}

/// Settings of one apiserver.
pub struct ApiConfig {
    /// Address to listen on (`--api-listen`).
    pub listen: SocketAddr,
    /// The data.
    pub backend: Backend,
    /// PEM of the cluster CA certificate.
    pub ca_pem: Vec<u8>,
    /// PEM of the CA key (signs ServiceAccount JWTs); `None` verifies only.
    pub ca_key_pem: Option<String>,
    /// PEM of the server certificate and key.
    pub server_cert_pem: Vec<u8>,
    /// PEM of the server key.
    pub server_key_pem: Vec<u8>,
    /// Allow requests without credentials (as `system:anonymous`).
    pub anonymous: bool,
    /// JSON-lines audit log.
    pub audit_log: Option<PathBuf>,
    /// How much history the apiserver keeps before compacting etcd (0 = never compacts).
    pub compaction_interval: Duration,
}

/// A running apiserver.
pub struct RunningApi {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Shared state.
    pub server: Arc<ApiServer>,
}

fn first_cert_der(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut rd = pem;
    let cert = rustls_pemfile::certs(&mut rd)
        .next()
        .context("no certificate in the CA file")??;
    Ok(cert.as_ref().to_vec())
}

/// Starts the apiserver; it serves until `shutdown` resolves.
pub async fn start(
    cfg: ApiConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningApi> {
    let kv = match cfg.backend {
        Backend::InProcess(routes) => Kv::in_process(routes),
        Backend::Endpoints(eps, tls) => Kv::connect(&eps, &tls)?,
    };
    let registry = crate::kinds::registry();
    let mut indexes: Vec<(&'static str, &'static str, IndexFn)> =
        vec![("core/secrets", auth::SA_TOKEN_INDEX, auth::sa_token_index)];
    for def in registry.all() {
        if !indexes
            .iter()
            .any(|(s, n, _)| *s == def.storage && *n == crate::http::OWNER_INDEX)
        {
            indexes.push((
                def.storage,
                crate::http::OWNER_INDEX,
                crate::http::owner_index,
            ));
        }
    }
    let storage = Storage::new(kv.clone(), &registry, &indexes);
    let ca_der = first_cert_der(&cfg.ca_pem)?;
    let jwt = match &cfg.ca_key_pem {
        Some(k) => JwtKey::from_pem(k).context("loading the CA key for ServiceAccount tokens")?,
        None => JwtKey::verify_only(&ca_der).context("loading the CA certificate")?,
    };
    let source: Arc<dyn auth::ObjectSource> = storage.clone();
    let authn = Authenticator::new(ca_der, jwt, cfg.anonymous, source.clone());
    let authz = Authorizer::new(source);
    let audit = match &cfg.audit_log {
        Some(p) => Some(AuditLog::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => None,
    };
    let openapi = crate::openapi::OpenApi::new(&registry);
    let agents = crate::http::proxy::AgentDialer::new(&cfg.ca_pem, cfg.ca_key_pem.as_deref());
    let server = Arc::new(ApiServer {
        registry,
        storage: storage.clone(),
        openapi,
        authn,
        authz,
        audit,
        agents,
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding --api-listen {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let tls =
        crate::http::server::tls_config(&cfg.ca_pem, &cfg.server_cert_pem, &cfg.server_key_pem)?;
    tokio::spawn(bootstrap(server.clone()));
    if !cfg.compaction_interval.is_zero() {
        tokio::spawn(compactor(kv, cfg.compaction_interval));
    }
    tokio::spawn(serve(
        server.clone(),
        ServeConfig { listener, tls },
        shutdown,
    ));
    tracing::info!(%addr, "apiserver listening");
    Ok(RunningApi { addr, server })
}

/// Creates the objects every cluster has (namespaces, RBAC defaults) when missing, and resumes
/// namespace terminations.
async fn bootstrap(api: Arc<ApiServer>) {
    let mut objects: Vec<Value> = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-public"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tugboat-system"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tugboat-node-lease"}}),
    ];
    objects.extend(auth::bootstrap_policy());
    let mut backoff = Duration::from_millis(100);
    loop {
        match crate::http::ensure_objects(&api, &objects).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "creating bootstrap objects; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    crate::http::resume_terminations(&api).await;
}

/// Compacts etcd history older than one interval, like kube-apiserver (every 5 minutes).
async fn compactor(kv: Kv, every: Duration) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(every).await;
        match kv.current_revision().await {
            Ok(rev) => {
                if let Some(p) = previous {
                    if let Err(e) = kv.compact(p).await {
                        tracing::debug!(error = %e, revision = p, "compaction skipped");
                    }
                }
                previous = Some(rev);
            }
            Err(e) => tracing::debug!(error = %e, "compaction: no revision"),
        }
    }
}
