//! Strategic merge patch, "as a merge patch with directives".
//!
//! Maps merge as in a JSON merge patch (`null` deletes). On top of that:
//! - `$patch: replace` in a map replaces the map, `$patch: delete` deletes it, `$patch: merge`
//!   is the default; a list item `{"$patch": "replace"}` replaces the whole list with the other
//!   items; a list item `{"$patch": "delete", "<key>": "x"}` deletes the item keyed `x`;
//! - `$retainKeys: [..]` drops the keys of the original map that are not listed;
//! - `$deleteFromPrimitiveList/<field>: [..]` removes values from a list of scalars;
//! - `$setElementOrder/<field>: [..]` reorders the merged list;
//! - lists merge according to a [`ListStrategy`]: by a merge key for lists of objects, as a set
//!   for lists of scalars, or atomically (the patch list replaces the original one).
//!
//! The strategy of a list comes from the caller's function of the field path, else from the
//! patch itself (the keys of `$setElementOrder/<field>`, or the presence of
//! `$deleteFromPrimitiveList/<field>`), else from the data: merge by `name` when every item of
//! both lists is an object with a string `name`, otherwise atomic.

use serde_json::{Map, Value};

use super::PatchError;

/// How a list merges with its patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// A list of objects merged item by item on this key (`name`, `type`, `key`, …).
    MergeByKey(String),
    /// A list of scalars merged as a set (union, original order first).
    Set,
    /// The patch list replaces the original list.
    Atomic,
}

/// The default list strategies, by the last field name of the list's path: `conditions` and
/// `addresses` by `type`, `taints`/`tolerations` by `key`, `ownerReferences` by `uid`,
/// `finalizers` as a set, `subjects` and `rules` atomic; `None` (decide from the data) for
/// every other list.
pub fn default_list_strategy(path: &[String]) -> Option<ListStrategy> {
    let last = path.last()?;
    match last.as_str() {
        "conditions" | "addresses" => Some(ListStrategy::MergeByKey("type".to_string())),
        "taints" | "tolerations" => Some(ListStrategy::MergeByKey("key".to_string())),
        "ownerReferences" => Some(ListStrategy::MergeByKey("uid".to_string())),
        "finalizers" => Some(ListStrategy::Set),
        "subjects" | "rules" => Some(ListStrategy::Atomic),
        _ => None,
    }
}

/// Applies strategic merge patch `patch` to `current` with [`default_list_strategy`].
pub fn apply(current: &Value, patch: &Value) -> Result<Value, PatchError> {
    strategic_merge(current, patch, &default_list_strategy)
}

