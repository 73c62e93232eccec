//! Helpers shared by every kind: label selectors that also accept plain maps, conditions,
//! quantities, name checks, table cells and the kubectl-style age.

use crate::error::FieldError;
use crate::registry::Column;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// Selector
// ---------------------------------------------------------------------------------------------

/// A label selector written either as a plain map (`{app: web}`, the Tugboat form) or as a
/// Kubernetes `LabelSelector` (`{matchLabels: …, matchExpressions: …}`).
#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    /// `{app: web}`: every label must be equal.
    Map(BTreeMap<String, String>),
    /// `{matchLabels, matchExpressions}`.
    LabelSelector(LabelSelector),
}

impl Default for Selector {
    fn default() -> Self {
        Selector::Map(BTreeMap::new())
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Selector::Map(m) => m.serialize(s),
            Selector::LabelSelector(l) => l.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = Value::deserialize(d)?;
        let Value::Object(map) = &v else {
            return Err(D::Error::custom(
                "expected a map of labels or a LabelSelector object",
            ));
        };
        let structured = map.contains_key("matchLabels") || map.contains_key("matchExpressions");
        let all_strings = map.values().all(Value::is_string);
        if structured && !all_strings {
            serde_json::from_value(v)
                .map(Selector::LabelSelector)
                .map_err(D::Error::custom)
        } else {
            serde_json::from_value(v)
                .map(Selector::Map)
                .map_err(|_| D::Error::custom("selector values must be strings"))
        }
    }
}

impl JsonSchema for Selector {
    fn schema_name() -> Cow<'static, str> {
        "io.tugboat.core.v1.Selector".into()
    }

    fn json_schema(gen: &mut SchemaGenerator) -> Schema {
        let req = gen.subschema_for::<
            Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement>,
        >();
        json_schema!({
            "description": "A label selector: either a plain map of labels that must all match (`app: web`), or a Kubernetes LabelSelector with `matchLabels` and `matchExpressions`. An empty selector matches nothing for controllers.",
            "type": "object",
            "properties": {
                "matchLabels": {
                    "description": "matchLabels is a map of {key,value} pairs; every pair must match.",
                    "type": "object",
                    "additionalProperties": {"type": "string"}
                },
                "matchExpressions": {
                    "description": "matchExpressions is a list of label selector requirements (In, NotIn, Exists, DoesNotExist). The requirements are ANDed.",
                    "type": "array",
                    "items": req.get("items").cloned().unwrap_or(json!({}))
                }
            },
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

impl Selector {
    /// True when the selector selects nothing (no labels and no expressions).
    pub fn is_empty(&self) -> bool {
        match self {
            Selector::Map(m) => m.is_empty(),
            Selector::LabelSelector(l) => {
                l.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                    && l.match_expressions.as_ref().is_none_or(Vec::is_empty)
            }
        }
    }

    /// Whether `labels` satisfy the selector (an empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::Map(m) => m.iter().all(|(k, v)| labels.get(k) == Some(v)),
            Selector::LabelSelector(l) => {
                let labels_ok = l
                    .match_labels
                    .iter()
                    .flatten()
                    .all(|(k, v)| labels.get(k) == Some(v));
                let exprs_ok = l.match_expressions.iter().flatten().all(|e| {
                    let values = e.values.as_deref().unwrap_or_default();
                    match e.operator.as_str() {
                        "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                        "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                        "Exists" => labels.contains_key(&e.key),
                        "DoesNotExist" => !labels.contains_key(&e.key),
                        _ => false,
                    }
                });
                labels_ok && exprs_ok
            }
        }
    }

    /// The selector in `kubectl` string form: `app=web,tier in (a,b)`.
    pub fn to_query(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        match self {
            Selector::Map(m) => parts.extend(m.iter().map(|(k, v)| format!("{k}={v}"))),
            Selector::LabelSelector(l) => {
                parts.extend(
                    l.match_labels
                        .iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={v}")),
                );
                for e in l.match_expressions.iter().flatten() {
                    let values = e.values.as_deref().unwrap_or_default().join(",");
                    parts.push(match e.operator.as_str() {
                        "In" => format!("{} in ({values})", e.key),
                        "NotIn" => format!("{} notin ({values})", e.key),
                        "Exists" => e.key.clone(),
                        "DoesNotExist" => format!("!{}", e.key),
                        other => format!("{} {other} ({values})", e.key),
                    });
                }
            }
        }
        parts.join(",")
    }

    /// Checks the operators and values of `matchExpressions`.
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Selector::LabelSelector(l) = self {
            for (i, e) in l.match_expressions.iter().flatten().enumerate() {
                let p = format!("{path}.matchExpressions[{i}]");
                let n = e.values.as_ref().map_or(0, Vec::len);
                match e.operator.as_str() {
                    "In" | "NotIn" if n == 0 => errs.push(FieldError::required(
                        format!("{p}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    )),
                    "Exists" | "DoesNotExist" if n > 0 => errs.push(FieldError::forbidden(
                        format!("{p}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    )),
                    "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                    other => errs.push(FieldError::not_supported(
                        format!("{p}.operator"),
                        &json!(other),
                        &["In", "NotIn", "Exists", "DoesNotExist"],
                    )),
                }
            }
        }
        errs
    }
}

// ---------------------------------------------------------------------------------------------
// Condition
// ---------------------------------------------------------------------------------------------

/// One observation of an object's state (`Ready`, `Scheduled`, …), Kubernetes condition shape.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.Condition")]
pub struct Condition {
    /// Type of the condition, e.g. `Ready`, `Scheduled`, `Migrating`.
    #[serde(rename = "type")]
    #[schemars(extend("x-required" = true))]
    pub type_: String,
    /// Status of the condition: `True`, `False` or `Unknown`.
    #[schemars(extend("x-required" = true))]
    pub status: String,
    /// The `metadata.generation` the condition was computed for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Last time the condition was probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// Last time the condition changed from one status to another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Machine-readable, CamelCase reason for the last transition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable details about the last transition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Checks `type` and `status` of a list of conditions at `path`.
pub fn validate_conditions(conds: &[Condition], path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, c) in conds.iter().enumerate() {
        if c.type_.is_empty() {
            errs.push(FieldError::required(format!("{path}[{i}].type"), ""));
        }
        if !["True", "False", "Unknown"].contains(&c.status.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{path}[{i}].status"),
                &json!(c.status),
                &["False", "True", "Unknown"],
            ));
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------------------------

/// A string that is not a Kubernetes quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)]
pub struct QuantityError;

/// Parses a Kubernetes quantity (`4Gi`, `500m`, `2`, `1.5e3`) into its numeric value.
pub fn parse_quantity(s: &str) -> Result<f64, QuantityError> {
    let s = s.trim();
    let num_end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '+' || c == '-') && i == 0)))
        .map_or(s.len(), |(i, _)| i);
    let (num, suffix) = s.split_at(num_end);
    let digits = num.trim_start_matches(['+', '-']);
    if digits.is_empty()
        || !digits.chars().any(|c| c.is_ascii_digit())
        || digits.matches('.').count() > 1
    {
        return Err(QuantityError);
    }
    let value: f64 = num.parse().map_err(|_| QuantityError)?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| QuantityError)?;
            10f64.powi(e)
        }
        _ => return Err(QuantityError),
    };
    Ok(value * factor)
}

