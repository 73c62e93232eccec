//! Process harness for integration tests: starts `tugboatd` or Debian's etcd 3.4 on
//! loopback ports in a temporary directory, and runs the real `etcdctl` against them.
//!
//! Everything here fails loudly: a missing binary, a server that never becomes healthy
//! or a child that dies early all come back as a [`HarnessError`] whose message carries
//! what a person needs to fix it (the command to build or install, the log tail).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Path of Debian's etcd server binary (package `etcd-server`).
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// Path of Debian's etcdctl binary (package `etcd-client`).
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

/// How long a freshly started server may take to answer `endpoint health`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd server may take to exit before it is killed and reported.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// etcdctl `--command-timeout` used by default; generous because the machine is noisy.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything that can go wrong while driving server processes or etcdctl.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A binary the tests need is not where it should be.
    #[error("{what} not found at {path}: {hint}")]
    MissingBinary {
        /// Human name of the binary.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// Creating temp dirs, log files or binding probe sockets failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server process exited while the harness waited for it to become ready.
    #[error("{name} exited early with {status} before becoming healthy; log tail:\n{log_tail}")]
    ExitedEarly {
        /// Node name.
        name: String,
        /// How it exited.
        status: ExitStatus,
        /// Last lines of its stdout/stderr.
        log_tail: String,
    },
    /// The server never answered `endpoint health` within the deadline.
    #[error(
        "{name} did not become healthy within {waited:?} (last etcdctl: {last_probe}); log tail:\n{log_tail}"
    )]
    NotReady {
        /// Node name.
        name: String,
        /// How long the harness waited.
        waited: Duration,
        /// Output of the last health probe.
        last_probe: String,
        /// Last lines of its stdout/stderr.
        log_tail: String,
    },
    /// A SIGTERM'd server did not exit in time (it has been SIGKILLed since).
    #[error("{name} did not exit within {waited:?} after SIGTERM; log tail:\n{log_tail}")]
    ShutdownTimeout {
        /// Node name.
        name: String,
        /// How long the harness waited.
        waited: Duration,
        /// Last lines of its stdout/stderr.
        log_tail: String,
    },
    /// A clean shutdown (during restart) ended with a non-zero exit.
    #[error("{name} exited with {status} after SIGTERM (expected 0); log tail:\n{log_tail}")]
    UncleanShutdown {
        /// Node name.
        name: String,
        /// How it exited.
        status: ExitStatus,
        /// Last lines of its stdout/stderr.
        log_tail: String,
    },
    /// An operation needs a running process but the node is stopped.
    #[error("{0} is not running")]
    NotRunning(String),
    /// An etcdctl command that had to succeed failed.
    #[error("etcdctl {args:?} failed with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}")]
    EtcdctlFailed {
        /// Arguments after the endpoint flags.
        args: Vec<String>,
        /// Exit status.
        status: ExitStatus,
        /// Captured stdout.
        stdout: String,
        /// Captured stderr.
        stderr: String,
    },
    /// A spawned etcdctl (e.g. `watch`) did not print the expected lines in time.
    #[error("etcdctl child produced {got} of {wanted} expected lines within {waited:?}; lines so far:\n{lines}\nstderr:\n{stderr}")]
    ChildOutputTimeout {
        /// Lines received.
        got: usize,
        /// Lines expected.
        wanted: usize,
        /// How long the harness waited.
        waited: Duration,
        /// Lines received so far.
        lines: String,
        /// Child's stderr so far (read after killing it).
        stderr: String,
    },
    /// The environment selects an unknown test target.
    #[error("TUGBOAT_TEST_TARGET={0:?} is not one of: tugboat, etcd")]
    UnknownTarget(String),
}

/// Result alias for harness operations.
pub type Result<T> = std::result::Result<T, HarnessError>;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}

/// Which server implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// The system under test.
    Tugboat,
    /// Debian's etcd 3.4 reference server.
    Etcd,
}

impl TargetKind {
    /// Reads `TUGBOAT_TEST_TARGET` (`tugboat` when unset, or `etcd`); any other value is an error.
    pub fn from_env() -> Result<Self> {
        match std::env::var("TUGBOAT_TEST_TARGET") {
            Err(_) => Ok(TargetKind::Tugboat),
            Ok(v) if v.is_empty() || v == "tugboat" => Ok(TargetKind::Tugboat),
            Ok(v) if v == "etcd" => Ok(TargetKind::Etcd),
            Ok(v) => Err(HarnessError::UnknownTarget(v)),
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetKind::Tugboat => f.write_str("tugboat"),
            TargetKind::Etcd => f.write_str("etcd"),
        }
    }
}

/// The two-worker tokio runtime the synchronous fault tests drive their clients on.
pub fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

