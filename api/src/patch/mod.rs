//! Patches: every patch type kubectl sends, as pure functions over `serde_json::Value`.
//!
//! - [`merge`]: JSON merge patch (RFC 7386, `application/merge-patch+json`);
//! - [`json`]: JSON patch (RFC 6902, `application/json-patch+json`);
//! - [`strategic`]: strategic merge patch (`application/strategic-merge-patch+json`), a merge
//!   patch that honours the `$patch`, `$setElementOrder/…`, `$retainKeys` and
//!   `$deleteFromPrimitiveList/…` directives and merges lists of objects by key;
//! - [`apply`]: server-side apply (`application/apply-patch+yaml`) with `metadata.managedFields`
//!   bookkeeping, and [`apply::record_update`] for every other write.

pub mod apply;
pub mod json;
pub mod merge;
pub mod strategic;

use serde_json::Value;

use crate::error::{ApiError, FieldError};

/// The kind of a PATCH body, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply; the body may be JSON).
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value (parameters such as `charset` are
    /// ignored); `None` for anything else, which the server answers with 415.
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" => Some(PatchType::Apply),
            _ => None,
        }
    }

    /// The media type of this patch type.
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::Strategic => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        }
    }

    /// Every supported media type, for the 415 message and the discovery documents.
    pub fn all_content_types() -> [&'static str; 4] {
        [
            PatchType::Json.content_type(),
            PatchType::Merge.content_type(),
            PatchType::Strategic.content_type(),
            PatchType::Apply.content_type(),
        ]
    }
}

/// One server-side apply conflict: a field another manager owns with a different value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager's name (`kubectl-client-side-apply`).
    pub manager: String,
    /// Its operation (`Apply` or `Update`).
    pub operation: String,
    /// Its API version (shown for `Update` managers).
    pub api_version: String,
    /// Its subresource (`status`), usually empty.
    pub subresource: String,
    /// The field, in structured-merge-diff notation (`.spec.replicas`,
    /// `.spec.volumes[name="data"].size`).
    pub path: String,
}

