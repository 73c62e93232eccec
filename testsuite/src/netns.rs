//! A network-namespace lab for multi-host partition tests.
//!
//! [`NetLab::new`] builds `n` network namespaces ("nodes"), each with loopback up and one
//! veth plugged into a bridge that lives in an extra "hub" namespace, so the host's own
//! routing is left alone. One more veth pair joins the host's root namespace to the hub
//! bridge, so the test process itself (and `etcdctl` run from it) reaches node `i` at
//! [`NetLab::addr`] directly, from the address [`NetLab::client_addr`]:
//!
//! ```text
//!   root ns: tgb<id>r 10.X.Y.254 ──┐
//!                                  │  hub ns: bridge br0
//!   tgb<id>n0: eth0 10.X.Y.1 ──────┤
//!   tgb<id>n1: eth0 10.X.Y.2 ──────┤
//!   ...                            │
//! ```
//!
//! Partitions are blackhole routes inside the node namespaces ([`NetLab::cut`],
//! [`NetLab::isolate`], [`NetLab::disconnect_client`]) or a downed bridge port
//! ([`NetLab::unplug`]); [`NetLab::heal_all`] undoes all of them. Dropping the lab deletes
//! every namespace and the root-side veth, also when a test panics, and [`NetLab::new`]
//! removes what labs of dead processes left behind.
//!
//! Needs root and iproute2's `ip`; without them [`NetLab::new`] fails with a
//! [`NetLabError`] saying so (it never skips silently). No iptables or nft is used.
//!
//! Processes started with [`NetLab::command`] that are still running when the lab is
//! dropped keep their (now nameless, disconnected) namespace alive until they exit, so
//! tests should kill their children first.

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// Prefix of every namespace and root-namespace link a lab creates.
pub const NAME_PREFIX: &str = "tgb";
/// Path of the `ip` binary (iproute2).
pub const IP_BIN: &str = "ip";
/// Largest number of nodes a lab can have (node addresses are `.1` to `.253`).
pub const MAX_NODES: usize = 253;
/// Last octet of the root namespace's address in every lab subnet.
const CLIENT_OCTET: u8 = 254;
/// Name of the bridge inside the hub namespace.
const BRIDGE: &str = "br0";
/// Name of each node's interface inside its own namespace.
const NODE_IF: &str = "eth0";
/// Name of the hub-side end of the root namespace's veth.
const HUB_UPLINK: &str = "up0";

/// Counts labs created by this process, to keep names unique.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Everything that can go wrong while building or driving a [`NetLab`].
#[derive(Debug, thiserror::Error)]
pub enum NetLabError {
    /// The process is not root, so it cannot create namespaces.
    #[error(
        "NetLab needs root to create network namespaces (euid is {euid}); run the tests as root"
    )]
    NotRoot {
        /// The effective uid the process has.
        euid: u32,
    },
    /// The `ip` binary could not be run.
    #[error(
        "cannot run `{IP_BIN}` (iproute2): {source}; install it with `apt-get install iproute2`"
    )]
    IpMissing {
        /// Why spawning it failed.
        #[source]
        source: std::io::Error,
    },
    /// An `ip` invocation exited unsuccessfully.
    #[error("`{command}` failed with {status}: {stderr}")]
    CommandFailed {
        /// The full command line.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// No unused 10.X.Y.0/24 subnet was found for the lab.
    #[error("no free 10.x.y.0/24 subnet found in the root namespace after {attempts} attempts")]
    NoFreeSubnet {
        /// How many candidates were tried.
        attempts: u32,
    },
    /// A lab was asked for zero nodes or more than [`MAX_NODES`].
    #[error("a NetLab holds 1..={MAX_NODES} nodes, not {requested}")]
    BadSize {
        /// The number of nodes asked for.
        requested: usize,
    },
    /// A node index is out of range.
    #[error("node index {index} out of range for a lab of {len} nodes")]
    BadIndex {
        /// The index given.
        index: usize,
        /// Number of nodes in the lab.
        len: usize,
    },
    /// A node was asked to be cut from itself.
    #[error("cannot cut node {index} from itself")]
    SelfCut {
        /// The index given twice.
        index: usize,
    },
}

