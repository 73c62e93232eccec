//! The raft log and vote storage on sled (openraft `RaftLogStorage`), with group-commit fsync.
//!
//! Layout: tree `raft_log` maps big-endian index -> bincode `Entry`; tree `raft_meta` holds the
//! vote, the committed log id, the last purged log id and the member/cluster ids.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};

use crate::types::{decode, encode, Entry, LogId, StorageError, TypeConfig, Vote};

/// Name of the sled tree holding raft log entries.
pub const LOG_TREE: &str = "raft_log";
/// Name of the sled tree holding raft metadata (vote, committed, purged, ids, snapshot meta).
pub const META_TREE: &str = "raft_meta";

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// Raft log + vote storage on a shared sled database.
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    committed_index: Arc<AtomicU64>,
    /// Appends made durable so far; the proposal batcher paces itself on it.
    appends_flushed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Counts live handles on the database held by consensus (see `Node::shutdown`).
    refs: Arc<()>,
}

impl LogStore {
    /// Opens the raft trees in `db`.
    pub fn open(db: sled::Db) -> Result<LogStore, io::Error> {
        let log = db.open_tree(LOG_TREE).map_err(io::Error::other)?;
        let meta = db.open_tree(META_TREE).map_err(io::Error::other)?;
        let store = LogStore {
            db,
            log,
            meta,
            committed_index: Arc::new(AtomicU64::new(0)),
            appends_flushed: Arc::new(tokio::sync::watch::Sender::new(0)),
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
    log: sled::Tree,
    _refs: Arc<()>,
}

fn read_range<RB: RangeBounds<u64>>(
    log: &sled::Tree,
    range: RB,
) -> Result<Vec<Entry>, StorageError> {
    let start = match range.start_bound() {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let mut entries = Vec::new();
    for item in log.range::<[u8; 8], _>((start, end)) {
        let (_, value) = item.map_err(read_err)?;
        entries.push(decode::<Entry>(&value).map_err(read_err)?);
    }
    Ok(entries)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_range(&self.log, range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_range(&self.log, range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.read_meta::<LogId>(KEY_LAST_PURGED)?;
        let last_log_id = match self.log.last().map_err(read_err)? {
            Some((_, value)) => Some(decode::<Entry>(&value).map_err(read_err)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            log: self.log.clone(),
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(write_err)?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        // openraft 0.9 waits for this acknowledgement before it appends again,
        // so a separate flusher thread would only add two thread hand-offs per
        // write; concurrent clients share an fsync through proposal batching
        // (see `batch`) instead.
        let flushed = self
            .db
            .flush()
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()));
        callback.log_io_completed(flushed);
        self.appends_flushed.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (key, _) = item.map_err(read_err)?;
            batch.remove(key);
        }
        // One batch so a crash leaves either the old or the truncated log, never a hole.
        self.log.apply_batch(batch).map_err(write_err)?;
        self.fsync().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: entries at or below it are then ignored even if a crash
        // leaves some of them behind.
        self.write_meta(KEY_LAST_PURGED, &log_id)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(read_err)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.fsync().await
    }
}
