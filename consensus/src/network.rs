//! Peer transport: openraft RPCs over tonic gRPC, payloads bincode-encoded (proto/raft_peer.proto).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::types::{decode, encode, MemberInfo, NodeId, TypeConfig};

/// Generated gRPC code of `proto/raft_peer.proto`.
pub mod pb {
    tonic::include_proto!("tugboat.raftpeer");
}

use pb::raft_peer_client::RaftPeerClient;
use pb::raft_peer_server::{RaftPeer, RaftPeerServer};
use pb::RaftPayload;

/// Largest peer message accepted or sent (append batches carry up to `max_payload_entries` commands).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Preferred upper bound of one append-entries batch (a single larger entry is still sent alone).
const APPEND_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// gRPC metadata key carrying the sender's cluster id, so members of different clusters never mix.
pub const CLUSTER_ID_HEADER: &str = "tugboat-cluster-id";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The tonic service to mount on the peer listener.
pub type PeerServer = RaftPeerServer<PeerService>;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, MemberInfo, RaftError<NodeId, E>>>;

/// Creates one [`PeerClient`] per replication target (openraft `RaftNetworkFactory`).
pub struct PeerNetworkFactory {
    id: NodeId,
    cluster_id: u64,
    tls: Option<ClientTlsConfig>,
    health: Arc<PeerHealth>,
}

/// When each peer last answered a raft RPC (the leader's view of follower health).
#[derive(Debug, Default)]
pub struct PeerHealth {
    last_ok: Mutex<HashMap<NodeId, Instant>>,
}

impl PeerHealth {
    fn record(&self, id: NodeId) {
        self.last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
    }

    /// Time since `id` last answered, `None` if it never did since this member started.
    pub fn silent_for(&self, id: NodeId) -> Option<Duration> {
        self.last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|t| t.elapsed())
    }
}

impl PeerNetworkFactory {
    /// A factory for member `id` of cluster `cluster_id`, using `tls` for https peer URLs.
    pub fn new(
        id: NodeId,
        cluster_id: u64,
        tls: Option<ClientTlsConfig>,
        health: Arc<PeerHealth>,
    ) -> PeerNetworkFactory {
        PeerNetworkFactory {
            id,
            cluster_id,
            tls,
            health,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberInfo) -> PeerClient {
        PeerClient::new(
            self.id,
            self.cluster_id,
            target,
            node.clone(),
            self.tls.clone(),
            self.health.clone(),
        )
    }
}

/// The endpoint could not be built from the member's peer URL / TLS config.
#[derive(Debug, thiserror::Error)]
#[error("peer {target} at {url:?}: {reason}")]
pub struct BadPeerEndpoint {
    target: NodeId,
    url: String,
    reason: String,
}

/// A failed call, carried as an error value for openraft's error constructors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

pub(crate) fn connect_lazy(url: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // A peer that froze (SIGSTOP, a dead link that sends no reset) must be noticed within
        // a couple of election timeouts, not after the usual tens of seconds.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(1))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    Ok(endpoint.connect_lazy())
}

/// A peer call carrying `data`, with a deadline and the sender's cluster id.
pub(crate) fn peer_request(
    data: Vec<u8>,
    timeout: Duration,
    cluster_id: u64,
) -> tonic::Request<RaftPayload> {
    let mut request = tonic::Request::new(RaftPayload { data });
    request.set_timeout(timeout);
    request.metadata_mut().insert(
        CLUSTER_ID_HEADER,
        tonic::metadata::MetadataValue::from(cluster_id),
    );
    request
}

/// Raft RPC client to one peer (openraft `RaftNetwork`).
pub struct PeerClient {
    id: NodeId,
    cluster_id: u64,
    target: NodeId,
    node: MemberInfo,
    client: Result<RaftPeerClient<Channel>, BadPeerEndpoint>,
    health: Arc<PeerHealth>,
}

impl PeerClient {
    fn new(
        id: NodeId,
        cluster_id: u64,
        target: NodeId,
        node: MemberInfo,
        tls: Option<ClientTlsConfig>,
        health: Arc<PeerHealth>,
    ) -> PeerClient {
        let client = connect_lazy(&node.peer_url, tls)
            .map(|channel| {
                RaftPeerClient::new(channel)
                    .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
            })
            .map_err(|reason| BadPeerEndpoint {
                target,
                url: node.peer_url.clone(),
                reason,
            });
        PeerClient {
            id,
            cluster_id,
            target,
            node,
            client,
            health,
        }
    }

