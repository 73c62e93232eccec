//! Self reviews: `SelfSubjectAccessReview` and `SelfSubjectRulesReview`
//! (`authorization.k8s.io/v1`) and `SelfSubjectReview` (`authentication.k8s.io/v1`), with bodies in
//! JSON or Kubernetes protobuf (what `kubectl auth can-i` and `kubectl auth whoami` send).
//!
//! A protobuf body is the magic `k8s\0` followed by a `runtime.Unknown` whose `raw` field is the
//! encoded message; [`crate::protobuf::decode_envelope`] unwraps it, and the messages below mirror
//! `k8s.io/api/authorization/v1/generated.proto` and `k8s.io/api/authentication/v1/generated.proto`
//! (only the fields read here).

use super::{Attributes, Authorizer, UserInfo};
use crate::error::{ApiError, FieldError};
use prost::Message;
use serde_json::{json, Map, Value};

/// The media type of Kubernetes protobuf bodies.
pub const PROTOBUF_CONTENT_TYPE: &str = crate::protobuf::CONTENT_TYPE;
/// The four bytes every Kubernetes protobuf body starts with.
pub const PROTOBUF_MAGIC: &[u8; 4] = crate::protobuf::MAGIC;

/// Which self review is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewKind {
    /// `authorization.k8s.io/v1` SelfSubjectAccessReview (`kubectl auth can-i`).
    SelfSubjectAccessReview,
    /// `authorization.k8s.io/v1` SelfSubjectRulesReview (`kubectl auth can-i --list`).
    SelfSubjectRulesReview,
    /// `authentication.k8s.io/v1` SelfSubjectReview (`kubectl auth whoami`).
    SelfSubjectReview,
}

impl ReviewKind {
    /// The kind name.
    pub fn kind(self) -> &'static str {
        match self {
            ReviewKind::SelfSubjectAccessReview => "SelfSubjectAccessReview",
            ReviewKind::SelfSubjectRulesReview => "SelfSubjectRulesReview",
            ReviewKind::SelfSubjectReview => "SelfSubjectReview",
        }
    }

    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            ReviewKind::SelfSubjectReview => "authentication.k8s.io",
            _ => "authorization.k8s.io",
        }
    }

    /// The resource plural (`selfsubjectaccessreviews`, …).
    pub fn resource(self) -> &'static str {
        match self {
            ReviewKind::SelfSubjectAccessReview => "selfsubjectaccessreviews",
            ReviewKind::SelfSubjectRulesReview => "selfsubjectrulesreviews",
            ReviewKind::SelfSubjectReview => "selfsubjectreviews",
        }
    }

    /// The review for a resource plural of a group, if it is one.
    pub fn from_resource(group: &str, resource: &str) -> Option<ReviewKind> {
        [
            ReviewKind::SelfSubjectAccessReview,
            ReviewKind::SelfSubjectRulesReview,
            ReviewKind::SelfSubjectReview,
        ]
        .into_iter()
        .find(|k| k.group() == group && k.resource() == resource)
    }

    /// `apiVersion` of answers.
    pub fn api_version(self) -> String {
        format!("{}/v1", self.group())
    }

    fn accepts_api_version(self, api_version: &str) -> bool {
        match api_version.split_once('/') {
            Some((g, v)) => g == self.group() && matches!(v, "v1" | "v1beta1" | "v1alpha1"),
            None => false,
        }
    }
}

// --- protobuf messages (proto2; only the fields used) -------------------------------------------

/// `ObjectMeta`, name and namespace only.
#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
}

/// `authorization.v1.ResourceAttributes` (without the alpha selector fields 8 and 9).
#[derive(Clone, PartialEq, Message)]
struct ResourceAttributes {
    #[prost(string, optional, tag = "1")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
    #[prost(string, optional, tag = "3")]
    group: Option<String>,
    #[prost(string, optional, tag = "4")]
    version: Option<String>,
    #[prost(string, optional, tag = "5")]
    resource: Option<String>,
    #[prost(string, optional, tag = "6")]
    subresource: Option<String>,
    #[prost(string, optional, tag = "7")]
    name: Option<String>,
}

/// `authorization.v1.NonResourceAttributes`.
#[derive(Clone, PartialEq, Message)]
struct NonResourceAttributes {
    #[prost(string, optional, tag = "1")]
    path: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
}

/// `authorization.v1.SelfSubjectAccessReviewSpec`.
#[derive(Clone, PartialEq, Message)]
struct SelfSubjectAccessReviewSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
}

