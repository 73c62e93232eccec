//! A running raft member: storage, state machine adapter, transport and the openraft core.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{Config, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::{ConsensusError, ProposeError};
use crate::forward::{AppHandler, Forwarder};
use crate::log_store::{LogStore, META_TREE};
use crate::network::{PeerHealth, PeerNetworkFactory, PeerServer, PeerService};
use crate::snapshot::SnapshotDir;
use crate::state_machine::{StateMachine, StateMachineAdapter};
use crate::status::RaftStatus;
use crate::types::{decode, encode, MemberInfo, NodeId, Raft};

pub(crate) const KEY_MEMBER_ID: &[u8] = b"member_id";
pub(crate) const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
/// How this member came to exist; a bootstrapped member re-runs an interrupted initialization.
pub(crate) const KEY_ORIGIN: &[u8] = b"origin";
const ORIGIN_BOOTSTRAP: &[u8] = b"bootstrap";
const ORIGIN_JOIN: &[u8] = b"join";
/// Upper bound on waiting for openraft's background tasks to drop the storage after shutdown.
const SHUTDOWN_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Configuration of a consensus node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Member name (etcd `--name`).
    pub name: String,
    /// Data directory; snapshots go to `data_dir/snapshots/`.
    pub data_dir: PathBuf,
    /// URL peers reach this member at, e.g. "https://127.0.0.1:2380".
    pub peer_url: String,
    /// URLs clients reach this member at.
    pub client_urls: Vec<String>,
    /// Leader heartbeat interval (default 100).
    pub heartbeat_interval_ms: u64,
    /// Election timeout base `t`; the actual timeout is random in `[t, 2t)` (default 1000).
    pub election_timeout_ms: u64,
    /// Build a snapshot after this many entries since the last one (default 10_000).
    pub snapshot_every: u64,
    /// Client side of peer mTLS, used for https peer URLs.
    pub peer_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Refuse peer calls from connections without a client certificate (set when the peer
    /// listener also admits certificate-less joiners).
    pub require_peer_cert: bool,
    /// Most voters the leader keeps (odd; the rest of the store members are standbys).
    pub max_voters: usize,
    /// How long a voter may be unreachable before a healthy standby replaces it.
    pub dead_voter_after: Duration,
}

impl NodeConfig {
    /// A config with the default timings for member `name` at `peer_url`, storing under `data_dir`.
    pub fn new(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        peer_url: impl Into<String>,
    ) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            peer_url: peer_url.into(),
            client_urls: Vec::new(),
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_every: 10_000,
            peer_tls: None,
            require_peer_cert: false,
            max_voters: 3,
            dead_voter_after: Duration::from_secs(30),
        }
    }

    fn member_info(&self) -> MemberInfo {
        MemberInfo {
            name: self.name.clone(),
            peer_url: self.peer_url.clone(),
            client_urls: self.client_urls.clone(),
        }
    }

    fn raft_config(&self) -> Result<Config, ConsensusError> {
        let config = Config {
            cluster_name: "tugboat".to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            // openraft's own election timer is off (see `enable_elect`); these two only set the
            // leader lease (= the max) during which a member refuses to vote for anyone else. It
            // must equal the silence after which `election` grants pre-votes, or a pre-vote would
            // be granted and the real vote then refused.
            election_timeout_min: self.election_timeout_ms.saturating_sub(1).max(1),
            election_timeout_max: self.election_timeout_ms.max(2),
            // Each chunk RPC, including the last one that waits for the restore, gets this long.
            install_snapshot_timeout: self.election_timeout_ms.saturating_mul(30).max(30_000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every.max(1)),
            // Elections are started by `election::run_elections` after a pre-vote round, so a
            // member that was cut off cannot raise the term and unseat a healthy leader.
            enable_elect: false,
            snapshot_max_chunk_size: 1024 * 1024,
            // Keep some log behind the snapshot so slightly lagging followers catch up from the log.
            max_in_snapshot_log_to_keep: self.snapshot_every.clamp(1, 1000),
            purge_batch_size: (self.snapshot_every / 4).clamp(1, 256),
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| ConsensusError::Config(e.to_string()))
    }
}

