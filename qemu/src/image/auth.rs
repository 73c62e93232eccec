//! Registry credentials from docker's `config.json`.
//!
//! The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. As in docker, a
//! registry's credentials come from its `credHelpers` entry if it has one, else from the
//! `credsStore` helper if one is set, else from `auths` (keyed by host, or by a URL such as
//! `https://index.docker.io/v1/`): `auth` (base64 of `user:password`) or `username` and
//! `password`. A helper `NAME` is the program `docker-credential-NAME` on `PATH`, run as
//! `docker-credential-NAME get` with the server on stdin, answering
//! `{"Username": …, "Secret": …}`; "credentials not found" means anonymous.

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
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    auths: BTreeMap<String, RawAuth>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
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

/// A docker config: `auths` and helpers, keyed by normalized registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    auths: BTreeMap<String, Credentials>,
    creds_store: Option<String>,
    cred_helpers: BTreeMap<String, String>,
}

/// How long a credential helper may take.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most bytes of a helper's answer that are read.
const HELPER_OUTPUT_LIMIT: usize = 64 * 1024;

/// A credential helper's answer to `get`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
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
        let helper_name = |what: &str, name: &str| {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if ok {
                Ok(name.to_string())
            } else {
                Err(format!("{what} {name:?} is not a credential helper name"))
            }
        };
        let creds_store = match raw.creds_store.as_deref() {
            None | Some("") => None,
            Some(n) => Some(helper_name("credsStore", n)?),
        };
        let mut cred_helpers = BTreeMap::new();
        for (host, name) in raw.cred_helpers {
            let name = helper_name(&format!("credHelpers.{host}"), &name)?;
            cred_helpers.insert(normalize_host(&host), name);
        }
        Ok(DockerConfig {
            auths,
            creds_store,
            cred_helpers,
        })
    }

    /// Credentials for `registry` (`host[:port]` as in a reference), anonymous when none; a
    /// configured helper that fails is an error, not a silent anonymous pull.
    pub async fn credentials_for(&self, registry: &str) -> Result<Credentials, AuthError> {
        let host = normalize_host(registry);
        let helper = self.cred_helpers.get(&host).or(self.creds_store.as_ref());
        match helper {
            Some(name) => run_helper(name, &host).await,
            None => Ok(self.auths.get(&host).cloned().unwrap_or_default()),
        }
    }
}

/// Runs `docker-credential-NAME get` for `host` (docker.io is asked as its v1 index URL, which
/// is what `docker login` stored). Output is drained while the helper runs, and the whole
/// exchange is bounded by [`HELPER_TIMEOUT`]; a helper still running then is killed.
async fn run_helper(name: &str, host: &str) -> Result<Credentials, AuthError> {
    use tokio::io::AsyncWriteExt as _;
    let program = format!("docker-credential-{name}");
    let fail = |message: String| AuthError {
        path: PathBuf::from(&program),
        message,
    };
    let server = if host == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    };
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("running it for {host}: {e}")))?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let exchange = async {
        if let Some(mut w) = stdin {
            // A helper that exits without reading its input says why on stderr; keep that.
            match w.write_all(server.as_bytes()).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(fail(format!("writing to it: {e}")))
                }
                _ => {}
            }
        }
        let (out, err, status) =
            tokio::join!(read_bounded(stdout), read_bounded(stderr), child.wait());
        let status = status.map_err(|e| fail(format!("waiting for it: {e}")))?;
        Ok((status, out, err))
    };
    let (status, out, err) = match tokio::time::timeout(HELPER_TIMEOUT, exchange).await {
        Ok(r) => r?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(fail(format!(
                "no answer for {host} within {HELPER_TIMEOUT:?}"
            )));
        }
    };
    let out = String::from_utf8_lossy(&out).trim().to_string();
    let err = String::from_utf8_lossy(&err).trim().to_string();
    if !status.success() {
        // The helper protocol's answer for a server it holds nothing for.
        if out.contains("credentials not found") || err.contains("credentials not found") {
            return Ok(Credentials::Anonymous);
        }
        return Err(fail(format!(
            "get {host}: {status}: {}",
            if err.is_empty() { &out } else { &err }
        )));
    }
    let answer: HelperAnswer = serde_json::from_str(&out)
        .map_err(|e| fail(format!("get {host}: answer is not the helper JSON: {e}")))?;
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(Credentials::Anonymous);
    }
    if answer.username == "<token>" {
        // docker's marker for an identity (refresh) token, which needs an OAuth exchange.
        return Err(fail(format!(
            "get {host}: the helper holds an identity token, which Tugboat cannot use; \
             log in with a user name and password or access token"
        )));
    }
    Ok(Credentials::Basic {
        username: answer.username,
        password: answer.secret,
    })
}

/// Up to [`HELPER_OUTPUT_LIMIT`] bytes of a helper's output stream (read errors end it).
async fn read_bounded(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    if let Some(r) = r {
        let _ = r
            .take(HELPER_OUTPUT_LIMIT as u64)
            .read_to_end(&mut buf)
            .await;
    }
    buf
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

    #[tokio::test]
    async fn auth_and_username_password_forms() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let cfg = DockerConfig::parse(&format!(
            r#"{{
              "auths": {{
                "https://index.docker.io/v1/": {{"auth": "{b64}"}},
                "localhost:5000": {{"username": "bob", "password": "pw"}},
                "ghcr.io": {{"identitytoken": "opaque"}}
              }}
            }}"#
        ))
        .unwrap();
        assert_eq!(
            cfg.credentials_for("docker.io").await.unwrap(),
            Credentials::Basic {
                username: "alice".into(),
                password: "s3cr:et".into()
            }
        );
        assert_eq!(
            cfg.credentials_for("localhost:5000").await.unwrap(),
            Credentials::Basic {
                username: "bob".into(),
                password: "pw".into()
            }
        );
        assert_eq!(
            cfg.credentials_for("ghcr.io").await.unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(
            cfg.credentials_for("quay.io").await.unwrap(),
            Credentials::Anonymous
        );
        assert!(
            !format!("{:?}", cfg.credentials_for("localhost:5000").await.unwrap()).contains("pw")
        );
    }

    #[tokio::test]
    async fn helpers_take_precedence_and_a_missing_one_is_an_error() {
        let cfg = DockerConfig::parse(
            r#"{"auths": {"reg.example": {"username": "u", "password": "p"}},
                "credHelpers": {"https://Other.example/": "tugboat-no-such-helper"}}"#,
        )
        .unwrap();
        // No helper for this host: auths answer.
        assert!(matches!(
            cfg.credentials_for("reg.example").await,
            Ok(Credentials::Basic { .. })
        ));
        let e = cfg.credentials_for("other.example").await.unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-credential-tugboat-no-such-helper"),
            "{e}"
        );
        let store = DockerConfig::parse(r#"{"credsStore": "tugboat-no-such-store"}"#).unwrap();
        assert!(store.credentials_for("any.example").await.is_err());
        assert!(DockerConfig::parse(r#"{"credsStore": "../evil"}"#).is_err());
        assert!(DockerConfig::parse(r#"{"credHelpers": {"h": "a b"}}"#).is_err());
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
