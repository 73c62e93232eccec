//! The guest-agent path end to end, with a real guest agent: a guest running Debian's
//! `qemu-ga` (package `qemu-guest-agent`) on the `org.qemu.guest_agent.0` virtio-serial port
//! is built with `tugboat build`, pushed to Debian's `docker-registry` on loopback and booted
//! by a Ship applied with `kubectl`; the QEMU runtime polls the agent and the node agent
//! writes what it answered into `Ship.status.guestOSInfo` and `Ship.status.ipAddresses`,
//! read back with `kubectl get ship -o json`.
//!
//! Every value asserted comes from inside the guest: the OS name and version from its
//! distinctive `/etc/os-release`, the hostname its `/init` set, the kernel release of the
//! kernel it booted, and the address its DHCP client configured (as its console says).

use std::time::{Duration, Instant};

use tugboat_testsuite::harness::wait_until;
use tugboat_testsuite::kube::{wait_api_ready, Kubectl};
use tugboat_testsuite::vmassets::{
    self, Registry, MARKER, QGA_DHCP_PREFIX, QGA_HOSTNAME, QGA_OS_NAME, QGA_OS_VERSION, QGA_STARTED,
};
use tugboat_testsuite::vmtest::{
    build_image, field, logs, node_opts, push_image, ship, tugboat, wait_phase, VmCleanup,
    DEADLINE, SHIP_CLASS,
};
use tugboat_testsuite::TugboatNode;

/// From qemu-ga running in the guest to the status carrying its answers: the runtime polls
/// every 10 s and a poll may land while the guest is still booting.
const STATUS_DEADLINE: Duration = Duration::from_secs(90);

/// Where the guest OS facts live in a Ship's status: the name `ShipStatus::guest_os_info`
/// serializes to (the apiserver keeps no status field its type does not know).
const GUEST_OS_INFO: &str = "guestOSInfo";

/// The IPv4 address the guest's DHCP hook reports configuring (`TUGBOAT-QGA dhcp A/P on IF`).
fn dhcp_address(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        let rest = &l[l.find(QGA_DHCP_PREFIX)? + QGA_DHCP_PREFIX.len()..];
        rest.split_once('/').map(|(a, _)| a.trim().to_string())
    })
}

fn ship_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Ship\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  image: {image}\n  shipClass: tiny\n  runStrategy: Always\n  terminationGracePeriodSeconds: 2\n"
    )
}

