//! RBAC authorization: Roles, ClusterRoles (with aggregation), RoleBindings, ClusterRoleBindings.
//!
//! Evaluation reads bindings and roles from the [`ObjectSource`] on every request; their parsed
//! form is cached per object (keyed by the object's `Arc` identity and its resourceVersion), so a
//! request costs a few map look-ups per binding instead of JSON parsing.

use super::storage_names::{CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, ROLES, ROLE_BINDINGS};
use super::{str_at, strings, Attributes, ObjectSource, UserInfo, MASTERS_GROUP};
use crate::error::ApiError;
use crate::selector::{object_labels, LabelSelector};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

/// The outcome of an authorization check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why it was allowed (`RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to
    /// User "z"`); empty when denied.
    pub reason: String,
}

/// A resource rule as reported by SelfSubjectRulesReview.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRule {
    /// Verbs (`*` = all).
    pub verbs: Vec<String>,
    /// API groups (`*` = all).
    pub api_groups: Vec<String>,
    /// Resources (`*`, `ships/status`, `*/status`).
    pub resources: Vec<String>,
    /// Names the rule is limited to; empty = all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
}

/// A non-resource rule as reported by SelfSubjectRulesReview.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NonResourceRule {
    /// Verbs (`*` = all).
    pub verbs: Vec<String>,
    /// URL paths, a trailing `*` is a prefix glob.
    #[serde(rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

/// Every rule that applies to a user in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesSummary {
    /// Resource rules.
    pub resource_rules: Vec<ResourceRule>,
    /// Non-resource rules.
    pub non_resource_rules: Vec<NonResourceRule>,
}

/// One parsed PolicyRule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
    non_resource_urls: Vec<String>,
}

impl Rule {
    fn parse(v: &Value) -> Rule {
        Rule {
            verbs: strings(v.get("verbs")),
            api_groups: strings(v.get("apiGroups")),
            resources: strings(v.get("resources")),
            resource_names: strings(v.get("resourceNames")),
            non_resource_urls: strings(v.get("nonResourceURLs")),
        }
    }

    fn allows(&self, a: &Attributes) -> bool {
        if !self.verbs.iter().any(|v| v == "*" || *v == a.verb) {
            return false;
        }
        if !a.resource_request {
            return self
                .non_resource_urls
                .iter()
                .any(|u| url_matches(u, &a.path));
        }
        let group = canonical_group(&a.api_group);
        if !self
            .api_groups
            .iter()
            .any(|g| g == "*" || canonical_group(g) == group)
        {
            return false;
        }
        let resource_ok = self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            if a.subresource.is_empty() {
                return *r == a.resource;
            }
            match r.split_once('/') {
                Some((res, sub)) => (res == a.resource || res == "*") && sub == a.subresource,
                None => false,
            }
        });
        if !resource_ok {
            return false;
        }
        self.resource_names.is_empty()
            || (!a.name.is_empty() && self.resource_names.contains(&a.name))
    }
}

/// `rbac.authorization.k8s.io` and Tugboat's `authorization` are one group for RBAC.
fn canonical_group(g: &str) -> &str {
    if g == "rbac.authorization.k8s.io" {
        "authorization"
    } else {
        g
    }
}

fn url_matches(rule: &str, path: &str) -> bool {
    if rule == "*" || rule == path {
        return true;
    }
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => false,
    }
}

/// A parsed Role or ClusterRole.
#[derive(Debug, Default)]
struct ParsedRole {
    rules: Vec<Rule>,
    labels: BTreeMap<String, String>,
    /// `aggregationRule.clusterRoleSelectors`, if any.
    aggregation: Option<Vec<LabelSelector>>,
}