/// Where a blackhole route installed in a node namespace points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// Another node, by index.
    Node(usize),
    /// The root namespace's address ([`NetLab::client_addr`]).
    Client,
}

/// The faults currently in force, so healing is idempotent.
#[derive(Debug, Default)]
struct Faults {
    /// Blackhole routes present: (namespace of node `from`, destination).
    routes: BTreeSet<(usize, Target)>,
    /// Nodes whose hub-side bridge port is down.
    unplugged: BTreeSet<usize>,
}

/// A set of network namespaces joined by a bridge, with partition controls; see the module docs.
#[derive(Debug)]
pub struct NetLab {
    /// Unique id of this lab, part of every name (`<pid hex>-<counter hex>`).
    id: String,
    /// Node namespace names, by index.
    nodes: Vec<String>,
    /// Hub namespace name.
    hub: String,
    /// Root-namespace end of the client veth.
    root_link: String,
    /// Second and third octets of the lab's 10.X.Y.0/24 subnet.
    subnet: [u8; 2],
    /// Faults in force.
    faults: Mutex<Faults>,
    /// What exists and must be removed on drop (held only for its `Drop`).
    _cleanup: Created,
}

/// Resources created so far; removed on drop, so a half-built lab cleans up too.
#[derive(Debug, Default)]
struct Created {
    /// Root-namespace veth, if created.
    root_link: Option<String>,
    /// Namespaces created (nodes and hub).
    namespaces: Vec<String>,
}

impl Drop for Created {
    fn drop(&mut self) {
        if let Some(link) = self.root_link.take() {
            if let Err(e) = ip(["link", "del", link.as_str()]) {
                eprintln!("netlab: cleanup of root link {link} failed: {e:#}");
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(["netns", "del", ns.as_str()]) {
                eprintln!("netlab: cleanup of namespace {ns} failed: {e:#}");
            }
        }
    }
}

impl NetLab {
    /// Creates a lab of `n` connected node namespaces, reachable from the root namespace.
    ///
    /// Node `i` gets `10.X.Y.(i+1)/24`; the root namespace gets `10.X.Y.254/24`, with X.Y
    /// chosen so the subnet is unused on this host. Fails if not root or `ip` is missing.
    pub fn new(n: usize) -> anyhow::Result<NetLab> {
        if n == 0 || n > MAX_NODES {
            return Err(NetLabError::BadSize { requested: n }.into());
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(NetLabError::NotRoot { euid }.into());
        }
        ip(["-V"])?;

        let pid = std::process::id();
        let counter = LAB_COUNTER.fetch_add(1, Ordering::Relaxed) % 0x1000;
        let id = format!("{pid:x}-{counter:x}");
        let root_link = format!("{NAME_PREFIX}{id}r");
        let hub = format!("{NAME_PREFIX}{id}h");
        let nodes: Vec<String> = (0..n).map(|i| format!("{NAME_PREFIX}{id}n{i}")).collect();
        let mut created = Created::default();

        // Subnet choice and the root address that claims it happen under a host-wide lock,
        // so concurrent labs (in this or other processes) never pick the same subnet.
        let lock = HostLock::acquire()?;
        cleanup_stale();

        for ns in std::iter::once(&hub).chain(nodes.iter()) {
            ip(["netns", "add", ns.as_str()])?;
            created.namespaces.push(ns.clone());
        }
        ip_in(&hub, ["link", "add", BRIDGE, "type", "bridge"])?;
        ip_in(&hub, ["link", "set", BRIDGE, "up"])?;
        ip_in(&hub, ["link", "set", "lo", "up"])?;

        let subnet = pick_subnet(pid, counter)?;
        ip([
            "link",
            "add",
            "name",
            root_link.as_str(),
            "type",
            "veth",
            "peer",
            "name",
            HUB_UPLINK,
            "netns",
            hub.as_str(),
        ])?;
        created.root_link = Some(root_link.clone());
        let client = format!("{}/24", host_addr(subnet, CLIENT_OCTET));
        ip(["addr", "add", client.as_str(), "dev", root_link.as_str()])?;
        drop(lock);
        ip(["link", "set", root_link.as_str(), "up"])?;
        ip_in(&hub, ["link", "set", HUB_UPLINK, "master", BRIDGE, "up"])?;

        for (i, ns) in nodes.iter().enumerate() {
            let port = hub_port(i);
            ip_in(
                &hub,
                [
                    "link",
                    "add",
                    "name",
                    port.as_str(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    NODE_IF,
                    "netns",
                    ns.as_str(),
                ],
            )?;
            ip_in(&hub, ["link", "set", port.as_str(), "master", BRIDGE, "up"])?;
            ip_in(ns, ["link", "set", "lo", "up"])?;
            let addr = format!("{}/24", host_addr(subnet, node_octet(i)));
            ip_in(ns, ["addr", "add", addr.as_str(), "dev", NODE_IF])?;
            ip_in(ns, ["link", "set", NODE_IF, "up"])?;
        }

        Ok(NetLab {
            id,
            nodes,
            hub,
            root_link,
            subnet,
            faults: Mutex::new(Faults::default()),
            _cleanup: created,
        })
    }

    /// Number of nodes in the lab.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a lab has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Unique id of this lab, part of all its names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Address of node `i` (`10.X.Y.(i+1)`). Panics if `i` is out of range.
    pub fn addr(&self, i: usize) -> IpAddr {
        self.check_panic(i);
        IpAddr::V4(host_addr(self.subnet, node_octet(i)))
    }

    /// Addresses of all nodes, by index.
    pub fn addrs(&self) -> Vec<IpAddr> {
        (0..self.len()).map(|i| self.addr(i)).collect()
    }

    /// Address of the root namespace in the lab subnet (`10.X.Y.254`), where test clients live.
    pub fn client_addr(&self) -> IpAddr {
        IpAddr::V4(host_addr(self.subnet, CLIENT_OCTET))
    }

    /// The lab subnet as `10.X.Y.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}/24", host_addr(self.subnet, 0))
    }

