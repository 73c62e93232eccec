//! RBAC, served as `authorization/v1` and as `rbac.authorization.k8s.io/v1` (shared storage).

use super::common::{age_cell, age_column, col, get_str, name_cell, name_column};
use super::core::kind_struct;
use super::typed::Kind;
use crate::error::FieldError;
use crate::registry::Column;
use k8s_openapi::api::rbac::v1 as k8s;
use serde_json::{json, Value};

/// API groups accepted in `roleRef.apiGroup` (both name the same RBAC objects).
pub const RBAC_GROUPS: &[&str] = &["authorization", "rbac.authorization.k8s.io"];

/// The group both RBAC API groups normalize to.
pub fn normalize_rbac_group(group: &str) -> &str {
    if group == "authorization" {
        "rbac.authorization.k8s.io"
    } else {
        group
    }
}

kind_struct! {
    /// Role is a namespaced set of permission rules.
    Role, "io.tugboat.authorization.v1.Role" {
        /// The rules: verbs allowed on resources of API groups (or on non-resource URLs).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub rules: Option<Vec<k8s::PolicyRule>>,
    }
}

kind_struct! {
    /// ClusterRole is a cluster-wide set of permission rules, usable by RoleBindings and ClusterRoleBindings.
    ClusterRole, "io.tugboat.authorization.v1.ClusterRole" {
        /// The rules: verbs allowed on resources of API groups (or on non-resource URLs).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub rules: Option<Vec<k8s::PolicyRule>>,
        /// Selects ClusterRoles whose rules are aggregated into this one (the controller fills `rules`).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub aggregation_rule: Option<k8s::AggregationRule>,
    }
}

kind_struct! {
    /// RoleBinding grants the permissions of a Role or ClusterRole to subjects within a namespace.
    RoleBinding, "io.tugboat.authorization.v1.RoleBinding" {
        /// Users, groups and ServiceAccounts granted the role.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub subjects: Option<Vec<k8s::Subject>>,
        /// The Role or ClusterRole granted. Immutable.
        #[schemars(extend("x-required" = true))]
        pub role_ref: k8s::RoleRef,
    }
}

kind_struct! {
    /// ClusterRoleBinding grants the permissions of a ClusterRole to subjects cluster-wide.
    ClusterRoleBinding, "io.tugboat.authorization.v1.ClusterRoleBinding" {
        /// Users, groups and ServiceAccounts granted the role.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub subjects: Option<Vec<k8s::Subject>>,
        /// The ClusterRole granted. Immutable.
        #[schemars(extend("x-required" = true))]
        pub role_ref: k8s::RoleRef,
    }
}

