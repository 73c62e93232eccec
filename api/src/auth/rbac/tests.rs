use super::*;
use crate::auth::bootstrap_policy;
use crate::auth::testutil::MemSource;
use serde_json::json;

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..UserInfo::default()
    }
}

fn storage_of(obj: &Value) -> &'static str {
    match obj["kind"].as_str().unwrap() {
        "Role" => ROLES,
        "ClusterRole" => CLUSTER_ROLES,
        "RoleBinding" => ROLE_BINDINGS,
        "ClusterRoleBinding" => CLUSTER_ROLE_BINDINGS,
        k => panic!("{k}"),
    }
}

fn with_bootstrap() -> (Arc<MemSource>, Authorizer) {
    let source = MemSource::new();
    for obj in bootstrap_policy() {
        source.put(storage_of(&obj), obj);
    }
    let authz = Authorizer::new(source.clone());
    (source, authz)
}

fn put(source: &MemSource, obj: Value) {
    source.put(storage_of(&obj), obj);
}

fn get(ns: &str, res: &str, name: &str) -> Attributes {
    Attributes::resource("get", "", res, "", ns, name)
}

/// The seed's example: ship-reader Role bound to alice and a ServiceAccount.
fn seed_example(source: &MemSource) {
    put(
        source,
        json!({"apiVersion": "authorization/v1", "kind": "Role",
        "metadata": {"namespace": "default", "name": "ship-reader"},
        "rules": [{"apiGroups": [""], "resources": ["ships"], "verbs": ["get", "list", "watch"]}]}),
    );
    put(
        source,
        json!({"apiVersion": "authorization/v1", "kind": "RoleBinding",
        "metadata": {"namespace": "default", "name": "ship-reader-binding"},
        "roleRef": {"apiGroup": "authorization", "kind": "Role", "name": "ship-reader"},
        "subjects": [{"kind": "User", "name": "alice"},
                     {"kind": "ServiceAccount", "name": "my-service-account"}]}),
    );
    put(
        source,
        json!({"apiVersion": "authorization/v1", "kind": "ClusterRole",
        "metadata": {"name": "node-reader"},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]}),
    );
    put(
        source,
        json!({"apiVersion": "authorization/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "node-reader-binding"},
        "roleRef": {"apiGroup": "authorization", "kind": "ClusterRole", "name": "node-reader"},
        "subjects": [{"kind": "Group", "name": "ops-team"}]}),
    );
}

#[test]
fn role_binding_allows_and_denies() {
    let (source, authz) = with_bootstrap();
    seed_example(&source);
    let alice = user("alice", &["system:authenticated"]);
    let d = authz.authorize(&alice, &get("default", "ships", "x"));
    assert!(d.allowed);
    assert_eq!(
        d.reason,
        r#"RBAC: allowed by RoleBinding "ship-reader-binding/default" of Role "ship-reader" to User "alice""#
    );
    assert!(
        authz
            .authorize(
                &alice,
                &Attributes::resource("list", "", "ships", "", "default", "")
            )
            .allowed
    );
    assert!(!authz.authorize(&alice, &get("other", "ships", "x")).allowed);
    assert!(
        !authz
            .authorize(
                &alice,
                &Attributes::resource("delete", "", "ships", "", "default", "x")
            )
            .allowed
    );
    assert!(
        !authz
            .authorize(&alice, &get("default", "ships/status", "x"))
            .allowed
    );
    assert!(
        !authz
            .authorize(
                &alice,
                &Attributes::resource("get", "", "ships", "status", "default", "x")
            )
            .allowed
    );
    assert!(!authz.authorize(&alice, &get("", "nodes", "n1")).allowed);
    // All namespaces: RoleBindings do not count.
    assert!(
        !authz
            .authorize(
                &alice,
                &Attributes::resource("list", "", "ships", "", "", "")
            )
            .allowed
    );

    let sa = user(
        "system:serviceaccount:default:my-service-account",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated",
        ],
    );
    assert!(authz.authorize(&sa, &get("default", "ships", "x")).allowed);
    let other_sa = user("system:serviceaccount:other:my-service-account", &[]);
    assert!(
        !authz
            .authorize(&other_sa, &get("default", "ships", "x"))
            .allowed
    );

    let ops = user("bob", &["ops-team", "system:authenticated"]);
    assert!(authz.authorize(&ops, &get("", "nodes", "n1")).allowed);
    assert!(!authz.authorize(&ops, &get("default", "ships", "x")).allowed);

    // Changing the role takes effect at once (new object, no stale cache).
    put(
        &source,
        json!({"apiVersion": "authorization/v1", "kind": "Role",
        "metadata": {"namespace": "default", "name": "ship-reader"},
        "rules": [{"apiGroups": [""], "resources": ["ships"], "verbs": ["delete"]}]}),
    );
    assert!(
        !authz
            .authorize(&alice, &get("default", "ships", "x"))
            .allowed
    );
    assert!(
        authz
            .authorize(
                &alice,
                &Attributes::resource("delete", "", "ships", "", "default", "x")
            )
            .allowed
    );
}

