//! Registry credentials from docker's `config.json`.
//!
//! The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. Each entry of
//! `auths` (keyed by host, or by a URL such as `https://index.docker.io/v1/`) gives either
//! `auth` (base64 of `user:password`) or `username` and `password`. Credential helpers
//! (`credsStore`, `credHelpers`) are not run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// The docker config could not be read or is malformed.
#[derive(Debug, thiserror::Error)]
#[error("docker config {path}: {message}")]
pub struct AuthError {
    /// The config file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// No credentials.
    #[default]
    Anonymous,
    /// HTTP basic (the registry may trade it for a bearer token).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            // Never print the password.
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

impl Credentials {
    /// As `oci-client` wants them.
    pub fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            Credentials::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    auths: BTreeMap<String, RawAuth>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The `auths` of a docker config, keyed by normalized registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    auths: BTreeMap<String, Credentials>,
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn default_docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

impl DockerConfig {
    /// Reads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<DockerConfig, AuthError> {
        match std::fs::read_to_string(path) {
            Ok(text) => DockerConfig::parse(&text).map_err(|message| AuthError {
                path: path.to_path_buf(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
            Err(e) => Err(AuthError {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    /// Reads the default config (see [`default_docker_config_path`]).
    pub fn load_default() -> Result<DockerConfig, AuthError> {
        match default_docker_config_path() {
            Some(p) => DockerConfig::load(&p),
            None => Ok(DockerConfig::default()),
        }
    }

    /// Parses config JSON.
    pub fn parse(text: &str) -> Result<DockerConfig, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut auths = BTreeMap::new();
        for (key, entry) in raw.auths {
            let creds = match (&entry.auth, &entry.username, &entry.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|e| format!("auths.{key}.auth is not base64: {e}"))?;
                    let text = String::from_utf8(decoded)
                        .map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
                    let (u, p) = text
                        .split_once(':')
                        .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
                    Credentials::Basic {
                        username: u.to_string(),
                        password: p.to_string(),
                    }
                }
                (_, Some(u), Some(p)) => Credentials::Basic {
                    username: u.clone(),
                    password: p.clone(),
                },
                // Identity tokens only (docker login with a helper): nothing we can use.
                _ => continue,
            };
            auths.insert(normalize_host(&key), creds);
        }
        Ok(DockerConfig { auths })
    }

    /// Credentials for `registry` (`host[:port]` as in a reference), anonymous when none.
    pub fn credentials_for(&self, registry: &str) -> Credentials {
        self.auths
            .get(&normalize_host(registry))
            .cloned()
            .unwrap_or_default()
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://reg:5000/x` → `reg:5000`.
fn normalize_host(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_and_username_password_forms() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let cfg = DockerConfig::parse(&format!(
            r#"{{
              "auths": {{
                "https://index.docker.io/v1/": {{"auth": "{b64}"}},
                "localhost:5000": {{"username": "bob", "password": "pw"}},
                "ghcr.io": {{"identitytoken": "opaque"}}
              }},
              "credsStore": "desktop"
            }}"#
        ))
        .unwrap();
        assert_eq!(
            cfg.credentials_for("docker.io"),
            Credentials::Basic {
                username: "alice".into(),
                password: "s3cr:et".into()
            }
        );
        assert_eq!(
            cfg.credentials_for("localhost:5000"),
            Credentials::Basic {
                username: "bob".into(),
                password: "pw".into()
            }
        );
        assert_eq!(cfg.credentials_for("ghcr.io"), Credentials::Anonymous);
        assert_eq!(cfg.credentials_for("quay.io"), Credentials::Anonymous);
        assert!(!format!("{:?}", cfg.credentials_for("localhost:5000")).contains("pw"));
    }

    #[test]
    fn malformed_configs_are_errors_missing_ones_empty() {
        assert!(DockerConfig::parse(r#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
        let nocolon = base64::engine::general_purpose::STANDARD.encode("justuser");
        assert!(
            DockerConfig::parse(&format!(r#"{{"auths": {{"x": {{"auth": "{nocolon}"}}}}}}"#))
                .is_err()
        );
        assert!(DockerConfig::parse("not json").is_err());
        assert_eq!(DockerConfig::parse("{}").unwrap(), DockerConfig::default());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            DockerConfig::load(&dir.path().join("none.json")).unwrap(),
            DockerConfig::default()
        );
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        let e = DockerConfig::load(&dir.path().join("config.json")).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }
}
