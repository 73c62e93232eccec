//! [`QemuRuntime`]: the agent's `Runtime` over real QEMU processes.
//!
//! Each VM lives in `DATA/ships/<uid>/`: `spec.json` (what the agent asked for), `state.json`
//! (boots, start time, whether it should be running), the pidfile, QMP / console / guest-agent
//! sockets, the console log, the qcow2 overlay `root.qcow2` and the `cidata.iso`. Nothing about
//! a VM lives only in memory, so a restarted `tugboatd` re-adopts running QEMUs from their
//! pidfiles and reconnects to QMP.
//!
//! One monitor task per QEMU process holds the QMP connection, turns events into state
//! changes and polls the guest agent; state changes are broadcast to the agent, which decides
//! what the run strategy wants (restart, keep off, …).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tugboat_nodeagent::{
    ArchiveReader, ConsoleEndpoints, GuestInfo, NodeImage, RegistryHosts, Runtime, RuntimeError,
    RuntimeEvent, VmSpec, VmState, VmStatus, PAUSED_REASON,
};

use crate::accel::{self, Accel, AccelChoice, AccelProbe};
use crate::cloudinit::NoCloud;
use crate::cmdline::{LaunchSpec, MachineType, Nic, VmPaths};
use crate::image::{ImageError, ImageStore, LocalImage, Progress, PullOptions};
use crate::process;
use crate::qmp::{self, Qmp, VmEvent};

/// Settings of a [`QemuRuntime`].
#[derive(Clone, Debug)]
pub struct QemuConfig {
    /// Data directory: VMs under `ships/`, the image cache under `images/`.
    pub data_dir: PathBuf,
    /// The QEMU system emulator.
    pub qemu_binary: PathBuf,
    /// `qemu-img` (creates the qcow2 overlays).
    pub qemu_img: PathBuf,
    /// Accelerator choice (`auto` probes KVM).
    pub accel: AccelChoice,
    /// Registry hosts reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Registry mirrors: registry host → mirrors tried first.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// How long QEMU may take to initialize.
    pub start_timeout: Duration,
    /// Grace period of a graceful stop when the Ship gives none.
    pub default_stop_grace: Duration,
    /// How often the guest agent is asked for IPs and OS facts.
    pub guest_agent_interval: Duration,
    /// Images unused this long are garbage-collected.
    pub image_gc_after: Duration,
    /// How often image garbage collection runs.
    pub image_gc_interval: Duration,
}

impl QemuConfig {
    /// Defaults for `data_dir`, finding `qemu-system-x86_64` and `qemu-img` on `PATH`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            qemu_binary: find_on_path("qemu-system-x86_64")
                .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64")),
            qemu_img: find_on_path("qemu-img").unwrap_or_else(|| PathBuf::from("qemu-img")),
            accel: AccelChoice::Auto,
            insecure_registries: Vec::new(),
            mirrors: BTreeMap::new(),
            start_timeout: Duration::from_secs(30),
            default_stop_grace: Duration::from_secs(30),
            guest_agent_interval: Duration::from_secs(10),
            image_gc_after: Duration::from_secs(24 * 3600),
            image_gc_interval: Duration::from_secs(3600),
        }
    }
}

/// The first executable `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What `state.json` keeps about a VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VmRecord {
    created_at: jiff::Timestamp,
    started_at: Option<jiff::Timestamp>,
    /// Starts so far (restarts = boots − 1).
    boots: u32,
    /// Whether the VM should be running (false after a requested stop).
    desired_running: bool,
    /// Last known state.
    state: Persisted,
    /// Why it stopped or crashed.
    reason: Option<String>,
    /// Manifest digest of the image the root disk was cloned from.
    image_digest: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Persisted {
    Starting,
    Running,
    Stopped,
    Crashed,
}

impl From<Persisted> for VmState {
    fn from(p: Persisted) -> Self {
        match p {
            Persisted::Starting => VmState::Starting,
            Persisted::Running => VmState::Running,
            Persisted::Stopped => VmState::Stopped,
            Persisted::Crashed => VmState::Crashed,
        }
    }
}

