//! The etcd v3 gRPC services over the replicated store.

mod auth;
mod cluster;
mod kv;
mod leader_calls;
mod lease;
mod maintenance;
pub mod metrics;
mod watch;

use crate::error::{StoreError, GRPC_OVERHEAD_BYTES, MAX_REQUEST_BYTES};
use crate::lease::LeaseClock;
use crate::mvcc::KvStore;
use crate::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
    ResponseHeader,
};
use crate::pb::raftcmd::{
    store_command::Cmd, store_result::Result as Res, StoreCommand, StoreResult,
};
use prost::Message;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Status};
use tugboat_consensus::{Node, ProposeError};

/// The etcd version this facade reports (its API level).
pub const ETCD_API_VERSION: &str = "3.5.17";

/// Settings of the etcd facade.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Version string reported by Maintenance/Status.
    pub version: String,
    /// Period of progress notifications to watchers that asked for them.
    pub watch_progress_interval: Duration,
    /// Deadline for a proposal before answering `request timed out`.
    pub request_timeout: Duration,
    /// Directory for temporary files (snapshots streamed to clients).
    pub tmp_dir: PathBuf,
    /// Directory of the database files, measured for `dbSize`.
    pub db_dir: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            version: ETCD_API_VERSION.into(),
            watch_progress_interval: Duration::from_secs(600),
            request_timeout: Duration::from_secs(7),
            tmp_dir: std::env::temp_dir(),
            db_dir: None,
        }
    }
}

/// Shared state of every service: the store, the lease clock and the raft node.
pub struct EtcdServer {
    /// The MVCC store (local replica).
    pub kv: Arc<KvStore>,
    /// Leader-local lease deadlines.
    pub leases: Arc<LeaseClock>,
    /// The consensus node replicating commands.
    pub raft: Node,
    /// Facade settings.
    pub cfg: ServerConfig,
    /// Request counters.
    pub metrics: metrics::Metrics,
    /// Set when the member stops: long-lived streams (watches, keep-alives) end, so listeners
    /// can drain at once.
    closing: tokio::sync::watch::Sender<bool>,
}

fn propose_error(e: ProposeError) -> Status {
    match e {
        ProposeError::NoLeader => StoreError::NoLeader.into(),
        ProposeError::NotLeader { .. } => StoreError::NotLeader.into(),
        ProposeError::Unavailable(_) => Status::unavailable("etcdserver: request timed out"),
        ProposeError::ShuttingDown => StoreError::Stopped.into(),
        ProposeError::Fatal(m) => Status::internal(format!("etcdserver: {m}")),
    }
}

impl EtcdServer {
    /// A server over an opened store and running node.
    pub fn new(
        kv: Arc<KvStore>,
        leases: Arc<LeaseClock>,
        raft: Node,
        cfg: ServerConfig,
    ) -> Arc<Self> {
        let server = Arc::new(EtcdServer {
            kv,
            leases,
            raft,
            cfg,
            metrics: metrics::Metrics::default(),
            closing: tokio::sync::watch::Sender::new(false),
        });
        server.install_leader_calls();
        server
    }

