//! The member side of `tugboatd join`: checks and uses a join token, signs
//! the joiner's CSR, and admits it to the cluster. Served on the peer
//! listener, which lets certificate-less connections in for `Join` only.

use super::pb::join_server::{Join, JoinServer};
use super::pb::{AdmitRequest, AdmitResponse, JoinRequest, JoinResponse, Member};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};
use tugboat_consensus::join_token::{TokenRecord, TOKEN_KEY_PREFIX};
use tugboat_consensus::{ForwardError, MemberInfo, NodeId};
use tugboat_pki::{NodeIdentity, PkiError, PkiPaths};
use tugboat_store::pb::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tugboat_store::pb::raftcmd::{store_command::Cmd, store_result::Result as Res};
use tugboat_store::EtcdServer;

/// Key prefix of registered workers (nodes without a copy of the store).
pub const WORKER_KEY_PREFIX: &str = "/tugboat/workers/";
/// Role of a joiner that holds a copy of the store (voter or standby).
pub const ROLE_MEMBER: &str = "member";
/// Role of a joiner that holds no copy of the store.
pub const ROLE_WORKER: &str = "worker";
/// Largest CSR accepted.
const MAX_CSR_BYTES: usize = 16 * 1024;
/// Longest node name (a DNS label).
const MAX_NAME_LEN: usize = 63;
/// Most client URLs a member may advertise.
const MAX_CLIENT_URLS: usize = 16;
/// Attempts at the token's compare-and-swap when concurrent joins use the same token.
const REDEEM_ATTEMPTS: usize = 32;

/// What a worker registration records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecord {
    /// Node name.
    pub name: String,
    /// Id assigned at join.
    pub member_id: u64,
    /// Seconds since the Unix epoch.
    pub joined_at: u64,
}

/// Role policy of store members.
#[derive(Debug, Clone, Copy)]
pub struct RolePolicy {
    /// Most voters (odd).
    pub max_voters: usize,
    /// Standbys kept besides the voters.
    pub standbys: usize,
}

/// The Join service.
pub struct JoinService {
    server: Arc<EtcdServer>,
    pki: PkiPaths,
    policy: RolePolicy,
    /// Joins through this member are handled one at a time (others wait, never fail for it).
    queue: tokio::sync::Mutex<()>,
}

