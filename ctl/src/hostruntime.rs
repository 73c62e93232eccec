//! The runtime `--runtime` picks, behind one type so the agent code is the same for all.

use tokio::sync::broadcast;
use tugboat_nodeagent::{
    ArchiveReader, ConsoleEndpoints, FakeRuntime, NodeImage, RegistryHosts, Runtime, RuntimeError,
    RuntimeEvent, VmSpec, VmStatus,
};
use tugboat_qemu::QemuRuntime;

/// A host's VM runtime.
#[derive(Clone, Debug)]
pub enum HostRuntime {
    /// Real VMs: QEMU over QMP.
    Qemu(QemuRuntime),
    /// The in-memory fake (tests, scale simulations).
    Fake(FakeRuntime),
}

macro_rules! each {
    ($self:ident, $rt:ident => $e:expr) => {
        match $self {
            HostRuntime::Qemu($rt) => $e,
            HostRuntime::Fake($rt) => $e,
        }
    };
}

impl Runtime for HostRuntime {
    async fn prepare_image(
        &self,
        image: &str,
        registries: &RegistryHosts,
    ) -> Result<(), RuntimeError> {
        each!(self, r => r.prepare_image(image, registries).await)
    }

    async fn start(&self, spec: &VmSpec) -> Result<(), RuntimeError> {
        each!(self, r => r.start(spec).await)
    }

    async fn stop(&self, uid: &str, graceful: bool) -> Result<(), RuntimeError> {
        each!(self, r => r.stop(uid, graceful).await)
    }

    async fn delete(&self, uid: &str) -> Result<(), RuntimeError> {
        each!(self, r => r.delete(uid).await)
    }

    async fn status(&self, uid: &str) -> Result<Option<VmStatus>, RuntimeError> {
        each!(self, r => r.status(uid).await)
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        each!(self, r => r.list().await)
    }

    async fn spec(&self, uid: &str) -> Result<Option<VmSpec>, RuntimeError> {
        each!(self, r => r.spec(uid).await)
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        each!(self, r => r.events())
    }

    async fn console(&self, uid: &str) -> Result<ConsoleEndpoints, RuntimeError> {
        each!(self, r => r.console(uid).await)
    }

    async fn images(&self) -> Vec<NodeImage> {
        each!(self, r => Runtime::images(r).await)
    }

    async fn pause(&self, uid: &str) -> Result<(), RuntimeError> {
        each!(self, r => r.pause(uid).await)
    }

    async fn resume(&self, uid: &str) -> Result<(), RuntimeError> {
        each!(self, r => r.resume(uid).await)
    }

    async fn load_images(&self, archive: ArchiveReader) -> Result<Vec<String>, RuntimeError> {
        each!(self, r => r.load_images(archive).await)
    }
}
