//! The raft log and vote storage (openraft `RaftLogStorage`).
//!
//! Entries live in the append-only log of `wal` (`DATA/wal/`), made durable by one flusher
//! thread that shares each `fdatasync` among every append queued meanwhile and acknowledges
//! them to openraft afterwards, so the raft core keeps replicating while the disk syncs. The
//! vote, the committed log id, the purge point and the member/cluster ids stay in sled's
//! `raft_meta` tree. An older data dir keeps its entries in the `raft_log` tree (as does a member
//! `recover` rewrote): on open they move into the log file once, then the tree is emptied.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};

use crate::types::{decode, encode, Entry, LogId, StorageError, TypeConfig, Vote};
use crate::wal::{Index, Segment, Wal};

/// Name of the sled tree that held raft log entries before the log file (and during `recover`).
pub const LOG_TREE: &str = "raft_log";
/// Name of the sled tree holding raft metadata (vote, committed, purged, ids, snapshot meta).
pub const META_TREE: &str = "raft_meta";
/// Directory of the log file under the data dir.
pub const WAL_DIR: &str = "wal";

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// Work for the flusher thread: make appends to `target` durable, then acknowledge them.
struct FlushJob {
    target: Arc<Segment>,
    callback: LogFlushed<TypeConfig>,
}

/// Shares `fdatasync`s among queued appends; ends when the store is dropped.
fn run_flusher(jobs: mpsc::Receiver<FlushJob>, flushed: Arc<tokio::sync::watch::Sender<u64>>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        // One sync per file, shared by every job of the batch that wrote to it.
        let mut synced: Vec<(Arc<Segment>, Result<(), String>)> = Vec::new();
        let count = batch.len() as u64;
        for FlushJob { target, callback } in batch {
            let result = match synced.iter().find(|(s, _)| Arc::ptr_eq(s, &target)) {
                Some((_, r)) => r.clone(),
                None => {
                    let r = target
                        .file
                        .sync_data()
                        .map_err(|e| format!("fdatasync {}: {e}", target.path.display()));
                    synced.push((target.clone(), r.clone()));
                    r
                }
            };
            callback.log_io_completed(result.map_err(io::Error::other));
        }
        flushed.send_modify(|n| *n += count);
    }
}

