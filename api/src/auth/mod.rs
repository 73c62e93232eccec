//! Authentication and authorization.
//!
//! * [`Authenticator`] turns a request's credentials (TLS client certificate, opaque
//!   ServiceAccount token, or a JWT signed by the cluster CA key) into a [`UserInfo`].
//! * [`Authorizer`] evaluates RBAC (Roles, ClusterRoles — including aggregated ones —,
//!   RoleBindings and ClusterRoleBindings) for the request's [`Attributes`].
//! * [`review`] answers SelfSubjectAccessReview, SelfSubjectRulesReview and SelfSubjectReview,
//!   in JSON or in Kubernetes protobuf.
//! * [`audit`] writes one JSON line per request without ever blocking it.
//! * [`bootstrap_policy`] lists the built-in ClusterRoles and ClusterRoleBindings.

pub mod audit;
mod authn;
mod bootstrap;
pub mod jwt;
pub mod node;
mod rbac;
pub mod review;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use audit::{AuditEvent, AuditLog};
pub use authn::{
    sa_token_index, Authenticator, DEFAULT_AUDIENCES, DEFAULT_TOKEN_SECONDS, ISSUER,
    MAX_TOKEN_SECONDS, MIN_TOKEN_SECONDS, SA_TOKEN_INDEX, SA_TOKEN_TYPES,
};
pub use bootstrap::{bootstrap_policy, BOOTSTRAP_LABEL};
pub use jwt::{Claims, JwtError, JwtKey};
pub use rbac::{forbidden, Authorizer, Decision, NonResourceRule, ResourceRule, RulesSummary};
pub use review::{handle_review, ReviewKind};

/// Name of the user of requests without credentials.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// Group of requests without credentials.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// Group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// Group allowed everything, without consulting RBAC.
pub const MASTERS_GROUP: &str = "system:masters";

/// Who makes a request (Kubernetes `user.Info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// User name: the certificate CN, `system:serviceaccount:<ns>:<name>`, or `system:anonymous`.
    pub name: String,
    /// Unique id (the ServiceAccount's uid for tokens; empty for certificates).
    pub uid: String,
    /// Groups, `system:authenticated` included for authenticated users.
    pub groups: Vec<String>,
    /// Extra attributes (`authentication.kubernetes.io/credential-id` for JWTs).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The anonymous user (`system:anonymous` in `system:unauthenticated`).
    pub fn anonymous() -> Self {
        UserInfo {
            name: ANONYMOUS_USER.to_string(),
            groups: vec![UNAUTHENTICATED_GROUP.to_string()],
            ..UserInfo::default()
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What a request wants (Kubernetes authorizer attributes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `get list watch create update patch delete deletecollection` for resources, or the
    /// lower-cased HTTP method (`get`, `post`, …) for non-resource URLs.
    pub verb: String,
    /// Whether this is a request for an API resource (else a non-resource URL like `/version`).
    pub resource_request: bool,
    /// API group, `""` for core.
    pub api_group: String,
    /// Resource plural (`ships`).
    pub resource: String,
    /// Subresource (`status`, `scale`) or empty.
    pub subresource: String,
    /// Namespace, empty for cluster-scoped requests (and "all namespaces").
    pub namespace: String,
    /// Object name, empty for lists and creates without a name.
    pub name: String,
    /// Request path (used for non-resource requests).
    pub path: String,
}

impl Attributes {
    /// Attributes of a resource request.
    pub fn resource(
        verb: &str,
        api_group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        Attributes {
            verb: verb.to_string(),
            resource_request: true,
            api_group: api_group.to_string(),
            resource: resource.to_string(),
            subresource: subresource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            path: String::new(),
        }
    }

    /// Attributes of a non-resource request (`verb` is the lower-cased HTTP method).
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attributes {
            verb: verb.to_string(),
            resource_request: false,
            path: path.to_string(),
            ..Attributes::default()
        }
    }
}

/// Read access to stored objects for RBAC and token lookup; the storage layer (watch cache)
/// implements it.
///
/// `storage` is `"<group-or-core>/<plural>"`: `authorization/roles`, `authorization/clusterroles`,
/// `authorization/rolebindings`, `authorization/clusterrolebindings`, `core/secrets`,
/// `core/serviceaccounts` (and `core/ships` for tokens bound to a Ship).
pub trait ObjectSource: Send + Sync {
    /// Every object of `storage`, in `namespace` if given (all namespaces otherwise).
    fn list(&self, storage: &str, namespace: Option<&str>) -> Vec<Arc<serde_json::Value>>;
    /// One object by namespace (None for cluster-scoped) and name.
    fn get(
        &self,
        storage: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Arc<serde_json::Value>>;
    /// Objects of `storage` whose index `index` yields `value` (secondary index kept by the cache).
    fn by_index(&self, storage: &str, index: &str, value: &str) -> Vec<Arc<serde_json::Value>>;
}

/// Storage names used by this module.
pub mod storage_names {
    /// Roles.
    pub const ROLES: &str = "authorization/roles";
    /// ClusterRoles.
    pub const CLUSTER_ROLES: &str = "authorization/clusterroles";
    /// RoleBindings.
    pub const ROLE_BINDINGS: &str = "authorization/rolebindings";
    /// ClusterRoleBindings.
    pub const CLUSTER_ROLE_BINDINGS: &str = "authorization/clusterrolebindings";
    /// Secrets.
    pub const SECRETS: &str = "core/secrets";
    /// ServiceAccounts.
    pub const SERVICE_ACCOUNTS: &str = "core/serviceaccounts";
    /// Ships (bound-token objects).
    pub const SHIPS: &str = "core/ships";
}

/// A string at a JSON path, or `""`.
pub(crate) fn str_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// Strings of a JSON array (non-strings skipped); empty if absent.
pub(crate) fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod testutil;
