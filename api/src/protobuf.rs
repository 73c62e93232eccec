//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! kubectl's typed commands (`kubectl create namespace|serviceaccount|secret|configmap|role|…`,
//! `kubectl create token`, `kubectl auth can-i`) send their bodies as Kubernetes protobuf and do not
//! retry as JSON after a 415. Such a body is the magic `k8s\0` followed by a `runtime.Unknown`
//! envelope whose `raw` field holds the object's protobuf message.
//!
//! This module decodes the envelope ([`decode_envelope`]) and, for the kinds listed in
//! [`SUPPORTED_KINDS`], the object itself into the JSON form Kubernetes would produce for it
//! ([`decode_object`]), so the ordinary JSON path (defaults, validation, storage) applies. The
//! messages below are hand-written prost structs mirroring the field numbers of
//! `k8s.io/apimachinery/pkg/apis/meta/v1`, `k8s.io/api/core/v1`, `k8s.io/api/rbac/v1` and
//! `k8s.io/api/authentication/v1` (proto2), with only the fields a client sets on create; others
//! (timestamps, status, managed fields) are skipped as unknown fields.

use crate::error::ApiError;
use base64::Engine as _;
use prost::Message;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The four bytes every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// The `(apiVersion, kind)` pairs [`decode_object`] converts to JSON.
pub const SUPPORTED_KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("authentication.k8s.io/v1", "TokenRequest"),
];

/// Why a protobuf body was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    /// The body does not start with [`MAGIC`].
    #[error("the protobuf body does not start with the Kubernetes magic bytes \"k8s\\x00\"")]
    MissingMagic,
    /// The bytes after the magic are not a `runtime.Unknown`.
    #[error("the protobuf body is not a runtime.Unknown envelope: {0}")]
    Envelope(#[source] prost::DecodeError),
    /// The envelope names a content encoding (compression); none is supported.
    #[error("unsupported protobuf content encoding {0:?}")]
    ContentEncoding(String),
    /// The envelope's `raw` bytes do not decode as the message its type names.
    #[error("the protobuf body does not decode as a {kind}: {source}")]
    Message {
        /// The kind named by the envelope.
        kind: String,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// A well-formed body of a kind this server does not decode from protobuf.
    #[error(
        "protobuf bodies are accepted for {}; the body is {}: send application/json",
        accepted_kinds(),
        describe(.api_version, .kind)
    )]
    UnsupportedKind {
        /// The envelope's `apiVersion`.
        api_version: String,
        /// The envelope's `kind`.
        kind: String,
    },
}

