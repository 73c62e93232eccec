//! Who votes. Store members are voters (an odd number, at most
//! `max_voters`) or standbys (raft learners with a full copy). The leader's
//! role keeper promotes caught-up standbys while there are too few voters,
//! replaces a voter that stayed unreachable past `dead_voter_after` with a
//! healthy standby (through joint consensus), and keeps the voter count odd.
//! Explicit changes (`add_learner`, `promote`, `remove`) serialize with it on
//! the leader's membership lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;

use crate::forward::ForwardError;
use crate::node::NodeInner;
use crate::types::{MemberInfo, NodeId};
use crate::Node;

/// A learner this close to the leader's log counts as caught up.
const CATCH_UP_SLACK: u64 = 100;
/// How often the role keeper looks at the membership.
const KEEPER_PERIOD: Duration = Duration::from_millis(100);
/// How long an explicit change waits for another membership change to finish.
const IN_PROGRESS_WAIT: Duration = Duration::from_secs(20);

/// The leader's view of the membership, for role decisions.
#[derive(Debug, Clone)]
struct View {
    me: NodeId,
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    nodes: BTreeMap<NodeId, MemberInfo>,
    /// Matched log index per member (leader's replication progress).
    matched: BTreeMap<NodeId, u64>,
    last_log_index: u64,
    joint: bool,
}

impl View {
    fn of(node: &Node) -> View {
        let metrics = node.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let matched = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        View {
            me: metrics.id,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, info)| (*id, info.clone()))
                .collect(),
            matched,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            joint: membership.get_joint_config().len() > 1,
        }
    }

    fn caught_up(&self, id: NodeId) -> bool {
        id == self.me
            || self
                .matched
                .get(&id)
                .is_some_and(|m| m + CATCH_UP_SLACK >= self.last_log_index)
    }
}

/// The largest odd number not above `n` (at least 1).
fn odd_floor(n: usize) -> usize {
    if n == 0 {
        1
    } else if n.is_multiple_of(2) {
        n - 1
    } else {
        n
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberInfo>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ForwardError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            ForwardError::Rejected(c.to_string())
        }
        RaftError::Fatal(openraft::error::Fatal::Stopped) => ForwardError::ShuttingDown,
        RaftError::Fatal(f) => ForwardError::Fatal(f.to_string()),
    }
}

fn in_progress(e: &RaftError<NodeId, ClientWriteError<NodeId, MemberInfo>>) -> bool {
    matches!(
        e,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_)
        ))
    )
}

