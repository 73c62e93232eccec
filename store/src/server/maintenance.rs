//! etcdserverpb.Maintenance: status, alarms, hashes, snapshots, defragment.

use super::EtcdServer;
use crate::error::StoreError;
use crate::pb::etcdserverpb::{
    maintenance_server::Maintenance, AlarmRequest, AlarmResponse, DefragmentRequest,
    DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse,
    HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use futures::Stream;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The Maintenance service.
pub struct MaintenanceService(pub Arc<EtcdServer>);

/// Bytes per snapshot chunk sent to the client.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

fn io_status(e: std::io::Error) -> Status {
    Status::internal(format!("etcdserver: snapshot: {e}"))
}

/// Writes the store image to an unlinked temp file, padded to a multiple of
/// 512 bytes and followed by its SHA-256, the layout etcd clients check.
fn write_snapshot_file(server: &EtcdServer) -> Result<(std::fs::File, u64), Status> {
    std::fs::create_dir_all(&server.cfg.tmp_dir).map_err(io_status)?;
    let mut file = tempfile::tempfile_in(&server.cfg.tmp_dir).map_err(io_status)?;
    {
        let mut w = std::io::BufWriter::new(&mut file);
        server.kv.write_image(&mut w)?;
        w.flush().map_err(io_status)?;
    }
    let len = file.seek(SeekFrom::End(0)).map_err(io_status)?;
    let pad = (512 - (len % 512)) % 512;
    file.write_all(&vec![0u8; pad as usize])
        .map_err(io_status)?;
    file.seek(SeekFrom::Start(0)).map_err(io_status)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io_status)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    file.write_all(&hasher.finalize()).map_err(io_status)?;
    let total = len + pad + 32;
    file.seek(SeekFrom::Start(0)).map_err(io_status)?;
    Ok((file, total))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        self.0.check_leader(&request)?;
        // Tugboat raises no alarms yet (no space quota); listing, arming and
        // disarming all see an empty set.
        let rev = self.0.kv.revisions()?.0;
        Ok(Response::new(AlarmResponse {
            header: self.0.header(rev),
            alarms: Vec::new(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let rev = self.0.kv.revisions()?.0;
        let st = self.0.raft.status();
        let size = self.0.db_file_size() as i64;
        let in_use = self.0.kv.size_on_disk() as i64;
        let is_learner = st.members.iter().any(|m| m.id == st.id && !m.is_voter);
        let errors = if st.leader.is_none() {
            vec!["etcdserver: no leader".to_string()]
        } else {
            Vec::new()
        };
        Ok(Response::new(StatusResponse {
            header: self.0.header(rev),
            version: self.0.cfg.version.clone(),
            db_size: size,
            leader: st.leader.unwrap_or(0),
            raft_index: st.committed_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            errors,
            db_size_in_use: in_use,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let server = self.0.clone();
        // sled reclaims space from compacted history on its own as it rewrites
        // segments; defragment makes that durable and visible right away.
        tokio::task::spawn_blocking(move || server.kv.flush())
            .await
            .map_err(|e| Status::internal(format!("etcdserver: defragment: {e}")))??;
        let rev = self.0.kv.revisions()?.0;
        Ok(Response::new(DefragmentResponse {
            header: self.0.header(rev),
        }))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let rev = self.0.kv.revisions()?.0;
        let hash = self.0.kv.hash_all()?;
        Ok(Response::new(HashResponse {
            header: self.0.header(rev),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let (current, compacted) = self.0.kv.revisions()?;
        let want = request.into_inner().revision;
        let rev = if want <= 0 { current } else { want };
        if rev > current {
            return Err(StoreError::FutureRevision.into());
        }
        if rev < compacted {
            return Err(StoreError::Compacted.into());
        }
        let hash = self.0.kv.hash_kv(rev)?;
        Ok(Response::new(HashKvResponse {
            header: self.0.header(current),
            hash,
            compact_revision: compacted,
            hash_revision: rev,
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let server = self.0.clone();
        let rev = server.kv.revisions()?.0;
        let header = server.header(rev);
        let version = server.cfg.version.clone();
        let (mut file, total) = tokio::task::spawn_blocking(move || write_snapshot_file(&server))
            .await
            .map_err(|e| Status::internal(format!("etcdserver: snapshot: {e}")))??;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK];
            while sent < total {
                let n = match file.read(&mut buf) {
                    Ok(0) => {
                        let _ = tx.blocking_send(Err(Status::internal(
                            "etcdserver: snapshot file truncated",
                        )));
                        return;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(io_status(e)));
                        return;
                    }
                };
                sent += n as u64;
                let msg = SnapshotResponse {
                    header,
                    remaining_bytes: total - sent,
                    blob: buf[..n].to_vec(),
                    version: version.clone(),
                };
                if tx.blocking_send(Ok(msg)).is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        let st = self.0.raft.status();
        if st.leader == Some(target) {
            let rev = self.0.kv.revisions()?.0;
            return Ok(Response::new(MoveLeaderResponse {
                header: self.0.header(rev),
            }));
        }
        Err(Status::unimplemented(
            "etcdserver: leadership transfer is not supported yet",
        ))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: tugboat does not support cluster version downgrades",
        ))
    }
}
