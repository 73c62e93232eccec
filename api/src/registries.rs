//! Cluster-wide registry settings for node image pulls: the ConfigMap
//! `tugboat-system/registries`, key `registries.yaml`.
//!
//! ```yaml
//! mirrors:
//!   registry.example.com:
//!     endpoint: ["mirror.site:5000", "http://cache.site:5000"]
//! insecure: ["cache.site:5000"]
//! ```
//!
//! A mirror endpoint is `host[:port]`, optionally with `https://`, or `http://` to pull from it
//! over plain HTTP. Mirrors are tried in order before the registry itself. Every node reads the
//! settings when it pulls, beside its own `--registry-mirror` / `--insecure-registry` flags
//! (which come first), so an air-gapped site configures its mirrors once for the whole cluster.
//! The apiserver refuses a `registries` ConfigMap it cannot parse (see [`validate`]).

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// Namespace of the settings ConfigMap.
pub const NAMESPACE: &str = "tugboat-system";
/// Name of the settings ConfigMap.
pub const NAME: &str = "registries";
/// Key of the YAML document in the ConfigMap's `data`.
pub const KEY: &str = "registries.yaml";

/// Registry settings, normalized: mirrors per registry host and plain-HTTP hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryHosts {
    /// Registry host → mirror hosts (`host[:port]`), tried in order before the registry.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Hosts (`host[:port]`) spoken to over plain HTTP.
    pub insecure: BTreeSet<String>,
}

impl RegistryHosts {
    /// Adds `other`'s mirrors after this one's (per registry, without duplicates) and its
    /// insecure hosts.
    pub fn merge(&mut self, other: &RegistryHosts) {
        for (registry, mirrors) in &other.mirrors {
            let list = self.mirrors.entry(registry.clone()).or_default();
            for m in mirrors {
                if !list.contains(m) {
                    list.push(m.clone());
                }
            }
        }
        self.insecure.extend(other.insecure.iter().cloned());
    }

    /// Whether nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty() && self.insecure.is_empty()
    }
}

/// The document as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorEntry>,
    #[serde(default)]
    insecure: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorEntry {
    #[serde(default)]
    endpoint: Vec<String>,
}

/// Why a `registries.yaml` was refused: the field path and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RegistriesError {
    /// Where in the document (`mirrors[docker.io].endpoint[0]`), or empty for the whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> RegistriesError {
    RegistriesError {
        field: field.into(),
        message: message.into(),
    }
}

/// Most mirrors per registry and most insecure hosts (a guard, not a tuning knob).
const MAX_ENTRIES: usize = 64;

/// Parses and normalizes a `registries.yaml` document.
pub fn parse(yaml: &str) -> Result<RegistryHosts, RegistriesError> {
    if yaml.trim().is_empty() {
        return Ok(RegistryHosts::default());
    }
    let doc: Document = serde_yaml::from_str(yaml).map_err(|e| err("", e.to_string()))?;
    let mut hosts = RegistryHosts::default();
    for (key, entry) in &doc.mirrors {
        let field = format!("mirrors[{key}]");
        check_host(key).map_err(|m| err(&field, m))?;
        // Keys match image references' registries, which are lower case with Docker Hub as
        // `docker.io`.
        let registry = normalize_registry(key);
        if hosts.mirrors.contains_key(&registry) {
            return Err(err(&field, format!("{registry} is configured twice")));
        }
        if entry.endpoint.is_empty() {
            return Err(err(
                format!("{field}.endpoint"),
                "at least one endpoint is required",
            ));
        }
        if entry.endpoint.len() > MAX_ENTRIES {
            return Err(err(
                format!("{field}.endpoint"),
                format!("at most {MAX_ENTRIES} endpoints are allowed"),
            ));
        }
        let mut list = Vec::new();
        for (i, endpoint) in entry.endpoint.iter().enumerate() {
            let field = format!("{field}.endpoint[{i}]");
            let (host, plain_http) = split_scheme(endpoint).map_err(|m| err(&field, m))?;
            check_host(host).map_err(|m| err(&field, m))?;
            if plain_http {
                hosts.insecure.insert(host.to_string());
            }
            if !list.iter().any(|h| h == host) {
                list.push(host.to_string());
            }
        }
        hosts.mirrors.insert(registry, list);
    }
    if doc.insecure.len() > MAX_ENTRIES {
        return Err(err(
            "insecure",
            format!("at most {MAX_ENTRIES} hosts are allowed"),
        ));
    }
    for (i, host) in doc.insecure.iter().enumerate() {
        check_host(host).map_err(|m| err(format!("insecure[{i}]"), m))?;
        hosts.insecure.insert(host.clone());
    }
    Ok(hosts)
}

/// The settings in a ConfigMap's `data` (a ConfigMap without the key configures nothing).
pub fn from_config_map_data(
    data: Option<&BTreeMap<String, String>>,
) -> Result<RegistryHosts, RegistriesError> {
    match data.and_then(|d| d.get(KEY)) {
        Some(yaml) => parse(yaml),
        None => Ok(RegistryHosts::default()),
    }
}

