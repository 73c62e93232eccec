//! Error types of the consensus crate.

use crate::types::NodeId;

/// Failure of the replicated state machine (implemented by the store).
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// Disk or database I/O failed.
    #[error("state machine i/o: {0}")]
    Io(String),
    /// Persisted data or a snapshot image could not be decoded.
    #[error("state machine data corrupt: {0}")]
    Corrupt(String),
    /// Any other failure that makes the machine unable to continue.
    #[error("state machine: {0}")]
    Other(String),
}

impl From<std::io::Error> for StateMachineError {
    fn from(e: std::io::Error) -> Self {
        StateMachineError::Io(e.to_string())
    }
}

impl From<sled::Error> for StateMachineError {
    fn from(e: sled::Error) -> Self {
        StateMachineError::Io(e.to_string())
    }
}

/// Failure to open, run or reconfigure a consensus node.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// Raft storage (sled trees, snapshot files) failed.
    #[error("raft storage: {0}")]
    Storage(String),
    /// Persisted raft data could not be decoded.
    #[error("raft data corrupt: {0}")]
    Corrupt(String),
    /// The node configuration is invalid.
    #[error("invalid consensus config: {0}")]
    Config(String),
    /// The state machine failed.
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    /// Raft refused or failed an operation (membership change, initialization, ...).
    #[error("raft: {0}")]
    Raft(String),
    /// The data directory holds no initialized member (nothing to resume or recover).
    #[error("not an initialized member: {0}")]
    NotInitialized(String),
}

impl From<sled::Error> for ConsensusError {
    fn from(e: sled::Error) -> Self {
        ConsensusError::Storage(e.to_string())
    }
}

impl From<std::io::Error> for ConsensusError {
    fn from(e: std::io::Error) -> Self {
        ConsensusError::Storage(e.to_string())
    }
}

/// Failure of a proposal or of a read barrier.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// No leader is currently known (election in progress or quorum lost).
    #[error("no leader")]
    NoLeader,
    /// This node is not the leader; retry on `leader`.
    #[error("not leader (leader is {leader})")]
    NotLeader {
        /// The current leader's member id.
        leader: NodeId,
    },
    /// Leadership could not be confirmed with a quorum (read barrier); retry later.
    #[error("raft quorum unavailable: {0}")]
    Unavailable(String),
    /// The node is shutting down or already stopped.
    #[error("raft node is shutting down")]
    ShuttingDown,
    /// Raft hit an unrecoverable error (storage failure, panic); the node stops serving.
    #[error("raft fatal error: {0}")]
    Fatal(String),
}
