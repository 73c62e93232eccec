//! Linearizability under faults (issue 3): a nemesis breaks a three-voter cluster in every way
//! it knows while concurrent clients put, read and delete a few keys and watchers follow them;
//! afterwards the whole history is checked.
//!
//! The cluster runs in a [`NetLab`] (the harness starts each member in its own network
//! namespace) so that partitions are real: links between members are cut while the test
//! process still reaches every member, so clients keep talking to a member cut off from the
//! others (the stale-leader case). Faults come one at a time, each healed before the next, so
//! a quorum stays possible and never two members are down at once:
//! - kill -9 of a member (the leader half of the time), restarted after a short pause;
//! - SIGSTOP of a member for 1–3 s, then SIGCONT;
//! - graceful restart (SIGTERM, must exit 0, start again);
//! - a member isolated from its peers, one link cut both ways, or one way, for 1–3 s;
//! - a new member joins (it becomes a standby), and later one member is removed with
//!   `tugboat node remove` (a standby is promoted so three voters remain). In CI this happens
//!   once each; longer soaks alternate joins and removals.
//!
//! What must hold:
//! - the recorded history of every client operation (a write whose answer was lost may or may
//!   not have happened) is linearizable (`tugboat_testsuite::linearizability::check`), final
//!   linearizable reads through every member included;
//! - every member's store history (a watch of the whole keyspace from revision 1) is the same,
//!   covers every revision once with no gap, and holds every acknowledged write at the revision
//!   its response named, and every value a read returned at its `mod_revision`: nothing
//!   acknowledged is lost;
//! - the watchers, which resume at `last seen + 1` on another member whenever their stream
//!   breaks, as real clients do, delivered exactly that history of the watched prefix: every
//!   revision in order, no gap, no duplicate;
//! - the checkers are not vacuous: the same history with one stale read added, and the same
//!   watch stream with one event dropped or repeated, must be rejected.
//!
//! `TUGBOAT_NEMESIS_SECS` sets how long the clients and the nemesis run (default 20 s, at least
//! 10 for a join and a removal to fit; forming the cluster and checking take a few seconds
//! more). Every fault is printed as it happens (with the wall-clock time, to match the members'
//! logs), then a summary with the client errors seen (by operation and message, with their
//! latencies). Needs root and iproute2, like the other namespace tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tugboat_store::pb::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient, watch_request::RequestUnion, DeleteRangeRequest, MemberListRequest,
    PutRequest, RangeRequest, StatusRequest, WatchCreateRequest, WatchRequest,
};
use tugboat_store::pb::mvccpb::event::EventType;
use tugboat_testsuite::harness::{
    test_runtime, JoinSpec, NetnsPlacement, TugboatNode, TugboatOptions,
};
use tugboat_testsuite::linearizability::{
    check, check_events_present, check_watch_revisions, check_watch_stream, Event, Op, Verdict,
    WatchEvent,
};
use tugboat_testsuite::load::prefix_end;
use tugboat_testsuite::netns::NetLab;

/// Every key the clients touch is under this prefix, which the watchers watch.
const PREFIX: &str = "nem/";
const KEYS: usize = 4;
const CLIENTS: usize = 6;
const WATCHERS: usize = 2;
/// How long clients and nemesis run; `TUGBOAT_NEMESIS_SECS` makes it a longer soak.
const DEFAULT_SECS: u64 = 20;
/// Client-side deadline of one operation; a write that misses it has an unknown outcome.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of probes (status, serving checks).
const QUICK_TIMEOUT: Duration = Duration::from_secs(2);
/// Generous deadline for anything that should take a few election timeouts.
const DEADLINE: Duration = Duration::from_secs(30);
/// Flags of every member: roles must not shift behind the nemesis's back.
const NODE_FLAGS: [&str; 2] = ["--dead-voter-timeout", "3600"];
/// Responses of a watch replaying the whole keyspace can be large.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Members: tugboatd processes in the namespaces of the lab
// ---------------------------------------------------------------------------------------------

/// One `tugboatd` of the cluster, in namespace `slot` of the lab (the harness runs it there).
struct Member {
    name: String,
    /// None once removed: the process then belongs to its [`Removed`] watcher.
    node: Option<TugboatNode>,
}

impl Member {
    /// Starts the member (joining through `join` if given) and waits until it is healthy.
    fn start(lab: &NetLab, slot: usize, join: Option<JoinSpec>) -> Result<Member, String> {
        let name = member_name(slot);
        let node = TugboatNode::start(TugboatOptions {
            name: name.clone(),
            extra_args: NODE_FLAGS.iter().map(|s| s.to_string()).collect(),
            join,
            netns: Some(NetnsPlacement {
                ns: lab.ns_name(slot).to_string(),
                ip: lab.addr(slot),
            }),
            ..TugboatOptions::default()
        })
        .map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Member {
            name,
            node: Some(node),
        })
    }

    fn node(&mut self) -> &mut TugboatNode {
        self.node.as_mut().expect("member was removed")
    }

    fn signal(&mut self, sig: libc::c_int) {
        let name = self.name.clone();
        // Running now means not reaped yet: the pid cannot have been reused.
        assert!(self.node().is_running(), "{name} is not running");
        let pid = self.node().pid().expect("member is running");
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill(2) on the pid of a child the harness spawned and has not reaped (it was
        // running just above), so the pid is still that process's; no memory is touched.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}) on {name}: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(node) = &self.node {
            keep_log_if_panicking(&self.name, node);
        }
    }
}

/// When the test fails, copies a member's whole log out of its temp dir (which goes) for the
/// post-mortem; the harness prints its tail.
fn keep_log_if_panicking(name: &str, node: &TugboatNode) {
    if std::thread::panicking() {
        let keep =
            std::env::temp_dir().join(format!("tugboat-nemesis-{}-{name}.log", std::process::id()));
        if std::fs::copy(node.log_path(), &keep).is_ok() {
            eprintln!("whole log of {name}: {}", keep.display());
        }
    }
}