/// `authorization.v1.SelfSubjectAccessReview` (status, field 3, is ignored on input).
#[derive(Clone, PartialEq, Message)]
struct SelfSubjectAccessReviewPb {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<SelfSubjectAccessReviewSpec>,
}

/// `authorization.v1.SelfSubjectRulesReviewSpec`.
#[derive(Clone, PartialEq, Message)]
struct SelfSubjectRulesReviewSpec {
    #[prost(string, optional, tag = "1")]
    namespace: Option<String>,
}

/// `authorization.v1.SelfSubjectRulesReview`.
#[derive(Clone, PartialEq, Message)]
struct SelfSubjectRulesReviewPb {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<SelfSubjectRulesReviewSpec>,
}

/// `authentication.v1.SelfSubjectReview`.
#[derive(Clone, PartialEq, Message)]
struct SelfSubjectReviewPb {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

fn meta_json(m: Option<ObjectMeta>) -> Value {
    let mut out = Map::new();
    if let Some(m) = m {
        for (k, v) in [("name", m.name), ("namespace", m.namespace)] {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                out.insert(k.into(), json!(v));
            }
        }
    }
    Value::Object(out)
}

/// Proto fields as JSON with `omitempty` semantics.
fn put_str(obj: &mut Map<String, Value>, key: &str, v: Option<String>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        obj.insert(key.into(), json!(v));
    }
}

/// Converts a decoded protobuf message to the JSON form of the same object.
fn protobuf_to_json(kind: ReviewKind, raw: &[u8]) -> Result<Value, ApiError> {
    let bad = |e: prost::DecodeError| {
        ApiError::BadRequest(format!(
            "the protobuf body does not decode as a {}: {e}",
            kind.kind()
        ))
    };
    let (metadata, spec) = match kind {
        ReviewKind::SelfSubjectAccessReview => {
            let m = SelfSubjectAccessReviewPb::decode(raw).map_err(bad)?;
            let mut spec = Map::new();
            if let Some(s) = m.spec {
                if let Some(r) = s.resource_attributes {
                    let mut o = Map::new();
                    put_str(&mut o, "namespace", r.namespace);
                    put_str(&mut o, "verb", r.verb);
                    put_str(&mut o, "group", r.group);
                    put_str(&mut o, "version", r.version);
                    put_str(&mut o, "resource", r.resource);
                    put_str(&mut o, "subresource", r.subresource);
                    put_str(&mut o, "name", r.name);
                    spec.insert("resourceAttributes".into(), Value::Object(o));
                }
                if let Some(n) = s.non_resource_attributes {
                    let mut o = Map::new();
                    put_str(&mut o, "path", n.path);
                    put_str(&mut o, "verb", n.verb);
                    spec.insert("nonResourceAttributes".into(), Value::Object(o));
                }
            }
            (m.metadata, Some(Value::Object(spec)))
        }
        ReviewKind::SelfSubjectRulesReview => {
            let m = SelfSubjectRulesReviewPb::decode(raw).map_err(bad)?;
            let mut spec = Map::new();
            put_str(&mut spec, "namespace", m.spec.and_then(|s| s.namespace));
            (m.metadata, Some(Value::Object(spec)))
        }
        ReviewKind::SelfSubjectReview => {
            let m = SelfSubjectReviewPb::decode(raw).map_err(bad)?;
            (m.metadata, None)
        }
    };
    let mut out = json!({
        "apiVersion": kind.api_version(),
        "kind": kind.kind(),
        "metadata": meta_json(metadata),
    });
    if let Some(spec) = spec {
        out["spec"] = spec;
    }
    Ok(out)
}

/// Decodes a Kubernetes protobuf envelope into the JSON form of a `kind` object.
fn decode_protobuf(kind: ReviewKind, body: &[u8]) -> Result<Value, ApiError> {
    let env = crate::protobuf::decode_envelope(body).map_err(ApiError::from)?;
    check_type(kind, &env.api_version, &env.kind)?;
    protobuf_to_json(kind, &env.raw)
}

fn check_type(kind: ReviewKind, api_version: &str, found_kind: &str) -> Result<(), ApiError> {
    if found_kind != kind.kind() || !kind.accepts_api_version(api_version) {
        let found = if api_version.is_empty() && found_kind.is_empty() {
            "an object without apiVersion and kind".to_string()
        } else {
            format!("{api_version:?} {found_kind:?}")
        };
        return Err(ApiError::BadRequest(format!(
            "the body is {found}, but this endpoint takes {:?} {:?}",
            kind.api_version(),
            kind.kind()
        )));
    }
    Ok(())
}