impl ParsedRole {
    fn parse(v: &Value) -> ParsedRole {
        let rules = v
            .get("rules")
            .and_then(Value::as_array)
            .map(|rs| rs.iter().map(Rule::parse).collect())
            .unwrap_or_default();
        let labels = object_labels(v);
        // An invalid selector matches nothing, so it is simply left out.
        let aggregation = v
            .get("aggregationRule")
            .and_then(|a| a.get("clusterRoleSelectors"))
            .and_then(Value::as_array)
            .map(|sels| {
                sels.iter()
                    .filter_map(|s| LabelSelector::from_k8s(s).ok())
                    .collect()
            });
        ParsedRole {
            rules,
            labels,
            aggregation,
        }
    }
}

#[derive(Debug)]
struct Subject {
    kind: String,
    name: String,
    namespace: String,
}

/// A parsed RoleBinding or ClusterRoleBinding.
#[derive(Debug)]
struct ParsedBinding {
    name: String,
    namespace: String,
    subjects: Vec<Subject>,
    role_kind: String,
    role_name: String,
}

impl ParsedBinding {
    fn parse(v: &Value) -> ParsedBinding {
        let subjects = v
            .get("subjects")
            .and_then(Value::as_array)
            .map(|ss| {
                ss.iter()
                    .map(|s| Subject {
                        kind: str_at(s, &["kind"]).to_string(),
                        name: str_at(s, &["name"]).to_string(),
                        namespace: str_at(s, &["namespace"]).to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ParsedBinding {
            name: str_at(v, &["metadata", "name"]).to_string(),
            namespace: str_at(v, &["metadata", "namespace"]).to_string(),
            subjects,
            role_kind: str_at(v, &["roleRef", "kind"]).to_string(),
            role_name: str_at(v, &["roleRef", "name"]).to_string(),
        }
    }

    /// The subject of this binding that `user` is, if any.
    fn matching_subject(&self, user: &UserInfo) -> Option<&Subject> {
        self.subjects.iter().find(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.in_group(&s.name),
            "ServiceAccount" => {
                let ns = if s.namespace.is_empty() {
                    &self.namespace
                } else {
                    &s.namespace
                };
                !ns.is_empty()
                    && user
                        .name
                        .strip_prefix("system:serviceaccount:")
                        .and_then(|r| r.split_once(':'))
                        == Some((ns.as_str(), s.name.as_str()))
            }
            _ => false,
        })
    }

    fn describe(&self, subject: &Subject) -> String {
        let binding = if self.namespace.is_empty() {
            format!("ClusterRoleBinding {:?}", self.name)
        } else {
            format!("RoleBinding \"{}/{}\"", self.name, self.namespace)
        };
        let subject = match subject.kind.as_str() {
            "ServiceAccount" => {
                let ns = if subject.namespace.is_empty() {
                    &self.namespace
                } else {
                    &subject.namespace
                };
                format!("ServiceAccount \"{}/{}\"", subject.name, ns)
            }
            kind => format!("{kind} {:?}", subject.name),
        };
        format!(
            "RBAC: allowed by {binding} of {} {:?} to {subject}",
            self.role_kind, self.role_name
        )
    }
}

/// Parsed objects of one storage, re-parsed only when the object changed.
struct ParseCache<T> {
    entries: Mutex<HashMap<(String, String), CacheEntry<T>>>,
    parse: fn(&Value) -> T,
}

struct CacheEntry<T> {
    resource_version: String,
    object: Weak<Value>,
    parsed: Arc<T>,
}

/// Entries beyond this are dropped wholesale (deleted objects leave stale entries behind).
const CACHE_LIMIT: usize = 8192;

impl<T> ParseCache<T> {
    fn new(parse: fn(&Value) -> T) -> Self {
        ParseCache {
            entries: Mutex::new(HashMap::new()),
            parse,
        }
    }

    fn get(&self, obj: &Arc<Value>) -> Arc<T> {
        let key = (
            str_at(obj, &["metadata", "namespace"]).to_string(),
            str_at(obj, &["metadata", "name"]).to_string(),
        );
        let rv = str_at(obj, &["metadata", "resourceVersion"]);
        let mut entries = match self.entries.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(e) = entries.get(&key) {
            let same_object = e
                .object
                .upgrade()
                .is_some_and(|live| Arc::ptr_eq(&live, obj));
            if same_object || (!rv.is_empty() && e.resource_version == rv) {
                return e.parsed.clone();
            }
        }
        let parsed = Arc::new((self.parse)(obj));
        if entries.len() >= CACHE_LIMIT {
            entries.clear();
        }
        entries.insert(
            key,
            CacheEntry {
                resource_version: rv.to_string(),
                object: Arc::downgrade(obj),
                parsed: parsed.clone(),
            },
        );
        parsed
    }
}

/// The RBAC authorizer.
pub struct Authorizer {
    source: Arc<dyn ObjectSource>,
    roles: ParseCache<ParsedRole>,
    cluster_roles: ParseCache<ParsedRole>,
    bindings: ParseCache<ParsedBinding>,
    cluster_bindings: ParseCache<ParsedBinding>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorizer")
    }
}

impl Authorizer {
    /// An authorizer reading RBAC objects from `source`.
    pub fn new(source: Arc<dyn ObjectSource>) -> Self {
        Authorizer {
            source,
            roles: ParseCache::new(ParsedRole::parse),
            cluster_roles: ParseCache::new(ParsedRole::parse),
            bindings: ParseCache::new(ParsedBinding::parse),
            cluster_bindings: ParseCache::new(ParsedBinding::parse),
        }
    }

    /// Whether `user` may do what `attrs` describe. `system:masters` may do everything;
    /// otherwise ClusterRoleBindings and the RoleBindings of the request's namespace decide.
    pub fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        if user.in_group(MASTERS_GROUP) {
            return Decision {
                allowed: true,
                reason: format!("allowed: user is in group {MASTERS_GROUP:?}"),
            };
        }
        let mut reason = None;
        self.visit_rules(user, &attrs.namespace, &mut |binding, subject, rule| {
            if rule.allows(attrs) {
                reason = Some(binding.describe(subject));
                true
            } else {
                false
            }
        });
        match reason {
            Some(reason) => Decision {
                allowed: true,
                reason,
            },
            None => Decision {
                allowed: false,
                reason: String::new(),
            },
        }
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide ones included), for
    /// SelfSubjectRulesReview.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> RulesSummary {
        let mut out = RulesSummary::default();
        if user.in_group(MASTERS_GROUP) {
            out.resource_rules.push(ResourceRule {
                verbs: vec!["*".into()],
                api_groups: vec!["*".into()],
                resources: vec!["*".into()],
                resource_names: Vec::new(),
            });
            out.non_resource_rules.push(NonResourceRule {
                verbs: vec!["*".into()],
                non_resource_urls: vec!["*".into()],
            });
        }
        self.visit_rules(user, namespace, &mut |_, _, rule| {
            if !rule.resources.is_empty() {
                let r = ResourceRule {
                    verbs: rule.verbs.clone(),
                    api_groups: rule.api_groups.clone(),
                    resources: rule.resources.clone(),
                    resource_names: rule.resource_names.clone(),
                };
                if !out.resource_rules.contains(&r) {
                    out.resource_rules.push(r);
                }
            }
            if !rule.non_resource_urls.is_empty() {
                let r = NonResourceRule {
                    verbs: rule.verbs.clone(),
                    non_resource_urls: rule.non_resource_urls.clone(),
                };
                if !out.non_resource_rules.contains(&r) {
                    out.non_resource_rules.push(r);
                }
            }
            false
        });
        out
    }