#[test]
fn resource_names_subresources_and_wildcards() {
    let (source, authz) = with_bootstrap();
    put(
        &source,
        json!({"kind": "Role", "metadata": {"namespace": "ns", "name": "r"},
        "rules": [
            {"apiGroups": [""], "resources": ["ships"], "resourceNames": ["s1"], "verbs": ["get", "list", "update", "create"]},
            {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["*"]},
            {"apiGroups": ["*"], "resources": ["configmaps/status"], "verbs": ["patch"]},
        ]}),
    );
    put(
        &source,
        json!({"kind": "RoleBinding", "metadata": {"namespace": "ns", "name": "b"},
        "roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "User", "name": "u"}]}),
    );
    let u = user("u", &[]);
    let a = |verb: &str, group: &str, res: &str, sub: &str, name: &str| {
        authz
            .authorize(&u, &Attributes::resource(verb, group, res, sub, "ns", name))
            .allowed
    };
    assert!(a("get", "", "ships", "", "s1"));
    assert!(!a("get", "", "ships", "", "s2"));
    assert!(
        !a("list", "", "ships", "", ""),
        "list without a name is not covered by resourceNames"
    );
    assert!(
        a("list", "", "ships", "", "s1"),
        "list with fieldSelector metadata.name=s1"
    );
    assert!(!a("create", "", "ships", "", ""));
    assert!(a("update", "apps", "deployments", "scale", "d"));
    assert!(a("get", "apps", "replicasets", "scale", "r"));
    assert!(!a("get", "apps", "replicasets", "", "r"));
    assert!(
        !a("get", "", "ships", "scale", "s1"),
        "*/scale is only in apps"
    );
    assert!(a("patch", "x.io", "configmaps", "status", "c"));
    assert!(!a("patch", "x.io", "configmaps", "", "c"));
}

#[test]
fn rbac_groups_are_aliases() {
    let (source, authz) = with_bootstrap();
    put(
        &source,
        json!({"kind": "ClusterRole", "metadata": {"name": "rbac-reader"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["get"]}]}),
    );
    put(
        &source,
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "rr"},
        "roleRef": {"kind": "ClusterRole", "name": "rbac-reader"},
        "subjects": [{"kind": "User", "name": "u"}]}),
    );
    let u = user("u", &[]);
    for g in ["authorization", "rbac.authorization.k8s.io"] {
        assert!(
            authz
                .authorize(&u, &Attributes::resource("get", g, "roles", "", "ns", "r"))
                .allowed
        );
    }
    assert!(
        !authz
            .authorize(
                &u,
                &Attributes::resource("get", "authorization.k8s.io", "roles", "", "ns", "r")
            )
            .allowed
    );
}

#[test]
fn masters_may_do_anything() {
    let authz = Authorizer::new(MemSource::new());
    let admin = user("admin", &["system:masters", "system:authenticated"]);
    assert!(
        authz
            .authorize(
                &admin,
                &Attributes::resource("delete", "apps", "deployments", "", "x", "y")
            )
            .allowed
    );
    assert!(
        authz
            .authorize(&admin, &Attributes::non_resource("post", "/anything"))
            .allowed
    );
    assert!(
        !authz
            .authorize(&user("admin", &[]), &get("x", "ships", "y"))
            .allowed
    );
}