    /// Namespace name of node `i`. Panics if `i` is out of range.
    pub fn ns_name(&self, i: usize) -> &str {
        self.check_panic(i);
        &self.nodes[i]
    }

    /// Name of the hub namespace holding the bridge.
    pub fn hub_ns_name(&self) -> &str {
        &self.hub
    }

    /// Name of the root-namespace end of the veth to the hub.
    pub fn root_link_name(&self) -> &str {
        &self.root_link
    }

    /// A command that runs `program` inside node `i`'s namespace (`ip netns exec NAME program`).
    ///
    /// Panics if `i` is out of range. Add arguments, env and stdio as with any [`Command`].
    /// `ip netns exec` execs `program` in place, so the child's pid is the program's own
    /// and `Child::kill` reaches it directly.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(IP_BIN);
        cmd.args(["netns", "exec", self.ns_name(i)]).arg(program);
        cmd
    }

    /// Runs `f` on a fresh thread that has entered node `i`'s network namespace.
    ///
    /// Sockets created inside `f` belong to that namespace for their whole life, even when
    /// returned and used from other threads (e.g. a `std::net::TcpListener` bound to
    /// [`NetLab::addr`], or a stream later handed to `tokio::net::TcpStream::from_std`).
    pub fn in_ns<T, F>(&self, i: usize, f: F) -> anyhow::Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        self.check(i)?;
        let path = format!("/run/netns/{}", self.nodes[i]);
        let ns = File::open(&path).with_context(|| format!("opening namespace file {path}"))?;
        std::thread::scope(|s| {
            let handle = s.spawn(move || -> anyhow::Result<T> {
                // SAFETY: `ns` is an open namespace file; setns only affects this thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns into {path}"));
                }
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Cuts nodes `i` and `j` apart in both directions; other paths are untouched. Idempotent.
    pub fn cut(&self, i: usize, j: usize) -> anyhow::Result<()> {
        self.check_pair(i, j)?;
        let mut faults = self.faults();
        self.add_route(&mut faults, i, Target::Node(j))?;
        self.add_route(&mut faults, j, Target::Node(i))
    }

    /// Stops node `from` from sending to node `to`; `to` may still send to `from`. Idempotent.
    ///
    /// TCP needs both directions, so this breaks TCP between the two both ways too, but
    /// differently from [`NetLab::cut`]: `from`'s sends fail at once, while `to`'s
    /// connections hang until they time out (its packets arrive, the answers never do).
    pub fn cut_one_way(&self, from: usize, to: usize) -> anyhow::Result<()> {
        self.check_pair(from, to)?;
        let mut faults = self.faults();
        self.add_route(&mut faults, from, Target::Node(to))
    }

    /// Undoes [`NetLab::cut`] (both directions) between `i` and `j`. Idempotent.
    pub fn heal(&self, i: usize, j: usize) -> anyhow::Result<()> {
        self.check_pair(i, j)?;
        let mut faults = self.faults();
        self.del_route(&mut faults, i, Target::Node(j))?;
        self.del_route(&mut faults, j, Target::Node(i))
    }

    /// Cuts node `i` from every other node; the test process can still reach it. Idempotent.
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        self.check(i)?;
        let mut faults = self.faults();
        for j in (0..self.len()).filter(|&j| j != i) {
            self.add_route(&mut faults, i, Target::Node(j))?;
            self.add_route(&mut faults, j, Target::Node(i))?;
        }
        Ok(())
    }

    /// Splits the nodes into the given groups: nodes in different groups are cut apart.
    ///
    /// Nodes not named in any group are cut from everyone named. Idempotent.
    pub fn partition(&self, groups: &[&[usize]]) -> anyhow::Result<()> {
        let mut group_of = vec![None; self.len()];
        for (g, members) in groups.iter().enumerate() {
            for &i in members.iter() {
                self.check(i)?;
                group_of[i] = Some(g);
            }
        }
        let mut faults = self.faults();
        for i in 0..self.len() {
            for j in 0..self.len() {
                let apart = match (group_of[i], group_of[j]) {
                    (Some(a), Some(b)) => a != b,
                    (None, None) => false,
                    _ => true,
                };
                if i != j && apart {
                    self.add_route(&mut faults, i, Target::Node(j))?;
                }
            }
        }
        Ok(())
    }

    /// Stops node `i` from answering the root namespace (test clients); node links stay. Idempotent.
    ///
    /// Implemented as a blackhole route for [`NetLab::client_addr`] inside node `i`, so
    /// client connections to it time out rather than being refused.
    pub fn disconnect_client(&self, i: usize) -> anyhow::Result<()> {
        self.check(i)?;
        let mut faults = self.faults();
        self.add_route(&mut faults, i, Target::Client)
    }

    /// Undoes [`NetLab::disconnect_client`] for node `i`. Idempotent.
    pub fn reconnect_client(&self, i: usize) -> anyhow::Result<()> {
        self.check(i)?;
        let mut faults = self.faults();
        self.del_route(&mut faults, i, Target::Client)
    }

    /// Takes node `i`'s bridge port down: it reaches nobody, the test process included. Idempotent.
    pub fn unplug(&self, i: usize) -> anyhow::Result<()> {
        self.check(i)?;
        let mut faults = self.faults();
        if !faults.unplugged.contains(&i) {
            let port = hub_port(i);
            ip_in(&self.hub, ["link", "set", port.as_str(), "down"])?;
            faults.unplugged.insert(i);
        }
        Ok(())
    }

    /// Brings node `i`'s bridge port back up after [`NetLab::unplug`]. Idempotent.
    pub fn plug(&self, i: usize) -> anyhow::Result<()> {
        self.check(i)?;
        let mut faults = self.faults();
        self.plug_locked(&mut faults, i)
    }

    /// Removes every fault in force: cuts, isolations, client disconnects and unplugs.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        let mut faults = self.faults();
        let routes: Vec<_> = faults.routes.iter().copied().collect();
        for (from, target) in routes {
            self.del_route(&mut faults, from, target)?;
        }
        let unplugged: Vec<_> = faults.unplugged.iter().copied().collect();
        for i in unplugged {
            self.plug_locked(&mut faults, i)?;
        }
        Ok(())
    }

    /// Pairs `(from, to)` where node `from` currently cannot send to node `to`, sorted.
    pub fn active_cuts(&self) -> Vec<(usize, usize)> {
        self.faults()
            .routes
            .iter()
            .filter_map(|&(from, target)| match target {
                Target::Node(to) => Some((from, to)),
                Target::Client => None,
            })
            .collect()
    }

    /// Locks the fault record, recovering it if a panicking thread poisoned it.
    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs the blackhole route `from -> target` unless already present.
    fn add_route(&self, faults: &mut Faults, from: usize, target: Target) -> anyhow::Result<()> {
        if faults.routes.contains(&(from, target)) {
            return Ok(());
        }
        let dest = format!("{}/32", self.target_addr(target));
        ip_in(
            &self.nodes[from],
            ["route", "replace", "blackhole", dest.as_str()],
        )?;
        faults.routes.insert((from, target));
        Ok(())
    }

    /// Removes the blackhole route `from -> target` if present.
    fn del_route(&self, faults: &mut Faults, from: usize, target: Target) -> anyhow::Result<()> {
        if !faults.routes.contains(&(from, target)) {
            return Ok(());
        }
        let dest = format!("{}/32", self.target_addr(target));
        ip_in(
            &self.nodes[from],
            ["route", "del", "blackhole", dest.as_str()],
        )?;
        faults.routes.remove(&(from, target));
        Ok(())
    }

    /// Brings node `i`'s bridge port up if it was unplugged.
    fn plug_locked(&self, faults: &mut Faults, i: usize) -> anyhow::Result<()> {
        if faults.unplugged.contains(&i) {
            let port = hub_port(i);
            ip_in(&self.hub, ["link", "set", port.as_str(), "up"])?;
            faults.unplugged.remove(&i);
        }
        Ok(())
    }

    /// Address a route target stands for.
    fn target_addr(&self, target: Target) -> IpAddr {
        match target {
            Target::Node(j) => self.addr(j),
            Target::Client => self.client_addr(),
        }
    }

    /// Errors unless `i` is a node index.
    fn check(&self, i: usize) -> Result<(), NetLabError> {
        if i < self.len() {
            Ok(())
        } else {
            Err(NetLabError::BadIndex {
                index: i,
                len: self.len(),
            })
        }
    }

    /// Errors unless `i` and `j` are distinct node indexes.
    fn check_pair(&self, i: usize, j: usize) -> Result<(), NetLabError> {
        self.check(i)?;
        self.check(j)?;
        if i == j {
            return Err(NetLabError::SelfCut { index: i });
        }
        Ok(())
    }

    /// Panics with a clear message unless `i` is a node index.
    fn check_panic(&self, i: usize) {
        if let Err(e) = self.check(i) {
            panic!("{e}");
        }
    }
}

/// Name of node `i`'s port on the hub bridge.
fn hub_port(i: usize) -> String {
    format!("h{i}")
}

/// Last octet of node `i`'s address.
fn node_octet(i: usize) -> u8 {
    // `NetLab::new` caps the node count at MAX_NODES (253), so this never truncates.
    (i + 1) as u8
}

/// The address `10.X.Y.last` in the subnet `[X, Y]`.
fn host_addr(subnet: [u8; 2], last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, subnet[0], subnet[1], last)
}

