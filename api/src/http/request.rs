//! Parsing a request path and query into what it asks for (Kubernetes' RequestInfo).

use crate::error::ApiError;
use crate::registry::{Registry, ResourceDef};
use std::collections::HashMap;

/// A resource request: which resource, scope, name and subresource, and the verb.
#[derive(Clone, Debug)]
pub struct ResourceRequest {
    /// The served resource.
    pub def: ResourceDef,
    /// Namespace from the path (`None` for cluster scope or all namespaces).
    pub namespace: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
    /// `status`, `scale`, `token`, … or empty.
    pub subresource: String,
    /// RBAC verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
}

/// What a path addresses.
#[derive(Clone, Debug)]
pub enum Target {
    /// A stored resource.
    Resource(Box<ResourceRequest>),
    /// A virtual create-only resource (reviews).
    Review {
        /// `authorization.k8s.io` or `authentication.k8s.io`.
        group: String,
        /// `selfsubjectaccessreviews`, …
        resource: String,
    },
    /// Anything else (discovery, OpenAPI, health): a non-resource URL.
    NonResource,
}

/// Query parameters, parsed.
#[derive(Clone, Debug, Default)]
pub struct Query {
    raw: HashMap<String, String>,
}

impl Query {
    /// Parses `a=b&c=d` (percent-decoded).
    pub fn parse(q: Option<&str>) -> Query {
        let mut raw = HashMap::new();
        if let Some(q) = q {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                raw.insert(percent_decode(k), percent_decode(v));
            }
        }
        Query { raw }
    }

    /// A parameter.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.raw.get(k).map(String::as_str)
    }

    /// A boolean parameter (`true`/`1`).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true") | Some("1"))
    }

    /// An integer parameter, 400 if malformed.
    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!("invalid value for query parameter {k}: {s:?}"))
            }),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            // Bytes, not `&s[..]`: the two bytes after `%` may split a multi-byte character.
            b'%' => match (hex_digit(bytes.get(i + 1)), hex_digit(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: Option<&u8>) -> Option<u8> {
    char::from(*b?)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Resolves a path and method into a target.
pub fn resolve(
    registry: &Registry,
    method: &http::Method,
    path: &str,
    query: &Query,
) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Ok(Target::NonResource),
    };
    if rest.is_empty() {
        return Ok(Target::NonResource);
    }
    if (group == "authorization.k8s.io" || group == "authentication.k8s.io") && rest.len() == 1 {
        return Ok(Target::Review {
            group: group.to_string(),
            resource: rest[0].to_string(),
        });
    }
    // namespaces/{ns}/{plural}/... unless the resource is namespaces itself.
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !plural.is_empty() => {
            let r: &[&str] = &rest[2..];
            let _ = tail;
            (Some(ns.to_string()), r)
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, ""),
        [p, n] => (*p, Some(n.to_string()), ""),
        [p, n, s] => (*p, Some(n.to_string()), *s),
        _ => return Err(ApiError::NoRoute),
    };
    // `namespaces/{name}/status` parses above as namespace+plural; undo that.
    let (namespace, plural, name, sub) = match (&namespace, plural, &name) {
        (Some(ns), p, None) if group.is_empty() && (p == "status" || p == "finalize") => {
            (None, "namespaces", Some(ns.clone()), p)
        }
        _ => (namespace, plural, name, sub),
    };
    if group.is_empty() && plural == "pods" {
        // `kubectl describe node` lists the node's pods and tolerates only a 403 there.
        return Err(ApiError::Forbidden {
            message: "pods is forbidden: Tugboat serves no pods; list ships instead".into(),
            name: name.unwrap_or_default(),
            group: String::new(),
            kind: "pods".into(),
        });
    }
    let def = registry
        .get(group, version, plural)
        .ok_or(ApiError::NoRoute)?
        .clone();
    if namespace.is_some() && !def.namespaced {
        return Err(ApiError::NoRoute);
    }
    let valid_sub = match sub {
        "" => true,
        "status" => def.status,
        "scale" => def.scale.is_some(),
        "token" => def.kind == "ServiceAccount",
        "binding" => def.kind == "Ship" && def.group.is_empty(),
        // Proxied to the node agent (crate::http::proxy).
        "log" | "console" => def.kind == "Ship" && def.group.is_empty(),
        // Image uploads into a node's cache, proxied to its agent.
        "images" => def.kind == "Node" && def.group.is_empty(),
        "finalize" => def.kind == "Namespace",
        _ => false,
    };
    if !valid_sub {
        return Err(ApiError::NoRoute);
    }
    if sub == "images" {
        return match (method.as_str(), name) {
            ("POST", Some(name)) => Ok(Target::Resource(Box::new(ResourceRequest {
                def,
                namespace,
                name: Some(name),
                subresource: sub.to_string(),
                verb: "create",
            }))),
            (_, None) => Err(ApiError::NoRoute),
            _ => Err(ApiError::MethodNotAllowed(
                "nodes/images only supports POST of an image archive".into(),
            )),
        };
    }
    if sub == "console" && name.is_some() {
        // Attaching writes to the guest, so it needs `create` also when it arrives as a GET
        // with an upgrade (as Kubernetes authorizes pods/attach over websockets).
        return match method.as_str() {
            "GET" | "POST" => Ok(Target::Resource(Box::new(ResourceRequest {
                def,
                namespace,
                name,
                subresource: sub.to_string(),
                verb: "create",
            }))),
            _ => Err(ApiError::MethodNotAllowed(
                "ships/console only supports GET and POST with an upgrade".into(),
            )),
        };
    }
    let watch = query.flag("watch");
    let verb: &'static str = match (method.as_str(), name.is_some()) {
        ("GET", false) | ("HEAD", false) => {
            if watch {
                "watch"
            } else {
                "list"
            }
        }
        ("GET", true) | ("HEAD", true) => {
            if watch {
                "watch"
            } else {
                "get"
            }
        }
        ("POST", _) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => {
            return Err(ApiError::MethodNotAllowed(
                "the server does not allow this method on the requested resource".into(),
            ))
        }
    };
    Ok(Target::Resource(Box::new(ResourceRequest {
        def,
        namespace,
        name,
        subresource: sub.to_string(),
        verb,
    })))
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decode_does_not_split_characters() {
        // `%` followed by one hex digit and a multi-byte character used to slice inside it.
        assert_eq!(percent_decode("%a\u{e9}"), "%a\u{e9}");
        assert_eq!(percent_decode("%\u{e9}"), "%\u{e9}");
        assert_eq!(percent_decode("a%41+b%2"), "aA b%2");
        assert_eq!(percent_decode("%"), "%");
        // `from_str_radix` accepted a sign: `%+1` is not an escape.
        assert_eq!(percent_decode("%+1"), "% 1");
    }
}
