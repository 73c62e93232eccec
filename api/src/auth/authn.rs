//! Authentication: client certificates, opaque ServiceAccount tokens and JWTs; TokenRequest.

use super::jwt::{self, Claims, JwtKey, KubernetesClaim, ObjectRefClaim};
use super::storage_names::{SECRETS, SERVICE_ACCOUNTS, SHIPS};
use super::{str_at, strings, ObjectSource, UserInfo, AUTHENTICATED_GROUP};
use crate::error::{ApiError, FieldError};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SecureRandom as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Name of the secondary index on `core/secrets` that maps token hashes to Secrets.
pub const SA_TOKEN_INDEX: &str = "sa-token";
/// Secret types holding a ServiceAccount token (the first is the Kubernetes one).
pub const SA_TOKEN_TYPES: &[&str] = &[
    "kubernetes.io/service-account-token",
    "tugboat.io/service-account-token",
    "service-account-token",
];
/// `iss` of the tokens this server issues and accepts.
pub const ISSUER: &str = "https://tugboat.local";
/// Audiences the apiserver accepts by default; TokenRequests without audiences get these.
pub const DEFAULT_AUDIENCES: &[&str] = &["https://kubernetes.default.svc", "tugboat"];
/// TokenRequest lifetime when `spec.expirationSeconds` is not given.
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;
/// Shortest TokenRequest lifetime accepted (shorter requests are Invalid).
pub const MIN_TOKEN_SECONDS: i64 = 600;
/// Longest TokenRequest lifetime; longer requests are capped to it.
pub const MAX_TOKEN_SECONDS: i64 = 48 * 3600;

const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
const CREDENTIAL_ID_EXTRA: &str = "authentication.kubernetes.io/credential-id";

/// The `sa-token` index function the cache registers on `core/secrets`: the SHA-256 hex of
/// the decoded `data.token` of ServiceAccount-token Secrets (types in [`SA_TOKEN_TYPES`]);
/// empty for every other Secret.
pub fn sa_token_index(secret: &Value) -> Vec<String> {
    match secret_token(secret) {
        Some(token) => vec![hex::encode(Sha256::digest(token))],
        None => Vec::new(),
    }
}

fn is_sa_token_secret(secret: &Value) -> bool {
    let ty = str_at(secret, &["type"]);
    SA_TOKEN_TYPES.contains(&ty)
}

/// The decoded, non-empty `data.token` of a ServiceAccount-token Secret.
fn secret_token(secret: &Value) -> Option<Vec<u8>> {
    if !is_sa_token_secret(secret) {
        return None;
    }
    let encoded = str_at(secret, &["data", "token"]);
    let token = STANDARD.decode(encoded).ok()?;
    (!token.is_empty()).then_some(token)
}

/// Authenticates requests; also issues ServiceAccount tokens.
pub struct Authenticator {
    ca_pem: String,
    jwt: JwtKey,
    anonymous: bool,
    source: Arc<dyn ObjectSource>,
    audiences: Vec<String>,
    issuer: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt)
            .field("anonymous", &self.anonymous)
            .field("audiences", &self.audiences)
            .field("issuer", &self.issuer)
            .finish()
    }
}

fn unauthorized(why: &str) -> ApiError {
    tracing::debug!(reason = why, "authentication failed");
    ApiError::Unauthorized
}

impl Authenticator {
    /// An authenticator trusting the cluster CA (`ca_cert_der`, also put into token Secrets as
    /// `ca.crt`), verifying (and, if it holds the private key, issuing) JWTs with
    /// `signing_key`, allowing anonymous requests if `anonymous`, reading ServiceAccounts and
    /// Secrets from `source`. Audiences default to [`DEFAULT_AUDIENCES`], the issuer to [`ISSUER`].
    pub fn new(
        ca_cert_der: Vec<u8>,
        signing_key: JwtKey,
        anonymous: bool,
        source: Arc<dyn ObjectSource>,
    ) -> Self {
        Authenticator {
            ca_pem: pem_certificate(&ca_cert_der),
            jwt: signing_key,
            anonymous,
            source,
            audiences: DEFAULT_AUDIENCES.iter().map(|s| s.to_string()).collect(),
            issuer: ISSUER.to_string(),
        }
    }

    /// Replaces the accepted audiences (the first is the default of TokenRequests).
    pub fn with_audiences(mut self, audiences: Vec<String>) -> Self {
        if !audiences.is_empty() {
            self.audiences = audiences;
        }
        self
    }

