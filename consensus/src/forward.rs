//! Requests a follower hands to the leader: proposals, read indexes,
//! membership changes and application calls. Any member can then serve every
//! client request; the follower waits until its own state machine has caught
//! up with the leader's answer, so a client reading back from the same member
//! sees its write.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, ClientTlsConfig};

use crate::error::ProposeError;
use crate::network::pb::raft_peer_client::RaftPeerClient;
use crate::network::{connect_lazy, peer_request, MAX_PEER_MESSAGE_BYTES};
use crate::types::{decode, encode, Command, MemberInfo, NodeId};
use crate::Node;

/// What a follower asks the leader to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardRequest {
    /// Replicate a command; answer with its log index and the leader's apply result.
    Propose(Command),
    /// Confirm leadership and answer the index a linearizable read must wait for.
    ReadIndex,
    /// Add a member as a learner (it catches up in the background).
    AddLearner {
        /// The new member's id.
        id: NodeId,
        /// Its name and URLs.
        info: MemberInfo,
    },
    /// Make a caught-up learner a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Remove a member (voter or learner) from the membership.
    Remove {
        /// The member.
        id: NodeId,
    },
    /// An application-defined call served by the leader's [`AppHandler`].
    App {
        /// Which call.
        method: String,
        /// Its encoded argument.
        body: Command,
    },
}

/// The leader's answer to a [`ForwardRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    /// The command was applied at `index` with `result`.
    Proposed {
        /// Log index of the entry that carried the command.
        index: u64,
        /// The state machine's response.
        result: Command,
    },
    /// Reads are linearizable once the local machine has applied `index`.
    ReadIndex {
        /// The read index.
        index: u64,
    },
    /// The membership change is committed at `index`.
    Changed {
        /// Log index of the membership entry.
        index: u64,
    },
    /// The application call's answer.
    App(Command),
}

/// Why the leader (or the hop to it) could not serve a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader (it names the leader when it knows it).
    #[error("not leader")]
    NotLeader {
        /// The leader the receiver knows of.
        leader: Option<NodeId>,
    },
    /// Leadership or replication is currently impossible (no quorum).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request itself was refused (e.g. promoting a member that is not a learner).
    #[error("{0}")]
    Rejected(String),
    /// The leader is shutting down.
    #[error("leader is shutting down")]
    ShuttingDown,
    /// The hop to the leader failed; the outcome of a proposal is unknown.
    #[error("forwarding to the leader failed: {0}")]
    Transport(String),
    /// The leader could not be reached at all: the request was not delivered.
    #[error("the leader is unreachable: {0}")]
    Unreachable(String),
    /// Raft failed for good on the leader.
    #[error("leader failed: {0}")]
    Fatal(String),
}

/// Serves application calls forwarded to the leader (e.g. lease renewals,
/// whose clock lives on the leader).
#[tonic::async_trait]
pub trait AppHandler: Send + Sync + 'static {
    /// Handles `method` with `body` on the leader.
    async fn call(&self, method: &str, body: Vec<u8>) -> Result<Vec<u8>, ForwardError>;
}

/// Whether `req` may be sent again after `e`: always when it surely did not take effect (the
/// receiver is not the leader, or could not be reached at all); read indexes also after
/// failures whose effect is unknown, since asking again changes nothing.
pub(crate) fn may_retry(req: &ForwardRequest, e: &ForwardError) -> bool {
    let not_delivered = matches!(
        e,
        ForwardError::NotLeader { .. } | ForwardError::Unreachable(_)
    );
    let transient = matches!(
        e,
        ForwardError::Unavailable(_) | ForwardError::Transport(_) | ForwardError::ShuttingDown
    );
    not_delivered || (transient && matches!(req, ForwardRequest::ReadIndex))
}

/// Per-leader channels for forwarded requests.
pub(crate) struct Forwarder {
    cluster_id: u64,
    tls: Option<ClientTlsConfig>,
    channels: Mutex<HashMap<NodeId, (String, RaftPeerClient<Channel>)>>,
}

