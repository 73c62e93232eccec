//! Snapshot files: `data_dir/snapshots/<snapshot id>.snap` holds a state machine image; its
//! openraft metadata lives in the `raft_meta` tree so the pair is switched atomically.

use std::io::{self, BufReader, BufWriter};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::log_store::META_TREE;
use crate::state_machine::{AppliedRecord, ApplyGate, StateMachine};
use crate::types::{decode, encode, SnapshotMeta, StorageError, TypeConfig};

/// Key of the current snapshot's record in the raft metadata tree.
pub(crate) const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// Directory of snapshot files under the data dir.
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";
const SNAP_EXT: &str = "snap";
const TMP_PREFIX: &str = "tmp-";

/// Which file holds the current snapshot, and its openraft metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub(crate) meta: SnapshotMeta,
    pub(crate) file: String,
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::Snapshot(None),
            ErrorVerb::Write,
            AnyError::new(&e),
        ),
    }
}

fn snap_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::Snapshot(None),
            ErrorVerb::Read,
            AnyError::new(&e),
        ),
    }
}

/// File name for a snapshot id; ids arrive from peers, so only a safe alphabet is kept.
fn file_name_for(snapshot_id: &str) -> String {
    let safe: String = snapshot_id
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.{SNAP_EXT}")
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The snapshot directory plus the metadata record of the current snapshot.
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    /// Serializes switching the current snapshot (a build and an install can finish concurrently).
    switch: Mutex<()>,
    /// The temp file currently receiving a snapshot stream (openraft streams one at a time).
    receiving: Mutex<Option<PathBuf>>,
    _refs: Arc<()>,
}

impl SnapshotDir {
    /// Opens (creating) `dir` and drops leftovers of interrupted builds/receives and stale images.
    pub(crate) fn open(dir: PathBuf, db: sled::Db, refs: Arc<()>) -> io::Result<SnapshotDir> {
        std::fs::create_dir_all(&dir)?;
        let meta = db.open_tree(META_TREE).map_err(io::Error::other)?;
        let snapshots = SnapshotDir {
            dir,
            db,
            meta,
            switch: Mutex::new(()),
            receiving: Mutex::new(None),
            _refs: refs,
        };
        let current = snapshots
            .record()
            .map_err(io::Error::other)?
            .map(|r| r.file);
        for entry in std::fs::read_dir(&snapshots.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if Some(&name) != current.as_ref() {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(snapshots)
    }

    fn record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        match self.meta.get(KEY_SNAPSHOT).map_err(snap_read_err)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(snap_read_err),
        }
    }

