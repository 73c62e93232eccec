//! The replicated state machine contract and its adapter to openraft's `RaftStateMachine`.

use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, Snapshot, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::error::StateMachineError;
use crate::snapshot::{SnapshotBuilder, SnapshotDir};
use crate::types::{
    decode, encode, Command, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// The replicated state machine, implemented by the store. Calls are blocking (sled is sync) and fast.
///
/// Consensus never runs `apply` concurrently with `write_snapshot` or `restore_snapshot`, so an
/// image written by `write_snapshot` is point-in-time even if the machine itself cannot freeze.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies committed entries in log order, one response per entry. `None` = raft-internal entry
    /// (blank/membership): it has no effect on data but still advances the applied position (return
    /// any response for it, e.g. empty; it is dropped).
    /// `applied` is consensus' own opaque record of the applied position (serialized last applied LogId +
    /// membership); the machine must persist it atomically with the batch's effects (same sled batch).
    /// It need not fsync: the raft log is the durable source, entries after the persisted applied record are re-applied on start.
    fn apply(
        &self,
        entries: &[Option<&[u8]>],
        applied: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateMachineError>;
    /// The last `applied` record persisted by `apply`/`restore_snapshot`, None on an empty machine.
    fn applied_record(&self) -> Result<Option<Vec<u8>>, StateMachineError>;
    /// Writes a consistent point-in-time image of the whole machine (including the applied record) to `out`.
    fn write_snapshot(&self, out: &mut dyn std::io::Write) -> Result<(), StateMachineError>;
    /// Replaces the whole machine with an image produced by `write_snapshot` (applied record included).
    fn restore_snapshot(&self, input: &mut dyn std::io::Read) -> Result<(), StateMachineError>;
}

/// Consensus' record of the applied position, persisted by the state machine with its data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AppliedRecord {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
}

impl AppliedRecord {
    /// Reads and decodes the machine's applied record (default on an empty machine).
    pub(crate) fn load(sm: &dyn StateMachine) -> Result<AppliedRecord, StateMachineError> {
        match sm.applied_record()? {
            None => Ok(AppliedRecord::default()),
            Some(bytes) => decode(&bytes)
                .map_err(|e| StateMachineError::Corrupt(format!("applied record: {e}"))),
        }
    }
}

/// Serializes state machine mutations against snapshot images (see [`StateMachine`]).
#[derive(Clone, Default)]
pub(crate) struct ApplyGate(Arc<Mutex<()>>);

