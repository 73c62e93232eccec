//! Real VMs under QEMU (TCG on this machine), end to end with the real clients:
//!
//! - a guest image is built with `tugboat build` from Debian's cloud kernel and a busybox
//!   initramfs, pushed with `tugboat push` to Debian's `docker-registry` on loopback, and a
//!   Ship applied with `kubectl` boots it: the guest's marker appears in the serial log
//!   (`tugboat logs`) and the Ship is Running; its cloud-init ISO reads back;
//! - `tugboatd` restarted while the VM runs: same QEMU pid, re-adopted, still Running;
//! - `tugboat stop|start|restart`; a QEMU killed with SIGKILL under RerunOnFailure and a guest
//!   that powers itself off under Always are restarted; Halted keeps it off; delete removes
//!   the process, sockets, overlay and ISO;
//! - air gaps: mirrors from the cluster's `tugboat-system/registries` ConfigMap (a bad one is
//!   refused); `tugboat image save` on one machine, then with the registry gone `tugboat image
//!   load` into a node's data dir and `--all-nodes` through the apiserver; Ships boot from both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tugboat_testsuite::harness::{tugboat_cli_bin, wait_until};
use tugboat_testsuite::kube::{wait_api_ready, Kubectl};
use tugboat_testsuite::vmassets::{self, Registry, MARKER};
use tugboat_testsuite::vmtest::{
    build_image, field, logs, node_opts, push_image, ship, tugboat, tugboat_fails, wait_phase,
    VmCleanup, DEADLINE, SHIP_CLASS,
};
use tugboat_testsuite::TugboatNode;

fn ship_dir(node: &TugboatNode, uid: &str) -> PathBuf {
    node.data_dir().join("ships").join(uid)
}