/// Picks `n` distinct free loopback ports, all held until every port is chosen.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Ports below Linux's ephemeral range (32768–60999): between this probe and the server's
    // bind, an outgoing connection could otherwise be given the same port by the kernel. A
    // cursor per process (starting where the pid says) keeps parallel tests apart.
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..SPAN {
        if ports.len() == n {
            break;
        }
        let port = LOW + CURSOR.fetch_add(1, Ordering::SeqCst) % SPAN;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            ports.push(port as u16);
            held.push(l);
        }
    }
    if ports.len() < n {
        return Err(HarnessError::Io {
            context: format!("finding {n} free ports in {LOW}-{}", LOW + SPAN - 1),
            source: std::io::Error::other("every port is in use"),
        });
    }
    Ok(ports)
}

/// Returns the last `lines` lines of the file at `path` (or a note saying it can't be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Path of the `tugboatd` binary: `$TUGBOATD_BIN`, else `<workspace>/target/<profile>/tugboatd`.
pub fn tugboatd_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("TUGBOATD_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
                Some(d) => PathBuf::from(d),
                None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
            };
            let profile = if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            };
            target_dir.join(profile).join("tugboatd")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::MissingBinary {
            what: "tugboatd",
            path,
            hint: "run `cargo build --workspace --bins` first (or set TUGBOATD_BIN)".into(),
        })
    }
}

/// Polls `f` every 250 ms until it returns `Ok`; panics with the last state after `deadline`.
#[track_caller]
pub fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> std::result::Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() > deadline {
            panic!("{what}: not reached within {deadline:?}; last: {last}");
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// The `tugboat` CLI next to `tugboatd`.
pub fn tugboat_cli_bin() -> Result<PathBuf> {
    let daemon = tugboatd_bin()?;
    let path = daemon.with_file_name("tugboat");
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::MissingBinary {
            what: "tugboat",
            path,
            hint: "run `cargo build --workspace --bins` first".into(),
        })
    }
}

fn require_binary(path: &str, what: &'static str, package: &str) -> Result<PathBuf> {
    let p = PathBuf::from(path);
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::MissingBinary {
            what,
            path: p,
            hint: format!("apt-get install {package}"),
        })
    }
}

/// Client certificate files for the mutual-TLS endpoint.
#[derive(Debug, Clone)]
pub struct TlsClientFiles {
    /// CA certificate that signed the server certificate.
    pub cacert: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Client private key.
    pub key: PathBuf,
}

/// Output of one finished etcdctl run.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout (lossy UTF-8).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8).
    pub stderr: String,
}

