//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! Every field of an object may be owned by field managers. An applier (`operation: Apply`)
//! owns exactly the fields of its last applied configuration; every other write
//! (`operation: Update`) takes ownership of the fields it changed ([`record_update`]).
//! Applying a field that another manager owns with a different value is a conflict unless
//! forced, in which case the other manager loses the field. Fields an applier applied before and
//! omits now are removed from the object unless another manager also owns them.
//!
//! Field sets use the `FieldsV1` encoding: `f:<field>` for map fields, `k:{"name":"x"}` for the
//! items of lists of objects that all carry a string `name` (such items are owned themselves,
//! `"."`, as well as their fields), and every other list is atomic (owned as a whole).
//!
//! Not tracked: `apiVersion`, `kind`, `status` (the HTTP layer resets it on the main resource)
//! and the server-set metadata (`name`, `namespace`, `uid`, `resourceVersion`, `generation`,
//! `creationTimestamp`, `deletionTimestamp`, `deletionGracePeriodSeconds`, `selfLink`,
//! `managedFields`).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::{Conflict, PatchError};

/// Metadata fields the server owns, never part of a field set.
const SERVER_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A map field (`f:spec`).
    Field(String),
    /// A list item identified by its key fields, as compact JSON with sorted keys
    /// (`k:{"name":"x"}`).
    Key(String),
    /// A set item identified by its value, as JSON (`v:"x"`).
    Value(String),
    /// A list item by index (`i:0`).
    Index(usize),
}

/// A field path from the object root.
pub type FieldPath = Vec<PathElement>;

/// A set of owned field paths.
pub type FieldSet = BTreeSet<FieldPath>;

