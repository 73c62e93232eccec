//! Ship logs and serial consoles through apiserver → node agent, with the fake runtime's console
//! (`--fake-console-dir`), driven by the `tugboat` CLI:
//!
//! - `tugboat logs` prints the VM's boot line; `--tail`, `-f` (new console output appears);
//! - `tugboat console` with piped stdin gets the banner and the upper-cased echo;
//! - RBAC: `view` may read `ships/log` but not attach; a user without bindings gets 403;
//! - a Ship that is not scheduled answers 400 `is not scheduled`;
//! - `tugboat stop` → `runStrategy: Halted`, phase Stopped (console then refused);
//!   `tugboat start` → Running again; `tugboat restart` sets the restart annotation.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tugboat_testsuite::harness::{tugboat_cli_bin, wait_until, CmdOutput};
use tugboat_testsuite::kube::{wait_api_ready, Kubectl};
use tugboat_testsuite::{TugboatNode, TugboatOptions};

const DEADLINE: Duration = Duration::from_secs(60);
const MANIFESTS: &str = "apiVersion: v1
kind: ShipClass
metadata:
  name: small
spec:
  cpu:
    cores: 1
  memory:
    size: 1Gi
---
apiVersion: v1
kind: Ship
metadata:
  namespace: default
  name: web
spec:
  image: ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04
  shipClass: small
---
apiVersion: v1
kind: Ship
metadata:
  namespace: default
  name: nowhere
spec:
  image: ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04
  shipClass: small
  nodeSelector:
    no-such-label: anywhere
";

/// Files a child's stdout and stderr go to (read while it runs, no pipe to fill up).
struct Outputs {
    _dir: tempfile::TempDir,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Outputs {
    fn new() -> Outputs {
        let dir = tempfile::tempdir().expect("tempdir");
        Outputs {
            stdout: dir.path().join("stdout"),
            stderr: dir.path().join("stderr"),
            _dir: dir,
        }
    }

    fn read(&self) -> (String, String) {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (read(&self.stdout), read(&self.stderr))
    }
}

/// Starts `tugboat ARGS --kubeconfig KUBECONFIG`, stdin piped.
fn spawn_tugboat(kubeconfig: &Path, args: &[&str], out: &Outputs) -> Child {
    let bin = tugboat_cli_bin().unwrap_or_else(|e| panic!("{e}"));
    Command::new(bin)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out.stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&out.stderr).expect("stderr file"))
        .spawn()
        .expect("spawn tugboat")
}

