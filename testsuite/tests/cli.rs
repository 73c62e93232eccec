//! `tugboatd run` refuses insecure or malformed listener flags before it
//! touches the data dir.

use std::process::Command;
use tugboat_testsuite::tugboatd_bin;

/// Runs `tugboatd run` with loopback defaults, each overridable by `overrides`.
fn run_with(overrides: &[(&str, &str)]) -> (bool, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut flags = vec![
        ("--peer-listen", "127.0.0.1:0"),
        ("--etcd-listen", "127.0.0.1:0"),
        ("--metrics-listen", "off"),
    ];
    for (flag, value) in overrides {
        flags.retain(|(f, _)| f != flag);
        flags.push((flag, value));
    }
    let mut cmd = Command::new(tugboatd_bin().expect("tugboatd binary"));
    cmd.arg("run").arg("--data-dir").arg(&data);
    for (flag, value) in flags {
        cmd.args([flag, value]);
    }
    let out = cmd.output().expect("run tugboatd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    )
}

#[test]
fn plaintext_listener_only_on_loopback() {
    let (ok, stderr, dir) = run_with(&[("--etcd-listen-plain", "0.0.0.0:23999")]);
    assert!(!ok, "plaintext on 0.0.0.0 must be refused");
    assert!(
        stderr.contains("only loopback"),
        "clear error expected, got: {stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing was created for a refused start"
    );
}

#[test]
fn metrics_listener_only_on_loopback() {
    let (ok, stderr, _dir) = run_with(&[("--metrics-listen", "192.0.2.1:2381")]);
    assert!(!ok);
    assert!(
        stderr.contains("--metrics-listen"),
        "error names the flag: {stderr}"
    );
}

#[test]
fn malformed_addresses_are_named() {
    let (ok, stderr, _dir) = run_with(&[("--etcd-listen", "not-an-address")]);
    assert!(!ok);
    assert!(
        stderr.contains("--etcd-listen") && stderr.contains("not-an-address"),
        "got: {stderr}"
    );
}