/// Renders a path the way structured-merge-diff prints it in conflict messages:
/// `.spec.replicas`, `.spec.volumes[name="data"].size`.
pub fn path_to_string(path: &[PathElement]) -> String {
    let mut s = String::new();
    for e in path {
        match e {
            PathElement::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            PathElement::Key(k) => {
                let fields: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_else(|_| vec![k.clone()]);
                s.push_str(&format!("[{}]", fields.join(",")));
            }
            PathElement::Value(v) => s.push_str(&format!("[={v}]")),
            PathElement::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The key of a list item (`{"name":"x"}`) when it is an object with a string `name`.
fn item_key(item: &Value) -> Option<String> {
    let name = item.get("name")?.as_str()?;
    Some(json!({ "name": name }).to_string())
}

/// Whether a list is keyed by `name` (non-empty, every item an object with a string `name`).
fn is_keyed(list: &[Value]) -> bool {
    !list.is_empty() && list.iter().all(|i| item_key(i).is_some())
}

/// Canonical compact JSON with sorted keys (for `k:` elements read from stored field sets).
fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical_json(&m[*k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// The object without the untracked fields (see the module documentation).
fn strip(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("apiVersion");
        m.remove("kind");
        m.remove("status");
        if let Some(Value::Object(meta)) = m.get_mut("metadata") {
            for f in SERVER_METADATA {
                meta.remove(f);
            }
            if meta.is_empty() {
                m.remove("metadata");
            }
        }
    }
    v
}

/// The leaf field paths of a value: scalars, atomic lists, empty maps, and keyed list items
/// (with their fields). `null`s are not fields.
pub fn fields_of(value: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let mut prefix = Vec::new();
    collect_fields(value, &mut prefix, &mut out);
    out
}

fn collect_fields(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
    match v {
        Value::Null => {}
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(PathElement::Field(k.clone()));
                collect_fields(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) if is_keyed(items) => {
            for item in items {
                if let Some(key) = item_key(item) {
                    prefix.push(PathElement::Key(key));
                    out.insert(prefix.clone());
                    collect_fields(item, prefix, out);
                    prefix.pop();
                }
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

/// Encodes a field set as `fieldsV1`.
pub fn encode_fields(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        insert_member(&mut root, path);
    }
    collapse(&mut root);
    Value::Object(root)
}

/// Marks `path` (relative to `node`) as a member (`"."`).
fn insert_member(node: &mut Map<String, Value>, path: &[PathElement]) {
    let Some((e, rest)) = path.split_first() else {
        node.insert(".".to_string(), Value::Object(Map::new()));
        return;
    };
    let key = match e {
        PathElement::Field(f) => format!("f:{f}"),
        PathElement::Key(k) => format!("k:{k}"),
        PathElement::Value(v) => format!("v:{v}"),
        PathElement::Index(i) => format!("i:{i}"),
    };
    let child = node.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = child {
        insert_member(m, rest);
    }
}

/// Turns `{".": {}}` (a member without children) into `{}`.
fn collapse(node: &mut Map<String, Value>) {
    for child in node.values_mut() {
        if let Value::Object(m) = child {
            collapse(m);
            if m.len() == 1 && m.contains_key(".") {
                m.clear();
            }
        }
    }
}

/// Decodes `fieldsV1` into a field set (unknown element prefixes are skipped).
pub fn decode_fields(fields: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let mut prefix = Vec::new();
    if let Value::Object(m) = fields {
        decode_node(m, &mut prefix, &mut out);
    }
    out
}

fn decode_node(node: &Map<String, Value>, prefix: &mut FieldPath, out: &mut FieldSet) {
    for (k, child) in node {
        if k == "." {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            continue;
        }
        let elem = if let Some(f) = k.strip_prefix("f:") {
            PathElement::Field(f.to_string())
        } else if let Some(j) = k.strip_prefix("k:") {
            PathElement::Key(
                serde_json::from_str::<Value>(j)
                    .map(|v| canonical_json(&v))
                    .unwrap_or_else(|_| j.to_string()),
            )
        } else if let Some(j) = k.strip_prefix("v:") {
            PathElement::Value(j.to_string())
        } else if let Some(Ok(i)) = k.strip_prefix("i:").map(str::parse) {
            PathElement::Index(i)
        } else {
            continue;
        };
        prefix.push(elem);
        match child {
            Value::Object(m) if !m.is_empty() => decode_node(m, prefix, out),
            _ => {
                out.insert(prefix.clone());
            }
        }
        prefix.pop();
    }
}

/// Whether list item `item` is the one `key` (JSON of key fields) designates.
fn item_matches_key(item: &Value, key: &str) -> bool {
    match serde_json::from_str::<Map<String, Value>>(key) {
        Ok(fields) => fields.iter().all(|(k, v)| item.get(k) == Some(v)),
        Err(_) => false,
    }
}

/// The value at `path`.
pub fn get_path<'a>(v: &'a Value, path: &[PathElement]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, e| match (e, cur) {
        (PathElement::Field(f), Value::Object(m)) => m.get(f),
        (PathElement::Key(k), Value::Array(a)) => a.iter().find(|i| item_matches_key(i, k)),
        (PathElement::Value(j), Value::Array(a)) => {
            let want: Value = serde_json::from_str(j).ok()?;
            a.iter().find(|i| **i == want)
        }
        (PathElement::Index(i), Value::Array(a)) => a.get(*i),
        _ => None,
    })
}

fn get_path_mut<'a>(v: &'a mut Value, path: &[PathElement]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |cur, e| match (e, cur) {
        (PathElement::Field(f), Value::Object(m)) => m.get_mut(f),
        (PathElement::Key(k), Value::Array(a)) => a.iter_mut().find(|i| item_matches_key(i, k)),
        (PathElement::Value(j), Value::Array(a)) => {
            let want: Value = serde_json::from_str(j).ok()?;
            a.iter_mut().find(|i| **i == want)
        }
        (PathElement::Index(i), Value::Array(a)) => a.get_mut(*i),
        _ => None,
    })
}

/// Removes the value at `path`; true when something was removed.
fn remove_path(v: &mut Value, path: &[PathElement]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match (last, get_path_mut(v, parent)) {
        (PathElement::Field(f), Some(Value::Object(m))) => m.remove(f).is_some(),
        (PathElement::Key(k), Some(Value::Array(a))) => {
            let before = a.len();
            a.retain(|i| !item_matches_key(i, k));
            a.len() != before
        }
        (PathElement::Value(j), Some(Value::Array(a))) => match serde_json::from_str::<Value>(j) {
            Ok(want) => {
                let before = a.len();
                a.retain(|i| *i != want);
                a.len() != before
            }
            Err(_) => false,
        },
        (PathElement::Index(i), Some(Value::Array(a))) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    fields: FieldSet,
}

impl Entry {
    fn parse(v: &Value) -> Option<Entry> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let manager = s("manager")?;
        Some(Entry {
            manager,
            operation: s("operation").unwrap_or_else(|| "Update".to_string()),
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").unwrap_or_default(),
            fields: v.get("fieldsV1").map(decode_fields).unwrap_or_default(),
        })
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), Value::String(self.manager.clone()));
        m.insert("operation".into(), Value::String(self.operation.clone()));
        m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::String(t.clone()));
        }
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), encode_fields(&self.fields));
        if !self.subresource.is_empty() {
            m.insert(
                "subresource".into(),
                Value::String(self.subresource.clone()),
            );
        }
        Value::Object(m)
    }

    fn conflict(&self, path: &[PathElement]) -> Conflict {
        Conflict {
            manager: self.manager.clone(),
            operation: self.operation.clone(),
            api_version: self.api_version.clone(),
            subresource: self.subresource.clone(),
            path: path_to_string(path),
        }
    }
}