    /// Calls `f` for every rule granted to `user` through a binding, until `f` returns true.
    fn visit_rules(
        &self,
        user: &UserInfo,
        namespace: &str,
        f: &mut dyn FnMut(&ParsedBinding, &Subject, &Rule) -> bool,
    ) {
        for obj in self.source.list(CLUSTER_ROLE_BINDINGS, None) {
            let binding = self.cluster_bindings.get(&obj);
            if let Some(subject) = binding.matching_subject(user) {
                if binding.role_kind == "ClusterRole" && self.visit_role(&binding, subject, None, f)
                {
                    return;
                }
            }
        }
        if namespace.is_empty() {
            return;
        }
        for obj in self.source.list(ROLE_BINDINGS, Some(namespace)) {
            let binding = self.bindings.get(&obj);
            if binding.namespace != namespace {
                continue;
            }
            if let Some(subject) = binding.matching_subject(user) {
                let role_ns = (binding.role_kind == "Role").then_some(namespace);
                if self.visit_role(&binding, subject, role_ns, f) {
                    return;
                }
            }
        }
    }

    /// Rules of the role a binding refers to (`namespace` Some for a Role).
    fn visit_role(
        &self,
        binding: &ParsedBinding,
        subject: &Subject,
        namespace: Option<&str>,
        f: &mut dyn FnMut(&ParsedBinding, &Subject, &Rule) -> bool,
    ) -> bool {
        match (binding.role_kind.as_str(), namespace) {
            ("Role", Some(ns)) => {
                let Some(obj) = self.source.get(ROLES, Some(ns), &binding.role_name) else {
                    return false;
                };
                let role = self.roles.get(&obj);
                role.rules.iter().any(|r| f(binding, subject, r))
            }
            ("ClusterRole", _) => {
                let mut visited = BTreeSet::new();
                self.visit_cluster_role(&binding.role_name, &mut visited, &mut |r| {
                    f(binding, subject, r)
                })
            }
            _ => false,
        }
    }

