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

/// One row.
pub fn row(def: &ResourceDef, obj: &Value, include: IncludeObject) -> Value {
    let cells = def.ops.cells(obj);
    let mut row = json!({ "cells": cells });
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => row["object"] = obj.clone(),
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            })
        }
    }
    row
}

/// A Table of objects.
pub fn table<'a>(
    def: &ResourceDef,
    objs: impl Iterator<Item = &'a Value>,
    resource_version: i64,
    continue_token: Option<&str>,
    include: IncludeObject,
) -> Value {
    let rows: Vec<Value> = objs.map(|o| row(def, o, include)).collect();
    let mut meta = json!({ "resourceVersion": resource_version.to_string() });
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": column_definitions(def),
        "rows": rows,
    })
}
