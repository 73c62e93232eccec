//! Quorum-loss recovery (`force_new_cluster`): a member of a stopped three-member cluster comes
//! back alone as the only voter of a new cluster, with every committed command still applied.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_for, Member};
use tugboat_consensus::{
    force_new_cluster, Bootstrap, ConsensusError, MemberInfo, MemberStatus, RecoverReport,
};

/// Small enough that every member snapshots and purges its log head, so recovery also has to
/// read the snapshot record and keep the log contiguous after the purge point.
const SNAPSHOT_EVERY: u64 = 10;

/// A stopped member: where it stored its data and how it was reachable.
struct Stopped {
    id: u64,
    dir: PathBuf,
    addr: String,
    info: MemberInfo,
}

fn member_dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a three-member cluster, commits `commands` commands through it, stops all members.
/// Returns the stopped members (leader first), the commands and the cluster id.
async fn three_members_then_stop(
    root: &Path,
    commands: usize,
) -> (Vec<Stopped>, Vec<Vec<u8>>, u64) {
    let a = Member::start(
        "a",
        &member_dir(root, "a"),
        Bootstrap::NewCluster,
        SNAPSHOT_EVERY,
    )
    .await;

    let cluster_id = a.node.cluster_id();
    wait_for("a to lead", || a.node.status().is_leader()).await;
    let join = |member_id| Bootstrap::Join {
        member_id,
        cluster_id,
    };
    let b = Member::start("b", &member_dir(root, "b"), join(0xb), SNAPSHOT_EVERY).await;
    let c = Member::start("c", &member_dir(root, "c"), join(0xc), SNAPSHOT_EVERY).await;
    a.node.admit_learner(0xb, b.info.clone()).await.unwrap();
    a.node.admit_learner(0xc, c.info.clone()).await.unwrap();
    // The leader's role keeper promotes the two caught-up learners together.
    wait_for("b and c to become voters", || {
        let st = a.node.status();
        st.members.len() == 3 && st.members.iter().all(|m| m.is_voter)
    })
    .await;

    let mut want = Vec::new();
    for i in 0..commands {
        let cmd = format!("put-{i:03}").into_bytes();
        a.node.propose(cmd.clone()).await.unwrap();
        want.push(cmd);
    }
    for m in [&a, &b, &c] {
        wait_for("machines to apply", || m.sm.commands().len() >= want.len()).await;
        assert_eq!(m.sm.commands(), want);
    }

    let mut stopped = Vec::new();
    for m in [a, b, c] {
        let (id, addr, info) = (m.node.member_id(), m.addr.clone(), m.info.clone());
        let dir = m.stop().await;
        stopped.push(Stopped {
            id,
            dir,
            addr,
            info,
        });
    }
    (stopped, want, cluster_id)
}

/// Runs `force_new_cluster` on the stopped member's data directory.
fn recover(m: &Stopped) -> RecoverReport {
    // The stopped node's sled threads may still hold the file lock for a moment after shutdown.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match sled::open(m.dir.join("db")) {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("waiting for the db lock: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("opening the stopped member's db: {e}"),
        }
    };
    let report = force_new_cluster(&db, &m.dir, m.info.clone()).unwrap();
    // (Drop flushes nothing new: recovery fsynced before returning.)
    drop(db);
    report
}

