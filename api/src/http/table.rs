//! Server-side Tables (`kubectl get` asks for `as=Table`).

use crate::registry::ResourceDef;
use http::HeaderMap;
use serde_json::{json, Value};

/// What each row carries as `object`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// From `includeObject=`.
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether the client asked for a Table.
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Column definitions of a kind.
pub fn column_definitions(def: &ResourceDef) -> Vec<Value> {
    def.ops
        .columns()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.type_,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect()
}

/// Writes one row as JSON. The row's object carries the metadata without managedFields, which
/// no table printer reads and which would double the size of a large list.
fn write_row(out: &mut Vec<u8>, def: &ResourceDef, obj: &Value, include: IncludeObject) {
    out.extend_from_slice(b"{\"cells\":");
    let _ = serde_json::to_writer(&mut *out, &def.ops.cells(obj));
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => {
            out.extend_from_slice(b",\"object\":");
            let _ = serde_json::to_writer(&mut *out, obj);
        }
        IncludeObject::Metadata => {
            out.extend_from_slice(
                b",\"object\":{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":{",
            );
            if let Some(m) = obj.get("metadata").and_then(Value::as_object) {
                let mut first = true;
                for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "managedFields") {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    let _ = serde_json::to_writer(&mut *out, k);
                    out.push(b':');
                    let _ = serde_json::to_writer(&mut *out, v);
                }
            }
            out.extend_from_slice(b"}}");
        }
    }
    out.push(b'}');
}

/// A Table of objects, serialized row by row (a 10,000-row table never exists as a tree).
/// Watch events after the first leave out the column definitions, as Kubernetes does.
pub fn table<'a>(
    def: &ResourceDef,
    objs: impl Iterator<Item = &'a Value>,
    resource_version: i64,
    continue_token: Option<&str>,
    include: IncludeObject,
    with_columns: bool,
) -> Vec<u8> {
    let mut meta = json!({ "resourceVersion": resource_version.to_string() });
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"kind\":\"Table\",\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":");
    let _ = serde_json::to_writer(&mut out, &meta);
    out.extend_from_slice(b",\"columnDefinitions\":");
    let columns = if with_columns {
        column_definitions(def)
    } else {
        Vec::new()
    };
    let _ = serde_json::to_writer(&mut out, &columns);
    out.extend_from_slice(b",\"rows\":[");
    for (i, o) in objs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_row(&mut out, def, o, include);
    }
    out.extend_from_slice(b"]}");
    out
}