#[test]
fn guest_agent_fills_ship_status() {
    let started = Instant::now();
    let release = vmassets::cloud_kernel_release().unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start().unwrap_or_else(|e| panic!("{e}"));
    let images = work.path().join("client-images");
    let reference = format!("{}/tugboat-test/qga:v1", registry.host);
    let ctx = work.path().join("ctx-qga");
    let imagefile = vmassets::guest_agent_build_context(&ctx, "").unwrap_or_else(|e| panic!("{e}"));
    build_image(&imagefile, &ctx, &reference, "--image-dir", &images);
    push_image(&reference, &images, &registry.host);

    let node = TugboatNode::start(node_opts("qga1", &["--insecure-registry", &registry.host]))
        .expect("start tugboatd");
    let _cleanup = VmCleanup(vec![node.data_dir().to_path_buf()]);
    wait_api_ready(&node).unwrap_or_else(|e| panic!("{e}"));
    let k = Kubectl::admin(&node).expect("kubectl");
    let kubeconfig = node.kubeconfig_path();
    k.ok_stdin(&["apply", "-f", "-"], SHIP_CLASS)
        .expect("apply ShipClass");
    // The Ship's name differs from the guest's hostname: the hostname in the status must be
    // the one the guest reports, not one derived from the Ship.
    let name = "agent-probe";
    k.ok_stdin(&["apply", "-f", "-"], &ship_yaml(name, &reference))
        .expect("apply Ship");

    wait_phase(&k, name, "Running");
    let running_at = Instant::now();

    // The guest is up, configured its NIC and started qemu-ga (its console says so).
    let log = wait_until("qemu-ga started in the guest", DEADLINE, || {
        let log = logs(&kubeconfig, name)?;
        if log.contains(QGA_STARTED) {
            Ok(log)
        } else {
            Err(log.lines().rev().take(8).collect::<Vec<_>>().join(" | "))
        }
    });
    assert!(log.contains(MARKER), "guest marker in the log: {log}");
    assert!(
        log.contains("TUGBOAT-QGA port /dev/vport"),
        "the guest found the org.qemu.guest_agent.0 port: {log}"
    );
    assert!(
        !log.contains("TUGBOAT-QGA insmod"),
        "every module loaded: {log}"
    );
    let guest_ip = dhcp_address(&log)
        .unwrap_or_else(|| panic!("the guest configured no address by DHCP: {log}"));
    assert_eq!(
        guest_ip, "10.0.2.15",
        "QEMU user-mode networking leases its first address: {log}"
    );

    // The runtime polls qemu-ga; the node agent writes what it answered into the status.
    let status = wait_until("guest agent facts in Ship.status", STATUS_DEADLINE, || {
        let s = ship(&k, name);
        let status = field(&s, "/status").clone();
        let has_os = field(&status, &format!("/{GUEST_OS_INFO}/name")) == QGA_OS_NAME;
        let has_ip = field(&status, "/ipAddresses")
            .as_array()
            .is_some_and(|ips| ips.iter().any(|ip| ip == guest_ip.as_str()));
        if has_os && has_ip {
            Ok(status)
        } else {
            let tail = logs(&kubeconfig, name)
                .map(|l| l.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
                .unwrap_or_else(|e| e);
            Err(format!("status {status}; console tail: {tail}"))
        }
    });
    eprintln!(
        "guest agent facts in the status {:?} after Running ({:?} since the test began): {status}",
        running_at.elapsed(),
        started.elapsed()
    );

    let os = field(&status, &format!("/{GUEST_OS_INFO}"));
    assert_eq!(field(os, "/name"), QGA_OS_NAME, "{status}");
    assert_eq!(field(os, "/version"), QGA_OS_VERSION, "{status}");
    assert_eq!(field(os, "/kernelRelease"), release.as_str(), "{status}");
    assert_eq!(field(os, "/hostname"), QGA_HOSTNAME, "{status}");

    let ips: Vec<&str> = field(&status, "/ipAddresses")
        .as_array()
        .unwrap_or_else(|| panic!("ipAddresses is a list: {status}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("address {v}: {status}"))
        })
        .collect();
    assert!(ips.contains(&guest_ip.as_str()), "{status}");
    // Loopback and link-local addresses are not the guest's addresses to the outside.
    for ip in &ips {
        assert!(
            *ip != "127.0.0.1" && *ip != "::1" && !ip.starts_with("fe80"),
            "{ip} in {status}"
        );
    }
    assert_eq!(field(&status, "/phase"), "Running", "{status}");
    // The table's IP column shows the primary address: the guest's IPv4 one.
    let wide = k
        .ok(&["get", "ship", name, "-o", "wide", "--no-headers"])
        .expect("get ship -o wide");
    assert!(
        wide.split_whitespace().any(|c| c == guest_ip),
        "IP column of {wide:?} ({status})"
    );

    // Stopped, the VM has no addresses and no guest facts any more.
    let kc = kubeconfig.to_string_lossy().into_owned();
    tugboat(&["stop", name, "--kubeconfig", &kc]);
    wait_phase(&k, name, "Stopped");
    wait_until(
        "ipAddresses and guestOSInfo cleared after stop",
        DEADLINE,
        || {
            let s = ship(&k, name);
            let ips = field(&s, "/status/ipAddresses");
            let os = field(&s, &format!("/status/{GUEST_OS_INFO}"));
            if ips.as_array().is_none_or(|a| a.is_empty()) && os.is_null() {
                Ok(())
            } else {
                Err(format!("{}", field(&s, "/status")))
            }
        },
    );

    k.ok(&["delete", "ship", name, "--wait=true", "--timeout=90s"])
        .expect("delete ship");
    eprintln!("guest agent test took {:?}", started.elapsed());
}
