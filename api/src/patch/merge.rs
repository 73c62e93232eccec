//! JSON merge patch (RFC 7386): objects merge recursively, `null` deletes, everything else
//! (lists included) replaces.

use serde_json::{Map, Value};

/// Applies merge patch `patch` to `doc` and returns the result.
pub fn merge(doc: &Value, patch: &Value) -> Value {
    let mut out = doc.clone();
    merge_in_place(&mut out, patch);
    out
}

/// Applies merge patch `patch` to `doc` in place.
pub fn merge_in_place(doc: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    if let Value::Object(doc_map) = doc {
        for (k, v) in patch_map {
            if v.is_null() {
                doc_map.remove(k);
            } else {
                merge_in_place(doc_map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The merge patch that turns `original` into `modified` (nulls for removed keys).
pub fn create_merge_patch(original: &Value, modified: &Value) -> Value {
    match (original, modified) {
        (Value::Object(o), Value::Object(m)) => {
            let mut patch = Map::new();
            for (k, ov) in o {
                match m.get(k) {
                    None => {
                        patch.insert(k.clone(), Value::Null);
                    }
                    Some(mv) if mv != ov => {
                        patch.insert(k.clone(), create_merge_patch(ov, mv));
                    }
                    Some(_) => {}
                }
            }
            for (k, mv) in m {
                if !o.contains_key(k) {
                    patch.insert(k.clone(), mv.clone());
                }
            }
            Value::Object(patch)
        }
        (_, m) => m.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_deletes_a_label() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let out = merge(&doc, &json!({"metadata": {"labels": {"a": null}}}));
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2"}}}));
    }

    #[test]
    fn rfc7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (doc, patch, want) in cases {
            assert_eq!(merge(&doc, &patch), want, "{doc} + {patch}");
        }
    }

    #[test]
    fn create_patch_round_trips() {
        let a = json!({"spec": {"replicas": 1, "x": "y"}, "k": [1]});
        let b = json!({"spec": {"replicas": 3}, "k": [1, 2], "n": true});
        let p = create_merge_patch(&a, &b);
        assert_eq!(
            p,
            json!({"spec": {"replicas": 3, "x": null}, "k": [1, 2], "n": true})
        );
        assert_eq!(merge(&a, &p), b);
    }
}
