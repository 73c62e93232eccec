//! The generic adapter from a typed Rust kind to [`KindOps`].

use crate::error::{DecodeError, FieldError};
use crate::registry::{Column, DecodeResult, KindOps};
use schemars::generate::SchemaSettings;
use schemars::transform::{
    transform_subschemas, RemoveRefSiblings, ReplaceBoolSchemas, ReplaceConstValue,
    SetSingleExample, Transform,
};
use schemars::{JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::marker::PhantomData;

/// What a typed resource supplies beyond its serde and schema derives.
pub trait Kind: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// Fills in server defaults (called on every decode).
    fn apply_defaults(&mut self) {}
    /// On a write replacing the stored `old`, before defaults: resolves fields derived from
    /// others that the client may have written in their derived form.
    fn resolve_update(&mut self, _old: &Self) {}
    /// Semantic checks of the decoded object; `old` is the stored object on update.
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        Vec::new()
    }
    /// Table columns, NAME first (AGE usually last).
    fn columns() -> Vec<Column>;
    /// Cells for [`Kind::columns`]; `obj` is the JSON form (for metadata), `now` the time.
    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value>;
    /// Field-selector fields this kind supports besides `metadata.name`/`metadata.namespace`.
    fn selectable_fields() -> &'static [&'static str] {
        &[]
    }
    /// Value of a field-selector field (absent fields read as `""`); `None` if unsupported.
    fn field(obj: &Value, path: &str) -> Option<String> {
        Self::selectable_fields()
            .contains(&path)
            .then(|| super::common::field_value(obj, path))
    }
}

/// [`KindOps`] for a typed kind `K`.
pub struct Typed<K>(PhantomData<fn() -> K>);

impl<K> Default for Typed<K> {
    fn default() -> Self {
        Typed(PhantomData)
    }
}

impl<K: Kind> Typed<K> {
    /// The adapter for `K`.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Settings for OpenAPI 3.0 schemas the way Kubernetes writes them: definitions under
/// `#/components/schemas/`, no `null` types, `$ref` siblings moved into `allOf`.
pub fn schema_settings() -> SchemaSettings {
    let mut s = SchemaSettings::openapi3();
    s.meta_schema = None;
    let mut bools = ReplaceBoolSchemas::default();
    bools.skip_additional_properties = true;
    s.transforms = vec![
        Box::new(bools),
        Box::new(StripNull),
        Box::new(RemoveRefSiblings::default()),
        Box::new(SetSingleExample::default()),
        Box::new(ReplaceConstValue::default()),
    ];
    s
}

/// Removes `null` alternatives and serde-derived `default` values (Kubernetes schemas mention
/// neither; defaults are applied by the server and described in the field docs), and turns
/// `x-required` field markers into the object's `required` list.
#[derive(Clone, Copy, Debug)]
struct StripNull;

impl Transform for StripNull {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(obj) = schema.as_object_mut() {
            obj.remove("nullable");
            obj.remove("default");
            // Fields marked `x-required` join the parent's `required` list.
            let mut required = Vec::new();
            if let Some(Value::Object(props)) = obj.get_mut("properties") {
                for (name, prop) in props.iter_mut() {
                    if let Some(p) = prop.as_object_mut() {
                        if p.remove("x-required").is_some() {
                            required.push(Value::String(name.clone()));
                        }
                    }
                }
            }
            if !required.is_empty() {
                if let Value::Array(list) = obj.entry("required").or_insert_with(|| json!([])) {
                    for r in required {
                        if !list.contains(&r) {
                            list.push(r);
                        }
                    }
                }
            }
            if let Some(Value::Array(types)) = obj.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let t = types[0].clone();
                    obj.insert("type".into(), t);
                }
            }
            let any_of = obj.get("anyOf").and_then(Value::as_array).cloned();
            if let Some(alts) = any_of {
                let non_null: Vec<Value> = alts
                    .into_iter()
                    .filter(|a| a.get("type") != Some(&json!("null")))
                    .collect();
                if non_null.len() == 1 {
                    obj.remove("anyOf");
                    if let Value::Object(inner) = &non_null[0] {
                        for (k, v) in inner {
                            obj.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                } else {
                    obj.insert("anyOf".into(), Value::Array(non_null));
                }
            }
        }
        transform_subschemas(self, schema);
    }
}

/// The schema of `T` inline, with every named type it uses added to `defs`.
pub fn schema_of<T: JsonSchema>(defs: &mut BTreeMap<String, Value>) -> Value {
    let mut gen = schema_settings().into_generator();
    let reference = gen.subschema_for::<T>();
    let mut found = gen.take_definitions(true);
    let root = found.remove(T::schema_name().as_ref());
    defs.extend(found);
    root.unwrap_or_else(|| reference.to_value())
}

/// Deserializes `obj` as `T`, reporting the dotted path of a type error.
pub fn from_value<T: DeserializeOwned>(obj: Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(obj).map_err(|e| {
        let path = e.path().to_string();
        DecodeError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

/// Decodes `obj` as `K` (resolved against the stored `old` on updates) and applies defaults.
fn decode_typed<K: Kind>(obj: Value, old: Option<&Value>) -> DecodeResult {
    if !obj.is_object() {
        return Err(DecodeError {
            path: String::new(),
            message: "the object must be a JSON object".to_string(),
        });
    }
    let api_version = obj.get("apiVersion").cloned();
    let kind = obj.get("kind").cloned();
    let metadata = obj.get("metadata").cloned();
    let mut typed: K = from_value(obj)?;
    // A stored object that no longer decodes resolves nothing.
    if let Some(old) = old.and_then(|o| from_value::<K>(o.clone()).ok()) {
        typed.resolve_update(&old);
    }
    typed.apply_defaults();
    let mut out = serde_json::to_value(&typed).map_err(|e| DecodeError {
        path: String::new(),
        message: e.to_string(),
    })?;
    if let Value::Object(map) = &mut out {
        for (key, value) in [
            ("apiVersion", api_version),
            ("kind", kind),
            ("metadata", metadata),
        ] {
            match value {
                Some(v) => {
                    map.insert(key.to_string(), v);
                }
                None => {
                    map.remove(key);
                }
            }
        }
    }
    Ok(out)
}

impl<K: Kind> KindOps for Typed<K> {
    fn schema(&self, defs: &mut BTreeMap<String, Value>) -> Value {
        schema_of::<K>(defs)
    }

    fn decode(&self, obj: Value) -> DecodeResult {
        decode_typed::<K>(obj, None)
    }

    fn decode_update(&self, obj: Value, old: &Value) -> DecodeResult {
        decode_typed::<K>(obj, Some(old))
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let typed: K = match from_value(obj.clone()) {
            Ok(t) => t,
            Err(e) => return vec![FieldError::invalid(e.path, &Value::Null, &e.message)],
        };
        let old: Option<K> = old.and_then(|o| from_value(o.clone()).ok());
        typed.validate(old.as_ref())
    }

    fn columns(&self) -> Vec<Column> {
        K::columns()
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let now = jiff::Timestamp::now();
        // Deserializing from a reference: no copy of the object per row.
        match K::deserialize(obj) {
            Ok(t) => t.cells(obj, now),
            Err(_) => {
                let cols = K::columns();
                cols.iter()
                    .map(|c| match c.format {
                        "name" => super::common::name_cell(obj),
                        "date" => super::common::age_cell(obj, now),
                        _ => json!("<unknown>"),
                    })
                    .collect()
            }
        }
    }

    fn field(&self, obj: &Value, path: &str) -> Option<String> {
        K::field(obj, path)
    }
}
