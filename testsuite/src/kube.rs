//! Driving the apiserver of a `tugboatd` node with the real `kubectl` (1.32, on the machine image).
//!
//! Every [`Kubectl`] helper gets a fresh `KUBECACHEDIR` (kubectl caches discovery for 6 hours,
//! so a cache shared between servers or test runs would hide discovery bugs), passes
//! `--kubeconfig` explicitly, clears stray `KUBECONFIG`/`KUBECTL_*` variables from the
//! developer's shell, and kills a run that outlives its deadline. A missing kubectl is an error,
//! never a skip.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{CmdOutput, HarnessError, TugboatNode};

/// Path of kubectl (the machine image ships 1.32 there).
pub const KUBECTL_BIN: &str = "/usr/bin/kubectl";
/// Deadline of one kubectl run (it is killed and reported after that).
pub const DEFAULT_KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
/// kubectl runs slower than this are logged (stderr) to help find slow server paths.
pub const SLOW_KUBECTL: Duration = Duration::from_secs(2);
/// How long a freshly started node's apiserver may take to answer `/readyz` with `ok`.
pub const DEFAULT_API_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What can go wrong while driving kubectl.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// Missing binary, I/O while spawning, …
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// A run that had to succeed failed.
    #[error("kubectl {args:?} failed with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}")]
    Failed {
        /// Arguments after `--kubeconfig`.
        args: Vec<String>,
        /// Exit status.
        status: ExitStatus,
        /// Captured stdout.
        stdout: String,
        /// Captured stderr.
        stderr: String,
    },
    /// A run that had to fail succeeded.
    #[error(
        "kubectl {args:?} succeeded but was expected to fail\nstdout:\n{stdout}\nstderr:\n{stderr}"
    )]
    UnexpectedSuccess {
        /// Arguments after `--kubeconfig`.
        args: Vec<String>,
        /// Captured stdout.
        stdout: String,
        /// Captured stderr.
        stderr: String,
    },
    /// A run outlived its deadline and was killed.
    #[error("kubectl {args:?} did not finish within {waited:?} (killed)\nstdout so far:\n{stdout}\nstderr so far:\n{stderr}")]
    Timeout {
        /// Arguments after `--kubeconfig`.
        args: Vec<String>,
        /// How long it ran.
        waited: Duration,
        /// Captured stdout.
        stdout: String,
        /// Captured stderr.
        stderr: String,
    },
    /// kubectl printed something that does not parse as expected.
    #[error("kubectl {args:?} printed output that is not {what}: {detail}\nstdout:\n{stdout}")]
    BadOutput {
        /// Arguments after `--kubeconfig`.
        args: Vec<String>,
        /// What was expected (`JSON`, …).
        what: &'static str,
        /// Parser message.
        detail: String,
        /// Captured stdout.
        stdout: String,
    },
    /// A spawned kubectl (e.g. `get -w`) did not print the expected lines in time.
    #[error("kubectl child {args:?} did not print {wanted} within {waited:?}; lines so far:\n{lines}\nstderr:\n{stderr}")]
    ChildOutputTimeout {
        /// Arguments after `--kubeconfig`.
        args: Vec<String>,
        /// What was waited for.
        wanted: String,
        /// How long the harness waited.
        waited: Duration,
        /// Lines received so far.
        lines: String,
        /// The child's stderr so far.
        stderr: String,
    },
    /// The apiserver never answered `/readyz` with `ok`.
    #[error("apiserver at {url} not ready within {waited:?} (last probe: {last_probe}); tugboatd log tail:\n{log_tail}")]
    NotReady {
        /// The apiserver URL.
        url: String,
        /// How long the harness waited.
        waited: Duration,
        /// What the last probe said.
        last_probe: String,
        /// Last lines of the node's log.
        log_tail: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for kubectl helpers.
pub type KubeResult<T> = std::result::Result<T, KubeError>;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KubeError {
    let context = context.into();
    move |source| KubeError::Io { context, source }
}

/// Checks that kubectl is installed (an error, never a skip, when it is not).
pub fn kubectl_bin() -> KubeResult<PathBuf> {
    let p = PathBuf::from(KUBECTL_BIN);
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::MissingBinary {
            what: "kubectl",
            path: p,
            hint: "kubectl 1.32 belongs to the machine image; install it from the Kubernetes apt repository (package `kubectl`)".into(),
        }
        .into())
    }
}

