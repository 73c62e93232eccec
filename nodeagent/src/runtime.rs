//! The VM runtime interface the agent drives (the QEMU runtime and [`crate::FakeRuntime`]
//! implement it).

use std::future::Future;

use tokio::sync::broadcast;

/// What the agent asks a runtime to run: one VM per Ship, keyed by the Ship's UID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// UID of the Ship (the VM's identity in the runtime).
    pub uid: String,
    /// Namespace of the Ship.
    pub namespace: String,
    /// Name of the Ship.
    pub name: String,
    /// VM image reference (`spec.image`).
    pub image: String,
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
    /// Fetches and prepares `image` so that VMs can boot from it.
    fn prepare_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

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
}
