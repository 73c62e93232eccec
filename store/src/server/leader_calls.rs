//! Calls a follower makes to the leader for state only the leader has: the
//! lease clock. Keep-alives and remaining TTLs on a follower are answered by
//! the leader's clock, so a client may keep a lease alive through any member.

use super::EtcdServer;
use std::sync::{Arc, Weak};
use tonic::Status;
use tugboat_consensus::{AppHandler, ForwardError};

/// Renews a lease; answers the new TTL (0: unknown lease).
pub(crate) const LEASE_RENEW: &str = "lease.renew";
/// Remaining and granted TTL of a lease; empty answer: no deadline known.
pub(crate) const LEASE_REMAINING: &str = "lease.remaining";

/// The leader side of [`LEASE_RENEW`] and [`LEASE_REMAINING`].
pub(crate) struct LeaderCalls(pub(crate) Weak<EtcdServer>);

fn lease_id(body: &[u8]) -> Result<i64, ForwardError> {
    let bytes: [u8; 8] = body
        .try_into()
        .map_err(|_| ForwardError::Rejected("lease id must be 8 bytes".into()))?;
    Ok(i64::from_le_bytes(bytes))
}

#[tonic::async_trait]
impl AppHandler for LeaderCalls {
    async fn call(&self, method: &str, body: Vec<u8>) -> Result<Vec<u8>, ForwardError> {
        let server = self.0.upgrade().ok_or(ForwardError::ShuttingDown)?;
        let id = lease_id(&body)?;
        match method {
            LEASE_RENEW => Ok(server.leases.renew(id).unwrap_or(0).to_le_bytes().to_vec()),
            LEASE_REMAINING => Ok(match server.leases.remaining(id) {
                Some((left, granted)) => [left.to_le_bytes(), granted.to_le_bytes()].concat(),
                None => Vec::new(),
            }),
            other => Err(ForwardError::Rejected(format!(
                "unknown leader call {other:?}"
            ))),
        }
    }
}

fn forward_status(e: ForwardError) -> Status {
    match e {
        ForwardError::NotLeader { .. } => crate::error::StoreError::NoLeader.into(),
        ForwardError::ShuttingDown => crate::error::StoreError::Stopped.into(),
        _ => Status::unavailable("etcdserver: request timed out"),
    }
}

impl EtcdServer {
    /// Serves the leader calls of this module when this member leads.
    pub(crate) fn install_leader_calls(self: &Arc<Self>) {
        self.raft
            .set_app_handler(Arc::new(LeaderCalls(Arc::downgrade(self))));
    }

    /// Renews lease `id` on the leader's clock; answers the TTL (0: unknown lease).
    pub(crate) async fn renew_lease(&self, id: i64) -> Result<i64, Status> {
        if self.raft.is_leader() {
            return Ok(self.leases.renew(id).unwrap_or(0));
        }
        let out = self
            .raft
            .call_leader(LEASE_RENEW, id.to_le_bytes().to_vec())
            .await
            .map_err(forward_status)?;
        let bytes: [u8; 8] = out
            .as_slice()
            .try_into()
            .map_err(|_| Status::internal("etcdserver: malformed lease renewal answer"))?;
        Ok(i64::from_le_bytes(bytes))
    }

    /// Remaining and granted TTL of lease `id` on the leader's clock, if it has one.
    pub(crate) async fn lease_remaining(&self, id: i64) -> Result<Option<(i64, i64)>, Status> {
        if self.raft.is_leader() {
            return Ok(self.leases.remaining(id));
        }
        let out = self
            .raft
            .call_leader(LEASE_REMAINING, id.to_le_bytes().to_vec())
            .await
            .map_err(forward_status)?;
        if out.is_empty() {
            return Ok(None);
        }
        let (left, granted) = out.split_at(out.len().min(8));
        match (<[u8; 8]>::try_from(left), <[u8; 8]>::try_from(granted)) {
            (Ok(l), Ok(g)) => Ok(Some((i64::from_le_bytes(l), i64::from_le_bytes(g)))),
            _ => Err(Status::internal(
                "etcdserver: malformed lease time-to-live answer",
            )),
        }
    }
}