    /// The accepted audiences.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Who makes the request. `client_cert` is the DER of the TLS client leaf certificate,
    /// already verified against the cluster CA by the TLS layer.
    ///
    /// A client certificate wins over a token (as in Kubernetes). A bad, expired or unknown
    /// bearer token is `Err(ApiError::Unauthorized)`; without credentials the user is
    /// `system:anonymous` in `system:unauthenticated` if anonymous requests are enabled, else
    /// the answer is `Unauthorized`. `Authorization` headers of other schemes are ignored.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        client_cert: Option<&[u8]>,
    ) -> Result<UserInfo, ApiError> {
        self.authenticate_at(headers, client_cert, jiff::Timestamp::now().as_second())
    }

    /// [`Authenticator::authenticate`] at Unix time `now`.
    pub fn authenticate_at(
        &self,
        headers: &http::HeaderMap,
        client_cert: Option<&[u8]>,
        now: i64,
    ) -> Result<UserInfo, ApiError> {
        if let Some(der) = client_cert {
            return user_from_certificate(der);
        }
        if let Some(token) = bearer_token(headers) {
            return self.authenticate_token(token, now);
        }
        if self.anonymous {
            Ok(UserInfo::anonymous())
        } else {
            Err(unauthorized(
                "no credentials and anonymous requests are disabled",
            ))
        }
    }

    /// The user of a bearer token (JWT or opaque ServiceAccount token) at Unix time `now`.
    pub fn authenticate_token(&self, token: &str, now: i64) -> Result<UserInfo, ApiError> {
        if jwt::looks_like_jwt(token) {
            self.authenticate_jwt(token, now)
        } else {
            self.authenticate_opaque(token)
        }
    }

    fn authenticate_opaque(&self, token: &str) -> Result<UserInfo, ApiError> {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        for secret in self.source.by_index(SECRETS, SA_TOKEN_INDEX, &hash) {
            if secret_token(&secret).as_deref() != Some(token.as_bytes()) {
                continue;
            }
            let namespace = str_at(&secret, &["metadata", "namespace"]);
            let annotations = &secret["metadata"]["annotations"];
            let sa_name = str_at(annotations, &[SA_NAME_ANNOTATION]);
            if namespace.is_empty() || sa_name.is_empty() {
                return Err(unauthorized("token Secret names no ServiceAccount"));
            }
            let want_uid = str_at(annotations, &[SA_UID_ANNOTATION]);
            let sa_uid = self.service_account_uid(namespace, sa_name, want_uid)?;
            return Ok(service_account_user(
                namespace,
                sa_name,
                &sa_uid,
                BTreeMap::new(),
            ));
        }
        Err(unauthorized("unknown token"))
    }

    /// The uid of an existing ServiceAccount; `want_uid` (if non-empty) must match it.
    fn service_account_uid(
        &self,
        namespace: &str,
        name: &str,
        want_uid: &str,
    ) -> Result<String, ApiError> {
        let sa = self
            .source
            .get(SERVICE_ACCOUNTS, Some(namespace), name)
            .ok_or_else(|| unauthorized("the token's ServiceAccount no longer exists"))?;
        let uid = str_at(&sa, &["metadata", "uid"]);
        if !want_uid.is_empty() && uid != want_uid {
            return Err(unauthorized("the token's ServiceAccount was re-created"));
        }
        Ok(uid.to_string())
    }

    fn authenticate_jwt(&self, token: &str, now: i64) -> Result<UserInfo, ApiError> {
        let claims = self
            .jwt
            .verify(token, now)
            .map_err(|e| unauthorized(&e.to_string()))?;
        if claims.iss != self.issuer {
            return Err(unauthorized("foreign issuer"));
        }
        if !claims.aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(unauthorized("token audiences are not accepted here"));
        }
        let k8s = claims
            .kubernetes
            .as_ref()
            .ok_or_else(|| unauthorized("token has no kubernetes.io claim"))?;
        let (ns, name) = (&k8s.namespace, &k8s.serviceaccount.name);
        if claims.sub != format!("system:serviceaccount:{ns}:{name}") {
            return Err(unauthorized(
                "token subject does not match its ServiceAccount",
            ));
        }
        let sa_uid = self.service_account_uid(ns, name, &k8s.serviceaccount.uid)?;
        for (storage, bound) in [(SECRETS, &k8s.secret), (SHIPS, &k8s.ship)] {
            if let Some(bound) = bound {
                let obj = self
                    .source
                    .get(storage, Some(ns), &bound.name)
                    .ok_or_else(|| unauthorized("the token's bound object no longer exists"))?;
                if !bound.uid.is_empty() && str_at(&obj, &["metadata", "uid"]) != bound.uid {
                    return Err(unauthorized("the token's bound object was re-created"));
                }
            }
        }
        let mut extra = BTreeMap::new();
        if !claims.jti.is_empty() {
            extra.insert(
                CREDENTIAL_ID_EXTRA.to_string(),
                vec![format!("JTI={}", claims.jti)],
            );
        }
        Ok(service_account_user(ns, name, &sa_uid, extra))
    }

    /// Answers a TokenRequest (`POST …/serviceaccounts/<name>/token`) at time `now`: a JWT for the
    /// ServiceAccount with the requested audiences (default: the apiserver's) and lifetime
    /// (default 3600 s, at least 600 s, capped at 48 h), optionally bound to a Secret or Ship
    /// (`spec.boundObjectRef`). Returns the TokenRequest with `status.token` and
    /// `status.expirationTimestamp`.
    pub fn token_request(
        &self,
        namespace: &str,
        sa_name: &str,
        body: &Value,
        now: jiff::Timestamp,
    ) -> Result<Value, ApiError> {
        let sa = self
            .source
            .get(SERVICE_ACCOUNTS, Some(namespace), sa_name)
            .ok_or_else(|| ApiError::NotFound {
                qualified: "serviceaccounts".into(),
                group: String::new(),
                kind: "serviceaccounts".into(),
                name: sa_name.to_string(),
            })?;
        let invalid =
            |causes| ApiError::invalid("TokenRequest", "authentication.k8s.io", sa_name, causes);
        if !body.is_object() {
            return Err(ApiError::BadRequest(
                "TokenRequest body must be a JSON object".into(),
            ));
        }
        let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
        let mut causes = Vec::new();
        let mut audiences = strings(spec.get("audiences"));
        if audiences.is_empty() {
            audiences = self.audiences.clone();
        }
        let requested = match spec.get("expirationSeconds") {
            None | Some(Value::Null) => DEFAULT_TOKEN_SECONDS,
            Some(v) => match v.as_i64() {
                Some(s) => s,
                None => {
                    causes.push(FieldError::invalid(
                        "spec.expirationSeconds",
                        v,
                        "must be an integer",
                    ));
                    DEFAULT_TOKEN_SECONDS
                }
            },
        };
        if requested < MIN_TOKEN_SECONDS {
            causes.push(FieldError::invalid(
                "spec.expirationSeconds",
                &json!(requested),
                "may not specify a duration less than 10 minutes",
            ));
        }
        let seconds = requested.min(MAX_TOKEN_SECONDS);
        let mut k8s = KubernetesClaim {
            namespace: namespace.to_string(),
            serviceaccount: ObjectRefClaim {
                name: sa_name.to_string(),
                uid: str_at(&sa, &["metadata", "uid"]).to_string(),
            },
            secret: None,
            ship: None,
        };
        let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
        if let Some(bound) = bound {
            let kind = str_at(bound, &["kind"]);
            let name = str_at(bound, &["name"]);
            let storage = match kind {
                "Secret" => Some(SECRETS),
                "Ship" => Some(SHIPS),
                other => {
                    causes.push(FieldError::not_supported(
                        "spec.boundObjectRef.kind",
                        &json!(other),
                        &["Secret", "Ship"],
                    ));
                    None
                }
            };
            if name.is_empty() {
                causes.push(FieldError::required("spec.boundObjectRef.name", ""));
            }
            if let (Some(storage), false) = (storage, name.is_empty()) {
                let obj = self.source.get(storage, Some(namespace), name);
                let uid = obj
                    .as_deref()
                    .map(|o| str_at(o, &["metadata", "uid"]).to_string());
                let want = str_at(bound, &["uid"]);
                match uid {
                    None => causes.push(FieldError::invalid(
                        "spec.boundObjectRef.name",
                        &json!(name),
                        &format!("{kind} not found"),
                    )),
                    Some(uid) if !want.is_empty() && uid != want => {
                        causes.push(FieldError::invalid(
                            "spec.boundObjectRef.uid",
                            &json!(want),
                            &format!("the {kind}'s uid is {uid}"),
                        ))
                    }
                    Some(uid) => {
                        let r = Some(ObjectRefClaim {
                            name: name.to_string(),
                            uid,
                        });
                        if storage == SECRETS {
                            k8s.secret = r;
                        } else {
                            k8s.ship = r;
                        }
                    }
                }
            }
        }
        if !causes.is_empty() {
            return Err(invalid(causes));
        }
        let iat = now.as_second();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: format!("system:serviceaccount:{namespace}:{sa_name}"),
            aud: audiences.clone(),
            exp: iat + seconds,
            nbf: iat,
            iat,
            jti: random_id()?,
            kubernetes: Some(k8s),
        };
        let token = self.jwt.issue(&claims).map_err(|e| match e {
            jwt::JwtError::NoSigningKey => ApiError::Unavailable(
                "this member cannot issue tokens: it does not hold the cluster CA key".into(),
            ),
            other => ApiError::Internal(other.to_string()),
        })?;
        let expiry = jiff::Timestamp::from_second(claims.exp)
            .map_err(|e| ApiError::Internal(format!("token expiry: {e}")))?;
        let mut out_spec = json!({"audiences": audiences, "expirationSeconds": seconds});
        if let Some(bound) = bound {
            out_spec["boundObjectRef"] = bound.clone();
        }
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {
                "name": sa_name,
                "namespace": namespace,
                "creationTimestamp": rfc3339(now),
            },
            "spec": out_spec,
            "status": {"token": token, "expirationTimestamp": rfc3339(expiry)},
        }))
    }

    /// For a new Secret of a ServiceAccount-token type whose `data.token` is empty: puts a random
    /// 32-byte base64url opaque token into `data.token`, the namespace into `data.namespace` and
    /// the cluster CA into `data["ca.crt"]` (all base64-encoded as Secret data is), and the
    /// ServiceAccount's uid into annotation `kubernetes.io/service-account.uid` if `sa` is given
    /// and the annotation is missing. Returns whether a token was generated.
    pub fn fill_service_account_token(&self, secret: &mut Value, sa: Option<&Value>) -> bool {
        if !is_sa_token_secret(secret) || !str_at(secret, &["data", "token"]).is_empty() {
            return false;
        }
        let Some(obj) = secret.as_object_mut() else {
            return false;
        };
        let mut bytes = [0u8; 32];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            tracing::error!("system random generator failed; no token generated");
            return false;
        }
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let namespace = obj
            .get("metadata")
            .map(|m| str_at(m, &["namespace"]).to_string())
            .unwrap_or_default();
        let data = obj.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        data["token"] = json!(STANDARD.encode(token));
        data["namespace"] = json!(STANDARD.encode(&namespace));
        data["ca.crt"] = json!(STANDARD.encode(&self.ca_pem));
        if let Some(uid) = sa.map(|sa| str_at(sa, &["metadata", "uid"])) {
            if !uid.is_empty() {
                let meta = obj.entry("metadata").or_insert_with(|| json!({}));
                if let Some(meta) = meta.as_object_mut() {
                    let ann = meta.entry("annotations").or_insert_with(|| json!({}));
                    if !ann.is_object() {
                        *ann = json!({});
                    }
                    if str_at(ann, &[SA_UID_ANNOTATION]).is_empty() {
                        ann[SA_UID_ANNOTATION] = json!(uid);
                    }
                }
            }
        }
        true
    }
}