impl CmdOutput {
    /// True when etcdctl exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `etcdctl` with `ETCDCTL_API=3`, the given endpoint flags and `args`, feeding `stdin` if given.
pub fn etcdctl(endpoint_args: &[String], args: &[&str], stdin: Option<&str>) -> Result<CmdOutput> {
    let bin = require_binary(ETCDCTL_BIN, "etcdctl", "etcd-client")?;
    let mut cmd = Command::new(bin);
    prepare_etcdctl_env(&mut cmd);
    cmd.args(endpoint_args).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err("spawning etcdctl"))?;
    if let Some(input) = stdin {
        if let Some(mut pipe) = child.stdin.take() {
            // etcdctl may exit before reading everything (e.g. on a parse error): ignore EPIPE.
            let _ = pipe.write_all(input.as_bytes());
        }
    }
    let out = child
        .wait_with_output()
        .map_err(io_err("waiting for etcdctl"))?;
    Ok(CmdOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn prepare_etcdctl_env(cmd: &mut Command) {
    // Stray ETCDCTL_* variables from the developer's shell would silently change flags.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3");
}

/// An etcdctl invocation template bound to one endpoint (plain or mutual TLS).
#[derive(Debug, Clone)]
pub struct Etcdctl {
    endpoint: String,
    tls: Option<TlsClientFiles>,
    command_timeout: Duration,
}

impl Etcdctl {
    /// etcdctl against a plaintext endpoint such as `http://127.0.0.1:2379`.
    pub fn plain(endpoint: impl Into<String>) -> Self {
        Etcdctl {
            endpoint: endpoint.into(),
            tls: None,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// etcdctl against an `https://` endpoint with the given CA and client certificate.
    pub fn tls(endpoint: impl Into<String>, files: TlsClientFiles) -> Self {
        Etcdctl {
            endpoint: endpoint.into(),
            tls: Some(files),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// Same endpoint with another `--command-timeout`.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The endpoint URL this runner targets.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// True when this runner passes client certificate flags.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The flags placed before every command: endpoint, timeout and (for TLS) cert files.
    pub fn endpoint_args(&self) -> Vec<String> {
        let mut v = vec![
            format!("--endpoints={}", self.endpoint),
            format!(
                "--command-timeout={}s",
                self.command_timeout.as_secs().max(1)
            ),
        ];
        if let Some(t) = &self.tls {
            v.push(format!("--cacert={}", t.cacert.display()));
            v.push(format!("--cert={}", t.cert.display()));
            v.push(format!("--key={}", t.key.display()));
        }
        v
    }

    /// Runs one command; a non-zero exit is returned in the output, not as an error.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<CmdOutput> {
        etcdctl(&self.endpoint_args(), args, stdin)
    }

    /// Runs one command that must succeed and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        self.ok_with_stdin(args, None)
    }

    /// Like [`Etcdctl::ok`] with input on stdin (e.g. for `txn`).
    pub fn ok_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(HarnessError::EtcdctlFailed {
                args: args.iter().map(|s| s.to_string()).collect(),
                status: out.status,
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
    }

    /// Starts a long-running etcdctl (e.g. `watch`) whose stdout lines can be read as they come.
    pub fn spawn(&self, args: &[&str]) -> Result<EtcdctlChild> {
        let bin = require_binary(ETCDCTL_BIN, "etcdctl", "etcd-client")?;
        let stderr_file = tempfile::NamedTempFile::new().map_err(io_err("creating stderr file"))?;
        let stderr_handle = stderr_file
            .reopen()
            .map_err(io_err("opening stderr file"))?;
        let mut cmd = Command::new(bin);
        prepare_etcdctl_env(&mut cmd);
        cmd.args(self.endpoint_args()).args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_handle));
        let mut child = cmd.spawn().map_err(io_err("spawning etcdctl"))?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        if let Some(out) = stdout {
            thread::spawn(move || forward_lines(out, tx));
        }
        Ok(EtcdctlChild {
            child,
            lines: rx,
            received: Vec::new(),
            stderr_file,
        })
    }
}

fn forward_lines(out: ChildStdout, tx: mpsc::Sender<String>) {
    let reader = BufReader::new(out);
    for line in reader.lines() {
        match line {
            Ok(l) => {
                if tx.send(l).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// A running etcdctl child (typically `watch`); killed on drop.
pub struct EtcdctlChild {
    child: Child,
    lines: Receiver<String>,
    received: Vec<String>,
    stderr_file: tempfile::NamedTempFile,
}

impl EtcdctlChild {
    /// Waits until at least `n` stdout lines have arrived in total and returns all of them.
    pub fn wait_lines(&mut self, n: usize, deadline: Duration) -> Result<Vec<String>> {
        let start = Instant::now();
        while self.received.len() < n {
            let left = deadline.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.received.push(l),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    self.kill();
                    return Err(HarnessError::ChildOutputTimeout {
                        got: self.received.len(),
                        wanted: n,
                        waited: start.elapsed(),
                        lines: self.received.join("\n"),
                        stderr: self.stderr(),
                    });
                }
            }
        }
        Ok(self.received.clone())
    }

    /// Collects lines that arrive within `quiet` of each other (used to prove nothing extra came).
    pub fn drain_for(&mut self, quiet: Duration) -> Vec<String> {
        while let Ok(l) = self.lines.recv_timeout(quiet) {
            self.received.push(l);
        }
        self.received.clone()
    }

    /// Waits up to `deadline` for the child to exit by itself, collecting its stdout lines.
    ///
    /// Returns the exit status, or None if it was still running at the deadline (it is then killed).
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(io_err("waiting for etcdctl child"))?
            {
                // The reader thread ends at EOF; collect what it still holds.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.received.push(l);
                }
                return Ok(Some(status));
            }
            if start.elapsed() >= deadline {
                self.kill();
                while let Ok(l) = self.lines.try_recv() {
                    self.received.push(l);
                }
                return Ok(None);
            }
            while let Ok(l) = self.lines.try_recv() {
                self.received.push(l);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// All stdout lines received so far.
    pub fn received(&self) -> &[String] {
        &self.received
    }

    /// The child's stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.stderr_file.path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Process id of the child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdctlChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Options for starting a `tugboatd` node.
#[derive(Debug, Clone)]
pub struct TugboatOptions {
    /// `--name` of the node.
    pub name: String,
    /// Extra arguments appended after the standard `run` flags (e.g. join flags).
    pub extra_args: Vec<String>,
    /// Extra environment variables (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Deadline for `endpoint health` after each (re)start.
    pub ready_timeout: Duration,
    /// Join an existing cluster on the first start (`tugboatd join PEER --token TOKEN`); later
    /// starts are `tugboatd run` on the same data dir.
    pub join: Option<JoinSpec>,
    /// Run the node inside a network namespace (e.g. one of a [`crate::netns::NetLab`]) instead
    /// of on loopback ports of the test's own namespace; see [`NetnsPlacement`].
    pub netns: Option<NetnsPlacement>,
    /// Serve the Kubernetes API (`--api-listen`). Off by default: the apiserver writes its
    /// bootstrap objects (namespaces, RBAC defaults) into the store, which etcd-level tests
    /// expect to start empty.
    pub api: bool,
    /// Run the scheduler and controller-manager in `tugboatd` (with the API). Off by default
    /// (`--controllers=off`): tests of one controller run it in-process and must not compete
    /// with the daemon's.
    pub controllers: bool,
}

/// Where a node placed in a network namespace runs and listens.
///
/// The process is started as `ip netns exec NS tugboatd ...`. Its raft peer listener binds
/// `ip:`[`NETNS_PEER_PORT`] and its mutual-TLS etcd listener `ip:`[`NETNS_ETCD_PORT`] (fixed
/// ports: each namespace has its own port space). The plaintext listener and metrics stay on
/// loopback *inside* the namespace, out of the test process's reach, so readiness is probed
/// and [`TugboatNode::etcdctl`] talks over `https://ip:2379` with the admin certificate from
/// the node's own `<data-dir>/pki`.
#[derive(Debug, Clone)]
pub struct NetnsPlacement {
    /// Name of the namespace (as `ip netns list` shows it).
    pub ns: String,
    /// The node's address in that namespace, reachable from the test process.
    pub ip: IpAddr,
}

/// Raft peer port of a node placed in a network namespace.
pub const NETNS_PEER_PORT: u16 = 2380;
/// Mutual-TLS etcd port of a node placed in a network namespace.
pub const NETNS_ETCD_PORT: u16 = 2379;
/// Plaintext etcd port (loopback inside its namespace) of a node placed in a namespace.
pub const NETNS_PLAIN_PORT: u16 = 2378;
/// Metrics port (loopback inside its namespace) of a node placed in a namespace.
pub const NETNS_METRICS_PORT: u16 = 2381;
/// Kubernetes API port of a node placed in a namespace.
pub const NETNS_API_PORT: u16 = 6443;

/// Where and how a node joins.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    /// Peer address of a member (`host:port`).
    pub peer: String,
    /// Token from `tugboat token create`.
    pub token: String,
}

impl Default for TugboatOptions {
    fn default() -> Self {
        TugboatOptions {
            name: "node1".into(),
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            join: None,
            netns: None,
            api: false,
            controllers: false,
        }
    }
}

/// Options for starting a Debian etcd 3.4 node.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `--name` of the member.
    pub name: String,
    /// Extra arguments appended after the standard flags.
    pub extra_args: Vec<String>,
    /// Deadline for `endpoint health` after each (re)start.
    pub ready_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            name: "node1".into(),
            extra_args: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

/// A server process with its temp dir, log file and fixed ports; the shared core of both node kinds.
struct ManagedProcess {
    name: String,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    // Kept for its Drop (deletes the directory); data_dir and log live inside it.
    _root: TempDir,
    data_dir: PathBuf,
    log_path: PathBuf,
    plain_endpoint: String,
    ready_timeout: Duration,
    child: Option<Child>,
    starts: u32,
    // Arguments of the first start only (a join); later starts use `args`.
    first_args: Option<Vec<String>>,
    // What a clean SIGTERM shutdown looks like for this implementation.
    clean_exit: fn(&ExitStatus) -> bool,
    // Readiness probe target; None probes `plain_endpoint` without TLS.
    ready_probe: Option<Etcdctl>,
}

impl ManagedProcess {
    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err(format!("opening {}", self.log_path.display())))?;
        writeln!(
            log,
            "=== harness: start #{} of {} ===",
            self.starts, self.name
        )
        .map_err(io_err("writing log header"))?;
        let log_err = log.try_clone().map_err(io_err("cloning log handle"))?;
        let mut cmd = Command::new(&self.bin);
        let args = match self.first_args.take() {
            Some(first) => first,
            None => self.args.clone(),
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // Log files are read by people and by tests: no terminal colour codes.
        cmd.env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(io_err(format!("spawning {}", self.bin.display())))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, extra_ready: &dyn Fn() -> bool) -> Result<()> {
        let start = Instant::now();
        let probe = match &self.ready_probe {
            Some(p) => p.clone(),
            None => Etcdctl::plain(self.plain_endpoint.clone()),
        }
        .with_command_timeout(Duration::from_secs(3));
        let mut last_probe;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(HarnessError::ExitedEarly {
                        name: self.name.clone(),
                        status,
                        log_tail: self.log_tail(60),
                    });
                }
            } else {
                return Err(HarnessError::NotRunning(self.name.clone()));
            }
            let mut args = probe.endpoint_args();
            args.push("--dial-timeout=2s".into());
            match etcdctl(&args, &["endpoint", "health"], None) {
                Ok(out) if out.success() => {
                    if extra_ready() {
                        return Ok(());
                    }
                    last_probe =
                        "healthy, but the client certificate files are not there yet".into();
                }
                Ok(out) => {
                    last_probe = format!("{} {}", out.stdout.trim(), out.stderr.trim());
                }
                Err(e) => return Err(e),
            }
            if start.elapsed() >= self.ready_timeout {
                let log_tail = self.log_tail(60);
                self.kill9();
                return Err(HarnessError::NotReady {
                    name: self.name.clone(),
                    waited: start.elapsed(),
                    last_probe,
                    log_tail,
                });
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path, lines)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn sigterm(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| HarnessError::NotRunning(self.name.clone()))?;
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(child.id()).map_err(|_| HarnessError::Io {
            context: "converting child pid".into(),
            source: std::io::Error::other("pid out of range"),
        })?;
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet; no memory is touched.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        if rc != 0 {
            return Err(HarnessError::Io {
                context: format!("sending SIGTERM to {pid}"),
                source: std::io::Error::last_os_error(),
            });
        }
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(e) => return Err(io_err("waiting for child")(e)),
            }
            if start.elapsed() >= timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::ShutdownTimeout {
                    name: self.name.clone(),
                    waited: start.elapsed(),
                    log_tail: self.log_tail(60),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_for_restart(&mut self) -> Result<()> {
        if self.is_running() {
            let status = self.sigterm(DEFAULT_SHUTDOWN_TIMEOUT)?;
            if !(self.clean_exit)(&status) {
                return Err(HarnessError::UncleanShutdown {
                    name: self.name.clone(),
                    status,
                    log_tail: self.log_tail(60),
                });
            }
        } else {
            self.kill9();
        }
        Ok(())
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- log tail of {} ({}) ---\n{}\n--- end of log tail ---",
                self.name,
                self.log_path.display(),
                self.log_tail(80)
            );
        }
        self.kill9();
    }
}

/// One `tugboatd` process bootstrapped as a single-node cluster in a temp data dir.
pub struct TugboatNode {
    proc: ManagedProcess,
    peer_addr: SocketAddr,
    tls_endpoint: String,
    api_addr: SocketAddr,
    netns: Option<NetnsPlacement>,
}

impl TugboatNode {
    /// Starts `tugboatd run` on fresh loopback ports and waits until `endpoint health` succeeds.
    ///
    /// With [`TugboatOptions::netns`] set, the node runs inside that namespace on the fixed
    /// ports of [`NetnsPlacement`] instead, and readiness is probed over mutual TLS (once the
    /// node's admin certificate files exist).
    pub fn start(opts: TugboatOptions) -> Result<Self> {
        let bin = tugboatd_bin()?;
        require_binary(ETCDCTL_BIN, "etcdctl", "etcd-client")?;
        let root = tempfile::Builder::new()
            .prefix("tugboat-test-")
            .tempdir()
            .map_err(io_err("creating temp dir"))?;
        let data_dir = root.path().join("data");
        let log_path = root.path().join("tugboatd.log");
        let ports = match &opts.netns {
            None => free_ports(5)?,
            Some(_) => vec![
                NETNS_PEER_PORT,
                NETNS_ETCD_PORT,
                NETNS_PLAIN_PORT,
                NETNS_METRICS_PORT,
                NETNS_API_PORT,
            ],
        };
        let ip = match &opts.netns {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(placement) => placement.ip,
        };
        let peer_addr = SocketAddr::new(ip, ports[0]);
        let etcd_addr = SocketAddr::new(ip, ports[1]);
        let tls_endpoint = format!("https://{etcd_addr}");
        let api_addr = SocketAddr::new(ip, ports[4]);
        let plain_endpoint = format!("http://127.0.0.1:{}", ports[2]);
        let mut args = vec![
            "run".to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--name".into(),
            opts.name.clone(),
            "--peer-listen".into(),
            peer_addr.to_string(),
            "--etcd-listen".into(),
            etcd_addr.to_string(),
            "--etcd-listen-plain".into(),
            format!("127.0.0.1:{}", ports[2]),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", ports[3]),
            "--api-listen".into(),
            if opts.api {
                api_addr.to_string()
            } else {
                "off".into()
            },
        ];
        if !opts.controllers {
            args.push("--controllers=off".into());
        }
        // Members run no node agent unless a test asks for a runtime (`tugboatd`'s own default
        // is the QEMU runtime).
        if !opts
            .extra_args
            .iter()
            .any(|a| a == "--runtime" || a.starts_with("--runtime="))
        {
            args.push("--runtime=none".into());
        }
        // Every node agent's log/console endpoint on a free port: several nodes share this host.
        if !opts
            .extra_args
            .iter()
            .any(|a| a == "--agent-port" || a.starts_with("--agent-port="))
        {
            args.push("--agent-port=0".into());
        }
        args.extend(opts.extra_args.iter().cloned());
        let first_args = opts.join.as_ref().map(|j| {
            let mut first = vec![
                "join".to_string(),
                j.peer.clone(),
                "--token".into(),
                j.token.clone(),
            ];
            first.extend(args.iter().skip(1).cloned());
            first
        });
        let (name, bin, args, first_args, ready_probe) = match &opts.netns {
            None => (
                format!("tugboatd {}", opts.name),
                bin,
                args,
                first_args,
                None,
            ),
            Some(placement) => {
                // `ip netns exec` execs tugboatd in place: the child pid is tugboatd's own.
                let prefixed = |rest: Vec<String>| {
                    let mut v = vec![
                        "netns".to_string(),
                        "exec".into(),
                        placement.ns.clone(),
                        bin.display().to_string(),
                    ];
                    v.extend(rest);
                    v
                };
                let pki = data_dir.join("pki");
                let probe = Etcdctl::tls(
                    tls_endpoint.clone(),
                    TlsClientFiles {
                        cacert: pki.join("ca.crt"),
                        cert: pki.join("admin.crt"),
                        key: pki.join("admin.key"),
                    },
                );
                (
                    format!("tugboatd {} (netns {})", opts.name, placement.ns),
                    PathBuf::from(crate::netns::IP_BIN),
                    prefixed(args),
                    first_args.map(prefixed),
                    Some(probe),
                )
            }
        };
        let mut node = TugboatNode {
            proc: ManagedProcess {
                name,
                bin,
                args,
                env: opts.env.clone(),
                _root: root,
                data_dir,
                log_path,
                plain_endpoint,
                ready_timeout: opts.ready_timeout,
                child: None,
                starts: 0,
                first_args,
                clean_exit: ExitStatus::success,
                ready_probe,
            },
            peer_addr,
            tls_endpoint,
            api_addr,
            netns: opts.netns.clone(),
        };
        node.boot()?;
        Ok(node)
    }

