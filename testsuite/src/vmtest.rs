//! What the real-VM tests (`tests/qemu_vm.rs`, `tests/guest_agent.rs`) share: a `tugboatd`
//! with the QEMU runtime, the `tugboat` CLI, image build and push, and Ship status reads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{tugboat_cli_bin, wait_until, TugboatOptions};
use crate::kube::Kubectl;
use crate::vmassets;

/// Boot under TCG, an image pull and the first Running.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The ShipClass `tiny` the test Ships use (with hotplug headroom).
pub const SHIP_CLASS: &str = "apiVersion: v1\nkind: ShipClass\nmetadata:\n  name: tiny\nspec:\n  cpu:\n    cores: 1\n    maxCores: 2\n  memory:\n    size: 192Mi\n    maxSize: 512Mi\n";

fn run_tugboat(args: &[&str]) -> std::process::Output {
    let bin = tugboat_cli_bin().unwrap_or_else(|e| panic!("{e}"));
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running tugboat {args:?}: {e}"))
}

/// Runs the `tugboat` CLI; panics with its output unless it succeeds; returns its stdout.
#[track_caller]
pub fn tugboat(args: &[&str]) -> String {
    let out = run_tugboat(args);
    assert!(
        out.status.success(),
        "tugboat {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the `tugboat` CLI, which must fail; returns its stderr.
#[track_caller]
pub fn tugboat_fails(args: &[&str]) -> String {
    let out = run_tugboat(args);
    assert!(
        !out.status.success(),
        "tugboat {args:?} succeeded but should have failed:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tugboat build` of the context `ctx` as `reference` into a store: `store_flag` is
/// `--image-dir` (a client store) or `--data-dir` (a node's cache).
#[track_caller]
pub fn build_image(imagefile: &Path, ctx: &Path, reference: &str, store_flag: &str, store: &Path) {
    tugboat(&[
        "build",
        "-f",
        &imagefile.to_string_lossy(),
        "-t",
        reference,
        &ctx.to_string_lossy(),
        store_flag,
        &store.to_string_lossy(),
    ]);
}

/// `tugboat push` of `reference` from the client store `images` to a plain-HTTP registry.
#[track_caller]
pub fn push_image(reference: &str, images: &Path, registry_host: &str) {
    tugboat(&[
        "push",
        reference,
        "--image-dir",
        &images.to_string_lossy(),
        "--insecure-registry",
        registry_host,
    ]);
}

/// A member with the API, the controllers and the QEMU runtime, quick node heartbeats, and
/// room for every Ship of a test whatever the host has (TCG guests are small).
pub fn node_opts(name: &str, extra: &[&str]) -> TugboatOptions {
    let mut args: Vec<String> = [
        "--runtime",
        "qemu",
        "--node-heartbeat-interval",
        "2",
        "--node-monitor-grace-period",
        "20",
        "--node-cpu",
        "16",
        "--node-memory",
        "64Gi",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    TugboatOptions {
        name: name.into(),
        api: true,
        controllers: true,
        extra_args: args,
        ..TugboatOptions::default()
    }
}

/// The Ship `name` in `default`, as JSON.
pub fn ship(k: &Kubectl, name: &str) -> Value {
    k.json(&["get", "ship", name, "-o", "json"])
        .unwrap_or_else(|e| panic!("get ship {name}: {e}"))
}

/// The value at a JSON pointer, null when absent.
pub fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    v.pointer(path).unwrap_or(&Value::Null)
}

/// Waits until Ship `name` reports `phase`; returns the Ship.
pub fn wait_phase(k: &Kubectl, name: &str, phase: &str) -> Value {
    wait_until(&format!("ship {name} {phase}"), DEADLINE, || {
        let s = ship(k, name);
        if field(&s, "/status/phase") == phase {
            Ok(s)
        } else {
            Err(format!("{}", field(&s, "/status")))
        }
    })
}

/// The serial log through the apiserver and the agent (an error until the VM exists).
pub fn logs(kubeconfig: &Path, name: &str) -> Result<String, String> {
    let bin = tugboat_cli_bin().map_err(|e| e.to_string())?;
    let out = Command::new(&bin)
        .args(["logs", name, "--kubeconfig"])
        .arg(kubeconfig)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Kills the QEMUs of these data dirs when dropped: VMs outlive `tugboatd` by design, and a
/// failed test must not leave them running.
pub struct VmCleanup(pub Vec<PathBuf>);

impl Drop for VmCleanup {
    fn drop(&mut self) {
        for d in &self.0 {
            vmassets::kill_vms_under(d);
        }
    }
}