/// How long a leader may go without hearing from a quorum before it counts itself deposed.
fn quorum_lease_ms(election_timeout_ms: u64) -> u64 {
    election_timeout_ms.saturating_mul(2)
}

/// How [`Node::open_with`] treats an empty store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Start a new single-voter cluster with fresh random member and cluster ids.
    NewCluster,
    /// Wait to be added by an existing cluster's leader under the given ids (issued by it).
    Join {
        /// The member id the leader assigned.
        member_id: NodeId,
        /// The id of the cluster being joined.
        cluster_id: u64,
    },
}

/// A running raft member. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

pub(crate) struct NodeInner {
    pub(crate) raft: Raft,
    pub(crate) member_id: NodeId,
    pub(crate) cluster_id: u64,
    pub(crate) committed_index: Arc<AtomicU64>,
    pub(crate) status_rx: watch::Receiver<RaftStatus>,
    pub(crate) status_task: Mutex<Option<JoinHandle<()>>>,
    /// Queue of the proposal batcher (see `batch`).
    pub(crate) proposals: mpsc::UnboundedSender<crate::batch::Proposal>,
    pub(crate) batcher: Mutex<Option<JoinHandle<()>>>,
    /// The thread raft runs on; stopped after raft has shut down.
    pub(crate) runtime: Mutex<Option<crate::runtime::RaftRuntime>>,
    /// Cloned by every storage object (log store, readers, state machine adapter); see `shutdown`.
    pub(crate) storage_refs: Arc<()>,
    /// When each peer last answered this member's raft RPCs.
    pub(crate) health: Arc<PeerHealth>,
    /// Channels to the leader for forwarded requests and to voters for pre-votes.
    pub(crate) forwarder: Forwarder,
    /// Reference point of `leader_contact_ms`.
    pub(crate) epoch: Instant,
    /// Milliseconds after `epoch` when a leader last replicated to this member.
    pub(crate) leader_contact_ms: AtomicU64,
    /// Serializes membership changes made by this member as leader.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    /// Serves application calls forwarded to this member while it leads.
    pub(crate) app: RwLock<Option<Arc<dyn AppHandler>>>,
    /// Base election timeout.
    pub(crate) election_timeout: Duration,
    /// Heartbeat interval.
    pub(crate) heartbeat: Duration,
    /// Role policy: most voters.
    pub(crate) max_voters: usize,
    /// Role policy: when a silent voter is replaced.
    pub(crate) dead_voter_after: Duration,
    /// The election driver and role keeper.
    pub(crate) background: Mutex<Vec<JoinHandle<()>>>,
    /// See [`NodeConfig::require_peer_cert`].
    pub(crate) require_peer_cert: bool,
    /// Set when the other voters answered that this member was removed.
    pub(crate) removed: std::sync::atomic::AtomicBool,
    /// Reads waiting for the next leadership confirmation (see `read_index_local`).
    pub(crate) reads: Mutex<ReadQueue>,
}

/// Read-index requests waiting for a leadership confirmation round.
#[derive(Default)]
pub(crate) struct ReadQueue {
    waiting: Vec<tokio::sync::oneshot::Sender<Result<u64, ProposeError>>>,
    running: bool,
}

fn random_nonzero_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// Reads and decodes a value of the raft metadata tree.
pub(crate) fn read_meta<T: serde::de::DeserializeOwned>(
    meta: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, ConsensusError> {
    match meta.get(key)? {
        None => Ok(None),
        Some(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|e| ConsensusError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(key)))),
    }
}

