use super::pb;
use super::*;
use std::collections::BTreeMap;

/// Wraps an encoded message in the magic and a `runtime.Unknown`, as client-go does.
fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = pb::Unknown {
        type_meta: Some(pb::TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [MAGIC.to_vec(), unknown.encode_to_vec()].concat()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn map(v: &[(&str, &str)]) -> BTreeMap<String, String> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Metadata as Go's marshaler writes it for `kubectl create`: every non-pointer string, empty or
/// not (timestamps, field 8, are added by the callers as raw bytes where it matters).
fn meta(name: &str, namespace: &str) -> pb::ObjectMeta {
    pb::ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(namespace),
        uid: s(""),
        resource_version: s(""),
        generation: Some(0),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        owner_references: vec![],
        finalizers: vec![],
    }
}

fn decode(api_version: &str, kind: &str, raw: Vec<u8>) -> Value {
    decode_object(&envelope(api_version, kind, raw)).unwrap()
}

#[test]
fn namespace_with_go_style_empty_fields_and_unknown_fields() {
    let mut raw = pb::Namespace {
        metadata: Some(meta("team", "")),
        spec: Some(pb::NamespaceSpec { finalizers: vec![] }),
    }
    .encode_to_vec();
    // status (field 3) as an empty message, which Go always writes; skipped as unknown.
    raw.extend_from_slice(b"\x1a\x00");
    assert_eq!(
        decode("v1", "Namespace", raw),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}, "spec": {}})
    );
    let raw = pb::Namespace {
        metadata: Some(meta("x", "")),
        spec: Some(pb::NamespaceSpec {
            finalizers: strings(&["kubernetes"]),
        }),
    }
    .encode_to_vec();
    assert_eq!(
        decode("v1", "Namespace", raw)["spec"],
        json!({"finalizers": ["kubernetes"]})
    );
}

#[test]
fn object_meta_all_fields() {
    // creationTimestamp (8) as an empty Time message, which Go writes: ignored.
    let mut m = pb::ObjectMeta {
        name: s("cm"),
        generate_name: s("cm-"),
        namespace: s("team"),
        uid: s("u-1"),
        resource_version: s("42"),
        generation: Some(3),
        labels: map(&[("app", "web")]),
        annotations: map(&[("note", "hi")]),
        owner_references: vec![pb::OwnerReference {
            kind: s("Fleet"),
            name: s("f"),
            uid: s("u-2"),
            api_version: s("tugboat.io/v1"),
            controller: Some(true),
            block_owner_deletion: None,
        }],
        finalizers: strings(&["example.com/f"]),
    }
    .encode_to_vec();
    m.extend_from_slice(b"\x42\x00");
    let raw = [b"\x0a".to_vec(), vec![m.len() as u8], m].concat();
    assert_eq!(
        decode("v1", "ConfigMap", raw)["metadata"],
        json!({
            "name": "cm", "generateName": "cm-", "namespace": "team", "uid": "u-1",
            "resourceVersion": "42", "generation": 3,
            "labels": {"app": "web"}, "annotations": {"note": "hi"},
            "ownerReferences": [{"apiVersion": "tugboat.io/v1", "kind": "Fleet", "name": "f",
                                 "uid": "u-2", "controller": true}],
            "finalizers": ["example.com/f"],
        })
    );
}

#[test]
fn service_account() {
    let raw = pb::ServiceAccount {
        metadata: Some(meta("bot", "team")),
        secrets: vec![pb::ObjectReference {
            kind: s(""),
            namespace: s(""),
            name: s("bot-token"),
            uid: s(""),
            api_version: s(""),
            resource_version: s(""),
            field_path: s(""),
        }],
        image_pull_secrets: vec![pb::LocalObjectReference { name: s("regcred") }],
        automount_service_account_token: Some(false),
    }
    .encode_to_vec();
    assert_eq!(
        decode("v1", "ServiceAccount", raw),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "bot", "namespace": "team"},
            "secrets": [{"name": "bot-token"}],
            "imagePullSecrets": [{"name": "regcred"}],
            "automountServiceAccountToken": false,
        })
    );
    // The plain `kubectl create serviceaccount`: no pointer fields.
    let raw = pb::ServiceAccount {
        metadata: Some(meta("bot", "")),
        secrets: vec![],
        image_pull_secrets: vec![],
        automount_service_account_token: None,
    }
    .encode_to_vec();
    assert_eq!(
        decode("v1", "ServiceAccount", raw),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot"}})
    );
}

