//! tugboat-consensus: replicates opaque commands through openraft (log, vote and snapshots on
//! sled) to a state machine implemented elsewhere; peers talk over tonic gRPC.
//!
//! The crate knows nothing of etcd: commands and responses are bytes.

// openraft's trait methods return its large `StorageError`; our helpers pass it through unboxed.
#![allow(clippy::result_large_err)]

mod batch;
mod election;
mod error;
pub mod forward;
pub mod join_token;
mod log_store;
pub mod network;
mod node;
mod recover;
mod roles;
mod runtime;
mod snapshot;
mod state_machine;
mod status;
mod types;
mod wal;

pub use error::{ConsensusError, ProposeError, StateMachineError};
pub use forward::{AppHandler, ForwardError};
pub use log_store::{LogReader, LogStore, LOG_TREE, META_TREE, WAL_DIR};
pub use network::{PeerClient, PeerHealth, PeerNetworkFactory, PeerServer, PeerService};
pub use node::{Bootstrap, Node, NodeConfig};
pub use recover::{force_new_cluster, RecoverReport};
pub use snapshot::SnapshotBuilder;
pub use state_machine::StateMachine;
pub use status::{MemberStatus, RaftRole, RaftStatus};
pub use types::{
    Command, Entry, LogId, MemberInfo, NodeId, Raft, SnapshotMeta, StorageError, TypeConfig, Vote,
};

#[cfg(test)]
mod tests;