/// Applies strategic merge patch `patch` to `current`. `lists` gives the strategy of the list
/// at a path of field names from the root (list items add no element: the `volumes` of
/// `spec.template.spec` is `["spec", "template", "spec", "volumes"]`); `None` lets the patch
/// and the data decide (see the module documentation).
pub fn strategic_merge(
    current: &Value,
    patch: &Value,
    lists: &dyn Fn(&[String]) -> Option<ListStrategy>,
) -> Result<Value, PatchError> {
    let Value::Object(patch_map) = patch else {
        return Err(PatchError::BadPatch(format!(
            "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            type_name(patch)
        )));
    };
    let original = match current {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        other => {
            return Err(PatchError::BadPatch(format!(
                "cannot apply a strategic merge patch to {}",
                type_name(other)
            )))
        }
    };
    let mut path = Vec::new();
    let merged = merge_map(original, patch_map, &mut path, lists)?;
    Ok(Value::Object(merged.unwrap_or_default()))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Merges `patch` into `original`; `None` means the map is deleted (`$patch: delete`).
fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    lists: &dyn Fn(&[String]) -> Option<ListStrategy>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get(DIRECTIVE) {
        None => {}
        Some(Value::String(d)) => match d.as_str() {
            "merge" => {}
            "delete" => return Ok(None),
            "replace" => {
                let mut rest = patch.clone();
                rest.remove(DIRECTIVE);
                return merge_map(Map::new(), &rest, path, lists);
            }
            other => {
                return Err(PatchError::BadPatch(format!(
                    "unknown patch type: {other} in map: {}",
                    Value::Object(patch.clone())
                )))
            }
        },
        Some(other) => {
            return Err(PatchError::BadPatch(format!(
                "unknown patch type: {other} in map: {}",
                Value::Object(patch.clone())
            )))
        }
    }

    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Value::Array(items) = retain else {
            return Err(PatchError::BadPatch(
                "invalid patch format of retainKeys".to_string(),
            ));
        };
        let mut keep = Vec::with_capacity(items.len());
        for item in items {
            let Value::String(s) = item else {
                return Err(PatchError::BadPatch(
                    "invalid patch format of retainKeys".to_string(),
                ));
            };
            keep.push(s.as_str());
        }
        // Every field the patch sets (nulls aside) must be retained.
        for (k, v) in patch {
            if !v.is_null() && !k.starts_with('$') && !keep.contains(&k.as_str()) {
                return Err(PatchError::BadPatch(
                    "invalid patch format of retainKeys".to_string(),
                ));
            }
        }
        original.retain(|k, _| keep.contains(&k.as_str()));
    }

    // Deletions from primitive lists come first, so a value both deleted and added survives.
    for (k, v) in patch {
        let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) else {
            continue;
        };
        let Value::Array(gone) = v else {
            return Err(PatchError::BadPatch(
                "invalid patch format of primitive list".to_string(),
            ));
        };
        if let Some(Value::Array(list)) = original.get_mut(field) {
            list.retain(|item| !gone.contains(item));
        }
    }

    for (k, pv) in patch {
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            original.remove(k);
            continue;
        }
        path.push(k.clone());
        let result = merge_value(original.remove(k), pv, patch, k, path, lists);
        path.pop();
        if let Some(v) = result? {
            original.insert(k.clone(), v);
        }
    }

    for (k, order) in patch {
        let Some(field) = k.strip_prefix(SET_ELEMENT_ORDER) else {
            continue;
        };
        let Value::Array(order) = order else {
            return Err(PatchError::BadPatch(
                "invalid patch format of setElementOrder list".to_string(),
            ));
        };
        if let Some(Value::Array(list)) = original.get_mut(field) {
            reorder(list, order);
        }
    }

    for k in patch.keys() {
        if k.starts_with('$')
            && k != DIRECTIVE
            && k != RETAIN_KEYS
            && !k.starts_with(SET_ELEMENT_ORDER)
            && !k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
        {
            return Err(PatchError::BadPatch(format!(
                "unknown strategic merge patch directive: {k}"
            )));
        }
    }
    Ok(Some(original))
}

