//! Typed resources: their fields (and `kubectl explain` docs), defaults, validation, table
//! columns and field selectors, plus [`registry`], the table of every served resource.
//!
//! Each kind is a Rust struct (`core::Ship`, `apps::Deployment`, …) implementing
//! [`typed::Kind`]; [`typed::Typed`] adapts it to [`crate::registry::KindOps`].

pub mod apps;
pub mod common;
pub mod coordination;
pub mod core;
pub mod rbac;
pub mod resource;
pub mod typed;

pub use common::{human_age, human_duration, parse_quantity, Condition, Selector};
pub use resource::TypeMeta;
pub use typed::{Kind, Typed};

use crate::registry::{Registry, ResourceDef, ScaleSpec, ALL_VERBS};
use std::sync::Arc;

/// Values of `Ship.status.phase`.
pub fn ship_phase_values() -> &'static [&'static str] {
    core::SHIP_PHASES
}

/// Values of `Ship.spec.runStrategy`.
pub fn run_strategy_values() -> &'static [&'static str] {
    core::RUN_STRATEGIES
}

/// Values of `Ship.status.migration.phase`.
pub fn migration_phase_values() -> &'static [&'static str] {
    core::MIGRATION_PHASES
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

const REPLICAS_SCALE: ScaleSpec = ScaleSpec {
    spec_replicas: &["spec", "replicas"],
    status_replicas: &["status", "replicas"],
    selector: &["spec", "selector"],
};

/// Builds a [`ResourceDef`] for kind `K`.
#[allow(clippy::too_many_arguments)]
fn def<K: Kind>(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    namespaced: bool,
    storage: &'static str,
    status: bool,
    scale: Option<ScaleSpec>,
) -> ResourceDef {
    ResourceDef {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        short_names,
        categories,
        namespaced,
        storage,
        status,
        scale,
        verbs: ALL_VERBS,
        ops: Arc::new(Typed::<K>::new()),
    }
}

/// The four RBAC resources of one API group (both groups share storage).
fn rbac_defs(group: &'static str) -> Vec<ResourceDef> {
    use rbac::*;
    vec![
        def::<Role>(
            group,
            "Role",
            "roles",
            "role",
            NONE,
            NONE,
            true,
            "authorization/roles",
            false,
            None,
        ),
        def::<ClusterRole>(
            group,
            "ClusterRole",
            "clusterroles",
            "clusterrole",
            NONE,
            NONE,
            false,
            "authorization/clusterroles",
            false,
            None,
        ),
        def::<RoleBinding>(
            group,
            "RoleBinding",
            "rolebindings",
            "rolebinding",
            NONE,
            NONE,
            true,
            "authorization/rolebindings",
            false,
            None,
        ),
        def::<ClusterRoleBinding>(
            group,
            "ClusterRoleBinding",
            "clusterrolebindings",
            "clusterrolebinding",
            NONE,
            NONE,
            false,
            "authorization/clusterrolebindings",
            false,
            None,
        ),
    ]
}

/// Every served resource.
pub fn registry() -> Registry {
    use self::core::*;
    use apps::*;
    let mut defs = vec![
        def::<Namespace>(
            "",
            "Namespace",
            "namespaces",
            "namespace",
            &["ns"],
            NONE,
            false,
            "core/namespaces",
            true,
            None,
        ),
        def::<Node>(
            "",
            "Node",
            "nodes",
            "node",
            &["no"],
            NONE,
            false,
            "core/nodes",
            true,
            None,
        ),
        def::<Ship>(
            "",
            "Ship",
            "ships",
            "ship",
            &["sh"],
            ALL,
            true,
            "core/ships",
            true,
            None,
        ),
        def::<ShipClass>(
            "",
            "ShipClass",
            "shipclasses",
            "shipclass",
            &["shc"],
            NONE,
            false,
            "core/shipclasses",
            false,
            None,
        ),
        def::<RuntimeClass>(
            "",
            "RuntimeClass",
            "runtimeclasses",
            "runtimeclass",
            &["rc"],
            NONE,
            false,
            "core/runtimeclasses",
            false,
            None,
        ),
        def::<NetworkClass>(
            "",
            "NetworkClass",
            "networkclasses",
            "networkclass",
            &["nc"],
            NONE,
            true,
            "core/networkclasses",
            true,
            None,
        ),
        def::<ClusterNetworkClass>(
            "",
            "ClusterNetworkClass",
            "clusternetworkclasses",
            "clusternetworkclass",
            &["cnc"],
            NONE,
            false,
            "core/clusternetworkclasses",
            true,
            None,
        ),
        def::<ConfigMap>(
            "",
            "ConfigMap",
            "configmaps",
            "configmap",
            &["cm"],
            NONE,
            true,
            "core/configmaps",
            false,
            None,
        ),
        def::<Secret>(
            "",
            "Secret",
            "secrets",
            "secret",
            NONE,
            NONE,
            true,
            "core/secrets",
            false,
            None,
        ),
        def::<ServiceAccount>(
            "",
            "ServiceAccount",
            "serviceaccounts",
            "serviceaccount",
            &["sa"],
            NONE,
            true,
            "core/serviceaccounts",
            false,
            None,
        ),
        def::<PersistentVolume>(
            "",
            "PersistentVolume",
            "persistentvolumes",
            "persistentvolume",
            &["pv"],
            NONE,
            false,
            "core/persistentvolumes",
            true,
            None,
        ),
        def::<PersistentVolumeClaim>(
            "",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            "persistentvolumeclaim",
            &["pvc"],
            NONE,
            true,
            "core/persistentvolumeclaims",
            true,
            None,
        ),
        def::<StorageClass>(
            "",
            "StorageClass",
            "storageclasses",
            "storageclass",
            &["sc"],
            NONE,
            false,
            "core/storageclasses",
            false,
            None,
        ),
        def::<Event>(
            "",
            "Event",
            "events",
            "event",
            &["ev"],
            NONE,
            true,
            "core/events",
            false,
            None,
        ),
        def::<Deployment>(
            "apps",
            "Deployment",
            "deployments",
            "deployment",
            &["deploy"],
            ALL,
            true,
            "apps/deployments",
            true,
            Some(REPLICAS_SCALE),
        ),
        def::<ReplicaSet>(
            "apps",
            "ReplicaSet",
            "replicasets",
            "replicaset",
            &["rs"],
            ALL,
            true,
            "apps/replicasets",
            true,
            Some(REPLICAS_SCALE),
        ),
        def::<Fleet>(
            "apps",
            "Fleet",
            "fleets",
            "fleet",
            &["fl"],
            ALL,
            true,
            "apps/fleets",
            true,
            None,
        ),
    ];
    defs.extend(rbac_defs("authorization"));
    defs.extend(rbac_defs("rbac.authorization.k8s.io"));
    // Served as the seed's `coordination/v1` and as `coordination.k8s.io/v1` (what client-go
    // and kube-rs leader election use), over the same objects.
    for group in ["coordination", "coordination.k8s.io"] {
        defs.push(def::<coordination::Lease>(
            group,
            "Lease",
            "leases",
            "lease",
            NONE,
            NONE,
            true,
            "coordination/leases",
            false,
            None,
        ));
    }
    Registry::new(defs)
}

#[cfg(test)]
mod tests;
