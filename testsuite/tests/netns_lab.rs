//! Self-test of the network-namespace lab: connectivity, pair cuts, isolation, client
//! disconnects, unplugging, healing and cleanup, checked with real TCP connections.
//!
//! The machine has no `ping`/`nc`, so reachability is probed with TCP: every node runs a
//! listener bound inside its namespace, and connections are made either from a thread
//! that entered a namespace (`NetLab::in_ns`) or by re-running this test binary inside
//! a namespace through `NetLab::command` with `PROBE_ENV` set (see `probe_child`).

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use tugboat_testsuite::netns::NetLab;

/// When set to `ip:port`, `probe_child` connects there and exits 0 (reached) or 3 (not).
const PROBE_ENV: &str = "TGB_NETLAB_PROBE";
/// Connect timeout for one probe; blackholed sends fail at once, dropped replies time out.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Not a real test: the probe entry point used when this binary runs inside a namespace
/// (ignored, so a normal run does not count it as a passing test).
#[test]
#[ignore = "entry point of the namespace probe, run by the lab tests themselves"]
fn probe_child() {
    let target = std::env::var(PROBE_ENV)
        .unwrap_or_else(|_| panic!("{PROBE_ENV} is not set: the lab tests run this probe"));
    let addr: SocketAddr = target.parse().expect("probe target must be ip:port");
    let reached = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok();
    std::process::exit(if reached { 0 } else { 3 });
}

