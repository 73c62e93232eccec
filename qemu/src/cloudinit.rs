//! Cloud-init NoCloud seed disks.
//!
//! A Ship's `spec.cloudInit` becomes an ISO 9660 image labelled `cidata` (cloud-init's NoCloud
//! datasource finds the disk by that filesystem label) holding `meta-data`, `user-data` and,
//! when given, `network-config`. The image is built by [`crate::iso9660`], not a shell tool,
//! and is deterministic: the same inputs give the same bytes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::iso9660::{IsoBuilder, IsoError};

/// The volume id NoCloud looks for.
pub const VOLUME_ID: &str = "cidata";
/// Largest `user-data` (and `network-config`) accepted, in bytes.
pub const MAX_USER_DATA: usize = 16 << 20;
/// The `user-data` written when none is given: an empty cloud-config, so cloud-init does
/// nothing beyond its defaults instead of warning about missing user data.
pub const DEFAULT_USER_DATA: &str = "#cloud-config\n{}\n";
/// Longest instance id: cloud-init uses it as a directory name under `/var/lib/cloud/instances`.
const MAX_INSTANCE_ID_LEN: usize = 255;

/// Why a NoCloud seed disk could not be made.
#[derive(Debug, Error)]
pub enum CloudInitError {
    /// The hostname is not a valid RFC 1123 host name.
    #[error("invalid hostname {hostname:?}: {reason}")]
    InvalidHostname {
        /// The rejected hostname.
        hostname: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The instance id cannot be used (cloud-init makes a directory of it).
    #[error("invalid instance id {instance_id:?}: {reason}")]
    InvalidInstanceId {
        /// The rejected instance id.
        instance_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `user-data` or `network-config` is over [`MAX_USER_DATA`].
    #[error("{what} is {size} bytes, over the limit of {max}")]
    TooLarge {
        /// Which file.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Building the ISO image failed.
    #[error("building the cidata image: {0}")]
    Iso(#[from] IsoError),
    /// Writing the image file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The NoCloud data of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloud {
    /// `instance-id`: cloud-init reruns its per-instance modules when this changes.
    pub instance_id: String,
    /// `local-hostname`: an RFC 1123 host name.
    pub hostname: String,
    /// `user-data` text; [`DEFAULT_USER_DATA`] when `None`.
    pub user_data: Option<String>,
    /// `network-config` text (network config version 1 or 2); omitted when `None`.
    pub network_config: Option<String>,
}

impl NoCloud {
    /// The `meta-data` YAML document, values double-quoted and escaped.
    pub fn meta_data(&self) -> Result<String, CloudInitError> {
        validate_instance_id(&self.instance_id)?;
        validate_hostname(&self.hostname)?;
        Ok(format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            yaml_quote(&self.instance_id),
            yaml_quote(&self.hostname)
        ))
    }

    /// Renders the `cidata` ISO image.
    pub fn render_iso(&self) -> Result<Vec<u8>, CloudInitError> {
        let meta_data = self.meta_data()?;
        let user_data = self.user_data.as_deref().unwrap_or(DEFAULT_USER_DATA);
        check_size("user-data", user_data)?;
        let mut iso = IsoBuilder::new(VOLUME_ID)?;
        iso.add_file("meta-data", meta_data.into_bytes())?;
        iso.add_file("user-data", user_data.as_bytes().to_vec())?;
        if let Some(network_config) = &self.network_config {
            check_size("network-config", network_config)?;
            iso.add_file("network-config", network_config.as_bytes().to_vec())?;
        }
        Ok(iso.to_bytes()?)
    }

    /// Renders the image and writes it to `path` atomically and durably.
    pub fn write_iso(&self, path: &Path) -> Result<(), CloudInitError> {
        let bytes = self.render_iso()?;
        write_atomic(path, &bytes)
    }
}

/// Checks that `hostname` is an RFC 1123 host name: dot-separated labels of 1-63 letters,
/// digits and hyphens, not starting or ending with a hyphen, at most 253 characters.
pub fn validate_hostname(hostname: &str) -> Result<(), CloudInitError> {
    let reason = if hostname.is_empty() {
        Some("empty")
    } else if hostname.len() > 253 {
        Some("longer than 253 characters")
    } else {
        hostname.split('.').find_map(|label| {
            if label.is_empty() {
                Some("empty label")
            } else if label.len() > 63 {
                Some("label longer than 63 characters")
            } else if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                Some("only letters, digits, '-' and '.' are allowed")
            } else if label.starts_with('-') || label.ends_with('-') {
                Some("label starts or ends with '-'")
            } else {
                None
            }
        })
    };
    match reason {
        Some(reason) => Err(CloudInitError::InvalidHostname {
            hostname: hostname.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_instance_id(id: &str) -> Result<(), CloudInitError> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id.len() > MAX_INSTANCE_ID_LEN {
        Some("longer than 255 bytes")
    } else if id == "." || id == ".." || id.contains('/') {
        Some("not usable as a directory name")
    } else if id.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CloudInitError::InvalidInstanceId {
            instance_id: id.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_size(what: &'static str, data: &str) -> Result<(), CloudInitError> {
    if data.len() > MAX_USER_DATA {
        return Err(CloudInitError::TooLarge {
            what,
            size: data.len(),
            max: MAX_USER_DATA,
        });
    }
    Ok(())
}

/// A YAML double-quoted scalar. Escapes what YAML 1.1 (PyYAML, which cloud-init uses) would
/// otherwise read differently: quotes, backslashes, control characters, the Unicode line and
/// paragraph separators and the byte order mark.
fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}') => {
                out.push_str(&format!("\\u{:04X}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Distinguishes temporary files of concurrent writers within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one: a
/// temporary file in the same directory, fsynced, renamed over `path`, then the directory
/// fsynced so the rename itself is durable.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CloudInitError> {
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| CloudInitError::Io { op, path, source }
    };
    let file_name = path.file_name().ok_or_else(|| {
        io("write", path)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "path has no file name",
        ))
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        // 0600: user-data often carries credentials; only the runtime (and QEMU, as the same
        // user) needs to read it.
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
        };
        let mut f = match create() {
            // Left by a crashed process that had our pid: it is ours to replace.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&tmp).map_err(io("remove stale", &tmp))?;
                create()
            }
            other => other,
        }
        .map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io("rename to", path))
    })();
    if result.is_err() {
        // Best effort: the error being returned is the one that matters.
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso9660::read_iso;
    use crate::iso9660::tests::isoinfo;
    use std::os::unix::fs::PermissionsExt;

    fn vm() -> NoCloud {
        NoCloud {
            instance_id: "5f0c7a2e-1111-4c4c-9e9e-000000000001".into(),
            hostname: "web-1".into(),
            user_data: None,
            network_config: None,
        }
    }

    #[test]
    fn meta_data_is_quoted_yaml() {
        assert_eq!(
            vm().meta_data().unwrap(),
            "instance-id: \"5f0c7a2e-1111-4c4c-9e9e-000000000001\"\nlocal-hostname: \"web-1\"\n"
        );
        assert_eq!(yaml_quote(r#"a"b\c: #d"#), r#""a\"b\\c: #d""#);
        assert_eq!(
            yaml_quote("x\u{2028}\u{85}\u{7}"),
            r#""x\u2028\u0085\u0007""#
        );
        let odd = NoCloud {
            instance_id: "i-\"quoted\" \\ #not-a-comment: é".into(),
            ..vm()
        };
        assert_eq!(
            odd.meta_data().unwrap(),
            "instance-id: \"i-\\\"quoted\\\" \\\\ #not-a-comment: é\"\nlocal-hostname: \"web-1\"\n"
        );
    }

    #[test]
    fn renders_cidata() {
        let got = read_iso(&vm().render_iso().unwrap()).unwrap();
        assert_eq!(got.volume_id, "cidata");
        let names: Vec<_> = got.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["meta-data", "user-data"]);
        assert_eq!(got.file("user-data"), Some(DEFAULT_USER_DATA.as_bytes()));
        assert_eq!(
            got.file("meta-data"),
            Some(vm().meta_data().unwrap().as_bytes())
        );

        let full = NoCloud {
            user_data: Some("#!/bin/sh\necho hi\n".into()),
            network_config: Some("version: 2\nethernets: {}\n".into()),
            ..vm()
        };
        let got = read_iso(&full.render_iso().unwrap()).unwrap();
        assert_eq!(got.file("user-data"), Some(&b"#!/bin/sh\necho hi\n"[..]));
        assert_eq!(
            got.file("network-config"),
            Some(&b"version: 2\nethernets: {}\n"[..])
        );
        // Deterministic: the same spec renders the same bytes.
        assert_eq!(full.render_iso().unwrap(), full.render_iso().unwrap());
    }

    #[test]
    fn validates() {
        for ok in ["a", "web-1", "Web-1.example.com", "0abc", &"a".repeat(63)] {
            validate_hostname(ok).unwrap();
        }
        let long = ["a".repeat(63).as_str(); 4].join(".") + ".ab";
        for bad in [
            "",
            "-web",
            "web-",
            "a..b",
            "web.",
            "web_1",
            "web 1",
            "wéb",
            &"a".repeat(64),
            &long,
        ] {
            let c = NoCloud {
                hostname: bad.to_owned(),
                ..vm()
            };
            assert!(
                matches!(c.render_iso(), Err(CloudInitError::InvalidHostname { .. })),
                "{bad:?}"
            );
        }
        for bad in ["", ".", "..", "a/b", "a\nb", &"i".repeat(256)] {
            let c = NoCloud {
                instance_id: bad.to_owned(),
                ..vm()
            };
            assert!(
                matches!(
                    c.render_iso(),
                    Err(CloudInitError::InvalidInstanceId { .. })
                ),
                "{bad:?}"
            );
        }
        let big = NoCloud {
            user_data: Some("#".repeat(MAX_USER_DATA + 1)),
            ..vm()
        };
        assert!(matches!(
            big.render_iso(),
            Err(CloudInitError::TooLarge {
                what: "user-data",
                ..
            })
        ));
        let big = NoCloud {
            network_config: Some("#".repeat(MAX_USER_DATA + 1)),
            ..vm()
        };
        assert!(matches!(
            big.render_iso(),
            Err(CloudInitError::TooLarge {
                what: "network-config",
                ..
            })
        ));
    }

    #[test]
    fn write_iso_is_atomic_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cidata.iso");
        std::fs::write(&path, b"old").unwrap();
        vm().write_iso(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vm().render_iso().unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing but the image is left behind.
        let entries: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["cidata.iso"]);
        // A failing write leaves no temporary file and reports the path.
        let missing = dir.path().join("no-such-dir").join("cidata.iso");
        let err = vm().write_iso(&missing).unwrap_err();
        assert!(
            matches!(err, CloudInitError::Io { op: "create", .. }),
            "{err}"
        );
    }

    #[test]
    fn isoinfo_reads_the_seed_disk() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("cidata.iso");
        let ci = NoCloud {
            user_data: Some("#cloud-config\npackages: [htop]\n".into()),
            ..vm()
        };
        ci.write_iso(&iso).unwrap();
        let info = isoinfo(&["-d"], &iso);
        assert!(info.contains("Volume id: cidata\n"), "{info}");
        let names = isoinfo(&["-J", "-f"], &iso);
        assert_eq!(
            names.lines().collect::<Vec<_>>(),
            ["/meta-data", "/user-data"]
        );
        assert_eq!(
            isoinfo(&["-J", "-x", "/user-data"], &iso),
            "#cloud-config\npackages: [htop]\n"
        );
        assert_eq!(
            isoinfo(&["-J", "-x", "/meta-data"], &iso),
            ci.meta_data().unwrap()
        );
    }
}