/// Copies the log file's entries into the `raft_log` tree (one atomic batch, flushed) and
/// removes the file, for tools that rewrite the log in sled (`recover`). The next open moves
/// them back.
pub(crate) fn export_log_to_tree(db: &sled::Db, data_dir: &Path) -> io::Result<()> {
    let dir = data_dir.join(WAL_DIR);
    if !dir.exists() {
        return Ok(());
    }
    let meta = db.open_tree(META_TREE).map_err(io::Error::other)?;
    let purged: Option<LogId> = match meta.get(KEY_LAST_PURGED).map_err(io::Error::other)? {
        Some(b) => Some(decode(&b).map_err(io::Error::other)?),
        None => None,
    };
    let wal = Wal::open(&dir, purged).map_err(io::Error::other)?;
    let entries = wal.read(0, u64::MAX).map_err(io::Error::other)?;
    drop(wal);
    let log = db.open_tree(LOG_TREE).map_err(io::Error::other)?;
    if !entries.is_empty() {
        let mut batch = sled::Batch::default();
        for e in &entries {
            batch.insert(
                &e.log_id.index.to_be_bytes(),
                encode(e).map_err(io::Error::other)?,
            );
        }
        log.apply_batch(batch).map_err(io::Error::other)?;
        db.flush().map_err(io::Error::other)?;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Raft log (file) + vote (sled) storage.
pub struct LogStore {
    db: sled::Db,
    meta: sled::Tree,
    wal: Wal,
    flusher: mpsc::Sender<FlushJob>,
    committed_index: Arc<AtomicU64>,
    /// Appends made durable so far; the proposal batcher paces itself on it.
    appends_flushed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Counts live handles on the database held by consensus (see `Node::shutdown`).
    refs: Arc<()>,
}

impl LogStore {
    /// Opens the raft metadata in `db` and the log file under `data_dir/wal`.
    pub fn open(db: sled::Db, data_dir: &Path) -> Result<LogStore, io::Error> {
        let meta = db.open_tree(META_TREE).map_err(io::Error::other)?;
        let purged: Option<LogId> = match meta.get(KEY_LAST_PURGED).map_err(io::Error::other)? {
            Some(b) => Some(decode(&b).map_err(io::Error::other)?),
            None => None,
        };
        let dir = data_dir.join(WAL_DIR);
        let tree = db.open_tree(LOG_TREE).map_err(io::Error::other)?;
        if !tree.is_empty() {
            // The tree is authoritative while it holds entries (an older data dir, a recovered
            // member, or a crash during an earlier move): start the file over from it.
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            let mut wal = Wal::open(&dir, None).map_err(io::Error::other)?;
            let mut entries = Vec::new();
            for item in tree.iter() {
                let (_, value) = item.map_err(io::Error::other)?;
                let entry: Entry = decode(&value).map_err(io::Error::other)?;
                if purged.is_none_or(|p| entry.log_id.index > p.index) {
                    entries.push(entry);
                }
            }
            wal.append_sync(&entries).map_err(io::Error::other)?;
            drop(wal);
            tree.clear().map_err(io::Error::other)?;
            db.flush().map_err(io::Error::other)?;
            tracing::info!(
                entries = entries.len(),
                "moved the raft log from sled into the log file"
            );
        }
        let wal = Wal::open(&dir, purged).map_err(io::Error::other)?;
        let appends_flushed = Arc::new(tokio::sync::watch::Sender::new(0));
        let (flusher, jobs) = mpsc::channel();
        let flushed = appends_flushed.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run_flusher(jobs, flushed))?;
        let store = LogStore {
            db,
            meta,
            wal,
            flusher,
            committed_index: Arc::new(AtomicU64::new(0)),
            appends_flushed,
            refs: Arc::new(()),
        };
        if let Ok(Some(committed)) = store.read_meta::<LogId>(KEY_COMMITTED) {
            store
                .committed_index
                .store(committed.index, Ordering::Relaxed);
        }
        Ok(store)
    }

    /// Token cloned by every consensus object holding the database; the strong count drops to one
    /// once all of them are gone.
    pub(crate) fn refs(&self) -> Arc<()> {
        self.refs.clone()
    }

    /// Count of appends made durable, updated after every log fsync.
    pub(crate) fn appends_flushed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appends_flushed.subscribe()
    }

    /// Shared view of the last committed index saved by openraft (for status reporting).
    pub(crate) fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(read_err),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(write_err)?;
        self.meta.insert(key, bytes).map_err(write_err)?;
        Ok(())
    }

    async fn fsync(&self) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(write_err)?
            .map_err(write_err)?;
        Ok(())
    }
}

/// Reader of the raft log used by replication tasks.
#[derive(Clone)]
pub struct LogReader {
    index: Arc<RwLock<Index>>,
    _refs: Arc<()>,
}

fn read_range<RB: RangeBounds<u64>>(
    index: &RwLock<Index>,
    range: RB,
) -> Result<Vec<Entry>, StorageError> {
    let from = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    index
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .read(from, to)
        .map_err(read_err)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_range(&self.index, range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_range(&self.wal.index(), range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.read_meta::<LogId>(KEY_LAST_PURGED)?;
        let last_log_id = self.wal.last_log_id().or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            index: self.wal.index(),
            _refs: self.refs.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.meta
            .insert(KEY_VOTE, bytes)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.fsync().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        match self
            .meta
            .get(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)))?
        {
            None => Ok(None),
            Some(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into()),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced: after a crash openraft re-derives commitment from the (durable) log.
        match committed {
            Some(c) => {
                self.write_meta(KEY_COMMITTED, &c)?;
                self.committed_index.store(c.index, Ordering::Relaxed);
            }
            None => {
                self.meta.remove(KEY_COMMITTED).map_err(write_err)?;
            }
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(KEY_COMMITTED)
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.wal.append(&entries).map_err(write_err)?;
        match self.wal.sync_target() {
            Some(target) => self
                .flusher
                .send(FlushJob { target, callback })
                .map_err(|_| write_err(io::Error::other("the log flusher thread has stopped")))?,
            // Nothing was ever written: nothing to make durable.
            None => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Durable before returning (the file is cut and synced in place).
        self.wal.truncate(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first, and persist the state machine with it (sled holds both):
        // the purged entries are then never needed again, even after a crash.
        self.write_meta(KEY_LAST_PURGED, &log_id)?;
        self.fsync().await?;
        self.wal.purge(log_id.index).map_err(write_err)
    }
}