fn decode_json(kind: ReviewKind, body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest(format!(
            "the body must be a JSON object ({})",
            kind.kind()
        )));
    }
    let api_version = super::str_at(&v, &["apiVersion"]);
    let found_kind = super::str_at(&v, &["kind"]);
    // Like Kubernetes, a body without apiVersion and kind takes them from the URL.
    if !(api_version.is_empty() && found_kind.is_empty()) {
        check_type(kind, api_version, found_kind)?;
    }
    for field in ["metadata", "spec"] {
        if let Some(x) = v.get(field) {
            if !x.is_object() && !x.is_null() {
                return Err(ApiError::BadRequest(format!(
                    "{}.{field}: expected an object",
                    kind.kind()
                )));
            }
        }
    }
    Ok(v)
}

/// The string at `obj[key]`; a non-string is a 400 naming `path`.
fn string_field(obj: &Value, key: &str, path: &str) -> Result<String, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{path}.{key}: expected a string, got {other}"
        ))),
    }
}

/// Answers a self review. `content_type` is the request's Content-Type (`application/json` or
/// `application/vnd.kubernetes.protobuf`, parameters allowed); others are 415. A body that is not a
/// `kind` is 400; an access review without exactly one of `resourceAttributes` and
/// `nonResourceAttributes` is 422. The answer is always JSON.
pub fn handle_review(
    kind: ReviewKind,
    content_type: &str,
    body: &[u8],
    user: &UserInfo,
    authz: &Authorizer,
) -> Result<Value, ApiError> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut obj = match media.as_str() {
        "application/json" | "" => decode_json(kind, body)?,
        PROTOBUF_CONTENT_TYPE => decode_protobuf(kind, body)?,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of content type {other:?} is not supported; use application/json or {PROTOBUF_CONTENT_TYPE}"
            )))
        }
    };
    obj["apiVersion"] = json!(kind.api_version());
    obj["kind"] = json!(kind.kind());
    let mut metadata = obj
        .get("metadata")
        .filter(|m| m.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    metadata["creationTimestamp"] = Value::Null;
    obj["metadata"] = metadata;
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    match kind {
        ReviewKind::SelfSubjectAccessReview => {
            let attrs = access_attributes(&spec)?;
            let decision = authz.authorize(user, &attrs);
            let mut status = json!({"allowed": decision.allowed});
            if !decision.reason.is_empty() {
                status["reason"] = json!(decision.reason);
            }
            obj["status"] = status;
        }
        ReviewKind::SelfSubjectRulesReview => {
            let namespace = string_field(&spec, "namespace", "spec")?;
            let rules = authz.rules_for(user, &namespace);
            obj["status"] = json!({
                "resourceRules": rules.resource_rules,
                "nonResourceRules": rules.non_resource_rules,
                "incomplete": false,
            });
        }
        ReviewKind::SelfSubjectReview => {
            let mut info = json!({"username": user.name, "groups": user.groups});
            if !user.uid.is_empty() {
                info["uid"] = json!(user.uid);
            }
            if !user.extra.is_empty() {
                info["extra"] = json!(user.extra);
            }
            obj["status"] = json!({"userInfo": info});
        }
    }
    Ok(obj)
}

/// The authorizer attributes an access review asks about.
fn access_attributes(spec: &Value) -> Result<Attributes, ApiError> {
    let resource = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let non_resource = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    let invalid = |causes| {
        ApiError::invalid(
            "SelfSubjectAccessReview",
            "authorization.k8s.io",
            "",
            causes,
        )
    };
    match (resource, non_resource) {
        (Some(r), None) => {
            let p = "spec.resourceAttributes";
            Ok(Attributes::resource(
                &string_field(r, "verb", p)?,
                &string_field(r, "group", p)?,
                &string_field(r, "resource", p)?,
                &string_field(r, "subresource", p)?,
                &string_field(r, "namespace", p)?,
                &string_field(r, "name", p)?,
            ))
        }
        (None, Some(n)) => {
            let p = "spec.nonResourceAttributes";
            Ok(Attributes::non_resource(
                &string_field(n, "verb", p)?,
                &string_field(n, "path", p)?,
            ))
        }
        (Some(r), Some(_)) => Err(invalid(vec![FieldError::invalid(
            "spec.resourceAttributes",
            r,
            "cannot be specified in combination with nonResourceAttributes",
        )])),
        (None, None) => Err(invalid(vec![FieldError::required(
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )])),
    }
}

#[cfg(test)]
mod tests;