/// Loads the persisted member/cluster ids, or assigns and persists them on an empty store.
/// Returns (member id, cluster id, whether this member bootstraps its own cluster).
fn load_or_assign_ids(
    db: &sled::Db,
    bootstrap: Bootstrap,
) -> Result<(NodeId, u64, bool), ConsensusError> {
    let meta = db.open_tree(META_TREE)?;
    let stored = (
        read_meta::<u64>(&meta, KEY_MEMBER_ID)?,
        read_meta::<u64>(&meta, KEY_CLUSTER_ID)?,
    );
    if let (Some(member_id), Some(cluster_id)) = stored {
        if let Bootstrap::Join {
            member_id: want_member,
            cluster_id: want_cluster,
        } = bootstrap
        {
            if (want_member, want_cluster) != (member_id, cluster_id) {
                return Err(ConsensusError::Config(format!(
                    "data dir already belongs to member {member_id:x} of cluster {cluster_id:x}"
                )));
            }
        }
        let bootstrapped = meta.get(KEY_ORIGIN)?.as_deref() == Some(ORIGIN_BOOTSTRAP);
        return Ok((member_id, cluster_id, bootstrapped));
    }
    let (member_id, cluster_id, origin) = match bootstrap {
        Bootstrap::NewCluster => (random_nonzero_id(), random_nonzero_id(), ORIGIN_BOOTSTRAP),
        Bootstrap::Join {
            member_id,
            cluster_id,
        } => {
            if member_id == 0 {
                return Err(ConsensusError::Config("member id 0 is reserved".into()));
            }
            (member_id, cluster_id, ORIGIN_JOIN)
        }
    };
    let enc = |v: u64| encode(&v).map_err(|e| ConsensusError::Storage(e.to_string()));
    meta.insert(KEY_ORIGIN, origin)?;
    meta.insert(KEY_CLUSTER_ID, enc(cluster_id)?)?;
    meta.insert(KEY_MEMBER_ID, enc(member_id)?)?;
    db.flush()?;
    Ok((member_id, cluster_id, origin == ORIGIN_BOOTSTRAP))
}

fn write_error_ref(e: &RaftError<NodeId, ClientWriteError<NodeId, MemberInfo>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_id {
            Some(leader) => ProposeError::NotLeader { leader },
            None => ProposeError::NoLeader,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ProposeError::Unavailable(e.to_string())
        }
        RaftError::Fatal(f) => fatal_error_ref(f),
    }
}

fn fatal_error(f: Fatal<NodeId>) -> ProposeError {
    fatal_error_ref(&f)
}

fn fatal_error_ref(f: &Fatal<NodeId>) -> ProposeError {
    match f {
        Fatal::Stopped => ProposeError::ShuttingDown,
        other => ProposeError::Fatal(other.to_string()),
    }
}

impl Node {
    /// Opens the raft storage in `db` (trees prefixed "raft_"), and on an empty store bootstraps a new
    /// single-voter cluster (fresh random nonzero member id and cluster id, persisted); otherwise resumes.
    pub async fn open(
        cfg: NodeConfig,
        db: sled::Db,
        sm: Arc<dyn StateMachine>,
    ) -> Result<Node, ConsensusError> {
        Node::open_with(cfg, db, sm, Bootstrap::NewCluster).await
    }

