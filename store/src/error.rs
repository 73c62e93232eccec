//! Errors of the store, each mapped to the gRPC status and message etcd
//! answers for the same condition, so clients that match on etcd's text keep working.

use tonic::{Code, Status};

/// Request size limit: etcd's default `--max-request-bytes` (1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// gRPC framing headroom above the request limit, as etcd allows.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Operations allowed in one branch of a transaction (etcd's `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Largest lease TTL etcd accepts, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A request without a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// ignore_value / ignore_lease on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// ignore_value together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// ignore_lease together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More than [`MAX_TXN_OPS`] operations in a transaction branch.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Two writes to one key in one transaction.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A read or watch below the compaction point.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read above the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A request larger than [`MAX_REQUEST_BYTES`].
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// An unknown lease.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant with an ID already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant above [`MAX_LEASE_TTL`].
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// No leader is known; the request cannot be served now.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// This member is not the leader and cannot forward yet.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The member is stopping.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A request the facade does not support.
    #[error("etcdserver: {0}")]
    Unsupported(String),
    /// Malformed input that etcd would also refuse.
    #[error("etcdserver: {0}")]
    InvalidArgument(String),
    /// The backend failed; the member cannot continue safely.
    #[error("etcdserver: storage failure: {0}")]
    Storage(String),
    /// A stored record could not be decoded.
    #[error("etcdserver: corrupt record: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use StoreError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge | InvalidArgument(_) => Code::InvalidArgument,
            Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound => Code::NotFound,
            LeaseExists | NotLeader => Code::FailedPrecondition,
            NoLeader | Stopped => Code::Unavailable,
            Unsupported(_) => Code::Unimplemented,
            Storage(_) | Corrupt(_) => Code::Internal,
        }
    }

    /// Rebuilds an error from the code and message carried in a replicated result.
    pub fn from_wire(code: i32, message: &str) -> StoreError {
        use StoreError::*;
        let known = [
            EmptyKey,
            KeyNotFound,
            ValueProvided,
            LeaseProvided,
            TooManyOps,
            DuplicateKey,
            Compacted,
            FutureRevision,
            RequestTooLarge,
            LeaseNotFound,
            LeaseExists,
            LeaseTtlTooLarge,
            NoLeader,
            NotLeader,
            Stopped,
        ];
        if let Some(e) = known.into_iter().find(|e| e.to_string() == message) {
            return e;
        }
        let text = message
            .strip_prefix("etcdserver: ")
            .unwrap_or(message)
            .to_string();
        match Code::from_i32(code) {
            Code::InvalidArgument => InvalidArgument(text),
            Code::Unimplemented => Unsupported(text),
            _ => Storage(text),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        StoreError::Storage(e.to_string())
    }
}

impl From<prost::DecodeError> for StoreError {
    fn from(e: prost::DecodeError) -> StoreError {
        StoreError::Corrupt(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_kind() {
        for e in [
            StoreError::Compacted,
            StoreError::LeaseNotFound,
            StoreError::DuplicateKey,
        ] {
            let s: Status = e.clone().into();
            assert_eq!(StoreError::from_wire(s.code() as i32, s.message()), e);
        }
        let s: Status = StoreError::Compacted.into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }
}