impl From<ProtobufError> for ApiError {
    fn from(e: ProtobufError) -> Self {
        match e {
            ProtobufError::UnsupportedKind { .. } => ApiError::UnsupportedMediaType(e.to_string()),
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

fn accepted_kinds() -> String {
    SUPPORTED_KINDS
        .iter()
        .map(|(v, k)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(api_version: &str, kind: &str) -> String {
    if api_version.is_empty() && kind.is_empty() {
        "an object without apiVersion and kind".into()
    } else {
        format!("{api_version:?} {kind:?}")
    }
}

/// A decoded `runtime.Unknown` envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// `typeMeta.apiVersion` (empty when absent).
    pub api_version: String,
    /// `typeMeta.kind` (empty when absent).
    pub kind: String,
    /// The object's encoded protobuf message.
    pub raw: Vec<u8>,
}

/// Strips the magic and decodes the `runtime.Unknown` envelope of a protobuf body. A
/// `contentEncoding` is refused; `contentType` is ignored (it is empty or protobuf in practice).
pub fn decode_envelope(body: &[u8]) -> Result<Envelope, ProtobufError> {
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or(ProtobufError::MissingMagic)?;
    let unknown = pb::Unknown::decode(rest).map_err(ProtobufError::Envelope)?;
    if let Some(enc) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(ProtobufError::ContentEncoding(enc));
    }
    let tm = unknown.type_meta.unwrap_or_default();
    Ok(Envelope {
        api_version: tm.api_version.unwrap_or_default(),
        kind: tm.kind.unwrap_or_default(),
        raw: unknown.raw.unwrap_or_default(),
    })
}

/// Decodes a protobuf body of one of [`SUPPORTED_KINDS`] into the JSON form of the same object
/// (`apiVersion`, `kind`, `metadata`, and the kind's fields, with Kubernetes' `omitempty` rules
/// and `[]byte` values as base64 strings).
pub fn decode_object(body: &[u8]) -> Result<Value, ProtobufError> {
    let env = decode_envelope(body)?;
    let raw = env.raw.as_slice();
    let kind = env.kind.as_str();
    let supported = SUPPORTED_KINDS
        .iter()
        .any(|(v, k)| *v == env.api_version && *k == kind);
    if !supported {
        return Err(ProtobufError::UnsupportedKind {
            api_version: env.api_version,
            kind: env.kind,
        });
    }
    let bad = |source| ProtobufError::Message {
        kind: kind.to_string(),
        source,
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(env.api_version));
    out.insert("kind".into(), json!(kind));
    match kind {
        "Namespace" => {
            let m = pb::Namespace::decode(raw).map_err(bad)?;
            out.insert("metadata".into(), meta_json(m.metadata));
            let mut spec = Map::new();
            put_strings(
                &mut spec,
                "finalizers",
                m.spec.unwrap_or_default().finalizers,
            );
            out.insert("spec".into(), Value::Object(spec));
        }
        "ServiceAccount" => {
            let m = pb::ServiceAccount::decode(raw).map_err(bad)?;
            out.insert("metadata".into(), meta_json(m.metadata));
            if !m.secrets.is_empty() {
                let v = m.secrets.into_iter().map(object_reference_json).collect();
                out.insert("secrets".into(), Value::Array(v));
            }
            if !m.image_pull_secrets.is_empty() {
                let v = m
                    .image_pull_secrets
                    .into_iter()
                    .map(|r| {
                        let mut o = Map::new();
                        put_str(&mut o, "name", r.name);
                        Value::Object(o)
                    })
                    .collect();
                out.insert("imagePullSecrets".into(), Value::Array(v));
            }
            if let Some(b) = m.automount_service_account_token {
                out.insert("automountServiceAccountToken".into(), json!(b));
            }
        }
        "Secret" => {
            let m = pb::Secret::decode(raw).map_err(bad)?;
            out.insert("metadata".into(), meta_json(m.metadata));
            put_bytes_map(&mut out, "data", m.data);
            put_map(&mut out, "stringData", m.string_data);
            put_str(&mut out, "type", m.r#type);
            if let Some(b) = m.immutable {
                out.insert("immutable".into(), json!(b));
            }
        }
        "ConfigMap" => {
            let m = pb::ConfigMap::decode(raw).map_err(bad)?;
            out.insert("metadata".into(), meta_json(m.metadata));
            put_map(&mut out, "data", m.data);
            put_bytes_map(&mut out, "binaryData", m.binary_data);
            if let Some(b) = m.immutable {
                out.insert("immutable".into(), json!(b));
            }
        }
        "Role" => {
            let m = pb::Role::decode(raw).map_err(bad)?;
            out.insert("metadata".into(), meta_json(m.metadata));
            out.insert("rules".into(), rules_json(m.rules));
        }
        "ClusterRole" => {
            let m = pb::ClusterRole::decode(raw).map_err(bad)?;
            out.insert("metadata".into(), meta_json(m.metadata));
            out.insert("rules".into(), rules_json(m.rules));
            if let Some(a) = m.aggregation_rule {
                let mut o = Map::new();
                if !a.cluster_role_selectors.is_empty() {
                    let v = a
                        .cluster_role_selectors
                        .into_iter()
                        .map(label_selector_json)
                        .collect();
                    o.insert("clusterRoleSelectors".into(), Value::Array(v));
                }
                out.insert("aggregationRule".into(), Value::Object(o));
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let m = pb::RoleBinding::decode(raw).map_err(bad)?;
            out.insert("metadata".into(), meta_json(m.metadata));
            if !m.subjects.is_empty() {
                let v = m.subjects.into_iter().map(subject_json).collect();
                out.insert("subjects".into(), Value::Array(v));
            }
            let r = m.role_ref.unwrap_or_default();
            out.insert(
                "roleRef".into(),
                json!({
                    "apiGroup": r.api_group.unwrap_or_default(),
                    "kind": r.kind.unwrap_or_default(),
                    "name": r.name.unwrap_or_default(),
                }),
            );
        }
        "TokenRequest" => {
            let m = pb::TokenRequest::decode(raw).map_err(bad)?;
            out.insert("metadata".into(), meta_json(m.metadata));
            let s = m.spec.unwrap_or_default();
            let mut spec = Map::new();
            spec.insert("audiences".into(), json!(s.audiences));
            if let Some(secs) = s.expiration_seconds {
                spec.insert("expirationSeconds".into(), json!(secs));
            }
            if let Some(b) = s.bound_object_ref {
                let mut o = Map::new();
                put_str(&mut o, "kind", b.kind);
                put_str(&mut o, "apiVersion", b.api_version);
                put_str(&mut o, "name", b.name);
                put_str(&mut o, "uid", b.uid);
                spec.insert("boundObjectRef".into(), Value::Object(o));
            }
            out.insert("spec".into(), Value::Object(spec));
        }
        // Unreachable: SUPPORTED_KINDS was checked above; kept as an error rather than a panic.
        _ => {
            return Err(ProtobufError::UnsupportedKind {
                api_version: env.api_version,
                kind: env.kind,
            })
        }
    }
    Ok(Value::Object(out))
}

// --- JSON conversion (Go's encoding/json with `omitempty`) --------------------------------------

fn put_str(obj: &mut Map<String, Value>, key: &str, v: Option<String>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        obj.insert(key.into(), json!(v));
    }
}

fn put_strings(obj: &mut Map<String, Value>, key: &str, v: Vec<String>) {
    if !v.is_empty() {
        obj.insert(key.into(), json!(v));
    }
}

fn put_map(obj: &mut Map<String, Value>, key: &str, m: BTreeMap<String, String>) {
    if !m.is_empty() {
        obj.insert(key.into(), json!(m));
    }
}

fn put_bytes_map(obj: &mut Map<String, Value>, key: &str, m: BTreeMap<String, Vec<u8>>) {
    if !m.is_empty() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let v: Map<String, Value> = m
            .into_iter()
            .map(|(k, v)| (k, Value::String(b64.encode(v))))
            .collect();
        obj.insert(key.into(), Value::Object(v));
    }
}

fn meta_json(m: Option<pb::ObjectMeta>) -> Value {
    let mut o = Map::new();
    let Some(m) = m else {
        return Value::Object(o);
    };
    put_str(&mut o, "name", m.name);
    put_str(&mut o, "generateName", m.generate_name);
    put_str(&mut o, "namespace", m.namespace);
    put_str(&mut o, "uid", m.uid);
    put_str(&mut o, "resourceVersion", m.resource_version);
    if let Some(g) = m.generation.filter(|g| *g != 0) {
        o.insert("generation".into(), json!(g));
    }
    put_map(&mut o, "labels", m.labels);
    put_map(&mut o, "annotations", m.annotations);
    if !m.owner_references.is_empty() {
        let v = m
            .owner_references
            .into_iter()
            .map(|r| {
                let mut x = Map::new();
                x.insert(
                    "apiVersion".into(),
                    json!(r.api_version.unwrap_or_default()),
                );
                x.insert("kind".into(), json!(r.kind.unwrap_or_default()));
                x.insert("name".into(), json!(r.name.unwrap_or_default()));
                x.insert("uid".into(), json!(r.uid.unwrap_or_default()));
                if let Some(c) = r.controller {
                    x.insert("controller".into(), json!(c));
                }
                if let Some(b) = r.block_owner_deletion {
                    x.insert("blockOwnerDeletion".into(), json!(b));
                }
                Value::Object(x)
            })
            .collect();
        o.insert("ownerReferences".into(), Value::Array(v));
    }
    put_strings(&mut o, "finalizers", m.finalizers);
    Value::Object(o)
}

fn object_reference_json(r: pb::ObjectReference) -> Value {
    let mut o = Map::new();
    put_str(&mut o, "kind", r.kind);
    put_str(&mut o, "namespace", r.namespace);
    put_str(&mut o, "name", r.name);
    put_str(&mut o, "uid", r.uid);
    put_str(&mut o, "apiVersion", r.api_version);
    put_str(&mut o, "resourceVersion", r.resource_version);
    put_str(&mut o, "fieldPath", r.field_path);
    Value::Object(o)
}

fn rules_json(rules: Vec<pb::PolicyRule>) -> Value {
    rules
        .into_iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("verbs".into(), json!(r.verbs));
            put_strings(&mut o, "apiGroups", r.api_groups);
            put_strings(&mut o, "resources", r.resources);
            put_strings(&mut o, "resourceNames", r.resource_names);
            put_strings(&mut o, "nonResourceURLs", r.non_resource_urls);
            Value::Object(o)
        })
        .collect()
}

fn label_selector_json(s: pb::LabelSelector) -> Value {
    let mut o = Map::new();
    put_map(&mut o, "matchLabels", s.match_labels);
    if !s.match_expressions.is_empty() {
        let v = s
            .match_expressions
            .into_iter()
            .map(|e| {
                let mut x = Map::new();
                x.insert("key".into(), json!(e.key.unwrap_or_default()));
                x.insert("operator".into(), json!(e.operator.unwrap_or_default()));
                put_strings(&mut x, "values", e.values);
                Value::Object(x)
            })
            .collect();
        o.insert("matchExpressions".into(), Value::Array(v));
    }
    Value::Object(o)
}

fn subject_json(s: pb::Subject) -> Value {
    let mut o = Map::new();
    o.insert("kind".into(), json!(s.kind.unwrap_or_default()));
    put_str(&mut o, "apiGroup", s.api_group);
    o.insert("name".into(), json!(s.name.unwrap_or_default()));
    put_str(&mut o, "namespace", s.namespace);
    Value::Object(o)
}

// --- protobuf messages (proto2; only the fields read) -------------------------------------------

/// Hand-written prost messages with the upstream field numbers. Public within the crate so the
/// tests (and `auth::review`) can encode and decode them.
pub(crate) mod pb {
    use prost::Message;
    use std::collections::BTreeMap;

