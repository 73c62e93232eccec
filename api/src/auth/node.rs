//! What a node agent may do, decided from who it is rather than from RBAC bindings (as
//! Kubernetes' Node authorizer and NodeRestriction admission do): a node, `system:node:<name>`
//! in group `system:nodes`, may touch only its own Node, its own Lease and the Ships bound to
//! it, read what it needs to run them, and record Events.
//!
//! The authorizer half ([`authorize`]) decides from the request line; the admission half
//! ([`admit_create`], [`admit_bound_ship`]) checks object contents the request line cannot
//! show (the name in a create body, the node a Ship is bound to).

use serde_json::Value;

use super::rbac::Decision;
use super::{Attributes, UserInfo};
use crate::error::ApiError;

/// Group of node identities.
pub const NODES_GROUP: &str = "system:nodes";
/// User name prefix of node identities.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// Namespace of node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "tugboat-node-lease";

/// The node `user` speaks for, if it is a node identity.
pub fn node_name(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_USER_PREFIX)?;
    (!name.is_empty() && user.in_group(NODES_GROUP)).then_some(name)
}

fn allow(node: &str, why: &str) -> Option<Decision> {
    Some(Decision {
        allowed: true,
        reason: format!("allowed by the node authorizer: node {node:?} {why}"),
    })
}

fn deny(node: &str, why: &str) -> Option<Decision> {
    Some(Decision {
        allowed: false,
        reason: format!("node {node:?} {why}"),
    })
}

const READ: &[&str] = &["get", "list", "watch"];

/// The decision for a node identity, or `None` for other users (RBAC decides those).
/// `field_selector` is the request's `fieldSelector`, which confines a node's Ship lists.
pub fn authorize(user: &UserInfo, attrs: &Attributes, field_selector: &str) -> Option<Decision> {
    let node = node_name(user)?;
    if !attrs.resource_request {
        // Discovery and /version: what every authenticated client may read.
        return None;
    }
    let verb = attrs.verb.as_str();
    let group = attrs.api_group.as_str();
    match (group, attrs.resource.as_str()) {
        ("", "nodes") => {
            if READ.contains(&verb) && attrs.subresource.is_empty() {
                return allow(node, "may read Nodes");
            }
            let own = attrs.name == node || (verb == "create" && attrs.name.is_empty());
            let writable = matches!(verb, "create" | "update" | "patch")
                && matches!(attrs.subresource.as_str(), "" | "status");
            if own && writable {
                return allow(node, "writes its own Node");
            }
            deny(node, "may only write its own Node")
        }
        ("coordination.k8s.io" | "coordination", "leases") => {
            let own = attrs.namespace == NODE_LEASE_NAMESPACE
                && (attrs.name == node || (verb == "create" && attrs.name.is_empty()));
            if own && matches!(verb, "get" | "create" | "update" | "patch") {
                return allow(node, "renews its own Lease");
            }
            deny(
                node,
                "may only use its own Lease in namespace tugboat-node-lease",
            )
        }
        ("", "ships") => match verb {
            "list" | "watch" => {
                if bound_selector(field_selector) == Some(node) {
                    allow(node, "lists the Ships bound to it")
                } else {
                    deny(
                        node,
                        "may list and watch only its own Ships (fieldSelector=spec.nodeName=<node>)",
                    )
                }
            }
            // Which node the Ship is bound to is checked on the object (admit_bound_ship).
            "get" | "update" | "patch" if matches!(attrs.subresource.as_str(), "" | "status") => {
                allow(node, "may touch the Ships bound to it")
            }
            _ => deny(node, "may not do this to Ships"),
        },
        ("", "events") if matches!(verb, "create" | "patch" | "update") => {
            allow(node, "records Events")
        }
        ("events.k8s.io", "events") if matches!(verb, "create" | "patch" | "update") => {
            allow(node, "records Events")
        }
        ("", "shipclasses" | "runtimeclasses" | "networkclasses" | "clusternetworkclasses")
        | ("", "persistentvolumeclaims" | "persistentvolumes" | "storageclasses")
            if READ.contains(&verb) =>
        {
            allow(node, "reads what its Ships need")
        }
        // Which Secrets and ConfigMaps a node's Ships reference is checked by
        // [`admit_referenced`] against the Ships themselves.
        ("", "secrets" | "configmaps") if verb == "get" && !attrs.name.is_empty() => {
            allow(node, "reads a Secret or ConfigMap its Ships reference")
        }
        // Anything else is up to RBAC (nothing is bound to system:nodes by default).
        _ => None,
    }
}

