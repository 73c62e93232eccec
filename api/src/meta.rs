//! Object metadata rules shared by every kind: names, uid, timestamps, generation, and what a
//! write may change.

use crate::error::{ApiError, FieldError};
use crate::kinds::common::{dns1123_label, dns1123_subdomain};
use crate::registry::ResourceDef;
use rand::Rng;
use serde_json::{Map, Value};

/// Now as Kubernetes writes timestamps (`2026-11-21T10:00:00Z`).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

/// A random version-4 UUID.
pub fn new_uid() -> String {
    uuid_v4(rand::rng().random())
}

/// Formats 16 random bytes as a version-4 UUID (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
pub fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Five characters Kubernetes appends to `generateName`.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Checks a name that only has to be a valid URL path segment (RBAC objects).
pub fn path_segment_errors(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

/// The metadata object (created if missing).
pub fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object".into()))?;
    let m = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    m.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))
}

/// `metadata.<field>` as a string.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// The object's name.
pub fn name_of(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

/// `metadata.resourceVersion` as a number (`None` when absent or empty).
pub fn resource_version(obj: &Value) -> Result<Option<i64>, ApiError> {
    match meta_str(obj, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion: {s:?}"))),
    }
}

/// Fills the metadata of a new object: namespace, name (from `generateName`), uid,
/// creationTimestamp, generation; checks the name.
pub fn prepare_create(
    def: &ResourceDef,
    obj: &mut Value,
    namespace: Option<&str>,
    path_name: Option<&str>,
) -> Result<(), ApiError> {
    let meta = meta_mut(obj)?;
    if def.namespaced {
        let ns = namespace.unwrap_or("default");
        match meta.get("namespace").and_then(Value::as_str) {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ))
            }
            _ => {
                meta.insert("namespace".into(), Value::String(ns.to_string()));
            }
        }
    } else {
        meta.remove("namespace");
    }
    let mut name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        if let Some(gen) = meta.get("generateName").and_then(Value::as_str) {
            if !gen.is_empty() {
                name = format!("{gen}{}", random_suffix());
            }
        }
    }
    if let Some(p) = path_name {
        if name != p {
            return Err(ApiError::BadRequest(
                "the name of the object does not match the name on the URL".into(),
            ));
        }
    }
    if name.is_empty() {
        return Err(ApiError::invalid(
            def.kind,
            def.group,
            "",
            vec![FieldError::required(
                "metadata.name",
                "name or generateName is required",
            )],
        ));
    }
    let errs = match def.kind {
        "Namespace" => dns1123_label(&name),
        // RBAC names only need to be usable as a path segment (`system:masters`, …).
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => path_segment_errors(&name),
        _ => dns1123_subdomain(&name),
    };
    if !errs.is_empty() {
        return Err(ApiError::invalid(
            def.kind,
            def.group,
            &name,
            errs.iter()
                .map(|e| FieldError::invalid("metadata.name", &Value::String(name.clone()), e))
                .collect(),
        ));
    }
    meta.insert("name".into(), Value::String(name));
    meta.insert("uid".into(), Value::String(new_uid()));
    meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
    meta.insert("generation".into(), Value::from(1));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    meta.remove("selfLink");
    Ok(())
}

/// Everything of an object but metadata and status (what `generation` counts changes of).
fn spec_part(obj: &Value) -> Value {
    match obj.as_object() {
        Some(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => Value::Null,
    }
}

/// What part of an object a write targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteTarget {
    /// The main resource: status is kept from the stored object for kinds with `/status`.
    Main,
    /// `/status`: only status changes.
    Status,
}

/// Carries server-owned metadata over from the stored object and bumps `generation` when the
/// spec changed.
pub fn prepare_update(
    def: &ResourceDef,
    old: &Value,
    new: &mut Value,
    target: WriteTarget,
) -> Result<(), ApiError> {
    if target == WriteTarget::Status {
        // Only status (and nothing else) moves from the request onto the stored object.
        let status = new.get("status").cloned();
        let mut merged = old.clone();
        if let Some(o) = merged.as_object_mut() {
            match status {
                Some(s) => {
                    o.insert("status".into(), s);
                }
                None => {
                    o.remove("status");
                }
            }
        }
        *new = merged;
        return Ok(());
    }
    if def.status {
        if let Some(o) = new.as_object_mut() {
            match old.get("status") {
                Some(s) => {
                    o.insert("status".into(), s.clone());
                }
                None => {
                    o.remove("status");
                }
            }
        }
    }
    let old_meta = old.get("metadata").cloned().unwrap_or(Value::Null);
    let spec_changed = spec_part(old) != spec_part(new);
    let meta = meta_mut(new)?;
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "name",
    ] {
        match old_meta.get(f) {
            Some(v) => {
                meta.insert(f.into(), v.clone());
            }
            None => {
                meta.remove(f);
            }
        }
    }
    let generation = old_meta
        .get("generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    meta.insert(
        "generation".into(),
        Value::from(if spec_changed {
            generation + 1
        } else {
            generation
        }),
    );
    Ok(())
}

/// Whether the object is being deleted (has a deletionTimestamp).
pub fn is_terminating(obj: &Value) -> bool {
    meta_str(obj, "deletionTimestamp").is_some()
}

/// The object's finalizers.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_is_v4_shaped() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn create_rejects_subdomain_with_empty_part() {
        let reg = crate::kinds::registry();
        let def = reg.by_kind("v1", "ConfigMap").unwrap();
        for bad in ["a..b", "a.-b", "a-.b"] {
            let mut obj = serde_json::json!({"metadata": {"name": bad}});
            assert!(
                prepare_create(def, &mut obj, Some("default"), None).is_err(),
                "{bad}"
            );
        }
        let mut obj = serde_json::json!({"metadata": {"name": "a.b-c"}});
        prepare_create(def, &mut obj, Some("default"), None).unwrap();
    }

    #[test]
    fn names() {
        assert!(dns1123_subdomain("my-ship.a").is_empty());
        assert!(!dns1123_subdomain("My_Ship").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        // Each dot-separated part must be a label (the former meta.rs check let these through).
        assert!(!dns1123_subdomain("a..b").is_empty());
        assert!(!dns1123_subdomain("a.-b").is_empty());
        assert!(!dns1123_subdomain("a-.b").is_empty());
    }
}