    fn boot(&mut self) -> Result<()> {
        self.proc.spawn()?;
        let files = self.tls_files();
        self.proc
            .wait_ready(&|| files.cacert.is_file() && files.cert.is_file() && files.key.is_file())
    }

    /// The apiserver's URL (`https://ip:port`).
    pub fn api_url(&self) -> String {
        format!("https://{}", self.api_addr)
    }

    /// The apiserver's address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// `DATA/admin.kubeconfig` (cluster-admin), written by `tugboatd` on first start.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.proc.data_dir.join("admin.kubeconfig")
    }

    /// Stops the node cleanly if it runs (SIGTERM, must exit 0), then starts it again on the same dir and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop_for_restart()?;
        self.boot()
    }

    /// SIGKILLs the process and reaps it; the data dir stays for a later [`TugboatNode::restart`].
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Sends SIGTERM and waits (up to 60 s) for the exit status.
    pub fn sigterm(&mut self) -> Result<ExitStatus> {
        self.proc.sigterm(DEFAULT_SHUTDOWN_TIMEOUT)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// `http://127.0.0.1:R`, the plaintext etcd endpoint (for a node in a network namespace,
    /// loopback inside that namespace: not reachable from the test process).
    pub fn plain_endpoint(&self) -> String {
        self.proc.plain_endpoint.clone()
    }

    /// `https://127.0.0.1:Q`, the mutual-TLS etcd endpoint (`https://IP:2379` in a namespace).
    pub fn tls_endpoint(&self) -> String {
        self.tls_endpoint.clone()
    }

    /// The raft peer listen address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The node's `--data-dir` (inside the temp dir; survives restarts).
    pub fn data_dir(&self) -> &Path {
        &self.proc.data_dir
    }

    /// File that receives the child's stdout and stderr (appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.proc.log_path
    }

    /// Last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The admin client certificate files under `<data-dir>/pki`.
    pub fn tls_files(&self) -> TlsClientFiles {
        let pki = self.proc.data_dir.join("pki");
        TlsClientFiles {
            cacert: pki.join("ca.crt"),
            cert: pki.join("admin.crt"),
            key: pki.join("admin.key"),
        }
    }

    /// etcdctl over the plaintext endpoint; for a node in a network namespace, over mutual TLS
    /// (the plaintext endpoint is out of reach there).
    pub fn etcdctl(&self) -> Etcdctl {
        match self.netns {
            None => Etcdctl::plain(self.plain_endpoint()),
            Some(_) => self.etcdctl_tls(),
        }
    }

    /// The network namespace the node runs in, if it was started with one.
    pub fn netns(&self) -> Option<&NetnsPlacement> {
        self.netns.as_ref()
    }

    /// Runs the `tugboat` CLI against this node's data dir, e.g. `["token", "create"]`.
    pub fn cli(&self, args: &[&str]) -> Result<CmdOutput> {
        let bin = tugboat_cli_bin()?;
        let out = Command::new(&bin)
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("NO_COLOR", "1")
            .output()
            .map_err(io_err(format!("running {}", bin.display())))?;
        Ok(CmdOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// A fresh join token from this node (`tugboat token create`).
    pub fn create_token(&self, extra: &[&str]) -> Result<String> {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(extra);
        let out = self.cli(&args)?;
        if !out.success() {
            return Err(HarnessError::Io {
                context: "tugboat token create".into(),
                source: std::io::Error::other(out.stderr),
            });
        }
        Ok(out.stdout.trim().to_string())
    }

    /// etcdctl over the mutual-TLS endpoint with the admin certificate.
    pub fn etcdctl_tls(&self) -> Etcdctl {
        Etcdctl::tls(self.tls_endpoint(), self.tls_files())
    }
}

/// etcd 3.4 finishes its SIGTERM handling by re-raising the signal, so "killed by SIGTERM" is clean.
fn etcd_clean_exit(status: &ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.success() || status.signal() == Some(libc::SIGTERM)
}

/// One Debian etcd 3.4 member bootstrapped as a single-node cluster in a temp data dir.
pub struct EtcdNode {
    proc: ManagedProcess,
    peer_url: String,
    peer_port: u16,
}

impl EtcdNode {
    /// Starts `/usr/bin/etcd` on fresh loopback ports and waits until `endpoint health` succeeds.
    pub fn start(opts: EtcdOptions) -> Result<Self> {
        let bin = require_binary(ETCD_BIN, "etcd", "etcd-server")?;
        require_binary(ETCDCTL_BIN, "etcdctl", "etcd-client")?;
        let root = tempfile::Builder::new()
            .prefix("etcd-test-")
            .tempdir()
            .map_err(io_err("creating temp dir"))?;
        let data_dir = root.path().join("data");
        let log_path = root.path().join("etcd.log");
        let ports = free_ports(2)?;
        let client_url = format!("http://127.0.0.1:{}", ports[0]);
        let peer_url = format!("http://127.0.0.1:{}", ports[1]);
        let mut args = vec![
            "--name".to_string(),
            opts.name.clone(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-client-urls".into(),
            client_url.clone(),
            "--advertise-client-urls".into(),
            client_url.clone(),
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url.clone(),
            "--initial-cluster".into(),
            format!("{}={}", opts.name, peer_url),
            "--initial-cluster-state".into(),
            "new".into(),
        ];
        args.extend(opts.extra_args.iter().cloned());
        let mut node = EtcdNode {
            proc: ManagedProcess {
                name: format!("etcd {}", opts.name),
                bin,
                args,
                env: Vec::new(),
                _root: root,
                data_dir,
                log_path,
                plain_endpoint: client_url,
                ready_timeout: opts.ready_timeout,
                child: None,
                starts: 0,
                first_args: None,
                clean_exit: etcd_clean_exit,
                ready_probe: None,
            },
            peer_url,
            peer_port: ports[1],
        };
        node.proc.spawn()?;
        node.proc.wait_ready(&|| true)?;
        Ok(node)
    }

    /// Stops the member cleanly if it runs (exit 0 or death by the re-raised SIGTERM), then starts it again.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop_for_restart()?;
        self.proc.spawn()?;
        self.proc.wait_ready(&|| true)
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn sigterm(&mut self) -> Result<ExitStatus> {
        self.proc.sigterm(DEFAULT_SHUTDOWN_TIMEOUT)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// `http://127.0.0.1:X`, the client URL.
    pub fn plain_endpoint(&self) -> String {
        self.proc.plain_endpoint.clone()
    }

    /// `http://127.0.0.1:Y`, the peer URL.
    pub fn peer_url(&self) -> String {
        self.peer_url.clone()
    }

    /// The member's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.proc.data_dir
    }

    /// File receiving etcd's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.proc.log_path
    }

    /// Last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// etcdctl over the client URL.
    pub fn etcdctl(&self) -> Etcdctl {
        Etcdctl::plain(self.plain_endpoint())
    }
}

/// Operations a test body needs from a single-node server, whichever implementation it is.
pub trait ServerNode {
    /// Which implementation this is.
    fn kind(&self) -> TargetKind;
    /// Plaintext client endpoint URL.
    fn plain_endpoint(&self) -> String;
    /// Mutual-TLS endpoint URL, if the implementation serves one (etcd here does not).
    fn tls_endpoint(&self) -> Option<String>;
    /// etcdctl over the plaintext endpoint.
    fn etcdctl(&self) -> Etcdctl;
    /// etcdctl over mutual TLS, if served.
    fn etcdctl_tls(&self) -> Option<Etcdctl>;
    /// SIGKILL the process.
    fn kill9(&mut self);
    /// SIGTERM and wait for the exit status.
    fn sigterm(&mut self) -> Result<ExitStatus>;
    /// Clean stop (if running) and start again on the same data dir and ports.
    fn restart(&mut self) -> Result<()>;
    /// Port of the peer (raft) listener.
    fn peer_port(&self) -> u16;
    /// Data dir.
    fn data_dir(&self) -> &Path;
    /// Process id while running.
    fn pid(&self) -> Option<u32>;
    /// Last `lines` lines of the process log.
    fn log_tail(&self, lines: usize) -> String;
}

impl ServerNode for TugboatNode {
    fn kind(&self) -> TargetKind {
        TargetKind::Tugboat
    }
    fn plain_endpoint(&self) -> String {
        TugboatNode::plain_endpoint(self)
    }
    fn tls_endpoint(&self) -> Option<String> {
        Some(TugboatNode::tls_endpoint(self))
    }
    fn etcdctl(&self) -> Etcdctl {
        TugboatNode::etcdctl(self)
    }
    fn etcdctl_tls(&self) -> Option<Etcdctl> {
        Some(TugboatNode::etcdctl_tls(self))
    }
    fn kill9(&mut self) {
        TugboatNode::kill9(self)
    }
    fn sigterm(&mut self) -> Result<ExitStatus> {
        TugboatNode::sigterm(self)
    }
    fn restart(&mut self) -> Result<()> {
        TugboatNode::restart(self)
    }
    fn peer_port(&self) -> u16 {
        self.peer_addr.port()
    }
    fn data_dir(&self) -> &Path {
        TugboatNode::data_dir(self)
    }
    fn pid(&self) -> Option<u32> {
        TugboatNode::pid(self)
    }
    fn log_tail(&self, lines: usize) -> String {
        TugboatNode::log_tail(self, lines)
    }
}

impl ServerNode for EtcdNode {
    fn kind(&self) -> TargetKind {
        TargetKind::Etcd
    }
    fn plain_endpoint(&self) -> String {
        EtcdNode::plain_endpoint(self)
    }
    fn tls_endpoint(&self) -> Option<String> {
        None
    }
    fn etcdctl(&self) -> Etcdctl {
        EtcdNode::etcdctl(self)
    }
    fn etcdctl_tls(&self) -> Option<Etcdctl> {
        None
    }
    fn kill9(&mut self) {
        EtcdNode::kill9(self)
    }
    fn sigterm(&mut self) -> Result<ExitStatus> {
        EtcdNode::sigterm(self)
    }
    fn restart(&mut self) -> Result<()> {
        EtcdNode::restart(self)
    }
    fn peer_port(&self) -> u16 {
        self.peer_port
    }
    fn data_dir(&self) -> &Path {
        EtcdNode::data_dir(self)
    }
    fn pid(&self) -> Option<u32> {
        EtcdNode::pid(self)
    }
    fn log_tail(&self, lines: usize) -> String {
        EtcdNode::log_tail(self, lines)
    }
}

/// Starts a fresh single-node server of the given kind with default options (node name `node1`).
pub fn start_server(kind: TargetKind) -> Result<Box<dyn ServerNode>> {
    match kind {
        TargetKind::Tugboat => Ok(Box::new(TugboatNode::start(TugboatOptions::default())?)),
        TargetKind::Etcd => Ok(Box::new(EtcdNode::start(EtcdOptions::default())?)),
    }
}

/// Transport a conformance test body runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `http://` loopback listener.
    Plain,
    /// `https://` listener with client certificates.
    Tls,
}