/// Runs `tugboat ARGS --kubeconfig KUBECONFIG` with `stdin`, killing it after 60 s.
fn tugboat(kubeconfig: &Path, args: &[&str], stdin: &str) -> CmdOutput {
    let out = Outputs::new();
    let mut child = spawn_tugboat(kubeconfig, args, &out);
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = out.read();
            panic!(
                "tugboat {args:?} did not finish within {DEADLINE:?}; stdout {o:?} stderr {e:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = out.read();
    CmdOutput {
        status,
        stdout,
        stderr,
    }
}

/// A child process killed when the test ends, also by a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[track_caller]
fn ok(o: CmdOutput, what: &str) -> String {
    assert!(
        o.success(),
        "{what} failed: stdout {:?} stderr {:?}",
        o.stdout,
        o.stderr
    );
    o.stdout
}

#[track_caller]
fn fails_with(o: CmdOutput, what: &str, wanted: &[&str]) -> String {
    assert!(!o.success(), "{what} should fail; stdout {:?}", o.stdout);
    for w in wanted {
        assert!(o.stderr.contains(w), "{what}: {w:?} not in {:?}", o.stderr);
    }
    o.stderr
}

fn ship(k: &Kubectl, name: &str) -> Result<Value, String> {
    k.json(&["get", "ship", name]).map_err(|e| e.to_string())
}

fn phase_is(k: &Kubectl, name: &str, phase: &str) -> Result<Value, String> {
    let s = ship(k, name)?;
    match s.pointer("/status/phase").and_then(Value::as_str) {
        Some(p) if p == phase => Ok(s),
        _ => Err(format!("{:?}", s.get("status"))),
    }
}

/// `tugboat console` on a pseudo-terminal (util-linux `script`): raw mode, echo, and Ctrl-]
/// detaching with exit status 0.
fn attach_on_a_terminal(kubeconfig: &Path) {
    let script = Path::new("/usr/bin/script");
    if !script.is_file() {
        eprintln!("skipping the terminal attach: no {}", script.display());
        return;
    }
    let bin = tugboat_cli_bin().unwrap_or_else(|e| panic!("{e}"));
    let cmd = format!(
        "{} console web --kubeconfig {}",
        bin.display(),
        kubeconfig.display()
    );
    let out = Outputs::new();
    let mut child = KillOnDrop(
        Command::new(script)
            .args(["-q", "-f", "-e", "-c", &cmd, "/dev/null"])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&out.stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&out.stderr).expect("stderr file"))
            .spawn()
            .expect("spawn script"),
    );
    let mut input = child.0.stdin.take().expect("stdin");
    let seen = |what: &str| {
        let (o, e) = out.read();
        o.contains(what).then_some(()).ok_or(format!("{o:?} {e:?}"))
    };
    wait_until("attached on a terminal", DEADLINE, || {
        seen("fake console default/web")
    });
    input.write_all(b"tty echo\r").expect("type");
    wait_until("terminal echo", DEADLINE, || seen("TTY ECHO"));
    input.write_all(&[0x1d]).expect("escape");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "Ctrl-] did not detach: {:?}",
            out.read()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (o, _) = out.read();
    assert!(status.success(), "exit {status:?}: {o:?}");
    assert!(o.contains("[detached]"), "{o:?}");
    assert!(
        o.contains("Connected to ship default/web (escape character is ^])"),
        "{o:?}"
    );
}

