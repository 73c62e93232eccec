//! etcdserverpb.Cluster: membership as raft knows it. Members join with
//! `tugboatd join` and a token, never by MemberAdd.

use super::EtcdServer;
use crate::pb::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

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
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: member removal is not available on a single-member tugboat cluster",
        ))
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
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: learner promotion is not available on a single-member tugboat cluster",
        ))
    }
}