/// Merges patch value `pv` (not null) for field `key` of `parent_patch` into `original`;
/// `None` removes the field.
fn merge_value(
    original: Option<Value>,
    pv: &Value,
    parent_patch: &Map<String, Value>,
    key: &str,
    path: &mut Vec<String>,
    lists: &dyn Fn(&[String]) -> Option<ListStrategy>,
) -> Result<Option<Value>, PatchError> {
    match pv {
        Value::Object(pm) => {
            let base = match original {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            Ok(merge_map(base, pm, path, lists)?.map(Value::Object))
        }
        Value::Array(items) => {
            let base = match original {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            let strategy = lists(path)
                .or_else(|| hinted_strategy(parent_patch, key))
                .unwrap_or_else(|| guess_strategy(&base, items));
            Ok(Some(Value::Array(merge_list(
                base, items, &strategy, path, lists,
            )?)))
        }
        scalar => Ok(Some(scalar.clone())),
    }
}

/// The strategy the patch itself reveals for `key`: the key of `$setElementOrder/<key>`
/// entries, or a set for primitive lists with ordering or deletion directives.
fn hinted_strategy(patch: &Map<String, Value>, key: &str) -> Option<ListStrategy> {
    if let Some(Value::Array(order)) = patch.get(&format!("{SET_ELEMENT_ORDER}{key}")) {
        match order.first() {
            Some(Value::Object(m)) if m.len() == 1 => {
                return m.keys().next().map(|k| ListStrategy::MergeByKey(k.clone()));
            }
            Some(Value::Object(_)) => {}
            Some(_) => return Some(ListStrategy::Set),
            None => {}
        }
    }
    if patch.contains_key(&format!("{DELETE_FROM_PRIMITIVE_LIST}{key}")) {
        return Some(ListStrategy::Set);
    }
    None
}

/// Whether `item` is only a list directive (`{"$patch": "replace"}`).
fn is_directive_only(item: &Value) -> bool {
    item.as_object()
        .is_some_and(|m| m.len() == 1 && m.contains_key(DIRECTIVE))
}

/// Merge by `name` when every item of both lists is an object with a string `name`.
fn guess_strategy(original: &[Value], patch: &[Value]) -> ListStrategy {
    let named = |v: &Value| v.get("name").is_some_and(Value::is_string);
    let patch_items: Vec<&Value> = patch.iter().filter(|v| !is_directive_only(v)).collect();
    if !patch_items.is_empty() && patch_items.iter().all(|v| named(v)) && original.iter().all(named)
    {
        ListStrategy::MergeByKey("name".to_string())
    } else {
        ListStrategy::Atomic
    }
}

/// Strips directives from a value that has no original (nested `$patch: delete` items vanish).
fn clean(
    v: &Value,
    path: &mut Vec<String>,
    lists: &dyn Fn(&[String]) -> Option<ListStrategy>,
) -> Result<Option<Value>, PatchError> {
    match v {
        Value::Object(m) => Ok(merge_map(Map::new(), m, path, lists)?.map(Value::Object)),
        other => Ok(Some(other.clone())),
    }
}

fn merge_list(
    mut original: Vec<Value>,
    patch: &[Value],
    strategy: &ListStrategy,
    path: &mut Vec<String>,
    lists: &dyn Fn(&[String]) -> Option<ListStrategy>,
) -> Result<Vec<Value>, PatchError> {
    // `{"$patch": "replace"}` as an item: the other items are the whole list.
    let mut replace = false;
    for item in patch {
        if is_directive_only(item) {
            match item.get(DIRECTIVE).and_then(Value::as_str) {
                Some("replace") => replace = true,
                Some("merge") => {}
                Some("delete") if *strategy == ListStrategy::Atomic => {}
                other => {
                    return Err(PatchError::BadPatch(format!(
                        "unknown patch type: {} in list: {}",
                        other.unwrap_or("<non-string>"),
                        Value::Array(patch.to_vec())
                    )))
                }
            }
        }
    }
    let items: Vec<&Value> = patch.iter().filter(|v| !is_directive_only(v)).collect();
    if replace || *strategy == ListStrategy::Atomic {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if item.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                continue;
            }
            if let Some(v) = clean(item, path, lists)? {
                out.push(v);
            }
        }
        return Ok(out);
    }
    match strategy {
        ListStrategy::Set => {
            for item in items {
                if item.is_object() || item.is_array() {
                    return Err(PatchError::BadPatch(format!(
                        "invalid patch: list of primitives contains {item}"
                    )));
                }
                if !original.contains(item) {
                    original.push(item.clone());
                }
            }
            Ok(original)
        }
        ListStrategy::MergeByKey(key) => {
            for item in items {
                let Value::Object(pm) = item else {
                    return Err(PatchError::BadPatch(format!(
                        "invalid patch: list item {item} is not a map (merge key {key})"
                    )));
                };
                let Some(kv) = pm.get(key.as_str()) else {
                    return Err(PatchError::BadPatch(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                let pos = original
                    .iter()
                    .position(|o| o.get(key.as_str()) == Some(kv));
                match pm.get(DIRECTIVE).and_then(Value::as_str) {
                    Some("delete") => {
                        original.retain(|o| o.get(key.as_str()) != Some(kv));
                        continue;
                    }
                    Some("replace") => {
                        let mut rest = pm.clone();
                        rest.remove(DIRECTIVE);
                        let v = merge_map(Map::new(), &rest, path, lists)?
                            .map(Value::Object)
                            .unwrap_or_default();
                        match pos {
                            Some(i) => original[i] = v,
                            None => original.push(v),
                        }
                        continue;
                    }
                    _ => {}
                }
                match pos {
                    Some(i) => {
                        let base = match std::mem::take(&mut original[i]) {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        };
                        match merge_map(base, pm, path, lists)? {
                            Some(m) => original[i] = Value::Object(m),
                            None => {
                                original.remove(i);
                            }
                        }
                    }
                    None => {
                        if let Some(m) = merge_map(Map::new(), pm, path, lists)? {
                            original.push(Value::Object(m));
                        }
                    }
                }
            }
            Ok(original)
        }
        ListStrategy::Atomic => Ok(original),
    }
}

/// Reorders `list` by `order`: the items `order` names come first, in its order; the others
/// keep their relative order after them. Object entries of `order` name items by their fields
/// (`{"name": "a"}`), scalar entries by equality.
fn reorder(list: &mut Vec<Value>, order: &[Value]) {
    let matches = |item: &Value, entry: &Value| match entry {
        Value::Object(keys) => keys.iter().all(|(k, v)| item.get(k.as_str()) == Some(v)),
        scalar => item == scalar,
    };
    let mut rest = std::mem::take(list);
    for entry in order {
        if let Some(i) = rest.iter().position(|item| matches(item, entry)) {
            list.push(rest.remove(i));
        }
    }
    list.append(&mut rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::merge;
    use serde_json::json;

    fn sp(cur: Value, patch: Value) -> Value {
        apply(&cur, &patch).unwrap()
    }

    #[test]
    fn ordinary_patches_are_merge_patches() {
        let cur = json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1, "ports": [1, 2]}});
        for p in [
            json!({"metadata": {"labels": {"c": "3"}}}),
            json!({"metadata": {"labels": {"a": null}}}),
            json!({"spec": {"replicas": 3}}),
            json!({"spec": {"ports": [3]}}),
            json!({"spec": null}),
        ] {
            assert_eq!(sp(cur.clone(), p.clone()), merge::merge(&cur, &p), "{p}");
        }
    }

    #[test]
    fn named_lists_merge_by_name() {
        let cur =
            json!({"spec": {"volumes": [{"name": "a", "size": 1}, {"name": "b", "size": 2}]}});
        let out = sp(
            cur,
            json!({"spec": {"volumes": [{"name": "b", "size": 3}, {"name": "c", "size": 4}]}}),
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "a", "size": 1}, {"name": "b", "size": 3}, {"name": "c", "size": 4}])
        );
        // Unnamed items: atomic.
        let cur = json!({"spec": {"rulesx": [{"x": 1}]}});
        assert_eq!(
            sp(cur, json!({"spec": {"rulesx": [{"x": 2}]}}))["spec"]["rulesx"],
            json!([{"x": 2}])
        );
        // Known atomic list with named items.
        let cur =
            json!({"subjects": [{"kind": "User", "name": "a"}, {"kind": "User", "name": "b"}]});
        assert_eq!(
            sp(cur, json!({"subjects": [{"kind": "User", "name": "a"}]}))["subjects"],
            json!([{"kind": "User", "name": "a"}])
        );
    }

    #[test]
    fn delete_list_item_by_name() {
        let cur = json!({"spec": {"volumes": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}});
        let out = sp(
            cur,
            json!({"spec": {
                "$setElementOrder/volumes": [{"name": "a"}, {"name": "c"}],
                "volumes": [{"$patch": "delete", "name": "b"}]
            }}),
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "a"}, {"name": "c"}])
        );
    }

    #[test]
    fn set_element_order() {
        let cur = json!({"spec": {"volumes": [{"name": "a"}, {"name": "b"}, {"name": "x", "keep": true}]}});
        let out = sp(
            cur,
            json!({"spec": {
                "$setElementOrder/volumes": [{"name": "c"}, {"name": "b"}, {"name": "a"}],
                "volumes": [{"name": "c"}]
            }}),
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "c"}, {"name": "b"}, {"name": "a"}, {"name": "x", "keep": true}])
        );
        // Keyed by something else than `name`, learned from the directive.
        let cur = json!({"status": {"items": [{"type": "A", "v": 1}, {"type": "B", "v": 2}]}});
        let out = sp(
            cur,
            json!({"status": {
                "$setElementOrder/items": [{"type": "B"}, {"type": "A"}],
                "items": [{"type": "A", "v": 9}]
            }}),
        );
        assert_eq!(
            out["status"]["items"],
            json!([{"type": "B", "v": 2}, {"type": "A", "v": 9}])
        );
        // Primitive list: a set, reordered.
        let cur = json!({"metadata": {"tags": ["a", "b"]}});
        let out = sp(
            cur,
            json!({"metadata": {"$setElementOrder/tags": ["c", "a", "b"], "tags": ["c"]}}),
        );
        assert_eq!(out["metadata"]["tags"], json!(["c", "a", "b"]));
    }

    #[test]
    fn map_directives() {
        let cur = json!({"spec": {"template": {"a": 1, "b": 2}, "other": {"x": 1}}});
        let out = sp(
            cur.clone(),
            json!({"spec": {"template": {"$patch": "replace", "c": 3}}}),
        );
        assert_eq!(out["spec"]["template"], json!({"c": 3}));
        let out = sp(
            cur.clone(),
            json!({"spec": {"other": {"$patch": "delete"}}}),
        );
        assert_eq!(out["spec"], json!({"template": {"a": 1, "b": 2}}));
        let out = sp(
            cur.clone(),
            json!({"spec": {"template": {"$patch": "merge", "c": 3}}}),
        );
        assert_eq!(out["spec"]["template"], json!({"a": 1, "b": 2, "c": 3}));
        let err = apply(&cur, &json!({"spec": {"$patch": "frob"}})).unwrap_err();
        assert!(
            matches!(err, PatchError::BadPatch(ref m) if m.starts_with("unknown patch type: frob"))
        );
        assert!(apply(&cur, &json!({"$frob": 1})).is_err());
        // A whole list replaced.
        let cur = json!({"spec": {"volumes": [{"name": "a"}, {"name": "b"}]}});
        let out = sp(
            cur,
            json!({"spec": {"volumes": [{"$patch": "replace"}, {"name": "z"}]}}),
        );
        assert_eq!(out["spec"]["volumes"], json!([{"name": "z"}]));
    }

    #[test]
    fn retain_keys() {
        let cur = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = sp(
            cur.clone(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let err = apply(
            &cur,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "x": 1}}}),
        )
        .unwrap_err();
        assert_eq!(
            err,
            PatchError::BadPatch("invalid patch format of retainKeys".into())
        );
        assert_eq!(
            err.to_api_error("Deployment", "apps", "deployments", "d")
                .code(),
            400
        );
        assert!(matches!(
            apply(&cur, &json!({"spec": {"$retainKeys": "type"}})),
            Err(PatchError::BadPatch(_))
        ));
    }

    #[test]
    fn delete_from_primitive_list() {
        let cur = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
        let out = sp(
            cur.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"], "finalizers": ["d"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "c", "d"]));
        // Unknown primitive lists become sets when the patch says so.
        let cur = json!({"spec": {"cidrs": ["a", "b"]}});
        let out = sp(
            cur,
            json!({"spec": {"$deleteFromPrimitiveList/cidrs": ["a"]}}),
        );
        assert_eq!(out["spec"]["cidrs"], json!(["b"]));
    }

    #[test]
    fn new_fields_are_cleaned_of_directives() {
        let out = sp(
            json!({}),
            json!({"spec": {"template": {"$patch": "replace", "a": {"$patch": "delete"}, "b": 1},
                             "volumes": [{"name": "a"}, {"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(
            out,
            json!({"spec": {"template": {"b": 1}, "volumes": [{"name": "a"}]}})
        );
    }

    #[test]
    fn caller_strategy_wins() {
        let cur = json!({"spec": {"volumes": [{"name": "a", "v": 1}]}});
        let out = strategic_merge(
            &cur,
            &json!({"spec": {"volumes": [{"name": "b", "v": 2}]}}),
            &|p: &[String]| {
                (p.last().map(String::as_str) == Some("volumes")).then_some(ListStrategy::Atomic)
            },
        )
        .unwrap();
        assert_eq!(out["spec"]["volumes"], json!([{"name": "b", "v": 2}]));
        let cur = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
        let out = sp(
            cur,
            json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}]}}),
        );
        assert_eq!(out["spec"]["taints"].as_array().unwrap().len(), 2);
        assert!(matches!(
            apply(&json!({}), &json!({"spec": {"taints": [{"effect": "x"}]}})),
            Err(PatchError::BadPatch(ref m)) if m.contains("does not contain declared merge key: key")
        ));
    }

    #[test]
    fn bad_documents() {
        assert!(matches!(
            apply(&json!({}), &json!([1])),
            Err(PatchError::BadPatch(_))
        ));
        assert!(matches!(
            apply(&json!([]), &json!({})),
            Err(PatchError::BadPatch(_))
        ));
        assert_eq!(
            apply(&json!({"a": 1}), &json!({"$patch": "delete"})).unwrap(),
            json!({})
        );
    }
}
