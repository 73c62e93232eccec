//! The built-in RBAC policy the server creates when missing.

use serde_json::{json, Value};

/// Label marking built-in RBAC objects (`kubernetes.io/bootstrapping: rbac-defaults`).
pub const BOOTSTRAP_LABEL: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");

const RBAC_API_VERSION: &str = "rbac.authorization.k8s.io/v1";
const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Core resources readable with `view` (Secrets are deliberately absent).
const VIEW_CORE: &[&str] = &[
    "ships",
    "ships/status",
    "configmaps",
    "serviceaccounts",
    "persistentvolumeclaims",
    "persistentvolumeclaims/status",
    "events",
    "namespaces",
    "namespaces/status",
    "networkclasses",
    "networkclasses/status",
];
/// `apps` resources readable with `view`.
const VIEW_APPS: &[&str] = &[
    "deployments",
    "deployments/status",
    "deployments/scale",
    "replicasets",
    "replicasets/status",
    "replicasets/scale",
    "fleets",
    "fleets/status",
    "fleets/scale",
];
/// Core resources writable with `edit`.
const EDIT_CORE: &[&str] = &[
    "ships",
    "configmaps",
    "secrets",
    "serviceaccounts",
    "persistentvolumeclaims",
    "events",
    "networkclasses",
];
/// `apps` resources writable with `edit`.
const EDIT_APPS: &[&str] = &[
    "deployments",
    "deployments/scale",
    "replicasets",
    "replicasets/scale",
    "fleets",
    "fleets/scale",
];
/// Groups Leases are served under.
const COORDINATION: &[&str] = &["coordination", "coordination.k8s.io"];
/// Groups RBAC objects are served under.
const RBAC_GROUPS: &[&str] = &["authorization", "rbac.authorization.k8s.io"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn non_resource_rule(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn metadata(name: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(BOOTSTRAP_LABEL.0.into(), json!(BOOTSTRAP_LABEL.1));
    for (k, v) in extra_labels {
        labels.insert((*k).into(), json!(v));
    }
    json!({
        "name": name,
        "labels": labels,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": RBAC_API_VERSION,
        "kind": "ClusterRole",
        "metadata": metadata(name, labels),
        "rules": rules,
    })
}

fn aggregated_role(name: &str, labels: &[(&str, &str)], selector_label: &str) -> Value {
    json!({
        "apiVersion": RBAC_API_VERSION,
        "kind": "ClusterRole",
        "metadata": metadata(name, labels),
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {selector_label: "true"}}]},
        "rules": [],
    })
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
        .collect();
    json!({
        "apiVersion": RBAC_API_VERSION,
        "kind": "ClusterRoleBinding",
        "metadata": metadata(name, &[]),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// The built-in ClusterRoles and ClusterRoleBindings (apiVersion `rbac.authorization.k8s.io/v1`,
/// labelled `kubernetes.io/bootstrapping: rbac-defaults`), to create when missing:
///
/// * `cluster-admin` (everything), bound to group `system:masters`;
/// * `admin` ⊇ `edit` ⊇ `view`, aggregated as in Kubernetes from ClusterRoles labelled
///   `rbac.authorization.k8s.io/aggregate-to-{admin,edit,view}: "true"`; the rules for Tugboat's
///   resources come from `system:aggregate-to-{admin,edit,view}`. `view` cannot read Secrets;
///   `edit` may write Secrets but not read them back by get/list/watch; `admin` may read them and
///   manage Roles and RoleBindings; `view` reads `ships/log`, `edit` may also attach to
///   `ships/console` (from `system:aggregate-to-{view:ships-log,edit:ships-console}`);
/// * `system:basic-user` (self reviews) and `system:discovery` (discovery URLs), bound to
///   `system:authenticated`; `system:public-info-viewer` (`/version`, health) bound to
///   `system:authenticated` and `system:unauthenticated`;
/// * `system:node` (nodes, leases, ships, ships/status, events) bound to `system:nodes`.
pub fn bootstrap_policy() -> Vec<Value> {
    let discovery_urls: &[&str] = &[
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/openapi",
        "/openapi/*",
        "/version",
        "/version/",
        "/healthz",
        "/readyz",
        "/livez",
    ];
    let public_urls: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![
                rule(&["*"], &["*"], &["*"]),
                non_resource_rule(&["*"], &["*"]),
            ],
        ),
        aggregated_role("admin", &[], AGGREGATE_TO_ADMIN),
        aggregated_role("edit", &[(AGGREGATE_TO_ADMIN, "true")], AGGREGATE_TO_EDIT),
        aggregated_role(
            "view",
            &[(AGGREGATE_TO_ADMIN, "true"), (AGGREGATE_TO_EDIT, "true")],
            AGGREGATE_TO_VIEW,
        ),
        cluster_role(
            "system:aggregate-to-admin",
            &[(AGGREGATE_TO_ADMIN, "true")],
            vec![
                rule(&[""], &["secrets"], READ),
                rule(RBAC_GROUPS, &["roles", "rolebindings"], ALL),
                rule(
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(AGGREGATE_TO_EDIT, "true")],
            vec![
                rule(&[""], EDIT_CORE, WRITE),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(&["apps"], EDIT_APPS, WRITE),
                rule(COORDINATION, &["leases"], ALL),
                rule(&["events.k8s.io"], &["events"], ALL),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(AGGREGATE_TO_VIEW, "true")],
            vec![
                rule(&[""], VIEW_CORE, READ),
                rule(&["apps"], VIEW_APPS, READ),
                rule(COORDINATION, &["leases"], READ),
                rule(&["events.k8s.io"], &["events"], READ),
            ],
        ),
        // Separate from the roles above so that clusters bootstrapped before these
        // subresources existed get them too (bootstrap objects are only created when missing).
        cluster_role(
            "system:aggregate-to-edit:ships-console",
            &[(AGGREGATE_TO_EDIT, "true")],
            // As pods/attach in Kubernetes' `edit`: an attach is a create, also when it
            // arrives as an upgraded GET.
            vec![rule(&[""], &["ships/console"], &["create", "get"])],
        ),
        cluster_role(
            "system:aggregate-to-view:ships-log",
            &[(AGGREGATE_TO_VIEW, "true")],
            vec![rule(&[""], &["ships/log"], READ)],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![non_resource_rule(discovery_urls, &["get"])],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![non_resource_rule(public_urls, &["get"])],
        ),
        cluster_role(
            "system:node",
            &[],
            vec![
                rule(&[""], &["nodes"], ALL),
                rule(&[""], &["nodes/status"], &["get", "patch", "update"]),
                rule(COORDINATION, &["leases"], ALL),
                rule(
                    &[""],
                    &["ships"],
                    &["get", "list", "watch", "patch", "update"],
                ),
                rule(&[""], &["ships/status"], &["get", "patch", "update"]),
                rule(&[""], &["events"], &["create", "patch", "update"]),
                rule(
                    &["events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
            ],
        ),
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &["system:authenticated"],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        binding("system:node", "system:node", &["system:nodes"]),
    ]
}
