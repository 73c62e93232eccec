//! Three members on loopback: replication, leader-only proposals, and snapshot install on a
//! learner that joins after the leader purged its log.

mod common;

use common::{wait_for, Member};
use tugboat_consensus::Bootstrap;

const SNAPSHOT_EVERY: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_and_learner_installs_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let d = root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    let a = Member::start("a", &dir("a"), Bootstrap::NewCluster, SNAPSHOT_EVERY).await;
    let a_id = a.node.member_id();
    let cluster_id = a.node.cluster_id();
    assert_ne!(a_id, 0);
    assert_ne!(cluster_id, 0);
    wait_for("a to lead", || a.node.status().is_leader()).await;

    let join = |member_id| Bootstrap::Join {
        member_id,
        cluster_id,
    };
    let b = Member::start("b", &dir("b"), join(0xb), SNAPSHOT_EVERY).await;
    let c = Member::start("c", &dir("c"), join(0xc), SNAPSHOT_EVERY).await;
    a.node.admit_learner(0xb, b.info.clone()).await.unwrap();
    a.node.admit_learner(0xc, c.info.clone()).await.unwrap();
    // The leader's role keeper promotes the two caught-up learners together (odd voter count).
    wait_for("b and c to become voters", || {
        let st = a.node.status();
        st.members.len() == 3 && st.members.iter().all(|m| m.is_voter)
    })
    .await;

    let status = a.node.status();
    assert_eq!(status.members.len(), 3);
    assert!(status.members.iter().all(|m| m.is_voter));
    let b_entry = status.members.iter().find(|m| m.id == 0xb).unwrap();
    assert_eq!(b_entry.info, b.info);

    // Replication: responses come from the leader's machine, every machine applies the same log.
    let mut want = Vec::new();
    for i in 0..35 {
        let cmd = format!("put-{i:03}").into_bytes();
        let resp = a.node.propose(cmd.clone()).await.unwrap();
        assert_eq!(resp, cmd.iter().rev().copied().collect::<Vec<u8>>());
        want.push(cmd);
    }
    // (Raft metrics trail the propose response, so wait on the machines themselves.)
    for m in [&a, &b, &c] {
        wait_for("machines to apply", || m.sm.commands().len() >= want.len()).await;
    }
    for m in [&a, &b, &c] {
        assert_eq!(m.sm.commands(), want, "machine of {}", m.info.name);
        assert_eq!(m.node.status().leader, Some(a_id));
    }

    // A follower forwards proposals and read barriers to the leader, and answers only once its
    // own machine has applied the result.
    let cmd = b"via-follower".to_vec();
    let resp = b.node.propose(cmd.clone()).await.unwrap();
    assert_eq!(resp, cmd.iter().rev().copied().collect::<Vec<u8>>());
    assert_eq!(
        b.sm.commands().last(),
        Some(&cmd),
        "applied on b before answering"
    );
    want.push(cmd);
    c.node.read_barrier().await.unwrap();
    assert_eq!(
        c.sm.commands(),
        want,
        "c caught up before its read barrier returned"
    );
    a.node.read_barrier().await.unwrap();

    // With snapshot_every=10 the leader has snapshotted and purged the head of its log, so a new
    // learner can only catch up through a snapshot.
    wait_for("leader to purge its log", || {
        a.node
            .raft()
            .metrics()
            .borrow()
            .purged
            .map(|p| p.index)
            .unwrap_or(0)
            > 0
    })
    .await;
    assert!(a.node.status().snapshot_index > 0);

    let d = Member::start("d", &dir("d"), join(0xd), SNAPSHOT_EVERY).await;
    a.node.admit_learner(0xd, d.info.clone()).await.unwrap();
    wait_for("learner to catch up", || {
        d.sm.commands().len() >= want.len()
    })
    .await;
    assert!(
        d.node.status().snapshot_index > 0,
        "learner installed a snapshot"
    );
    assert!(
        d.sm.applied_here.lock().unwrap().len() < want.len(),
        "the learner's head of the log came from the snapshot, not from apply"
    );
    assert_eq!(d.sm.commands(), want);
    let d_status = d.node.status();
    assert_eq!(d_status.leader, Some(a_id));
    assert_eq!(d_status.members.iter().filter(|m| m.is_voter).count(), 3);
    assert!(d_status.members.iter().any(|m| m.id == 0xd && !m.is_voter));
    // Only the latest snapshot image is kept (built on the leader, received on the learner).
    for m in [&a, &d] {
        let snaps: Vec<_> = std::fs::read_dir(m.dir.join("snapshots"))
            .unwrap()
            .collect();
        assert_eq!(snaps.len(), 1, "snapshot files of {}", m.info.name);
    }

    // The learner keeps following through the log after the snapshot.
    let cmd = b"after-snapshot".to_vec();
    a.node.propose(cmd.clone()).await.unwrap();
    want.push(cmd);
    for m in [&b, &c, &d] {
        wait_for("everyone to apply the last command", || {
            m.sm.commands().len() >= want.len()
        })
        .await;
        assert_eq!(m.sm.commands(), want, "machine of {}", m.info.name);
    }

    for m in [d, c, b, a] {
        m.stop().await;
    }
}