/// One VM known to the runtime.
struct Vm {
    dir: PathBuf,
    paths: VmPaths,
    spec: Mutex<VmSpec>,
    record: Mutex<VmRecord>,
    /// Live QEMU process and its QMP client.
    live: Mutex<Option<Live>>,
    /// Guest agent facts while running.
    guest: Mutex<(Option<GuestInfo>, Vec<String>)>,
    /// Serializes start / stop / delete of this VM.
    op: tokio::sync::Mutex<()>,
    /// Bumped per launch and per stop, so a monitor of an older process changes nothing.
    epoch: AtomicU64,
}

#[derive(Clone)]
struct Live {
    pid: u32,
    epoch: u64,
    qmp: Option<Arc<Qmp>>,
    stop_requested: bool,
}

struct Inner {
    config: QemuConfig,
    accel: AccelProbe,
    images: ImageStore,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
    events: broadcast::Sender<RuntimeEvent>,
}

/// The QEMU runtime (cheap to clone; clones share state).
#[derive(Clone)]
pub struct QemuRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QemuRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuRuntime")
            .field("data_dir", &self.inner.config.data_dir)
            .field("accel", &self.inner.accel.accel)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Unavailable(e.to_string())
}

impl QemuRuntime {
    /// Opens the runtime: checks the binaries, decides the accelerator, opens the image cache
    /// and re-adopts the VMs of `DATA/ships`.
    pub async fn new(config: QemuConfig) -> Result<Self, RuntimeError> {
        for (what, bin) in [
            (
                "qemu-system-x86_64 (Debian package qemu-system-x86)",
                &config.qemu_binary,
            ),
            ("qemu-img (Debian package qemu-utils)", &config.qemu_img),
        ] {
            if !bin.is_file() {
                return Err(RuntimeError::Unavailable(format!(
                    "{what} not found at {}; install it or run with --runtime none",
                    bin.display()
                )));
            }
        }
        let ships = config.data_dir.join("ships");
        std::fs::create_dir_all(&ships)
            .map_err(|e| unavailable(format!("creating {}: {e}", ships.display())))?;
        let accel = accel::detect(&config.qemu_binary, config.accel, &config.data_dir).await;
        tracing::info!(accel = accel.accel.as_str(), reason = %accel.reason, "qemu accelerator");
        let images = ImageStore::open(&config.data_dir.join("images"))
            .map_err(|e| unavailable(format!("opening the image cache: {e}")))?;
        let (events, _) = broadcast::channel(1024);
        let rt = Self {
            inner: Arc::new(Inner {
                config,
                accel,
                images,
                vms: Mutex::new(HashMap::new()),
                events,
            }),
        };
        rt.adopt_all(&ships);
        rt.spawn_image_gc();
        Ok(rt)
    }

    /// The accelerator VMs run with, and why.
    pub fn accel(&self) -> &AccelProbe {
        &self.inner.accel
    }

    /// The node's image cache.
    pub fn images_store(&self) -> &ImageStore {
        &self.inner.images
    }

    /// PID of a VM's QEMU process while it runs.
    pub fn pid(&self, uid: &str) -> Option<u32> {
        let vm = self.vm(uid)?;
        let live = lock(&vm.live);
        live.as_ref().map(|l| l.pid)
    }

    /// Hard-resets a running VM (the guest reboots at once).
    pub async fn reset(&self, uid: &str) -> Result<(), RuntimeError> {
        self.qmp_of(uid)?.reset().await.map_err(unavailable)
    }

    fn qmp_of(&self, uid: &str) -> Result<Arc<Qmp>, RuntimeError> {
        let vm = self
            .vm(uid)
            .ok_or_else(|| RuntimeError::NotFound(uid.into()))?;
        let live = lock(&vm.live);
        live.as_ref()
            .and_then(|l| l.qmp.clone())
            .ok_or_else(|| RuntimeError::Unavailable(format!("VM {uid} is not running")))
    }

    fn vm(&self, uid: &str) -> Option<Arc<Vm>> {
        lock(&self.inner.vms).get(uid).cloned()
    }

    fn emit(&self, uid: &str, state: Option<VmState>) {
        let _ = self.inner.events.send(RuntimeEvent {
            uid: uid.to_string(),
            state,
        });
    }

