//! QEMU processes: started daemonized with a pidfile, found again by that pidfile.
//!
//! A VM's QEMU is not a child of `tugboatd` (QEMU forks and calls `setsid` for `-daemonize`),
//! so restarting or killing `tugboatd` never stops a VM. A pidfile alone can lie after a host
//! reboot (the pid may belong to another process), so a pid counts only if its command line
//! names the VM's own QMP socket.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Errors starting or signalling QEMU.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The QEMU binary could not be run.
    #[error("running {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// QEMU refused to start the VM.
    #[error("qemu exited with {status}: {stderr}")]
    Failed {
        /// Exit status.
        status: String,
        /// What QEMU printed.
        stderr: String,
    },
    /// QEMU did not finish daemonizing in time.
    #[error("qemu did not start within {0:?}")]
    Timeout(Duration),
    /// The pidfile is missing or unreadable after start.
    #[error("pidfile {path}: {message}")]
    Pidfile {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Starts QEMU daemonized; returns its pid once it has initialized (devices created, sockets
/// listening) and written the pidfile.
pub async fn launch(
    binary: &Path,
    args: &[OsString],
    pidfile: &Path,
    timeout: Duration,
) -> Result<u32, ProcessError> {
    let _ = std::fs::remove_file(pidfile);
    let child = tokio::process::Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    // The foreground process exits when the daemon finished initializing; the daemon keeps the
    // stderr pipe open until then, so this also collects every startup error message.
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| ProcessError::Timeout(timeout))?
        .map_err(|source| ProcessError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(ProcessError::Failed {
            status: out.status.to_string(),
            stderr,
        });
    }
    if !stderr.is_empty() {
        tracing::debug!(%stderr, "qemu start-up messages");
    }
    read_pidfile(pidfile).ok_or_else(|| ProcessError::Pidfile {
        path: pidfile.to_path_buf(),
        message: "missing or not a pid after qemu started".into(),
    })
}

/// The pid in `pidfile`, if it holds one.
pub fn read_pidfile(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile)
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 1)
}

/// Whether `pid` is a live (not zombie) QEMU whose command line contains `marker` (a path
/// unique to the VM).
pub fn is_vm_process(pid: u32, marker: &Path) -> bool {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return false,
    };
    // The state follows the parenthesized command name, which may itself contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let cmdline = match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => c,
        Err(_) => return false,
    };
    let needle = marker.to_string_lossy();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| String::from_utf8_lossy(arg).contains(needle.as_ref()))
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid was checked to be ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Waits until the VM process is gone, up to `timeout`; true if it is gone.
pub async fn wait_gone(pid: u32, marker: &Path, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !is_vm_process(pid, marker) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resident set size of `pid` in bytes (from `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_matches_only_its_marker() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        assert!(is_vm_process(me, &exe));
        assert!(!is_vm_process(me, Path::new("/no/such/vm/qmp.sock")));
        assert!(!is_vm_process(u32::MAX - 1, &exe));
    }

    #[test]
    fn pidfiles_must_hold_a_pid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qemu.pid");
        assert_eq!(read_pidfile(&p), None);
        std::fs::write(&p, "4242\n").unwrap();
        assert_eq!(read_pidfile(&p), Some(4242));
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(read_pidfile(&p), None);
        std::fs::write(&p, "1").unwrap();
        assert_eq!(read_pidfile(&p), None);
    }
}