#[test]
fn bootstrap_roles() {
    let (source, authz) = with_bootstrap();
    for (name, role) in [("viewer", "view"), ("editor", "edit"), ("owner", "admin")] {
        put(
            &source,
            json!({"kind": "RoleBinding", "metadata": {"namespace": "team", "name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}]}),
        );
    }
    let can = |who: &str, verb: &str, group: &str, res: &str, sub: &str| {
        authz
            .authorize(
                &user(who, &["system:authenticated"]),
                &Attributes::resource(verb, group, res, sub, "team", "x"),
            )
            .allowed
    };
    // view
    assert!(can("viewer", "get", "", "ships", ""));
    assert!(can("viewer", "list", "apps", "deployments", ""));
    assert!(can("viewer", "get", "", "ships", "status"));
    assert!(!can("viewer", "get", "", "secrets", ""));
    assert!(!can("viewer", "create", "", "ships", ""));
    // edit
    assert!(can("editor", "create", "", "ships", ""));
    assert!(can("editor", "get", "", "ships", ""), "edit includes view");
    assert!(can("editor", "update", "apps", "deployments", "scale"));
    assert!(can("editor", "create", "", "secrets", ""));
    assert!(!can("editor", "get", "", "secrets", ""));
    assert!(!can(
        "editor",
        "create",
        "rbac.authorization.k8s.io",
        "rolebindings",
        ""
    ));
    assert!(!can("editor", "update", "", "ships", "status"));
    // Logs are for viewers; attaching to a console is an edit (as pods/log and pods/attach).
    assert!(can("viewer", "get", "", "ships", "log"));
    assert!(!can("viewer", "create", "", "ships", "console"));
    assert!(can("editor", "get", "", "ships", "log"));
    assert!(can("editor", "create", "", "ships", "console"));
    assert!(can("owner", "create", "", "ships", "console"));
    // admin
    assert!(can("owner", "get", "", "secrets", ""));
    assert!(can("owner", "delete", "apps", "fleets", ""));
    assert!(can("owner", "create", "authorization", "rolebindings", ""));
    assert!(!can("owner", "delete", "", "namespaces", ""));
    // Outside the namespace: nothing.
    assert!(
        !authz
            .authorize(
                &user("owner", &[]),
                &Attributes::resource("get", "", "ships", "", "elsewhere", "x")
            )
            .allowed
    );

    // Every authenticated user: discovery and self reviews; anonymous: /version only.
    let anyone = user("someone", &["system:authenticated"]);
    assert!(
        authz
            .authorize(&anyone, &Attributes::non_resource("get", "/apis/apps/v1"))
            .allowed
    );
    assert!(
        authz
            .authorize(&anyone, &Attributes::non_resource("get", "/version"))
            .allowed
    );
    assert!(
        !authz
            .authorize(&anyone, &Attributes::non_resource("post", "/version"))
            .allowed
    );
    assert!(
        authz
            .authorize(
                &anyone,
                &Attributes::resource(
                    "create",
                    "authorization.k8s.io",
                    "selfsubjectaccessreviews",
                    "",
                    "",
                    ""
                )
            )
            .allowed
    );
    let anon = UserInfo::anonymous();
    assert!(
        authz
            .authorize(&anon, &Attributes::non_resource("get", "/healthz"))
            .allowed
    );
    assert!(
        !authz
            .authorize(&anon, &Attributes::non_resource("get", "/api"))
            .allowed
    );

    let node = user("node-1", &["system:nodes", "system:authenticated"]);
    assert!(
        authz
            .authorize(
                &node,
                &Attributes::resource("patch", "", "ships", "status", "team", "s")
            )
            .allowed
    );
    assert!(
        authz
            .authorize(
                &node,
                &Attributes::resource(
                    "update",
                    "coordination",
                    "leases",
                    "",
                    "tugboat-node-lease",
                    "node-1"
                )
            )
            .allowed
    );
}

#[test]
fn aggregation_with_selectors() {
    let (source, authz) = with_bootstrap();
    put(
        &source,
        json!({"kind": "ClusterRole", "metadata": {"name": "monitoring"},
        "aggregationRule": {"clusterRoleSelectors": [
            {"matchExpressions": [{"key": "example.com/aggregate-to-monitoring", "operator": "In", "values": ["true"]}]}]},
        "rules": []}),
    );
    put(
        &source,
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "m"},
        "roleRef": {"kind": "ClusterRole", "name": "monitoring"},
        "subjects": [{"kind": "User", "name": "mon"}]}),
    );
    let mon = user("mon", &[]);
    let metrics = Attributes::non_resource("get", "/metrics");
    assert!(!authz.authorize(&mon, &metrics).allowed);
    put(
        &source,
        json!({"kind": "ClusterRole", "metadata": {"name": "metrics-reader",
            "labels": {"example.com/aggregate-to-monitoring": "true"}},
        "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}),
    );
    assert!(authz.authorize(&mon, &metrics).allowed);

    // An extension aggregates into view: viewers get it too.
    put(
        &source,
        json!({"kind": "ClusterRole", "metadata": {"name": "widgets-view",
            "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}]}),
    );
    put(
        &source,
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "v"},
        "roleRef": {"kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "Group", "name": "viewers"}]}),
    );
    let v = user("v", &["viewers"]);
    assert!(
        authz
            .authorize(
                &v,
                &Attributes::resource("get", "example.com", "widgets", "", "", "w")
            )
            .allowed
    );
    // Admin gets it through edit → view.
    put(
        &source,
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "a"},
        "roleRef": {"kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "Group", "name": "admins"}]}),
    );
    let a = user("a", &["admins"]);
    assert!(
        authz
            .authorize(
                &a,
                &Attributes::resource("get", "example.com", "widgets", "", "", "w")
            )
            .allowed
    );

    // A cycle terminates.
    put(
        &source,
        json!({"kind": "ClusterRole", "metadata": {"name": "loop", "labels": {"l": "1"}},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"l": "1"}}]}}),
    );
    put(
        &source,
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "lb"},
        "roleRef": {"kind": "ClusterRole", "name": "loop"},
        "subjects": [{"kind": "User", "name": "l"}]}),
    );
    assert!(!authz.authorize(&user("l", &[]), &metrics).allowed);
}