    fn persist(&self, vm: &Vm) {
        let record = lock(&vm.record).clone();
        match serde_json::to_vec_pretty(&record) {
            Ok(bytes) => {
                if let Err(e) = write_atomic(&vm.dir.join("state.json"), &bytes) {
                    tracing::warn!(dir = %vm.dir.display(), error = %e, "saving VM state");
                }
            }
            Err(e) => tracing::warn!(error = %e, "encoding VM state"),
        }
    }

    fn set_state(&self, uid: &str, vm: &Vm, state: Persisted, reason: Option<String>) {
        {
            let mut r = lock(&vm.record);
            if r.state == state && r.reason == reason {
                return;
            }
            // Pausing and resuming keep the boot's start time; only a new boot moves it.
            if state == Persisted::Running && r.state != Persisted::Running {
                r.started_at = Some(jiff::Timestamp::now());
            }
            r.state = state;
            r.reason = reason;
        }
        self.persist(vm);
        self.emit(uid, Some(state.into()));
    }

    /// Loads every VM directory and reconnects to the QEMUs still running.
    fn adopt_all(&self, ships: &Path) {
        let entries = match std::fs::read_dir(ships) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %ships.display(), error = %e, "listing VMs");
                return;
            }
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(uid) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            let spec: Option<VmSpec> = std::fs::read(dir.join("spec.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let record: Option<VmRecord> = std::fs::read(dir.join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let (Some(spec), Some(record)) = (spec, record) else {
                tracing::warn!(dir = %dir.display(), "VM directory without a readable spec/state; leaving it alone");
                continue;
            };
            let paths = VmPaths::new(&dir);
            let vm = Arc::new(Vm {
                dir: dir.clone(),
                paths: paths.clone(),
                spec: Mutex::new(spec),
                record: Mutex::new(record),
                live: Mutex::new(None),
                guest: Mutex::new((None, Vec::new())),
                op: tokio::sync::Mutex::new(()),
                epoch: AtomicU64::new(0),
            });
            lock(&self.inner.vms).insert(uid.clone(), vm.clone());
            match process::read_pidfile(&paths.pidfile)
                .filter(|pid| process::is_vm_process(*pid, &paths.qmp))
            {
                Some(pid) => {
                    tracing::info!(%uid, pid, "re-adopting running VM");
                    let epoch = vm.epoch.fetch_add(1, Ordering::SeqCst) + 1;
                    *lock(&vm.live) = Some(Live {
                        pid,
                        epoch,
                        qmp: None,
                        stop_requested: false,
                    });
                    self.spawn_monitor(uid, vm, pid, epoch, true);
                }
                None => {
                    let was = lock(&vm.record).state;
                    if matches!(was, Persisted::Running | Persisted::Starting) {
                        // It died while nobody watched (host reboot, OOM kill, …).
                        self.set_state(
                            &uid,
                            &vm,
                            Persisted::Crashed,
                            Some("qemu exited while tugboatd was not running".into()),
                        );
                    }
                }
            }
        }
    }

    fn spawn_monitor(&self, uid: String, vm: Arc<Vm>, pid: u32, epoch: u64, adopted: bool) {
        let rt = self.clone();
        tokio::spawn(async move { rt.monitor(uid, vm, pid, epoch, adopted).await });
    }

    /// Follows one QEMU process from launch (or adoption) to exit.
    async fn monitor(&self, uid: String, vm: Arc<Vm>, pid: u32, epoch: u64, adopted: bool) {
        let current = |vm: &Vm| vm.epoch.load(Ordering::SeqCst) == epoch;
        let mut last_shutdown: Option<(bool, String)> = None;
        let mut panicked = false;
        loop {
            // (Re)connect to QMP while the process lives.
            let connected = Qmp::connect(&vm.paths.qmp, Duration::from_secs(5)).await;
            let (client, mut events) = match connected {
                Ok(c) => c,
                Err(e) => {
                    if !process::is_vm_process(pid, &vm.paths.qmp) {
                        break;
                    }
                    tracing::debug!(%uid, error = %e, "qmp not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if !current(&vm) {
                        return;
                    }
                    continue;
                }
            };
            let client = Arc::new(client);
            if !current(&vm) {
                return;
            }
            if let Some(l) = lock(&vm.live).as_mut() {
                if l.epoch == epoch {
                    l.qmp = Some(client.clone());
                }
            }
            match client.status().await {
                Ok(s) if s == "running" => {
                    let keep_start = adopted && lock(&vm.record).state == Persisted::Running;
                    if !keep_start {
                        self.set_state(&uid, &vm, Persisted::Running, None);
                    }
                }
                Ok(s) if s == "paused" => {
                    self.set_state(&uid, &vm, Persisted::Running, Some(PAUSED_REASON.into()))
                }
                Ok(s) => tracing::debug!(%uid, status = %s, "qemu status"),
                Err(e) => tracing::debug!(%uid, error = %e, "query-status"),
            }
            let mut guest_tick = tokio::time::interval(self.inner.config.guest_agent_interval);
            guest_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        None => break,
                        Some(ev) => {
                            if !current(&vm) {
                                return;
                            }
                            tracing::info!(%uid, event = ?ev, "qemu event");
                            match ev {
                                VmEvent::Shutdown { guest, reason } => last_shutdown = Some((guest, reason)),
                                VmEvent::Panicked => panicked = true,
                                // Only a real pause is one: a disk error (io-error) or the
                                // stop before a shutdown keeps its own status as the reason,
                                // so the agent never resumes into a failing disk.
                                VmEvent::Stop => match client.status().await {
                                    Ok(s) if s == "running" => {}
                                    Ok(s) if s == "paused" => self.set_state(&uid, &vm, Persisted::Running, Some(PAUSED_REASON.into())),
                                    Ok(s) => self.set_state(&uid, &vm, Persisted::Running, Some(s)),
                                    Err(e) => tracing::debug!(%uid, error = %e, "query-status after STOP"),
                                },
                                VmEvent::Resume => self.set_state(&uid, &vm, Persisted::Running, None),
                                VmEvent::Reset | VmEvent::Powerdown => {}
                            }
                        }
                    },
                    _ = guest_tick.tick() => {
                        if let Ok((info, ips)) = qmp::guest_info(&vm.paths.guest_agent, Duration::from_secs(2)).await {
                            let changed = {
                                let mut g = lock(&vm.guest);
                                let new = (Some(info), ips);
                                let changed = *g != new;
                                *g = new;
                                changed
                            };
                            if changed {
                                self.emit(&uid, Some(VmState::Running));
                            }
                        }
                    }
                }
            }
            if !process::wait_gone(pid, &vm.paths.qmp, Duration::from_secs(10)).await {
                // QMP closed but QEMU lives on (someone else connected?): reconnect.
                if !current(&vm) {
                    return;
                }
                continue;
            }
            break;
        }
        if !current(&vm) {
            return;
        }
        let stop_requested = {
            let mut live = lock(&vm.live);
            let requested = live.as_ref().is_some_and(|l| l.stop_requested);
            *live = None;
            requested
        };
        let had_guest = {
            let mut g = lock(&vm.guest);
            let had = g.0.is_some() || !g.1.is_empty();
            *g = (None, Vec::new());
            had
        };
        let (state, reason) = if stop_requested {
            (Persisted::Stopped, Some("stopped".to_string()))
        } else if panicked {
            (Persisted::Crashed, Some("guest-panicked".into()))
        } else {
            match last_shutdown {
                Some((true, reason)) => (Persisted::Stopped, Some(reason)),
                Some((false, reason)) => (Persisted::Stopped, Some(reason)),
                None => (Persisted::Crashed, Some("qemu exited unexpectedly".into())),
            }
        };
        tracing::info!(%uid, pid, ?state, reason = reason.as_deref().unwrap_or(""), "qemu exited");
        if state == Persisted::Stopped {
            lock(&vm.record).desired_running = false;
        }
        self.set_state(&uid, &vm, state, reason);
        if had_guest {
            // `stop` may have recorded this state already (so set_state said nothing): the
            // agent still has to hear that the guest's addresses are gone.
            self.emit(&uid, Some(state.into()));
        }
    }

    fn image_for(&self, reference: &str) -> Result<LocalImage, RuntimeError> {
        self.inner
            .images
            .get(reference)
            .map_err(|e| RuntimeError::Image {
                image: reference.into(),
                message: e.to_string(),
            })?
            .ok_or_else(|| RuntimeError::Image {
                image: reference.into(),
                message: "not in the node's image cache (prepare_image first)".into(),
            })
    }

    async fn create_overlay(
        &self,
        uid: &str,
        image: &LocalImage,
        overlay: &Path,
    ) -> Result<(), RuntimeError> {
        let (Some(base), Some(format)) = (&image.disk, image.disk_format) else {
            return Ok(());
        };
        if overlay.exists() {
            return Ok(());
        }
        let tmp = overlay.with_extension("qcow2.tmp");
        let out = tokio::process::Command::new(&self.inner.config.qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", format.as_str(), "-b"])
            .arg(base)
            .arg(&tmp)
            .output()
            .await
            .map_err(|e| RuntimeError::Start {
                uid: uid.into(),
                message: format!("running qemu-img: {e}"),
            })?;
        if !out.status.success() {
            return Err(RuntimeError::Start {
                uid: uid.into(),
                message: format!(
                    "qemu-img create overlay: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        std::fs::rename(&tmp, overlay).map_err(|e| RuntimeError::Start {
            uid: uid.into(),
            message: format!("placing the overlay: {e}"),
        })
    }

    fn new_vm(&self, spec: &VmSpec) -> Result<Arc<Vm>, RuntimeError> {
        if let Some(vm) = self.vm(&spec.uid) {
            return Ok(vm);
        }
        if spec.uid.is_empty()
            || spec.uid.contains('/')
            || spec.uid.starts_with('.')
            || spec.uid.len() > 128
        {
            return Err(RuntimeError::Start {
                uid: spec.uid.clone(),
                message: "invalid VM uid".into(),
            });
        }
        let dir = self.inner.config.data_dir.join("ships").join(&spec.uid);
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::Start {
            uid: spec.uid.clone(),
            message: format!("creating {}: {e}", dir.display()),
        })?;
        let vm = Arc::new(Vm {
            paths: VmPaths::new(&dir),
            dir,
            spec: Mutex::new(spec.clone()),
            record: Mutex::new(VmRecord {
                created_at: jiff::Timestamp::now(),
                started_at: None,
                boots: 0,
                desired_running: false,
                state: Persisted::Stopped,
                reason: None,
                image_digest: None,
            }),
            live: Mutex::new(None),
            guest: Mutex::new((None, Vec::new())),
            op: tokio::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
        });
        self.persist(&vm);
        lock(&self.inner.vms).insert(spec.uid.clone(), vm.clone());
        Ok(vm)
    }

    fn save_spec(&self, vm: &Vm, spec: &VmSpec) -> Result<(), RuntimeError> {
        *lock(&vm.spec) = spec.clone();
        let bytes = serde_json::to_vec_pretty(spec).map_err(unavailable)?;
        write_atomic(&vm.dir.join("spec.json"), &bytes).map_err(|e| RuntimeError::Start {
            uid: spec.uid.clone(),
            message: format!("saving spec.json: {e}"),
        })
    }

    async fn launch(&self, vm: &Arc<Vm>, spec: &VmSpec) -> Result<(), RuntimeError> {
        let uid = spec.uid.clone();
        let start_err = |message: String| RuntimeError::Start {
            uid: uid.clone(),
            message,
        };
        // Checked before anything is written for a VM that cannot start here.
        let machine = MachineType::parse(spec.machine.as_deref().unwrap_or(""))
            .map_err(|e| start_err(e.to_string()))?;
        if machine == MachineType::Microvm && self.inner.accel.accel == Accel::Tcg {
            // microvm has no HPET or ACPI PM timer and, without KVM, no kvm-clock: a Linux guest
            // can only calibrate its clock against the PIT, which under TCG fails in about one
            // boot in three and leaves the guest hung. Refused rather than flaky.
            return Err(start_err(
                "machine type microvm needs KVM, and this node runs guests with TCG (see the \
                 Node's KVMAvailable condition): use q35 here"
                    .into(),
            ));
        }
        let image = self.image_for(&spec.image)?;
        let overlay = vm.dir.join("root.qcow2");
        self.create_overlay(&uid, &image, &overlay).await?;
        self.inner.images.touch(&image.manifest_digest).ok();
        let cidata = match &spec.cloud_init {
            Some(ci) => {
                let iso = vm.dir.join("cidata.iso");
                let hostname = if spec.hostname.is_empty() {
                    spec.name.clone()
                } else {
                    spec.hostname.clone()
                };
                NoCloud {
                    instance_id: uid.clone(),
                    hostname,
                    user_data: ci.user_data.clone(),
                    network_config: ci.network_data.clone(),
                }
                .write_iso(&iso)
                .map_err(|e| start_err(format!("cloud-init ISO: {e}")))?;
                Some(iso)
            }
            None => None,
        };
        let launch = LaunchSpec {
            name: format!("{}/{}", spec.namespace, spec.name),
            uid: uid.clone(),
            accel: self.inner.accel.accel,
            machine,
            cpu: spec.cpu.clone(),
            memory_bytes: spec.memory_bytes,
            max_memory_bytes: spec.max_memory_bytes,
            dir: vm.dir.clone(),
            root_disk: image.disk.as_ref().map(|_| overlay.clone()),
            cidata,
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            kernel_cmdline: image.cmdline.clone(),
            nics: vec![Nic {
                id: "net0".into(),
                mac: crate::mac::for_nic(&uid, "net0"),
                forwards: spec.port_forwards.clone(),
            }],
        };
        let args = launch.args().map_err(|e| start_err(e.to_string()))?;
        // Sockets of an earlier process would make QEMU fail to bind.
        for p in [&vm.paths.qmp, &vm.paths.console, &vm.paths.guest_agent] {
            let _ = std::fs::remove_file(p);
        }
        let epoch = vm.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut r = lock(&vm.record);
            r.desired_running = true;
            r.state = Persisted::Starting;
            r.reason = None;
            r.started_at = None;
            r.boots = r.boots.saturating_add(1);
            r.image_digest = Some(image.manifest_digest.clone());
        }
        self.persist(vm);
        self.emit(&uid, Some(VmState::Starting));
        let pid = match process::launch(
            &self.inner.config.qemu_binary,
            &args,
            &vm.paths.pidfile,
            self.inner.config.start_timeout,
        )
        .await
        {
            Ok(pid) => pid,
            Err(e) => {
                self.set_state(&uid, vm, Persisted::Crashed, Some(e.to_string()));
                return Err(start_err(e.to_string()));
            }
        };
        tracing::info!(%uid, pid, accel = self.inner.accel.accel.as_str(), "qemu started");
        *lock(&vm.live) = Some(Live {
            pid,
            epoch,
            qmp: None,
            stop_requested: false,
        });
        self.spawn_monitor(uid, vm.clone(), pid, epoch, false);
        Ok(())
    }

    /// Stops the QEMU of `vm` if one runs: ACPI power-down and a grace period when `graceful`,
    /// then `quit`, then SIGKILL.
    async fn stop_process(&self, uid: &str, vm: &Arc<Vm>, graceful: bool, grace: Duration) {
        let live = {
            let mut live = lock(&vm.live);
            if let Some(l) = live.as_mut() {
                l.stop_requested = true;
            }
            live.clone()
        };
        lock(&vm.record).desired_running = false;
        let Some(live) = live else {
            return;
        };
        let marker = vm.paths.qmp.clone();
        if graceful && !grace.is_zero() {
            if let Some(q) = &live.qmp {
                // Paused vCPUs cannot answer the ACPI button: run them for the shutdown.
                if q.status().await.is_ok_and(|s| s != "running") {
                    if let Err(e) = q.resume().await {
                        tracing::debug!(%uid, error = %e, "cont before powerdown");
                    }
                }
                if let Err(e) = q.powerdown().await {
                    tracing::debug!(%uid, error = %e, "system_powerdown");
                }
                if process::wait_gone(live.pid, &marker, grace).await {
                    return;
                }
                tracing::info!(%uid, ?grace, "guest did not power off in its grace period; quitting");
            }
        }
        if let Some(q) = &live.qmp {
            let _ = q.quit().await;
            if process::wait_gone(live.pid, &marker, Duration::from_secs(5)).await {
                return;
            }
        }
        if process::is_vm_process(live.pid, &marker) {
            tracing::warn!(%uid, pid = live.pid, "killing qemu");
            let _ = process::signal(live.pid, libc::SIGKILL);
            process::wait_gone(live.pid, &marker, Duration::from_secs(5)).await;
        }
    }

    fn spawn_image_gc(&self) {
        let rt = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(rt.inner.config.image_gc_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let in_use: HashSet<String> = lock(&rt.inner.vms)
                    .values()
                    .filter_map(|vm| lock(&vm.record).image_digest.clone())
                    .collect();
                match rt.inner.images.gc(&in_use, rt.inner.config.image_gc_after) {
                    Ok(report) => tracing::info!(?report, "image garbage collection"),
                    Err(e) => tracing::warn!(error = %e, "image garbage collection"),
                }
            }
        });
    }

    /// The node's own flags first, then the cluster's settings.
    fn pull_options(&self, cluster: &RegistryHosts) -> PullOptions {
        let mut hosts = RegistryHosts {
            mirrors: self.inner.config.mirrors.clone(),
            insecure: self
                .inner
                .config
                .insecure_registries
                .iter()
                .cloned()
                .collect(),
        };
        hosts.merge(cluster);
        PullOptions {
            insecure_registries: hosts.insecure.into_iter().collect(),
            mirrors: hosts.mirrors,
            ..PullOptions::default()
        }
    }
}