fn qemu_pid(node: &TugboatNode, uid: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(ship_dir(node, uid).join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn marker_count(log: &str) -> usize {
    log.lines().filter(|l| l.contains(MARKER)).count()
}

fn wait_markers(kubeconfig: &Path, name: &str, at_least: usize) -> String {
    wait_until(
        &format!("{at_least} guest marker(s) of {name}"),
        DEADLINE,
        || {
            let log = logs(kubeconfig, name)?;
            if marker_count(&log) >= at_least {
                Ok(log)
            } else {
                Err(log.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
            }
        },
    )
}

fn ship_yaml(name: &str, image: &str, strategy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Ship\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  image: {image}\n  shipClass: tiny\n  runStrategy: {strategy}\n  terminationGracePeriodSeconds: 2\n  cloudInit:\n    userData: |\n      #cloud-config\n      hostname: {name}\n"
    )
}

/// One `tugboat console` session with piped input: sends `line`, returns what came back.
fn console_session(bin: &Path, kubeconfig: &str, ship: &str, line: &str, timeout: &str) -> String {
    let mut child = Command::new(bin)
        .args([
            "console",
            ship,
            "--timeout",
            timeout,
            "--kubeconfig",
            kubeconfig,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tugboat console");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        let _ = stdin.write_all(format!("{line}\n").as_bytes());
    }
    let out = child.wait_with_output().expect("tugboat console");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn real_vm_from_registry_lifecycle_and_readoption() {
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start().unwrap_or_else(|e| panic!("{e}"));
    let images = work.path().join("client-images");
    let reference = format!("{}/tugboat-test/marker:v1", registry.host);
    let poweroff_ref = format!("{}/tugboat-test/poweroff:v1", registry.host);
    let panic_ref = format!("{}/tugboat-test/panic:v1", registry.host);
    for (dir, extra, r) in [
        ("ctx", "", &reference),
        ("ctx-poweroff", "tugboat_test=poweroff", &poweroff_ref),
        ("ctx-panic", "tugboat_test=panic", &panic_ref),
    ] {
        let ctx = work.path().join(dir);
        let imagefile = vmassets::build_context(&ctx, extra).unwrap_or_else(|e| panic!("{e}"));
        build_image(&imagefile, &ctx, r, "--image-dir", &images);
        push_image(r, &images, &registry.host);
    }

    let mut node = TugboatNode::start(node_opts("vm1", &["--insecure-registry", &registry.host]))
        .expect("start tugboatd");
    let _cleanup = VmCleanup(vec![node.data_dir().to_path_buf()]);
    wait_api_ready(&node).unwrap_or_else(|e| panic!("{e}"));
    let k = Kubectl::admin(&node).expect("kubectl");
    let kubeconfig = node.kubeconfig_path();
    let kc = kubeconfig.to_string_lossy().into_owned();
    k.ok_stdin(&["apply", "-f", "-"], SHIP_CLASS)
        .expect("apply ShipClass");
    k.ok_stdin(
        &["apply", "-f", "-"],
        &ship_yaml("web", &reference, "Always"),
    )
    .expect("apply Ship");

    // Boots from the registry image; the marker shows in the serial log.
    let s = wait_phase(&k, "web", "Running");
    let uid = field(&s, "/metadata/uid")
        .as_str()
        .expect("uid")
        .to_string();
    let log = wait_markers(&kubeconfig, "web", 1);
    assert!(
        log.contains("console=ttyS0"),
        "kernel cmdline in log: {log}"
    );
    let dir = ship_dir(&node, &uid);
    let pid = qemu_pid(&node, &uid).expect("qemu pid while Running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("qemu cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("-nodefaults"), "{cmdline}");
    // The accelerator the probe chose is reported on the Node and used on the command line
    // (TCG on this machine, whose /dev/kvm opens but crashes real guests).
    let node_json = k.json(&["get", "node", "vm1", "-o", "json"]).expect("node");
    let kvm = field(&node_json, "/status/conditions")
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "KVMAvailable"))
        .cloned()
        .unwrap_or_else(|| panic!("no KVMAvailable condition: {node_json}"));
    let accel = if kvm["status"] == "True" {
        "kvm"
    } else {
        "tcg"
    };
    assert!(
        cmdline.contains(&format!("accel={accel}")),
        "{kvm} vs {cmdline}"
    );
    assert!(cmdline.contains("maxcpus=2"), "hotplug headroom: {cmdline}");
    assert!(
        cmdline.contains("maxmem=512M"),
        "memory headroom: {cmdline}"
    );

    // `tugboat console`: bytes typed into the attached console reach the guest's shell loop,
    // its answer comes back (apiserver → agent → QEMU's serial socket).
    let bin = tugboat_cli_bin().unwrap_or_else(|e| panic!("{e}"));
    let echo = wait_until("console echo from the guest", DEADLINE, || {
        let mut child = Command::new(&bin)
            .args(["console", "web", "--timeout", "5s", "--kubeconfig", &kc])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            stdin
                .write_all(b"hello-from-console\n")
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("GUEST-ECHO:hello-from-console") {
            Ok(text)
        } else {
            Err(format!(
                "{}: stdout {text:?} stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    assert!(echo.contains("GUEST-ECHO:hello-from-console"));
    // The serial log keeps what the console showed.
    wait_until("echo in the serial log", DEADLINE, || {
        let log = logs(&kubeconfig, "web")?;
        log.contains("GUEST-ECHO:hello-from-console")
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });

    // Pause: the vCPUs stop over QMP, so the guest echoes nothing; unpaused, it answers again.
    tugboat(&["pause", "web", "--kubeconfig", &kc]);
    let paused = wait_until("Paused condition", DEADLINE, || {
        let s = ship(&k, "web");
        let paused = field(&s, "/status/conditions")
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Paused" && c["status"] == "True");
        if paused && field(&s, "/status/reason") == "Paused" {
            Ok(s)
        } else {
            Err(format!("{}", field(&s, "/status")))
        }
    });
    assert_eq!(field(&paused, "/status/phase"), "Running");
    let silent = console_session(&bin, &kc, "web", "while-paused", "3s");
    assert!(
        !silent.contains("GUEST-ECHO:while-paused"),
        "a paused guest echoed: {silent}"
    );
    tugboat(&["unpause", "web", "--kubeconfig", &kc]);
    wait_until("Paused condition gone", DEADLINE, || {
        let s = ship(&k, "web");
        let paused = field(&s, "/status/conditions")
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Paused");
        if !paused && field(&s, "/status/reason").is_null() {
            Ok(())
        } else {
            Err(format!("{}", field(&s, "/status")))
        }
    });
    wait_until("console echo after unpause", DEADLINE, || {
        let out = console_session(&bin, &kc, "web", "after-unpause", "5s");
        out.contains("GUEST-ECHO:after-unpause")
            .then_some(())
            .ok_or(out)
    });
    assert_eq!(
        qemu_pid(&node, &uid),
        Some(pid),
        "pause must not restart QEMU"
    );

    // The root disk is a linked clone: a qcow2 overlay whose backing file is the cached image.
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(dir.join("root.qcow2"))
        .output()
        .expect("qemu-img info");
    let info: Value = serde_json::from_slice(&info.stdout).expect("qemu-img json");
    let backing = field(&info, "/backing-filename").as_str().unwrap_or("");
    assert!(
        backing.starts_with(
            &node
                .data_dir()
                .join("images")
                .to_string_lossy()
                .into_owned()
        ),
        "overlay backed by the node cache: {info}"
    );

    // cloud-init ISO: our reader and isoinfo both see the NoCloud files.
    let iso = std::fs::read(dir.join("cidata.iso")).expect("cidata.iso");
    let contents = tugboat_qemu::iso9660::read_iso(&iso).expect("read ISO");
    let names: Vec<String> = contents.files.iter().map(|f| f.name.clone()).collect();
    assert!(names.contains(&"user-data".to_string()), "{names:?}");
    assert!(names.contains(&"meta-data".to_string()), "{names:?}");
    let iso_ud = Command::new("isoinfo")
        .args(["-J", "-x", "/user-data", "-i"])
        .arg(dir.join("cidata.iso"))
        .output()
        .expect("isoinfo (Debian genisoimage) must be installed");
    assert!(
        String::from_utf8_lossy(&iso_ud.stdout).contains("hostname: web"),
        "user-data through isoinfo"
    );

    // The Node reports the image it caches.
    wait_until("image in Node.status.images", DEADLINE, || {
        let n = k
            .json(&["get", "node", "vm1", "-o", "json"])
            .map_err(|e| e.to_string())?;
        let images = field(&n, "/status/images").to_string();
        images
            .contains("tugboat-test/marker")
            .then_some(())
            .ok_or(images)
    });

    // tugboatd restarted (and even SIGKILLed) while the VM runs: same QEMU, re-adopted.
    node.kill9();
    assert_eq!(qemu_pid(&node, &uid), Some(pid), "VM survives tugboatd");
    node.restart().expect("restart tugboatd");
    wait_api_ready(&node).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(3));
    let s = wait_phase(&k, "web", "Running");
    assert_eq!(
        qemu_pid(&node, &uid),
        Some(pid),
        "re-adopted, not restarted"
    );
    assert_eq!(field(&s, "/status/restartCount"), 0, "{s}");

    // tugboat stop: Halted, the process is gone and stays gone; the disk stays.
    assert!(tugboat(&["stop", "web", "--kubeconfig", &kc]).contains("web"));
    wait_phase(&k, "web", "Stopped");
    wait_until("qemu gone after stop", DEADLINE, || {
        qemu_pid(&node, &uid).map_or(Ok(()), |p| Err(format!("pid {p}")))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(qemu_pid(&node, &uid), None, "Halted keeps it off");
    assert!(dir.join("root.qcow2").exists(), "stop keeps the disk");

    // tugboat start: a new process boots again.
    tugboat(&["start", "web", "--kubeconfig", &kc]);
    wait_phase(&k, "web", "Running");
    wait_markers(&kubeconfig, "web", 2);
    let pid2 = qemu_pid(&node, &uid).expect("pid after start");
    assert_ne!(pid2, pid);

    // tugboat restart: another new process.
    tugboat(&["restart", "web", "--kubeconfig", &kc]);
    wait_until("new qemu after restart", DEADLINE, || {
        match qemu_pid(&node, &uid) {
            Some(p) if p != pid2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    wait_markers(&kubeconfig, "web", 3);

    // RerunOnFailure: QEMU killed outright is a failure, and the VM comes back.
    k.ok(&[
        "patch",
        "ship",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"runStrategy":"RerunOnFailure"}}"#,
    ])
    .expect("patch runStrategy");
    let pid3 = qemu_pid(&node, &uid).expect("pid before kill");
    Command::new("kill")
        .args(["-9", &pid3.to_string()])
        .status()
        .expect("kill qemu");
    wait_until(
        "qemu restarted after SIGKILL",
        DEADLINE,
        || match qemu_pid(&node, &uid) {
            Some(p) if p != pid3 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let s = wait_phase(&k, "web", "Running");
    assert!(
        field(&s, "/status/restartCount").as_i64().unwrap_or(0) >= 1,
        "{s}"
    );

    // Always: a guest that powers itself off is booted again.
    k.ok_stdin(
        &["apply", "-f", "-"],
        &ship_yaml("bouncer", &poweroff_ref, "Always"),
    )
    .expect("apply bouncer");
    wait_markers(&kubeconfig, "bouncer", 2);
    let b = ship(&k, "bouncer");
    assert!(
        field(&b, "/status/restartCount").as_i64().unwrap_or(0) >= 1,
        "{b}"
    );
    // Halted: it stays off.
    k.ok(&[
        "patch",
        "ship",
        "bouncer",
        "--type=merge",
        "-p",
        r#"{"spec":{"runStrategy":"Halted"}}"#,
    ])
    .expect("halt bouncer");
    wait_phase(&k, "bouncer", "Stopped");
    let b_uid = field(&ship(&k, "bouncer"), "/metadata/uid")
        .as_str()
        .unwrap_or_default()
        .to_string();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(qemu_pid(&node, &b_uid), None, "Halted stays off");

    // RerunOnFailure: a guest kernel panic (reported by pvpanic, QEMU exits) is a failure and
    // the VM is booted again in a new QEMU (a reboot inside the old one would keep its pid).
    k.ok_stdin(
        &["apply", "-f", "-"],
        &ship_yaml("crasher", &panic_ref, "RerunOnFailure"),
    )
    .expect("apply crasher");
    let c = wait_phase(&k, "crasher", "Running");
    let c_uid = field(&c, "/metadata/uid")
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait_markers(&kubeconfig, "crasher", 1);
    let first_pid = qemu_pid(&node, &c_uid);
    let log = wait_markers(&kubeconfig, "crasher", 2);
    assert!(log.contains("Kernel panic"), "the guest panicked: {log}");
    let second_pid = qemu_pid(&node, &c_uid);
    assert!(
        second_pid.is_some() && second_pid != first_pid,
        "a new QEMU after the panic: {first_pid:?} -> {second_pid:?}"
    );
    k.ok(&["delete", "ship", "crasher", "--wait=true", "--timeout=90s"])
        .expect("delete crasher");

    // Delete: process, sockets, overlay and ISO are gone.
    k.ok(&["delete", "ship", "web", "--wait=true", "--timeout=90s"])
        .expect("delete ship");
    assert_eq!(qemu_pid(&node, &uid), None);
    assert!(!dir.exists(), "ship dir removed: {}", dir.display());
    k.ok(&["delete", "ship", "bouncer", "--wait=true", "--timeout=90s"])
        .expect("delete bouncer");
    assert!(!ship_dir(&node, &b_uid).exists());
}

fn registries_config_map(yaml_body: &str) -> String {
    let indented: String = yaml_body.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: registries\n  namespace: tugboat-system\ndata:\n  registries.yaml: |\n{indented}"
    )
}

fn node_image_names(k: &Kubectl, node: &str) -> Vec<String> {
    let n = k
        .json(&["get", "node", node])
        .unwrap_or_else(|e| panic!("get node {node}: {e}"));
    field(&n, "/status/images")
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

/// Air-gapped sites: mirrors configured once for the cluster (ConfigMap
/// `tugboat-system/registries`), `image save` on a connected machine, then with no registry
/// at all `image load --data-dir` into one node's cache and `image load --all-nodes` through
/// the apiserver into every node's; Ships boot from what was loaded.
#[test]
fn air_gapped_save_and_load() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start().unwrap_or_else(|e| panic!("{e}"));
    let images = work.path().join("builder-images");
    let reference = format!("{}/tugboat-test/airgap:v1", registry.host);
    let ctx = work.path().join("ctx");
    let imagefile = vmassets::build_context(&ctx, "").unwrap_or_else(|e| panic!("{e}"));
    build_image(&imagefile, &ctx, &reference, "--image-dir", &images);
    // Pushed and pulled once on a connected machine, then saved to a file.
    push_image(&reference, &images, &registry.host);
    let connected = work.path().join("connected-images");
    let connected_s = connected.to_string_lossy().into_owned();
    tugboat(&[
        "pull",
        &reference,
        "--image-dir",
        &connected_s,
        "--insecure-registry",
        &registry.host,
    ]);
    let archive = work.path().join("airgap.tar");
    tugboat(&[
        "image",
        "save",
        &reference,
        "-o",
        &archive.to_string_lossy(),
        "--image-dir",
        &connected_s,
    ]);
    // A second name, only ever loaded through the apiserver.
    let cluster_ref = format!("{}/tugboat-test/airgap:cluster", registry.host);
    tugboat(&[
        "image",
        "tag",
        &reference,
        &cluster_ref,
        "--image-dir",
        &connected_s,
    ]);
    let cluster_archive = work.path().join("cluster.tar");
    tugboat(&[
        "image",
        "save",
        &cluster_ref,
        "-o",
        &cluster_archive.to_string_lossy(),
        "--image-dir",
        &connected_s,
    ]);

    // The node has no registry flags: the cluster's settings are all it knows of mirrors.
    let node = TugboatNode::start(node_opts("edge", &[])).expect("start tugboatd");
    let _cleanup = VmCleanup(vec![node.data_dir().to_path_buf()]);
    wait_api_ready(&node).unwrap_or_else(|e| panic!("{e}"));
    let k = Kubectl::admin(&node).expect("kubectl");
    k.ok_stdin(&["apply", "-f", "-"], SHIP_CLASS)
        .expect("apply ShipClass");
    let bad = registries_config_map(
        "mirrors:\n  mirror.tugboat.invalid:\n    endpoint: [\"ftp://nowhere\"]",
    );
    let refused = k
        .fail_stdin(&["apply", "-f", "-"], &bad)
        .expect("a bad registries document is refused");
    assert!(
        refused
            .stderr
            .contains("data[registries.yaml].mirrors[mirror.tugboat.invalid].endpoint[0]"),
        "{}",
        refused.stderr
    );
    let good = registries_config_map(&format!(
        "mirrors:\n  mirror.tugboat.invalid:\n    endpoint: [\"http://{}\"]",
        registry.host
    ));
    k.ok_stdin(&["apply", "-f", "-"], &good)
        .expect("apply registries");
    // `mirror.tugboat.invalid` does not resolve: only the mirror can serve this image.
    let mirrored_ref = "mirror.tugboat.invalid/tugboat-test/airgap:v1";
    k.ok_stdin(
        &["apply", "-f", "-"],
        &ship_yaml("mirrored", mirrored_ref, "Always"),
    )
    .expect("apply mirrored Ship");
    wait_phase(&k, "mirrored", "Running");
    wait_until(
        "Node.status.images lists the mirrored image",
        DEADLINE,
        || {
            let names = node_image_names(&k, "edge");
            if names
                .iter()
                .any(|n| n.contains("mirror.tugboat.invalid/tugboat-test/airgap"))
            {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        },
    );
    k.ok(&["delete", "ship", "mirrored", "--wait=true", "--timeout=90s"])
        .expect("delete mirrored ship");

    // The site has no registry at all from here on.
    registry.stop();
    tugboat(&[
        "image",
        "load",
        &archive.to_string_lossy(),
        "--data-dir",
        &node.data_dir().to_string_lossy(),
    ]);
    let listed = tugboat(&[
        "image",
        "ls",
        "--data-dir",
        &node.data_dir().to_string_lossy(),
    ]);
    assert!(listed.contains("tugboat-test/airgap"), "{listed}");
    k.ok_stdin(
        &["apply", "-f", "-"],
        &ship_yaml("offline", &reference, "Always"),
    )
    .expect("apply Ship");
    wait_phase(&k, "offline", "Running");
    wait_markers(&node.kubeconfig_path(), "offline", 1);
    k.ok(&["delete", "ship", "offline", "--wait=true", "--timeout=90s"])
        .expect("delete ship");

    // Into the whole cluster through the apiserver and the agents.
    let kubeconfig = node.kubeconfig_path().to_string_lossy().into_owned();
    let out = tugboat(&[
        "image",
        "load",
        &cluster_archive.to_string_lossy(),
        "--all-nodes",
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(
        out.contains(&format!("edge: Loaded: {cluster_ref}")),
        "{out}"
    );
    let listed = tugboat(&[
        "image",
        "ls",
        "--data-dir",
        &node.data_dir().to_string_lossy(),
    ]);
    assert!(
        listed.contains("airgap") && listed.contains("cluster"),
        "{listed}"
    );
    wait_until(
        "Node.status.images lists the uploaded image",
        DEADLINE,
        || {
            let names = node_image_names(&k, "edge");
            if names.iter().any(|n| n == &cluster_ref) {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        },
    );
    k.ok_stdin(
        &["apply", "-f", "-"],
        &ship_yaml("uploaded", &cluster_ref, "Always"),
    )
    .expect("apply uploaded Ship");
    wait_phase(&k, "uploaded", "Running");
    k.ok(&["delete", "ship", "uploaded", "--wait=true", "--timeout=90s"])
        .expect("delete uploaded ship");

    // Uploads that cannot work say why and load nothing.
    let garbage = work.path().join("garbage.tar");
    std::fs::write(&garbage, vec![0x42u8; 4096]).expect("write garbage");
    let err = tugboat_fails(&[
        "image",
        "load",
        &garbage.to_string_lossy(),
        "--node",
        "edge",
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(
        err.contains("edge:") && err.contains("image archive"),
        "{err}"
    );
    let err = tugboat_fails(&[
        "image",
        "load",
        &cluster_archive.to_string_lossy(),
        "--node",
        "nosuch",
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(err.contains("nosuch") && err.contains("not found"), "{err}");
}

/// A ShipClass asking for `machineType: microvm`: on a node with a working KVM the guest boots
/// on QEMU's microvm machine (virtio-mmio, no PCI); on a TCG node (this one) the runtime refuses
/// it, because Linux guests there hang calibrating their clock in about one boot in three, and
/// the Ship's status says so. The image is built straight into the node's cache, no registry.
#[test]
fn microvm_ship_boots_or_is_refused_without_kvm() {
    let work = tempfile::tempdir().expect("tempdir");
    let node = TugboatNode::start(node_opts("micro", &[])).expect("start tugboatd");
    let _cleanup = VmCleanup(vec![node.data_dir().to_path_buf()]);
    let reference = "local.tugboat.invalid/tugboat-test/micro:v1";
    let ctx = work.path().join("ctx");
    let imagefile = vmassets::build_context(&ctx, "").unwrap_or_else(|e| panic!("{e}"));
    build_image(&imagefile, &ctx, reference, "--data-dir", node.data_dir());
    wait_api_ready(&node).unwrap_or_else(|e| panic!("{e}"));
    let k = Kubectl::admin(&node).expect("kubectl");
    k.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ShipClass\nmetadata:\n  name: tiny\nspec:\n  machineType: microvm\n  cpu:\n    cores: 1\n  memory:\n    size: 192Mi\n",
    )
    .expect("apply ShipClass");
    let kvm = wait_until("the node's KVMAvailable condition", DEADLINE, || {
        let n = k
            .json(&["get", "node", "micro"])
            .map_err(|e| e.to_string())?;
        field(&n, "/status/conditions")
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "KVMAvailable")
            .and_then(|c| c["status"].as_str().map(|s| s == "True"))
            .ok_or_else(|| format!("{}", field(&n, "/status/conditions")))
    });
    k.ok_stdin(
        &["apply", "-f", "-"],
        &ship_yaml("mvm", reference, "Always"),
    )
    .expect("apply Ship");
    if !kvm {
        let s = wait_until("the refusal in the Ship's status", DEADLINE, || {
            let s = ship(&k, "mvm");
            if field(&s, "/status/reason") == "StartFailed" {
                Ok(s)
            } else {
                Err(format!("{}", field(&s, "/status")))
            }
        });
        let message = field(&s, "/status/message").as_str().unwrap_or("");
        assert!(message.contains("microvm needs KVM"), "{message}");
        assert_ne!(field(&s, "/status/phase"), "Running");
        let uid = field(&s, "/metadata/uid")
            .as_str()
            .expect("uid")
            .to_string();
        assert!(qemu_pid(&node, &uid).is_none(), "no QEMU may run");
        let described = k.ok(&["describe", "ship", "mvm"]).expect("describe");
        assert!(described.contains("microvm needs KVM"), "{described}");
    } else {
        let s = wait_phase(&k, "mvm", "Running");
        let uid = field(&s, "/metadata/uid")
            .as_str()
            .expect("uid")
            .to_string();
        let pid = qemu_pid(&node, &uid).expect("QEMU runs");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("QEMU command line");
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(
            args.iter().any(|a| a.starts_with("microvm,")),
            "not a microvm: {args:?}"
        );
        wait_markers(&node.kubeconfig_path(), "mvm", 1);
    }
    k.ok(&["delete", "ship", "mvm", "--wait=true", "--timeout=90s"])
        .expect("delete ship");
}