    /// `k8s.io.apimachinery.pkg.runtime.TypeMeta`.
    #[derive(Clone, PartialEq, Message)]
    pub struct TypeMeta {
        #[prost(string, optional, tag = "1")]
        pub api_version: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub kind: Option<String>,
    }

    /// `k8s.io.apimachinery.pkg.runtime.Unknown`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Unknown {
        #[prost(message, optional, tag = "1")]
        pub type_meta: Option<TypeMeta>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub raw: Option<Vec<u8>>,
        #[prost(string, optional, tag = "3")]
        pub content_encoding: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub content_type: Option<String>,
    }

    /// `meta.v1.OwnerReference`.
    #[derive(Clone, PartialEq, Message)]
    pub struct OwnerReference {
        #[prost(string, optional, tag = "1")]
        pub kind: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub uid: Option<String>,
        #[prost(string, optional, tag = "5")]
        pub api_version: Option<String>,
        #[prost(bool, optional, tag = "6")]
        pub controller: Option<bool>,
        #[prost(bool, optional, tag = "7")]
        pub block_owner_deletion: Option<bool>,
    }

    /// `meta.v1.ObjectMeta` without selfLink (4), the timestamps (8, 9), deletionGracePeriodSeconds
    /// (10) and managedFields (17), which a client does not set on create.
    #[derive(Clone, PartialEq, Message)]
    pub struct ObjectMeta {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub generate_name: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub namespace: Option<String>,
        #[prost(string, optional, tag = "5")]
        pub uid: Option<String>,
        #[prost(string, optional, tag = "6")]
        pub resource_version: Option<String>,
        #[prost(int64, optional, tag = "7")]
        pub generation: Option<i64>,
        #[prost(btree_map = "string, string", tag = "11")]
        pub labels: BTreeMap<String, String>,
        #[prost(btree_map = "string, string", tag = "12")]
        pub annotations: BTreeMap<String, String>,
        #[prost(message, repeated, tag = "13")]
        pub owner_references: Vec<OwnerReference>,
        #[prost(string, repeated, tag = "14")]
        pub finalizers: Vec<String>,
    }