    fn temp_path(&self) -> PathBuf {
        self.dir
            .join(format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()))
    }

    /// The current snapshot with its image opened for reading.
    pub(crate) async fn current(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(record) = self.record()? else {
            return Ok(None);
        };
        match tokio::fs::File::open(self.dir.join(&record.file)).await {
            Ok(file) => Ok(Some(Snapshot {
                meta: record.meta,
                snapshot: Box::new(file),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(file = %record.file, "current snapshot image is missing");
                Ok(None)
            }
            Err(e) => Err(snap_read_err(e)),
        }
    }

    /// Makes `file` (already durable in the directory) the current snapshot unless a newer one
    /// was switched in meanwhile; removes every other image. Blocking.
    fn switch_to(&self, meta: &SnapshotMeta, file: &str) -> Result<bool, StorageError> {
        let _guard = self.switch.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = self.record()? {
            if current.meta.last_log_id > meta.last_log_id {
                let _ = std::fs::remove_file(self.dir.join(file));
                return Ok(false);
            }
        }
        let record = SnapshotRecord {
            meta: meta.clone(),
            file: file.to_string(),
        };
        self.meta
            .insert(KEY_SNAPSHOT, encode(&record).map_err(snap_err)?)
            .map_err(snap_err)?;
        self.db.flush().map_err(snap_err)?;
        let receiving = self
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for entry in std::fs::read_dir(&self.dir).map_err(snap_err)? {
            let entry = entry.map_err(snap_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Temp files belong to builds or receives still in flight.
            if name != file && name.ends_with(SNAP_EXT) && Some(entry.path()) != receiving {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = %name, error = %e, "cannot remove old snapshot");
                }
            }
        }
        Ok(true)
    }

    /// Builds a snapshot of `sm` (blocking): image to temp file, fsync, rename, switch.
    fn build_blocking(
        &self,
        sm: &dyn StateMachine,
        gate: &ApplyGate,
    ) -> Result<(SnapshotMeta, std::fs::File), StorageError> {
        let tmp = self.temp_path();
        let record = {
            let file = std::fs::File::create(&tmp).map_err(snap_err)?;
            let mut out = BufWriter::new(file);
            let guard = gate.lock();
            let record = AppliedRecord::load(sm).map_err(snap_err)?;
            let written = sm.write_snapshot(&mut out);
            drop(guard);
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(snap_err(e));
            }
            let file = out.into_inner().map_err(|e| snap_err(e.into_error()))?;
            file.sync_all().map_err(snap_err)?;
            record
        };
        let (term, index) = match record.last_applied {
            Some(id) => (id.leader_id.term, id.index),
            None => (0, 0),
        };
        let meta = SnapshotMeta {
            last_log_id: record.last_applied,
            last_membership: record.membership,
            snapshot_id: format!("{term}-{index}-{:016x}", rand::random::<u64>()),
        };
        let file = file_name_for(&meta.snapshot_id);
        std::fs::rename(&tmp, self.dir.join(&file)).map_err(snap_err)?;
        fsync_dir(&self.dir).map_err(snap_err)?;
        // Opened before switching: if a newer snapshot won meanwhile, the image is unlinked but
        // still readable through this handle.
        let image = std::fs::File::open(self.dir.join(&file)).map_err(snap_read_err)?;
        self.switch_to(&meta, &file)?;
        Ok((meta, image))
    }

    /// Creates the temp file a snapshot stream from the leader is written into.
    pub(crate) async fn begin_receiving(&self) -> Result<tokio::fs::File, StorageError> {
        let path = self.temp_path();
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        let previous = self
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(path);
        if let Some(abandoned) = previous {
            // Openraft restarts streaming from scratch, so an unfinished earlier stream is garbage.
            let _ = tokio::fs::remove_file(abandoned).await;
        }
        Ok(file)
    }

    /// Restores `sm` from a fully received image and makes it the current snapshot.
    pub(crate) async fn install(
        self: &Arc<Self>,
        meta: &SnapshotMeta,
        mut file: tokio::fs::File,
        sm: Arc<dyn StateMachine>,
        gate: ApplyGate,
    ) -> Result<(), StorageError> {
        let span = tracing::info_span!("raft_snapshot_install", id = %meta.snapshot_id, last = ?meta.last_log_id);
        file.flush().await.map_err(snap_err)?;
        file.sync_all().await.map_err(snap_err)?;
        file.seek(io::SeekFrom::Start(0)).await.map_err(snap_err)?;
        let file = file.into_std().await;
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let received_ino = file.metadata().map_err(snap_read_err)?.ino();
            {
                let _guard = gate.lock();
                let mut input = BufReader::new(&file);
                sm.restore_snapshot(&mut input).map_err(snap_read_err)?;
            }
            let name = file_name_for(&meta.snapshot_id);
            let target = this.dir.join(&name);
            let tracked = this
                .receiving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            match tracked {
                Some(path)
                    if std::fs::metadata(&path).map(|m| m.ino()).ok() == Some(received_ino) =>
                {
                    std::fs::rename(&path, &target).map_err(snap_err)?;
                }
                other => {
                    // Not the file we handed out: keep a copy of the image instead.
                    if let Some(path) = other {
                        let _ = std::fs::remove_file(path);
                    }
                    let tmp = this.temp_path();
                    let mut reader = BufReader::new(&file);
                    io::Seek::seek(&mut reader, io::SeekFrom::Start(0)).map_err(snap_err)?;
                    let mut out = std::fs::File::create(&tmp).map_err(snap_err)?;
                    io::copy(&mut reader, &mut out).map_err(snap_err)?;
                    out.sync_all().map_err(snap_err)?;
                    std::fs::rename(&tmp, &target).map_err(snap_err)?;
                }
            }
            fsync_dir(&this.dir).map_err(snap_err)?;
            this.switch_to(&meta, &name)?;
            tracing::info!("installed snapshot");
            Ok::<(), StorageError>(())
        })
        .await
        .map_err(snap_err)?
    }
}

/// Builds snapshots of the state machine (openraft `RaftSnapshotBuilder`).
pub struct SnapshotBuilder {
    sm: Arc<dyn StateMachine>,
    gate: ApplyGate,
    snapshots: Arc<SnapshotDir>,
}

impl SnapshotBuilder {
    pub(crate) fn new(
        sm: Arc<dyn StateMachine>,
        gate: ApplyGate,
        snapshots: Arc<SnapshotDir>,
    ) -> SnapshotBuilder {
        SnapshotBuilder {
            sm,
            gate,
            snapshots,
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let sm = self.sm.clone();
        let gate = self.gate.clone();
        let snapshots = self.snapshots.clone();
        let span = tracing::info_span!("raft_snapshot_build");
        let (meta, image) = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let built = snapshots.build_blocking(sm.as_ref(), &gate)?;
            tracing::info!(id = %built.0.snapshot_id, last = ?built.0.last_log_id, "built snapshot");
            Ok::<_, StorageError>(built)
        })
        .await
        .map_err(snap_err)??;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(image)),
        })
    }
}