    /// Ends every watch and keep-alive stream (the member is stopping).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`EtcdServer::close_streams`] was called.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// The response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.raft.cluster_id(),
            member_id: self.raft.member_id(),
            revision,
            raft_term: self.raft.term(),
        })
    }

    /// Fills the node-specific fields of a header produced by the store.
    pub fn complete(&self, h: Option<ResponseHeader>) -> Option<ResponseHeader> {
        self.header(h.map_or(0, |h| h.revision))
    }

    /// Honours the `hasleader` metadata etcd clients send when they need a leader.
    pub fn check_leader<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let wants = req
            .metadata()
            .get("hasleader")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "true");
        if wants && self.raft.leader().is_none() {
            return Err(StoreError::NoLeader.into());
        }
        Ok(())
    }

    /// Replicates a command and returns its applied result.
    pub async fn propose(&self, cmd: Cmd) -> Result<Res, Status> {
        let bytes = StoreCommand { cmd: Some(cmd) }.encode_to_vec();
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(StoreError::RequestTooLarge.into());
        }
        let out = tokio::time::timeout(self.cfg.request_timeout, self.raft.propose(bytes))
            .await
            .map_err(|_| Status::unavailable("etcdserver: request timed out"))?
            .map_err(propose_error)?;
        let result = StoreResult::decode(out.as_slice())
            .map_err(|e| Status::internal(format!("etcdserver: undecodable apply result: {e}")))?;
        match result.result {
            Some(Res::Error(e)) => Err(StoreError::from_wire(e.code, &e.message).into()),
            Some(r) => Ok(r),
            None => Err(Status::internal("etcdserver: empty apply result")),
        }
    }

    /// Waits until this replica reflects everything committed before the call.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        tokio::time::timeout(self.cfg.request_timeout, self.raft.read_barrier())
            .await
            .map_err(|_| Status::unavailable("etcdserver: request timed out"))?
            .map_err(propose_error)
    }

    /// Bytes the database files occupy (etcd's `dbSize`); falls back to the
    /// storage engine's own figure when the directory is unknown.
    pub fn db_file_size(&self) -> u64 {
        fn dir_size(dir: &std::path::Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        match &self.cfg.db_dir {
            Some(dir) => dir_size(dir),
            None => self.kv.size_on_disk(),
        }
    }

    /// Every metric of the member in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        self.metrics.render(&mut out);
        let st = self.raft.status();
        let (keys, leases, current, compacted) = match self.kv.read() {
            Ok(s) => (
                s.index.len() as i64,
                s.leases.len() as i64,
                s.current,
                s.compacted,
            ),
            Err(_) => (0, 0, 0, 0),
        };
        let gauges: [(&str, &str, i64); 10] = [
            ("tugboat_store_revision", "Current store revision.", current),
            (
                "tugboat_store_compact_revision",
                "Last compaction revision.",
                compacted,
            ),
            ("tugboat_store_keys", "Keys with retained history.", keys),
            ("tugboat_store_leases", "Live leases.", leases),
            (
                "tugboat_store_db_size_bytes",
                "Database files on disk.",
                self.db_file_size() as i64,
            ),
            ("tugboat_raft_term", "Current raft term.", st.term as i64),
            (
                "tugboat_raft_committed_index",
                "Committed raft index.",
                st.committed_index as i64,
            ),
            (
                "tugboat_raft_applied_index",
                "Applied raft index.",
                st.applied_index as i64,
            ),
            (
                "tugboat_raft_is_leader",
                "1 when this member leads.",
                i64::from(st.leader == Some(st.id)),
            ),
            (
                "tugboat_raft_members",
                "Members in the raft configuration.",
                st.members.len() as i64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }

    /// Runs the leader's lease expiry loop until the node shuts down.
    pub async fn run_lease_expiry(self: Arc<Self>) {
        let mut was_leader = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let status = self.raft.status();
            let leader = status.leader == Some(status.id);
            if leader && !was_leader {
                match self.kv.read() {
                    Ok(st) => self
                        .leases
                        .promote(st.leases.iter().map(|(id, l)| (*id, l.ttl))),
                    Err(e) => {
                        tracing::error!(error = %e, "lease clock cannot read the store");
                        continue;
                    }
                }
            }
            was_leader = leader;
            if !leader {
                continue;
            }
            let ids = self.leases.take_expired(1000);
            if ids.is_empty() {
                continue;
            }
            tracing::info!(count = ids.len(), "revoking expired leases");
            let cmd = Cmd::LeaseExpire(crate::pb::raftcmd::LeaseExpire { ids: ids.clone() });
            if let Err(e) = self.propose(cmd).await {
                tracing::warn!(error = %e, "lease expiry proposal failed; will retry");
                self.leases.expiry_failed(&ids);
            }
        }
    }
}

/// The six etcd services, ready to be added to a tonic server.
pub struct EtcdServices {
    /// etcdserverpb.KV
    pub kv: KvServer<kv::KvService>,
    /// etcdserverpb.Watch
    pub watch: WatchServer<watch::WatchService>,
    /// etcdserverpb.Lease
    pub lease: LeaseServer<lease::LeaseService>,
    /// etcdserverpb.Cluster
    pub cluster: ClusterServer<cluster::ClusterService>,
    /// etcdserverpb.Maintenance
    pub maintenance: MaintenanceServer<maintenance::MaintenanceService>,
    /// etcdserverpb.Auth
    pub auth: AuthServer<auth::AuthService>,
}

/// Builds the services with etcd's message size limits.
pub fn services(server: Arc<EtcdServer>) -> EtcdServices {
    let limit = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;
    EtcdServices {
        kv: KvServer::new(kv::KvService(server.clone())).max_decoding_message_size(limit),
        watch: WatchServer::new(watch::WatchService(server.clone()))
            .max_decoding_message_size(limit),
        lease: LeaseServer::new(lease::LeaseService(server.clone()))
            .max_decoding_message_size(limit),
        cluster: ClusterServer::new(cluster::ClusterService(server.clone()))
            .max_decoding_message_size(limit),
        maintenance: MaintenanceServer::new(maintenance::MaintenanceService(server.clone()))
            .max_decoding_message_size(limit),
        auth: AuthServer::new(auth::AuthService).max_decoding_message_size(limit),
    }
}

impl EtcdServices {
    /// Every service as one set of tonic routes.
    pub fn routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(self.kv)
            .add_service(self.watch)
            .add_service(self.lease)
            .add_service(self.cluster)
            .add_service(self.maintenance)
            .add_service(self.auth)
    }
}