/// Whether a ConfigMap at `namespace`/`name` holds the cluster's registry settings.
pub fn is_settings(namespace: Option<&str>, name: Option<&str>) -> bool {
    namespace == Some(NAMESPACE) && name == Some(NAME)
}

/// Validates the settings ConfigMap's data; errors name the `data[registries.yaml]` field.
pub fn validate(data: Option<&BTreeMap<String, String>>) -> Result<(), RegistriesError> {
    from_config_map_data(data).map(|_| ()).map_err(|e| {
        let field = if e.field.is_empty() {
            format!("data[{KEY}]")
        } else {
            format!("data[{KEY}].{}", e.field)
        };
        err(field, e.message)
    })
}

fn normalize_registry(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

fn split_scheme(endpoint: &str) -> Result<(&str, bool), String> {
    let (rest, plain_http) = if let Some(rest) = endpoint.strip_prefix("http://") {
        (rest, true)
    } else if let Some(rest) = endpoint.strip_prefix("https://") {
        (rest, false)
    } else if endpoint.contains("://") {
        return Err(format!(
            "{endpoint:?}: only http:// and https:// endpoints are supported"
        ));
    } else {
        (endpoint, false)
    };
    Ok((rest.trim_end_matches('/'), plain_http))
}

/// `host[:port]`: a DNS name or IPv4 address (or `[v6]`), an optional port, nothing else.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("a host is required".into());
    }
    if host.len() > 255 {
        return Err(format!("{host:?} is longer than 255 characters"));
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err(format!("{host:?}: unterminated [IPv6] address"));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?}: {v6:?} is not an IPv6 address"));
        }
        match after {
            "" => ("", None),
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return Err(format!("{host:?}: expected :PORT after the address")),
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "{host:?}: port {port:?} is not a number in 1-65535"
            ));
        }
    }
    if !name.is_empty() || !host.starts_with('[') {
        let ok = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "{host:?} is not a host[:port] (no scheme, path or spaces)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_keep_their_order_and_http_endpoints_are_insecure() {
        let hosts = parse(
            "mirrors:\n  docker.io:\n    endpoint: [\"m1.site:5000\", \"http://127.0.0.1:5001\", \"https://m3/\", \"m1.site:5000\"]\n\
             insecure: [\"[::1]:5002\"]\n",
        )
        .expect("valid");
        assert_eq!(
            hosts.mirrors["docker.io"],
            vec!["m1.site:5000", "127.0.0.1:5001", "m3"]
        );
        assert_eq!(
            hosts.insecure.iter().cloned().collect::<Vec<_>>(),
            vec!["127.0.0.1:5001", "[::1]:5002"]
        );
    }

    #[test]
    fn registry_keys_are_normalized_like_image_references() {
        let hosts = parse("mirrors:\n  Index.Docker.io:\n    endpoint: [m]").expect("valid");
        assert_eq!(hosts.mirrors["docker.io"], vec!["m"]);
        let e = parse(
            "mirrors:\n  docker.io:\n    endpoint: [a]\n  index.docker.io:\n    endpoint: [b]",
        )
        .expect_err("twice");
        assert!(e.message.contains("twice"), "{e}");
    }

    #[test]
    fn empty_and_missing_settings_configure_nothing() {
        assert!(parse("").expect("empty").is_empty());
        assert!(parse("{}").expect("empty map").is_empty());
        assert!(from_config_map_data(None).expect("none").is_empty());
        let other = BTreeMap::from([("other".to_string(), "x".to_string())]);
        assert!(from_config_map_data(Some(&other))
            .expect("no key")
            .is_empty());
    }

    #[test]
    fn bad_documents_name_the_field() {
        let cases = [
            ("mirrors: [1]", ""),
            ("mirror: {}", ""),
            ("mirrors:\n  docker.io: {}", "mirrors[docker.io].endpoint"),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"ftp://m\"]",
                "mirrors[docker.io].endpoint[0]",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"m:0\"]",
                "mirrors[docker.io].endpoint[0]",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"m/path\"]",
                "mirrors[docker.io].endpoint[0]",
            ),
            (
                "mirrors:\n  \"bad host\":\n    endpoint: [m]",
                "mirrors[bad host]",
            ),
            ("insecure: [\"a\", \"b c\"]", "insecure[1]"),
            ("insecure: [\"[::1\"]", "insecure[0]"),
        ];
        for (yaml, field) in cases {
            let e = parse(yaml).expect_err(yaml);
            assert_eq!(e.field, field, "{yaml}: {e}");
        }
        let data = BTreeMap::from([(KEY.to_string(), "insecure: [\"a b\"]".to_string())]);
        let e = validate(Some(&data)).expect_err("invalid");
        assert_eq!(e.field, "data[registries.yaml].insecure[0]");
    }

    #[test]
    fn node_flags_come_before_cluster_mirrors() {
        let mut node = RegistryHosts::default();
        node.mirrors.insert("r".into(), vec!["a".into()]);
        let cluster = parse("mirrors:\n  r:\n    endpoint: [b, a]\ninsecure: [b]").expect("valid");
        node.merge(&cluster);
        assert_eq!(node.mirrors["r"], vec!["a", "b"]);
        assert!(node.insecure.contains("b"));
    }
}