/// Waits (up to ~10 s) for a recovered member to lead; nudges one election if raft's own
/// election timer is not what makes it leader.
async fn wait_leader(m: &Member) {
    for i in 0..500 {
        if m.node.status().leader == Some(m.node.member_id()) {
            return;
        }
        if i == 150 {
            m.node.raft().trigger().elect().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "recovered member did not become leader: {:?}",
        m.node.status()
    );
}

/// Asserts that `m` leads a one-voter cluster made of itself only, described by `info`.
fn assert_alone(m: &Member, info: &MemberInfo) {
    let status = m.node.status();
    assert!(status.is_leader(), "{status:?}");
    assert_eq!(
        status.members,
        vec![MemberStatus {
            id: m.node.member_id(),
            info: info.clone(),
            is_voter: true,
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_member_leads_alone_with_all_committed_data() {
    let root = tempfile::tempdir().unwrap();
    let (stopped, mut want, old_cluster_id) = three_members_then_stop(root.path(), 35).await;
    let a = &stopped[0];

    let report = recover(a);
    assert_eq!(report.member_id, a.id);
    assert_eq!(report.old_cluster_id, old_cluster_id);
    assert_ne!(report.new_cluster_id, old_cluster_id);
    assert_ne!(report.new_cluster_id, 0);
    assert_eq!(
        report.removed_members,
        vec![(0xb, "b".to_string()), (0xc, "c".to_string())]
    );

    let m = Member::start_at("a", &a.dir, Bootstrap::NewCluster, SNAPSHOT_EVERY, &a.addr).await;
    assert_eq!(m.node.member_id(), a.id);
    assert_eq!(m.node.cluster_id(), report.new_cluster_id);
    wait_leader(&m).await;
    assert_alone(&m, &a.info);
    let status = m.node.status();
    assert!(status.last_log_index >= report.last_log_index, "{status:?}");
    assert!(status.applied_index >= report.last_log_index, "{status:?}");
    assert_eq!(m.sm.commands(), want, "committed commands survive recovery");

    // The new cluster takes writes and linearizable reads on its own.
    for i in 0..15 {
        let cmd = format!("after-{i:03}").into_bytes();
        let resp = m.node.propose(cmd.clone()).await.unwrap();
        assert_eq!(resp, cmd.iter().rev().copied().collect::<Vec<u8>>());
        want.push(cmd);
    }
    m.node.read_barrier().await.unwrap();
    assert_eq!(m.sm.commands(), want);

    // A stale old member comes back: it is refused (other cluster id), so it can neither win
    // over the recovered member nor drag it into a new term.
    let term = m.node.status().term;
    let b = &stopped[1];
    let stale = Member::start_at("b", &b.dir, Bootstrap::NewCluster, SNAPSHOT_EVERY, &b.addr).await;
    assert_eq!(stale.node.cluster_id(), old_cluster_id);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = m.node.status();
    assert!(status.is_leader(), "{status:?}");
    assert_eq!(status.term, term);
    assert_alone(&m, &a.info);
    // (Its persisted vote may still name the old leader; it just cannot lead itself.)
    assert!(!stale.node.status().is_leader());
    stale.stop().await;

    // Restarting the recovered member keeps the new cluster (no re-bootstrap, same ids).
    m.stop().await;
    let m = Member::start_at("a", &a.dir, Bootstrap::NewCluster, SNAPSHOT_EVERY, &a.addr).await;
    assert_eq!(m.node.cluster_id(), report.new_cluster_id);
    wait_leader(&m).await;
    assert_alone(&m, &a.info);
    assert_eq!(m.sm.commands(), want);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovering_twice_starts_another_new_cluster() {
    let root = tempfile::tempdir().unwrap();
    let (stopped, mut want, _) = three_members_then_stop(root.path(), 25).await;
    // A follower this time.
    let b = &stopped[1];

    let first = recover(b);
    assert_eq!(first.member_id, 0xb);
    let a_id = stopped[0].id;
    let mut removed = vec![(a_id, "a".to_string()), (0xc, "c".to_string())];
    removed.sort();
    assert_eq!(first.removed_members, removed, "ordered by id");
    let m = Member::start_at("b", &b.dir, Bootstrap::NewCluster, SNAPSHOT_EVERY, &b.addr).await;
    wait_leader(&m).await;
    assert_eq!(m.sm.commands(), want);
    let cmd = b"between-recoveries".to_vec();
    m.node.propose(cmd.clone()).await.unwrap();
    want.push(cmd);
    let term = m.node.status().term;
    m.stop().await;

    // Recovering the already recovered member: nothing to remove, yet another cluster id.
    let second = recover(b);
    assert_eq!(second.member_id, 0xb);
    assert_eq!(second.old_cluster_id, first.new_cluster_id);
    assert_ne!(second.new_cluster_id, first.new_cluster_id);
    assert_ne!(second.new_cluster_id, first.old_cluster_id);
    assert!(second.last_log_index > first.last_log_index);
    assert!(second.removed_members.is_empty());

    let m = Member::start_at("b", &b.dir, Bootstrap::NewCluster, SNAPSHOT_EVERY, &b.addr).await;
    assert_eq!(m.node.cluster_id(), second.new_cluster_id);
    wait_leader(&m).await;
    assert!(m.node.status().term > term);
    assert_alone(&m, &b.info);
    assert_eq!(m.sm.commands(), want);
    let cmd = b"after-second-recovery".to_vec();
    m.node.propose(cmd.clone()).await.unwrap();
    want.push(cmd);
    assert_eq!(m.sm.commands(), want);
    m.stop().await;
}

#[test]
fn never_initialized_db_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let db = sled::open(root.path().join("db")).unwrap();
    let info = MemberInfo {
        name: "nobody".into(),
        peer_url: "http://127.0.0.1:1".into(),
        client_urls: Vec::new(),
    };
    match force_new_cluster(&db, root.path(), info) {
        Err(ConsensusError::NotInitialized(msg)) => assert!(msg.contains("member id"), "{msg}"),
        other => panic!("expected NotInitialized, got {other:?}"),
    }
    // Refusing wrote nothing: the directory can still become any member.
    for tree in db.tree_names() {
        assert!(db.open_tree(&tree).unwrap().is_empty(), "{tree:?} written");
    }
}
