//! JSON patch (RFC 6902): `add`, `remove`, `replace`, `move`, `copy`, `test`.
//!
//! A body that is not an array of objects is a malformed document (400); an operation that
//! does not apply (missing path, failed `test`, unknown `op`) fails the whole patch with the
//! index of the operation (422), as the Kubernetes apiserver does.

use serde_json::Value;

use super::PatchError;

/// The most operations one JSON patch may carry (Kubernetes' limit).
pub const MAX_OPERATIONS: usize = 10_000;

/// The most bytes (as JSON) `copy` operations of one patch may duplicate in total (Kubernetes
/// bounds them by its request body limit, `jsonpatch.AccumulatedCopySizeLimit`).
pub const MAX_COPY_BYTES: usize = crate::http::body::MAX_BODY_BYTES;

/// The deepest nesting (objects and arrays) a patched object may reach: what `serde_json`
/// reads back (it refuses 128 levels), so a stored object stays readable, and what the
/// recursive code that handles objects can walk without exhausting the stack.
pub const MAX_DEPTH: usize = 127;

/// Applies JSON patch `patch` (the decoded body) to `doc` and returns the result; `doc` is left
/// untouched when an operation fails.
pub fn apply(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::BadPatch(format!(
            "json: cannot unmarshal {} into Go value of type jsonpatch.Patch",
            json_type(patch)
        )));
    };
    if ops.len() > MAX_OPERATIONS {
        return Err(PatchError::TooManyOperations {
            max: MAX_OPERATIONS,
            got: ops.len(),
        });
    }
    for op in ops {
        if !op.is_object() {
            return Err(PatchError::BadPatch(format!(
                "json: cannot unmarshal {} into Go value of type map[string]*json.RawMessage",
                json_type(op)
            )));
        }
    }
    let mut out = doc.clone();
    let mut copied = 0;
    for (index, op) in ops.iter().enumerate() {
        apply_op(&mut out, op, &mut copied).map_err(|e| match e {
            OpFailure::Op(op_name, path, message) => PatchError::OperationFailed {
                index,
                op: op_name,
                path,
                message,
            },
            OpFailure::CopyTooLarge(size) => PatchError::CopyTooLarge(format!(
                "Unable to copy, the accumulated size increase of copy is {size}, exceeding the limit {MAX_COPY_BYTES}"
            )),
        })?;
    }
    Ok(out)
}