/// The managed-field entries of an object.
fn entries_of(obj: Option<&Value>) -> Vec<Entry> {
    obj.and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Entry::parse).collect())
        .unwrap_or_default()
}

/// Drops empty entries, sorts like Kubernetes (operation, time, manager, apiVersion,
/// subresource) and stores them in `obj.metadata.managedFields`.
fn store_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let Value::Object(root) = obj else {
        return;
    };
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Value::Object(meta) = meta {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert(
                "managedFields".into(),
                Value::Array(entries.iter().map(Entry::to_json).collect()),
            );
        }
    }
}

/// Decodes a server-side apply body: JSON or YAML (a single document), which must be an object.
pub fn decode_apply_body(body: &[u8]) -> Result<Value, PatchError> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => serde_yaml::from_slice(body)
            .map_err(|e| PatchError::Decode(format!("error decoding YAML: {e}")))?,
    };
    if !value.is_object() {
        return Err(PatchError::Decode(format!(
            "error decoding YAML: the applied configuration must be an object, got {value}"
        )));
    }
    Ok(value)
}

/// Whether `a` is a proper prefix of `b`.
fn is_prefix(a: &[PathElement], b: &[PathElement]) -> bool {
    a.len() < b.len() && b[..a.len()] == *a
}

/// Whether owning `owned` covers `field`: the same field, a field inside `field`, or an
/// atomic value around it (owning a list item does not own the item's other fields).
fn overlaps(owned: &[PathElement], field: &[PathElement]) -> bool {
    owned == field
        || is_prefix(field, owned)
        || (is_prefix(owned, field) && !matches!(owned.last(), Some(PathElement::Key(_))))
}