/// The node a `fieldSelector` confines a list to (`spec.nodeName=<n>` or `==`), alone or
/// among other terms.
fn bound_selector(field_selector: &str) -> Option<&str> {
    field_selector.split(',').find_map(|term| {
        let term = term.trim();
        term.strip_prefix("spec.nodeName==")
            .or_else(|| term.strip_prefix("spec.nodeName="))
            .filter(|v| !v.is_empty())
    })
}

/// Checks a create by a node: a Node or Lease it creates must carry its own name.
pub fn admit_create(user: &UserInfo, resource: &str, obj: &Value) -> Result<(), ApiError> {
    let Some(node) = node_name(user) else {
        return Ok(());
    };
    if !matches!(resource, "nodes" | "leases") {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name == node {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        message: format!(
            "{resource} \"{name}\" is forbidden: node \"{node}\" may only create its own {resource}"
        ),
        name: name.to_string(),
        group: String::new(),
        kind: resource.to_string(),
    })
}

/// Checks that a Ship a node reads or writes is bound to it (`current` is the stored Ship).
pub fn admit_bound_ship(user: &UserInfo, current: &Value) -> Result<(), ApiError> {
    let Some(node) = node_name(user) else {
        return Ok(());
    };
    let bound = current
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if bound == node {
        return Ok(());
    }
    let name = current
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    Err(ApiError::Forbidden {
        message: format!(
            "ships \"{name}\" is forbidden: node \"{node}\" may only touch Ships bound to it"
        ),
        name: name.to_string(),
        group: String::new(),
        kind: "ships".into(),
    })
}

/// Whether `ship` (bound to any node) references the Secret (`secret` true) or ConfigMap
/// `name` through cloud-init or a volume.
pub fn ship_references(ship: &Value, secret: bool, name: &str) -> bool {
    let spec = ship.get("spec");
    let at = |p: &str| spec.and_then(|s| s.pointer(p)).and_then(Value::as_str);
    if secret
        && (at("/cloudInit/userDataSecretRef/name") == Some(name)
            || at("/cloudInit/networkDataSecretRef/name") == Some(name))
    {
        return true;
    }
    let key = if secret {
        "/secret/secretName"
    } else {
        "/configMap/name"
    };
    spec.and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .is_some_and(|vs| {
            vs.iter()
                .any(|v| v.pointer(key).and_then(Value::as_str) == Some(name))
        })
}

/// Checks a node's read of a Secret or ConfigMap: some Ship bound to it in that namespace
/// (`ships`) must reference it, as Kubernetes' node authorizer does.
pub fn admit_referenced<'a>(
    user: &UserInfo,
    resource: &str,
    namespace: &str,
    name: &str,
    mut ships: impl Iterator<Item = &'a Value>,
) -> Result<(), ApiError> {
    let Some(node) = node_name(user) else {
        return Ok(());
    };
    let secret = resource == "secrets";
    if !secret && crate::registries::is_settings(Some(namespace), Some(name)) {
        // Every node pulls images with the cluster's registry settings.
        return Ok(());
    }
    let referenced = ships.any(|s| {
        s.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
            && ship_references(s, secret, name)
    });
    if referenced {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        message: format!(
            "{resource} \"{name}\" is forbidden: node \"{node}\" may only read {resource} that Ships bound to it reference"
        ),
        name: name.to_string(),
        group: String::new(),
        kind: resource.to_string(),
    })
}

