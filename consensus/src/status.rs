//! Raft status snapshots derived from openraft metrics.

use openraft::{RaftMetrics, ServerState};

use crate::types::{MemberInfo, NodeId};

/// Role of this member in raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RaftRole {
    /// Non-voting member replicating the log.
    #[default]
    Learner,
    /// Voter following a leader.
    Follower,
    /// Voter campaigning for leadership.
    Candidate,
    /// The leader.
    Leader,
    /// Raft is stopping or stopped.
    Shutdown,
}

impl From<ServerState> for RaftRole {
    fn from(state: ServerState) -> RaftRole {
        match state {
            ServerState::Learner => RaftRole::Learner,
            ServerState::Follower => RaftRole::Follower,
            ServerState::Candidate => RaftRole::Candidate,
            ServerState::Leader => RaftRole::Leader,
            ServerState::Shutdown => RaftRole::Shutdown,
        }
    }
}

/// A member of the current (effective) raft membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// Member id.
    pub id: NodeId,
    /// Name and URLs of the member.
    pub info: MemberInfo,
    /// True for voters, false for learners.
    pub is_voter: bool,
}

/// Snapshot of raft status for Maintenance/Status and MemberList.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// This member's id.
    pub id: NodeId,
    /// The leader as seen by this member.
    pub leader: Option<NodeId>,
    /// Current raft term.
    pub term: u64,
    /// Highest log index known committed (as persisted locally).
    pub committed_index: u64,
    /// Highest log index applied to the local state machine.
    pub applied_index: u64,
    /// Index of the last entry in the local log.
    pub last_log_index: u64,
    /// Members of the effective membership config, ordered by id.
    pub members: Vec<MemberStatus>,
    /// This member's role.
    pub role: RaftRole,
    /// Last log index covered by the current snapshot (0 = none).
    pub snapshot_index: u64,
}

impl RaftStatus {
    /// True when this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.role == RaftRole::Leader && self.leader == Some(self.id)
    }

    /// Whether `self` and `other` differ in anything but log positions (what `subscribe` signals).
    pub(crate) fn same_topology(&self, other: &RaftStatus) -> bool {
        self.leader == other.leader
            && self.term == other.term
            && self.role == other.role
            && self.members == other.members
    }

    /// `lease_ms`: a leader that has not heard from a quorum for this long reports itself
    /// deposed (no leader), since openraft 0.9 keeps an isolated leader in office.
    pub(crate) fn from_metrics(
        metrics: &RaftMetrics<NodeId, MemberInfo>,
        committed_index: u64,
        lease_ms: u64,
    ) -> RaftStatus {
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, info)| MemberStatus {
                id: *id,
                info: info.clone(),
                is_voter: voters.contains(id),
            })
            .collect();
        let applied_index = metrics.last_applied.map(|l| l.index).unwrap_or(0);
        let (leader, role) = if deposed(metrics, voters.len(), lease_ms) {
            (None, RaftRole::Candidate)
        } else {
            (metrics.current_leader, metrics.state.into())
        };
        RaftStatus {
            id: metrics.id,
            leader,
            term: metrics.current_term,
            // The persisted committed id may lag what has been applied (it is saved lazily).
            committed_index: committed_index.max(applied_index),
            applied_index,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            members,
            role,
            snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
        }
    }
}

/// A leader that has not heard from a quorum within the lease counts itself deposed: openraft 0.9
/// keeps an isolated leader in office, but it can no longer commit anything.
fn deposed(metrics: &RaftMetrics<NodeId, MemberInfo>, voters: usize, lease_ms: u64) -> bool {
    metrics.state == openraft::ServerState::Leader
        && voters > 1
        && metrics
            .millis_since_quorum_ack
            .is_none_or(|ms| ms > lease_ms)
}

/// The leader as this member sees it, without building a whole [`RaftStatus`].
pub(crate) fn current_leader(
    metrics: &RaftMetrics<NodeId, MemberInfo>,
    lease_ms: u64,
) -> Option<NodeId> {
    let voters = metrics.membership_config.membership().voter_ids().count();
    if deposed(metrics, voters, lease_ms) {
        None
    } else {
        metrics.current_leader
    }
}
