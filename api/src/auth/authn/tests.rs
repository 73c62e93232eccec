use super::*;
use crate::auth::jwt::tests::test_ca;
use crate::auth::testutil::MemSource;
use http::{HeaderMap, HeaderValue};

const NOW: i64 = 1_700_000_000;

fn setup(anonymous: bool) -> (Arc<MemSource>, Authenticator) {
    let (key_pem, ca_der, _) = test_ca();
    let source = MemSource::new();
    let authn = Authenticator::new(
        ca_der,
        JwtKey::from_pem(&key_pem).unwrap(),
        anonymous,
        source.clone(),
    );
    (source, authn)
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn sa(ns: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"namespace": ns, "name": name, "uid": uid}})
}

fn token_secret(ns: &str, name: &str, sa_name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"),
            "annotations": {"kubernetes.io/service-account.name": sa_name}}})
}

fn token_of(secret: &Value) -> String {
    String::from_utf8(
        STANDARD
            .decode(secret["data"]["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn client_certificate_gives_cn_and_o() {
    let dir = tempfile::tempdir().unwrap();
    let paths = tugboat_pki::ensure_node_pki(
        dir.path(),
        &tugboat_pki::NodeIdentity {
            name: "n1".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let cert = tugboat_pki::issue_client_cert(
        &paths,
        "alice",
        &["ops-team".to_string(), "dev".to_string()],
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let der = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, authn) = setup(false);
    let user = authn.authenticate(&HeaderMap::new(), Some(&der)).unwrap();
    assert_eq!(user.name, "alice");
    assert_eq!(user.groups, ["ops-team", "dev", "system:authenticated"]);

    // The admin certificate made by the PKI is in system:masters.
    let admin = std::fs::read(&paths.admin_cert).unwrap();
    let der = rustls_pemfile::certs(&mut &admin[..])
        .next()
        .unwrap()
        .unwrap();
    let user = authn.authenticate(&bearer("ignored"), Some(&der)).unwrap();
    assert_eq!(user.name, "admin");
    assert!(user.in_group("system:masters"));

    assert!(matches!(
        authn.authenticate(&HeaderMap::new(), Some(b"junk")),
        Err(ApiError::Unauthorized)
    ));
}

#[test]
fn anonymous_or_unauthorized_without_credentials() {
    let (_, authn) = setup(true);
    let user = authn.authenticate(&HeaderMap::new(), None).unwrap();
    assert_eq!(user.name, "system:anonymous");
    assert_eq!(user.groups, ["system:unauthenticated"]);
    // Basic auth is not ours: treated as no credentials.
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic YTpi"),
    );
    assert_eq!(
        authn.authenticate(&h, None).unwrap().name,
        "system:anonymous"
    );

    let (_, authn) = setup(false);
    assert!(matches!(
        authn.authenticate(&HeaderMap::new(), None),
        Err(ApiError::Unauthorized)
    ));
    // A bad token never falls back to anonymous.
    let (_, authn) = setup(true);
    assert!(matches!(
        authn.authenticate(&bearer("nope"), None),
        Err(ApiError::Unauthorized)
    ));
}

#[test]
fn opaque_service_account_token_via_index() {
    let (source, authn) = setup(false);
    let account = sa("default", "bot", "sa-uid-1");
    source.put("core/serviceaccounts", account.clone());
    let mut secret = token_secret("default", "bot-token", "bot");
    assert!(authn.fill_service_account_token(&mut secret, Some(&account)));
    assert!(!authn.fill_service_account_token(&mut secret, Some(&account)));
    assert_eq!(
        secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"],
        "sa-uid-1"
    );
    assert_eq!(secret["data"]["namespace"], STANDARD.encode("default"));
    let ca = String::from_utf8(
        STANDARD
            .decode(secret["data"]["ca.crt"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----\n"));
    let token = token_of(&secret);
    assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), 32);
    assert_eq!(
        sa_token_index(&secret),
        vec![hex::encode(Sha256::digest(token.as_bytes()))]
    );
    source.put("core/secrets", secret.clone());

    let user = authn.authenticate(&bearer(&token), None).unwrap();
    assert_eq!(user.name, "system:serviceaccount:default:bot");
    assert_eq!(user.uid, "sa-uid-1");
    assert_eq!(
        user.groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ]
    );
    assert!(*source.index_calls.lock().unwrap() >= 1);
    assert_eq!(
        *source.list_secret_calls.lock().unwrap(),
        0,
        "must never scan secrets"
    );

    // The ServiceAccount re-created with another uid: the old token is dead.
    source.put("core/serviceaccounts", sa("default", "bot", "sa-uid-2"));
    assert!(matches!(
        authn.authenticate(&bearer(&token), None),
        Err(ApiError::Unauthorized)
    ));
    // Deleted: dead too.
    source.remove("core/serviceaccounts", "default", "bot");
    assert!(authn.authenticate(&bearer(&token), None).is_err());
    assert!(authn.authenticate(&bearer("other-token"), None).is_err());
}

#[test]
fn index_ignores_other_secret_types() {
    let plain = json!({"type": "Opaque", "data": {"token": STANDARD.encode("x")}});
    assert!(sa_token_index(&plain).is_empty());
    for ty in SA_TOKEN_TYPES {
        let s = json!({"type": ty, "data": {"token": STANDARD.encode("x")}});
        assert_eq!(sa_token_index(&s).len(), 1);
    }
    let empty = json!({"type": "kubernetes.io/service-account-token", "data": {}});
    assert!(sa_token_index(&empty).is_empty());
}

fn now_ts() -> jiff::Timestamp {
    jiff::Timestamp::from_second(NOW).unwrap()
}

#[test]
fn token_request_issues_a_working_jwt() {
    let (source, authn) = setup(false);
    source.put("core/serviceaccounts", sa("ns1", "robot", "r-uid"));
    let out = authn
        .token_request("ns1", "robot", &json!({"spec": {}}), now_ts())
        .unwrap();
    assert_eq!(out["kind"], "TokenRequest");
    assert_eq!(out["spec"]["expirationSeconds"], 3600);
    assert_eq!(out["status"]["expirationTimestamp"], "2023-11-14T23:13:20Z");
    let token = out["status"]["token"].as_str().unwrap();
    let user = authn
        .authenticate_at(&bearer(token), None, NOW + 10)
        .unwrap();
    assert_eq!(user.name, "system:serviceaccount:ns1:robot");
    assert_eq!(user.uid, "r-uid");
    assert!(user.extra[CREDENTIAL_ID_EXTRA][0].starts_with("JTI="));
    // Expired.
    assert!(authn
        .authenticate_at(&bearer(token), None, NOW + 3600)
        .is_err());
    // Tampered.
    let mut t = token.to_string();
    t.pop();
    t.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(authn.authenticate_at(&bearer(&t), None, NOW + 10).is_err());
    // SA gone.
    source.remove("core/serviceaccounts", "ns1", "robot");
    assert!(authn
        .authenticate_at(&bearer(token), None, NOW + 10)
        .is_err());
}

#[test]
fn token_request_audience_and_lifetime() {
    let (source, authn) = setup(false);
    source.put("core/serviceaccounts", sa("ns1", "robot", "r-uid"));
    let out = authn
        .token_request(
            "ns1",
            "robot",
            &json!({"spec": {"audiences": ["vault"], "expirationSeconds": 999999}}),
            now_ts(),
        )
        .unwrap();
    assert_eq!(out["spec"]["expirationSeconds"], MAX_TOKEN_SECONDS);
    let token = out["status"]["token"].as_str().unwrap();
    // Audience "vault" is not the apiserver's.
    assert!(authn.authenticate_at(&bearer(token), None, NOW).is_err());
    let vault = setup(false).1; // another key: still refused
    assert!(vault.authenticate_at(&bearer(token), None, NOW).is_err());

    let err = authn
        .token_request(
            "ns1",
            "robot",
            &json!({"spec": {"expirationSeconds": 60}}),
            now_ts(),
        )
        .unwrap_err();
    assert_eq!(err.code(), 422);
    assert!(err.status()["message"]
        .as_str()
        .unwrap()
        .contains("spec.expirationSeconds"));
    let err = authn
        .token_request("ns1", "nobody", &json!({}), now_ts())
        .unwrap_err();
    assert_eq!(err.code(), 404);
}

#[test]
fn bound_token_dies_with_its_secret() {
    let (source, authn) = setup(false);
    source.put("core/serviceaccounts", sa("ns1", "robot", "r-uid"));
    source.put(
        "core/secrets",
        json!({"metadata": {"namespace": "ns1", "name": "s1", "uid": "s-uid"}}),
    );
    let out = authn
        .token_request(
            "ns1",
            "robot",
            &json!({"spec": {"boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "s1"}}}),
            now_ts(),
        )
        .unwrap();
    let token = out["status"]["token"].as_str().unwrap();
    assert!(authn.authenticate_at(&bearer(token), None, NOW).is_ok());
    source.remove("core/secrets", "ns1", "s1");
    assert!(authn.authenticate_at(&bearer(token), None, NOW).is_err());
    let err = authn
        .token_request(
            "ns1",
            "robot",
            &json!({"spec": {"boundObjectRef": {"kind": "Pod", "name": "p"}}}),
            now_ts(),
        )
        .unwrap_err();
    assert_eq!(err.code(), 422);
}

#[test]
fn foreign_issuer_is_refused() {
    let (key_pem, ca_der, _) = test_ca();
    let key = JwtKey::from_pem(&key_pem).unwrap();
    let source = MemSource::new();
    source.put("core/serviceaccounts", sa("ns1", "robot", "r-uid"));
    let claims = Claims {
        iss: "https://elsewhere".into(),
        sub: "system:serviceaccount:ns1:robot".into(),
        aud: vec!["tugboat".into()],
        exp: NOW + 100,
        nbf: NOW,
        iat: NOW,
        jti: String::new(),
        kubernetes: Some(KubernetesClaim {
            namespace: "ns1".into(),
            serviceaccount: ObjectRefClaim {
                name: "robot".into(),
                uid: "r-uid".into(),
            },
            secret: None,
            ship: None,
        }),
    };
    let token = key.issue(&claims).unwrap();
    let authn = Authenticator::new(ca_der, key, false, source);
    assert!(authn.authenticate_at(&bearer(&token), None, NOW).is_err());
}