    /// Sends one encoded request and decodes `Result<Resp, RaftError<E>>`, mapping transport
    /// failures to the openraft error kinds that drive retry and backoff.
    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e))),
        };
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let request = peer_request(data, option.hard_ttl(), self.cluster_id);
        let fut = async {
            match action {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout: option.hard_ttl(),
                }))
            }
            Ok(Err(status)) => {
                let err = TransportError(format!("{:?}: {}", status.code(), status.message()));
                return Err(match status.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&err)),
                    tonic::Code::DeadlineExceeded => RPCError::Timeout(Timeout {
                        action,
                        id: self.id,
                        target: self.target,
                        timeout: option.hard_ttl(),
                    }),
                    _ => RPCError::Network(NetworkError::new(&err)),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        self.health.record(self.target);
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    #[tracing::instrument(level = "trace", skip_all, fields(target = self.target))]
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let entries = rpc.entries.len() as u64;
        if entries > 1 {
            let size = rpc.entries.iter().map(entry_size_hint).sum::<usize>() as u64;
            if size > APPEND_BATCH_BYTES {
                // Openraft bounds each append by the heartbeat interval: ask for a smaller batch
                // rather than time out on a huge one over and over.
                let hint =
                    (entries.saturating_mul(APPEND_BATCH_BYTES) / size).clamp(1, entries - 1);
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(hint),
                ));
            }
        }
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        // Exponential 100ms .. 2s while a peer is unreachable.
        Backoff::new((0u32..).map(|n| {
            Duration::from_millis(100u64.saturating_mul(1u64 << n.min(5)))
                .min(Duration::from_secs(2))
        }))
    }
}

fn entry_size_hint(entry: &crate::types::Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(cmd) => cmd.0.len() + 32,
        _ => 256,
    }
}

/// Server side of the peer transport: hands decoded RPCs to the local member.
#[derive(Clone)]
pub struct PeerService {
    node: crate::Node,
    /// Refuse calls whose connection presented no client certificate (the
    /// listener lets such connections through for the join service only).
    require_client_cert: bool,
}

impl PeerService {
    pub(crate) fn new(node: crate::Node, require_client_cert: bool) -> PeerService {
        PeerService {
            node,
            require_client_cert,
        }
    }

    /// Wraps the service for mounting, with the peer message size limits.
    pub(crate) fn into_server(self) -> PeerServer {
        RaftPeerServer::new(self)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
    }

    fn check(&self, request: &tonic::Request<RaftPayload>) -> Result<(), tonic::Status> {
        if self.require_client_cert && request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(tonic::Status::unauthenticated(
                "raft peer calls need a client certificate signed by the cluster CA",
            ));
        }
        let Some(value) = request.metadata().get(CLUSTER_ID_HEADER) else {
            return Ok(());
        };
        let cluster_id = self.node.cluster_id();
        let theirs = value.to_str().ok().and_then(|s| s.parse::<u64>().ok());
        match theirs {
            Some(id) if id == cluster_id => Ok(()),
            _ => Err(tonic::Status::failed_precondition(format!(
                "cluster id mismatch: this member belongs to cluster {cluster_id:x}"
            ))),
        }
    }
}

fn decode_request<T: serde::de::DeserializeOwned>(
    request: tonic::Request<RaftPayload>,
) -> Result<T, tonic::Status> {
    decode(&request.into_inner().data).map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

fn encode_reply<T: serde::Serialize>(
    value: &T,
) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    let data = encode(value).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.check(&request)?;
        let req: AppendEntriesRequest<TypeConfig> = decode_request(request)?;
        let result = self.node.raft().append_entries(req).await;
        if matches!(
            result,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.node.heard_from_leader();
        }
        encode_reply(&result)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.check(&request)?;
        let req: VoteRequest<NodeId> = decode_request(request)?;
        let result = self.node.raft().vote(req).await;
        if matches!(&result, Ok(resp) if resp.vote_granted) {
            // As in raft: granting a vote restarts the election timer, so this member does not
            // campaign against the candidate it just helped elect.
            self.node.heard_from_leader();
        }
        encode_reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.check(&request)?;
        let req: InstallSnapshotRequest<TypeConfig> = decode_request(request)?;
        let result = self.node.raft().install_snapshot(req).await;
        if result.is_ok() {
            self.node.heard_from_leader();
        }
        encode_reply(&result)
    }

    async fn pre_vote(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.check(&request)?;
        let req: crate::forward::PreVoteRequest = decode_request(request)?;
        encode_reply(&self.node.answer_pre_vote(&req))
    }

    async fn forward(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.check(&request)?;
        let req: crate::forward::ForwardRequest = decode_request(request)?;
        encode_reply(&self.node.serve_forwarded(req).await)
    }
}