fn validate_rules(
    rules: Option<&Vec<k8s::PolicyRule>>,
    namespaced: bool,
    errs: &mut Vec<FieldError>,
) {
    for (i, r) in rules.into_iter().flatten().enumerate() {
        let p = format!("rules[{i}]");
        if r.verbs.is_empty() {
            errs.push(FieldError::required(
                format!("{p}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = r.non_resource_urls.as_ref().filter(|u| !u.is_empty());
        let groups = r.api_groups.as_ref().map_or(0, Vec::len);
        let resources = r.resources.as_ref().map_or(0, Vec::len);
        if let Some(urls) = urls {
            if namespaced {
                errs.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    &json!(urls),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if groups > 0 || resources > 0 {
                errs.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    &json!(urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if groups == 0 {
            errs.push(FieldError::required(
                format!("{p}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if resources == 0 {
            errs.push(FieldError::required(
                format!("{p}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

fn default_subjects(subjects: &mut Option<Vec<k8s::Subject>>) {
    for s in subjects.iter_mut().flatten() {
        if (s.kind == "User" || s.kind == "Group") && s.api_group.is_none() {
            s.api_group = Some("rbac.authorization.k8s.io".to_string());
        }
    }
}

fn validate_binding(
    role_ref: &k8s::RoleRef,
    subjects: Option<&Vec<k8s::Subject>>,
    old_ref: Option<&k8s::RoleRef>,
    namespaced: bool,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if !RBAC_GROUPS.contains(&role_ref.api_group.as_str()) {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &json!(role_ref.api_group),
            RBAC_GROUPS,
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&role_ref.kind.as_str()) {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            &json!(role_ref.kind),
            kinds,
        ));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    } else if role_ref.name.contains('/')
        || role_ref.name.contains('%')
        || role_ref.name == "."
        || role_ref.name == ".."
    {
        errs.push(FieldError::invalid(
            "roleRef.name",
            &json!(role_ref.name),
            "may not contain '/' or '%' and may not be '.' or '..'",
        ));
    }
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        let p = format!("subjects[{i}]");
        if s.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        }
        match s.kind.as_str() {
            "ServiceAccount" => {
                if s.api_group.as_deref().is_some_and(|g| !g.is_empty()) {
                    errs.push(FieldError::not_supported(
                        format!("{p}.apiGroup"),
                        &json!(s.api_group),
                        &[""],
                    ));
                }
                if !namespaced && s.namespace.as_deref().is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!("{p}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if let Some(g) = s.api_group.as_deref() {
                    if !RBAC_GROUPS.contains(&g) {
                        errs.push(FieldError::not_supported(
                            format!("{p}.apiGroup"),
                            &json!(g),
                            RBAC_GROUPS,
                        ));
                    }
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("{p}.kind"),
                &json!(other),
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    if let Some(old) = old_ref {
        let same = old.kind == role_ref.kind
            && old.name == role_ref.name
            && normalize_rbac_group(&old.api_group) == normalize_rbac_group(&role_ref.api_group);
        if !same {
            errs.push(FieldError::invalid(
                "roleRef",
                &serde_json::to_value(role_ref).unwrap_or(Value::Null),
                "cannot change roleRef",
            ));
        }
    }
    errs
}

fn created_at_column() -> Column {
    Column {
        name: "Created At",
        type_: "date",
        format: "",
        description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
        priority: 0,
    }
}

fn created_at_cell(obj: &Value) -> Value {
    json!(get_str(obj, &["metadata", "creationTimestamp"]).unwrap_or_default())
}

fn binding_columns() -> Vec<Column> {
    vec![
        name_column(),
        col("Role", "string", "The role granted.", 0),
        age_column(),
        col("Users", "string", "Users granted the role.", 1),
        col("Groups", "string", "Groups granted the role.", 1),
        col(
            "ServiceAccounts",
            "string",
            "ServiceAccounts granted the role.",
            1,
        ),
    ]
}

fn binding_cells(
    role_ref: &k8s::RoleRef,
    subjects: Option<&Vec<k8s::Subject>>,
    obj: &Value,
    now: jiff::Timestamp,
) -> Vec<Value> {
    let pick = |kind: &str| {
        subjects
            .into_iter()
            .flatten()
            .filter(|s| s.kind == kind)
            .map(|s| match (kind, s.namespace.as_deref()) {
                ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s.name),
                _ => s.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        name_cell(obj),
        json!(format!("{}/{}", role_ref.kind, role_ref.name)),
        age_cell(obj, now),
        json!(pick("User")),
        json!(pick("Group")),
        json!(pick("ServiceAccount")),
    ]
}

impl Kind for Role {
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_rules(self.rules.as_ref(), true, &mut errs);
        errs
    }
    fn columns() -> Vec<Column> {
        vec![name_column(), created_at_column()]
    }
    fn cells(&self, obj: &Value, _now: jiff::Timestamp) -> Vec<Value> {
        vec![name_cell(obj), created_at_cell(obj)]
    }
}

impl Kind for ClusterRole {
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_rules(self.rules.as_ref(), false, &mut errs);
        errs
    }
    fn columns() -> Vec<Column> {
        vec![name_column(), created_at_column()]
    }
    fn cells(&self, obj: &Value, _now: jiff::Timestamp) -> Vec<Value> {
        vec![name_cell(obj), created_at_cell(obj)]
    }
}

impl Kind for RoleBinding {
    fn apply_defaults(&mut self) {
        default_subjects(&mut self.subjects);
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        validate_binding(
            &self.role_ref,
            self.subjects.as_ref(),
            old.map(|o| &o.role_ref),
            true,
        )
    }
    fn columns() -> Vec<Column> {
        binding_columns()
    }
    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        binding_cells(&self.role_ref, self.subjects.as_ref(), obj, now)
    }
}

impl Kind for ClusterRoleBinding {
    fn apply_defaults(&mut self) {
        default_subjects(&mut self.subjects);
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        validate_binding(
            &self.role_ref,
            self.subjects.as_ref(),
            old.map(|o| &o.role_ref),
            false,
        )
    }
    fn columns() -> Vec<Column> {
        binding_columns()
    }
    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        binding_cells(&self.role_ref, self.subjects.as_ref(), obj, now)
    }
}
