//! The log store persists entries, vote and committed id across a full close and reopen.

use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

use crate::log_store::LogStore;
use crate::types::{Command, Entry, LogId, Vote};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command(format!("cmd-{index}").into_bytes())),
    }
}

/// Opens the db, waiting for the previous handle's background threads to release its file lock.
fn open_when_released(path: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopening {}: {e}", path.display()),
        }
    }
}

async fn reopen_and_check(path: &Path, want_last: u64, want_purged: Option<LogId>) {
    let db = open_when_released(path);
    let mut store = LogStore::open(db, path.parent().unwrap()).unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(2, want_last)));
    assert_eq!(state.last_purged_log_id, want_purged);
    let first = want_purged.map(|p| p.index + 1).unwrap_or(1);
    let entries = store.try_get_log_entries(0..=want_last).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (first..=want_last).collect::<Vec<_>>());
    for e in &entries {
        match &e.payload {
            EntryPayload::Normal(cmd) => {
                assert_eq!(cmd.0, format!("cmd-{}", e.log_id.index).into_bytes())
            }
            other => panic!("unexpected payload {other:?}"),
        }
    }
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 7)));
}

#[tokio::test]
async fn log_vote_and_committed_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = sled::open(&path).unwrap();
        let mut store = LogStore::open(db, path.parent().unwrap()).unwrap();
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        // Concurrent-style appends: several batches acknowledged by the group-commit flusher.
        store
            .blocking_append((1..=5).map(|i| entry(2, i)))
            .await
            .unwrap();
        store
            .blocking_append((6..=12).map(|i| entry(2, i)))
            .await
            .unwrap();
        store.save_committed(Some(log_id(2, 7))).await.unwrap();
        // Committed is not fsynced by itself; the next fsync (here: a truncate) makes it durable.
        store.truncate(log_id(2, 11)).await.unwrap();
    }
    reopen_and_check(&path, 10, None).await;

    {
        let db = open_when_released(&path);
        let mut store = LogStore::open(db, path.parent().unwrap()).unwrap();
        store.purge(log_id(2, 3)).await.unwrap();
    }
    reopen_and_check(&path, 10, Some(log_id(2, 3))).await;
}

const CRASH_CHILD_ENV: &str = "TUGBOAT_CONSENSUS_CRASH_CHILD_DIR";

/// Child half of `acknowledged_appends_survive_abort`: appends, then dies without any cleanup
/// (no sled drop/flush), right after openraft would have been told the entries are durable.
async fn crash_child(path: &Path) -> ! {
    let db = sled::open(path).unwrap();
    let mut store = LogStore::open(db, path.parent().unwrap()).unwrap();
    store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    store
        .blocking_append((1..=10).map(|i| entry(2, i)))
        .await
        .unwrap();
    std::process::abort();
}

#[tokio::test]
async fn acknowledged_appends_survive_abort() {
    if let Some(path) = std::env::var_os(CRASH_CHILD_ENV) {
        crash_child(Path::new(&path)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::durability::acknowledged_appends_survive_abort",
            "--nocapture",
        ])
        .env(CRASH_CHILD_ENV, &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die by abort");

    let db = sled::open(&path).unwrap();
    let mut store = LogStore::open(db, path.parent().unwrap()).unwrap();
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
    let entries = store.try_get_log_entries(1..=10).await.unwrap();
    assert_eq!(entries.len(), 10);
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(2, 10))
    );
}
