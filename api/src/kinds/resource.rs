//! [`k8s_openapi::Resource`], [`k8s_openapi::Metadata`] and [`k8s_openapi::ListableResource`]
//! for the typed top-level kinds, so that kube-rs (which implements its own `Resource` trait for
//! every k8s-openapi resource) can drive them: `kube::Api::<Ship>::namespaced(client, ns)`.
//!
//! The structs serialize `apiVersion`/`kind` only when set (the apiserver accepts objects
//! without them and fills them in); [`TypeMeta::with_type_meta`] sets both for clients that
//! want them explicit.

use super::apps::{Deployment, Fleet, ReplicaSet};
use super::core::{ClusterNetworkClass, Event, NetworkClass, Node, RuntimeClass, Ship, ShipClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};

/// Fills in `apiVersion` and `kind` from the kind's [`k8s_openapi::Resource`] constants.
pub trait TypeMeta: k8s_openapi::Resource + Sized {
    /// Sets `apiVersion` and `kind` to this kind's values.
    fn set_type_meta(&mut self);

    /// `self` with `apiVersion` and `kind` set.
    fn with_type_meta(mut self) -> Self {
        self.set_type_meta();
        self
    }
}

/// Implements the k8s-openapi traits for a typed kind.
macro_rules! k8s_resource {
    ($($ty:ident: $group:literal, $api_version:literal, $plural:literal, $scope:ty;)*) => {$(
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = $api_version;
            const GROUP: &'static str = $group;
            const KIND: &'static str = stringify!($ty);
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }

        impl k8s_openapi::ListableResource for $ty {
            const LIST_KIND: &'static str = concat!(stringify!($ty), "List");
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl TypeMeta for $ty {
            fn set_type_meta(&mut self) {
                self.api_version = $api_version.to_string();
                self.kind = stringify!($ty).to_string();
            }
        }
    )*};
}

k8s_resource! {
    Ship: "", "v1", "ships", NamespaceResourceScope;
    Node: "", "v1", "nodes", ClusterResourceScope;
    ShipClass: "", "v1", "shipclasses", ClusterResourceScope;
    RuntimeClass: "", "v1", "runtimeclasses", ClusterResourceScope;
    NetworkClass: "", "v1", "networkclasses", NamespaceResourceScope;
    ClusterNetworkClass: "", "v1", "clusternetworkclasses", ClusterResourceScope;
    Event: "", "v1", "events", NamespaceResourceScope;
    Deployment: "apps", "apps/v1", "deployments", NamespaceResourceScope;
    ReplicaSet: "apps", "apps/v1", "replicasets", NamespaceResourceScope;
    Fleet: "apps", "apps/v1", "fleets", NamespaceResourceScope;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{ListableResource, Metadata, Resource};

    /// The constants agree with the served registry (group, version, kind, plural, scope).
    fn check<K: Resource + ListableResource>(namespaced: bool) {
        let reg = crate::kinds::registry();
        let def = reg
            .all()
            .iter()
            .find(|d| d.group == K::GROUP && d.kind == K::KIND)
            .unwrap_or_else(|| panic!("{} not served", K::KIND));
        assert_eq!(def.version, K::VERSION);
        assert_eq!(def.plural, K::URL_PATH_SEGMENT);
        assert_eq!(def.api_version(), K::API_VERSION);
        assert_eq!(def.namespaced, namespaced, "{}", K::KIND);
        assert_eq!(def.list_kind(), K::LIST_KIND);
    }

    #[test]
    fn constants_match_registry() {
        check::<Ship>(true);
        check::<Node>(false);
        check::<ShipClass>(false);
        check::<RuntimeClass>(false);
        check::<NetworkClass>(true);
        check::<ClusterNetworkClass>(false);
        check::<Event>(true);
        check::<Deployment>(true);
        check::<ReplicaSet>(true);
        check::<Fleet>(true);
    }

    #[test]
    fn constants() {
        assert_eq!(Ship::API_VERSION, "v1");
        assert_eq!(Ship::GROUP, "");
        assert_eq!(Ship::KIND, "Ship");
        assert_eq!(Ship::URL_PATH_SEGMENT, "ships");
        assert_eq!(Ship::LIST_KIND, "ShipList");
        assert_eq!(Deployment::API_VERSION, "apps/v1");
        assert_eq!(Deployment::GROUP, "apps");
        assert_eq!(Fleet::LIST_KIND, "FleetList");
        assert_eq!(
            ClusterNetworkClass::URL_PATH_SEGMENT,
            "clusternetworkclasses"
        );
    }

    #[test]
    fn metadata_and_type_meta() {
        let mut s = Ship::default();
        s.metadata_mut().name = Some("a".into());
        assert_eq!(s.metadata().name.as_deref(), Some("a"));
        // Without type meta the fields are omitted (the apiserver accepts that) …
        let v = serde_json::to_value(&s).expect("serialize");
        assert!(v.get("apiVersion").is_none() && v.get("kind").is_none());
        // … and with it they are the served values.
        let v = serde_json::to_value(s.with_type_meta()).expect("serialize");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Ship");
        let d = serde_json::to_value(Deployment::default().with_type_meta()).expect("serialize");
        assert_eq!(d["apiVersion"], "apps/v1");
        assert_eq!(d["kind"], "Deployment");
    }
}
