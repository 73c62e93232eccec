//! The HTTP side of the apiserver: TLS, authentication, authorization, routing, audit.

pub mod body;
mod handlers;
pub mod proxy;
pub mod request;
pub mod server;
pub mod table;
pub mod watch;

pub use handlers::{ensure_objects, owner_index, resume_terminations, OWNER_INDEX};
pub use server::{serve, ServeConfig};

use crate::auth::audit::{AuditEvent, AuditLog};
use crate::auth::{Attributes, Authenticator, Authorizer, UserInfo};
use crate::error::ApiError;
use crate::registry::Registry;
use crate::storage::Storage;
use axum::body::Body;
use axum::response::Response;
use body::{error_response, json_response};
use http::{Request, StatusCode};
use request::{resolve, Query, Target};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The version `/version` reports (kubectl needs a semver `gitVersion`).
pub const KUBE_VERSION: &str = "v1.32.0-tugboat.1";

/// The verified TLS client certificate of a connection (DER), if any.
#[derive(Clone, Debug, Default)]
pub struct ClientCert(pub Option<Vec<u8>>);

/// The peer address of a connection.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

/// Everything a request handler needs.
pub struct ApiServer {
    /// Served kinds.
    pub registry: Registry,
    /// Objects and watch caches.
    pub storage: Arc<Storage>,
    /// OpenAPI documents.
    pub openapi: crate::openapi::OpenApi,
    /// Who is asking.
    pub authn: Authenticator,
    /// May they.
    pub authz: Authorizer,
    /// Where requests are recorded.
    pub audit: Option<AuditLog>,
    /// How `ships/log` and `ships/console` reach node agents.
    pub agents: proxy::AgentDialer,
}

impl ApiServer {
    /// Handles one request end to end.
    pub async fn handle(self: Arc<Self>, req: Request<Body>) -> Response {
        let started = Instant::now();
        let received = jiff::Timestamp::now();
        let (mut parts, body) = req.into_parts();
        // Present only on HTTP/1.1 requests that ask for an upgrade (ships/console).
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let cert = parts
            .extensions
            .get::<ClientCert>()
            .cloned()
            .unwrap_or_default();
        let remote = parts.extensions.get::<RemoteAddr>().copied();
        let path = parts.uri.path().to_string();
        let query = Query::parse(parts.uri.query());
        let mut audit_attrs: Option<Attributes> = None;
        let mut audit_user: Option<UserInfo> = None;
        let result: Result<Response, ApiError> = async {
            let target = resolve(&self.registry, &parts.method, &path, &query);
            let attrs = match &target {
                Ok(Target::Resource(r)) => Attributes {
                    verb: r.verb.to_string(),
                    resource_request: true,
                    api_group: r.def.group.to_string(),
                    resource: r.def.plural.to_string(),
                    subresource: r.subresource.clone(),
                    namespace: r.namespace.clone().unwrap_or_default(),
                    name: r.name.clone().unwrap_or_default(),
                    path: path.clone(),
                },
                Ok(Target::Review { group, resource }) => Attributes {
                    verb: "create".into(),
                    resource_request: true,
                    api_group: group.clone(),
                    resource: resource.clone(),
                    subresource: String::new(),
                    namespace: String::new(),
                    name: String::new(),
                    path: path.clone(),
                },
                _ => Attributes {
                    verb: parts.method.as_str().to_ascii_lowercase(),
                    resource_request: false,
                    api_group: String::new(),
                    resource: String::new(),
                    subresource: String::new(),
                    namespace: String::new(),
                    name: String::new(),
                    path: path.clone(),
                },
            };
            audit_attrs = Some(attrs.clone());
            let user = self.authn.authenticate(&parts.headers, cert.0.as_deref())?;
            audit_user = Some(user.clone());
            let decision = match crate::auth::node::authorize(
                &user,
                &attrs,
                query.get("fieldSelector").unwrap_or(""),
            ) {
                Some(d) => d,
                None => self.authz.authorize(&user, &attrs),
            };
            if !decision.allowed {
                return Err(crate::auth::forbidden(&user, &attrs));
            }
            match target? {
                Target::Resource(r) if proxy::is_proxied(&r) => {
                    proxy::handle(
                        &self,
                        *r,
                        &parts.method,
                        &parts.headers,
                        &query,
                        on_upgrade,
                        body,
                    )
                    .await
                }
                Target::Resource(r) => {
                    handlers::resource(&self, &user, *r, &parts.headers, &query, body).await
                }
                Target::Review { group, resource } => {
                    let b = body::read_body(body).await?;
                    let kind = match (group.as_str(), resource.as_str()) {
                        ("authorization.k8s.io", "selfsubjectaccessreviews") => {
                            crate::auth::review::ReviewKind::SelfSubjectAccessReview
                        }
                        ("authorization.k8s.io", "selfsubjectrulesreviews") => {
                            crate::auth::review::ReviewKind::SelfSubjectRulesReview
                        }
                        ("authentication.k8s.io", "selfsubjectreviews") => {
                            crate::auth::review::ReviewKind::SelfSubjectReview
                        }
                        _ => return Err(ApiError::NoRoute),
                    };
                    if parts.method != http::Method::POST {
                        return Err(ApiError::MethodNotAllowed(format!(
                            "{resource} only supports create"
                        )));
                    }
                    let ct = body::content_type(&parts.headers);
                    let v = crate::auth::review::handle_review(kind, &ct, &b, &user, &self.authz)?;
                    Ok(json_response(StatusCode::CREATED, &v, &[]))
                }
                Target::NonResource => self.non_resource(&parts.method, &path, &parts.headers),
            }
        }
        .await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        if let Some(audit) = &self.audit {
            let attrs = audit_attrs.unwrap_or_default();
            let user = audit_user.unwrap_or_default();
            audit.record(AuditEvent {
                ts: received,
                user: user.name,
                groups: user.groups,
                verb: if attrs.verb.is_empty() {
                    parts.method.as_str().to_ascii_lowercase()
                } else {
                    attrs.verb
                },
                group: attrs.api_group,
                resource: attrs.resource,
                subresource: attrs.subresource,
                namespace: attrs.namespace,
                name: attrs.name,
                uri: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
                code: resp.status().as_u16(),
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                source_ip: remote.map(|r| r.0.ip().to_string()).unwrap_or_default(),
                user_agent: parts
                    .headers
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
            });
        }
        resp
    }