/// Server-side apply of configuration `applied` by field manager `manager` at time `now`
/// (RFC 3339) onto `current` (`None` creates). Returns the new object, with
/// `metadata.managedFields` updated; the caller still sets the server-owned metadata
/// (`uid`, `resourceVersion`, …) and validates. A `metadata.resourceVersion` in `applied` is
/// kept in the result, so the store's optimistic concurrency check honours it as a
/// precondition. `status` in `applied` is ignored.
///
/// Errors: `BadPatch` when `applied` is not an object or sets `metadata.managedFields`;
/// `Conflicts` when a field owned by another manager would change and `force` is false.
pub fn apply(
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, PatchError> {
    let Value::Object(applied_map) = applied else {
        return Err(PatchError::BadPatch(
            "the applied configuration must be an object".to_string(),
        ));
    };
    if applied
        .pointer("/metadata/managedFields")
        .is_some_and(|v| !v.is_null())
    {
        return Err(PatchError::BadPatch(
            "metadata.managedFields must be nil".to_string(),
        ));
    }
    let api_version = applied_map
        .get("apiVersion")
        .and_then(Value::as_str)
        .or_else(|| {
            current
                .and_then(|c| c.get("apiVersion"))
                .and_then(Value::as_str)
        })
        .unwrap_or("")
        .to_string();

    let applied_tracked = strip(applied);
    let new_set = fields_of(&applied_tracked);
    let current_tracked = current.map(strip).unwrap_or_else(|| json!({}));

    let mut entries = entries_of(current);
    if let (Some(cur), true) = (current, entries.is_empty()) {
        // An object nobody tracked yet: its fields belong to `before-first-apply`, as in
        // Kubernetes, so a first apply does not silently overwrite them.
        let fields = fields_of(&current_tracked);
        if !fields.is_empty() {
            entries.push(Entry {
                manager: "before-first-apply".to_string(),
                operation: "Update".to_string(),
                api_version: cur
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                time: None,
                subresource: String::new(),
                fields,
            });
        }
    }
    let mine = entries
        .iter()
        .position(|e| e.manager == manager && e.operation == "Apply" && e.subresource.is_empty());
    let old_set = mine.map(|i| entries[i].fields.clone()).unwrap_or_default();

    // Conflicts: another manager owns the field (or an ancestor or descendant of it) and the
    // applied value differs from the current one.
    let mut conflicts = Vec::new();
    let mut lost: Vec<(usize, FieldPath)> = Vec::new();
    for p in &new_set {
        if matches!(p.last(), Some(PathElement::Key(_))) {
            continue; // item membership never conflicts by itself
        }
        let applied_v = get_path(&applied_tracked, p);
        let current_v = get_path(&current_tracked, p);
        let differs = match applied_v {
            // An empty map merges: it changes nothing unless a non-map is there.
            Some(Value::Object(_)) => current_v.is_some_and(|c| !c.is_object()),
            _ => applied_v != current_v,
        };
        if !differs {
            continue;
        }
        for (i, e) in entries.iter().enumerate() {
            if Some(i) == mine {
                continue;
            }
            let owned: Vec<FieldPath> = e
                .fields
                .iter()
                .filter(|q| overlaps(q, p))
                .cloned()
                .collect();
            for q in owned {
                let shown = if is_prefix(p, &q) { &q } else { p };
                conflicts.push(e.conflict(shown));
                lost.push((i, q));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.dedup();
        return Err(PatchError::Conflicts(conflicts));
    }
    for (i, q) in lost {
        entries[i].fields.remove(&q);
    }

    // Fields this manager applied before and omits now.
    let mut obj = current.cloned().unwrap_or_else(|| json!({}));
    // Shortest paths first: once an item or map goes, its fields go with it.
    let mut removed: Vec<&FieldPath> = old_set.difference(&new_set).collect();
    removed.sort_by_key(|p| p.len());
    let mut gone: Vec<&FieldPath> = Vec::new();
    for r in removed {
        if gone.iter().any(|g| is_prefix(g, r)) {
            continue;
        }
        // Still applied below, or inside a value the merge below replaces wholesale.
        if new_set.iter().any(|n| {
            is_prefix(r, n)
                || (is_prefix(n, r) && !get_path(&applied_tracked, n).is_some_and(Value::is_object))
        }) {
            continue;
        }
        // Another manager owns the field, something inside it, or an atomic value around it.
        let owned_elsewhere = |path: &[PathElement]| {
            entries
                .iter()
                .enumerate()
                .any(|(i, e)| Some(i) != mine && e.fields.iter().any(|q| overlaps(q, path)))
        };
        if owned_elsewhere(r) {
            continue;
        }
        if remove_path(&mut obj, r) {
            gone.push(r);
            prune_empty_parents(&mut obj, r, &new_set, &owned_elsewhere);
        }
    }

    // Merge the applied configuration.
    let mut to_merge = applied.clone();
    if let Value::Object(m) = &mut to_merge {
        m.remove("status");
    }
    merge_applied(&mut obj, &to_merge);

    // Record ownership.
    match mine {
        Some(i) => {
            entries[i].fields = new_set;
            entries[i].time = Some(now.to_string());
            entries[i].api_version = api_version;
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".to_string(),
            api_version,
            time: Some(now.to_string()),
            subresource: String::new(),
            fields: new_set,
        }),
    }
    store_entries(&mut obj, entries);
    Ok(obj)
}

/// After removing `path`, removes the maps and lists it leaves empty, unless someone owns them.
fn prune_empty_parents(
    obj: &mut Value,
    path: &[PathElement],
    new_set: &FieldSet,
    owned_elsewhere: &dyn Fn(&[PathElement]) -> bool,
) {
    let mut parent = &path[..path.len().saturating_sub(1)];
    while !parent.is_empty() {
        let empty = match get_path(obj, parent) {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if !empty || new_set.contains(parent) || owned_elsewhere(parent) {
            return;
        }
        remove_path(obj, parent);
        parent = &parent[..parent.len() - 1];
    }
}

/// Merges an applied configuration into the object: maps merge, keyed lists merge by `name`,
/// other lists and scalars replace, `null` removes.
fn merge_applied(cur: &mut Value, applied: &Value) {
    match (cur, applied) {
        (Value::Object(c), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    c.remove(k);
                    continue;
                }
                match c.get_mut(k) {
                    Some(cv) => merge_applied(cv, av),
                    None => {
                        let mut v = av.clone();
                        drop_nulls(&mut v);
                        c.insert(k.clone(), v);
                    }
                }
            }
        }
        (Value::Array(c), Value::Array(a))
            if is_keyed(a) && c.iter().all(|i| item_key(i).is_some()) =>
        {
            for item in a {
                let key = item_key(item);
                match c.iter_mut().find(|i| item_key(i) == key) {
                    Some(existing) => merge_applied(existing, item),
                    None => {
                        let mut v = item.clone();
                        drop_nulls(&mut v);
                        c.push(v);
                    }
                }
            }
        }
        (cur, applied) => {
            let mut v = applied.clone();
            drop_nulls(&mut v);
            *cur = v;
        }
    }
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Records a non-apply write (`operation`, normally `Update`) by `manager` at `now` in
/// `new.metadata.managedFields`: the manager takes ownership of every field whose value
/// `new` changed against `old` (`None` for a create: every field), other managers lose those
/// fields, and fields that `new` no longer has are owned by nobody.
///
/// The starting entries are `old`'s, unless `new` carries its own `metadata.managedFields`
/// that differ (a client resetting them; `[{}]` clears them), as Kubernetes allows.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    operation: &str,
    now: &str,
) {
    let old_entries = entries_of(old);
    let sent = new.pointer("/metadata/managedFields").cloned();
    let mut entries = match &sent {
        Some(Value::Array(a)) => {
            let parsed: Vec<Entry> = a.iter().filter_map(Entry::parse).collect();
            if parsed == old_entries {
                old_entries
            } else {
                parsed
            }
        }
        _ => old_entries,
    };

    let old_tracked = old.map(strip).unwrap_or_else(|| json!({}));
    let new_tracked = strip(new);
    let old_set = fields_of(&old_tracked);
    let new_set = fields_of(&new_tracked);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| match p.last() {
            Some(PathElement::Key(_)) => get_path(&old_tracked, p).is_none(),
            _ => get_path(&old_tracked, p) != get_path(&new_tracked, p),
        })
        .cloned()
        .collect();
    let gone: FieldSet = old_set.difference(&new_set).cloned().collect();

    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let is_mine = |e: &Entry| {
        e.manager == manager
            && e.operation == operation
            && e.subresource.is_empty()
            && (operation == "Apply" || e.api_version == api_version)
    };
    for e in entries.iter_mut() {
        e.fields.retain(|q| !gone.contains(q));
        if !is_mine(e) {
            e.fields.retain(|q| !changed.iter().any(|p| overlaps(q, p)));
        }
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| is_mine(e)) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = Some(now.to_string());
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: operation.to_string(),
                api_version,
                time: Some(now.to_string()),
                subresource: String::new(),
                fields: changed,
            }),
        }
    }
    store_entries(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2025-01-01T00:00:00Z";
    const T2: &str = "2025-01-01T00:01:00Z";

    fn deployment(replicas: i64, labels: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": labels},
            "spec": {"replicas": replicas, "selector": {"app": "web"}}
        })
    }

    fn managers(obj: &Value) -> Vec<(String, String)> {
        obj["metadata"]["managedFields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["manager"].as_str().unwrap().to_string(),
                            e["operation"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn create_records_apply_entry() {
        let obj = apply(
            None,
            &deployment(1, json!({"app": "web"})),
            "kubectl",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["metadata"]["name"], "web");
        let mf = &obj["metadata"]["managedFields"][0];
        assert_eq!(
            mf,
            &json!({
                "manager": "kubectl",
                "operation": "Apply",
                "apiVersion": "apps/v1",
                "time": T1,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:replicas": {}, "f:selector": {"f:app": {}}}
                }
            })
        );
    }

    #[test]
    fn reapply_removes_omitted_fields() {
        let obj = apply(
            None,
            &deployment(1, json!({"app": "web", "tier": "front"})),
            "kubectl",
            false,
            T1,
        )
        .unwrap();
        let obj = apply(
            Some(&obj),
            &deployment(2, json!({"app": "web"})),
            "kubectl",
            false,
            T2,
        )
        .unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(obj["spec"]["replicas"], 2);
        assert_eq!(obj["metadata"]["managedFields"][0]["time"], T2);
        assert_eq!(managers(&obj), vec![("kubectl".into(), "Apply".into())]);

        // Dropping every label removes the map it leaves empty.
        let mut cfg = deployment(2, json!({}));
        cfg["metadata"].as_object_mut().unwrap().remove("labels");
        let obj = apply(Some(&obj), &cfg, "kubectl", false, T2).unwrap();
        assert!(obj["metadata"].get("labels").is_none(), "{obj}");
    }

    #[test]
    fn fields_owned_by_others_survive_omission() {
        let obj = apply(
            None,
            &deployment(1, json!({"app": "web", "x": "1"})),
            "a",
            false,
            T1,
        )
        .unwrap();
        let obj = apply(
            Some(&obj),
            &deployment(1, json!({"x": "1"})),
            "b",
            false,
            T1,
        )
        .unwrap();
        // `a` drops label x, but `b` co-owns it.
        let obj = apply(
            Some(&obj),
            &deployment(1, json!({"app": "web"})),
            "a",
            false,
            T2,
        )
        .unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"app": "web", "x": "1"}));
    }

    #[test]
    fn conflict_with_update_manager_and_force() {
        // Created by client-side apply (an Update), then scaled by `kubectl scale`-like patch.
        let mut obj = deployment(1, json!({"app": "web"}));
        record_update(None, &mut obj, "kubectl-client-side-apply", "Update", T1);
        assert_eq!(
            managers(&obj),
            vec![("kubectl-client-side-apply".into(), "Update".into())]
        );
        let err = apply(
            Some(&obj),
            &deployment(3, json!({"app": "web"})),
            "kubectl",
            false,
            T2,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
        assert_eq!(
            err.to_api_error("Deployment", "apps", "deployments", "web")
                .code(),
            409
        );

        // Same value: shared ownership, no conflict.
        let shared = apply(
            Some(&obj),
            &deployment(1, json!({"app": "web"})),
            "kubectl",
            false,
            T2,
        )
        .unwrap();
        assert_eq!(managers(&shared).len(), 2);

        // Forced: the applier takes the field over.
        let forced = apply(
            Some(&obj),
            &deployment(3, json!({"app": "web"})),
            "kubectl",
            true,
            T2,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let other = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "kubectl-client-side-apply")
            .unwrap();
        assert!(
            other["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
            "{other}"
        );
        assert!(other["fieldsV1"]["f:spec"].get("f:selector").is_some());
        // Apply entries sort before Update entries.
        assert_eq!(managers(&forced)[0].1, "Apply");
    }

    #[test]
    fn conflicts_between_appliers_list_every_field() {
        let obj = apply(None, &deployment(1, json!({"app": "web"})), "a", false, T1).unwrap();
        let err = apply(
            Some(&obj),
            &deployment(2, json!({"app": "db"})),
            "b",
            false,
            T2,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"a\"\n- .metadata.labels.app\n- .spec.replicas"
        );
    }

    #[test]
    fn update_takes_ownership_from_applier() {
        let obj = apply(
            None,
            &deployment(1, json!({"app": "web"})),
            "kubectl",
            false,
            T1,
        )
        .unwrap();
        let mut edited = obj.clone();
        edited["spec"]["replicas"] = json!(5);
        record_update(Some(&obj), &mut edited, "kubectl-edit", "Update", T2);
        assert_eq!(managers(&edited).len(), 2);
        // Re-applying replicas now conflicts with kubectl-edit.
        let err = apply(
            Some(&edited),
            &deployment(1, json!({"app": "web"})),
            "kubectl",
            false,
            T2,
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("\"kubectl-edit\" using apps/v1: .spec.replicas"));
        // And applying without replicas leaves it alone (kubectl no longer owns it).
        let mut cfg = deployment(1, json!({"app": "web"}));
        cfg["spec"].as_object_mut().unwrap().remove("replicas");
        let out = apply(Some(&edited), &cfg, "kubectl", false, T2).unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
    }

    #[test]
    fn update_without_changes_adds_no_entry_and_removed_fields_lose_owners() {
        let mut obj = deployment(1, json!({"app": "web", "x": "y"}));
        record_update(None, &mut obj, "creator", "Update", T1);
        let mut same = obj.clone();
        record_update(Some(&obj), &mut same, "other", "Update", T2);
        assert_eq!(managers(&same), vec![("creator".into(), "Update".into())]);
        let mut fewer = obj.clone();
        fewer["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("x");
        record_update(Some(&obj), &mut fewer, "other", "Update", T2);
        assert_eq!(
            fewer["metadata"]["managedFields"][0]["fieldsV1"]["f:metadata"]["f:labels"],
            json!({"f:app": {}})
        );
        // Clearing with `[{}]`.
        let mut cleared = obj.clone();
        cleared["metadata"]["managedFields"] = json!([{}]);
        record_update(Some(&obj), &mut cleared, "x", "Update", T2);
        assert!(cleared["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn keyed_lists() {
        let cfg = |vols: Value| {
            json!({"apiVersion": "v1", "kind": "Ship", "metadata": {"name": "s"},
                   "spec": {"volumes": vols, "ports": [80, 443]}})
        };
        let obj = apply(
            None,
            &cfg(json!([{"name": "a", "size": 1}, {"name": "b", "size": 2}])),
            "m1",
            false,
            T1,
        )
        .unwrap();
        let f = &obj["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"];
        assert_eq!(
            f["f:volumes"]["k:{\"name\":\"a\"}"],
            json!({".": {}, "f:name": {}, "f:size": {}})
        );
        assert_eq!(f["f:ports"], json!({}));
        // Another manager adds item c; m1 drops b.
        let obj = apply(
            Some(&obj),
            &cfg(json!([{"name": "c", "size": 3}])),
            "m2",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(obj["spec"]["volumes"].as_array().unwrap().len(), 3);
        let obj = apply(
            Some(&obj),
            &cfg(json!([{"name": "a", "size": 1}])),
            "m1",
            false,
            T2,
        )
        .unwrap();
        assert_eq!(
            obj["spec"]["volumes"],
            json!([{"name": "a", "size": 1}, {"name": "c", "size": 3}])
        );
        // A conflicting item field shows the key.
        let err = apply(
            Some(&obj),
            &cfg(json!([{"name": "a", "size": 9}])),
            "m2",
            false,
            T2,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(".spec.volumes[name=\"a\"].size"),
            "{err}"
        );
        // Round trip of the encoding.
        let set = fields_of(&strip(&obj));
        assert_eq!(decode_fields(&encode_fields(&set)), set);
    }

    #[test]
    fn owning_an_item_does_not_own_its_other_fields() {
        let cfg = |vols: Value| json!({"apiVersion": "v1", "kind": "Ship", "metadata": {"name": "s"}, "spec": {"volumes": vols}});
        let obj = apply(None, &cfg(json!([{"name": "c"}])), "m2", false, T1).unwrap();
        let obj = apply(
            Some(&obj),
            &cfg(json!([{"name": "c", "size": 5}])),
            "m1",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(obj["spec"]["volumes"], json!([{"name": "c", "size": 5}]));
        let mut edited = obj.clone();
        edited["spec"]["volumes"][0]["size"] = json!(6);
        record_update(Some(&obj), &mut edited, "editor", "Update", T2);
        let m2 = edited["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "m2")
            .unwrap();
        assert_eq!(
            m2["fieldsV1"]["f:spec"]["f:volumes"]["k:{\"name\":\"c\"}"],
            json!({".": {}, "f:name": {}})
        );
        // An empty list is an atomic value: applying it conflicts with the item owners.
        assert!(apply(Some(&obj), &cfg(json!([])), "m1", false, T2).is_err());
        let mut omitted = cfg(json!([]));
        omitted["spec"] = json!({});
        let obj = apply(Some(&obj), &omitted, "m1", false, T2).unwrap();
        assert_eq!(obj["spec"]["volumes"], json!([{"name": "c"}]), "{obj:#}");
    }

    #[test]
    fn first_apply_to_an_untracked_object() {
        let cur = deployment(1, json!({"app": "web"}));
        let err = apply(
            Some(&cur),
            &deployment(2, json!({"app": "web"})),
            "kubectl",
            false,
            T1,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"before-first-apply\" using apps/v1: .spec.replicas"
        );
        let obj = apply(
            Some(&cur),
            &deployment(1, json!({"app": "web"})),
            "kubectl",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(
            managers(&obj),
            vec![
                ("kubectl".into(), "Apply".into()),
                ("before-first-apply".into(), "Update".into())
            ]
        );
    }

    #[test]
    fn apply_body_decoding_and_validation() {
        let yaml = b"apiVersion: v1\nkind: Ship\nmetadata:\n  name: s\nspec:\n  replicas: 2\n";
        let v = decode_apply_body(yaml).unwrap();
        assert_eq!(v["spec"]["replicas"], 2);
        let v = decode_apply_body(br#"{"apiVersion":"v1","kind":"Ship"}"#).unwrap();
        assert_eq!(v["kind"], "Ship");
        assert!(matches!(
            decode_apply_body(b"- a\n- b\n"),
            Err(PatchError::Decode(_))
        ));
        assert!(matches!(
            decode_apply_body(b"a: [\n"),
            Err(PatchError::Decode(_))
        ));
        let mut bad = deployment(1, json!({}));
        bad["metadata"]["managedFields"] = json!([]);
        assert!(matches!(
            apply(None, &bad, "m", false, T1),
            Err(PatchError::BadPatch(_))
        ));
        // status is ignored.
        let mut st = deployment(1, json!({"a": "b"}));
        st["status"] = json!({"ready": 1});
        let obj = apply(None, &st, "m", false, T1).unwrap();
        assert!(obj.get("status").is_none());
    }
}