/// A kubectl invocation template: one kubeconfig, one private discovery cache, a deadline and
/// extra environment (e.g. `EDITOR`).
#[derive(Debug, Clone)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: Arc<TempDir>,
    timeout: Duration,
    env: Vec<(String, String)>,
}

impl Kubectl {
    /// kubectl with `--kubeconfig PATH` and a fresh discovery cache.
    pub fn new(kubeconfig: impl Into<PathBuf>) -> KubeResult<Self> {
        let bin = kubectl_bin()?;
        let cache = tempfile::Builder::new()
            .prefix("kubectl-cache-")
            .tempdir()
            .map_err(io_err("creating a kubectl cache dir"))?;
        Ok(Kubectl {
            bin,
            kubeconfig: kubeconfig.into(),
            cache: Arc::new(cache),
            timeout: DEFAULT_KUBECTL_TIMEOUT,
            env: Vec::new(),
        })
    }

    /// kubectl as cluster-admin of `node` (its `DATA/admin.kubeconfig`).
    pub fn admin(node: &TugboatNode) -> KubeResult<Self> {
        Kubectl::new(node.kubeconfig_path())
    }

    /// The same settings with another kubeconfig (and its own fresh cache).
    pub fn with_kubeconfig(&self, kubeconfig: impl Into<PathBuf>) -> KubeResult<Self> {
        let mut k = Kubectl::new(kubeconfig)?;
        k.timeout = self.timeout;
        k.env = self.env.clone();
        Ok(k)
    }

    /// Sets an environment variable for every run (e.g. `EDITOR`).
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the per-run deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The kubeconfig in use.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The private discovery cache dir (`KUBECACHEDIR`).
    pub fn cache_dir(&self) -> &Path {
        self.cache.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars_os() {
            let k_str = k.to_string_lossy();
            if k_str.starts_with("KUBECTL_")
                || k_str == "KUBECONFIG"
                || k_str == "EDITOR"
                || k_str == "KUBE_EDITOR"
            {
                cmd.env_remove(&k);
            }
        }
        cmd.env("KUBECACHEDIR", self.cache.path());
        cmd.env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd
    }

    /// Runs kubectl (stdin closed) and returns whatever it printed; fails only on spawn errors
    /// and deadlines.
    pub fn run(&self, args: &[&str]) -> KubeResult<CmdOutput> {
        self.run_inner(args, None)
    }

    /// Runs kubectl feeding `stdin`.
    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> KubeResult<CmdOutput> {
        self.run_inner(args, Some(stdin))
    }