#[test]
fn ship_logs_consoles_and_lifecycle_commands() {
    let console_dir = tempfile::tempdir().expect("console dir");
    let node = TugboatNode::start(TugboatOptions {
        name: "console-node".into(),
        api: true,
        controllers: true,
        extra_args: [
            "--runtime",
            "fake",
            "--fake-boot-delay-ms",
            "200",
            "--fake-console-dir",
            &console_dir.path().display().to_string(),
            "--node-cpu",
            "8",
            "--node-memory",
            "16Gi",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..TugboatOptions::default()
    })
    .unwrap_or_else(|e| panic!("start tugboatd: {e}"));
    wait_api_ready(&node).unwrap_or_else(|e| panic!("{e}"));
    let k = Kubectl::admin(&node).expect("kubectl");
    let admin = node.kubeconfig_path();

    // The Node advertises its agent endpoint.
    let port = wait_until("Node advertises its agent port", DEADLINE, || {
        let n = k
            .json(&["get", "node", "console-node"])
            .map_err(|e| e.to_string())?;
        n.pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64)
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{:?}", n.get("status")))
    });
    assert_ne!(port, 10250, "the harness asks for a free port");

    k.ok_stdin(&["apply", "-f", "-"], MANIFESTS)
        .unwrap_or_else(|e| panic!("apply: {e}"));
    wait_until("ship web Running", DEADLINE, || {
        phase_is(&k, "web", "Running")
    });

    // Logs: the fake VM's boot line.
    let logs = ok(tugboat(&admin, &["logs", "web"], ""), "tugboat logs");
    assert!(logs.contains("[fake] booting default/web"), "{logs:?}");

    // Console with piped input: banner and upper-cased echo, through apiserver and agent.
    let out = tugboat(
        &admin,
        &["console", "web", "-n", "default", "--timeout", "2s"],
        "hello console\n",
    );
    assert!(
        out.stderr
            .contains("Connected to ship default/web (escape character is ^])"),
        "{:?}",
        out.stderr
    );
    let echoed = ok(out, "tugboat console");
    assert!(echoed.contains("fake console default/web"), "{echoed:?}");
    assert!(echoed.contains("HELLO CONSOLE"), "{echoed:?}");

    // The echo is serial output, so it is in the log; --tail 1 shows only the last line.
    let tail = ok(
        tugboat(&admin, &["logs", "web", "--tail", "1"], ""),
        "logs --tail",
    );
    assert_eq!(tail.trim_end(), "HELLO CONSOLE", "{tail:?}");
    let limited = ok(
        tugboat(&admin, &["logs", "web", "--limit-bytes", "6"], ""),
        "logs --limit-bytes",
    );
    assert_eq!(limited, "[fake]");

    // Follow: output written to the console while following shows up.
    let follow_out = Outputs::new();
    let follower = KillOnDrop(spawn_tugboat(&admin, &["logs", "web", "-f"], &follow_out));
    wait_until("follow shows the boot line", DEADLINE, || {
        let (o, e) = follow_out.read();
        o.contains("booting")
            .then_some(())
            .ok_or(format!("{o:?} {e:?}"))
    });
    ok(
        tugboat(&admin, &["console", "web", "--timeout", "1s"], "followed\n"),
        "console while following",
    );
    wait_until("follow shows new output", DEADLINE, || {
        let (o, e) = follow_out.read();
        o.contains("FOLLOWED")
            .then_some(())
            .ok_or(format!("{o:?} {e:?}"))
    });
    drop(follower);

    attach_on_a_terminal(&admin);

    // RBAC: view reads logs but may not attach; no bindings, no logs.
    let dir = tempfile::tempdir().expect("kubeconfig dir");
    let kubeconfig_for = |user: &str, group: &str| -> PathBuf {
        let out = node
            .cli(&[
                "kubeconfig",
                "--user",
                user,
                "--group",
                group,
                "--server",
                &node.api_url(),
            ])
            .unwrap_or_else(|e| panic!("tugboat kubeconfig: {e}"));
        assert!(out.success(), "tugboat kubeconfig: {}", out.stderr);
        let path = dir.path().join(format!("{user}.kubeconfig"));
        std::fs::write(&path, out.stdout).expect("write kubeconfig");
        path
    };
    k.ok(&[
        "create",
        "rolebinding",
        "viewers-view",
        "--clusterrole=view",
        "--group=viewers",
        "-n",
        "default",
    ])
    .unwrap_or_else(|e| panic!("rolebinding: {e}"));
    let viewer = kubeconfig_for("vera", "viewers");
    let stranger = kubeconfig_for("sam", "strangers");
    let viewer_logs = wait_until("the viewer reads logs", DEADLINE, || {
        let o = tugboat(&viewer, &["logs", "web"], "");
        o.success()
            .then(|| o.stdout.clone())
            .ok_or(format!("{:?}", o.stderr))
    });
    assert!(
        viewer_logs.contains("booting default/web"),
        "{viewer_logs:?}"
    );
    fails_with(
        tugboat(&viewer, &["console", "web", "--timeout", "1s"], "x\n"),
        "viewer console",
        &["Forbidden", "ships/console"],
    );
    fails_with(
        tugboat(&stranger, &["logs", "web"], ""),
        "stranger logs",
        &["Forbidden", "ships/log"],
    );

    // Not scheduled: a clear 400 for both.
    for args in [
        &["logs", "nowhere"][..],
        &["console", "nowhere", "--timeout", "1s"][..],
    ] {
        fails_with(
            tugboat(&admin, args, ""),
            "unscheduled ship",
            &["BadRequest", "ship nowhere is not scheduled"],
        );
    }
    fails_with(
        tugboat(&admin, &["logs", "missing"], ""),
        "missing ship",
        &["NotFound", "\"missing\" not found"],
    );

    // stop / start / restart.
    let stopped = ok(tugboat(&admin, &["stop", "web"], ""), "tugboat stop");
    assert_eq!(stopped.trim(), "ship/web stopped");
    let s = ship(&k, "web").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.pointer("/spec/runStrategy"), Some(&Value::from("Halted")));
    wait_until("ship web Stopped", DEADLINE, || {
        phase_is(&k, "web", "Stopped")
    });
    // A stopped VM keeps its log but has no console.
    let logs = ok(
        tugboat(&admin, &["logs", "web"], ""),
        "logs of a stopped ship",
    );
    assert!(logs.contains("booting"), "{logs:?}");
    fails_with(
        tugboat(&admin, &["console", "web", "--timeout", "1s"], ""),
        "console of a stopped ship",
        &["ServiceUnavailable", "is the VM running?"],
    );
    let started = ok(tugboat(&admin, &["start", "web"], ""), "tugboat start");
    assert_eq!(started.trim(), "ship/web started");
    wait_until("ship web Running again", DEADLINE, || {
        phase_is(&k, "web", "Running")
    });
    let restarted = ok(tugboat(&admin, &["restart", "web"], ""), "tugboat restart");
    assert_eq!(restarted.trim(), "ship/web restart requested");
    let s = ship(&k, "web").unwrap_or_else(|e| panic!("{e}"));
    let at = s
        .pointer("/metadata/annotations/tugboat.io~1restartedAt")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // RFC 3339 in UTC: 2024-05-06T07:08:09[.fff]Z.
    assert!(
        at.len() >= 20 && at.as_bytes()[10] == b'T' && at.ends_with('Z'),
        "restartedAt {at:?} is not RFC 3339"
    );
}

