#![deny(missing_docs)]
//! The Tugboat node agent.
//!
//! A [`NodeAgent`] registers its Node with the apiserver, heartbeats through a
//! `coordination.k8s.io/v1` Lease, watches only the Ships bound to it
//! (`fieldSelector=spec.nodeName=<node>`) and drives them through a [`Runtime`]:
//! image preparation, start, stop, delete and status reporting, with the
//! `tugboat.io/agent` finalizer so a Ship's object disappears only after its VM is gone.
//!
//! [`AgentServer`] is the agent's HTTPS endpoint (port 10250, like the kubelet's) through which
//! the apiserver streams VM serial logs and attaches consoles.
//!
//! [`FakeRuntime`] is an in-memory runtime with knobs (boot delay, failure rate, crash-after),
//! deterministic under a seed, for tests and scale simulations.

pub mod agent;
pub mod fake;
pub mod resolve;
pub mod runtime;
pub mod server;

pub use agent::{
    AgentError, NodeAgent, NodeAgentConfig, NodeResources, FINALIZER, FORCE_DELETE_ANNOTATION,
};
pub use fake::{FakeConfig, FakeRuntime};
pub use runtime::{
    ArchiveReader, CloudInitData, ConsoleEndpoints, CpuSpec, GuestInfo, NodeImage, PortForward,
    RegistryHosts, Runtime, RuntimeError, RuntimeEvent, VmSpec, VmState, VmStatus, PAUSED_REASON,
};
pub use server::{AgentServer, AgentServerConfig, ServerError};
