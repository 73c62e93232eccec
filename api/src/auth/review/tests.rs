use super::*;
use crate::auth::bootstrap_policy;
use crate::auth::testutil::MemSource;
use std::sync::Arc;

// Bodies captured from the real kubectl 1.32 (`kubectl auth can-i …`, `auth can-i --list`,
// `auth whoami`) against a recording server.
/// `kubectl auth can-i get /version`
const KUBECTL_SSAR_NON_RESOURCE: &str = "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a656374416363657373526576696577122f0a100a0012001a0022002a003200380042001211120f0a082f76657273696f6e12036765741a08080012001a0020001a002200";
/// `kubectl auth can-i update deployments.apps/web --subresource=scale -n prod` (no discovery,
/// so the resource is sent as typed)
const KUBECTL_SSAR_RESOURCE: &str = "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a65637441636365737352657669657712500a100a0012001a0022002a0032003800420012320a300a0470726f6412067570646174651a0022002a106465706c6f796d656e74732e6170707332057363616c653a037765621a08080012001a0020001a002200";
/// `kubectl auth can-i --list -n default`
const KUBECTL_SSRR: &str = "6b3873000a310a17617574686f72697a6174696f6e2e6b38732e696f2f7631121653656c665375626a65637452756c657352657669657712230a100a0012001a0022002a0032003800420012090a0764656661756c741a04180022001a002200";
/// `kubectl auth whoami`
const KUBECTL_SSR: &str = "6b3873000a2d0a1861757468656e7469636174696f6e2e6b38732e696f2f7631121153656c665375626a656374526576696577121a0a100a0012001a0022002a0032003800420012060a040a0012001a002200";

const PB: &str = "application/vnd.kubernetes.protobuf";

fn authz() -> Authorizer {
    let source = MemSource::new();
    for obj in bootstrap_policy() {
        let storage = match obj["kind"].as_str().unwrap() {
            "ClusterRole" => "authorization/clusterroles",
            _ => "authorization/clusterrolebindings",
        };
        source.put(storage, obj);
    }
    source.put(
        "authorization/roles",
        json!({"kind": "Role", "metadata": {"namespace": "default", "name": "ship-reader"},
            "rules": [{"apiGroups": [""], "resources": ["ships"], "verbs": ["get", "list"]}]}),
    );
    source.put(
        "authorization/rolebindings",
        json!({"kind": "RoleBinding", "metadata": {"namespace": "default", "name": "b"},
            "roleRef": {"kind": "Role", "name": "ship-reader"},
            "subjects": [{"kind": "User", "name": "alice"}]}),
    );
    Authorizer::new(Arc::clone(&source) as Arc<dyn crate::auth::ObjectSource>)
}

fn alice() -> UserInfo {
    UserInfo {
        name: "alice".into(),
        groups: vec!["system:authenticated".into()],
        ..UserInfo::default()
    }
}

/// Encoders for hand-built protobuf (as Go's gogo marshalers write: every non-pointer field,
/// empty or not, in field order).
fn tag(field: u32, wire: u8) -> Vec<u8> {
    varint(((field << 3) | wire as u32) as u64)
}
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}
fn bytes_field(field: u32, data: &[u8]) -> Vec<u8> {
    let mut out = tag(field, 2);
    out.extend(varint(data.len() as u64));
    out.extend_from_slice(data);
    out
}
fn str_field(field: u32, s: &str) -> Vec<u8> {
    bytes_field(field, s.as_bytes())
}
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = [str_field(1, api_version), str_field(2, kind)].concat();
    let unknown = [
        bytes_field(1, &type_meta),
        bytes_field(2, raw),
        str_field(3, ""),
        str_field(4, ""),
    ]
    .concat();
    [b"k8s\0".to_vec(), unknown].concat()
}

fn ssar_raw(ns: &str, verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Vec<u8> {
    let time = [tag(1, 0), varint(0), tag(2, 0), varint(0)].concat();
    let meta = [
        str_field(1, ""),
        str_field(2, ""),
        str_field(3, ""),
        str_field(4, ""),
        str_field(5, ""),
        str_field(6, ""),
        tag(7, 0),
        varint(0),
        bytes_field(8, &time),
    ]
    .concat();
    let attrs = [
        str_field(1, ns),
        str_field(2, verb),
        str_field(3, group),
        str_field(4, ""),
        str_field(5, resource),
        str_field(6, sub),
        str_field(7, name),
    ]
    .concat();
    let spec = bytes_field(1, &attrs);
    let status = [
        tag(1, 0),
        varint(0),
        str_field(2, ""),
        str_field(3, ""),
        tag(4, 0),
        varint(0),
    ]
    .concat();
    [
        bytes_field(1, &meta),
        bytes_field(2, &spec),
        bytes_field(3, &status),
    ]
    .concat()
}

#[test]
fn protobuf_access_review_as_go_writes_it() {
    let authz = authz();
    let body = envelope(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        &ssar_raw("default", "get", "", "ships", "", "s1"),
    );
    let out = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        PB,
        &body,
        &alice(),
        &authz,
    )
    .unwrap();
    assert_eq!(out["apiVersion"], "authorization.k8s.io/v1");
    assert_eq!(out["kind"], "SelfSubjectAccessReview");
    assert_eq!(
        out["spec"]["resourceAttributes"],
        json!({"namespace": "default", "verb": "get", "resource": "ships", "name": "s1"})
    );
    assert_eq!(out["status"]["allowed"], true);
    assert!(out["status"]["reason"]
        .as_str()
        .unwrap()
        .contains("ship-reader"));

    let body = envelope(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        &ssar_raw("default", "delete", "", "ships", "", ""),
    );
    let out = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        PB,
        &body,
        &alice(),
        &authz,
    )
    .unwrap();
    assert_eq!(out["status"], json!({"allowed": false}));
}

