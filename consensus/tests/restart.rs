//! A single-voter member restarts: same ids, leader again, lost applies re-applied exactly once.

mod common;

use std::sync::atomic::Ordering;

use common::{wait_for, Member};
use tugboat_consensus::Bootstrap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_restart_resumes_and_reapplies_once() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();

    let m = Member::start("solo", &dir, Bootstrap::NewCluster, 10_000).await;
    let member_id = m.node.member_id();
    let cluster_id = m.node.cluster_id();
    wait_for("solo to lead", || m.node.status().is_leader()).await;
    let mut want = Vec::new();
    for i in 0..5 {
        let cmd = format!("durable-{i}").into_bytes();
        m.node.propose(cmd.clone()).await.unwrap();
        want.push(cmd);
    }
    // These applies "get lost": the machine answers but persists neither data nor applied record,
    // like a crash before its writes reached disk. The raft log still has them.
    m.sm.persist.store(false, Ordering::SeqCst);
    for i in 0..3 {
        let cmd = format!("lost-{i}").into_bytes();
        m.node.propose(cmd.clone()).await.unwrap();
        want.push(cmd);
    }
    let term_before = m.node.status().term;
    assert_eq!(m.sm.commands(), want[..5].to_vec());
    let sm_before = m.sm.clone();
    m.stop().await;
    drop(sm_before);

    let m = Member::start("solo", &dir, Bootstrap::NewCluster, 10_000).await;
    assert_eq!(
        m.node.member_id(),
        member_id,
        "existing data must not re-initialize"
    );
    assert_eq!(m.node.cluster_id(), cluster_id);
    wait_for("solo to lead again", || m.node.status().is_leader()).await;
    let status = m.node.status();
    assert_eq!(status.members.len(), 1);
    assert!(status.term >= term_before);

    wait_for("lost entries re-applied", || {
        m.sm.commands().len() == want.len()
    })
    .await;
    let cmd = b"after-restart".to_vec();
    m.node.propose(cmd.clone()).await.unwrap();
    want.push(cmd);
    assert_eq!(m.sm.commands(), want);
    // Exactly the three lost commands were re-applied (once), then the new one.
    let reapplied = m.sm.applied_here.lock().unwrap().clone();
    let expected: Vec<Vec<u8>> = want[5..].to_vec();
    assert_eq!(reapplied, expected);
    m.stop().await;
}