#[test]
fn rules_summary() {
    let (source, authz) = with_bootstrap();
    seed_example(&source);
    let alice = user("alice", &["system:authenticated"]);
    let rules = authz.rules_for(&alice, "default");
    assert!(rules
        .resource_rules
        .iter()
        .any(|r| r.resources == ["ships"] && r.verbs == ["get", "list", "watch"]));
    assert!(rules.resource_rules.iter().any(|r| r
        .resources
        .contains(&"selfsubjectaccessreviews".to_string())));
    assert!(rules
        .non_resource_rules
        .iter()
        .any(|r| r.non_resource_urls.contains(&"/api".to_string())));
    let elsewhere = authz.rules_for(&alice, "other");
    assert!(!elsewhere
        .resource_rules
        .iter()
        .any(|r| r.resources == ["ships"]));
}

#[test]
fn forbidden_messages() {
    let alice = user("alice", &[]);
    let e = forbidden(&alice, &get("default", "ships", "x"));
    assert_eq!(e.code(), 403);
    assert_eq!(
        e.to_string(),
        r#"ships "x" is forbidden: User "alice" cannot get resource "ships" in API group "" in the namespace "default""#
    );
    assert_eq!(
        e.status()["details"],
        json!({"name": "x", "group": "", "kind": "ships"})
    );
    let e = forbidden(
        &alice,
        &Attributes::resource("list", "apps", "deployments", "", "", ""),
    );
    assert_eq!(
        e.to_string(),
        r#"deployments.apps is forbidden: User "alice" cannot list resource "deployments" in API group "apps" at the cluster scope"#
    );
    let e = forbidden(
        &alice,
        &Attributes::resource("update", "apps", "deployments", "scale", "ns", "d"),
    );
    assert_eq!(
        e.to_string(),
        r#"deployments.apps "d" is forbidden: User "alice" cannot update resource "deployments/scale" in API group "apps" in the namespace "ns""#
    );
    let e = forbidden(
        &UserInfo::anonymous(),
        &Attributes::non_resource("get", "/metrics"),
    );
    assert_eq!(
        e.to_string(),
        r#"forbidden: User "system:anonymous" cannot get path "/metrics""#
    );
}
