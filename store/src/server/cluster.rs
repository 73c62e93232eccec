//! etcdserverpb.Cluster: membership as raft knows it. Members join with
//! `tugboatd join` and a token, never by MemberAdd; removal and promotion go
//! through the leader, which keeps the voter count odd.

use super::EtcdServer;
use crate::pb::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tugboat_consensus::ForwardError;

/// The Cluster service.
pub struct ClusterService(pub Arc<EtcdServer>);

impl ClusterService {
    fn members(&self) -> Vec<Member> {
        self.0
            .raft
            .status()
            .members
            .into_iter()
            .map(|m| Member {
                id: m.id,
                name: m.info.name,
                peer_ur_ls: vec![m.info.peer_url],
                client_ur_ls: m.info.client_urls,
                is_learner: !m.is_voter,
            })
            .collect()
    }

    fn rev(&self) -> i64 {
        self.0.kv.revisions().map(|r| r.0).unwrap_or(0)
    }
}

/// A failed membership change as etcd reports it.
fn membership_status(e: ForwardError) -> Status {
    match e {
        ForwardError::Rejected(m) if m.contains("member not found") => Status::not_found(m),
        ForwardError::Rejected(m) => Status::failed_precondition(m),
        ForwardError::NotLeader { .. } => crate::error::StoreError::NoLeader.into(),
        ForwardError::ShuttingDown => crate::error::StoreError::Stopped.into(),
        ForwardError::Unavailable(_)
        | ForwardError::Transport(_)
        | ForwardError::Unreachable(_) => Status::unavailable("etcdserver: request timed out"),
        ForwardError::Fatal(m) => Status::internal(format!("etcdserver: {m}")),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(Status::failed_precondition(
            "etcdserver: tugboat members are added with `tugboatd join <peer> --token TOKEN`; create a token with `tugboat token create`",
        ))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.0.check_leader(&request)?;
        let id = request.into_inner().id;
        self.0
            .raft
            .remove_member(id)
            .await
            .map_err(membership_status)?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.0.header(self.rev()),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: tugboat member URLs follow the member's flags; restart it with new listen addresses",
        ))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.0.check_leader(&request)?;
        if request.get_ref().linearizable {
            self.0.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.0.header(self.rev()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.0.check_leader(&request)?;
        let id = request.into_inner().id;
        self.0
            .raft
            .promote_member(id)
            .await
            .map_err(membership_status)?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.0.header(self.rev()),
            members: self.members(),
        }))
    }
}