/// The nesting depth of `v` (a scalar is 0, `[]` and `{}` are 1), without recursion.
pub fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(m) => {
                max = max.max(d + 1);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// The length of `v` serialized as JSON, without building it.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing to a counter cannot fail; a failure would only undercount.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

type OpError = (String, String, String);

enum OpFailure {
    /// The operation does not apply: (op, path, message).
    Op(String, String, String),
    /// `copy` operations duplicated more than [`MAX_COPY_BYTES`] (the total so far).
    CopyTooLarge(usize),
}

impl From<OpError> for OpFailure {
    fn from((op, path, message): OpError) -> Self {
        OpFailure::Op(op, path, message)
    }
}

fn apply_op(doc: &mut Value, op: &Value, copied: &mut usize) -> Result<(), OpFailure> {
    let name = op
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let path = op.get("path").and_then(Value::as_str).map(str::to_string);
    let fail = |msg: String| (name.clone(), path.clone().unwrap_or_default(), msg);
    let Some(path_str) = path.clone() else {
        return Err(fail(format!("{name} operation does not apply: missing path")).into());
    };
    let pointer = parse_pointer(&path_str).map_err(fail)?;
    // What is written at `pointer` must keep the object within MAX_DEPTH.
    let too_deep = |v: &Value| -> Result<(), OpError> {
        let d = pointer.len().saturating_add(depth(v));
        if d > MAX_DEPTH {
            return Err(fail(format!(
                "{name} operation does not apply: the result would nest {d} levels deep, more than the limit of {MAX_DEPTH}"
            )));
        }
        Ok(())
    };
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| fail(format!("{name} operation does not apply: missing value")))
    };
    let from = || -> Result<Vec<String>, OpError> {
        let f = op
            .get("from")
            .and_then(Value::as_str)
            .ok_or_else(|| fail(format!("{name} operation does not apply: missing from")))?;
        parse_pointer(f).map_err(fail)
    };
    let result: Result<(), OpError> = match name.as_str() {
        "add" => {
            let v = value()?;
            too_deep(&v)?;
            add(doc, &pointer, v).map_err(|m| {
                fail(format!(
                    "add operation does not apply: doc is missing path: \"{path_str}\": {m}"
                ))
            })
        }
        "remove" => remove(doc, &pointer).map(|_| ()).map_err(|m| {
            fail(format!(
                "remove operation does not apply: doc is missing path: \"{path_str}\": {m}"
            ))
        }),
        "replace" => {
            let v = value()?;
            too_deep(&v)?;
            match get_mut(doc, &pointer) {
                Some(slot) => {
                    *slot = v;
                    Ok(())
                }
                None => Err(fail(format!(
                    "replace operation does not apply: doc is missing key: {path_str}: missing value"
                ))),
            }
        }
        "move" => {
            let from_ptr = from()?;
            if pointer.len() > from_ptr.len() && pointer[..from_ptr.len()] == from_ptr[..] {
                return Err(fail(format!(
                    "move operation does not apply: cannot move {} into its own child {path_str}",
                    to_pointer(&from_ptr)
                ))
                .into());
            }
            let v = remove(doc, &from_ptr).map_err(|m| {
                fail(format!(
                    "move operation does not apply: doc is missing from path: {}: {m}",
                    to_pointer(&from_ptr)
                ))
            })?;
            too_deep(&v)?;
            add(doc, &pointer, v).map_err(|m| {
                fail(format!(
                    "move operation does not apply: doc is missing destination path: {path_str}: {m}"
                ))
            })
        }
        "copy" => {
            let from_ptr = from()?;
            let source = get(doc, &from_ptr).ok_or_else(|| {
                fail(format!(
                    "copy operation does not apply: doc is missing from path: {}: missing value",
                    to_pointer(&from_ptr)
                ))
            })?;
            // Checked before cloning: repeated copies of a value into itself double its size
            // (and its depth) each time.
            too_deep(source)?;
            *copied = copied.saturating_add(json_len(source));
            if *copied > MAX_COPY_BYTES {
                return Err(OpFailure::CopyTooLarge(*copied));
            }
            let v = source.clone();
            add(doc, &pointer, v).map_err(|m| {
                fail(format!(
                    "copy operation does not apply: doc is missing destination path: {path_str}: {m}"
                ))
            })
        }
        "test" => {
            let want = op.get("value").cloned().unwrap_or(Value::Null);
            let ok = match get(doc, &pointer) {
                Some(have) => values_equal(have, &want),
                None => want.is_null(),
            };
            if ok {
                Ok(())
            } else {
                Err(fail(format!(
                    "testing value {path_str} failed: test failed"
                )))
            }
        }
        other => Err(fail(format!("Unexpected kind: {other}"))),
    };
    Ok(result?)
}

/// Deep equality where numbers compare by value (`1` equals `1.0`).
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Parses an RFC 6901 pointer into its unescaped tokens.
pub fn parse_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!(
            "JSON pointer must be empty or start with a \"/\": {p:?}"
        ));
    };
    rest.split('/')
        .map(|tok| {
            let mut out = String::with_capacity(tok.len());
            let mut chars = tok.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(format!("invalid JSON pointer escape in {p:?}")),
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

/// Renders tokens back into an RFC 6901 pointer.
pub fn to_pointer(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// An array index token: digits without leading zeros.
fn index(tok: &str) -> Option<usize> {
    if tok.is_empty() || (tok.len() > 1 && tok.starts_with('0')) {
        return None;
    }
    if !tok.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tok.parse().ok()
}

fn get<'a>(doc: &'a Value, ptr: &[String]) -> Option<&'a Value> {
    ptr.iter().try_fold(doc, |v, tok| match v {
        Value::Object(m) => m.get(tok),
        Value::Array(a) => index(tok).and_then(|i| a.get(i)),
        _ => None,
    })
}

fn get_mut<'a>(doc: &'a mut Value, ptr: &[String]) -> Option<&'a mut Value> {
    ptr.iter().try_fold(doc, |v, tok| match v {
        Value::Object(m) => m.get_mut(tok),
        Value::Array(a) => index(tok).and_then(move |i| a.get_mut(i)),
        _ => None,
    })
}

