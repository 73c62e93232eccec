//! An in-memory [`Runtime`] with knobs, deterministic under a seed.
//!
//! VMs boot after [`FakeConfig::boot_delay`], a start fails with probability
//! [`FakeConfig::failure_rate`] (drawn from a seeded RNG), and a running VM crashes after
//! [`FakeConfig::crash_after`] on its first [`FakeConfig::crash_boots`] boots. Clones share
//! their state, so a restarted agent finds the VMs of the previous one.
//!
//! With [`FakeConfig::console_dir`] set, a started VM also gets a serial console: a unix socket
//! `<dir>/<uid>.sock` that greets each client with `fake console <namespace>/<name>` and echoes
//! what it is sent in upper case, and a log `<dir>/<uid>.log` holding a boot line and the
//! echoed output, so the console and log paths can be tested without QEMU.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::runtime::{
    ConsoleEndpoints, RegistryHosts, Runtime, RuntimeError, RuntimeEvent, VmSpec, VmState,
    VmStatus, PAUSED_REASON,
};

/// Knobs of a [`FakeRuntime`].
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Time from `start` to `Running`.
    pub boot_delay: Duration,
    /// Probability in `[0, 1]` that a `start` fails.
    pub failure_rate: f64,
    /// A running VM crashes this long after reaching `Running` (`None`: never).
    pub crash_after: Option<Duration>,
    /// Only the first this-many boots of each VM crash (`None`: every boot).
    pub crash_boots: Option<u32>,
    /// Seed of the RNG that decides start failures.
    pub seed: u64,
    /// Directory of the VMs' console sockets and logs (`None`: no console).
    pub console_dir: Option<PathBuf>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            boot_delay: Duration::from_millis(100),
            failure_rate: 0.0,
            crash_after: None,
            crash_boots: None,
            seed: 0,
            console_dir: None,
        }
    }
}

#[derive(Clone, Debug)]
struct FakeVm {
    spec: VmSpec,
    state: VmState,
    started_at: Option<jiff::Timestamp>,
    created_at: jiff::Timestamp,
    ip: String,
    boots: u32,
    /// Bumped on every start/stop so stale timers do nothing.
    epoch: u64,
    /// vCPUs paused (meaningful while Running; a new boot clears it).
    paused: bool,
}

#[derive(Debug)]
struct Inner {
    config: FakeConfig,
    rng: StdRng,
    vms: BTreeMap<String, FakeVm>,
    images: BTreeSet<String>,
    next_ip: u32,
    /// Echo servers of the VMs whose console is open.
    consoles: BTreeMap<String, JoinHandle<()>>,
}