/// Validates a quantity at `path`, optionally requiring it to be positive. Returns its value.
pub fn check_quantity(
    q: &str,
    path: &str,
    positive: bool,
    errs: &mut Vec<FieldError>,
) -> Option<f64> {
    match parse_quantity(q) {
        Ok(v) if positive && v <= 0.0 => {
            errs.push(FieldError::invalid(
                path,
                &json!(q),
                "must be greater than 0",
            ));
            None
        }
        Ok(v) if v < 0.0 => {
            errs.push(FieldError::invalid(
                path,
                &json!(q),
                "must be greater than or equal to 0",
            ));
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            errs.push(FieldError::invalid(path, &json!(q), &e.to_string()));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names and simple checks
// ---------------------------------------------------------------------------------------------

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Problems with `s` as an RFC 1123 label (empty when valid), Kubernetes wording.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !is_label(s) {
        out.push(DNS1123_LABEL_MSG.to_string());
    }
    out
}

/// Problems with `s` as an RFC 1123 subdomain (empty when valid), Kubernetes wording.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 characters".to_string());
    }
    if !s.split('.').all(is_label) {
        out.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    out
}

/// Pushes `Invalid value` errors for a name at `path` that must be a DNS-1123 subdomain.
pub fn check_subdomain(name: &str, path: &str, errs: &mut Vec<FieldError>) {
    for m in dns1123_subdomain(name) {
        errs.push(FieldError::invalid(path, &json!(name), &m));
    }
}

/// Pushes `Invalid value` errors for a name at `path` that must be a DNS-1123 label.
pub fn check_label(name: &str, path: &str, errs: &mut Vec<FieldError>) {
    for m in dns1123_label(name) {
        errs.push(FieldError::invalid(path, &json!(name), &m));
    }
}

/// Requires a non-empty DNS-1123 subdomain at `path`.
pub fn require_subdomain(name: &str, path: &str, errs: &mut Vec<FieldError>) {
    if name.is_empty() {
        errs.push(FieldError::required(path, ""));
    } else {
        check_subdomain(name, path, errs);
    }
}

/// Checks ConfigMap/Secret data keys (`[-._a-zA-Z0-9]+`, at most 253 characters).
pub fn check_config_key(key: &str, path: &str, errs: &mut Vec<FieldError>) {
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !ok {
        errs.push(FieldError::invalid(path, &json!(key), CONFIG_KEY_MSG));
    }
    if key.len() > 253 {
        errs.push(FieldError::invalid(
            path,
            &json!(key),
            "must be no more than 253 characters",
        ));
    }
    if key == "." || key == ".." {
        errs.push(FieldError::invalid(
            path,
            &json!(key),
            "must not be '.' or '..'",
        ));
    }
}

/// `value` must be ≥ 0.
pub fn check_non_negative(value: Option<i64>, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(v) = value.filter(|v| *v < 0) {
        errs.push(FieldError::invalid(
            path,
            &json!(v),
            "must be greater than or equal to 0",
        ));
    }
}

/// An optional string must be one of `supported`.
pub fn check_enum(value: Option<&str>, path: &str, supported: &[&str], errs: &mut Vec<FieldError>) {
    if let Some(v) = value {
        if !supported.contains(&v) {
            errs.push(FieldError::not_supported(path, &json!(v), supported));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

/// The NAME column (`format: name`, always shown).
pub fn name_column() -> Column {
    Column {
        name: "Name",
        type_: "string",
        format: "name",
        description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        priority: 0,
    }
}

/// The AGE column, computed from `metadata.creationTimestamp`.
pub fn age_column() -> Column {
    Column {
        name: "Age",
        type_: "date",
        format: "date",
        description: "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.",
        priority: 0,
    }
}

/// A plain column.
pub const fn col(
    name: &'static str,
    type_: &'static str,
    description: &'static str,
    priority: i32,
) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority,
    }
}

/// `metadata.name` of a JSON object, empty if absent.
pub fn name_cell(obj: &Value) -> Value {
    json!(get_str(obj, &["metadata", "name"]).unwrap_or_default())
}

/// The AGE cell of a JSON object.
pub fn age_cell(obj: &Value, now: jiff::Timestamp) -> Value {
    match get_str(obj, &["metadata", "creationTimestamp"]) {
        Some(ts) => json!(human_age(ts, now)),
        None => json!("<unknown>"),
    }
}

/// The string at `path` in `obj`.
pub fn get_str<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(obj, path).and_then(Value::as_str)
}

/// The value at `path` in `obj`.
pub fn get<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, k| v.get(*k))
}