#[test]
fn real_kubectl_bodies() {
    let authz = authz();
    let body = hex::decode(KUBECTL_SSAR_NON_RESOURCE).unwrap();
    let out = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        PB,
        &body,
        &alice(),
        &authz,
    )
    .unwrap();
    assert_eq!(
        out["spec"],
        json!({"nonResourceAttributes": {"path": "/version", "verb": "get"}})
    );
    assert_eq!(out["status"]["allowed"], true);

    let body = hex::decode(KUBECTL_SSAR_RESOURCE).unwrap();
    let out = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        PB,
        &body,
        &alice(),
        &authz,
    )
    .unwrap();
    assert_eq!(
        out["spec"]["resourceAttributes"],
        json!({"namespace": "prod", "verb": "update", "resource": "deployments.apps",
            "subresource": "scale", "name": "web"})
    );
    assert_eq!(out["status"]["allowed"], false);

    let body = hex::decode(KUBECTL_SSRR).unwrap();
    let out = handle_review(
        ReviewKind::SelfSubjectRulesReview,
        PB,
        &body,
        &alice(),
        &authz,
    )
    .unwrap();
    assert_eq!(out["spec"], json!({"namespace": "default"}));
    assert_eq!(out["status"]["incomplete"], false);
    let rules = out["status"]["resourceRules"].as_array().unwrap();
    assert!(rules
        .contains(&json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["ships"]})));
    assert!(!out["status"]["nonResourceRules"]
        .as_array()
        .unwrap()
        .is_empty());

    let body = hex::decode(KUBECTL_SSR).unwrap();
    let mut user = alice();
    user.uid = "u-1".into();
    let out = handle_review(ReviewKind::SelfSubjectReview, PB, &body, &user, &authz).unwrap();
    assert_eq!(out["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(
        out["status"],
        json!({"userInfo": {"username": "alice", "uid": "u-1", "groups": ["system:authenticated"]}})
    );
}

#[test]
fn json_bodies() {
    let authz = authz();
    let body = br#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview",
        "spec":{"resourceAttributes":{"namespace":"default","verb":"list","resource":"ships"}}}"#;
    let out = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        "application/json; charset=utf-8",
        body,
        &alice(),
        &authz,
    )
    .unwrap();
    assert_eq!(out["status"]["allowed"], true);
    assert_eq!(out["metadata"], json!({"creationTimestamp": null}));

    let body = br#"{"spec":{}}"#;
    let err = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        "application/json",
        body,
        &alice(),
        &authz,
    )
    .unwrap_err();
    assert_eq!(err.code(), 422);

    let body = br#"{"apiVersion":"v1","kind":"Pod"}"#;
    let err = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        "application/json",
        body,
        &alice(),
        &authz,
    )
    .unwrap_err();
    assert_eq!(err.code(), 400);
    assert_eq!(
        err.to_string(),
        r#"the body is "v1" "Pod", but this endpoint takes "authorization.k8s.io/v1" "SelfSubjectAccessReview""#
    );
}

#[test]
fn bad_bodies_and_media_types() {
    let authz = authz();
    let u = alice();
    let err = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        "application/yaml",
        b"a: b",
        &u,
        &authz,
    )
    .unwrap_err();
    assert_eq!(err.code(), 415);
    let err = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        PB,
        b"\x0a\x00",
        &u,
        &authz,
    )
    .unwrap_err();
    assert_eq!(err.code(), 400);
    assert!(err.to_string().contains("magic"));
    let err = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        PB,
        b"k8s\0\xff\xff",
        &u,
        &authz,
    )
    .unwrap_err();
    assert_eq!(err.code(), 400);
    // A rules review sent to the access review endpoint.
    let body = hex::decode(KUBECTL_SSRR).unwrap();
    let err =
        handle_review(ReviewKind::SelfSubjectAccessReview, PB, &body, &u, &authz).unwrap_err();
    assert_eq!(err.code(), 400);
    assert!(err.to_string().contains("SelfSubjectRulesReview"));
    let err = handle_review(
        ReviewKind::SelfSubjectAccessReview,
        "application/json",
        b"{",
        &u,
        &authz,
    )
    .unwrap_err();
    assert_eq!(err.code(), 400);
    let body = envelope(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        b"\x12\x05\x0a\x03\xff\xff",
    );
    let err =
        handle_review(ReviewKind::SelfSubjectAccessReview, PB, &body, &u, &authz).unwrap_err();
    assert_eq!(err.code(), 400);
    assert_eq!(
        ReviewKind::from_resource("authorization.k8s.io", "selfsubjectrulesreviews"),
        Some(ReviewKind::SelfSubjectRulesReview)
    );
}
