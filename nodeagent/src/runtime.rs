//! The VM runtime interface the agent drives (the QEMU runtime and [`crate::FakeRuntime`]
//! implement it).

use std::future::Future;

use tokio::sync::broadcast;
pub use tugboat_api::registries::RegistryHosts;

/// What the agent asks a runtime to run: one VM per Ship, keyed by the Ship's UID.
///
/// The agent resolves everything a runtime needs from the Ship, its ShipClass, its RuntimeClass
/// and referenced Secrets, so a runtime never talks to the apiserver.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSpec {
    /// UID of the Ship (the VM's identity in the runtime).
    pub uid: String,
    /// Namespace of the Ship.
    pub namespace: String,
    /// Name of the Ship.
    pub name: String,
    /// VM image reference (`spec.image`).
    pub image: String,
    /// Guest hostname (`spec.hostname`, else the Ship's name).
    #[serde(default)]
    pub hostname: String,
    /// vCPU topology from the ShipClass.
    #[serde(default)]
    pub cpu: CpuSpec,
    /// Guest memory in bytes (0: the runtime's default).
    #[serde(default)]
    pub memory_bytes: u64,
    /// Hotplug ceiling for memory in bytes (ShipClass `memory.maxSize`).
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
    /// Machine type (ShipClass `machineType`, else RuntimeClass `machine`; runtime default if unset).
    #[serde(default)]
    pub machine: Option<String>,
    /// NoCloud cloud-init data; `None` attaches no `cidata` disk.
    #[serde(default)]
    pub cloud_init: Option<CloudInitData>,
    /// Host ports forwarded to guest ports (`spec.portMappings`).
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
    /// Opaque token; a running VM whose token differs is restarted (`tugboat restart`).
    #[serde(default)]
    pub restart_token: Option<String>,
    /// Seconds a graceful stop waits for the guest (`spec.terminationGracePeriodSeconds`).
    #[serde(default)]
    pub stop_grace_secs: Option<u32>,
}

/// vCPU topology; zero values mean the runtime's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuSpec {
    /// vCPUs at boot (cores × sockets × threads as the ShipClass gives them).
    pub cores: u32,
    /// Sockets (0: 1).
    pub sockets: u32,
    /// Threads per core (0: 1).
    pub threads: u32,
    /// Hotplug ceiling of vCPUs (ShipClass `cpu.maxCores`).
    pub max_cores: Option<u32>,
    /// CPU model (`host`, `qemu64`, …); `None` is the runtime's choice.
    pub model: Option<String>,
}

/// Cloud-init NoCloud data, already resolved from Secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitData {
    /// `user-data` file contents.
    pub user_data: Option<String>,
    /// `network-config` file contents.
    pub network_data: Option<String>,
}

/// One host port forwarded into the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortForward {
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// Host address to bind (`None`: all).
    pub host_ip: Option<String>,
    /// Host port.
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
}

/// Where a VM's serial console can be reached on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleEndpoints {
    /// Unix socket speaking the raw serial stream (attach).
    pub socket: std::path::PathBuf,
    /// File the serial output is appended to (logs).
    pub log: std::path::PathBuf,
}

/// What the guest agent reports about the guest OS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestInfo {
    /// OS name (`Debian GNU/Linux`).
    pub os_name: Option<String>,
    /// OS version (`12 (bookworm)`).
    pub os_version: Option<String>,
    /// Kernel release.
    pub kernel_release: Option<String>,
    /// Hostname the guest reports.
    pub hostname: Option<String>,
}

/// Lifecycle state of a VM as the runtime sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmState {
    /// Booting: started but not yet up.
    Starting,
    /// Up and running.
    Running,
    /// Stopped on request (or shut down by its guest).
    Stopped,
    /// Died without being asked to.
    Crashed,
}

/// Observed state of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmStatus {
    /// Current state.
    pub state: VmState,
    /// When the VM last reached [`VmState::Running`] (kept while running, cleared on a new start).
    pub started_at: Option<jiff::Timestamp>,
    /// When the runtime first created the VM (survives restarts).
    pub created_at: jiff::Timestamp,
    /// Guest IP addresses.
    pub ip_addresses: Vec<String>,
    /// How many times the VM was started after its first start.
    pub restarts: u32,
    /// Guest OS facts from the guest agent, when it answers.
    pub guest: Option<GuestInfo>,
    /// Why the VM stopped or crashed (`guest-shutdown`, `guest-panicked`, `process exited`, …),
    /// or [`PAUSED_REASON`] for a running VM whose vCPUs are paused.
    pub reason: Option<String>,
}

/// [`VmStatus::reason`] of a running VM whose vCPUs are paused.
pub const PAUSED_REASON: &str = "paused";