/// Runs `ip ARGS` in the root namespace and returns its output, or a typed error.
fn ip<I, S>(args: I) -> Result<Output, NetLabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let output = Command::new(IP_BIN)
        .args(&args)
        .output()
        .map_err(|source| NetLabError::IpMissing { source })?;
    if output.status.success() {
        return Ok(output);
    }
    let mut command = IP_BIN.to_string();
    for a in &args {
        command.push(' ');
        command.push_str(&a.to_string_lossy());
    }
    Err(NetLabError::CommandFailed {
        command,
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// Runs `ip -n NS ARGS`, i.e. `ip ARGS` inside namespace `ns`.
fn ip_in<'a, I>(ns: &'a str, args: I) -> Result<Output, NetLabError>
where
    I: IntoIterator<Item = &'a str>,
{
    ip(["-n", ns].into_iter().chain(args))
}

/// A host-wide advisory lock serialising lab setup across threads and processes.
struct HostLock {
    /// The locked file; closing it releases the lock.
    _file: File,
}

impl HostLock {
    /// Blocks until the lock file is exclusively locked.
    fn acquire() -> anyhow::Result<HostLock> {
        let path = std::env::temp_dir().join("tugboat-netlab.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        loop {
            // SAFETY: the fd is open for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(HostLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// Picks X.Y so that 10.X.Y.0/24 overlaps nothing routed or addressed in the root namespace.
fn pick_subnet(pid: u32, counter: u32) -> anyhow::Result<[u8; 2]> {
    let mut in_use = Vec::new();
    for args in [
        &["-4", "route", "show", "table", "all"][..],
        &["-4", "-o", "addr", "show"][..],
    ] {
        let out = ip(args.iter().copied())?;
        in_use.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(parse_prefix),
        );
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = RandomState::new();
    const ATTEMPTS: u32 = 1000;
    for attempt in 0..ATTEMPTS {
        let r = seed.hash_one((pid, counter, nanos, attempt));
        // X in 64..=254 keeps clear of the commonly used low 10.0.x/10.1.x ranges.
        let candidate = [64 + (r % 191) as u8, (r >> 8) as u8];
        let net = u32::from(host_addr(candidate, 0));
        if !in_use.iter().any(|&p| overlaps(p, (net, 24))) {
            return Ok(candidate);
        }
    }
    Err(NetLabError::NoFreeSubnet { attempts: ATTEMPTS }.into())
}

/// Parses `a.b.c.d` or `a.b.c.d/len` into (address, prefix length).
fn parse_prefix(token: &str) -> Option<(u32, u8)> {
    let (addr, len) = match token.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok().filter(|&l| l <= 32)?),
        None => (token, 32),
    };
    addr.parse::<Ipv4Addr>().ok().map(|a| (u32::from(a), len))
}

/// Whether two IPv4 prefixes share any address.
fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// Deletes namespaces and root links of labs whose creating process no longer exists.
fn cleanup_stale() {
    let owner_dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            return false;
        };
        let Some((pid_hex, _)) = rest.split_once('-') else {
            return false;
        };
        let Ok(pid) = i32::from_str_radix(pid_hex, 16) else {
            return false;
        };
        if pid <= 0 || pid as u32 == std::process::id() {
            return false;
        }
        // SAFETY: signal 0 only checks whether the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    };
    if let Ok(out) = ip(["-o", "link", "show"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "7: tgb1a2b-0r@if3: <...>"
            let Some(name) = line.split(':').nth(1).map(str::trim) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if owner_dead(name) && name.ends_with('r') {
                let _ = ip(["link", "del", name]);
            }
        }
    }
    if let Ok(out) = ip(["netns", "list"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "tgb1a2b-0n0 (id: 3)" or just "tgb1a2b-0n0"
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if owner_dead(name) {
                let _ = ip(["netns", "del", name]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_overlap() {
        let p = |s: &str| parse_prefix(s).unwrap();
        assert!(overlaps(p("10.5.6.0/24"), p("10.5.6.7")));
        assert!(overlaps(p("10.0.0.0/8"), p("10.5.6.0/24")));
        assert!(!overlaps(p("10.5.7.0/24"), p("10.5.6.0/24")));
        assert!(!overlaps(p("192.0.2.0/24"), p("10.5.6.0/24")));
        assert!(overlaps(p("0.0.0.0/0"), p("10.5.6.0/24")));
        assert_eq!(parse_prefix("default"), None);
        assert_eq!(parse_prefix("10.1.2.3/33"), None);
    }
}