/// A worker holds no CA key: its agent serves with its node certificate, which the apiserver
/// of a member verifies for the worker's name.
#[test]
fn a_workers_console_is_reached_with_its_node_certificate() {
    let a = TugboatNode::start(TugboatOptions {
        name: "a".into(),
        api: true,
        controllers: true,
        // One voter, no standbys: the next node to join is a worker.
        extra_args: ["--max-voters", "1", "--standbys", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..TugboatOptions::default()
    })
    .unwrap_or_else(|e| panic!("start a: {e}"));
    wait_api_ready(&a).unwrap_or_else(|e| panic!("{e}"));
    let k = Kubectl::admin(&a).expect("kubectl");
    let token = a.create_token(&["--ttl", "10m"]).expect("token");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let console_dir = dir.path().join("console");
    let ports = tugboat_testsuite::free_ports(3).expect("ports");
    let log = dir.path().join("worker.log");
    let worker = Command::new(tugboat_testsuite::tugboatd_bin().expect("tugboatd"))
        .args(["join", &a.peer_addr().to_string(), "--token", &token])
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", "w"])
        .args(["--peer-listen", &format!("127.0.0.1:{}", ports[0])])
        .args(["--etcd-listen", &format!("127.0.0.1:{}", ports[1])])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", ports[2])])
        .args(["--runtime", "fake", "--fake-boot-delay-ms", "200"])
        .args([
            "--node-cpu",
            "4",
            "--node-memory",
            "8Gi",
            "--agent-port",
            "0",
        ])
        .arg("--fake-console-dir")
        .arg(&console_dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn the worker");
    let worker = KillOnDrop(worker);
    let worker_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !data.join("pki/ca.key").exists(),
        "a worker must not hold the CA key"
    );
    k.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ShipClass\nmetadata:\n  name: small\nspec:\n  cpu:\n    cores: 1\n  memory:\n    size: 1Gi\n---\napiVersion: v1\nkind: Ship\nmetadata:\n  name: on-worker\n  namespace: default\nspec:\n  image: example.org/img:1\n  shipClass: small\n",
    )
    .expect("ship");
    wait_until("the Ship Running on the worker", DEADLINE, || {
        let v =
            phase_is(&k, "on-worker", "Running").map_err(|e| format!("{e}\n{}", worker_log()))?;
        match v.pointer("/spec/nodeName").and_then(Value::as_str) {
            Some("w") => Ok(()),
            other => Err(format!("bound to {other:?}")),
        }
    });
    let admin = a.kubeconfig_path();
    let logs = tugboat(&admin, &["logs", "on-worker"], "");
    assert!(
        logs.success() && logs.stdout.contains("booting default/on-worker"),
        "logs: {logs:?}\n{}",
        worker_log()
    );
    let out = ok(
        tugboat(
            &admin,
            &["console", "on-worker", "--timeout", "2s"],
            "from a member\n",
        ),
        "console on the worker",
    );
    assert!(out.contains("FROM A MEMBER"), "{out:?}");
    drop(worker);
}