impl JoinService {
    /// A join service over the local member's store and PKI.
    pub fn new(server: Arc<EtcdServer>, data_dir: PathBuf, policy: RolePolicy) -> JoinServer<Self> {
        JoinServer::new(JoinService {
            server,
            pki: PkiPaths::new(&data_dir),
            policy,
            queue: tokio::sync::Mutex::new(()),
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses and checks a join request at the edge.
fn check_join(req: &JoinRequest) -> Result<NodeIdentity, Status> {
    if !is_hex(&req.token_id, 16) || !is_hex(&req.token_secret, 32) {
        return Err(Status::invalid_argument(
            "join token id must be 16 and its secret 32 hex digits",
        ));
    }
    if !valid_name(&req.name) {
        return Err(Status::invalid_argument(format!(
            "node name {:?} is invalid: use 1-{MAX_NAME_LEN} letters, digits, '-', '.' or '_', starting with a letter or digit",
            req.name
        )));
    }
    if req.csr_pem.is_empty() || req.csr_pem.len() > MAX_CSR_BYTES {
        return Err(Status::invalid_argument(format!(
            "csr_pem must hold a PEM certificate request of at most {MAX_CSR_BYTES} bytes"
        )));
    }
    if req.ip_addrs.len() + req.dns_names.len() > 32 {
        return Err(Status::invalid_argument("at most 32 names and addresses"));
    }
    let ip_addrs = req
        .ip_addrs
        .iter()
        .map(|a| {
            a.parse::<IpAddr>().map_err(|_| {
                Status::invalid_argument(format!("ip_addrs: {a:?} is not an IP address"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NodeIdentity {
        name: req.name.clone(),
        dns_names: req.dns_names.clone(),
        ip_addrs,
    })
}

fn members_of(server: &EtcdServer) -> Vec<Member> {
    server
        .raft
        .status()
        .members
        .into_iter()
        .map(|m| Member {
            name: m.info.name,
            peer_url: m.info.peer_url,
            client_urls: m.info.client_urls,
            voter: m.is_voter,
        })
        .collect()
}

fn pki_status(e: PkiError) -> Status {
    match e {
        PkiError::InvalidCsr { .. } | PkiError::CsrNameNotAllowed { .. } => {
            Status::invalid_argument(e.to_string())
        }
        other => Status::failed_precondition(format!(
            "this member cannot sign certificates ({other}); join through a member that holds the cluster CA key"
        )),
    }
}

fn forward_status(e: ForwardError) -> Status {
    match e {
        ForwardError::Rejected(m) => Status::failed_precondition(m),
        ForwardError::NotLeader { .. } => Status::unavailable("no leader; retry the join"),
        other => Status::unavailable(format!("{other}; retry the join")),
    }
}

impl JoinService {
    /// Uses the token once for `name` (a retry by the same name is free), atomically.
    async fn redeem(&self, id: &str, secret: &str, name: &str) -> Result<(), Status> {
        let key = format!("{TOKEN_KEY_PREFIX}{id}").into_bytes();
        for _ in 0..REDEEM_ATTEMPTS {
            self.server.read_barrier().await?;
            let range = self.server.kv.range(&RangeRequest {
                key: key.clone(),
                ..Default::default()
            })?;
            let Some(kv) = range.kvs.first() else {
                return Err(Status::permission_denied(format!(
                    "join token {id} is unknown, revoked or expired"
                )));
            };
            let record: TokenRecord = serde_json::from_slice(&kv.value).map_err(|e| {
                Status::internal(format!(
                    "stored record of join token {id} is unreadable: {e}"
                ))
            })?;
            let next = record
                .redeem_for(id, secret, name, now_secs())
                .map_err(|e| Status::permission_denied(e.to_string()))?;
            let Some(next) = next else {
                return Ok(());
            };
            let value = serde_json::to_vec(&next)
                .map_err(|e| Status::internal(format!("encoding a token record: {e}")))?;
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(compare::TargetUnion::ModRevision(kv.mod_revision)),
                    range_end: Vec::new(),
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.clone(),
                        value,
                        ignore_lease: true,
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            };
            match self.server.propose(Cmd::Txn(txn)).await? {
                Res::Txn(r) if r.succeeded => return Ok(()),
                Res::Txn(_) => continue,
                _ => return Err(Status::internal("unexpected answer to the token update")),
            }
        }
        Err(Status::aborted(
            "the join token is being used by many joins at once; retry",
        ))
    }

    async fn worker(&self, name: &str) -> Result<Option<WorkerRecord>, Status> {
        self.server.read_barrier().await?;
        let range = self.server.kv.range(&RangeRequest {
            key: format!("{WORKER_KEY_PREFIX}{name}").into_bytes(),
            ..Default::default()
        })?;
        match range.kvs.first() {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(&kv.value).map(Some).map_err(|e| {
                Status::internal(format!("worker record of {name} is unreadable: {e}"))
            }),
        }
    }

    async fn put_worker(&self, record: &WorkerRecord) -> Result<(), Status> {
        let value = serde_json::to_vec(record)
            .map_err(|e| Status::internal(format!("encoding a worker record: {e}")))?;
        let put = PutRequest {
            key: format!("{WORKER_KEY_PREFIX}{}", record.name).into_bytes(),
            value,
            ..Default::default()
        };
        match self.server.propose(Cmd::Put(put)).await? {
            Res::Put(_) => Ok(()),
            _ => Err(Status::internal(
                "unexpected answer to the worker registration",
            )),
        }
    }

    async fn do_join(&self, req: JoinRequest) -> Result<JoinResponse, Status> {
        let identity = check_join(&req)?;
        let _queue = self.queue.lock().await;
        self.redeem(&req.token_id, &req.token_secret, &req.name)
            .await?;

        let status = self.server.raft.status();
        let existing_member = status.members.iter().find(|m| m.info.name == req.name);
        let existing_worker = self.worker(&req.name).await?;
        let store_members = status.members.len();
        let (member_id, role) = match (existing_member, existing_worker) {
            (Some(m), _) => (m.id, ROLE_MEMBER),
            (None, Some(w)) => (w.member_id, ROLE_WORKER),
            (None, None) if store_members < self.policy.max_voters + self.policy.standbys => {
                (random_id(), ROLE_MEMBER)
            }
            (None, None) => (random_id(), ROLE_WORKER),
        };
        let cert_pem =
            tugboat_pki::sign_node_csr(&self.pki, &req.csr_pem, &identity).map_err(pki_status)?;
        let ca_pem = std::fs::read_to_string(&self.pki.ca_cert)
            .map_err(|e| Status::internal(format!("reading the CA certificate: {e}")))?;
        let ca_key_pem = if role == ROLE_MEMBER {
            std::fs::read_to_string(&self.pki.ca_key).map_err(|e| {
                Status::failed_precondition(format!(
                    "this member has no CA key to hand to a new store member ({e})"
                ))
            })?
        } else {
            String::new()
        };
        tracing::info!(name = %req.name, role, member = %format!("{member_id:x}"), "join accepted");
        Ok(JoinResponse {
            member_id,
            cluster_id: self.server.raft.cluster_id(),
            role: role.to_string(),
            cert_pem,
            ca_pem,
            ca_key_pem,
            members: members_of(&self.server),
        })
    }

    async fn do_admit(&self, request: Request<AdmitRequest>) -> Result<AdmitResponse, Status> {
        let cn = match request.peer_certs() {
            Some(certs) if !certs.is_empty() => tugboat_pki::cert_common_name(certs[0].as_ref())
                .map_err(|e| Status::unauthenticated(e.to_string()))?,
            _ => {
                return Err(Status::unauthenticated(
                    "admission needs the certificate issued by Join",
                ))
            }
        };
        let req = request.into_inner();
        if cn != req.name {
            return Err(Status::permission_denied(format!(
                "certificate is for {cn:?}, not {:?}",
                req.name
            )));
        }
        if req.member_id == 0 {
            return Err(Status::invalid_argument("member_id must not be 0"));
        }
        if req.peer_url.is_empty() {
            self.put_worker(&WorkerRecord {
                name: req.name.clone(),
                member_id: req.member_id,
                joined_at: now_secs(),
            })
            .await?;
            tracing::info!(name = %req.name, "worker registered");
        } else {
            if req.client_urls.len() > MAX_CLIENT_URLS {
                return Err(Status::invalid_argument(format!(
                    "at most {MAX_CLIENT_URLS} client URLs"
                )));
            }
            for url in std::iter::once(&req.peer_url).chain(&req.client_urls) {
                if !url.starts_with("https://") || url.len() > 256 {
                    return Err(Status::invalid_argument(format!(
                        "{url:?} is not an https URL"
                    )));
                }
            }
            let info = MemberInfo {
                name: req.name.clone(),
                peer_url: req.peer_url,
                client_urls: req.client_urls,
            };
            self.server
                .raft
                .admit_learner(req.member_id as NodeId, info)
                .await
                .map_err(forward_status)?;
        }
        Ok(AdmitResponse {
            members: members_of(&self.server),
        })
    }
}

fn random_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

#[tonic::async_trait]
impl Join for JoinService {
    #[tracing::instrument(level = "info", skip_all, fields(name = %request.get_ref().name))]
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let r = self.do_join(request.into_inner()).await;
        if let Err(e) = &r {
            tracing::warn!(code = ?e.code(), message = e.message(), "join refused");
        }
        r.map(Response::new)
    }

    #[tracing::instrument(level = "info", skip_all, fields(name = %request.get_ref().name))]
    async fn admit(
        &self,
        request: Request<AdmitRequest>,
    ) -> Result<Response<AdmitResponse>, Status> {
        self.do_admit(request).await.map(Response::new)
    }
}
