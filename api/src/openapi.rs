//! OpenAPI v3 documents (`/openapi/v3` and `/openapi/v3/<gv path>`), precomputed once.
//!
//! Each group/version gets one OpenAPI 3.0 document with the kinds' schemas under
//! `components.schemas` (named `io.tugboat.<group|core>.<version>.<Kind>`, with
//! `x-kubernetes-group-version-kind`; nested types keep their names, e.g.
//! `io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta`) and a `paths` entry for every
//! operation. PATCH operations carry the `fieldValidation` query parameter and the four patch
//! content types, which makes kubectl leave validation to the server and compute strategic
//! merge patches from these schemas.

use crate::kinds::typed::schema_of;
use crate::registry::{Registry, ResourceDef};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";
const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// One precomputed group/version document.
#[derive(Debug)]
struct Doc {
    value: Arc<Value>,
    hash: String,
}

/// The OpenAPI v3 index and documents of a registry, computed once at startup.
#[derive(Debug)]
pub struct OpenApi {
    docs: BTreeMap<String, Doc>,
    index: Value,
}

/// `api/v1` or `apis/<group>/<version>`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Name of a kind's schema in `components.schemas`: `io.tugboat.core.v1.Ship`.
pub fn schema_name(def: &ResourceDef) -> String {
    let group = if def.group.is_empty() {
        "core"
    } else {
        def.group
    };
    format!("io.tugboat.{group}.{}.{}", def.version, def.kind)
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

impl OpenApi {
    /// Builds every document of `reg`.
    pub fn new(reg: &Registry) -> Self {
        let mut docs = BTreeMap::new();
        let mut paths = Map::new();
        for (group, versions) in reg.groups() {
            for version in versions {
                let path = gv_path(group, version);
                let value = build_document(reg, group, version);
                let bytes = serde_json::to_vec(&value).unwrap_or_default();
                let hash = hex::encode_upper(Sha256::digest(&bytes));
                paths.insert(
                    path.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
                );
                docs.insert(
                    path,
                    Doc {
                        value: Arc::new(value),
                        hash,
                    },
                );
            }
        }
        OpenApi {
            docs,
            index: json!({ "paths": paths }),
        }
    }

    /// `GET /openapi/v3`: `{"paths": {"api/v1": {"serverRelativeURL": …}, …}}`.
    pub fn index(&self) -> Value {
        self.index.clone()
    }

    /// `GET /openapi/v3/<gv_path>` (`api/v1`, `apis/apps/v1`); `None` if not served.
    pub fn document(&self, gv_path: &str) -> Option<Arc<Value>> {
        self.docs
            .get(gv_path.trim_matches('/'))
            .map(|d| d.value.clone())
    }

    /// The content hash of a document (the `hash` query parameter of the index; usable as ETag).
    pub fn hash(&self, gv_path: &str) -> Option<&str> {
        self.docs
            .get(gv_path.trim_matches('/'))
            .map(|d| d.hash.as_str())
    }

    /// Dotted paths (`spec.foo`, `spec.volumes[0].bar`) of fields in `obj` that the kind's
    /// schema does not declare. Maps (`additionalProperties`) and
    /// `x-kubernetes-preserve-unknown-fields` objects accept any key. The caller reports them
    /// as `unknown field "spec.foo"`.
    pub fn unknown_fields(&self, def: &ResourceDef, obj: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let Some(doc) = self.docs.get(&gv_path(def.group, def.version)) else {
            return out;
        };
        let Some(schemas) = doc.value["components"]["schemas"].as_object() else {
            return out;
        };
        if let Some(root) = schemas.get(&schema_name(def)) {
            walk(schemas, root, obj, "", &mut out);
        }
        out
    }
}

/// [`OpenApi::index`] computed on the spot (prefer the cached [`OpenApi`]).
pub fn index(reg: &Registry) -> Value {
    OpenApi::new(reg).index()
}

/// [`OpenApi::document`] computed on the spot (prefer the cached [`OpenApi`]).
pub fn document(reg: &Registry, gv_path: &str) -> Option<Value> {
    OpenApi::new(reg)
        .document(gv_path)
        .map(|d| d.as_ref().clone())
}

// ---------------------------------------------------------------------------------------------
// Unknown fields
// ---------------------------------------------------------------------------------------------

/// The schema objects that together describe a value: `s` itself plus what `$ref` and `allOf`
/// lead to.
fn parts<'a>(
    schemas: &'a Map<String, Value>,
    s: &'a Value,
    depth: usize,
    out: &mut Vec<&'a Value>,
) {
    if depth > 16 {
        return;
    }
    out.push(s);
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        if let Some(target) = r
            .strip_prefix("#/components/schemas/")
            .and_then(|n| schemas.get(n))
        {
            parts(schemas, target, depth + 1, out);
        }
    }
    for sub in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts(schemas, sub, depth + 1, out);
    }
}