/// Binds a listener on `addr:0` in `ns` (None = root namespace) that accepts and drops forever.
fn listen(lab: &NetLab, ns: Option<usize>, addr: IpAddr) -> SocketAddr {
    let bind = move || TcpListener::bind((addr, 0));
    let listener = match ns {
        Some(i) => lab.in_ns(i, bind).expect("enter namespace"),
        None => bind(),
    }
    .unwrap_or_else(|e| panic!("bind {addr} in {ns:?}: {e}"));
    let local = listener.local_addr().expect("local_addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    local
}

/// Whether a TCP connection from `from` (None = the test process) to `to` succeeds.
fn reach(lab: &NetLab, from: Option<usize>, to: SocketAddr) -> bool {
    let connect = move || TcpStream::connect_timeout(&to, PROBE_TIMEOUT).is_ok();
    match from {
        Some(i) => lab.in_ns(i, connect).expect("enter namespace"),
        None => connect(),
    }
}

/// Like `reach` from node `from`, but through a child process started with `NetLab::command`.
fn reach_via_command(lab: &NetLab, from: usize, to: SocketAddr) -> bool {
    let exe = std::env::current_exe().expect("current_exe");
    let out = lab
        .command(from, exe)
        .args([
            "probe_child",
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(PROBE_ENV, to.to_string())
        .output()
        .expect("spawn probe child");
    match out.status.code() {
        Some(0) => true,
        Some(3) => false,
        _ => panic!(
            "probe child failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Asserts the full reachability matrix: `expected(from, to)` for node pairs, and root -> node.
fn assert_matrix(
    lab: &NetLab,
    ports: &[SocketAddr],
    stage: &str,
    node_to_node: impl Fn(usize, usize) -> bool,
    root_to_node: impl Fn(usize) -> bool,
) {
    let mut wrong = Vec::new();
    for (to, &port) in ports.iter().enumerate() {
        for from in (0..lab.len()).filter(|&from| from != to) {
            let want = node_to_node(from, to);
            if reach_settled(lab, Some(from), port, want) != want {
                wrong.push(format!("node{from} -> node{to}: expected reachable={want}"));
            }
        }
        let want = root_to_node(to);
        if reach_settled(lab, None, port, want) != want {
            wrong.push(format!("root -> node{to}: expected reachable={want}"));
        }
    }
    assert!(wrong.is_empty(), "{stage}: {wrong:#?}");
}

/// Like `reach`, but a link that should be up gets a few tries: right after a heal, neighbour
/// resolution on a loaded machine may take longer than one probe's timeout.
fn reach_settled(lab: &NetLab, from: Option<usize>, to: SocketAddr, want: bool) -> bool {
    let tries = if want { 5 } else { 1 };
    for _ in 0..tries {
        if reach(lab, from, to) {
            return true;
        }
    }
    false
}

/// Names of the namespaces that currently exist.
fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success(), "ip netns list: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Asserts that the lab's namespaces and root link exist (`present`) or are all gone.
fn assert_lab_resources(names: &[String], root_link: &str, present: bool) {
    let list = netns_list();
    for name in names {
        assert_eq!(
            list.contains(name),
            present,
            "namespace {name} present={present} expected; ip netns list: {list:?}"
        );
    }
    let link = Command::new("ip")
        .args(["link", "show", root_link])
        .output()
        .expect("ip link show");
    assert_eq!(link.status.success(), present, "root link {root_link}");
}

#[test]
fn three_nodes_cut_isolate_heal_and_cleanup() {
    let lab = NetLab::new(3).expect("create lab");
    let mut names: Vec<String> = (0..3).map(|i| lab.ns_name(i).to_string()).collect();
    names.push(lab.hub_ns_name().to_string());
    let root_link = lab.root_link_name().to_string();
    assert_lab_resources(&names, &root_link, true);

    // Addresses are as documented and actually configured inside each namespace.
    for i in 0..3 {
        let IpAddr::V4(v4) = lab.addr(i) else {
            panic!("expected IPv4");
        };
        assert_eq!(v4.octets()[0], 10);
        assert_eq!(usize::from(v4.octets()[3]), i + 1);
        let out = lab
            .command(i, "ip")
            .args(["-4", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .expect("ip addr in namespace");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("{}/24", lab.addr(i))),
            "node{i} addr: {text}"
        );
    }

    let ports: Vec<SocketAddr> = (0..3).map(|i| listen(&lab, Some(i), lab.addr(i))).collect();

    assert_matrix(&lab, &ports, "fresh lab", |_, _| true, |_| true);
    assert!(
        reach_via_command(&lab, 0, ports[1]),
        "command: node0 -> node1"
    );
    assert!(
        reach_via_command(&lab, 0, ports[2]),
        "command: node0 -> node2"
    );

    lab.cut(0, 1).expect("cut 0-1");
    lab.cut(1, 0).expect("cut again is idempotent");
    assert_eq!(lab.active_cuts(), vec![(0, 1), (1, 0)]);
    let cut01 = |a: usize, b: usize| !matches!((a, b), (0, 1) | (1, 0));
    assert_matrix(&lab, &ports, "after cut(0,1)", cut01, |_| true);
    assert!(
        !reach_via_command(&lab, 0, ports[1]),
        "command: node0 -/-> node1"
    );
    assert!(
        reach_via_command(&lab, 0, ports[2]),
        "command: node0 -> node2"
    );

    lab.isolate(2).expect("isolate 2");
    let cut01_iso2 = |a: usize, b: usize| cut01(a, b) && a != 2 && b != 2;
    assert_matrix(&lab, &ports, "after isolate(2)", cut01_iso2, |_| true);
    assert!(
        !reach_via_command(&lab, 2, ports[0]),
        "command: node2 -/-> node0"
    );

    lab.heal_all().expect("heal_all");
    lab.heal_all().expect("heal_all is idempotent");
    assert!(lab.active_cuts().is_empty());
    assert_matrix(&lab, &ports, "after heal_all", |_, _| true, |_| true);
    assert!(
        reach_via_command(&lab, 2, ports[0]),
        "command: node2 -> node0"
    );

    drop(lab);
    assert_lab_resources(&names, &root_link, false);
}

#[test]
fn client_disconnect_unplug_partition_and_two_labs() {
    // Two labs at once (the other test may hold a third): distinct names and subnets.
    let lab = NetLab::new(3).expect("create lab");
    let other = NetLab::new(2).expect("create second lab");
    assert_ne!(lab.subnet(), other.subnet());
    assert_ne!(lab.ns_name(0), other.ns_name(0));

    let ports: Vec<SocketAddr> = (0..3).map(|i| listen(&lab, Some(i), lab.addr(i))).collect();
    let other_ports: Vec<SocketAddr> = (0..2)
        .map(|i| listen(&other, Some(i), other.addr(i)))
        .collect();
    let client_port = listen(&lab, None, lab.client_addr());

    // Labs do not see each other; each reaches its own nodes.
    assert!(reach(&other, Some(0), other_ports[1]));
    assert!(!reach(&other, Some(0), ports[1]), "labs must be separate");
    assert!(reach(&lab, None, other_ports[0]));
    drop(other);

    // Nodes reach the root namespace's client address.
    for i in 0..3 {
        assert!(reach(&lab, Some(i), client_port), "node{i} -> client");
    }

    // Cutting the client from node 1 leaves node links alone.
    lab.disconnect_client(1).expect("disconnect_client");
    assert_matrix(
        &lab,
        &ports,
        "disconnect_client(1)",
        |_, _| true,
        |i| i != 1,
    );
    assert!(!reach(&lab, Some(1), client_port), "node1 -/-> client");
    lab.reconnect_client(1).expect("reconnect_client");
    assert_matrix(&lab, &ports, "reconnect_client(1)", |_, _| true, |_| true);

    // Unplugging takes the node off the network entirely.
    lab.unplug(0).expect("unplug");
    let off0 = |a: usize, b: usize| a != 0 && b != 0;
    assert_matrix(&lab, &ports, "unplug(0)", off0, |i| i != 0);
    lab.plug(0).expect("plug");
    assert_matrix(&lab, &ports, "plug(0)", |_, _| true, |_| true);

    // Partition {0,1} | {2}.
    lab.partition(&[&[0, 1], &[2]]).expect("partition");
    let split = |a: usize, b: usize| (a == 2) == (b == 2);
    assert_matrix(&lab, &ports, "partition", split, |_| true);
    assert_eq!(lab.active_cuts(), vec![(0, 2), (1, 2), (2, 0), (2, 1)]);

    // A one-way cut 0 -> 1 inside the majority: node0's sends fail at once; node1's
    // connection attempts to node0 arrive but the answers are dropped, so they time out.
    lab.cut_one_way(0, 1).expect("cut_one_way");
    let split = |a: usize, b: usize| (a == 2) == (b == 2) && !matches!((a, b), (0, 1) | (1, 0));
    assert_matrix(&lab, &ports, "partition + one-way", split, |_| true);
    let started = std::time::Instant::now();
    assert!(!reach(&lab, Some(0), ports[1]));
    assert!(
        started.elapsed() < PROBE_TIMEOUT / 2,
        "blackholed send fails fast"
    );
    let started = std::time::Instant::now();
    assert!(!reach(&lab, Some(1), ports[0]));
    assert!(
        started.elapsed() >= PROBE_TIMEOUT / 2,
        "dropped answers time out"
    );
    lab.heal(0, 1).expect("heal 0-1");
    lab.heal(1, 2).expect("heal 1-2");
    let split = |a: usize, b: usize| !matches!((a, b), (0, 2) | (2, 0));
    assert_matrix(&lab, &ports, "healed 1-2 only", split, |_| true);

    // Everything at once, then heal_all.
    lab.isolate(1).expect("isolate");
    lab.disconnect_client(2).expect("disconnect_client");
    lab.unplug(0).expect("unplug");
    lab.heal_all().expect("heal_all");
    assert_matrix(&lab, &ports, "after heal_all", |_, _| true, |_| true);

    // Bad indexes are errors, not panics or silent no-ops.
    assert!(lab.cut(0, 3).is_err());
    assert!(lab.cut(1, 1).is_err());
    assert!(lab.isolate(7).is_err());
}
