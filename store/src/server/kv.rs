//! etcdserverpb.KV: reads served locally (after a read barrier unless
//! serializable), writes replicated.

use super::EtcdServer;
use crate::pb::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::pb::raftcmd::{store_command::Cmd, store_result::Result as Res};
use crate::validate;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The KV service.
pub struct KvService(pub Arc<EtcdServer>);

fn unexpected(what: &str) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result for {what}"))
}

impl KvService {
    fn observed<T>(&self, method: &str, r: Result<T, Status>) -> Result<Response<T>, Status> {
        self.0.metrics.observe(method, &r);
        r.map(Response::new)
    }

    async fn do_range(&self, request: Request<RangeRequest>) -> Result<RangeResponse, Status> {
        self.0.check_leader(&request)?;
        let req = request.into_inner();
        validate::check_range(&req)?;
        if !req.serializable {
            self.0.read_barrier().await?;
        }
        let mut resp = self.0.kv.range(&req)?;
        resp.header = self.0.complete(resp.header);
        Ok(resp)
    }

    async fn do_put(&self, request: Request<PutRequest>) -> Result<PutResponse, Status> {
        self.0.check_leader(&request)?;
        let req = request.into_inner();
        validate::check_size(&req)?;
        validate::check_put(&req)?;
        match self.0.propose(Cmd::Put(req)).await? {
            Res::Put(mut r) => {
                r.header = self.0.complete(r.header);
                Ok(r)
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn do_delete(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<DeleteRangeResponse, Status> {
        self.0.check_leader(&request)?;
        let req = request.into_inner();
        validate::check_size(&req)?;
        validate::check_delete(&req)?;
        match self.0.propose(Cmd::DeleteRange(req)).await? {
            Res::DeleteRange(mut r) => {
                r.header = self.0.complete(r.header);
                Ok(r)
            }
            _ => Err(unexpected("delete")),
        }
    }

    async fn do_txn(&self, request: Request<TxnRequest>) -> Result<TxnResponse, Status> {
        self.0.check_leader(&request)?;
        let req = request.into_inner();
        validate::check_size(&req)?;
        validate::check_txn(&req)?;
        if crate::apply::is_read_only(&req) {
            // Like etcd: a txn that only reads is served from the local replica
            // after a read barrier, without a log entry.
            self.0.read_barrier().await?;
            let mut view = self.0.kv.read_view()?;
            let mut r = crate::apply::read_only_txn(&mut view, req)?;
            drop(view);
            r.header = self.0.complete(r.header);
            return Ok(r);
        }
        match self.0.propose(Cmd::Txn(req)).await? {
            Res::Txn(mut r) => {
                r.header = self.0.complete(r.header);
                Ok(r)
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn do_compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<CompactionResponse, Status> {
        self.0.check_leader(&request)?;
        let req = request.into_inner();
        match self.0.propose(Cmd::Compaction(req)).await? {
            Res::Compaction(mut r) => {
                r.header = self.0.complete(r.header);
                Ok(r)
            }
            _ => Err(unexpected("compaction")),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let r = self.do_range(request).await;
        self.observed("Range", r)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = self.do_put(request).await;
        self.observed("Put", r)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let r = self.do_delete(request).await;
        self.observed("DeleteRange", r)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = self.do_txn(request).await;
        self.observed("Txn", r)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let r = self.do_compact(request).await;
        self.observed("Compact", r)
    }
}