fn member_name(slot: usize) -> String {
    match u8::try_from(slot) {
        Ok(s) if s < 26 => char::from(b'a' + s).to_string(),
        _ => format!("n{slot}"),
    }
}

/// A lazily connected mutual-TLS channel to `endpoint` with the admin certificate of
/// `data_dir` (one CA signs every member, so the first member's files serve for all).
fn channel(endpoint: &str, data_dir: &Path) -> Channel {
    let pki = data_dir.join("pki");
    let read = |f: &str| {
        let p = pki.join(f);
        std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .identity(Identity::from_pem(read("admin.crt"), read("admin.key")));
    Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint URL")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .tls_config(tls)
        .expect("TLS config")
        .connect_lazy()
}

fn kv(ch: Channel) -> KvClient<Channel> {
    KvClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

/// True if a linearizable read through `ch` succeeds within `QUICK_TIMEOUT`.
async fn serves(ch: Channel) -> bool {
    let probe = RangeRequest {
        key: PREFIX.as_bytes().to_vec(),
        count_only: true,
        ..Default::default()
    };
    matches!(
        tokio::time::timeout(QUICK_TIMEOUT, kv(ch).range(probe)).await,
        Ok(Ok(_))
    )
}

/// (own member id, leader id) as the member reports them.
async fn status(ch: Channel) -> Option<(u64, u64)> {
    let resp = tokio::time::timeout(
        QUICK_TIMEOUT,
        MaintenanceClient::new(ch).status(StatusRequest {}),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    Some((resp.header?.member_id, resp.leader))
}

// ---------------------------------------------------------------------------------------------
// The pool of members clients may use
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Slot {
    name: String,
    channel: Channel,
    /// Admitted and not removed: clients may use it.
    in_cluster: bool,
}

#[derive(Default)]
struct Pool {
    slots: Mutex<Vec<Slot>>,
}

impl Pool {
    fn get(&self, i: usize) -> Slot {
        self.slots.lock().expect("pool")[i].clone()
    }

    fn in_cluster(&self) -> Vec<usize> {
        let slots = self.slots.lock().expect("pool");
        (0..slots.len()).filter(|&i| slots[i].in_cluster).collect()
    }

    /// A random member of the cluster other than `not` (or `not` itself if it is alone).
    fn other(&self, not: usize) -> usize {
        let members = self.in_cluster();
        let others: Vec<usize> = members.iter().copied().filter(|&i| i != not).collect();
        *others
            .choose(&mut rand::rng())
            .or(members.first())
            .unwrap_or(&not)
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

struct Cluster {
    // Field order is drop order: members die before their namespaces go.
    /// Members removed from the cluster, which must stop by themselves.
    removed: Vec<Removed>,
    members: Vec<Member>,
    lab: NetLab,
    pool: Arc<Pool>,
    rt: Runtime,
    /// Data dir whose admin certificate the test's clients use.
    admin_dir: PathBuf,
}

/// A removed member's process, watched by a thread that notes when it stops.
struct Removed {
    name: String,
    node: Arc<Mutex<TugboatNode>>,
    /// How long after its removal it stopped.
    stopped: Arc<Mutex<Option<Duration>>>,
}

impl Removed {
    fn watch(name: String, node: TugboatNode, at: Instant) -> Removed {
        let node = Arc::new(Mutex::new(node));
        let stopped = Arc::new(Mutex::new(None));
        let (n, st) = (node.clone(), stopped.clone());
        std::thread::spawn(move || {
            while at.elapsed() < DEADLINE {
                if !n.lock().expect("node").is_running() {
                    *st.lock().expect("stopped") = Some(at.elapsed());
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Removed {
            name,
            node,
            stopped,
        }
    }

    /// How long after its removal it stopped (None if it still ran `DEADLINE` after).
    fn wait(&self) -> Option<Duration> {
        loop {
            if let Some(after) = *self.stopped.lock().expect("stopped") {
                return Some(after);
            }
            if Arc::strong_count(&self.stopped) == 1 {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        if let Ok(mut node) = self.node.lock() {
            keep_log_if_panicking(&self.name, &node);
            node.kill9();
        }
    }
}

impl Cluster {
    fn start(max_members: usize) -> Cluster {
        let lab =
            NetLab::new(max_members).expect("network namespace lab (needs root and iproute2)");
        let rt = test_runtime();
        let first = Member::start(&lab, 0, None).unwrap_or_else(|e| panic!("{e}"));
        let node = first.node.as_ref().expect("running");
        let admin_dir = node.data_dir().to_path_buf();
        let join = JoinSpec {
            peer: node.peer_addr().to_string(),
            token: node
                .create_token(&["--ttl", "1h"])
                .expect("tugboat token create"),
        };
        let mut cluster = Cluster {
            removed: Vec::new(),
            members: Vec::new(),
            lab,
            pool: Arc::default(),
            rt,
            admin_dir,
        };
        cluster.add(first);
        let lab = &cluster.lab;
        let joined: Vec<Member> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..3)
                .map(|slot| {
                    let join = join.clone();
                    s.spawn(move || Member::start(lab, slot, Some(join)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .expect("join thread")
                        .unwrap_or_else(|e| panic!("{e}"))
                })
                .collect()
        });
        for m in joined {
            cluster.add(m);
        }
        cluster.wait_roles(3, 0, &[]);
        cluster.settle();
        cluster
    }

    fn add(&mut self, m: Member) {
        let ch = {
            let _ctx = self.rt.enter();
            channel(
                &m.node.as_ref().expect("running").tls_endpoint(),
                &self.admin_dir,
            )
        };
        self.pool.slots.lock().expect("pool").push(Slot {
            name: m.name.clone(),
            channel: ch,
            in_cluster: true,
        });
        self.members.push(m);
    }

    fn ch(&self, slot: usize) -> Channel {
        self.pool.get(slot).channel
    }

    fn in_cluster(&self) -> Vec<usize> {
        self.pool.in_cluster()
    }

    fn token(&mut self, via: usize) -> Result<String, String> {
        self.members[via]
            .node()
            .create_token(&["--ttl", "1h"])
            .map_err(|e| e.to_string())
    }

    /// Waits until member `slot` answers a linearizable read; panics if it exits or takes
    /// longer than `DEADLINE`.
    fn wait_serving(&mut self, slot: usize) -> Duration {
        let start = Instant::now();
        loop {
            let name = self.members[slot].name.clone();
            assert!(self.members[slot].node().is_running(), "{name} exited");
            if self.rt.block_on(serves(self.ch(slot))) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{name} does not serve after {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every member of the cluster serves; returns how long that took and which
    /// member was the last to.
    fn settle(&mut self) -> (Duration, String) {
        let start = Instant::now();
        let mut last = String::new();
        for slot in self.in_cluster() {
            if self.wait_serving(slot) > Duration::from_millis(200) {
                last = self.members[slot].name.clone();
            }
        }
        (start.elapsed(), last)
    }

    /// Waits until every removed member has stopped, as it must by itself (within `DEADLINE`
    /// of its removal); returns how each one ended.
    fn wait_removed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.removed {
            let name = &r.name;
            let Some(after) = r.wait() else {
                panic!("{name} still runs {DEADLINE:?} after its removal");
            };
            let log = r.node.lock().expect("node").log_tail(20);
            assert!(
                log.contains("removed from the cluster"),
                "{name} stopped without saying it was removed:\n{log}"
            );
            out.push(format!("{name} stopped {after:.1?} after its removal"));
        }
        out
    }

    /// Slot of the member every serving member names as leader, if they agree.
    fn leader(&self) -> Option<usize> {
        let mut ids = BTreeMap::new();
        let mut leaders = Vec::new();
        for slot in self.in_cluster() {
            let (me, leader) = self.rt.block_on(status(self.ch(slot)))?;
            ids.insert(me, slot);
            leaders.push(leader);
        }
        let first = *leaders.first()?;
        if first == 0 || leaders.iter().any(|&l| l != first) {
            return None;
        }
        ids.get(&first).copied()
    }

    /// (name, is voter) of every member, as member `via` lists them (linearizably).
    fn roles(&self, via: usize) -> Option<Vec<(String, bool)>> {
        let ch = self.ch(via);
        let resp = self.rt.block_on(async move {
            tokio::time::timeout(
                QUICK_TIMEOUT,
                ClusterClient::new(ch).member_list(MemberListRequest { linearizable: true }),
            )
            .await
            .ok()?
            .ok()
        })?;
        let mut roles: Vec<(String, bool)> = resp
            .into_inner()
            .members
            .into_iter()
            .map(|m| (m.name, !m.is_learner))
            .collect();
        roles.sort();
        Some(roles)
    }

    /// Waits until the member list shows `voters` voters and `standbys` standbys, none of
    /// them named in `absent`.
    fn wait_roles(&self, voters: usize, standbys: usize, absent: &[&str]) -> Vec<(String, bool)> {
        let start = Instant::now();
        let mut last = None;
        loop {
            for via in self.in_cluster() {
                if let Some(r) = self.roles(via) {
                    let v = r.iter().filter(|(_, voter)| *voter).count();
                    if v == voters
                        && r.len() - v == standbys
                        && r.iter().all(|(n, _)| !absent.contains(&n.as_str()))
                    {
                        return r;
                    }
                    last = Some(r);
                    break;
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "waited {DEADLINE:?} for {voters} voters and {standbys} standbys without {absent:?}; last member list: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A member to hit: the leader half of the time, otherwise any member.
    fn target(&self, rng: &mut impl Rng) -> (usize, bool) {
        let leader = self.leader();
        if let (Some(l), true) = (leader, rng.random_bool(0.5)) {
            return (l, true);
        }
        let members = self.in_cluster();
        let t = *members.choose(rng).expect("members");
        (t, Some(t) == leader)
    }

    /// Heals the network and wakes every stopped member (idempotent; for the end of the run).
    fn heal_everything(&mut self) {
        self.lab.heal_all().expect("heal the network");
        for slot in self.in_cluster() {
            if self.members[slot].node().is_running() {
                self.members[slot].signal(libc::SIGCONT);
            } else {
                self.members[slot]
                    .node()
                    .restart()
                    .expect("start a member that was down");
            }
        }
        self.settle();
    }
}

// ---------------------------------------------------------------------------------------------
// The nemesis
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill9,
    Stop,
    GracefulRestart,
    Isolate,
    CutLink,
    CutOneWay,
    Join,
    Remove,
}

const ORDINARY: [Fault; 6] = [
    Fault::Kill9,
    Fault::Stop,
    Fault::GracefulRestart,
    Fault::Isolate,
    Fault::CutLink,
    Fault::CutOneWay,
];

#[derive(Default)]
struct NemesisLog {
    /// "at, what" lines, for the summary.
    lines: Vec<String>,
    counts: BTreeMap<Fault, u32>,
    /// Longest time a restarted member took to serve again.
    slowest_recovery: Duration,
    /// Administrative steps that failed once and were retried.
    transient: Vec<String>,
}

/// Attempts at an administrative step (token, join, removal).
const ADMIN_ATTEMPTS: usize = 3;

/// Runs an administrative step the way an operator would: one that fails (the cluster may
/// still be recovering from the previous fault) is retried a second later, up to
/// `ADMIN_ATTEMPTS` times in all. Failures are printed and kept for the summary.
fn retried<T>(
    what: &str,
    transient: &mut Vec<String>,
    mut step: impl FnMut() -> Result<T, String>,
) -> T {
    let mut attempt = 1;
    loop {
        match step() {
            Ok(v) => return v,
            Err(e) if attempt < ADMIN_ATTEMPTS => {
                eprintln!(
                    "nemesis: {} {what} failed (attempt {attempt}), retrying: {e}",
                    utc_now()
                );
                transient.push(format!("{what}: {e}"));
                std::thread::sleep(Duration::from_secs(1));
                attempt += 1;
            }
            Err(e) => panic!("{what} failed {ADMIN_ATTEMPTS} times; the last time: {e}"),
        }
    }
}

impl NemesisLog {
    /// Records a fault that began `at` into the run, at wall-clock time `utc` (printed at
    /// once, to match the members' logs if the test fails later).
    fn note(&mut self, at: Duration, utc: &str, fault: Fault, what: String) {
        *self.counts.entry(fault).or_default() += 1;
        eprintln!("nemesis: {utc} {what}");
        self.lines.push(format!("{:6.1}s {what}", at.as_secs_f64()));
    }
}

/// Wall-clock time of day in UTC (`hh:mm:ss.mmm`), as the members' logs show it.
fn utc_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = t.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        t.subsec_millis()
    )
}

/// Runs faults one after another until `stop_at`; each one is healed (and the cluster serves
/// through every member again) before the next.
fn nemesis(
    cluster: &mut Cluster,
    rec: &Record,
    began: Instant,
    stop_at: Instant,
    max_joins: usize,
) -> NemesisLog {
    let mut rng = rand::rng();
    let mut log = NemesisLog::default();
    let total = stop_at.saturating_duration_since(Instant::now());
    let mut joins = 0;
    let mut removals = 0;
    let mut deck: Vec<Fault> = Vec::new();
    // Let the clients get going first.
    std::thread::sleep(Duration::from_millis(500));
    loop {
        let pending_join = joins == removals && joins < max_joins;
        let pending_removal = joins > removals;
        // A run always has its membership changes: on a slow machine the first faults can take
        // the whole window to heal, so the deadline waits for one join and one removal.
        let owed = (joins == 0 && max_joins > 0) || pending_removal && removals == 0;
        if Instant::now() + Duration::from_millis(1500) >= stop_at && !owed {
            break;
        }
        let elapsed = total.saturating_sub(stop_at.saturating_duration_since(Instant::now()));
        // Membership changes alternate. The first join and removal are forced at 15% and 45%
        // of the run, so that a short run always has both; later ones (in longer soaks) are a
        // card of the deck.
        let fault = if pending_join && joins == 0 && elapsed >= total * 15 / 100 {
            Fault::Join
        } else if pending_removal && removals == 0 && elapsed >= total * 45 / 100 {
            Fault::Remove
        } else {
            // Draw from a shuffled deck, so a short run sees every kind of fault.
            if deck.is_empty() {
                deck = ORDINARY.to_vec();
                if removals > 0 {
                    deck.push(Fault::Join);
                }
                deck.shuffle(&mut rng);
            }
            match deck.pop().expect("a fault") {
                Fault::Join if pending_join => Fault::Join,
                Fault::Join if pending_removal => Fault::Remove,
                Fault::Join => continue,
                f => f,
            }
        };
        let at = began.elapsed();
        let utc = utc_now();
        match fault {
            Fault::Kill9 => {
                let (t, leader) = cluster.target(&mut rng);
                rec.set_phase("kill -9", leader);
                let down = Duration::from_millis(rng.random_range(100..1500));
                cluster.members[t].node().kill9();
                std::thread::sleep(down);
                let t0 = Instant::now();
                cluster.members[t]
                    .node()
                    .restart()
                    .expect("restart after kill -9");
                cluster.wait_serving(t);
                let back = t0.elapsed();
                log.slowest_recovery = log.slowest_recovery.max(back);
                log.note(
                    at,
                    &utc,
                    fault,
                    format!(
                        "kill -9 {}{}, down {down:.1?}, serving {back:.1?} after restart",
                        cluster.members[t].name,
                        if leader { " (leader)" } else { "" }
                    ),
                );
            }
            Fault::Stop => {
                let (t, leader) = cluster.target(&mut rng);
                rec.set_phase("SIGSTOP", leader);
                let pause = Duration::from_millis(rng.random_range(1000..3000));
                cluster.members[t].signal(libc::SIGSTOP);
                std::thread::sleep(pause);
                cluster.members[t].signal(libc::SIGCONT);
                log.note(
                    at,
                    &utc,
                    fault,
                    format!(
                        "SIGSTOP {}{} for {pause:.1?}",
                        cluster.members[t].name,
                        if leader { " (leader)" } else { "" }
                    ),
                );
            }
            Fault::GracefulRestart => {
                let (t, leader) = cluster.target(&mut rng);
                rec.set_phase("graceful restart", leader);
                let name = cluster.members[t].name.clone();
                let t0 = Instant::now();
                let status = cluster.members[t].node().sigterm();
                let shutdown = t0.elapsed();
                assert!(
                    status.as_ref().is_ok_and(|s| s.success()),
                    "{name} did not shut down cleanly on SIGTERM: {status:?}"
                );
                let t0 = Instant::now();
                cluster.members[t]
                    .node()
                    .restart()
                    .expect("start after SIGTERM");
                cluster.wait_serving(t);
                let back = t0.elapsed();
                log.slowest_recovery = log.slowest_recovery.max(back);
                log.note(
                    at,
                    &utc,
                    fault,
                    format!(
                        "graceful restart of {name}{}: exited {shutdown:.1?} after SIGTERM, serving {back:.1?} after restart",
                        if leader { " (leader)" } else { "" }
                    ),
                );
            }
            Fault::Isolate | Fault::CutLink | Fault::CutOneWay => {
                let (t, leader) = cluster.target(&mut rng);
                rec.set_phase("partition", leader);
                let other = cluster.pool.other(t);
                let pause = Duration::from_millis(rng.random_range(1000..3000));
                let (a, b) = (
                    cluster.members[t].name.clone(),
                    cluster.members[other].name.clone(),
                );
                let what = match fault {
                    Fault::Isolate => {
                        cluster.lab.isolate(t).expect("isolate");
                        format!("isolated {a}")
                    }
                    Fault::CutLink => {
                        cluster.lab.cut(t, other).expect("cut");
                        format!("cut {a} <-> {b}")
                    }
                    _ => {
                        cluster.lab.cut_one_way(t, other).expect("cut one way");
                        format!("cut {a} -> {b}")
                    }
                };
                std::thread::sleep(pause);
                cluster.lab.heal_all().expect("heal");
                log.note(
                    at,
                    &utc,
                    fault,
                    format!(
                        "{what}{} for {pause:.1?}",
                        if leader {
                            format!(" ({a} leads)")
                        } else {
                            String::new()
                        }
                    ),
                );
            }
            Fault::Join => {
                let via = *cluster.in_cluster().choose(&mut rng).expect("members");
                rec.set_phase("join", false);
                let token = retried("tugboat token create", &mut log.transient, || {
                    cluster.token(via)
                });
                let slot = cluster.members.len();
                let join = JoinSpec {
                    peer: cluster.members[via].node().peer_addr().to_string(),
                    token,
                };
                let t0 = Instant::now();
                // A failed join leaves nothing behind; a retry starts afresh.
                let m = retried("tugboatd join", &mut log.transient, || {
                    Member::start(&cluster.lab, slot, Some(join.clone()))
                });
                let name = m.name.clone();
                cluster.add(m);
                cluster.wait_serving(slot);
                cluster.wait_roles(3, 1, &[]);
                joins += 1;
                log.note(
                    at,
                    &utc,
                    fault,
                    format!(
                        "{name} joined through {} and serves as a standby after {:.1?}",
                        cluster.members[via].name,
                        t0.elapsed()
                    ),
                );
            }
            Fault::Remove => {
                let (victim, leader) = cluster.target(&mut rng);
                rec.set_phase("removal", leader);
                let name = cluster.members[victim].name.clone();
                let via = cluster.pool.other(victim);
                // Clients stop picking it; those on it fail over when it goes.
                cluster.pool.slots.lock().expect("pool")[victim].in_cluster = false;
                let t0 = Instant::now();
                let mut again = false;
                retried("tugboat node remove", &mut log.transient, || {
                    let out = cluster.members[via]
                        .node()
                        .cli(&["node", "remove", &name])
                        .map_err(|e| e.to_string())?;
                    // A retry may find the first attempt did remove it.
                    let gone = again && out.stderr.contains("no member or worker is called");
                    again = true;
                    if out.success() || gone {
                        Ok(())
                    } else {
                        Err(format!("{}{}", out.stdout, out.stderr).trim().to_string())
                    }
                });
                let roles = cluster.wait_roles(3, 0, &[&name]);
                let node = cluster.members[victim].node.take().expect("running");
                cluster.removed.push(Removed::watch(name.clone(), node, t0));
                removals += 1;
                log.note(
                    at,
                    &utc,
                    fault,
                    format!(
                        "removed {name}{}: three voters again after {:.1?} ({roles:?})",
                        if leader { " (leader)" } else { "" },
                        t0.elapsed()
                    ),
                );
            }
        }
        rec.set_phase("recovery", false);
        let (settled, last) = cluster.settle();
        rec.set_phase("calm", false);
        if settled > Duration::from_secs(1) {
            let note = format!("every member serves again {settled:.1?} later (the last: {last})");
            eprintln!("nemesis: {} {note}", utc_now());
            if let Some(line) = log.lines.last_mut() {
                line.push_str(&format!("; {note}"));
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(100..500)));
    }
    log
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Everything the clients record.
struct Record {
    began: Instant,
    history: Mutex<Vec<Event>>,
    /// Acknowledged writes with the revision their response named.
    acked: Mutex<Vec<WatchEvent>>,
    /// What reads returned, with the `mod_revision` of the value.
    observed: Mutex<Vec<WatchEvent>>,
    switches: AtomicU64,
    /// Failed operations by kind, error and phase: (count, fastest, slowest failure).
    errors: Mutex<BTreeMap<String, (u32, Duration, Duration)>>,
    /// What the nemesis is doing: a fault, "recovery" (healed, not every member serves yet)
    /// or "calm".
    phase: Mutex<String>,
}

impl Record {
    fn now(&self) -> u64 {
        self.began.elapsed().as_nanos() as u64
    }

    fn push(&self, e: Event) {
        self.history.lock().expect("history").push(e);
    }

    fn set_phase(&self, what: &str, leader: bool) {
        *self.phase.lock().expect("phase") = if leader {
            format!("{what} of the leader")
        } else {
            what.to_string()
        };
    }

    /// Tallies a failed operation (`call` and `ret` as from [`Record::now`]).
    fn failed<T>(
        &self,
        op: &str,
        resp: &Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>,
        call: u64,
        ret: u64,
    ) {
        let phase = self.phase.lock().expect("phase").clone();
        let what = match resp {
            Ok(Ok(_)) => return,
            Ok(Err(status)) => format!(
                "{op}: {:?} {:?} during {phase}",
                status.code(),
                status.message()
            ),
            Err(_) => format!("{op}: no answer within {REQUEST_TIMEOUT:?} during {phase}"),
        };
        let took = Duration::from_nanos(ret.saturating_sub(call));
        let mut errors = self.errors.lock().expect("errors");
        let e = errors.entry(what).or_insert((0, took, took));
        e.0 += 1;
        e.1 = e.1.min(took);
        e.2 = e.2.max(took);
    }
}

fn key_name(k: usize) -> Vec<u8> {
    format!("{PREFIX}{k}").into_bytes()
}

/// After a failed operation: waits until member `cur` serves again, or moves to another member
/// if it does not within 1.5 s or has left the cluster. Each client thus leaves at most one
/// operation of unknown outcome per outage (each multiplies the checker's search space).
async fn find_serving(pool: &Pool, rec: &Record, mut cur: usize, stop_at: Instant) -> usize {
    let mut since = Instant::now();
    while Instant::now() < stop_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let slot = pool.get(cur);
        if slot.in_cluster && serves(slot.channel).await {
            return cur;
        }
        if !slot.in_cluster || since.elapsed() > Duration::from_millis(1500) {
            cur = pool.other(cur);
            rec.switches.fetch_add(1, Ordering::Relaxed);
            since = Instant::now();
        }
    }
    cur
}

async fn client(c: usize, pool: Arc<Pool>, rec: Arc<Record>, stop_at: Instant) {
    let members = pool.in_cluster();
    let mut cur = members[c % members.len()];
    let mut seq = 0u64;
    while Instant::now() < stop_at {
        // Now and then move to another member, so joined members get clients too.
        if rand::rng().random_ratio(1, 100) {
            cur = pool.other(cur);
        }
        let slot = pool.get(cur);
        if !slot.in_cluster {
            cur = find_serving(&pool, &rec, cur, stop_at).await;
            continue;
        }
        let mut kv = kv(slot.channel);
        let k = rand::rng().random_range(0..KEYS);
        let key = key_name(k);
        let roll: u8 = rand::rng().random_range(0..10);
        let call = rec.now();
        let ok = if roll < 4 {
            let value = format!("c{c}-{seq}").into_bytes();
            seq += 1;
            let req = PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            };
            let resp = tokio::time::timeout(REQUEST_TIMEOUT, kv.put(req)).await;
            let ret = rec.now();
            let ok = match resp {
                Ok(Ok(resp)) => {
                    let revision = resp.into_inner().header.map_or(0, |h| h.revision);
                    rec.acked.lock().expect("acked").push(WatchEvent {
                        revision,
                        key: key.clone(),
                        value: Some(value.clone()),
                    });
                    true
                }
                other => {
                    rec.failed("put", &other, call, ret);
                    false
                }
            };
            rec.push(Event {
                key,
                op: Op::Write(value),
                call,
                ret: ok.then_some(ret),
            });
            ok
        } else if roll < 5 {
            let req = DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            let resp = tokio::time::timeout(REQUEST_TIMEOUT, kv.delete_range(req)).await;
            let ret = rec.now();
            let ok = match resp {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    if resp.deleted > 0 {
                        rec.acked.lock().expect("acked").push(WatchEvent {
                            revision: resp.header.map_or(0, |h| h.revision),
                            key: key.clone(),
                            value: None,
                        });
                    }
                    true
                }
                other => {
                    rec.failed("delete", &other, call, ret);
                    false
                }
            };
            rec.push(Event {
                key,
                op: Op::Delete,
                call,
                ret: ok.then_some(ret),
            });
            ok
        } else {
            let req = RangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            let resp = tokio::time::timeout(REQUEST_TIMEOUT, kv.range(req)).await;
            let ret = rec.now();
            match resp {
                Ok(Ok(resp)) => {
                    let found = resp.into_inner().kvs.into_iter().next();
                    if let Some(found) = &found {
                        rec.observed.lock().expect("observed").push(WatchEvent {
                            revision: found.mod_revision,
                            key: key.clone(),
                            value: Some(found.value.clone()),
                        });
                    }
                    rec.push(Event {
                        key,
                        op: Op::Read(found.map(|f| f.value)),
                        call,
                        ret: Some(ret),
                    });
                    true
                }
                // A failed read has no effect and tells nothing: not in the history.
                other => {
                    rec.failed("read", &other, call, ret);
                    false
                }
            }
        };
        if !ok {
            cur = find_serving(&pool, &rec, cur, stop_at).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watches
// ---------------------------------------------------------------------------------------------

/// What a resuming watcher saw.
#[derive(Debug, Default)]
struct WatchLog {
    events: Vec<WatchEvent>,
    /// Streams that broke or could not be opened (each followed by a resume elsewhere).
    breaks: u32,
    problems: Vec<String>,
    /// Member the watcher was on last.
    last_member: String,
}

fn watch_event(ev: tugboat_store::pb::mvccpb::Event) -> Result<WatchEvent, String> {
    let kv = ev.kv.ok_or("event without kv")?;
    let value = if ev.r#type == EventType::Delete as i32 {
        None
    } else {
        Some(kv.value)
    };
    Ok(WatchEvent {
        revision: kv.mod_revision,
        key: kv.key,
        value,
    })
}

/// Opens a watch of `key..range_end` from `start` and appends its events to `out` until the
/// stream breaks (Ok(false)) or `done` says the last revision wanted has arrived (Ok(true)).
async fn watch_once(
    ch: Channel,
    key: &[u8],
    range_end: &[u8],
    start: i64,
    done: &mut signal::Receiver<Option<i64>>,
    out: &mut Vec<WatchEvent>,
) -> Result<bool, String> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            start_revision: start,
            ..Default::default()
        })),
    })
    .await
    .map_err(|_| "request stream closed")?;
    let opened = tokio::time::timeout(
        QUICK_TIMEOUT,
        WatchClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE)
            .watch(ReceiverStream::new(rx)),
    )
    .await;
    let mut stream = match opened {
        Ok(Ok(s)) => s.into_inner(),
        Ok(Err(_)) | Err(_) => return Ok(false),
    };
    loop {
        let target = *done.borrow();
        if let Some(t) = target {
            if out.last().map_or(0, |e| e.revision) >= t {
                return Ok(true);
            }
        }
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    Ok(None) | Err(_) => return Ok(false),
                };
                if resp.canceled {
                    return Err(format!(
                        "watch from {start} canceled: {:?} (compact revision {})",
                        resp.cancel_reason, resp.compact_revision
                    ));
                }
                for ev in resp.events {
                    out.push(watch_event(ev)?);
                }
            }
            changed = done.changed(), if target.is_none() => {
                if changed.is_err() {
                    return Ok(true);
                }
            }
        }
    }
}

/// Watches PREFIX from revision 1 starting on member `first`; whenever the stream breaks it
/// resumes at `last seen + 1` on another member of the cluster.
async fn watcher(
    pool: Arc<Pool>,
    first: usize,
    mut done: signal::Receiver<Option<i64>>,
) -> WatchLog {
    let mut log = WatchLog::default();
    let mut cur = first;
    let key = PREFIX.as_bytes().to_vec();
    let end = prefix_end(&key);
    loop {
        let start = log.events.last().map_or(1, |e| e.revision + 1);
        let slot = pool.get(cur);
        log.last_member = slot.name.clone();
        match watch_once(slot.channel, &key, &end, start, &mut done, &mut log.events).await {
            Ok(true) => return log,
            Ok(false) => {
                log.breaks += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                cur = pool.other(cur);
            }
            Err(e) => {
                log.problems.push(e);
                return log;
            }
        }
    }
}

/// The whole keyspace's history on member `ch`: every event from revision 1 through `last`.
async fn replay(ch: Channel, last: i64) -> Result<Vec<WatchEvent>, String> {
    let (_tx, mut done) = signal::channel(Some(last));
    let mut out = Vec::new();
    let whole = [0u8];
    let finished = tokio::time::timeout(
        DEADLINE,
        watch_once(ch, &whole, &whole, 1, &mut done, &mut out),
    )
    .await;
    match finished {
        Ok(Ok(true)) => {
            out.retain(|e| e.revision <= last);
            Ok(out)
        }
        Ok(Ok(false)) => Err(format!("stream broke after {} events", out.len())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "only {} events (up to revision {}) within {DEADLINE:?}",
            out.len(),
            out.last().map_or(0, |e| e.revision)
        )),
    }
}

/// Writes the operations on `key`, by invocation time, to a file that outlives the test.
fn dump_history(history: &[Event], key: &[u8]) -> PathBuf {
    let mut ops: Vec<&Event> = history.iter().filter(|e| e.key == key).collect();
    ops.sort_by_key(|e| e.call);
    let show = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut text = String::from("# call_ms ret_ms op (ret - : outcome unknown)\n");
    for e in ops {
        let ret = e
            .ret
            .map_or("-".to_string(), |r| format!("{:.3}", r as f64 / 1e6));
        let op = match &e.op {
            Op::Write(v) => format!("put {}", show(v)),
            Op::Delete => "delete".to_string(),
            Op::Read(Some(v)) => format!("read {}", show(v)),
            Op::Read(None) => "read (none)".to_string(),
        };
        text.push_str(&format!("{:.3} {ret} {op}\n", e.call as f64 / 1e6));
    }
    let path = std::env::temp_dir().join(format!(
        "tugboat-nemesis-{}-{}.txt",
        std::process::id(),
        String::from_utf8_lossy(key).replace('/', "_")
    ));
    std::fs::write(&path, text).expect("write the history dump");
    path
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn history_under_nemesis_is_linearizable_and_watches_are_complete() {
    let secs: u64 = std::env::var("TUGBOAT_NEMESIS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    let max_joins = (secs / 20).max(1) as usize;
    let t_form = Instant::now();
    let mut cluster = Cluster::start(3 + max_joins);
    let formed = t_form.elapsed();

    let began = Instant::now();
    let stop_at = began + Duration::from_secs(secs);
    let rec = Arc::new(Record {
        began,
        history: Mutex::default(),
        acked: Mutex::default(),
        observed: Mutex::default(),
        switches: AtomicU64::new(0),
        errors: Mutex::default(),
        phase: Mutex::new("calm".into()),
    });
    let (done_tx, done_rx) = signal::channel(None);
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|w| {
            cluster
                .rt
                .spawn(watcher(cluster.pool.clone(), w, done_rx.clone()))
        })
        .collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            cluster
                .rt
                .spawn(client(c, cluster.pool.clone(), rec.clone(), stop_at))
        })
        .collect();

    let faults = nemesis(&mut cluster, &rec, began, stop_at, max_joins);
    for c in clients {
        cluster.rt.block_on(c).expect("client task");
    }
    let ran = began.elapsed();

    // Heal everything, then read every key through every member.
    cluster.heal_everything();
    let removals = cluster.wait_removed();
    let members = cluster.in_cluster();
    let mut final_rev = 0;
    let mut final_retries = Vec::new();
    for &m in &members {
        for k in 0..KEYS {
            let key = key_name(k);
            let t0 = Instant::now();
            // A failed read has no effect: retried (and not recorded) until one answers.
            let (call, resp, ret) = loop {
                let call = rec.now();
                let ch = cluster.ch(m);
                let req = RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                let resp = cluster.rt.block_on(async move {
                    match tokio::time::timeout(REQUEST_TIMEOUT, kv(ch).range(req)).await {
                        Ok(Ok(resp)) => Ok(resp.into_inner()),
                        Ok(Err(status)) => Err(status.to_string()),
                        Err(_) => Err("timed out".to_string()),
                    }
                });
                let name = &cluster.members[m].name;
                match resp {
                    Ok(resp) => break (call, resp, rec.now()),
                    Err(e) if t0.elapsed() < DEADLINE => {
                        eprintln!(
                            "nemesis: {} final read through {name} failed: {e}",
                            utc_now()
                        );
                        final_retries.push(format!("final read through {name}: {e}"));
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("final reads through {name} fail for {DEADLINE:?}: {e}"),
                }
            };
            final_rev = final_rev.max(resp.header.map_or(0, |h| h.revision));
            let found = resp.kvs.into_iter().next();
            if let Some(f) = &found {
                rec.observed.lock().expect("observed").push(WatchEvent {
                    revision: f.mod_revision,
                    key: key.clone(),
                    value: Some(f.value.clone()),
                });
            }
            rec.push(Event {
                key,
                op: Op::Read(found.map(|f| f.value)),
                call,
                ret: Some(ret),
            });
        }
    }

    // Every member's history of the whole keyspace, from revision 1.
    let t_replay = Instant::now();
    let mut reference: Option<(String, Vec<WatchEvent>)> = None;
    for &m in &members {
        let name = cluster.members[m].name.clone();
        let events = cluster
            .rt
            .block_on(replay(cluster.ch(m), final_rev))
            .unwrap_or_else(|e| {
                panic!("replaying {name}'s history up to revision {final_rev}: {e}")
            });
        let first = events.first().map_or(0, |e| e.revision);
        assert!(first <= 2, "{name}'s history starts at revision {first}");
        if let Err(e) = check_watch_revisions(&events, first, final_rev) {
            panic!("{name}'s history (watch from revision 1 of the whole keyspace): {e}");
        }
        match &reference {
            None => reference = Some((name, events)),
            Some((ref_name, ref_events)) => {
                if let Err(e) = check_watch_stream(&events, ref_events) {
                    panic!("{name}'s history differs from {ref_name}'s: {e}");
                }
            }
        }
    }
    let (_, history_all) = reference.expect("a member");
    let first_rev = history_all.first().map_or(0, |e| e.revision);
    let replayed = t_replay.elapsed();
    let prefix_history: Vec<WatchEvent> = history_all
        .iter()
        .filter(|e| e.key.starts_with(PREFIX.as_bytes()))
        .cloned()
        .collect();

    // Nothing acknowledged is lost; every value read was really written at its mod_revision.
    let acked = std::mem::take(&mut *rec.acked.lock().expect("acked"));
    let observed = std::mem::take(&mut *rec.observed.lock().expect("observed"));
    if let Err(e) = check_events_present(&prefix_history, &acked) {
        panic!("acknowledged writes missing from the store's history: {e}");
    }
    if let Err(e) = check_events_present(&prefix_history, &observed) {
        panic!("reads returned values the store's history does not hold: {e}");
    }

    // The watchers delivered exactly that history.
    let last_prefix_rev = prefix_history.last().map_or(0, |e| e.revision);
    done_tx.send_replace(Some(last_prefix_rev));
    let mut watch_summary = Vec::new();
    for (w, handle) in watchers.into_iter().enumerate() {
        let log = cluster
            .rt
            .block_on(async { tokio::time::timeout(DEADLINE, handle).await })
            .unwrap_or_else(|_| {
                panic!("watcher {w} did not reach revision {last_prefix_rev} within {DEADLINE:?}")
            })
            .expect("watcher task");
        assert!(log.problems.is_empty(), "watcher {w}: {:?}", log.problems);
        if let Err(e) = check_watch_stream(&log.events, &prefix_history) {
            panic!(
                "watcher {w} ({} breaks, last on {}) delivered a stream that is not the history: {e}",
                log.breaks, log.last_member
            );
        }
        watch_summary.push(format!(
            "watcher {w}: {} events, resumed {} times",
            log.events.len(),
            log.breaks
        ));
        // Seeded faults in a real stream must be caught.
        if log.events.len() > 2 {
            let mut gap = log.events.clone();
            gap.remove(gap.len() / 2);
            assert!(
                check_watch_stream(&gap, &prefix_history).is_err(),
                "a gap went unnoticed"
            );
            let mut dup = log.events.clone();
            dup.insert(dup.len() / 2, dup[dup.len() / 2].clone());
            assert!(
                check_watch_stream(&dup, &prefix_history).is_err(),
                "a duplicate went unnoticed"
            );
        }
    }

    // Linearizability of the clients' history.
    let history = std::mem::take(&mut *rec.history.lock().expect("history"));
    let unknown = history.iter().filter(|e| e.ret.is_none()).count();
    let reads = history
        .iter()
        .filter(|e| matches!(e.op, Op::Read(_)))
        .count();
    let t_check = Instant::now();
    let verdict = check(&history);
    let check_time = t_check.elapsed();

    let client_errors = {
        let errors = rec.errors.lock().expect("errors");
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors
                .iter()
                .map(|(what, (n, fast, slow))| {
                    format!("\n  {n} x {what} (after {fast:.1?} to {slow:.1?})")
                })
                .collect::<String>()
        }
    };
    let fault_counts: Vec<String> = faults
        .counts
        .iter()
        .map(|(f, n)| format!("{f:?} {n}"))
        .collect();
    eprintln!(
        "nemesis: cluster formed in {formed:.1?}; {secs} s of load ({ran:.1?} with the last fault)\n\
         faults ({}): {}\n  {}\n\
         slowest return to service after a restart: {:.1?}; {}\n\
         retried after a failure: {}\n\
         client errors: {}\n\
         operations: {} ({reads} reads, {} writes and deletes, {unknown} with unknown outcome), {} acknowledged writes, {} client fail-overs\n\
         store: revisions {first_rev}..={final_rev}, {} changes on {PREFIX}; all {} members agree (replayed in {replayed:.1?})\n\
         {}\n\
         linearizability check: {verdict:?} in {check_time:.1?}",
        faults.lines.len(),
        fault_counts.join(", "),
        faults.lines.join("\n  "),
        faults.slowest_recovery,
        removals.join(", "),
        if faults.transient.is_empty() && final_retries.is_empty() {
            "nothing".to_string()
        } else {
            [faults.transient.as_slice(), final_retries.as_slice()]
                .concat()
                .join("; ")
        },
        client_errors,
        history.len(),
        history.len() - reads - unknown,
        acked.len(),
        rec.switches.load(Ordering::Relaxed),
        prefix_history.len(),
        members.len(),
        watch_summary.join("; "),
    );
    assert!(
        history.len() > 200,
        "too few operations to mean anything: {}",
        history.len()
    );
    assert!(faults.counts.contains_key(&Fault::Join), "no member joined");
    assert!(
        faults.counts.contains_key(&Fault::Remove),
        "no member was removed"
    );
    if verdict != Verdict::Linearizable {
        let key = match &verdict {
            Verdict::Violation { key, .. } | Verdict::Unknown { key } => key.clone(),
            Verdict::Linearizable => unreachable!(),
        };
        let dump = dump_history(&history, &key);
        panic!(
            "the history is not linearizable: {verdict:?} on key {}; its operations are in {}",
            String::from_utf8_lossy(&key),
            dump.display()
        );
    }

    // A seeded stale read must make the checker fail: after everything, one more read of a key
    // returns a value an acknowledged write put there before the final reads saw another one.
    let stale = history.iter().rev().find_map(|last_read| {
        let Op::Read(seen) = &last_read.op else {
            return None;
        };
        history.iter().find_map(|w| match &w.op {
            Op::Write(v)
                if w.key == last_read.key && w.ret.is_some() && Some(v) != seen.as_ref() =>
            {
                Some((w.key.clone(), v.clone()))
            }
            _ => None,
        })
    });
    let (key, value) = stale.expect("a key with an overwritten acknowledged write");
    let mut seeded = history;
    let at = rec.now();
    seeded.push(Event {
        key,
        op: Op::Read(Some(value)),
        call: at,
        ret: Some(at + 1),
    });
    assert!(
        matches!(check(&seeded), Verdict::Violation { .. }),
        "the checker accepted a history with a stale read"
    );
}