    /// Rules of a ClusterRole, aggregated ones included (each role visited once).
    fn visit_cluster_role(
        &self,
        name: &str,
        visited: &mut BTreeSet<String>,
        f: &mut dyn FnMut(&Rule) -> bool,
    ) -> bool {
        if !visited.insert(name.to_string()) {
            return false;
        }
        let Some(obj) = self.source.get(CLUSTER_ROLES, None, name) else {
            return false;
        };
        let role = self.cluster_roles.get(&obj);
        if role.rules.iter().any(&mut *f) {
            return true;
        }
        let Some(selectors) = &role.aggregation else {
            return false;
        };
        if selectors.is_empty() {
            return false;
        }
        for other in self.source.list(CLUSTER_ROLES, None) {
            let other_name = str_at(&other, &["metadata", "name"]);
            if visited.contains(other_name) {
                continue;
            }
            let parsed = self.cluster_roles.get(&other);
            if selectors.iter().any(|s| s.matches(&parsed.labels))
                && self.visit_cluster_role(other_name, visited, f)
            {
                return true;
            }
        }
        false
    }
}

/// The 403 for a denied request, worded as Kubernetes does:
/// `ships "x" is forbidden: User "alice" cannot get resource "ships" in API group "" in the
/// namespace "default"`; `ships is forbidden: …` without a name; `… at the cluster scope` for
/// cluster-scoped requests; `forbidden: User "alice" cannot get path "/foo"` for non-resource URLs.
pub fn forbidden(user: &UserInfo, attrs: &Attributes) -> ApiError {
    let who = &user.name;
    if !attrs.resource_request {
        return ApiError::Forbidden {
            message: format!(
                "forbidden: User {who:?} cannot {} path {:?}",
                attrs.verb, attrs.path
            ),
            name: String::new(),
            group: String::new(),
            kind: String::new(),
        };
    }
    let mut resource = attrs.resource.clone();
    if !attrs.subresource.is_empty() {
        resource = format!("{resource}/{}", attrs.subresource);
    }
    let scope = if attrs.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", attrs.namespace)
    };
    let detail = format!(
        "User {who:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        attrs.verb, attrs.api_group
    );
    let qualified = if attrs.api_group.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}.{}", attrs.resource, attrs.api_group)
    };
    let message = if attrs.name.is_empty() {
        format!("{qualified} is forbidden: {detail}")
    } else {
        format!("{qualified} {:?} is forbidden: {detail}", attrs.name)
    };
    ApiError::Forbidden {
        message,
        name: attrs.name.clone(),
        group: attrs.api_group.clone(),
        kind: attrs.resource.clone(),
    }
}

#[cfg(test)]
mod tests;