    fn run_inner(&self, args: &[&str], stdin: Option<&str>) -> KubeResult<CmdOutput> {
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(io_err("spawning kubectl"))?;
        let out_reader = child.stdout.take().map(read_all_in_thread);
        let err_reader = child.stderr.take().map(read_all_in_thread);
        if let Some(input) = stdin {
            if let Some(mut pipe) = child.stdin.take() {
                let input = input.as_bytes().to_vec();
                // A writer thread: kubectl may read stdin only after printing a lot (or never).
                thread::spawn(move || {
                    let _ = pipe.write_all(&input);
                });
            }
        }
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(e) => return Err(io_err("waiting for kubectl")(e)),
            }
            if start.elapsed() >= self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(5));
        };
        let stdout = out_reader.map(join_reader).unwrap_or_default();
        let stderr = err_reader.map(join_reader).unwrap_or_default();
        if start.elapsed() >= SLOW_KUBECTL {
            eprintln!("slow kubectl ({:?}): {args:?}", start.elapsed());
        }
        match status {
            Some(status) => Ok(CmdOutput {
                status,
                stdout,
                stderr,
            }),
            None => Err(KubeError::Timeout {
                args: owned(args),
                waited: start.elapsed(),
                stdout,
                stderr,
            }),
        }
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> KubeResult<String> {
        let out = self.run(args)?;
        must_succeed(args, out)
    }

    /// Like [`Kubectl::ok`], feeding `stdin`.
    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> KubeResult<String> {
        let out = self.run_stdin(args, stdin)?;
        must_succeed(args, out)
    }

    /// Runs a command that must fail; returns its output (stderr holds kubectl's error).
    pub fn fail(&self, args: &[&str]) -> KubeResult<CmdOutput> {
        let out = self.run(args)?;
        must_fail(args, out)
    }

    /// Like [`Kubectl::fail`], feeding `stdin`.
    pub fn fail_stdin(&self, args: &[&str], stdin: &str) -> KubeResult<CmdOutput> {
        let out = self.run_stdin(args, stdin)?;
        must_fail(args, out)
    }

    /// Runs `args -o json` (which must succeed) and parses the output.
    pub fn json(&self, args: &[&str]) -> KubeResult<Value> {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-o", "json"]);
        let out = self.ok(&full)?;
        serde_json::from_str(&out).map_err(|e| KubeError::BadOutput {
            args: owned(&full),
            what: "JSON",
            detail: e.to_string(),
            stdout: out,
        })
    }

    /// Runs `args -o jsonpath=TEMPLATE` (which must succeed) and returns the output.
    pub fn jsonpath(&self, args: &[&str], template: &str) -> KubeResult<String> {
        let flag = format!("jsonpath={template}");
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-o", flag.as_str()]);
        self.ok(&full)
    }

    /// Spawns a long-running kubectl (e.g. `get -w`) whose stdout lines can be awaited; killed on drop.
    pub fn spawn(&self, args: &[&str]) -> KubeResult<KubectlChild> {
        let stderr_file = tempfile::NamedTempFile::new().map_err(io_err("creating stderr file"))?;
        let err = stderr_file
            .reopen()
            .map_err(io_err("reopening stderr file"))?;
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let mut child = cmd.spawn().map_err(io_err("spawning kubectl"))?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    match line {
                        Ok(l) => {
                            if tx.send(l).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        Ok(KubectlChild {
            args: owned(args),
            child,
            lines: rx,
            received: Vec::new(),
            stderr_file,
        })
    }
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn must_succeed(args: &[&str], out: CmdOutput) -> KubeResult<String> {
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(KubeError::Failed {
            args: owned(args),
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

fn must_fail(args: &[&str], out: CmdOutput) -> KubeResult<CmdOutput> {
    if out.success() {
        Err(KubeError::UnexpectedSuccess {
            args: owned(args),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    } else {
        Ok(out)
    }
}

fn read_all_in_thread<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join_reader(h: thread::JoinHandle<String>) -> String {
    h.join()
        .unwrap_or_else(|_| "<reader thread panicked>".into())
}

/// A running kubectl child (typically `get -w`); killed on drop.
pub struct KubectlChild {
    args: Vec<String>,
    child: Child,
    lines: Receiver<String>,
    received: Vec<String>,
    stderr_file: tempfile::NamedTempFile,
}

impl KubectlChild {
    /// Waits until some stdout line (received so far or later) satisfies `pred`; returns its index.
    ///
    /// `what` describes the line for the error message.
    pub fn wait_for_line(
        &mut self,
        from: usize,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> KubeResult<usize> {
        let start = Instant::now();
        let mut checked = from;
        loop {
            while checked < self.received.len() {
                if pred(&self.received[checked]) {
                    return Ok(checked);
                }
                checked += 1;
            }
            let left = deadline.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.received.push(l),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    if matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < deadline {
                        continue;
                    }
                    return Err(KubeError::ChildOutputTimeout {
                        args: self.args.clone(),
                        wanted: what.to_string(),
                        waited: start.elapsed(),
                        lines: self.received.join("\n"),
                        stderr: self.stderr(),
                    });
                }
            }
        }
    }

    /// Collects lines that arrive within `quiet` of each other.
    pub fn drain_for(&mut self, quiet: Duration) -> Vec<String> {
        while let Ok(l) = self.lines.recv_timeout(quiet) {
            self.received.push(l);
        }
        self.received.clone()
    }

    /// All stdout lines received so far.
    pub fn received(&self) -> &[String] {
        &self.received
    }

    /// The child's stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.stderr_file.path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// True while the child runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KubectlChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (up to [`DEFAULT_API_READY_TIMEOUT`]) until `DATA/admin.kubeconfig` exists and
/// `GET /readyz` through it answers `ok`.
pub fn wait_api_ready(node: &TugboatNode) -> KubeResult<()> {
    wait_api_ready_within(node, DEFAULT_API_READY_TIMEOUT)
}

/// [`wait_api_ready`] with an explicit deadline.
pub fn wait_api_ready_within(node: &TugboatNode, deadline: Duration) -> KubeResult<()> {
    let start = Instant::now();
    let kubeconfig = node.kubeconfig_path();
    let mut kubectl: Option<Kubectl> = None;
    let mut last_probe: String;
    loop {
        if kubectl.is_none() && kubeconfig.is_file() {
            kubectl = Some(Kubectl::new(&kubeconfig)?.with_timeout(Duration::from_secs(10)));
        }
        match &kubectl {
            None => last_probe = format!("{} does not exist yet", kubeconfig.display()),
            Some(k) => match k.run(&["get", "--raw", "/readyz", "--request-timeout=5s"]) {
                Ok(out) if out.success() && out.stdout.trim() == "ok" => return Ok(()),
                Ok(out) => {
                    last_probe = format!(
                        "{}: stdout {:?} stderr {:?}",
                        out.status,
                        out.stdout.trim(),
                        out.stderr.trim()
                    )
                }
                Err(e) => last_probe = e.to_string(),
            },
        }
        if start.elapsed() >= deadline {
            return Err(KubeError::NotReady {
                url: node.api_url(),
                waited: start.elapsed(),
                last_probe,
                log_tail: node.log_tail(60),
            });
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// The `server` URL and `certificate-authority-data` of the current cluster of a kubeconfig
/// (read through `kubectl config view --raw`, so any kubeconfig kubectl reads works).
pub fn kubeconfig_cluster(kubeconfig: &Path) -> KubeResult<(String, Option<String>)> {
    let k = Kubectl::new(kubeconfig)?;
    let v = k.json(&["config", "view", "--raw", "--minify", "--flatten"])?;
    let cluster = &v["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().unwrap_or_default().to_string();
    let ca = cluster["certificate-authority-data"]
        .as_str()
        .map(str::to_string);
    Ok((server, ca))
}

/// Writes a kubeconfig for the same cluster as `admin_kubeconfig` with the given user entry
/// (`{}` for no credentials, `{"token": …}` for a bearer token). JSON is valid YAML.
pub fn write_kubeconfig_with_user(
    admin_kubeconfig: &Path,
    user: Value,
    out: &Path,
) -> KubeResult<()> {
    let (server, ca) = kubeconfig_cluster(admin_kubeconfig)?;
    let mut cluster = serde_json::json!({ "server": server });
    match ca {
        Some(ca) => cluster["certificate-authority-data"] = Value::String(ca),
        None => cluster["insecure-skip-tls-verify"] = Value::Bool(true),
    }
    let cfg = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "tugboat", "cluster": cluster }],
        "users": [{ "name": "u", "user": user }],
        "contexts": [{ "name": "ctx", "context": { "cluster": "tugboat", "user": "u" } }],
        "current-context": "ctx",
    });
    let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    std::fs::write(out, text).map_err(io_err(format!("writing {}", out.display())))
}

/// Writes a kubeconfig that authenticates with a bearer `token` against the cluster of `admin_kubeconfig`.
pub fn write_token_kubeconfig(admin_kubeconfig: &Path, token: &str, out: &Path) -> KubeResult<()> {
    write_kubeconfig_with_user(admin_kubeconfig, serde_json::json!({ "token": token }), out)
}

/// Writes a kubeconfig without any credentials (trusting the cluster CA) for `admin_kubeconfig`'s cluster.
pub fn write_anonymous_kubeconfig(admin_kubeconfig: &Path, out: &Path) -> KubeResult<()> {
    write_kubeconfig_with_user(admin_kubeconfig, serde_json::json!({}), out)
}

/// Answer of [`raw_request`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// Response body (lossy UTF-8; chunked encoding undone).
    pub body: String,
}

impl RawResponse {
    /// The body parsed as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTPS request to the apiserver of `kubeconfig`'s current cluster, trusting its CA, with
/// no client certificate and optionally a bearer token: what kubectl cannot do (with a
/// credential-less kubeconfig it prompts for a password instead of sending the request).
pub fn raw_request(
    kubeconfig: &Path,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> KubeResult<RawResponse> {
    use base64::Engine as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};

    let (server, ca) = kubeconfig_cluster(kubeconfig)?;
    let bad = |what: String| KubeError::Io {
        context: format!("raw request to {server}{path}"),
        source: std::io::Error::other(what),
    };
    let authority = server
        .strip_prefix("https://")
        .ok_or_else(|| bad(format!("server {server:?} is not https")))?
        .trim_end_matches('/')
        .to_string();
    let host = match authority.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => authority.clone(),
    };
    let ca = ca.ok_or_else(|| bad("kubeconfig has no certificate-authority-data".into()))?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(ca.trim())
        .map_err(|e| bad(format!("certificate-authority-data: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("CA PEM: {e}")))?;
        roots.add(cert).map_err(|e| bad(format!("CA cert: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.clone()).map_err(|e| bad(e.to_string()))?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| bad(e.to_string()))?;
    let tcp = std::net::TcpStream::connect(&authority)
        .map_err(io_err(format!("connecting to {authority}")))?;
    tcp.set_read_timeout(Some(DEFAULT_KUBECTL_TIMEOUT))
        .map_err(io_err("setting a read timeout"))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: application/json\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let payload: &[u8] = match body {
        Some((content_type, data)) => {
            req.push_str(&format!("Content-Type: {content_type}\r\n"));
            data
        }
        None => &[],
    };
    req.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
    let write = |tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>| {
        tls.write_all(req.as_bytes())?;
        tls.write_all(payload)?;
        tls.flush()
    };
    // The server may answer (e.g. 413) and close before it has read a large body.
    let write_err = write(&mut tls).err();
    let mut raw = Vec::new();
    if let Err(e) = tls.read_to_end(&mut raw) {
        // A peer that closes without close_notify still delivered its answer.
        if e.kind() != std::io::ErrorKind::UnexpectedEof || raw.is_empty() {
            return Err(io_err(format!(
                "reading the answer of {method} {path} (write error: {write_err:?})"
            ))(e));
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            bad(format!(
                "no HTTP header in {:?}",
                String::from_utf8_lossy(&raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Undoes HTTP/1.1 chunked transfer encoding (trailers ignored).
fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..eol]);
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        let rest = &s[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Splits a command line into arguments at whitespace, as `sh` would for a line without
/// escapes: single quotes group (and are removed), nothing else is special. Lets tests write
/// `"patch ship s --type merge -p '{\"spec\":{}}'"`.
pub fn split_args(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in cmd.chars() {
        if quoted {
            if c == '\'' {
                quoted = false;
            } else {
                cur.push(c);
            }
            continue;
        }
        match c {
            '\'' => {
                quoted = true;
                in_word = true;
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// kube-rs clients of a node's API.

/// Installs ring as rustls' process-wide provider (this project's choice); repeated calls are
/// fine.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Starts a single `tugboatd` serving the API and waits until the API is ready.
pub fn start_with_api() -> TugboatNode {
    let node = TugboatNode::start(crate::harness::TugboatOptions {
        api: true,
        ..crate::harness::TugboatOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    wait_api_ready(&node).unwrap_or_else(|e| panic!("{e}"));
    node
}

/// A kube-rs client with the node's cluster-admin kubeconfig.
pub async fn admin_client(node: &TugboatNode) -> kube::Client {
    let path = node.kubeconfig_path();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("kube config from {}: {e}", path.display()));
    kube::Client::try_from(config).unwrap_or_else(|e| panic!("kube client: {e}"))
}

/// The value of a call that must succeed.
#[track_caller]
pub fn must<T>(what: &str, r: kube::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// Polls `f` every 200 ms until it yields Ok, panicking after `deadline` with the last state.
pub async fn eventually<T, Fut>(what: &str, deadline: Duration, mut f: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        if start.elapsed() >= deadline {
            panic!("{what}: not reached within {deadline:?}; last state: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::split_args;

    #[test]
    fn split_args_groups_single_quotes() {
        assert_eq!(
            split_args("get ships -l 'app in (a, b)'  -o name"),
            vec!["get", "ships", "-l", "app in (a, b)", "-o", "name"]
        );
        assert_eq!(
            split_args("-p '{\"a\": 1}' x''"),
            vec!["-p", "{\"a\": 1}", "x"]
        );
        assert_eq!(split_args("  "), Vec::<String>::new());
        assert_eq!(split_args("''"), vec![""]);
    }
}
