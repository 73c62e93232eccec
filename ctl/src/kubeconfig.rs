//! kubeconfig files for `kubectl`: the admin one the daemon writes to `DATA/admin.kubeconfig`,
//! and ones with freshly issued client certificates (`tugboat kubeconfig`).

use anyhow::Context as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tugboat_pki::PkiPaths;

/// File name of the admin kubeconfig under the data dir.
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";
/// Cluster name used in generated kubeconfigs.
pub const DEFAULT_CLUSTER: &str = "tugboat";
/// Server URL when none is given and no admin kubeconfig names one.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:6443";
/// Group that the apiserver allows everything.
pub const MASTERS_GROUP: &str = "system:masters";
/// Lifetime of certificates issued by `tugboat kubeconfig` by default.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// A kubeconfig (YAML) with one cluster (`server_url`, trusting `ca_pem`), one user
/// authenticating with the client certificate `cert_pem`/`key_pem`, and the current context
/// `<user>@<cluster>`.
pub fn render(
    server_url: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    user: &str,
    cluster: &str,
) -> String {
    let context = format!("{user}@{cluster}");
    let (server, user_q, cluster_q, context_q) = (
        quote(server_url),
        quote(user),
        quote(cluster),
        quote(&context),
    );
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {cluster_q}\n\
         \x20 cluster:\n\
         \x20   server: {server}\n\
         \x20   certificate-authority-data: {ca}\n\
         users:\n\
         - name: {user_q}\n\
         \x20 user:\n\
         \x20   client-certificate-data: {cert}\n\
         \x20   client-key-data: {key}\n\
         contexts:\n\
         - name: {context_q}\n\
         \x20 context:\n\
         \x20   cluster: {cluster_q}\n\
         \x20   user: {user_q}\n\
         current-context: {context_q}\n\
         preferences: {{}}\n",
        ca = base64(ca_pem.as_bytes()),
        cert = base64(cert_pem.as_bytes()),
        key = base64(key_pem.as_bytes()),
    )
}

/// Writes `DATA/admin.kubeconfig` (mode 0600) for user `admin` in `system:masters`, from
/// `DATA/pki/admin.{crt,key}` and `ca.crt`. Should the admin certificate lack
/// `O=system:masters` (certificates from older versions), `DATA/pki/kube-admin.{crt,key}` with
/// that subject are used instead, issued first if missing (which needs `ca.key`).
pub fn write_admin(data_dir: &Path, server_url: &str) -> anyhow::Result<PathBuf> {
    let paths = PkiPaths::new(data_dir);
    let ca = read_text(&paths.ca_cert)?;
    let (cert, key) = admin_credentials(&paths)?;
    let subject = tugboat_pki::cert_subject(cert.as_bytes())?;
    let yaml = render(
        server_url,
        &ca,
        &cert,
        &key,
        &subject.common_name,
        DEFAULT_CLUSTER,
    );
    let path = data_dir.join(ADMIN_KUBECONFIG);
    write_private(&path, yaml.as_bytes())?;
    Ok(path)
}

/// Certificate and key PEM of a client in `system:masters`.
fn admin_credentials(paths: &PkiPaths) -> anyhow::Result<(String, String)> {
    let is_master = |cert: &str| {
        tugboat_pki::cert_subject(cert.as_bytes())
            .map(|s| s.organizations.iter().any(|o| o == MASTERS_GROUP))
            .unwrap_or(false)
    };
    let cert = read_text(&paths.admin_cert)?;
    if is_master(&cert) {
        return Ok((cert, read_text(&paths.admin_key)?));
    }
    let cert_path = paths.dir.join("kube-admin.crt");
    let key_path = paths.dir.join("kube-admin.key");
    if cert_path.exists() && key_path.exists() {
        let cert = read_text(&cert_path)?;
        if is_master(&cert) {
            return Ok((cert, read_text(&key_path)?));
        }
    }
    let issued = tugboat_pki::issue_client_cert(
        paths,
        tugboat_pki::ADMIN_COMMON_NAME,
        &[MASTERS_GROUP.to_string()],
        DEFAULT_CERT_LIFETIME,
    )
    .with_context(|| {
        format!(
            "{} is not in {MASTERS_GROUP}; issuing kube-admin.crt",
            paths.admin_cert.display()
        )
    })?;
    write_private(&key_path, issued.key_pem.as_bytes())?;
    write_file(&cert_path, issued.cert_pem.as_bytes(), 0o644)?;
    Ok((issued.cert_pem, issued.key_pem))
}