impl ApplyGate {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded value is `()`, so a poisoned lock carries no broken invariant.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lock if nobody holds it (a snapshot image is being written otherwise).
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, ()>> {
        match self.0.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

/// Openraft's view of the user state machine plus the snapshot directory.
pub(crate) struct StateMachineAdapter {
    sm: Arc<dyn StateMachine>,
    gate: ApplyGate,
    snapshots: Arc<SnapshotDir>,
    applied: AppliedRecord,
    /// Commands applied since start; drives snapshots by command count (see `Node`).
    applied_commands: Arc<std::sync::atomic::AtomicU64>,
}

impl StateMachineAdapter {
    pub(crate) fn new(
        sm: Arc<dyn StateMachine>,
        snapshots: Arc<SnapshotDir>,
        applied_commands: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<StateMachineAdapter, StateMachineError> {
        let applied = AppliedRecord::load(sm.as_ref())?;
        Ok(StateMachineAdapter {
            sm,
            gate: ApplyGate::default(),
            snapshots,
            applied,
            applied_commands,
        })
    }
}

/// Applies log entries whose normal payloads are command batches (see `batch`):
/// the machine sees one command per proposal, the log one response per entry.
fn apply_entries(
    sm: &dyn StateMachine,
    entries: &[Entry],
    record: &[u8],
    span: &tracing::Span,
) -> Result<(Vec<Vec<u8>>, usize), StateMachineError> {
    let _span = span.enter();
    let mut commands: Vec<Option<&[u8]>> = Vec::with_capacity(entries.len());
    let mut per_entry: Vec<Option<usize>> = Vec::with_capacity(entries.len());
    for e in entries {
        match &e.payload {
            EntryPayload::Normal(cmd) => {
                let items = crate::batch::decode(&cmd.0).map_err(|err| {
                    StateMachineError::Corrupt(format!("log entry {}: {err}", e.log_id.index))
                })?;
                per_entry.push(Some(items.len()));
                commands.extend(items.into_iter().map(Some));
            }
            EntryPayload::Blank | EntryPayload::Membership(_) => {
                per_entry.push(None);
                commands.push(None);
            }
        }
    }
    let responses = sm.apply(&commands, record)?;
    if responses.len() != commands.len() {
        return Err(StateMachineError::Other(format!(
            "state machine returned {} responses for {} commands",
            responses.len(),
            commands.len()
        )));
    }
    let mut responses = responses.into_iter();
    let mut out = Vec::with_capacity(entries.len());
    for n in per_entry {
        match n {
            Some(n) => {
                let items: Vec<Vec<u8>> = responses.by_ref().take(n).collect();
                out.push(crate::batch::encode(items.iter().map(|v| v.as_slice())));
            }
            None => out.push(responses.next().unwrap_or_default()),
        }
    }
    Ok((out, commands.len()))
}

impl RaftStateMachine<TypeConfig> for StateMachineAdapter {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Command>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let span = tracing::debug_span!(
            "raft_apply",
            first = entries[0].log_id.index,
            last = last.index
        );
        let mut record = AppliedRecord {
            last_applied: Some(last),
            membership: self.applied.membership.clone(),
        };
        for entry in &entries {
            if let EntryPayload::Membership(m) = &entry.payload {
                record.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
        }
        let record_bytes = encode(&record).map_err(sm_write_err)?;
        let sm = self.sm.clone();
        let gate = self.gate.clone();
        let expected = entries.len();
        // Applying takes tens of microseconds: do it here unless a snapshot
        // image holds the gate, then wait for it on a blocking thread.
        let inline = gate
            .try_lock()
            .map(|_guard| apply_entries(&*sm, &entries, &record_bytes, &span));
        let applied = match inline {
            Some(r) => r,
            None => tokio::task::spawn_blocking(move || {
                let _guard = gate.lock();
                apply_entries(&*sm, &entries, &record_bytes, &span)
            })
            .await
            .map_err(sm_write_err)?,
        };
        let (responses, commands) =
            applied.map_err(|e| StorageIOError::apply(last, AnyError::new(&e)))?;
        self.applied_commands
            .fetch_add(commands as u64, std::sync::atomic::Ordering::Relaxed);
        if responses.len() != expected {
            let e = StateMachineError::Other(format!(
                "apply returned {} responses for {expected} entries",
                responses.len()
            ));
            return Err(StorageIOError::apply(last, AnyError::new(&e)).into());
        }
        self.applied = record;
        Ok(responses.into_iter().map(Command).collect())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder::new(self.sm.clone(), self.gate.clone(), self.snapshots.clone())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file = self.snapshots.begin_receiving().await?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        self.snapshots
            .install(meta, *snapshot, self.sm.clone(), self.gate.clone())
            .await?;
        // The image carries the leader's applied record; reload it rather than trusting `meta`.
        let sm = self.sm.clone();
        let applied = tokio::task::spawn_blocking(move || AppliedRecord::load(sm.as_ref()))
            .await
            .map_err(sm_read_err)?
            .map_err(sm_read_err)?;
        self.applied = AppliedRecord {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        if applied.last_applied != meta.last_log_id {
            tracing::warn!(
                image = ?applied.last_applied,
                meta = ?meta.last_log_id,
                "installed snapshot image applied position differs from its metadata"
            );
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.snapshots.current().await
    }
}