/// The fake runtime (cheap to clone; clones share their VMs).
#[derive(Clone, Debug)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl FakeRuntime {
    /// A runtime with these knobs and no VMs.
    pub fn new(config: FakeConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                rng: StdRng::seed_from_u64(config.seed),
                config,
                vms: BTreeMap::new(),
                images: BTreeSet::new(),
                next_ip: 0,
                consoles: BTreeMap::new(),
            })),
            events,
        }
    }

    /// Replaces the knobs (the RNG keeps its sequence).
    pub fn set_config(&self, config: FakeConfig) {
        self.lock().config = config;
    }

    /// Makes a VM crash now (no-op unless it is starting or running).
    pub fn crash(&self, uid: &str) {
        let changed = {
            let mut inner = self.lock();
            match inner.vms.get_mut(uid) {
                Some(vm) if matches!(vm.state, VmState::Running | VmState::Starting) => {
                    vm.state = VmState::Crashed;
                    vm.started_at = None;
                    vm.epoch += 1;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.close_console(uid, false);
            self.emit(uid, Some(VmState::Crashed));
        }
    }

    /// Images prepared so far.
    pub fn images(&self) -> Vec<String> {
        self.lock().images.iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a fake; keep going with the inner value.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_paused(&self, uid: &str, paused: bool) -> Result<(), RuntimeError> {
        let changed = {
            let mut inner = self.lock();
            let vm = inner
                .vms
                .get_mut(uid)
                .ok_or_else(|| RuntimeError::NotFound(uid.to_string()))?;
            if vm.state != VmState::Running {
                return Err(RuntimeError::Unavailable(format!(
                    "VM {uid} is not running"
                )));
            }
            let changed = vm.paused != paused;
            vm.paused = paused;
            changed
        };
        if changed {
            self.emit(uid, Some(VmState::Running));
        }
        Ok(())
    }

    fn emit(&self, uid: &str, state: Option<VmState>) {
        // No receivers is fine.
        let _ = self.events.send(RuntimeEvent {
            uid: uid.to_string(),
            state,
        });
    }

    fn spawn_boot(&self, uid: String, epoch: u64, boot_delay: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(boot_delay).await;
            let crash = {
                let mut inner = this.lock();
                let (crash_after, crash_boots) =
                    (inner.config.crash_after, inner.config.crash_boots);
                let Some(vm) = inner.vms.get_mut(&uid) else {
                    return;
                };
                if vm.epoch != epoch || vm.state != VmState::Starting {
                    return;
                }
                vm.state = VmState::Running;
                vm.started_at = Some(jiff::Timestamp::now());
                crash_after.filter(|_| crash_boots.is_none_or(|n| vm.boots <= n))
            };
            this.emit(&uid, Some(VmState::Running));
            if let Some(after) = crash {
                tokio::time::sleep(after).await;
                let crashed = {
                    let mut inner = this.lock();
                    match inner.vms.get_mut(&uid) {
                        Some(vm) if vm.epoch == epoch && vm.state == VmState::Running => {
                            vm.state = VmState::Crashed;
                            vm.started_at = None;
                            vm.epoch += 1;
                            true
                        }
                        _ => false,
                    }
                };
                if crashed {
                    this.close_console(&uid, false);
                    this.emit(&uid, Some(VmState::Crashed));
                }
            }
        });
    }
}

impl FakeRuntime {
    /// Opens the console of a VM that just started (no-op without a console directory): writes
    /// the boot line to its log and serves its socket.
    fn open_console(&self, spec: &VmSpec) {
        let Some(dir) = self.lock().config.console_dir.clone() else {
            return;
        };
        let Some((socket, log)) = console_paths(&dir, &spec.uid) else {
            tracing::warn!(uid = %spec.uid, "fake console: uid unusable as a file name");
            return;
        };
        let opened = (|| -> std::io::Result<tokio::net::UnixListener> {
            std::fs::create_dir_all(&dir)?;
            append(
                &log,
                format!(
                    "[fake] booting {}/{} (uid {})\n",
                    spec.namespace, spec.name, spec.uid
                )
                .as_bytes(),
            )?;
            match std::fs::remove_file(&socket) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            tokio::net::UnixListener::bind(&socket)
        })();
        let listener = match opened {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(uid = %spec.uid, error = %e, "fake console could not open");
                return;
            }
        };
        let banner = format!("fake console {}/{}\r\n", spec.namespace, spec.name);
        let task = tokio::spawn(echo_server(listener, banner, log));
        if let Some(old) = self.lock().consoles.insert(spec.uid.clone(), task) {
            old.abort();
        }
    }

    /// Closes a VM's console socket; `remove_log` also deletes its log (the VM is deleted).
    fn close_console(&self, uid: &str, remove_log: bool) {
        let (task, dir) = {
            let mut inner = self.lock();
            (inner.consoles.remove(uid), inner.config.console_dir.clone())
        };
        if let Some(task) = task {
            task.abort();
        }
        if let Some((socket, log)) = dir.as_deref().and_then(|d| console_paths(d, uid)) {
            let _ = std::fs::remove_file(socket);
            if remove_log {
                let _ = std::fs::remove_file(log);
            }
        }
    }
}

/// Socket and log of a VM's console under `dir`; `None` for a uid that is no plain file name.
fn console_paths(dir: &Path, uid: &str) -> Option<(PathBuf, PathBuf)> {
    let plain = !uid.is_empty()
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !uid.starts_with('.');
    plain.then(|| {
        (
            dir.join(format!("{uid}.sock")),
            dir.join(format!("{uid}.log")),
        )
    })
}

fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(bytes)
}

/// Serves one VM's console socket until aborted: every client gets the banner, then its input
/// back in upper case (also appended to the log, as a serial log records the guest's output).
/// Dropping the task's JoinSet on abort also ends the client connections.
async fn echo_server(listener: tokio::net::UnixListener, banner: String, log: PathBuf) {
    let mut clients = tokio::task::JoinSet::new();
    loop {
        let mut conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::debug!(error = %e, "fake console accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (banner, log) = (banner.clone(), log.clone());
        clients.spawn(async move {
            if conn.write_all(banner.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                let n = match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let upper = buf[..n].to_ascii_uppercase();
                let _ = append(&log, &upper);
                if conn.write_all(&upper).await.is_err() {
                    return;
                }
            }
        });
        // Reap finished clients so the set does not grow.
        while clients.try_join_next().is_some() {}
    }
}

impl Runtime for FakeRuntime {
    async fn prepare_image(
        &self,
        image: &str,
        _registries: &RegistryHosts,
    ) -> Result<(), RuntimeError> {
        if image.trim().is_empty() {
            return Err(RuntimeError::Image {
                image: image.to_string(),
                message: "empty image reference".into(),
            });
        }
        self.lock().images.insert(image.to_string());
        Ok(())
    }

    async fn start(&self, spec: &VmSpec) -> Result<(), RuntimeError> {
        let (epoch, delay) = {
            let mut inner = self.lock();
            let failure_rate = inner.config.failure_rate.clamp(0.0, 1.0);
            let delay = inner.config.boot_delay;
            if let Some(vm) = inner.vms.get(&spec.uid) {
                if matches!(vm.state, VmState::Starting | VmState::Running) {
                    return Ok(());
                }
            }
            if failure_rate > 0.0 && inner.rng.random_bool(failure_rate) {
                return Err(RuntimeError::Start {
                    uid: spec.uid.clone(),
                    message: "injected failure".into(),
                });
            }
            inner.next_ip += 1;
            let n = inner.next_ip;
            let ip = format!("10.244.{}.{}", (n >> 8) & 0xff, n & 0xff);
            let vm = inner.vms.entry(spec.uid.clone()).or_insert_with(|| FakeVm {
                spec: spec.clone(),
                state: VmState::Stopped,
                started_at: None,
                created_at: jiff::Timestamp::now(),
                ip,
                boots: 0,
                epoch: 0,
                paused: false,
            });
            vm.state = VmState::Starting;
            vm.paused = false;
            vm.started_at = None;
            vm.boots += 1;
            vm.epoch += 1;
            (vm.epoch, delay)
        };
        self.open_console(spec);
        self.emit(&spec.uid, Some(VmState::Starting));
        self.spawn_boot(spec.uid.clone(), epoch, delay);
        Ok(())
    }

    async fn stop(&self, uid: &str, _graceful: bool) -> Result<(), RuntimeError> {
        let changed = {
            let mut inner = self.lock();
            let Some(vm) = inner.vms.get_mut(uid) else {
                return Err(RuntimeError::NotFound(uid.to_string()));
            };
            if vm.state == VmState::Stopped {
                false
            } else {
                vm.state = VmState::Stopped;
                vm.started_at = None;
                vm.epoch += 1;
                true
            }
        };
        if changed {
            self.close_console(uid, false);
            self.emit(uid, Some(VmState::Stopped));
        }
        Ok(())
    }

    async fn delete(&self, uid: &str) -> Result<(), RuntimeError> {
        let removed = self.lock().vms.remove(uid).is_some();
        if removed {
            self.close_console(uid, true);
            self.emit(uid, None);
        }
        Ok(())
    }

    async fn status(&self, uid: &str) -> Result<Option<VmStatus>, RuntimeError> {
        Ok(self.lock().vms.get(uid).map(|vm| VmStatus {
            state: vm.state,
            started_at: vm.started_at,
            created_at: vm.created_at,
            ip_addresses: if vm.state == VmState::Running {
                vec![vm.ip.clone()]
            } else {
                Vec::new()
            },
            restarts: vm.boots.saturating_sub(1),
            guest: None,
            reason: (vm.paused && vm.state == VmState::Running).then(|| PAUSED_REASON.to_string()),
        }))
    }

    async fn pause(&self, uid: &str) -> Result<(), RuntimeError> {
        self.set_paused(uid, true)
    }

    async fn resume(&self, uid: &str) -> Result<(), RuntimeError> {
        self.set_paused(uid, false)
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.lock().vms.keys().cloned().collect())
    }

    async fn spec(&self, uid: &str) -> Result<Option<VmSpec>, RuntimeError> {
        Ok(self.lock().vms.get(uid).map(|vm| vm.spec.clone()))
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    async fn console(&self, uid: &str) -> Result<ConsoleEndpoints, RuntimeError> {
        let inner = self.lock();
        let Some(dir) = inner.config.console_dir.as_deref() else {
            return Err(RuntimeError::Unavailable(
                "the fake runtime runs without consoles (no console directory configured)".into(),
            ));
        };
        if !inner.vms.contains_key(uid) {
            return Err(RuntimeError::NotFound(uid.to_string()));
        }
        let (socket, log) =
            console_paths(dir, uid).ok_or_else(|| RuntimeError::NotFound(uid.to_string()))?;
        Ok(ConsoleEndpoints { socket, log })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uid: &str) -> VmSpec {
        VmSpec {
            uid: uid.into(),
            namespace: "default".into(),
            name: uid.into(),
            image: "img".into(),
            ..VmSpec::default()
        }
    }

    async fn wait_state(rt: &FakeRuntime, uid: &str, state: VmState) -> VmStatus {
        let mut events = rt.events();
        loop {
            if let Some(st) = rt.status(uid).await.unwrap() {
                if st.state == state {
                    return st;
                }
            }
            tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .expect("state change within 30s")
                .expect("event channel open");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_only_running_vms_and_a_new_boot_resumes() {
        let rt = FakeRuntime::new(FakeConfig::default());
        rt.start(&spec("p")).await.unwrap();
        assert!(rt.pause("p").await.is_err(), "a starting VM cannot pause");
        wait_state(&rt, "p", VmState::Running).await;
        rt.pause("p").await.unwrap();
        let st = rt.status("p").await.unwrap().unwrap();
        assert!(st.is_paused());
        assert_eq!(st.state, VmState::Running);
        rt.resume("p").await.unwrap();
        assert!(!rt.status("p").await.unwrap().unwrap().is_paused());
        rt.pause("p").await.unwrap();
        rt.stop("p", true).await.unwrap();
        rt.start(&spec("p")).await.unwrap();
        let st = wait_state(&rt, "p", VmState::Running).await;
        assert!(!st.is_paused(), "a new boot is not paused");
        assert!(matches!(
            rt.pause("missing").await,
            Err(RuntimeError::NotFound(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn boots_stops_and_deletes() {
        let rt = FakeRuntime::new(FakeConfig::default());
        rt.prepare_image("img", &RegistryHosts::default())
            .await
            .unwrap();
        rt.start(&spec("a")).await.unwrap();
        assert_eq!(
            rt.status("a").await.unwrap().unwrap().state,
            VmState::Starting
        );
        let st = wait_state(&rt, "a", VmState::Running).await;
        assert!(st.started_at.is_some());
        assert_eq!(st.ip_addresses.len(), 1);
        // Idempotent start keeps the running VM.
        rt.start(&spec("a")).await.unwrap();
        assert_eq!(rt.status("a").await.unwrap().unwrap(), st);
        rt.stop("a", true).await.unwrap();
        rt.stop("a", true).await.unwrap();
        assert_eq!(
            rt.status("a").await.unwrap().unwrap().state,
            VmState::Stopped
        );
        assert_eq!(rt.list().await.unwrap(), vec!["a".to_string()]);
        rt.delete("a").await.unwrap();
        rt.delete("a").await.unwrap();
        assert!(rt.status("a").await.unwrap().is_none());
        assert!(rt.list().await.unwrap().is_empty());
        assert!(rt
            .prepare_image(" ", &RegistryHosts::default())
            .await
            .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn crashes_only_on_first_boots() {
        let rt = FakeRuntime::new(FakeConfig {
            crash_after: Some(Duration::from_secs(1)),
            crash_boots: Some(1),
            ..FakeConfig::default()
        });
        rt.start(&spec("c")).await.unwrap();
        wait_state(&rt, "c", VmState::Running).await;
        wait_state(&rt, "c", VmState::Crashed).await;
        rt.start(&spec("c")).await.unwrap();
        let st = wait_state(&rt, "c", VmState::Running).await;
        assert_eq!(st.restarts, 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            rt.status("c").await.unwrap().unwrap().state,
            VmState::Running
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_deterministic_under_a_seed() {
        async fn outcomes(seed: u64) -> Vec<bool> {
            let rt = FakeRuntime::new(FakeConfig {
                failure_rate: 0.5,
                seed,
                ..FakeConfig::default()
            });
            let mut out = Vec::new();
            for i in 0..64 {
                out.push(rt.start(&spec(&format!("vm{i}"))).await.is_ok());
            }
            out
        }
        let a = outcomes(7).await;
        assert_eq!(a, outcomes(7).await);
        assert!(a.iter().any(|ok| *ok) && a.iter().any(|ok| !*ok));
        assert_ne!(a, outcomes(8).await);
    }

    #[tokio::test]
    async fn console_socket_and_log_follow_the_vm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = FakeRuntime::new(FakeConfig {
            console_dir: Some(dir.path().to_path_buf()),
            ..FakeConfig::default()
        });
        assert!(matches!(
            rt.console("v").await,
            Err(RuntimeError::NotFound(_))
        ));
        rt.start(&spec("v")).await.expect("start");
        let ends = rt.console("v").await.expect("console");
        assert_eq!(ends.socket, dir.path().join("v.sock"));
        let mut conn = tokio::net::UnixStream::connect(&ends.socket)
            .await
            .expect("connect");
        async fn read_until(conn: &mut tokio::net::UnixStream, want: &str) {
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while !String::from_utf8_lossy(&got).contains(want) {
                let n = conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed before {want:?}");
                got.extend_from_slice(&buf[..n]);
            }
        }
        read_until(&mut conn, "fake console default/v\r\n").await;
        conn.write_all(b"hi").await.expect("write");
        read_until(&mut conn, "HI").await;
        let log = std::fs::read_to_string(&ends.log).expect("log");
        assert!(log.starts_with("[fake] booting default/v"), "{log}");
        assert!(log.ends_with("HI"), "{log}");
        rt.stop("v", false).await.expect("stop");
        assert!(!ends.socket.exists());
        assert!(ends.log.exists(), "a stopped VM keeps its log");
        rt.delete("v").await.expect("delete");
        assert!(!ends.log.exists(), "a deleted VM's log goes with it");
        let plain = FakeRuntime::new(FakeConfig::default());
        plain.start(&spec("p")).await.expect("start");
        assert!(matches!(
            plain.console("p").await,
            Err(RuntimeError::Unavailable(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn manual_crash_and_stale_timers() {
        let rt = FakeRuntime::new(FakeConfig {
            boot_delay: Duration::from_secs(5),
            ..FakeConfig::default()
        });
        rt.start(&spec("m")).await.unwrap();
        rt.stop("m", false).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        // The boot timer of the stopped instance must not resurrect it.
        assert_eq!(
            rt.status("m").await.unwrap().unwrap().state,
            VmState::Stopped
        );
        rt.start(&spec("m")).await.unwrap();
        wait_state(&rt, "m", VmState::Running).await;
        rt.crash("m");
        assert_eq!(
            rt.status("m").await.unwrap().unwrap().state,
            VmState::Crashed
        );
        assert!(matches!(
            rt.stop("x", true).await,
            Err(RuntimeError::NotFound(_))
        ));
    }
}