#[test]
fn secret_bytes_become_base64() {
    let raw = pb::Secret {
        metadata: Some(meta("s", "team")),
        data: [
            ("bin".to_string(), vec![0u8, 0xff, 1]),
            ("pw".to_string(), b"hunter2".to_vec()),
        ]
        .into_iter()
        .collect(),
        r#type: s("Opaque"),
        string_data: map(&[("plain", "text")]),
        immutable: Some(true),
    }
    .encode_to_vec();
    assert_eq!(
        decode("v1", "Secret", raw),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "team"},
            "data": {"bin": "AP8B", "pw": "aHVudGVyMg=="},
            "stringData": {"plain": "text"},
            "type": "Opaque",
            "immutable": true,
        })
    );
    // An empty value is kept (it is a key with zero bytes).
    let raw = pb::Secret {
        metadata: Some(meta("e", "")),
        data: [("empty".to_string(), vec![])].into_iter().collect(),
        r#type: s("kubernetes.io/tls"),
        string_data: BTreeMap::new(),
        immutable: None,
    }
    .encode_to_vec();
    let v = decode("v1", "Secret", raw);
    assert_eq!(v["data"], json!({"empty": ""}));
    assert_eq!(v["type"], "kubernetes.io/tls");
    assert!(v.get("immutable").is_none() && v.get("stringData").is_none());
}

#[test]
fn config_map() {
    let raw = pb::ConfigMap {
        metadata: Some(meta("cfg", "team")),
        data: map(&[("a", "1"), ("b", "two")]),
        binary_data: [("blob".to_string(), b"\x01\x02".to_vec())]
            .into_iter()
            .collect(),
        immutable: Some(false),
    }
    .encode_to_vec();
    assert_eq!(
        decode("v1", "ConfigMap", raw),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "team"},
            "data": {"a": "1", "b": "two"},
            "binaryData": {"blob": "AQI="},
            "immutable": false,
        })
    );
}

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> pb::PolicyRule {
    pb::PolicyRule {
        verbs: strings(verbs),
        api_groups: strings(groups),
        resources: strings(resources),
        resource_names: vec![],
        non_resource_urls: vec![],
    }
}

#[test]
fn role_and_cluster_role() {
    let raw = pb::Role {
        metadata: Some(meta("reader", "team")),
        rules: vec![
            rule(&["get", "list"], &[""], &["ships"]),
            pb::PolicyRule {
                resource_names: strings(&["one"]),
                ..rule(&["delete"], &["tugboat.io"], &["fleets"])
            },
        ],
    }
    .encode_to_vec();
    assert_eq!(
        decode("rbac.authorization.k8s.io/v1", "Role", raw),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "reader", "namespace": "team"},
            "rules": [
                {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["ships"]},
                {"verbs": ["delete"], "apiGroups": ["tugboat.io"], "resources": ["fleets"],
                 "resourceNames": ["one"]},
            ],
        })
    );
    let raw = pb::ClusterRole {
        metadata: Some(meta("agg", "")),
        rules: vec![pb::PolicyRule {
            non_resource_urls: strings(&["/healthz"]),
            ..rule(&["get"], &[], &[])
        }],
        aggregation_rule: Some(pb::AggregationRule {
            cluster_role_selectors: vec![pb::LabelSelector {
                match_labels: map(&[("rbac.example.com/aggregate", "true")]),
                match_expressions: vec![pb::LabelSelectorRequirement {
                    key: s("tier"),
                    operator: s("In"),
                    values: strings(&["a", "b"]),
                }],
            }],
        }),
    }
    .encode_to_vec();
    assert_eq!(
        decode("rbac.authorization.k8s.io/v1", "ClusterRole", raw),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "agg"},
            "rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}],
            "aggregationRule": {"clusterRoleSelectors": [{
                "matchLabels": {"rbac.example.com/aggregate": "true"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
            }]},
        })
    );
    // No rules at all: `rules` is still present (it has no omitempty).
    let raw = pb::Role {
        metadata: Some(meta("empty", "")),
        rules: vec![],
    }
    .encode_to_vec();
    assert_eq!(
        decode("rbac.authorization.k8s.io/v1", "Role", raw)["rules"],
        json!([])
    );
}

#[test]
fn role_bindings() {
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        let raw = pb::RoleBinding {
            metadata: Some(meta("view-bot", "")),
            subjects: vec![
                pb::Subject {
                    kind: s("ServiceAccount"),
                    api_group: s(""),
                    name: s("bot"),
                    namespace: s("team"),
                },
                pb::Subject {
                    kind: s("User"),
                    api_group: s("rbac.authorization.k8s.io"),
                    name: s("alice"),
                    namespace: s(""),
                },
            ],
            role_ref: Some(pb::RoleRef {
                api_group: s("rbac.authorization.k8s.io"),
                kind: s("ClusterRole"),
                name: s("view"),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            decode("rbac.authorization.k8s.io/v1", kind, raw),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
                "metadata": {"name": "view-bot"},
                "subjects": [
                    {"kind": "ServiceAccount", "name": "bot", "namespace": "team"},
                    {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"},
                ],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "view"},
            })
        );
    }
}

