//! openraft's storage conformance suite against the sled log store and the state machine adapter.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};

use super::MemMachine;
use crate::log_store::LogStore;
use crate::snapshot::SnapshotDir;
use crate::state_machine::StateMachineAdapter;
use crate::types::{StorageError, TypeConfig};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineAdapter, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineAdapter), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path().join("db")).expect("open sled");
        let log = LogStore::open(db.clone(), dir.path()).expect("open log store");
        let snapshots =
            SnapshotDir::open(dir.path().join("snapshots"), db, log.refs()).expect("snapshot dir");
        let sm = StateMachineAdapter::new(
            Arc::new(MemMachine::default()),
            Arc::new(snapshots),
            Arc::default(),
        )
        .expect("adapter");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}