/// A kubeconfig for `user` in `groups` with a freshly issued client certificate valid for
/// `lifetime` (needs `DATA/pki/ca.key`). The server defaults to the one in
/// `DATA/admin.kubeconfig`, else [`DEFAULT_SERVER`].
pub fn issue(
    data_dir: &Path,
    server_url: Option<&str>,
    user: &str,
    groups: &[String],
    lifetime: Duration,
) -> anyhow::Result<String> {
    let paths = PkiPaths::new(data_dir);
    let ca = read_text(&paths.ca_cert)?;
    let issued = tugboat_pki::issue_client_cert(&paths, user, groups, lifetime)?;
    let server = match server_url {
        Some(s) => s.to_string(),
        None => admin_server(data_dir).unwrap_or_else(|| DEFAULT_SERVER.to_string()),
    };
    Ok(render(
        &server,
        &ca,
        &issued.cert_pem,
        &issued.key_pem,
        user,
        DEFAULT_CLUSTER,
    ))
}

/// The `server:` of `DATA/admin.kubeconfig`, if it exists.
fn admin_server(data_dir: &Path) -> Option<String> {
    let text = fs::read_to_string(data_dir.join(ADMIN_KUBECONFIG)).ok()?;
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("server:")?.trim();
        Some(serde_json::from_str::<String>(v).unwrap_or_else(|_| v.to_string()))
    })
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    write_file(path, data, 0o600)
}

/// Writes via a temporary file and rename, with exactly `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode of {}", tmp.display()))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Standard base64 with padding (kubeconfig `*-data` fields).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop (the crate has no tempfile dev-dependency).
    struct TempDir(PathBuf);

    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn pki() -> (TempDir, PkiPaths) {
        let dir = TempDir(
            std::env::temp_dir().join(format!("tugboat-kubeconfig-test-{}", rand::random::<u64>())),
        );
        fs::create_dir_all(dir.path()).unwrap();
        let id = tugboat_pki::NodeIdentity {
            name: "node-1".into(),
            ..Default::default()
        };
        let paths = tugboat_pki::ensure_node_pki(dir.path(), &id).unwrap();
        (dir, paths)
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }

    #[test]
    fn render_shape() {
        let y = render(
            "https://127.0.0.1:6443",
            "CA",
            "CERT",
            "KEY",
            "admin",
            "tugboat",
        );
        assert!(y.contains("    server: \"https://127.0.0.1:6443\"\n"));
        assert!(y.contains("    certificate-authority-data: Q0E=\n"));
        assert!(y.contains("    client-certificate-data: Q0VSVA==\n"));
        assert!(y.contains("    client-key-data: S0VZ\n"));
        assert!(y.contains("current-context: \"admin@tugboat\"\n"));
    }

    #[test]
    fn admin_kubeconfig_is_private_and_in_masters() {
        let (dir, paths) = pki();
        let path = write_admin(dir.path(), "https://127.0.0.1:6443").unwrap();
        assert_eq!(path, dir.path().join("admin.kubeconfig"));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        let admin = fs::read_to_string(&paths.admin_cert).unwrap();
        assert!(text.contains(&base64(admin.as_bytes())));
        assert!(text.contains("current-context: \"admin@tugboat\""));
        assert_eq!(
            admin_server(dir.path()).as_deref(),
            Some("https://127.0.0.1:6443")
        );
        // Rewriting works (atomic replace).
        write_admin(dir.path(), "https://10.0.0.1:6443").unwrap();
        assert_eq!(
            admin_server(dir.path()).as_deref(),
            Some("https://10.0.0.1:6443")
        );
    }

    #[test]
    fn issued_kubeconfig_carries_user_and_groups() {
        let (dir, _) = pki();
        let groups = vec!["ops-team".to_string(), "dev".to_string()];
        let y = issue(
            dir.path(),
            Some("https://h:6443"),
            "alice",
            &groups,
            Duration::from_secs(3600),
        )
        .unwrap();
        let line = y
            .lines()
            .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
            .unwrap();
        // Decode with the inverse of our encoder via the PKI parser.
        let pem = decode_b64(line);
        let subject = tugboat_pki::cert_subject(&pem).unwrap();
        assert_eq!(subject.common_name, "alice");
        assert_eq!(subject.organizations, groups);
        assert!(y.contains("current-context: \"alice@tugboat\""));
        let three = vec!["a".into(), "b".into(), "c".into()];
        assert!(issue(dir.path(), None, "bob", &three, Duration::from_secs(60)).is_err());
    }

    fn decode_b64(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let mut out = Vec::new();
        for chunk in s.as_bytes().chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .filter(|(_, &c)| c != b'=')
                .fold(0u32, |n, (i, &c)| n | (u32::from(val(c)) << (18 - 6 * i)));
            let bytes = chunk.iter().filter(|&&c| c != b'=').count() - 1;
            for i in 0..bytes {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }
}
