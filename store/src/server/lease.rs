//! etcdserverpb.Lease: grants and revocations are replicated; keep-alives
//! and remaining TTLs are the leader's clock.

use super::EtcdServer;
use crate::error::StoreError;
use crate::pb::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::pb::raftcmd::{store_command::Cmd, store_result::Result as Res};
use crate::validate;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The Lease service.
pub struct LeaseService(pub Arc<EtcdServer>);

impl LeaseService {
    fn fresh_id(&self) -> Result<i64, Status> {
        let st = self.0.kv.read()?;
        // etcd IDs are positive int64; pick one not in use.
        for _ in 0..64 {
            let id = (rand::random::<u64>() >> 1) as i64;
            if id != 0 && !st.leases.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(Status::internal("etcdserver: cannot allocate a lease ID"))
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.0.check_leader(&request)?;
        let mut req = request.into_inner();
        validate::check_lease_ttl(req.ttl)?;
        if req.id < 0 {
            return Err(StoreError::InvalidArgument("lease ID must not be negative".into()).into());
        }
        if req.id == 0 {
            req.id = self.fresh_id()?;
        }
        match self.0.propose(Cmd::LeaseGrant(req)).await? {
            Res::LeaseGrant(mut r) => {
                r.header = self.0.complete(r.header);
                Ok(Response::new(r))
            }
            _ => Err(Status::internal(
                "etcdserver: unexpected apply result for lease grant",
            )),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.0.check_leader(&request)?;
        let req = request.into_inner();
        match self.0.propose(Cmd::LeaseRevoke(req)).await? {
            Res::LeaseRevoke(mut r) => {
                r.header = self.0.complete(r.header);
                Ok(Response::new(r))
            }
            _ => Err(Status::internal(
                "etcdserver: unexpected apply result for lease revoke",
            )),
        }
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.0.check_leader(&request)?;
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let server = self.0.clone();
        tokio::spawn(async move {
            let closed = server.closed();
            tokio::pin!(closed);
            loop {
                let next = tokio::select! {
                    _ = &mut closed => break,
                    next = incoming.message() => next,
                };
                let req = match next {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "keep-alive stream ended");
                        break;
                    }
                };
                // An unknown lease answers TTL 0, which clients report as "not found".
                let resp = server.renew_lease(req.id).await.map(|ttl| {
                    let rev = server.kv.revisions().map(|r| r.0).unwrap_or(0);
                    LeaseKeepAliveResponse {
                        header: server.header(rev),
                        id: req.id,
                        ttl,
                    }
                });
                if tx.send(resp).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.0.check_leader(&request)?;
        let req = request.into_inner();
        self.0.read_barrier().await?;
        let remaining = self.0.lease_remaining(req.id).await?;
        let st = self.0.kv.read()?;
        let rev = st.current;
        let resp = match st.leases.get(&req.id) {
            Some(lease) => {
                let (left, granted) = remaining.unwrap_or((lease.ttl, lease.ttl));
                LeaseTimeToLiveResponse {
                    header: self.0.header(rev),
                    id: req.id,
                    ttl: left,
                    granted_ttl: granted,
                    keys: if req.keys {
                        lease.keys.iter().cloned().collect()
                    } else {
                        Vec::new()
                    },
                }
            }
            // etcd answers an unknown lease with TTL -1, not an error.
            None => LeaseTimeToLiveResponse {
                header: self.0.header(rev),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.0.check_leader(&request)?;
        self.0.read_barrier().await?;
        let st = self.0.kv.read()?;
        // Soonest expiry first, as etcd lists them.
        let mut ids: Vec<(Option<std::time::Instant>, i64)> = st
            .leases
            .keys()
            .map(|id| (self.0.leases.deadline(*id), *id))
            .collect();
        // Leases without a known deadline go last, each group by deadline, then id.
        ids.sort_by_key(|(deadline, id)| (deadline.is_none(), *deadline, *id));
        Ok(Response::new(LeaseLeasesResponse {
            header: self.0.header(st.current),
            leases: ids.into_iter().map(|(_, id)| LeaseStatus { id }).collect(),
        }))
    }
}