impl Conflict {
    /// The manager as Kubernetes prints it: `"kubectl"` for appliers,
    /// `"kubectl-client-side-apply" using apps/v1` for updaters.
    pub fn manager_display(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// The Kubernetes message for a set of apply conflicts.
fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager_display(),
            c.path
        );
    }
    let mut by_manager: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for c in conflicts {
        by_manager
            .entry(c.manager_display())
            .or_default()
            .push(&c.path);
    }
    let mut lines = Vec::new();
    for (manager, paths) in by_manager {
        lines.push(format!("conflicts with {manager}"));
        for p in paths {
            lines.push(format!("- {p}"));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// Why a patch could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The body does not decode (400 BadRequest).
    #[error("{0}")]
    Decode(String),
    /// The patch document is malformed (400 BadRequest).
    #[error("{0}")]
    BadPatch(String),
    /// A JSON patch operation does not apply to the object (422 Invalid).
    #[error("{message}")]
    OperationFailed {
        /// Index of the failing operation in the patch array.
        index: usize,
        /// The operation (`test`, `add`, …).
        op: String,
        /// Its `path`.
        path: String,
        /// What failed, worded like Kubernetes' json-patch library.
        message: String,
    },
    /// More JSON patch operations than the server accepts (413).
    #[error("The allowed maximum operations in a JSON patch is {max}, got {got}")]
    TooManyOperations {
        /// The limit.
        max: usize,
        /// Operations in the request.
        got: usize,
    },
    /// JSON patch `copy` operations duplicate more data than the server accepts (413).
    #[error("{0}")]
    CopyTooLarge(String),
    /// Server-side apply conflicts with other field managers (409 Conflict).
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
    /// A caller error (500 InternalError).
    #[error("{0}")]
    Internal(String),
}

impl PatchError {
    /// The API error for a patch of object `name` of `kind` (`Deployment`) in `group`
    /// (`apps`, empty for core), whose resource plural is `resource` (`deployments`).
    pub fn to_api_error(&self, kind: &str, group: &str, resource: &str, name: &str) -> ApiError {
        match self {
            PatchError::Decode(m) | PatchError::BadPatch(m) => ApiError::BadRequest(m.clone()),
            PatchError::OperationFailed {
                index,
                op,
                path,
                message,
            } => ApiError::invalid(
                kind,
                group,
                name,
                vec![FieldError {
                    reason: "FieldValueInvalid",
                    field: format!("patch[{index}]"),
                    message: format!("{op} {path}: {message}"),
                }],
            ),
            PatchError::TooManyOperations { .. } | PatchError::CopyTooLarge(_) => {
                ApiError::TooLarge(self.to_string())
            }
            PatchError::Conflicts(_) => ApiError::Conflict {
                message: self.to_string(),
                group: group.to_string(),
                kind: resource.to_string(),
                name: name.to_string(),
            },
            PatchError::Internal(m) => ApiError::Internal(m.clone()),
        }
    }
}

/// Decodes a JSON body (`Decode` with the serde message on failure).
pub fn decode_json(body: &[u8]) -> Result<Value, PatchError> {
    serde_json::from_slice(body).map_err(|e| PatchError::Decode(e.to_string()))
}

/// Applies a JSON, merge or strategic patch `body` to `current` and returns the patched
/// object. Strategic patches use [`strategic::default_list_strategy`]. Server-side apply
/// needs a field manager: use [`apply::apply`] (this returns `Internal` for it). A patch whose
/// result is not a JSON object (`[1]` as a merge patch) is a `BadPatch`.
pub fn apply_patch(kind: PatchType, current: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let patch = decode_json(body)?;
    let patched = match kind {
        PatchType::Json => json::apply(current, &patch)?,
        PatchType::Merge => merge::merge(current, &patch),
        PatchType::Strategic => strategic::apply(current, &patch)?,
        PatchType::Apply => {
            return Err(PatchError::Internal(
                "server-side apply must go through patch::apply::apply".to_string(),
            ))
        }
    };
    if !patched.is_object() {
        return Err(PatchError::BadPatch(format!(
            "the patched object must be a JSON object, got {}",
            match patched {
                Value::Array(_) => "an array",
                Value::Null => "null",
                _ => "a scalar",
            }
        )));
    }
    Ok(patched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchType::Strategic)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+cbor"),
            None
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        for ct in PatchType::all_content_types() {
            assert_eq!(PatchType::from_content_type(ct).unwrap().content_type(), ct);
        }
    }

    #[test]
    fn apply_patch_dispatch_and_errors() {
        let cur = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"replicas": 1}});
        let out = apply_patch(
            PatchType::Merge,
            &cur,
            br#"{"metadata":{"labels":{"a":null,"b":"2"}}}"#,
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        let out = apply_patch(PatchType::Strategic, &cur, br#"{"spec":{"replicas":3}}"#).unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
        let out = apply_patch(
            PatchType::Json,
            &cur,
            br#"[{"op":"replace","path":"/spec/replicas","value":2}]"#,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 2);

        assert!(matches!(
            apply_patch(PatchType::Merge, &cur, b"[1]"),
            Err(PatchError::BadPatch(_))
        ));
        let err = apply_patch(PatchType::Merge, &cur, b"{nope").unwrap_err();
        assert!(matches!(err, PatchError::Decode(_)));
        let api = err.to_api_error("Ship", "", "ships", "x");
        assert_eq!(api.code(), 400);
        assert!(api.to_string().contains("key must be a string"), "{api}");
        assert_eq!(
            apply_patch(PatchType::Apply, &cur, b"{}")
                .unwrap_err()
                .to_api_error("Ship", "", "ships", "x")
                .code(),
            500
        );
    }

    #[test]
    fn error_mapping() {
        let e = PatchError::OperationFailed {
            index: 1,
            op: "test".into(),
            path: "/spec/replicas".into(),
            message: "testing value /spec/replicas failed: test failed".into(),
        };
        let api = e.to_api_error("Deployment", "apps", "deployments", "web");
        assert_eq!(api.code(), 422);
        assert!(api.status()["message"]
            .as_str()
            .unwrap()
            .contains("patch[1]: test /spec/replicas: testing value /spec/replicas failed"));
        let c = PatchError::Conflicts(vec![Conflict {
            manager: "kubectl-client-side-apply".into(),
            operation: "Update".into(),
            api_version: "apps/v1".into(),
            subresource: String::new(),
            path: ".spec.replicas".into(),
        }]);
        assert_eq!(
            c.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
        let api = c.to_api_error("Deployment", "apps", "deployments", "web");
        assert_eq!(api.code(), 409);
        assert_eq!(api.status()["details"]["kind"], "deployments");
        let two = PatchError::Conflicts(vec![
            Conflict {
                manager: "a".into(),
                operation: "Apply".into(),
                api_version: "v1".into(),
                subresource: String::new(),
                path: ".spec.x".into(),
            },
            Conflict {
                manager: "a".into(),
                operation: "Apply".into(),
                api_version: "v1".into(),
                subresource: String::new(),
                path: ".spec.y".into(),
            },
        ]);
        assert_eq!(
            two.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"a\"\n- .spec.x\n- .spec.y"
        );
        assert_eq!(
            PatchError::TooManyOperations {
                max: 10000,
                got: 10001
            }
            .to_api_error("Ship", "", "ships", "x")
            .code(),
            413
        );
    }
}