#[test]
fn token_request() {
    let raw = pb::TokenRequest {
        metadata: Some(meta("", "")),
        spec: Some(pb::TokenRequestSpec {
            audiences: strings(&["vault"]),
            bound_object_ref: Some(pb::BoundObjectReference {
                kind: s("Secret"),
                api_version: s("v1"),
                name: s("s"),
                uid: s(""),
            }),
            expiration_seconds: Some(600),
        }),
    }
    .encode_to_vec();
    assert_eq!(
        decode("authentication.k8s.io/v1", "TokenRequest", raw),
        json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {},
            "spec": {"audiences": ["vault"], "expirationSeconds": 600,
                     "boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "s"}},
        })
    );
    // What `kubectl create token bot` sends: an empty spec.
    let raw = pb::TokenRequest {
        metadata: Some(meta("", "")),
        spec: Some(pb::TokenRequestSpec {
            audiences: vec![],
            bound_object_ref: None,
            expiration_seconds: None,
        }),
    }
    .encode_to_vec();
    assert_eq!(
        decode("authentication.k8s.io/v1", "TokenRequest", raw)["spec"],
        json!({"audiences": []})
    );
}

#[test]
fn refusals() {
    // Unknown kind: 415 naming it.
    let body = envelope("apps/v1", "Deployment", vec![]);
    let err = ApiError::from(decode_object(&body).unwrap_err());
    assert_eq!(err.code(), 415);
    let msg = err.to_string();
    assert!(msg.contains("\"apps/v1\" \"Deployment\""), "{msg}");
    assert!(
        msg.contains("protobuf bodies are accepted for v1 Namespace"),
        "{msg}"
    );
    assert!(msg.contains("send application/json"), "{msg}");
    // A known kind under another version is not accepted either.
    let body = envelope("rbac.authorization.k8s.io/v1beta1", "Role", vec![]);
    assert_eq!(
        ApiError::from(decode_object(&body).unwrap_err()).code(),
        415
    );
    // No magic.
    let err = decode_object(b"\x0a\x00").unwrap_err();
    assert!(matches!(err, ProtobufError::MissingMagic));
    assert_eq!(ApiError::from(err).code(), 400);
    // Not an envelope.
    let err = decode_object(b"k8s\0\xff\xff").unwrap_err();
    assert!(matches!(err, ProtobufError::Envelope(_)), "{err}");
    assert_eq!(ApiError::from(err).code(), 400);
    // Compressed.
    let unknown = pb::Unknown {
        type_meta: Some(pb::TypeMeta {
            api_version: s("v1"),
            kind: s("Secret"),
        }),
        raw: Some(vec![]),
        content_encoding: s("gzip"),
        content_type: None,
    };
    let body = [MAGIC.to_vec(), unknown.encode_to_vec()].concat();
    assert!(matches!(
        decode_object(&body).unwrap_err(),
        ProtobufError::ContentEncoding(e) if e == "gzip"
    ));
    // A truncated message, and a string that is not UTF-8.
    for raw in [
        b"\x0a\x05\x0a\x03ab".to_vec(),
        b"\x0a\x04\x0a\x02\xff\xfe".to_vec(),
    ] {
        let err = decode_object(&envelope("v1", "Secret", raw)).unwrap_err();
        assert!(
            matches!(&err, ProtobufError::Message { kind, .. } if kind == "Secret"),
            "{err}"
        );
        let err = ApiError::from(err);
        assert_eq!(err.code(), 400);
        assert!(err.to_string().contains("does not decode as a Secret"));
    }
    // Envelope with no type at all.
    let err = decode_object(&[MAGIC.to_vec(), vec![0x12, 0x00]].concat()).unwrap_err();
    assert!(
        err.to_string().contains("without apiVersion and kind"),
        "{err}"
    );
}

#[test]
fn envelope_fields() {
    let body = envelope("v1", "Secret", b"\x01\x02".to_vec());
    assert_eq!(
        decode_envelope(&body).unwrap(),
        Envelope {
            api_version: "v1".into(),
            kind: "Secret".into(),
            raw: vec![1, 2],
        }
    );
    assert_eq!(
        decode_envelope(MAGIC).unwrap(),
        Envelope::default(),
        "an empty envelope decodes to empty fields"
    );
}
