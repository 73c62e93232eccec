//! The table of served kinds: names, scope, subresources and the per-kind behaviour
//! (decode/default, validate, table columns, field selectors, schema).

use crate::error::FieldError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One column of a server-side Table (`kubectl get`).
#[derive(Clone, Debug)]
pub struct Column {
    /// Header (`NAME`, `PHASE`, …; kubectl upper-cases it).
    pub name: &'static str,
    /// OpenAPI type: `string`, `integer`, `date`, …
    pub type_: &'static str,
    /// `name` for the name column, `date` for AGE, else empty.
    pub format: &'static str,
    /// What the column shows.
    pub description: &'static str,
    /// 0 = always shown, 1 = only with `-o wide`.
    pub priority: i32,
}

/// Where `/scale` finds replicas and the selector in an object.
#[derive(Clone, Debug)]
pub struct ScaleSpec {
    /// JSON path of the desired replicas, e.g. `["spec", "replicas"]`.
    pub spec_replicas: &'static [&'static str],
    /// JSON path of the observed replicas, e.g. `["status", "replicas"]`.
    pub status_replicas: &'static [&'static str],
    /// JSON path of the label selector (a map or a LabelSelector).
    pub selector: &'static [&'static str],
}

/// Outcome of decoding a request body into a kind: the normalized object (defaults applied,
/// unknown fields dropped) or a decode error with the field path.
pub type DecodeResult = Result<Value, crate::error::DecodeError>;

/// Behaviour of one kind. Implementations live in `kinds/`.
pub trait KindOps: Send + Sync {
    /// The OpenAPI v3 schema of the whole object (properties `apiVersion`, `kind`, `metadata`,
    /// `spec`, `status`, …) as JSON; nested named types go into `defs`
    /// (`#/components/schemas/<name>` references).
    fn schema(&self, defs: &mut BTreeMap<String, Value>) -> Value;
    /// Decodes a JSON object into the typed kind (type errors carry the field path), applies
    /// defaults and returns it re-encoded (fields the kind does not know are dropped).
    /// `metadata` passes through unchanged apart from type checks.
    fn decode(&self, obj: Value) -> DecodeResult;
    /// [`KindOps::decode`] for a write replacing the stored `old` (update, patch, scale), so a
    /// kind can resolve fields derived from others against it; defaults to `decode`.
    fn decode_update(&self, obj: Value, old: &Value) -> DecodeResult {
        let _ = old;
        self.decode(obj)
    }
    /// Semantic validation of a decoded object (`old` on update); empty means valid.
    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError>;
    /// Table columns after NAME (and NAMESPACE, which kubectl adds itself); AGE is last.
    fn columns(&self) -> Vec<Column>;
    /// Cells for `columns()` (same length), NAME first.
    fn cells(&self, obj: &Value) -> Vec<Value>;
    /// Value of a field-selector field, `None` if the kind does not support that field.
    /// `metadata.name` and `metadata.namespace` are handled by the caller.
    fn field(&self, obj: &Value, path: &str) -> Option<String>;
}

/// A served resource (one group/version/plural).
#[derive(Clone)]
pub struct ResourceDef {
    /// API group, `""` for core.
    pub group: &'static str,
    /// Version, `v1`.
    pub version: &'static str,
    /// Kind, `Ship`.
    pub kind: &'static str,
    /// Plural resource name, `ships`.
    pub plural: &'static str,
    /// Singular, `ship`.
    pub singular: &'static str,
    /// `kubectl get sh`.
    pub short_names: &'static [&'static str],
    /// `kubectl get all` etc.
    pub categories: &'static [&'static str],
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Key segment under `/registry/`; two defs with the same `storage` share objects
    /// (RBAC is served as `authorization` and `rbac.authorization.k8s.io`).
    pub storage: &'static str,
    /// Has a `/status` subresource (spec and status written separately).
    pub status: bool,
    /// Has a `/scale` subresource.
    pub scale: Option<ScaleSpec>,
    /// Verbs offered (discovery); empty hides the resource from `kubectl api-resources`.
    pub verbs: &'static [&'static str],
    /// Kind behaviour.
    pub ops: Arc<dyn KindOps>,
}

impl std::fmt::Debug for ResourceDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.group, self.version, self.plural)
    }
}

/// All verbs of a normal resource.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceDef {
    /// `apiVersion` as written in objects: `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `ShipList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// `ships` or `ships.apps` (RBAC/error style `resource.group`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Every served resource, looked up by group/version/plural or by kind.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    defs: Vec<ResourceDef>,
}

impl Registry {
    /// A registry over the given resources.
    pub fn new(defs: Vec<ResourceDef>) -> Self {
        Registry { defs }
    }

    /// Every resource in registration order.
    pub fn all(&self) -> &[ResourceDef] {
        &self.defs
    }

    /// The resource `plural` of `group/version`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
    }

    /// The resource for an object's `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceDef> {
        self.defs
            .iter()
            .find(|d| d.kind == kind && d.api_version() == api_version)
    }

    /// Groups in order of first appearance, each with its versions.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for d in &self.defs {
            match out.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, vs)) => {
                    if !vs.contains(&d.version) {
                        vs.push(d.version)
                    }
                }
                None => out.push((d.group, vec![d.version])),
            }
        }
        out
    }

    /// Resources of one group/version.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceDef> + 'a {
        self.defs
            .iter()
            .filter(move |d| d.group == group && d.version == version)
    }
}