    fn non_resource(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Response, ApiError> {
        if method != http::Method::GET && method != http::Method::HEAD {
            return Err(ApiError::MethodNotAllowed(format!(
                "{method} is not allowed on {path}"
            )));
        }
        let aggregated = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("as=APIGroupDiscoveryList"));
        let p = path.trim_end_matches('/');
        let ok = |v: Value| Ok(json_response(StatusCode::OK, &v, &[]));
        match p {
            "/healthz" | "/livez" => return Ok(text("ok")),
            "/readyz" => {
                return if self.storage.ready() {
                    Ok(text("ok"))
                } else {
                    Err(ApiError::Unavailable(
                        "watch caches are still filling".into(),
                    ))
                }
            }
            "/version" => {
                return ok(json!({
                    "major": "1", "minor": "32", "gitVersion": KUBE_VERSION,
                    "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
                    "goVersion": "", "compiler": "rustc", "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
                }))
            }
            "/api" => {
                return if aggregated {
                    Ok(aggregated_response(crate::discovery::aggregated_api(
                        &self.registry,
                    )))
                } else {
                    ok(crate::discovery::api_versions())
                }
            }
            "/apis" => {
                return if aggregated {
                    Ok(aggregated_response(crate::discovery::aggregated_apis(
                        &self.registry,
                    )))
                } else {
                    ok(crate::discovery::api_group_list(&self.registry))
                }
            }
            "/openapi/v3" => return ok(self.openapi.index()),
            "/openapi/v2" => return Ok(openapi_v2_stub()),
            _ => {}
        }
        if let Some(rest) = p.strip_prefix("/openapi/v3/") {
            return match self.openapi.document(rest) {
                Some(doc) => ok(doc.as_ref().clone()),
                None => Err(ApiError::NoRoute),
            };
        }
        let segs: Vec<&str> = p.trim_start_matches('/').split('/').collect();
        let list = match segs.as_slice() {
            ["api", v] => crate::discovery::resource_list(&self.registry, "", v),
            ["apis", g, v] => crate::discovery::resource_list(&self.registry, g, v),
            ["apis", g] => crate::discovery::api_group(&self.registry, g),
            _ => None,
        };
        match list {
            Some(v) => ok(v),
            None => Err(ApiError::NoRoute),
        }
    }
}

/// A valid but empty OpenAPI v2 document in the protobuf form kubectl reads.
///
/// kubectl validates with OpenAPI v3 and consults v2 only for kinds v3 does not describe; an
/// empty v2 document makes it skip validation for those, so the user sees the server's real
/// answer (`no matches for kind …`) instead of "failed to download openapi".
fn openapi_v2_stub() -> Response {
    fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag);
        // Lengths here are below 128: one varint byte.
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    let mut info = Vec::new();
    field(&mut info, 0x0a, b"Tugboat");
    field(&mut info, 0x12, KUBE_VERSION.as_bytes());
    let mut doc = Vec::new();
    field(&mut doc, 0x0a, b"2.0"); // swagger
    field(&mut doc, 0x12, &info); // info
    field(&mut doc, 0x42, b""); // paths
    field(&mut doc, 0x4a, b""); // definitions
    let mut r = Response::new(Body::from(doc));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        ),
    );
    r
}

fn text(s: &'static str) -> Response {
    let mut r = Response::new(Body::from(s));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn aggregated_response(v: Value) -> Response {
    let mut r = json_response(StatusCode::OK, &v, &[]);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        ),
    );
    r
}