impl Runtime for QemuRuntime {
    async fn prepare_image(
        &self,
        image: &str,
        registries: &RegistryHosts,
    ) -> Result<(), RuntimeError> {
        let opts = self.pull_options(registries);
        self.inner
            .images
            .ensure(image, &opts)
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::Image {
                image: image.into(),
                message: e.to_string(),
            })
    }

    async fn start(&self, spec: &VmSpec) -> Result<(), RuntimeError> {
        let vm = self.new_vm(spec)?;
        let _op = vm.op.lock().await;
        let previous_token = lock(&vm.spec).restart_token.clone();
        self.save_spec(&vm, spec)?;
        let running = lock(&vm.live)
            .as_ref()
            .is_some_and(|l| process::is_vm_process(l.pid, &vm.paths.qmp));
        if running {
            if previous_token == spec.restart_token {
                return Ok(());
            }
            tracing::info!(uid = %spec.uid, "restart requested");
            let grace = stop_grace(spec, &self.inner.config);
            self.stop_process(&spec.uid, &vm, true, grace).await;
            // The monitor of the old process must not report its exit over the new boot.
            vm.epoch.fetch_add(1, Ordering::SeqCst);
            *lock(&vm.live) = None;
        }
        self.launch(&vm, spec).await
    }

    async fn stop(&self, uid: &str, graceful: bool) -> Result<(), RuntimeError> {
        let vm = self
            .vm(uid)
            .ok_or_else(|| RuntimeError::NotFound(uid.into()))?;
        let _op = vm.op.lock().await;
        let grace = stop_grace(&lock(&vm.spec).clone(), &self.inner.config);
        self.stop_process(uid, &vm, graceful, grace).await;
        let still = lock(&vm.live)
            .as_ref()
            .is_some_and(|l| process::is_vm_process(l.pid, &vm.paths.qmp));
        if still {
            return Err(RuntimeError::Stop {
                uid: uid.into(),
                message: "qemu is still running after SIGKILL".into(),
            });
        }
        // The monitor reports the exit; make the state right even if it has not run yet.
        vm.epoch.fetch_add(1, Ordering::SeqCst);
        *lock(&vm.live) = None;
        let state = lock(&vm.record).state;
        if state != Persisted::Stopped {
            self.set_state(uid, &vm, Persisted::Stopped, Some("stopped".into()));
        }
        Ok(())
    }

    async fn delete(&self, uid: &str) -> Result<(), RuntimeError> {
        let Some(vm) = self.vm(uid) else {
            return Ok(());
        };
        {
            let _op = vm.op.lock().await;
            self.stop_process(uid, &vm, false, Duration::ZERO).await;
            vm.epoch.fetch_add(1, Ordering::SeqCst);
            *lock(&vm.live) = None;
            if let Err(e) = std::fs::remove_dir_all(&vm.dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(RuntimeError::Delete {
                        uid: uid.into(),
                        message: format!("removing {}: {e}", vm.dir.display()),
                    });
                }
            }
        }
        lock(&self.inner.vms).remove(uid);
        self.emit(uid, None);
        Ok(())
    }

    async fn status(&self, uid: &str) -> Result<Option<VmStatus>, RuntimeError> {
        let Some(vm) = self.vm(uid) else {
            return Ok(None);
        };
        let r = lock(&vm.record).clone();
        // Guest facts belong to a running guest: `stop` can report Stopped before the monitor
        // of the exited QEMU has cleared them.
        let (guest, ips) = if r.state == Persisted::Running {
            lock(&vm.guest).clone()
        } else {
            (None, Vec::new())
        };
        Ok(Some(VmStatus {
            state: r.state.into(),
            started_at: if r.state == Persisted::Running {
                r.started_at
            } else {
                None
            },
            created_at: r.created_at,
            ip_addresses: ips,
            restarts: r.boots.saturating_sub(1),
            guest,
            reason: r.reason,
        }))
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(lock(&self.inner.vms).keys().cloned().collect())
    }

    async fn spec(&self, uid: &str) -> Result<Option<VmSpec>, RuntimeError> {
        Ok(self.vm(uid).map(|vm| lock(&vm.spec).clone()))
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    async fn console(&self, uid: &str) -> Result<ConsoleEndpoints, RuntimeError> {
        let vm = self
            .vm(uid)
            .ok_or_else(|| RuntimeError::NotFound(uid.into()))?;
        Ok(ConsoleEndpoints {
            socket: vm.paths.console.clone(),
            log: vm.paths.console_log.clone(),
        })
    }

    async fn images(&self) -> Vec<NodeImage> {
        match self.inner.images.list() {
            Ok(list) => list
                .into_iter()
                .map(|i| NodeImage {
                    names: i.names(),
                    size_bytes: i.size_bytes,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing images");
                Vec::new()
            }
        }
    }

    async fn pause(&self, uid: &str) -> Result<(), RuntimeError> {
        self.qmp_of(uid)?.pause().await.map_err(unavailable)
    }

    async fn resume(&self, uid: &str) -> Result<(), RuntimeError> {
        self.qmp_of(uid)?.resume().await.map_err(unavailable)
    }

    async fn load_images(&self, archive: ArchiveReader) -> Result<Vec<String>, RuntimeError> {
        const UPLOAD: &str = "upload";
        self.inner
            .images
            .load_from(archive, Path::new(UPLOAD), &Progress::silent())
            .await
            .map_err(|e| match e {
                // Reading the upload is the archive's trouble (not a tar, cut short) unless the
                // disk filled while its bytes were copied.
                ImageError::Io {
                    ref path,
                    ref source,
                    ..
                } if path == Path::new(UPLOAD) && source.raw_os_error() != Some(libc::ENOSPC) => {
                    RuntimeError::Image {
                        image: "archive".into(),
                        message: e.to_string(),
                    }
                }
                // The node's own trouble (disk full, I/O), not the archive's.
                ImageError::Io { .. } | ImageError::Index { .. } | ImageError::Internal(_) => {
                    RuntimeError::Unavailable(format!("loading images on this node: {e}"))
                }
                e => RuntimeError::Image {
                    image: "archive".into(),
                    message: e.to_string(),
                },
            })
    }
}

fn stop_grace(spec: &VmSpec, config: &QemuConfig) -> Duration {
    spec.stop_grace_secs
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(config.default_stop_grace)
}

/// The accelerator a fresh probe would pick for this host (for `tugboat` diagnostics).
pub async fn probe_accel(qemu: &Path, cache_dir: &Path) -> Accel {
    accel::detect(qemu, AccelChoice::Auto, cache_dir)
        .await
        .accel
}