/// A field-selector value at a dotted `path` of `obj`: strings as is, numbers and booleans
/// printed, absent fields as `""`.
pub fn field_value(obj: &Value, path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    match get(obj, &parts) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Age of an object created at `creation` (RFC 3339) as kubectl prints it: `5s`, `3m20s`,
/// `2d4h`. `<unknown>` when the timestamp does not parse.
pub fn human_age(creation: &str, now: jiff::Timestamp) -> String {
    match creation.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(now.as_second() - t.as_second()),
        Err(_) => "<unknown>".to_string(),
    }
}

/// Age of `t` relative to `now` (see [`human_age`]).
pub fn human_age_of(t: &Time, now: jiff::Timestamp) -> String {
    human_duration(now.as_second() - t.0.as_second())
}

/// Kubernetes' `duration.HumanDuration` on a number of seconds.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_human_duration_matches_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(4 * 3600 + 120), "4h2m");
        assert_eq!(human_duration(20 * 3600), "20h");
        assert_eq!(human_duration(2 * 86400 + 3600 * 4), "2d4h");
        assert_eq!(human_duration(30 * 86400), "30d");
        assert_eq!(human_duration(3 * 365 * 86400 + 86400), "3y1d");
        let now: jiff::Timestamp = "2024-01-01T00:05:00Z".parse().unwrap();
        assert_eq!(human_age("2024-01-01T00:00:00Z", now), "5m");
        assert_eq!(human_age("bogus", now), "<unknown>");
    }

    #[test]
    fn kinds_quantities_parse() {
        assert_eq!(parse_quantity("4Gi"), Ok(4.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("500m"), Ok(0.5));
        assert_eq!(parse_quantity("2"), Ok(2.0));
        assert_eq!(parse_quantity("1e3"), Ok(1000.0));
        assert!(parse_quantity("4GB").is_err());
        assert!(parse_quantity("abc").is_err());
        assert!(parse_quantity("").is_err());
    }

    #[test]
    fn kinds_selector_accepts_both_forms() {
        let m: Selector = serde_json::from_value(json!({"app": "x"})).unwrap();
        assert_eq!(m, Selector::Map([("app".into(), "x".into())].into()));
        let l: Selector = serde_json::from_value(
            json!({"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}),
        )
        .unwrap();
        assert!(matches!(l, Selector::LabelSelector(_)));
        let labels: BTreeMap<String, String> =
            [("app".into(), "x".into()), ("tier".into(), "a".into())].into();
        assert!(m.matches(&labels));
        assert!(l.matches(&labels));
        assert_eq!(l.to_query(), "app=x,tier in (a)");
        assert!(serde_json::from_value::<Selector>(json!({"app": 1})).is_err());
        assert_eq!(serde_json::to_value(&m).unwrap(), json!({"app": "x"}));
    }

    #[test]
    fn kinds_dns_names() {
        assert!(dns1123_subdomain("a.b-c").is_empty());
        assert!(!dns1123_subdomain("A").is_empty());
        assert!(dns1123_label("data-disk").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
    }
}