fn add(doc: &mut Value, ptr: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent)) = ptr.split_last() else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, parent) {
        Some(Value::Object(m)) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            match index(last) {
                Some(i) if i <= a.len() => {
                    a.insert(i, value);
                    Ok(())
                }
                _ => Err(format!(
                    "Unable to access invalid index: {last}: invalid index referenced"
                )),
            }
        }
        _ => Err("missing value".to_string()),
    }
}

fn remove(doc: &mut Value, ptr: &[String]) -> Result<Value, String> {
    let Some((last, parent)) = ptr.split_last() else {
        return Ok(std::mem::replace(doc, Value::Null));
    };
    match get_mut(doc, parent) {
        Some(Value::Object(m)) => m.remove(last).ok_or_else(|| "missing value".to_string()),
        Some(Value::Array(a)) => match index(last) {
            Some(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(format!(
                "Unable to access invalid index: {last}: invalid index referenced"
            )),
        },
        _ => Err("missing value".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!({ "a": v });
        }
        v
    }

    #[test]
    fn max_depth_is_what_serde_json_reads_back() {
        let ok = serde_json::to_vec(&nested(MAX_DEPTH)).unwrap();
        assert!(serde_json::from_slice::<Value>(&ok).is_ok());
        let deep = serde_json::to_vec(&nested(MAX_DEPTH + 1)).unwrap();
        assert!(serde_json::from_slice::<Value>(&deep).is_err());
        assert_eq!(depth(&nested(MAX_DEPTH)), MAX_DEPTH);
        assert_eq!(depth(&json!([[], {}])), 2);
        assert_eq!(depth(&json!("x")), 0);
    }

    #[test]
    fn copies_into_itself_are_bounded() {
        // Each copy doubles the object: 40 of them would need 2^40 times the memory.
        let doc = json!({"spec": {"config": {"blob": "x".repeat(1000)}}});
        let ops: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "/spec/config", "path": format!("/spec/config/c{i}")}))
            .collect();
        let err = apply(&doc, &Value::Array(ops)).unwrap_err();
        assert!(matches!(err, PatchError::CopyTooLarge(_)), "{err:?}");
        assert!(matches!(
            err.to_api_error("NetworkClass", "", "networkclasses", "n"),
            crate::ApiError::TooLarge(_)
        ));
        // A few copies are fine.
        let ops = json!([{"op": "copy", "from": "/spec/config", "path": "/spec/copy"}]);
        let out = apply(&doc, &ops).unwrap();
        assert_eq!(out["spec"]["copy"], doc["spec"]["config"]);
    }

    #[test]
    fn depth_is_bounded() {
        // Adds at ever deeper paths (or copies of a value into itself) would nest the object
        // deeper than it can be stored, read back, or walked without overflowing the stack.
        let doc = json!({"spec": {"config": nested(100)}});
        let deep_path = format!("/spec/config{}", "/a".repeat(99));
        let ops = json!([{"op": "add", "path": format!("{deep_path}/b"), "value": nested(50)}]);
        let err = apply(&doc, &ops).unwrap_err();
        assert!(
            matches!(&err, PatchError::OperationFailed { index: 0, .. }),
            "{err:?}"
        );
        let ops = json!([{"op": "copy", "from": "/spec/config", "path": format!("{deep_path}/b")}]);
        assert!(matches!(
            apply(&doc, &ops).unwrap_err(),
            PatchError::OperationFailed { .. }
        ));
        let ops = json!([{"op": "replace", "path": deep_path, "value": nested(50)}]);
        assert!(apply(&doc, &ops).is_err());
        let ops = json!([{"op": "move", "from": "/spec/config", "path": "/spec/x/y"}]);
        assert!(apply(&doc, &ops).is_err()); // /spec/x is missing
        let ops = json!([{"op": "add", "path": format!("{deep_path}/b"), "value": nested(5)}]);
        assert!(depth(&apply(&doc, &ops).unwrap()) <= MAX_DEPTH);
    }

    fn doc() -> Value {
        json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"replicas": 1, "list": [1, 2, 3]}})
    }

    #[test]
    fn add_remove_replace() {
        let out = apply(
            &doc(),
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "add", "path": "/spec/list/0", "value": 0},
                {"op": "add", "path": "/spec/list/-", "value": 4},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "replace", "path": "/spec/replicas", "value": 5},
                {"op": "remove", "path": "/spec/list/1"}
            ]),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["spec"]["replicas"], 5);
        assert_eq!(out["spec"]["list"], json!([0, 2, 3, 4]));
    }

    #[test]
    fn move_copy_test_and_escapes() {
        let mut d = doc();
        d["metadata"]["annotations"] = json!({"example.com/a~b": "v"});
        let out = apply(
            &d,
            &json!([
                {"op": "test", "path": "/metadata/annotations/example.com~1a~0b", "value": "v"},
                {"op": "test", "path": "/spec/replicas", "value": 1.0},
                {"op": "copy", "from": "/metadata/labels", "path": "/spec/selector"},
                {"op": "move", "from": "/spec/list", "path": "/spec/items"},
                {"op": "test", "path": "/spec/missing", "value": null}
            ]),
        )
        .unwrap();
        assert_eq!(out["spec"]["selector"], json!({"a": "1"}));
        assert_eq!(out["spec"]["items"], json!([1, 2, 3]));
        assert!(out["spec"].get("list").is_none());
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
    }

    #[test]
    fn test_failure_reports_the_index() {
        let err = apply(
            &doc(),
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 2},
                {"op": "test", "path": "/spec/replicas", "value": 3}
            ]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            PatchError::OperationFailed {
                index: 1,
                op: "test".into(),
                path: "/spec/replicas".into(),
                message: "testing value /spec/replicas failed: test failed".into(),
            }
        );
        assert_eq!(err.to_api_error("Ship", "", "ships", "x").code(), 422);
    }

    #[test]
    fn missing_paths_fail() {
        let cases = [
            (
                json!({"op": "remove", "path": "/metadata/labels/zz"}),
                "remove operation does not apply: doc is missing path: \"/metadata/labels/zz\": missing value",
            ),
            (
                json!({"op": "replace", "path": "/spec/nope", "value": 1}),
                "replace operation does not apply: doc is missing key: /spec/nope: missing value",
            ),
            (
                json!({"op": "add", "path": "/spec/a/b", "value": 1}),
                "add operation does not apply: doc is missing path: \"/spec/a/b\": missing value",
            ),
            (
                json!({"op": "add", "path": "/spec/list/9", "value": 1}),
                "add operation does not apply: doc is missing path: \"/spec/list/9\": Unable to access invalid index: 9: invalid index referenced",
            ),
            (json!({"op": "frob", "path": "/spec"}), "Unexpected kind: frob"),
            (
                json!({"op": "move", "from": "/spec", "path": "/spec/x"}),
                "move operation does not apply: cannot move /spec into its own child /spec/x",
            ),
            (
                json!({"op": "add", "path": "spec"}),
                "JSON pointer must be empty or start with a \"/\": \"spec\"",
            ),
        ];
        for (op, want) in cases {
            match apply(&doc(), &json!([op])) {
                Err(PatchError::OperationFailed { index, message, .. }) => {
                    assert_eq!(index, 0);
                    assert_eq!(message, want);
                }
                other => panic!("{op}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_documents_are_bad_requests() {
        for p in [json!({"op": "add"}), json!([1]), json!("x")] {
            let err = apply(&doc(), &p).unwrap_err();
            assert!(matches!(err, PatchError::BadPatch(_)), "{p}: {err:?}");
            assert_eq!(err.to_api_error("Ship", "", "ships", "x").code(), 400);
        }
        let many = Value::Array(vec![json!({"op": "test", "path": ""}); MAX_OPERATIONS + 1]);
        assert!(matches!(
            apply(&doc(), &many),
            Err(PatchError::TooManyOperations { .. })
        ));
    }

    #[test]
    fn pointers() {
        assert_eq!(parse_pointer("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_pointer("/a~1b/~0").unwrap(), vec!["a/b", "~"]);
        assert!(parse_pointer("/a~2").is_err());
        assert_eq!(to_pointer(&["a/b".into(), "~".into()]), "/a~1b/~0");
    }
}
