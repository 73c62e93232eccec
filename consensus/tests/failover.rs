//! Losing the leader of three members: the others elect a new leader while the old one is
//! unreachable, and the old leader rejoins as a follower and catches up.

mod common;

use common::{wait_for, Member};
use tugboat_consensus::Bootstrap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_new_leader_and_old_leader_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let d = root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let a = Member::start("a", &dir("a"), Bootstrap::NewCluster, 10_000).await;
    let a_id = a.node.member_id();
    let cluster_id = a.node.cluster_id();
    wait_for("a to lead", || a.node.status().is_leader()).await;
    let join = |member_id| Bootstrap::Join {
        member_id,
        cluster_id,
    };
    let b = Member::start("b", &dir("b"), join(2), 10_000).await;
    let c = Member::start("c", &dir("c"), join(3), 10_000).await;
    a.node.admit_learner(2, b.info.clone()).await.unwrap();
    a.node.admit_learner(3, c.info.clone()).await.unwrap();
    wait_for("b and c to become voters", || {
        let st = a.node.status();
        st.members.len() == 3 && st.members.iter().all(|m| m.is_voter)
    })
    .await;

    let mut want = Vec::new();
    for i in 0..5 {
        let cmd = format!("before-{i}").into_bytes();
        a.node.propose(cmd.clone()).await.unwrap();
        want.push(cmd);
    }
    let a_addr = a.addr.clone();
    let a_dir = a.stop().await;

    wait_for("a new leader among b and c", || {
        let (sb, sc) = (b.node.status(), c.node.status());
        (sb.is_leader() || sc.is_leader()) && sb.leader == sc.leader
    })
    .await;
    let (leader, follower) = if b.node.status().is_leader() {
        (&b, &c)
    } else {
        (&c, &b)
    };
    for i in 0..5 {
        let cmd = format!("after-{i}").into_bytes();
        leader.node.propose(cmd.clone()).await.unwrap();
        want.push(cmd);
    }
    leader.node.read_barrier().await.unwrap();
    // The follower forwards to the new leader.
    follower.node.propose(b"x".to_vec()).await.unwrap();
    want.push(b"x".to_vec());

    // The old leader comes back on its recorded address and follows the new term.
    let a = Member::start_at("a", &a_dir, Bootstrap::NewCluster, 10_000, &a_addr).await;
    assert_eq!(a.node.member_id(), a_id);
    wait_for("old leader to catch up", || {
        a.sm.commands().len() >= want.len()
    })
    .await;
    assert_eq!(a.sm.commands(), want);
    wait_for("old leader to follow", || {
        a.node.status().leader == Some(leader.node.member_id())
    })
    .await;
    assert!(!a.node.status().is_leader());

    for m in [a, b, c] {
        m.stop().await;
    }
}