/// Applies `change` as leader, waiting while an earlier membership change is still in flight.
async fn change(
    node: &Node,
    change: ChangeMembers<NodeId, MemberInfo>,
    retain: bool,
) -> Result<u64, ForwardError> {
    let deadline = Instant::now() + IN_PROGRESS_WAIT;
    loop {
        match node.raft().change_membership(change.clone(), retain).await {
            Ok(resp) => return Ok(resp.log_id.index),
            Err(e) if in_progress(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(membership_error(e)),
        }
    }
}

/// Adds `id` as a learner (leader only). Idempotent for the same member; a different member
/// with the same name is refused.
pub(crate) async fn add_learner(
    node: &Node,
    id: NodeId,
    info: MemberInfo,
) -> Result<u64, ForwardError> {
    let _guard = node.inner().membership_lock.lock().await;
    let view = View::of(node);
    if let Some(existing) = view.nodes.get(&id) {
        if *existing == info {
            return Ok(view.last_log_index);
        }
        return Err(ForwardError::Rejected(format!(
            "member id {id:x} is already taken"
        )));
    }
    if let Some((other, _)) = view.nodes.iter().find(|(_, m)| m.name == info.name) {
        return Err(ForwardError::Rejected(format!(
            "a member named {:?} already exists (id {other:x}); remove it first with `tugboat node remove {}`",
            info.name, info.name
        )));
    }
    let deadline = Instant::now() + IN_PROGRESS_WAIT;
    loop {
        match node.raft().add_learner(id, info.clone(), false).await {
            Ok(resp) => {
                tracing::info!(member = %format!("{id:x}"), name = %info.name, "added learner");
                return Ok(resp.log_id.index);
            }
            Err(e) if in_progress(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(membership_error(e)),
        }
    }
}

/// Promotes learner `id` (leader only), keeping the voter count odd: when one more voter
/// would make it even, another caught-up learner is promoted with it.
pub(crate) async fn promote(node: &Node, id: NodeId) -> Result<u64, ForwardError> {
    let _guard = node.inner().membership_lock.lock().await;
    let view = View::of(node);
    if !view.nodes.contains_key(&id) {
        return Err(ForwardError::Rejected(
            "etcdserver: member not found".into(),
        ));
    }
    if view.voters.contains(&id) {
        return Err(ForwardError::Rejected(
            "etcdserver: can only promote a learner member".into(),
        ));
    }
    if !view.caught_up(id) {
        return Err(ForwardError::Rejected(
            "etcdserver: can only promote a learner member which is in sync with leader".into(),
        ));
    }
    let mut voters = view.voters.clone();
    voters.insert(id);
    if voters.len().is_multiple_of(2) {
        if let Some(partner) = view
            .learners
            .iter()
            .copied()
            .find(|l| *l != id && view.caught_up(*l))
        {
            voters.insert(partner);
        }
    }
    if voters.len().is_multiple_of(2) || voters.len() > node.inner().max_voters {
        return Err(ForwardError::Rejected(format!(
            "etcdserver: promoting would make {} voters; tugboat keeps an odd number of voters, at most {} (see --max-voters)",
            voters.len(),
            node.inner().max_voters
        )));
    }
    change(node, ChangeMembers::ReplaceAllVoters(voters), true).await
}

/// Removes member `id` (leader only). A voter leaves the voter set through joint consensus first.
pub(crate) async fn remove(node: &Node, id: NodeId) -> Result<u64, ForwardError> {
    let _guard = node.inner().membership_lock.lock().await;
    let view = View::of(node);
    if !view.nodes.contains_key(&id) {
        return Err(ForwardError::Rejected(
            "etcdserver: member not found".into(),
        ));
    }
    if view.voters.contains(&id) {
        let rest: BTreeSet<NodeId> = view.voters.iter().copied().filter(|v| *v != id).collect();
        if rest.is_empty() {
            return Err(ForwardError::Rejected(
                "etcdserver: cannot remove the only voter; use `tugboatd recover` on another member instead".into(),
            ));
        }
        let index = change(node, ChangeMembers::ReplaceAllVoters(rest), false).await?;
        if !View::of(node).nodes.contains_key(&id) {
            tracing::info!(member = %format!("{id:x}"), "removed voter");
            return Ok(index);
        }
    }
    let index = change(
        node,
        ChangeMembers::RemoveNodes(BTreeSet::from([id])),
        false,
    )
    .await?;
    tracing::info!(member = %format!("{id:x}"), "removed member");
    Ok(index)
}

/// The voter set the policy wants now, if it differs from the current one.
fn desired_voters(
    view: &View,
    max_voters: usize,
    dead: &BTreeSet<NodeId>,
    healthy: &BTreeSet<NodeId>,
) -> Option<BTreeSet<NodeId>> {
    if view.joint {
        return None;
    }
    let mut standbys: Vec<NodeId> = view
        .learners
        .iter()
        .copied()
        .filter(|l| healthy.contains(l) && view.caught_up(*l))
        .collect();
    standbys.sort_unstable();
    let mut voters = view.voters.clone();
    // Replace dead voters one by one while healthy standbys last.
    let dead_voters: Vec<NodeId> = dead
        .iter()
        .copied()
        .filter(|d| view.voters.contains(d) && *d != view.me)
        .collect();
    for d in &dead_voters {
        match standbys.pop() {
            Some(s) => {
                voters.remove(d);
                voters.insert(s);
            }
            None => break,
        }
    }
    // Grow towards the target while standbys last, two at a time to stay odd.
    let alive_members = view.nodes.keys().filter(|id| !dead.contains(id)).count();
    let target = odd_floor(alive_members.min(max_voters));
    while voters.len() < target {
        let need = if voters.len().is_multiple_of(2) { 1 } else { 2 };
        if standbys.len() < need {
            break;
        }
        for _ in 0..need {
            if let Some(s) = standbys.pop() {
                voters.insert(s);
            }
        }
    }
    // Shrink to an odd count within the limit, demoting dead or non-leader voters first.
    while voters.len() > 1 && (voters.len().is_multiple_of(2) || voters.len() > max_voters) {
        let victim = voters
            .iter()
            .copied()
            .filter(|v| *v != view.me)
            .max_by_key(|v| (dead.contains(v), !healthy.contains(v), *v));
        match victim {
            Some(v) => {
                voters.remove(&v);
            }
            None => break,
        }
    }
    (voters != view.voters).then_some(voters)
}

/// On the leader, keeps the voter set at target; ends with the node.
pub(crate) async fn run_role_keeper(weak: Weak<NodeInner>) {
    let mut leading_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(KEEPER_PERIOD).await;
        let Some(node) = Node::from_weak(&weak) else {
            return;
        };
        if !node.status().is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let Ok(_guard) = node.inner().membership_lock.try_lock() else {
            continue;
        };
        let view = View::of(&node);
        let dead_after = node.inner().dead_voter_after;
        let healthy_within = node.inner().election_timeout * 3;
        let mut dead = BTreeSet::new();
        let mut healthy = BTreeSet::from([view.me]);
        for id in view.nodes.keys().copied().filter(|id| *id != view.me) {
            let silent = node
                .peer_health()
                .silent_for(id)
                .unwrap_or_else(|| since.elapsed());
            if silent >= dead_after {
                dead.insert(id);
            }
            if silent < healthy_within {
                healthy.insert(id);
            }
        }
        let Some(voters) = desired_voters(&view, node.inner().max_voters, &dead, &healthy) else {
            continue;
        };
        tracing::info!(
            from = ?view.voters.iter().map(|v| format!("{v:x}")).collect::<Vec<_>>(),
            to = ?voters.iter().map(|v| format!("{v:x}")).collect::<Vec<_>>(),
            dead = ?dead.iter().map(|v| format!("{v:x}")).collect::<Vec<_>>(),
            "changing voters"
        );
        match node
            .raft()
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), true)
            .await
        {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "voter change failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(voters: &[u64], learners: &[u64]) -> View {
        let nodes = voters
            .iter()
            .chain(learners)
            .map(|id| (*id, MemberInfo::default()))
            .collect();
        View {
            me: voters[0],
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            nodes,
            matched: voters.iter().chain(learners).map(|id| (*id, 10)).collect(),
            last_log_index: 10,
            joint: false,
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn grows_two_at_a_time_to_three_voters() {
        let v = view(&[1], &[2]);
        assert_eq!(desired_voters(&v, 3, &set(&[]), &set(&[1, 2])), None);
        let v = view(&[1], &[2, 3]);
        assert_eq!(
            desired_voters(&v, 3, &set(&[]), &set(&[1, 2, 3])),
            Some(set(&[1, 2, 3]))
        );
        let v = view(&[1, 2, 3], &[4, 5]);
        assert_eq!(
            desired_voters(&v, 3, &set(&[]), &set(&[1, 2, 3, 4, 5])),
            None
        );
        assert_eq!(
            desired_voters(&v, 5, &set(&[]), &set(&[1, 2, 3, 4, 5])),
            Some(set(&[1, 2, 3, 4, 5]))
        );
    }

    #[test]
    fn dead_voter_is_replaced_only_by_a_healthy_caught_up_standby() {
        let v = view(&[1, 2, 3], &[4, 5]);
        let got = desired_voters(&v, 3, &set(&[3]), &set(&[1, 2, 5])).unwrap();
        assert_eq!(got, set(&[1, 2, 5]));
        assert_eq!(
            desired_voters(&v, 3, &set(&[3]), &set(&[1, 2])),
            None,
            "no healthy standby"
        );
        let mut lagging = view(&[1, 2, 3], &[4]);
        lagging.matched.insert(4, 0);
        lagging.last_log_index = 1000;
        assert_eq!(
            desired_voters(&lagging, 3, &set(&[3]), &set(&[1, 2, 4])),
            None
        );
    }

    #[test]
    fn even_voter_counts_are_made_odd() {
        // A voter left cleanly and no standby exists: demote one rather than keep two.
        let v = view(&[1, 2], &[]);
        assert_eq!(
            desired_voters(&v, 3, &set(&[]), &set(&[1, 2])),
            Some(set(&[1]))
        );
        // With a standby, promote instead.
        let v = view(&[1, 2], &[3]);
        assert_eq!(
            desired_voters(&v, 3, &set(&[]), &set(&[1, 2, 3])),
            Some(set(&[1, 2, 3]))
        );
    }

    #[test]
    fn odd_floor_values() {
        assert_eq!([0, 1, 2, 3, 4, 5, 6].map(odd_floor), [1, 1, 1, 3, 3, 5, 5]);
    }
}