/// Transports to exercise for `kind`: both for tugboat; only plain for etcd (no TLS set up there).
pub fn transports_for(kind: TargetKind) -> Vec<Transport> {
    match kind {
        TargetKind::Tugboat => vec![Transport::Plain, Transport::Tls],
        TargetKind::Etcd => vec![Transport::Plain],
    }
}

/// Runs `body` once per transport of the target selected by `TUGBOAT_TEST_TARGET`, each on a fresh node.
///
/// Panics (failing the test) with the harness error if a node cannot be started.
pub fn for_each_transport(body: impl Fn(&mut dyn ServerNode, &Etcdctl, Transport)) {
    let kind = match TargetKind::from_env() {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    };
    for transport in transports_for(kind) {
        let mut node = match start_server(kind) {
            Ok(n) => n,
            Err(e) => panic!("starting {kind} failed: {e}"),
        };
        let ctl = match transport {
            Transport::Plain => node.etcdctl(),
            Transport::Tls => match node.etcdctl_tls() {
                Some(c) => c,
                None => panic!("{kind} has no TLS endpoint"),
            },
        };
        eprintln!(
            "--- running over {transport:?} against {kind} at {}",
            ctl.endpoint()
        );
        body(node.as_mut(), &ctl, transport);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lifecycle operations the durability tests rely on, checked against the reference etcd.
    #[test]
    fn etcd_node_survives_kill9_and_restart() {
        let mut node = match EtcdNode::start(EtcdOptions::default()) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        let endpoint = node.plain_endpoint();
        let ctl = node.etcdctl();
        assert!(matches!(ctl.ok(&["put", "k", "v"]).as_deref(), Ok("OK\n")));
        let first_pid = node.pid();
        node.kill9();
        assert!(!node.is_running());
        let quick = ctl.clone().with_command_timeout(Duration::from_secs(2));
        assert!(quick.run(&["get", "k"], None).is_ok_and(|o| !o.success()));
        if let Err(e) = node.restart() {
            panic!("{e}");
        }
        assert_ne!(node.pid(), first_pid);
        assert_eq!(node.plain_endpoint(), endpoint, "ports survive restarts");
        assert!(matches!(ctl.ok(&["get", "k"]).as_deref(), Ok("k\nv\n")));
        // restart() of a running node goes through a clean SIGTERM.
        if let Err(e) = node.restart() {
            panic!("{e}");
        }
        match node.sigterm() {
            Ok(status) => assert!(etcd_clean_exit(&status), "etcd exited with {status}"),
            Err(e) => panic!("{e}"),
        }
        assert!(node
            .log_tail(200)
            .contains("=== harness: start #3 of etcd node1 ==="));
    }

    #[test]
    fn etcdctl_child_reads_watch_lines() {
        let node = match EtcdNode::start(EtcdOptions::default()) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        let ctl = node.etcdctl();
        assert!(ctl.ok(&["put", "w", "1"]).is_ok());
        let mut child = match ctl.spawn(&["watch", "w", "--rev", "1"]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        match child.wait_lines(3, Duration::from_secs(30)) {
            Ok(lines) => assert_eq!(lines, vec!["PUT", "w", "1"]),
            Err(e) => panic!("{e}"),
        }
        let err = child.wait_lines(4, Duration::from_millis(300));
        assert!(matches!(
            err,
            Err(HarnessError::ChildOutputTimeout {
                got: 3,
                wanted: 4,
                ..
            })
        ));
    }
}