    /// Like [`Node::open`], choosing what an empty store becomes; existing data always resumes.
    pub async fn open_with(
        cfg: NodeConfig,
        db: sled::Db,
        sm: Arc<dyn StateMachine>,
        bootstrap: Bootstrap,
    ) -> Result<Node, ConsensusError> {
        let raft_config = Arc::new(cfg.raft_config()?);
        let (member_id, cluster_id, bootstrapped) = load_or_assign_ids(&db, bootstrap)?;
        let span = tracing::info_span!("raft_open", member = %format!("{member_id:x}"), cluster = %format!("{cluster_id:x}"));
        let _enter = span.enter();

        let log_store = LogStore::open(db.clone(), &cfg.data_dir)?;
        let appends_flushed = log_store.appends_flushed();
        let committed_index = log_store.committed_index();
        let storage_refs = log_store.refs();
        let snapshots = Arc::new(SnapshotDir::open(
            cfg.data_dir.join(crate::snapshot::SNAPSHOT_DIR),
            db,
            storage_refs.clone(),
        )?);
        let applied_commands = Arc::new(AtomicU64::new(0));
        let adapter = StateMachineAdapter::new(sm, snapshots, applied_commands.clone())?;
        let health = Arc::new(PeerHealth::default());
        let network =
            PeerNetworkFactory::new(member_id, cluster_id, cfg.peer_tls.clone(), health.clone());
        drop(_enter);

        let runtime = crate::runtime::RaftRuntime::start()?;
        let raft = runtime
            .handle()
            .spawn(Raft::new(
                member_id,
                raft_config,
                network,
                log_store,
                adapter,
            ))
            .await
            .map_err(|e| ConsensusError::Raft(format!("raft runtime: {e}")))?
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;

        if bootstrapped
            && !raft
                .is_initialized()
                .await
                .map_err(|e| ConsensusError::Raft(e.to_string()))?
        {
            let members = BTreeMap::from([(member_id, cfg.member_info())]);
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(ConsensusError::Raft(e.to_string())),
            }
            tracing::info!(member = %format!("{member_id:x}"), cluster = %format!("{cluster_id:x}"), "bootstrapped new cluster");
        }

        let lease_ms = quorum_lease_ms(cfg.election_timeout_ms);
        let (status_tx, status_rx) = watch::channel(RaftStatus::from_metrics(
            &raft.metrics().borrow(),
            committed_index.load(Ordering::Relaxed),
            lease_ms,
        ));
        let status_task = tokio::spawn(forward_status(
            raft.metrics(),
            committed_index.clone(),
            status_tx,
            lease_ms,
        ));

        let (proposals, proposal_rx) = mpsc::unbounded_channel();
        // Entries carry batches of commands, so openraft's entry-count policy
        // alone would let the log grow by up to a batch per entry: also
        // snapshot every `snapshot_every` commands.
        runtime.handle().spawn(snapshot_by_commands(
            raft.clone(),
            applied_commands,
            cfg.snapshot_every.max(1),
        ));
        let batcher = runtime.handle().spawn(crate::batch::run_batcher(
            raft.clone(),
            proposal_rx,
            appends_flushed,
            write_error_ref,
        ));

