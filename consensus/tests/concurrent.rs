//! Many concurrent proposals on one member (exercises group-commit of log appends).

mod common;

use common::{wait_for, Member};
use tugboat_consensus::Bootstrap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_all_apply_once() {
    let root = tempfile::tempdir().unwrap();
    let m = Member::start("solo", root.path(), Bootstrap::NewCluster, 10_000).await;
    wait_for("solo to lead", || m.node.status().is_leader()).await;

    let mut tasks = Vec::new();
    for client in 0..32 {
        let node = m.node.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let cmd = format!("c{client:02}-{i:02}").into_bytes();
                let resp = node.propose(cmd.clone()).await.unwrap();
                assert_eq!(resp, cmd.iter().rev().copied().collect::<Vec<u8>>());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut got = m.sm.commands();
    assert_eq!(got.len(), 32 * 20);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 32 * 20, "every command applied exactly once");
    let status = m.node.status();
    // Concurrent proposals share log entries (batching), never more entries than proposals.
    assert!(status.committed_index > 0 && status.committed_index <= 32 * 20 + 1);
    m.stop().await;
}