/// Checks a write by a node against the object it replaces (`current`, read in the same
/// attempt as the write): a Ship must be bound to the node before and after and keep its spec,
/// labels, annotations and owners (the node writes status and its finalizer); the node's own
/// Node keeps its taints, its cordon and the labels reserved for administrators.
pub fn admit_write(
    user: &UserInfo,
    resource: &str,
    current: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let Some(node) = node_name(user) else {
        return Ok(());
    };
    let changed = |ptr: &str| current.pointer(ptr) != new.pointer(ptr);
    let refuse = |what: &str| {
        let name = current
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        Err(ApiError::Forbidden {
            message: format!(
                "{resource} \"{name}\" is forbidden: node \"{node}\" may not change {what}"
            ),
            name: name.to_string(),
            group: String::new(),
            kind: resource.to_string(),
        })
    };
    match resource {
        "ships" => {
            admit_bound_ship(user, current)?;
            for (ptr, what) in [
                ("/spec", "a Ship's spec"),
                ("/metadata/labels", "a Ship's labels"),
                ("/metadata/annotations", "a Ship's annotations"),
                ("/metadata/ownerReferences", "a Ship's owners"),
            ] {
                if changed(ptr) {
                    return refuse(what);
                }
            }
            Ok(())
        }
        "nodes" => {
            if changed("/spec/taints") {
                return refuse("its taints");
            }
            if changed("/spec/unschedulable") {
                return refuse("whether it is cordoned");
            }
            let reserved = |v: &Value| -> Vec<(String, Value)> {
                v.pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .filter(|(k, _)| k.starts_with(RESERVED_LABEL_PREFIX))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if reserved(current) != reserved(new) {
                return refuse(&format!("labels under {RESERVED_LABEL_PREFIX}"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Node labels only administrators set (nodes cannot claim them to attract Ships).
pub const RESERVED_LABEL_PREFIX: &str = "node-restriction.tugboat.io/";

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_node_writes_only_status_and_finalizers_of_its_ships_and_not_its_taints() {
        let n1 = node_user("n1");
        let ship = |node: &str| json!({"metadata": {"name": "s"}, "spec": {"nodeName": node}});
        let mut status_only = ship("n1");
        status_only["status"] = json!({"phase": "Running"});
        status_only["metadata"]["finalizers"] = json!(["tugboat.io/agent"]);
        assert!(admit_write(&n1, "ships", &ship("n1"), &status_only).is_ok());
        assert!(
            admit_write(&n1, "ships", &ship("n1"), &ship("n2")).is_err(),
            "rebinding"
        );
        assert!(
            admit_write(&n1, "ships", &ship("n2"), &ship("n2")).is_err(),
            "foreign Ship"
        );
        let node = |labels: Value, taints: Value| json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints}});
        let base = node(json!({"a": "1"}), json!([]));
        assert!(admit_write(&n1, "nodes", &base, &node(json!({"a": "2"}), json!([]))).is_ok());
        assert!(admit_write(&n1, "nodes", &base, &node(json!({"a": "1"}), Value::Null)).is_err());
        let claimed = json!({"a": "1", "node-restriction.tugboat.io/secure": "x"});
        assert!(admit_write(&n1, "nodes", &base, &node(claimed, json!([]))).is_err());
    }

    use super::*;

    fn node_user(name: &str) -> UserInfo {
        UserInfo {
            name: format!("system:node:{name}"),
            groups: vec![NODES_GROUP.into(), "system:authenticated".into()],
            ..UserInfo::default()
        }
    }

    fn attrs(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Attributes::default()
        }
    }

    fn allowed(user: &UserInfo, a: &Attributes, fs: &str) -> Option<bool> {
        authorize(user, a, fs).map(|d| d.allowed)
    }

    #[test]
    fn a_node_writes_only_its_own_node_and_lease() {
        let n1 = node_user("n1");
        assert_eq!(
            allowed(&n1, &attrs("get", "", "nodes", "", "n2"), ""),
            Some(true)
        );
        assert_eq!(
            allowed(&n1, &attrs("patch", "", "nodes", "", "n1"), ""),
            Some(true)
        );
        assert_eq!(
            allowed(&n1, &attrs("patch", "", "nodes", "", "n2"), ""),
            Some(false)
        );
        assert_eq!(
            allowed(&n1, &attrs("delete", "", "nodes", "", "n1"), ""),
            Some(false)
        );
        let lease = |verb, ns, name| attrs(verb, "coordination.k8s.io", "leases", ns, name);
        assert_eq!(
            allowed(&n1, &lease("update", "tugboat-node-lease", "n1"), ""),
            Some(true)
        );
        assert_eq!(
            allowed(
                &n1,
                &lease("update", "tugboat-system", "tugboat-scheduler"),
                ""
            ),
            Some(false)
        );
        assert_eq!(
            allowed(&n1, &lease("create", "default", ""), ""),
            Some(false)
        );
    }

    #[test]
    fn a_node_lists_only_its_own_ships() {
        let n1 = node_user("n1");
        let list = attrs("watch", "", "ships", "", "");
        assert_eq!(allowed(&n1, &list, "spec.nodeName=n1"), Some(true));
        assert_eq!(
            allowed(&n1, &list, "metadata.namespace=a,spec.nodeName==n1"),
            Some(true)
        );
        assert_eq!(allowed(&n1, &list, "spec.nodeName=n2"), Some(false));
        assert_eq!(allowed(&n1, &list, ""), Some(false));
        assert_eq!(
            allowed(&n1, &attrs("delete", "", "ships", "a", "s"), ""),
            Some(false)
        );
        // A named Secret read passes the authorizer; admit_referenced then checks that one of
        // the node's Ships references it. Lists of Secrets stay with RBAC (none for nodes).
        assert_eq!(
            allowed(&n1, &attrs("get", "", "secrets", "a", "s"), ""),
            Some(true)
        );
        assert_eq!(
            allowed(&n1, &attrs("list", "", "secrets", "a", ""), ""),
            None
        );
    }

    #[test]
    fn a_node_reads_only_secrets_its_ships_reference() {
        let n1 = UserInfo {
            name: "system:node:n1".into(),
            groups: vec![NODES_GROUP.into()],
            ..UserInfo::default()
        };
        let mine = serde_json::json!({"spec": {
            "nodeName": "n1",
            "cloudInit": {"userDataSecretRef": {"name": "ud"}},
            "volumes": [{"name": "v", "configMap": {"name": "cm"}}, {"name": "s", "secret": {"secretName": "vol"}}],
        }});
        let theirs = serde_json::json!({"spec": {
            "nodeName": "n2",
            "cloudInit": {"userDataSecretRef": {"name": "other"}},
        }});
        let ships = [mine, theirs];
        assert!(admit_referenced(&n1, "secrets", "a", "ud", ships.iter()).is_ok());
        assert!(admit_referenced(&n1, "secrets", "a", "vol", ships.iter()).is_ok());
        assert!(admit_referenced(&n1, "configmaps", "a", "cm", ships.iter()).is_ok());
        assert!(admit_referenced(&n1, "secrets", "a", "other", ships.iter()).is_err());
        assert!(admit_referenced(&n1, "secrets", "a", "cm", ships.iter()).is_err());
        // The cluster's registry settings are every node's, and nothing else in that namespace.
        let none = std::iter::empty();
        assert!(admit_referenced(&n1, "configmaps", "tugboat-system", "registries", none).is_ok());
        let none = std::iter::empty();
        assert!(admit_referenced(&n1, "secrets", "tugboat-system", "registries", none).is_err());
        let none = std::iter::empty();
        assert!(admit_referenced(&n1, "configmaps", "tugboat-system", "other", none).is_err());
        let admin = UserInfo {
            name: "alice".into(),
            ..UserInfo::default()
        };
        assert!(admit_referenced(&admin, "secrets", "a", "other", ships.iter()).is_ok());
    }

    #[test]
    fn other_users_are_left_to_rbac() {
        let u = UserInfo {
            name: "system:node:n1".into(),
            groups: vec!["system:authenticated".into()],
            ..UserInfo::default()
        };
        assert_eq!(allowed(&u, &attrs("get", "", "nodes", "", "n1"), ""), None);
    }

    #[test]
    fn admission_checks_names_and_bindings() {
        let n1 = node_user("n1");
        let obj = |name: &str| serde_json::json!({"metadata": {"name": name}});
        assert!(admit_create(&n1, "nodes", &obj("n1")).is_ok());
        assert!(admit_create(&n1, "leases", &obj("n2")).is_err());
        assert!(admit_create(&n1, "events", &obj("x")).is_ok());
        let ship =
            |node: &str| serde_json::json!({"metadata": {"name": "s"}, "spec": {"nodeName": node}});
        assert!(admit_bound_ship(&n1, &ship("n1")).is_ok());
        assert!(admit_bound_ship(&n1, &ship("n2")).is_err());
    }
}