impl Forwarder {
    pub(crate) fn new(cluster_id: u64, tls: Option<ClientTlsConfig>) -> Forwarder {
        Forwarder {
            cluster_id,
            tls,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn client(
        &self,
        leader: NodeId,
        info: &MemberInfo,
    ) -> Result<RaftPeerClient<Channel>, ForwardError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((url, client)) = channels.get(&leader) {
            if *url == info.peer_url {
                return Ok(client.clone());
            }
        }
        let channel = connect_lazy(&info.peer_url, self.tls.clone())
            .map_err(|e| ForwardError::Transport(format!("peer URL {}: {e}", info.peer_url)))?;
        let client = RaftPeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        channels.insert(leader, (info.peer_url.clone(), client.clone()));
        Ok(client)
    }

    /// Sends `req` to `leader` and waits at most `timeout` for its answer.
    pub(crate) async fn send(
        &self,
        leader: NodeId,
        info: &MemberInfo,
        req: &ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardReply, ForwardError> {
        let mut client = self.client(leader, info)?;
        let data = encode(req).map_err(|e| ForwardError::Transport(e.to_string()))?;
        let request = peer_request(data, timeout, self.cluster_id);
        let reply = match tokio::time::timeout(timeout, client.forward(request)).await {
            Err(_) => {
                return Err(ForwardError::Transport(format!(
                    "no answer from the leader within {timeout:?}"
                )))
            }
            Ok(Err(status)) => {
                let message = format!("{:?}: {}", status.code(), status.message());
                // A refused or failed connect never carried the request.
                let connect_failed = status.code() == tonic::Code::Unavailable
                    && status.message().to_ascii_lowercase().contains("connect");
                return Err(if connect_failed {
                    ForwardError::Unreachable(message)
                } else {
                    ForwardError::Transport(message)
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        decode::<Result<ForwardReply, ForwardError>>(&reply.data)
            .map_err(|e| ForwardError::Transport(e.to_string()))?
    }

    /// Asks `target` whether it would grant a vote now; a failure is returned as text.
    pub(crate) async fn pre_vote(
        &self,
        target: NodeId,
        info: &MemberInfo,
        req: &PreVoteRequest,
        timeout: Duration,
    ) -> Result<PreVoteResponse, String> {
        let mut client = self.client(target, info).map_err(|e| e.to_string())?;
        let data = encode(req).map_err(|e| e.to_string())?;
        let request = peer_request(data, timeout, self.cluster_id);
        match tokio::time::timeout(timeout, client.pre_vote(request)).await {
            Ok(Ok(reply)) => {
                decode::<PreVoteResponse>(&reply.into_inner().data).map_err(|e| e.to_string())
            }
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

/// What a member answers to a pre-vote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteRequest {
    /// The member that wants to campaign.
    pub(crate) candidate: NodeId,
}

/// A pre-vote answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteResponse {
    /// True when the receiver has not heard from a leader for an election timeout.
    pub(crate) granted: bool,
    /// False when the candidate is not in the receiver's membership (it was removed).
    pub(crate) member: bool,
}

/// How long a request keeps being retried while leadership moves (below the etcd façade's
/// request timeout, so clients get this member's answer rather than their own timeout).
const RETRY_WINDOW: Duration = Duration::from_secs(5);

fn from_propose_error(e: ProposeError) -> ForwardError {
    match e {
        ProposeError::NoLeader => ForwardError::NotLeader { leader: None },
        ProposeError::NotLeader { leader } => ForwardError::NotLeader {
            leader: Some(leader),
        },
        ProposeError::Unavailable(m) => ForwardError::Unavailable(m),
        ProposeError::ShuttingDown => ForwardError::ShuttingDown,
        ProposeError::Fatal(m) => ForwardError::Fatal(m),
    }
}

fn to_propose_error(e: ForwardError) -> ProposeError {
    match e {
        ForwardError::NotLeader {
            leader: Some(leader),
        } => ProposeError::NotLeader { leader },
        ForwardError::NotLeader { leader: None } => ProposeError::NoLeader,
        ForwardError::Unavailable(m)
        | ForwardError::Transport(m)
        | ForwardError::Unreachable(m)
        | ForwardError::Rejected(m) => ProposeError::Unavailable(m),
        ForwardError::ShuttingDown => {
            ProposeError::Unavailable("the leader is shutting down".into())
        }
        ForwardError::Fatal(m) => ProposeError::Unavailable(format!("leader failed: {m}")),
    }
}

/// Where a request should go right now.
enum Route {
    Local,
    Leader(NodeId, MemberInfo),
}

impl Node {
    /// The leader this member would send a request to, waiting up to two election timeouts
    /// for one to be elected.
    async fn route(&self) -> Result<Route, ForwardError> {
        let deadline = tokio::time::Instant::now() + self.inner().election_timeout * 2;
        let mut status = self.subscribe();
        loop {
            match self.leader() {
                Some(l) if l == self.member_id() => return Ok(Route::Local),
                // A leader missing from the membership was just removed: wait for the next one.
                Some(l) => {
                    if let Some(info) = self.member_info(l) {
                        return Ok(Route::Leader(l, info));
                    }
                }
                None => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ForwardError::NotLeader { leader: None });
            }
            // A leader appears through a topology change; the lease check needs a re-poll.
            let _ = tokio::time::timeout(
                (deadline - now).min(self.inner().heartbeat),
                status.changed(),
            )
            .await;
        }
    }

    /// Runs `req` on the leader (here when this member leads) and returns its answer.
    async fn on_leader(
        &self,
        req: ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardReply, ForwardError> {
        self.on_leader_at(req, timeout)
            .await
            .map(|(reply, _)| reply)
    }

    /// Like [`Node::on_leader`], also telling whether this member served it (as the leader, its
    /// machine has then applied the answer already).
    async fn on_leader_at(
        &self,
        req: ForwardRequest,
        timeout: Duration,
    ) -> Result<(ForwardReply, bool), ForwardError> {
        let mut last = ForwardError::NotLeader { leader: None };
        let deadline = tokio::time::Instant::now() + RETRY_WINDOW;
        while tokio::time::Instant::now() < deadline {
            let route = match self.route().await {
                Ok(r) => r,
                Err(e) if may_retry(&req, &e) => {
                    last = e;
                    tokio::time::sleep(self.inner().heartbeat).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let result = match route {
                Route::Local => self.serve_forwarded(req.clone()).await.map(|r| (r, true)),
                Route::Leader(id, info) => self
                    .inner()
                    .forwarder
                    .send(id, &info, &req, timeout)
                    .await
                    .map(|r| (r, false)),
            };
            match result {
                Err(e) if may_retry(&req, &e) => {
                    tracing::debug!(error = %e, "retrying a request for the leader");
                    last = e;
                    // Let this member learn about a new leader before the next attempt.
                    tokio::time::sleep(self.inner().heartbeat).await;
                }
                other => return other,
            }
        }
        Err(last)
    }

    /// Replicates a command (through the leader when this member follows) and returns the state
    /// machine's response once this member has applied it too.
    pub async fn propose(&self, cmd: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let timeout = FORWARD_TIMEOUT;
        match self
            .on_leader_at(ForwardRequest::Propose(Command(cmd)), timeout)
            .await
            .map_err(to_propose_error)?
        {
            (ForwardReply::Proposed { index, result }, local) => {
                if !local {
                    self.wait_applied(index, timeout).await?;
                }
                Ok(result.0)
            }
            (other, _) => Err(ProposeError::Fatal(format!(
                "leader answered a proposal with {other:?}"
            ))),
        }
    }

    /// Linearizable read barrier (read index): returns when the local machine has applied
    /// everything committed before the call. Followers ask the leader for the index.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        match self
            .on_leader(ForwardRequest::ReadIndex, FORWARD_TIMEOUT)
            .await
            .map_err(to_propose_error)?
        {
            ForwardReply::ReadIndex { index } => self.wait_applied(index, FORWARD_TIMEOUT).await,
            other => Err(ProposeError::Fatal(format!(
                "leader answered a read index with {other:?}"
            ))),
        }
    }

    /// Calls the leader's [`AppHandler`] with `method` and `body`.
    pub async fn call_leader(&self, method: &str, body: Vec<u8>) -> Result<Vec<u8>, ForwardError> {
        let req = ForwardRequest::App {
            method: method.to_string(),
            body: Command(body),
        };
        match self.on_leader(req, FORWARD_TIMEOUT).await? {
            ForwardReply::App(out) => Ok(out.0),
            other => Err(ForwardError::Fatal(format!(
                "leader answered an application call with {other:?}"
            ))),
        }
    }

    async fn membership_change(&self, req: ForwardRequest) -> Result<(), ForwardError> {
        match self.on_leader(req, MEMBERSHIP_TIMEOUT).await? {
            ForwardReply::Changed { index } => self
                .wait_applied(index, MEMBERSHIP_TIMEOUT)
                .await
                .map_err(from_propose_error),
            other => Err(ForwardError::Fatal(format!(
                "leader answered a membership change with {other:?}"
            ))),
        }
    }

    /// Adds `id` as a learner through the leader; it catches up in the background.
    pub async fn admit_learner(&self, id: NodeId, info: MemberInfo) -> Result<(), ForwardError> {
        self.membership_change(ForwardRequest::AddLearner { id, info })
            .await
    }

    /// Makes the caught-up learner `id` a voter, if the role policy allows it.
    pub async fn promote_member(&self, id: NodeId) -> Result<(), ForwardError> {
        self.membership_change(ForwardRequest::Promote { id }).await
    }

    /// Removes member `id` (voter or learner) from the cluster.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), ForwardError> {
        self.membership_change(ForwardRequest::Remove { id }).await
    }

    /// Serves a request as the leader (refusing with `NotLeader` otherwise).
    pub(crate) async fn serve_forwarded(
        &self,
        req: ForwardRequest,
    ) -> Result<ForwardReply, ForwardError> {
        if !self.is_leader() {
            return Err(ForwardError::NotLeader {
                leader: self.leader().filter(|l| *l != self.member_id()),
            });
        }
        match req {
            ForwardRequest::Propose(cmd) => {
                let (index, result) = self
                    .propose_local(cmd.0)
                    .await
                    .map_err(from_propose_error)?;
                Ok(ForwardReply::Proposed {
                    index,
                    result: Command(result),
                })
            }
            ForwardRequest::ReadIndex => {
                let index = self.read_index_local().await.map_err(from_propose_error)?;
                Ok(ForwardReply::ReadIndex { index })
            }
            ForwardRequest::AddLearner { id, info } => {
                let index = crate::roles::add_learner(self, id, info).await?;
                Ok(ForwardReply::Changed { index })
            }
            ForwardRequest::Promote { id } => {
                let index = crate::roles::promote(self, id).await?;
                Ok(ForwardReply::Changed { index })
            }
            ForwardRequest::Remove { id } => {
                let index = crate::roles::remove(self, id).await?;
                Ok(ForwardReply::Changed { index })
            }
            ForwardRequest::App { method, body } => match self.app_handler() {
                Some(handler) => Ok(ForwardReply::App(Command(
                    handler.call(&method, body.0).await?,
                ))),
                None => Err(ForwardError::Rejected(format!(
                    "no handler for application call {method:?}"
                ))),
            },
        }
    }

    /// A pre-vote is granted only by a member that has not heard from a leader for an election
    /// timeout itself, and never by a leader.
    pub(crate) fn answer_pre_vote(&self, req: &PreVoteRequest) -> PreVoteResponse {
        let status = self.status();
        let member = status.members.iter().any(|m| m.id == req.candidate);
        let granted = member
            && !status.is_leader()
            && req.candidate != self.member_id()
            && self.leader_silence() >= self.inner().election_timeout;
        PreVoteResponse { granted, member }
    }
}

/// How long a forwarded request may take end to end.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a membership change may take (it may wait for another one to finish).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);