    /// `meta.v1.LabelSelectorRequirement`.
    #[derive(Clone, PartialEq, Message)]
    pub struct LabelSelectorRequirement {
        #[prost(string, optional, tag = "1")]
        pub key: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub operator: Option<String>,
        #[prost(string, repeated, tag = "3")]
        pub values: Vec<String>,
    }

    /// `meta.v1.LabelSelector`.
    #[derive(Clone, PartialEq, Message)]
    pub struct LabelSelector {
        #[prost(btree_map = "string, string", tag = "1")]
        pub match_labels: BTreeMap<String, String>,
        #[prost(message, repeated, tag = "2")]
        pub match_expressions: Vec<LabelSelectorRequirement>,
    }

    /// `core.v1.NamespaceSpec`.
    #[derive(Clone, PartialEq, Message)]
    pub struct NamespaceSpec {
        #[prost(string, repeated, tag = "1")]
        pub finalizers: Vec<String>,
    }

    /// `core.v1.Namespace` (status, 3, ignored).
    #[derive(Clone, PartialEq, Message)]
    pub struct Namespace {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ObjectMeta>,
        #[prost(message, optional, tag = "2")]
        pub spec: Option<NamespaceSpec>,
    }

    /// `core.v1.ObjectReference`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ObjectReference {
        #[prost(string, optional, tag = "1")]
        pub kind: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub namespace: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub uid: Option<String>,
        #[prost(string, optional, tag = "5")]
        pub api_version: Option<String>,
        #[prost(string, optional, tag = "6")]
        pub resource_version: Option<String>,
        #[prost(string, optional, tag = "7")]
        pub field_path: Option<String>,
    }

    /// `core.v1.LocalObjectReference`.
    #[derive(Clone, PartialEq, Message)]
    pub struct LocalObjectReference {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
    }

    /// `core.v1.ServiceAccount`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ServiceAccount {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ObjectMeta>,
        #[prost(message, repeated, tag = "2")]
        pub secrets: Vec<ObjectReference>,
        #[prost(message, repeated, tag = "3")]
        pub image_pull_secrets: Vec<LocalObjectReference>,
        #[prost(bool, optional, tag = "4")]
        pub automount_service_account_token: Option<bool>,
    }

    /// `core.v1.Secret`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Secret {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ObjectMeta>,
        #[prost(btree_map = "string, bytes", tag = "2")]
        pub data: BTreeMap<String, Vec<u8>>,
        #[prost(string, optional, tag = "3")]
        pub r#type: Option<String>,
        #[prost(btree_map = "string, string", tag = "4")]
        pub string_data: BTreeMap<String, String>,
        #[prost(bool, optional, tag = "5")]
        pub immutable: Option<bool>,
    }

    /// `core.v1.ConfigMap`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ConfigMap {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ObjectMeta>,
        #[prost(btree_map = "string, string", tag = "2")]
        pub data: BTreeMap<String, String>,
        #[prost(btree_map = "string, bytes", tag = "3")]
        pub binary_data: BTreeMap<String, Vec<u8>>,
        #[prost(bool, optional, tag = "4")]
        pub immutable: Option<bool>,
    }

    /// `rbac.v1.PolicyRule`.
    #[derive(Clone, PartialEq, Message)]
    pub struct PolicyRule {
        #[prost(string, repeated, tag = "1")]
        pub verbs: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub api_groups: Vec<String>,
        #[prost(string, repeated, tag = "3")]
        pub resources: Vec<String>,
        #[prost(string, repeated, tag = "4")]
        pub resource_names: Vec<String>,
        #[prost(string, repeated, tag = "5")]
        pub non_resource_urls: Vec<String>,
    }

    /// `rbac.v1.Role`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Role {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ObjectMeta>,
        #[prost(message, repeated, tag = "2")]
        pub rules: Vec<PolicyRule>,
    }

    /// `rbac.v1.AggregationRule`.
    #[derive(Clone, PartialEq, Message)]
    pub struct AggregationRule {
        #[prost(message, repeated, tag = "1")]
        pub cluster_role_selectors: Vec<LabelSelector>,
    }

    /// `rbac.v1.ClusterRole`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ClusterRole {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ObjectMeta>,
        #[prost(message, repeated, tag = "2")]
        pub rules: Vec<PolicyRule>,
        #[prost(message, optional, tag = "3")]
        pub aggregation_rule: Option<AggregationRule>,
    }

    /// `rbac.v1.Subject`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Subject {
        #[prost(string, optional, tag = "1")]
        pub kind: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub api_group: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub namespace: Option<String>,
    }

    /// `rbac.v1.RoleRef`.
    #[derive(Clone, PartialEq, Message)]
    pub struct RoleRef {
        #[prost(string, optional, tag = "1")]
        pub api_group: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub kind: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
    }

    /// `rbac.v1.RoleBinding`; `rbac.v1.ClusterRoleBinding` has the same fields and numbers.
    #[derive(Clone, PartialEq, Message)]
    pub struct RoleBinding {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ObjectMeta>,
        #[prost(message, repeated, tag = "2")]
        pub subjects: Vec<Subject>,
        #[prost(message, optional, tag = "3")]
        pub role_ref: Option<RoleRef>,
    }

    /// `authentication.v1.BoundObjectReference`.
    #[derive(Clone, PartialEq, Message)]
    pub struct BoundObjectReference {
        #[prost(string, optional, tag = "1")]
        pub kind: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub api_version: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub uid: Option<String>,
    }

    /// `authentication.v1.TokenRequestSpec`.
    #[derive(Clone, PartialEq, Message)]
    pub struct TokenRequestSpec {
        #[prost(string, repeated, tag = "1")]
        pub audiences: Vec<String>,
        #[prost(message, optional, tag = "3")]
        pub bound_object_ref: Option<BoundObjectReference>,
        #[prost(int64, optional, tag = "4")]
        pub expiration_seconds: Option<i64>,
    }

    /// `authentication.v1.TokenRequest` (status, 3, ignored).
    #[derive(Clone, PartialEq, Message)]
    pub struct TokenRequest {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ObjectMeta>,
        #[prost(message, optional, tag = "2")]
        pub spec: Option<TokenRequestSpec>,
    }
}

#[cfg(test)]
mod tests;