        let node = Node {
            inner: Arc::new(NodeInner {
                proposals,
                batcher: Mutex::new(Some(batcher)),
                runtime: Mutex::new(Some(runtime)),
                raft,
                member_id,
                cluster_id,
                committed_index,
                status_rx,
                status_task: Mutex::new(Some(status_task)),
                storage_refs,
                health,
                forwarder: Forwarder::new(cluster_id, cfg.peer_tls.clone()),
                epoch: Instant::now(),
                leader_contact_ms: AtomicU64::new(0),
                membership_lock: tokio::sync::Mutex::new(()),
                app: RwLock::new(None),
                election_timeout: Duration::from_millis(cfg.election_timeout_ms),
                heartbeat: Duration::from_millis(cfg.heartbeat_interval_ms),
                max_voters: cfg.max_voters.max(1),
                dead_voter_after: cfg.dead_voter_after,
                background: Mutex::new(Vec::new()),
                require_peer_cert: cfg.require_peer_cert,
                removed: std::sync::atomic::AtomicBool::new(false),
                reads: Mutex::new(ReadQueue::default()),
            }),
        };
        let weak = Arc::downgrade(&node.inner);
        let elections = tokio::spawn(crate::election::run_elections(weak.clone()));
        let roles = tokio::spawn(crate::roles::run_role_keeper(weak));
        node.inner
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([elections, roles]);
        Ok(node)
    }

    pub(crate) fn from_weak(weak: &Weak<NodeInner>) -> Option<Node> {
        weak.upgrade().map(|inner| Node { inner })
    }

    /// Replicates a command through the local batcher (leader only); answers the log index that
    /// carried it and the state machine's response.
    pub(crate) async fn propose_local(&self, cmd: Vec<u8>) -> Result<(u64, Vec<u8>), ProposeError> {
        let span = tracing::debug_span!("raft_propose", bytes = cmd.len());
        let (reply, rx) = oneshot::channel();
        self.inner
            .proposals
            .send(crate::batch::Proposal { cmd, reply })
            .map_err(|_| ProposeError::ShuttingDown)?;
        rx.instrument(span)
            .await
            .map_err(|_| ProposeError::ShuttingDown)?
    }

    /// The leader's read index: reads are linearizable once this member has applied it.
    ///
    /// Batched as etcd does: one leadership confirmation (a heartbeat round to the voters)
    /// serves every read that was waiting when it started; reads arriving during a round wait
    /// for the next one, so none is answered from a confirmation older than itself. Without
    /// batching every read sent its own round, and under load the rounds (each with a
    /// heartbeat-interval deadline) failed together, taking every read down with them.
    pub(crate) async fn read_index_local(&self) -> Result<u64, ProposeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut queue = self.inner.reads.lock().unwrap_or_else(|e| e.into_inner());
            queue.waiting.push(tx);
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.confirm_waiting_reads().await });
        }
        rx.await.map_err(|_| ProposeError::ShuttingDown)?
    }

    /// Runs confirmation rounds while reads are waiting.
    async fn confirm_waiting_reads(&self) {
        loop {
            let batch = {
                let mut queue = self.inner.reads.lock().unwrap_or_else(|e| e.into_inner());
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            let result = self.confirm_read_index().await;
            for tx in batch {
                let _ = tx.send(result.clone());
            }
        }
    }

    /// One leadership confirmation round: the read index, or why there is none.
    async fn confirm_read_index(&self) -> Result<u64, ProposeError> {
        let span = tracing::debug_span!("raft_read_index");
        match self.inner.raft.get_read_log_id().instrument(span).await {
            Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => match f.leader_id {
                Some(leader) => Err(ProposeError::NotLeader { leader }),
                None => Err(ProposeError::NoLeader),
            },
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(ProposeError::Unavailable(q.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(fatal_error(f)),
        }
    }

    /// Waits until the local state machine has applied `index`.
    pub(crate) async fn wait_applied(
        &self,
        index: u64,
        timeout: Duration,
    ) -> Result<(), ProposeError> {
        if self.applied_index() >= index {
            return Ok(());
        }
        self.inner
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "forwarded request")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::ShuttingDown => ProposeError::ShuttingDown,
                openraft::metrics::WaitError::Timeout(..) => ProposeError::Unavailable(format!(
                    "this member did not apply index {index} within {timeout:?}"
                )),
            })
    }

    pub(crate) fn inner(&self) -> &NodeInner {
        &self.inner
    }

    /// Lease after which a leader that heard no quorum counts itself deposed (milliseconds).
    pub(crate) fn lease_ms(&self) -> u64 {
        quorum_lease_ms(self.inner.election_timeout.as_millis() as u64)
    }

    /// The leader as this member sees it now (cheap; no membership copy).
    pub fn leader(&self) -> Option<NodeId> {
        crate::status::current_leader(&self.inner.raft.metrics().borrow(), self.lease_ms())
    }

    /// The current raft term (cheap).
    pub fn term(&self) -> u64 {
        self.inner.raft.metrics().borrow().current_term
    }

    /// Highest log index applied to the local state machine (cheap).
    pub fn applied_index(&self) -> u64 {
        self.inner
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// True when this member leads (and has heard from a quorum within the lease).
    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.state == openraft::ServerState::Leader
            && crate::status::current_leader(&m, self.lease_ms()) == Some(self.inner.member_id)
    }

    /// Records that a leader just replicated to this member (pre-vote input).
    pub(crate) fn heard_from_leader(&self) {
        let ms = self.inner.epoch.elapsed().as_millis() as u64;
        self.inner.leader_contact_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago a leader last replicated to this member.
    pub(crate) fn leader_silence(&self) -> Duration {
        let last = self.inner.leader_contact_ms.load(Ordering::Relaxed);
        self.inner
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    /// When each peer last answered this member's raft RPCs.
    pub fn peer_health(&self) -> &PeerHealth {
        &self.inner.health
    }

    /// True once a majority of the other voters answered that this member is no longer in
    /// their membership: it was removed while it could not learn so from the log.
    pub fn was_removed(&self) -> bool {
        self.inner.removed.load(Ordering::Relaxed)
    }

    /// Installs the handler for application calls forwarded to the leader.
    pub fn set_app_handler(&self, handler: Arc<dyn AppHandler>) {
        *self.inner.app.write().unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    pub(crate) fn app_handler(&self) -> Option<Arc<dyn AppHandler>> {
        self.inner
            .app
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This member's raft id.
    pub fn member_id(&self) -> NodeId {
        self.inner.member_id
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    /// Snapshot of raft status for Maintenance/Status and MemberList (fresh at call time).
    pub fn status(&self) -> RaftStatus {
        RaftStatus::from_metrics(
            &self.inner.raft.metrics().borrow(),
            self.inner.committed_index.load(Ordering::Relaxed),
            self.lease_ms(),
        )
    }

    /// A watch that is notified when this member's view of the leader, term, role or membership
    /// changes. The held value is refreshed on every raft metrics change without notifying, so
    /// its log positions may be slightly stale; use [`Node::status`] for exact positions.
    pub fn subscribe(&self) -> watch::Receiver<RaftStatus> {
        self.inner.status_rx.clone()
    }

    /// Address book entry of member `id` in the effective membership.
    pub fn member_info(&self, id: NodeId) -> Option<MemberInfo> {
        self.inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    /// The tonic service to mount on the peer listener (raft RPCs: append entries, vote, install snapshot chunks).
    pub fn peer_service(&self) -> PeerServer {
        PeerService::new(self.clone(), self.inner.require_peer_cert).into_server()
    }

    /// The underlying openraft handle, for operations not wrapped here.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Stops raft (idempotent); later calls fail with `ShuttingDown`.
    ///
    /// On return consensus holds no handle on the sled `Db` or the state machine any more (openraft
    /// stops its state machine and replication tasks asynchronously, so this waits for them), which
    /// lets the caller reopen the same data directory in-process.
    pub async fn shutdown(&self) -> Result<(), ConsensusError> {
        let task = self
            .inner
            .status_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
        }
        let batcher = self
            .inner
            .batcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = batcher {
            task.abort();
        }
        for task in self
            .inner
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| ConsensusError::Raft(format!("raft core task failed: {e}")))?;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_RELEASE_WAIT;
        while Arc::strong_count(&self.inner.storage_refs) > 1 {
            if tokio::time::Instant::now() >= deadline {
                return Err(ConsensusError::Raft(
                    "raft tasks still hold the storage after shutdown".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(
            self.inner
                .runtime
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        Ok(())
    }
}

/// Triggers a snapshot whenever `every` more commands have been applied; ends with raft.
async fn snapshot_by_commands(raft: Raft, applied: Arc<AtomicU64>, every: u64) {
    let mut last = applied.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = applied.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every {
            continue;
        }
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::debug!(error = %e, "snapshot trigger stopped");
            return;
        }
        last = now;
    }
}

/// Mirrors openraft metrics into the status watch, notifying only on topology changes.
async fn forward_status(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, MemberInfo>>,
    committed_index: Arc<AtomicU64>,
    status_tx: watch::Sender<RaftStatus>,
    lease_ms: u64,
) {
    loop {
        let status = RaftStatus::from_metrics(
            &metrics.borrow_and_update(),
            committed_index.load(Ordering::Relaxed),
            lease_ms,
        );
        status_tx.send_if_modified(|current| {
            let notify = !current.same_topology(&status);
            *current = status;
            notify
        });
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