fn rfc3339(t: jiff::Timestamp) -> String {
    // Whole seconds with `Z`, as Kubernetes writes metav1.Time.
    match jiff::Timestamp::from_second(t.as_second()) {
        Ok(t) => t.to_string(),
        Err(_) => t.to_string(),
    }
}

/// A random version-4 UUID from the system generator (token ids).
fn random_id() -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| ApiError::Internal("system random generator failed".into()))?;
    Ok(crate::meta::uuid_v4(b))
}

fn service_account_user(
    namespace: &str,
    name: &str,
    uid: &str,
    extra: BTreeMap<String, Vec<String>>,
) -> UserInfo {
    UserInfo {
        name: format!("system:serviceaccount:{namespace}:{name}"),
        uid: uid.to_string(),
        groups: vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{namespace}"),
            AUTHENTICATED_GROUP.to_string(),
        ],
        extra,
    }
}

/// The token of an `Authorization: Bearer <token>` header; None for other schemes or none.
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// CN as user, O values plus `system:authenticated` as groups.
fn user_from_certificate(der: &[u8]) -> Result<UserInfo, ApiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| unauthorized("client certificate does not parse"))?;
    if !cert.validity().is_valid() {
        return Err(unauthorized(
            "client certificate is expired or not yet valid",
        ));
    }
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        return Err(unauthorized("client certificate has no common name"));
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push(AUTHENTICATED_GROUP.to_string());
    // Node certificates (CN = the node name, O = system:nodes) speak for that node.
    let name = if groups.iter().any(|g| g == super::node::NODES_GROUP)
        && !name.starts_with(super::node::NODE_USER_PREFIX)
    {
        format!("{}{name}", super::node::NODE_USER_PREFIX)
    } else {
        name
    };
    Ok(UserInfo {
        name,
        groups,
        ..UserInfo::default()
    })
}

fn pem_certificate(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests;
