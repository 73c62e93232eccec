//! Elections with a pre-vote round. openraft 0.9 has no pre-vote: a member
//! cut off from the leader keeps starting elections, raising its term, and
//! when it comes back the leader sees the higher term and steps down. Here
//! openraft's own election timer is off; this driver starts an election only
//! after a majority of every voter configuration answered that they, too,
//! have not heard from a leader for an election timeout.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use crate::forward::PreVoteRequest;
use crate::node::NodeInner;
use crate::types::NodeId;
use crate::Node;

/// Election timeouts of silence after which a standby checks it is still a member.
const LEARNER_PROBE_AFTER: u32 = 10;

/// A random election timeout in `[base, 2 * base)`.
fn randomized(base: Duration) -> Duration {
    let base_ms = base.as_millis().max(1) as u64;
    Duration::from_millis(base_ms + rand::random_range(0..base_ms))
}

/// Watches for a silent leader and campaigns after a successful pre-vote; ends with the node.
pub(crate) async fn run_elections(weak: Weak<NodeInner>) {
    let Some(node) = Node::from_weak(&weak) else {
        return;
    };
    let base = node.inner().election_timeout;
    let tick = node.inner().heartbeat;
    drop(node);
    let mut timeout = randomized(base);
    // This member's own election timer. It is kept apart from the leader contact that pre-vote
    // answers are based on: restarting one's own timer after a lost round must not make this
    // member tell another candidate "I hear a leader", or two candidates refuse each other
    // forever.
    let mut last_attempt = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let Some(node) = Node::from_weak(&weak) else {
            return;
        };
        if node.is_leader() {
            // A deposed leader waits a full timeout before campaigning again.
            node.heard_from_leader();
            continue;
        }
        let configs: Vec<BTreeSet<NodeId>> = node
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_joint_config()
            .clone();
        let me = node.member_id();
        if !configs.iter().any(|c| c.contains(&me)) {
            // A standby hears nothing once it is removed; after a long silence it asks the
            // voters whether it still belongs (their answer sets `removed`).
            let is_learner = node.member_info(me).is_some();
            if is_learner
                && node.leader_silence() >= base * LEARNER_PROBE_AFTER
                && last_attempt.elapsed() >= base * LEARNER_PROBE_AFTER
            {
                pre_vote(&node, &configs, base).await;
                last_attempt = tokio::time::Instant::now();
            }
            continue;
        }
        let single_voter = configs.iter().all(|c| c.len() == 1 && c.contains(&me));
        if !single_voter && (node.leader_silence() < timeout || last_attempt.elapsed() < timeout) {
            continue;
        }
        let term_before = node.term();
        let won = single_voter || pre_vote(&node, &configs, base).await;
        // While the round ran this member may have voted for, or heard from, a new leader (both
        // restart its timer): campaigning now would unseat that leader.
        let still_silent =
            single_voter || (node.leader_silence() >= timeout && node.term() == term_before);
        if won && still_silent {
            tracing::info!(member = %format!("{me:x}"), "pre-vote granted; starting an election");
            if node.raft().trigger().elect().await.is_err() {
                return;
            }
        }
        // Restart the timer whatever happened: the next attempt waits a fresh random timeout.
        last_attempt = tokio::time::Instant::now();
        timeout = randomized(base);
    }
}

/// Asks every other voter; true when each configuration has a granting majority (self included).
async fn pre_vote(node: &Node, configs: &[BTreeSet<NodeId>], base: Duration) -> bool {
    let me = node.member_id();
    let others: BTreeSet<NodeId> = configs
        .iter()
        .flatten()
        .copied()
        .filter(|id| *id != me)
        .collect();
    let req = PreVoteRequest { candidate: me };
    let asks = others.iter().map(|id| {
        let info = node.member_info(*id);
        let req = req.clone();
        async move {
            let answer = match info {
                Some(info) => {
                    node.inner()
                        .forwarder
                        .pre_vote(*id, &info, &req, base / 2)
                        .await
                }
                None => Err("not in this member's address book".to_string()),
            };
            (*id, answer)
        }
    });
    // Stop as soon as every configuration has a granting majority: waiting for an unreachable
    // voter's timeout would only give a competing candidate time to start its own round.
    let mut pending: futures::stream::FuturesUnordered<_> = asks.collect();
    let mut answers = Vec::new();
    let mut granted: BTreeSet<NodeId> = BTreeSet::from([me]);
    let majority = |granted: &BTreeSet<NodeId>| {
        configs
            .iter()
            .all(|c| c.iter().filter(|id| granted.contains(id)).count() * 2 > c.len())
    };
    while let Some((id, answer)) = futures::StreamExt::next(&mut pending).await {
        if answer.as_ref().is_ok_and(|a| a.granted) {
            granted.insert(id);
        }
        answers.push((id, answer));
        if majority(&granted) {
            return true;
        }
    }
    let disowned = answers
        .iter()
        .filter(|(_, a)| a.as_ref().is_ok_and(|a| !a.member))
        .count();
    if disowned * 2 > others.len() {
        tracing::warn!("a majority of the other voters no longer counts this member in");
        node.inner()
            .removed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        return false;
    }
    let ok = majority(&granted);
    if !ok {
        let refused: Vec<String> = answers
            .iter()
            .map(|(id, a)| match a {
                Err(e) => format!("{id:x}: {e}"),
                Ok(a) if !a.member => format!("{id:x}: not a member"),
                Ok(_) => format!("{id:x}: hears a leader"),
            })
            .collect();
        tracing::info!(
            granted = granted.len(),
            ?refused,
            "pre-vote lost; not starting an election"
        );
    }
    ok
}