fn walk(
    schemas: &Map<String, Value>,
    schema: &Value,
    v: &Value,
    path: &str,
    out: &mut Vec<String>,
) {
    let mut ps = Vec::new();
    parts(schemas, schema, 0, &mut ps);
    let preserve = ps
        .iter()
        .any(|p| p.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)));
    match v {
        Value::Object(obj) => {
            let props: Vec<&Map<String, Value>> = ps
                .iter()
                .filter_map(|p| p.get("properties").and_then(Value::as_object))
                .collect();
            let additional: Vec<&Value> = ps
                .iter()
                .filter_map(|p| p.get("additionalProperties"))
                .collect();
            let free = props.is_empty() && additional.is_empty();
            for (k, child) in obj {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(sub) = props.iter().find_map(|p| p.get(k)) {
                    walk(schemas, sub, child, &child_path, out);
                } else if let Some(sub) = additional.iter().find(|a| a.is_object()) {
                    walk(schemas, sub, child, &child_path, out);
                } else if !(preserve || free || additional.iter().any(|a| **a == json!(true))) {
                    out.push(child_path);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = ps.iter().find_map(|p| p.get("items")) {
                for (i, item) in items.iter().enumerate() {
                    walk(schemas, item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------------------------

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

/// Adds the standard `apiVersion`/`kind`/`metadata` properties if a schema lacks them and tags
/// it with its GVK.
fn finish_kind_schema(mut s: Value, group: &str, version: &str, kind: &str) -> Value {
    if let Value::Object(m) = &mut s {
        m.insert("type".into(), json!("object"));
        let props = m
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(props) = props {
            props.entry("apiVersion").or_insert_with(|| json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.entry("kind").or_insert_with(|| json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        }
        m.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([gvk(group, version, kind)]),
        );
    }
    s
}

fn list_schema(def: &ResourceDef, item: &str) -> Value {
    json!({
        "description": format!("{}List is a list of {}.", def.kind, def.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
            "items": {"type": "array", "description": format!("List of {}.", def.plural), "items": reference(item)},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
            "metadata": {"allOf": [reference(&format!("{META}.ListMeta"))], "description": "Standard list metadata."},
        },
        "x-kubernetes-group-version-kind": [gvk(def.group, def.version, &def.list_kind())],
    })
}

fn build_document(reg: &Registry, group: &str, version: &str) -> Value {
    let mut defs: BTreeMap<String, Value> = BTreeMap::new();
    let mut paths = Map::new();
    let mut any_scale = false;
    for def in reg.in_group_version(group, version) {
        let name = schema_name(def);
        let schema = def.ops.schema(&mut defs);
        defs.insert(
            name.clone(),
            finish_kind_schema(schema, def.group, def.version, def.kind),
        );
        let list = format!("{name}List");
        defs.insert(list.clone(), list_schema(def, &name));
        any_scale |= def.scale.is_some();
        add_paths(&mut paths, def, &name, &list);
    }
    // Types the operations refer to.
    let mut extra = BTreeMap::new();
    let list_meta =
        schema_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>(&mut extra);
    extra.insert(format!("{META}.ListMeta"), list_meta);
    let status = schema_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>(&mut extra);
    extra.insert(
        format!("{META}.Status"),
        finish_kind_schema(status, "", "v1", "Status"),
    );
    let delete =
        schema_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(&mut extra);
    extra.insert(
        format!("{META}.DeleteOptions"),
        finish_kind_schema(delete, "", "v1", "DeleteOptions"),
    );
    extra.insert(
        format!("{META}.Patch"),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}),
    );
    if any_scale {
        let scale = schema_of::<k8s_openapi::api::autoscaling::v1::Scale>(&mut extra);
        extra.insert(
            "io.k8s.api.autoscaling.v1.Scale".into(),
            finish_kind_schema(scale, "autoscaling", "v1", "Scale"),
        );
    }
    for (k, v) in extra {
        defs.entry(k).or_insert(v);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Tugboat", "version": "v1.32.0-tugboat"},
        "paths": paths,
        "components": {"schemas": defs},
    })
}

/// `Core`, `Apps`, `RbacAuthorization`, … for operation ids.
fn group_id(group: &str) -> String {
    if group.is_empty() {
        return "Core".into();
    }
    group
        .trim_end_matches(".k8s.io")
        .split('.')
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn query(name: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "description": description, "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn dry_run() -> Value {
    query(
        "dryRun",
        "When present, indicates that modifications should not be persisted. Valid value: All.",
        "string",
    )
}

fn field_manager() -> Value {
    query(
        "fieldManager",
        "fieldManager is a name associated with the actor or entity that is making these changes.",
        "string",
    )
}

fn field_validation() -> Value {
    query("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict.", "string")
}

fn list_params() -> Vec<Value> {
    vec![
        query("allowWatchBookmarks", "allowWatchBookmarks requests watch events with type \"BOOKMARK\".", "boolean"),
        query("continue", "The continue option should be set when retrieving more results from the server.", "string"),
        query("fieldSelector", "A selector to restrict the list of returned objects by their fields.", "string"),
        query("labelSelector", "A selector to restrict the list of returned objects by their labels.", "string"),
        query("limit", "limit is a maximum number of responses to return for a list call.", "integer"),
        query("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may be served from.", "string"),
        query("timeoutSeconds", "Timeout for the list/watch call.", "integer"),
        query("watch", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.", "boolean"),
    ]
}

fn body(schema: &str, types: &[&str]) -> Value {
    let content: Map<String, Value> = types
        .iter()
        .map(|t| (t.to_string(), json!({"schema": reference(schema)})))
        .collect();
    json!({"content": content, "required": true})
}

fn responses(schema: &str, codes: &[&str]) -> Value {
    let mut m = Map::new();
    for code in codes {
        m.insert(
            code.to_string(),
            json!({"description": match *code { "201" => "Created", "202" => "Accepted", _ => "OK" },
                   "content": {
                       "application/json": {"schema": reference(schema)},
                       "application/yaml": {"schema": reference(schema)},
                   }}),
        );
    }
    m.insert("401".into(), json!({"description": "Unauthorized"}));
    Value::Object(m)
}

struct Op<'a> {
    action: &'a str,
    id: String,
    description: String,
    gvk: Value,
    params: Vec<Value>,
    body: Option<Value>,
    responses: Value,
    tag: String,
}

impl Op<'_> {
    fn into_value(self) -> Value {
        let mut m = Map::new();
        m.insert("tags".into(), json!([self.tag]));
        m.insert("description".into(), json!(self.description));
        m.insert("operationId".into(), json!(self.id));
        if !self.params.is_empty() {
            m.insert("parameters".into(), Value::Array(self.params));
        }
        if let Some(b) = self.body {
            m.insert("requestBody".into(), b);
        }
        m.insert("responses".into(), self.responses);
        m.insert("x-kubernetes-action".into(), json!(self.action));
        m.insert("x-kubernetes-group-version-kind".into(), self.gvk);
        Value::Object(m)
    }
}

fn add_paths(paths: &mut Map<String, Value>, def: &ResourceDef, name: &str, list: &str) {
    let prefix = format!("/{}", gv_path(def.group, def.version));
    let ns_seg = if def.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let ns_word = if def.namespaced { "Namespaced" } else { "" };
    let id_base = format!(
        "{}{}",
        group_id(def.group),
        def.version[..1].to_ascii_uppercase() + &def.version[1..]
    );
    let tag = format!("{}_{}", group_id(def.group).to_lowercase(), def.version);
    let kind = def.kind;
    let this_gvk = gvk(def.group, def.version, kind);
    let mut common = vec![query(
        "pretty",
        "If 'true', then the output is pretty printed.",
        "string",
    )];
    if def.namespaced {
        common.insert(
            0,
            path_param(
                "namespace",
                "object name and auth scope, such as for teams and projects",
            ),
        );
    }
    let mut item_common = vec![path_param("name", &format!("name of the {kind}"))];
    item_common.extend(common.clone());

    let mk = |action: &'static str, verb: &str, suffix: &str, desc: String, gvk: Value| Op {
        action,
        id: format!("{verb}{id_base}{ns_word}{kind}{suffix}"),
        description: desc,
        gvk,
        params: Vec::new(),
        body: None,
        responses: Value::Null,
        tag: tag.clone(),
    };

    // Collection.
    let coll_path = format!("{prefix}{ns_seg}/{}", def.plural);
    let mut list_op = mk(
        "list",
        "list",
        "",
        format!("list or watch objects of kind {kind}"),
        this_gvk.clone(),
    );
    list_op.params = list_params();
    list_op.responses = responses(list, &["200"]);
    let mut create = mk(
        "post",
        "create",
        "",
        format!("create a {kind}"),
        this_gvk.clone(),
    );
    create.params = vec![dry_run(), field_manager(), field_validation()];
    create.body = Some(body(name, &["application/json", "application/yaml"]));
    create.responses = responses(name, &["200", "201", "202"]);
    let mut delete_coll = mk(
        "deletecollection",
        "deleteCollection",
        "",
        format!("delete collection of {kind}"),
        this_gvk.clone(),
    );
    delete_coll.params = list_params();
    delete_coll.params.push(dry_run());
    delete_coll.responses = responses(&format!("{META}.Status"), &["200"]);
    paths.insert(
        coll_path.clone(),
        json!({
            "get": list_op.into_value(),
            "post": create.into_value(),
            "delete": delete_coll.into_value(),
            "parameters": common,
        }),
    );

    // Item.
    let item_path = format!("{coll_path}/{{name}}");
    let mut read = mk(
        "get",
        "read",
        "",
        format!("read the specified {kind}"),
        this_gvk.clone(),
    );
    read.responses = responses(name, &["200"]);
    let mut replace = mk(
        "put",
        "replace",
        "",
        format!("replace the specified {kind}"),
        this_gvk.clone(),
    );
    replace.params = vec![dry_run(), field_manager(), field_validation()];
    replace.body = Some(body(name, &["application/json", "application/yaml"]));
    replace.responses = responses(name, &["200", "201"]);
    let patch = |op: &mut Op| {
        op.params = vec![
            dry_run(),
            field_manager(),
            field_validation(),
            query(
                "force",
                "Force is going to \"force\" Apply requests.",
                "boolean",
            ),
        ];
        op.body = Some(body(&format!("{META}.Patch"), PATCH_TYPES));
    };
    let mut patch_op = mk(
        "patch",
        "patch",
        "",
        format!("partially update the specified {kind}"),
        this_gvk.clone(),
    );
    patch(&mut patch_op);
    patch_op.responses = responses(name, &["200", "201"]);
    let mut delete = mk(
        "delete",
        "delete",
        "",
        format!("delete a {kind}"),
        this_gvk.clone(),
    );
    delete.params = vec![
        dry_run(),
        query(
            "gracePeriodSeconds",
            "The duration in seconds before the object should be deleted.",
            "integer",
        ),
        query(
            "propagationPolicy",
            "Whether and how garbage collection will be performed.",
            "string",
        ),
    ];
    delete.body = Some(
        json!({"content": {"application/json": {"schema": reference(&format!("{META}.DeleteOptions"))}}}),
    );
    delete.responses = responses(&format!("{META}.Status"), &["200", "202"]);
    paths.insert(
        item_path.clone(),
        json!({
            "get": read.into_value(),
            "put": replace.into_value(),
            "patch": patch_op.into_value(),
            "delete": delete.into_value(),
            "parameters": item_common,
        }),
    );

    // Subresources.
    let mut subs: Vec<(&str, &str, String, Value)> = Vec::new();
    if def.status {
        subs.push(("status", "Status", name.to_string(), this_gvk.clone()));
    }
    if def.scale.is_some() {
        subs.push((
            "scale",
            "Scale",
            "io.k8s.api.autoscaling.v1.Scale".to_string(),
            gvk("autoscaling", "v1", "Scale"),
        ));
    }
    for (sub, suffix, schema, sub_gvk) in subs {
        let mut read = mk(
            "get",
            "read",
            suffix,
            format!("read {sub} of the specified {kind}"),
            sub_gvk.clone(),
        );
        read.responses = responses(&schema, &["200"]);
        let mut replace = mk(
            "put",
            "replace",
            suffix,
            format!("replace {sub} of the specified {kind}"),
            sub_gvk.clone(),
        );
        replace.params = vec![dry_run(), field_manager(), field_validation()];
        replace.body = Some(body(&schema, &["application/json", "application/yaml"]));
        replace.responses = responses(&schema, &["200", "201"]);
        let mut p = mk(
            "patch",
            "patch",
            suffix,
            format!("partially update {sub} of the specified {kind}"),
            sub_gvk,
        );
        patch(&mut p);
        p.responses = responses(&schema, &["200", "201"]);
        paths.insert(
            format!("{item_path}/{sub}"),
            json!({
                "get": read.into_value(),
                "put": replace.into_value(),
                "patch": p.into_value(),
                "parameters": item_common,
            }),
        );
    }

    // All namespaces.
    if def.namespaced {
        let mut all = mk(
            "list",
            "list",
            "ForAllNamespaces",
            format!("list or watch objects of kind {kind}"),
            this_gvk,
        );
        all.id = format!("list{id_base}{kind}ForAllNamespaces");
        all.params = list_params();
        all.responses = responses(list, &["200"]);
        paths.insert(
            format!("{prefix}/{}", def.plural),
            json!({
                "get": all.into_value(),
                "parameters": [query("pretty", "If 'true', then the output is pretty printed.", "string")],
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_openapi_documents_have_gvk_and_field_validation() {
        let reg = crate::kinds::registry();
        let api = OpenApi::new(&reg);
        let index = api.index();
        let url = index["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/api/v1?hash="));
        assert!(index["paths"]["apis/apps/v1"].is_object());
        assert!(index["paths"]["apis/rbac.authorization.k8s.io/v1"].is_object());
        // Stable.
        assert_eq!(OpenApi::new(&reg).index(), index);

        let doc = api.document("api/v1").unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let ship = &schemas["io.tugboat.core.v1.Ship"];
        assert_eq!(
            ship["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "Ship"}])
        );
        assert_eq!(
            schemas["io.tugboat.core.v1.ShipList"]["x-kubernetes-group-version-kind"][0]["kind"],
            "ShipList"
        );
        // Every $ref resolves inside the document.
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        for gv in [
            "api/v1",
            "apis/apps/v1",
            "apis/authorization/v1",
            "apis/coordination/v1",
        ] {
            let doc = api.document(gv).unwrap();
            let mut all = Vec::new();
            refs(&doc, &mut all);
            for r in all {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .expect("component ref");
                assert!(
                    doc["components"]["schemas"].get(name).is_some(),
                    "{gv}: {r} dangling"
                );
            }
            assert!(!doc.to_string().contains("\"nullable\""));
        }
        // PATCH has fieldValidation, a GVK and the patch content types.
        let p = &doc["paths"]["/api/v1/namespaces/{namespace}/ships/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Ship");
        assert!(p["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "fieldValidation" && q["in"] == "query"));
        for t in PATCH_TYPES {
            assert!(p["requestBody"]["content"][*t].is_object(), "{t}");
        }
        assert!(
            doc["paths"]["/api/v1/namespaces/{namespace}/ships/{name}/status"]["patch"].is_object()
        );
        assert!(doc["paths"]["/api/v1/nodes/{name}"]["get"].is_object());
        let apps = api.document("apis/apps/v1").unwrap();
        let scale = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]
            ["patch"];
        assert_eq!(scale["x-kubernetes-group-version-kind"]["kind"], "Scale");
        // explain: spec.runStrategy has docs, shipTemplate resolves.
        let spec_ref = &ship["properties"]["spec"];
        let spec_name = spec_ref["allOf"][0]["$ref"]
            .as_str()
            .or(spec_ref["$ref"].as_str())
            .unwrap();
        let spec = &schemas[spec_name.trim_start_matches("#/components/schemas/")];
        assert!(spec["properties"]["runStrategy"]["description"]
            .as_str()
            .unwrap()
            .contains("Always"));
        let apps_schemas = apps["components"]["schemas"].as_object().unwrap();
        let dspec = &apps_schemas["io.tugboat.apps.v1.DeploymentSpec"];
        assert!(dspec["properties"]["shipTemplate"].is_object());
        assert!(api.document("apis/nope/v1").is_none());
    }

    #[test]
    fn kinds_unknown_fields_found() {
        let reg = crate::kinds::registry();
        let api = OpenApi::new(&reg);
        let ship = reg.get("", "v1", "ships").unwrap();
        let obj = json!({
            "apiVersion": "v1", "kind": "Ship",
            "metadata": {"name": "a", "labels": {"x": "y"}, "bogus": 1},
            "spec": {"image": "i", "shipClass": "c", "foo": 1,
                     "nodeSelector": {"any": "key"},
                     "volumes": [{"name": "v", "configMap": {"name": "c", "bar": true}}]},
        });
        let unknown = api.unknown_fields(ship, &obj);
        assert_eq!(
            unknown,
            vec![
                "metadata.bogus",
                "spec.foo",
                "spec.volumes[0].configMap.bar"
            ]
        );
        let deploy = reg.get("apps", "v1", "deployments").unwrap();
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"app": "x"}, "shipTemplate": {"metadata": {"labels": {"app": "x"}},
            "spec": {"image": "i", "shipClass": "c"}}}});
        assert!(api.unknown_fields(deploy, &obj).is_empty());
        let nc = reg.get("", "v1", "networkclasses").unwrap();
        let obj = json!({"spec": {"cniPlugin": "bridge", "config": {"any": {"thing": 1}}}});
        assert!(api.unknown_fields(nc, &obj).is_empty());
    }
}
