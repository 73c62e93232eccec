//! API errors and their Kubernetes `Status` form.

use serde_json::{json, Value};

/// One invalid field (`details.causes[]` of a 422 Status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Cause reason: `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`,
    /// `FieldValueDuplicate`, `FieldValueForbidden`, `FieldValueTooLong`.
    pub reason: &'static str,
    /// Field path, `spec.replicas` or `metadata.labels[app]`.
    pub field: String,
    /// Human sentence, Kubernetes style: `Required value`, `Invalid value: -1: must be
    /// greater than or equal to 0`, `Unsupported value: "X": supported values: "A", "B"`.
    pub message: String,
}

impl FieldError {
    /// `Required value` (+ detail).
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }

    /// `Invalid value: <value>: <detail>`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", display_value(value)),
        }
    }

    /// `Unsupported value: "X": supported values: "A", "B"`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                display_value(value),
                list.join(", ")
            ),
        }
    }

    /// `Forbidden: <detail>`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    /// `Duplicate value: <value>`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {}", display_value(value)),
        }
    }

    /// `field: message` as in a Status message.
    pub fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// A body that does not decode into its kind (wrong JSON type at a path).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// Field path where decoding failed (`spec.replicas`); empty for the top level.
    pub path: String,
    /// What was wrong.
    pub message: String,
}

/// An API failure, rendered as a Kubernetes `Status`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 BadRequest.
    #[error("{0}")]
    BadRequest(String),
    /// 401 Unauthorized.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403 Forbidden (message already in Kubernetes wording).
    #[error("{message}")]
    Forbidden {
        /// Full message.
        message: String,
        /// `details.name`.
        name: String,
        /// `details.group`.
        group: String,
        /// `details.kind` (the resource plural).
        kind: String,
    },
    /// 404 NotFound for an object: `ships "x" not found`.
    #[error("{qualified} \"{name}\" not found")]
    NotFound {
        /// `ships` or `deployments.apps`.
        qualified: String,
        /// Group for details.
        group: String,
        /// Plural for details.
        kind: String,
        /// Object name.
        name: String,
    },
    /// 404 for a path that serves nothing.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// 405 MethodNotAllowed.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 406 NotAcceptable.
    #[error("{0}")]
    NotAcceptable(String),
    /// 409 AlreadyExists.
    #[error("{qualified} \"{name}\" already exists")]
    AlreadyExists {
        /// `ships`.
        qualified: String,
        /// Group for details.
        group: String,
        /// Plural for details.
        kind: String,
        /// Object name.
        name: String,
    },
    /// 409 Conflict (optimistic concurrency, preconditions, SSA conflicts).
    #[error("{message}")]
    Conflict {
        /// Full message.
        message: String,
        /// Group for details.
        group: String,
        /// Plural for details.
        kind: String,
        /// Object name.
        name: String,
    },
    /// 410 Gone/Expired: the resourceVersion was compacted.
    #[error("{0}")]
    Expired(String),
    /// 413 RequestEntityTooLarge.
    #[error("{0}")]
    TooLarge(String),
    /// 415 UnsupportedMediaType.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422 Invalid with field causes.
    #[error("{kind}{group_dot}\"{name}\" is invalid")]
    Invalid {
        /// Kind (`Ship`).
        kind: String,
        /// Group for details.
        group: String,
        /// `group.` or empty, for the message (`Deployment.apps "x" is invalid`).
        group_dot: String,
        /// Object name.
        name: String,
        /// What is wrong.
        causes: Vec<FieldError>,
    },
    /// 500 InternalError.
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// 503 ServiceUnavailable (store unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// 504 Timeout.
    #[error("{0}")]
    Timeout(String),
    /// A failure reaching or reported by a node agent (ships/log, ships/console), with its
    /// HTTP code: 502 when the agent cannot be reached, else the agent's own code.
    #[error("{message}")]
    Agent {
        /// HTTP status code.
        code: u16,
        /// What went wrong.
        message: String,
    },
}

impl ApiError {
    /// An Invalid error for `kind` in `group` named `name`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<FieldError>) -> Self {
        ApiError::Invalid {
            kind: kind.to_string(),
            group: group.to_string(),
            group_dot: if group.is_empty() {
                " ".to_string()
            } else {
                format!(".{group} ")
            },
            name: name.to_string(),
            causes,
        }
    }

    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden { .. } => 403,
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::NotAcceptable(_) => 406,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Expired(_) => 410,
            ApiError::TooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Invalid { .. } => 422,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
            ApiError::Timeout(_) => 504,
            ApiError::Agent { code, .. } => *code,
        }
    }

    /// Status `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Expired(_) => "Expired",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::Timeout(_) => "Timeout",
            ApiError::Agent { code, .. } => match code {
                400 => "BadRequest",
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                501 | 503 => "ServiceUnavailable",
                502 => "BadGateway",
                504 => "Timeout",
                _ => "InternalError",
            },
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut message = self.to_string();
        let details = match self {
            ApiError::NotFound {
                group, kind, name, ..
            }
            | ApiError::AlreadyExists {
                group, kind, name, ..
            }
            | ApiError::Conflict {
                group, kind, name, ..
            }
            | ApiError::Forbidden {
                group, kind, name, ..
            } => Some(json!({"name": name, "group": group, "kind": kind})),
            ApiError::Invalid {
                kind,
                group,
                name,
                causes,
                ..
            } => {
                let rendered: Vec<String> = causes.iter().map(FieldError::render).collect();
                if rendered.len() == 1 {
                    message = format!("{message}: {}", rendered[0]);
                } else if !rendered.is_empty() {
                    message = format!("{message}: [{}]", rendered.join(", "));
                }
                let causes: Vec<Value> = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
            }
            _ => None,
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": self.reason(),
            "code": self.code(),
        });
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }
}

/// A success `Status` (deletes with `Orphan`, deletecollection, …).
pub fn success_status(details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}