impl VmStatus {
    /// Whether the VM runs with its vCPUs paused.
    pub fn is_paused(&self) -> bool {
        self.state == VmState::Running && self.reason.as_deref() == Some(PAUSED_REASON)
    }
}

/// A state change reported by the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// UID of the VM (its Ship's UID).
    pub uid: String,
    /// The state it moved to; `None` when the VM was deleted.
    pub state: Option<VmState>,
}

/// Errors of a runtime operation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    /// The image could not be fetched or prepared.
    #[error("preparing image {image}: {message}")]
    Image {
        /// Image reference.
        image: String,
        /// What went wrong.
        message: String,
    },
    /// The VM could not be started.
    #[error("starting VM {uid}: {message}")]
    Start {
        /// VM UID.
        uid: String,
        /// What went wrong.
        message: String,
    },
    /// The VM could not be stopped.
    #[error("stopping VM {uid}: {message}")]
    Stop {
        /// VM UID.
        uid: String,
        /// What went wrong.
        message: String,
    },
    /// The VM (or its local state) could not be deleted.
    #[error("deleting VM {uid}: {message}")]
    Delete {
        /// VM UID.
        uid: String,
        /// What went wrong.
        message: String,
    },
    /// The operation needs a VM that does not exist.
    #[error("VM {0} not found")]
    NotFound(String),
    /// The runtime itself is unavailable.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
}

/// A VM runtime: everything the agent needs to run Ships.
///
/// Every operation is idempotent: starting a running VM, stopping a stopped one or deleting
/// a missing one succeed without doing anything.
pub trait Runtime: Send + Sync + 'static {
    /// Fetches and prepares `image` so that VMs can boot from it, pulling through the cluster's
    /// `registries` settings (mirrors, plain-HTTP hosts) besides the runtime's own.
    fn prepare_image(
        &self,
        image: &str,
        registries: &RegistryHosts,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates the VM if missing and boots it unless it is already starting or running.
    fn start(&self, spec: &VmSpec) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stops the VM (ACPI shutdown when `graceful`, power-off otherwise); keeps its local state.
    fn stop(
        &self,
        uid: &str,
        graceful: bool,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stops the VM if needed and deletes it with its local state.
    fn delete(&self, uid: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The VM's state, `None` when the runtime does not know it.
    fn status(
        &self,
        uid: &str,
    ) -> impl Future<Output = Result<Option<VmStatus>, RuntimeError>> + Send;

    /// UIDs of every VM the runtime knows.
    fn list(&self) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;

    /// Spec of a known VM (the agent uses it to restart VMs and to name orphans in logs).
    fn spec(&self, uid: &str) -> impl Future<Output = Result<Option<VmSpec>, RuntimeError>> + Send;

    /// A receiver of state changes from now on.
    fn events(&self) -> broadcast::Receiver<RuntimeEvent>;

    /// The VM's serial console endpoints (runtimes without a console answer `Unavailable`).
    fn console(
        &self,
        uid: &str,
    ) -> impl Future<Output = Result<ConsoleEndpoints, RuntimeError>> + Send {
        let uid = uid.to_string();
        async move {
            Err(RuntimeError::Unavailable(format!(
                "VM {uid}: this runtime has no serial console"
            )))
        }
    }

    /// Images the node holds, for `Node.status.images` (names and sizes).
    fn images(&self) -> impl Future<Output = Vec<NodeImage>> + Send {
        async { Vec::new() }
    }

    /// Pauses a running VM's vCPUs (memory and devices stay; `resume` continues it).
    fn pause(&self, uid: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        std::future::ready(Err(cannot_pause(uid)))
    }

    /// Resumes a paused VM.
    fn resume(&self, uid: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        std::future::ready(Err(cannot_pause(uid)))
    }

    /// Loads the images of an OCI image layout tar archive (`tugboat image save`), read front
    /// to back from `archive`, into the node's cache; returns the references loaded.
    fn load_images(
        &self,
        archive: ArchiveReader,
    ) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send {
        drop(archive);
        async {
            Err(RuntimeError::Unavailable(
                "this runtime keeps no images".to_string(),
            ))
        }
    }
}

fn cannot_pause(uid: &str) -> RuntimeError {
    RuntimeError::Unavailable(format!("VM {uid}: this runtime cannot pause VMs"))
}

/// An image archive being uploaded: a blocking reader, to be read on a blocking thread.
pub type ArchiveReader = Box<dyn std::io::Read + Send>;

/// One image in a node's cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeImage {
    /// References (`registry/repo:tag`, `…@sha256:…`).
    pub names: Vec<String>,
    /// Bytes on disk.
    pub size_bytes: u64,
}
