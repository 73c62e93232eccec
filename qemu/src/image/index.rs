//! The store's `index.json`: which references name which manifest, and when each image was used.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) under a lock file, so
//! the node agent and a `tugboat image load --data-dir` running beside it never lose each
//! other's updates. Readers need no lock: they see the old or the new file, whole.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::blobio::sync_dir;
use super::error::{io_err, ImageError, Result};
use super::reference::ImageRef;

/// One image in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageEntry {
    /// Normalized references (`registry/repo:tag`) naming this manifest.
    #[serde(default)]
    pub references: BTreeSet<String>,
    /// When the image came into the store (unix seconds).
    pub created: u64,
    /// When it was last pulled, built, loaded or started (unix seconds).
    pub last_used: u64,
    /// Loaded from an archive: no registry may hold it (an air-gapped site's preloaded
    /// images), so garbage collection keeps it until `tugboat image rm`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
}

/// The whole index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexFile {
    /// Format version (1).
    pub schema_version: u32,
    /// Manifest digest → image.
    #[serde(default)]
    pub images: BTreeMap<String, ImageEntry>,
}

impl Default for IndexFile {
    fn default() -> Self {
        IndexFile {
            schema_version: 1,
            images: BTreeMap::new(),
        }
    }
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl IndexFile {
    /// The manifest digest `r` names: its digest when pinned (and present), else its tag.
    pub fn lookup(&self, r: &ImageRef) -> Option<String> {
        if let Some(d) = &r.digest {
            return self.images.contains_key(d).then(|| d.clone());
        }
        let key = r.to_string();
        self.images
            .iter()
            .find(|(_, e)| e.references.contains(&key))
            .map(|(d, _)| d.clone())
    }

    /// Records `digest` (new or existing) and points `reference` (if any) at it alone.
    pub fn record(&mut self, digest: &str, reference: Option<&ImageRef>) {
        let now = now_secs();
        if let Some(r) = reference.filter(|r| r.digest.is_none()) {
            let key = r.to_string();
            for (d, e) in self.images.iter_mut() {
                if d != digest {
                    e.references.remove(&key);
                }
            }
        }
        let entry = self
            .images
            .entry(digest.to_string())
            .or_insert_with(|| ImageEntry {
                references: BTreeSet::new(),
                created: now,
                last_used: now,
                local: false,
            });
        entry.last_used = now;
        if let Some(r) = reference.filter(|r| r.digest.is_none()) {
            entry.references.insert(r.to_string());
        }
    }
}

/// Reads the index at `path`; a missing file is an empty index.
pub fn read(path: &Path) -> Result<IndexFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::Index {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IndexFile::default()),
        Err(e) => Err(io_err("reading", path)(e)),
    }
}

/// Writes the index atomically.
pub fn write(path: &Path, index: &IndexFile) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(index)
        .map_err(|e| ImageError::Internal(format!("serializing the index: {e}")))?;
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(&bytes).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("renaming into", path))?;
        match path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Serializes index updates between threads of this process.
static IN_PROCESS: Mutex<()> = Mutex::new(());

/// How long a lock file may sit before it is taken as left behind by a crash.
const STALE_AFTER: Duration = Duration::from_secs(60);
/// How long to wait for the lock.
const WAIT_AT_MOST: Duration = Duration::from_secs(60);

/// Runs `f` on the index under the store's lock, writing the result back when `f` returns
/// `Ok(true)` in its first element.
pub fn update<R>(dir: &Path, f: impl FnOnce(&mut IndexFile) -> Result<(bool, R)>) -> Result<R> {
    let _guard = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    let _lock = LockFile::acquire(&dir.join("index.lock"))?;
    let path = dir.join("index.json");
    let mut index = read(&path)?;
    let (changed, r) = f(&mut index)?;
    if changed {
        write(&path, &index)?;
    }
    Ok(r)
}

/// A lock file holding the owner's pid; removed on drop.
struct LockFile {
    path: PathBuf,
}

impl LockFile {
    fn acquire(path: &Path) -> Result<LockFile> {
        let started = Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(LockFile {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if Self::is_stale(path) {
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    if started.elapsed() > WAIT_AT_MOST {
                        return Err(ImageError::Index {
                            path: path.to_path_buf(),
                            message: format!(
                                "still locked after {}s (remove it if no tugboat process is running)",
                                WAIT_AT_MOST.as_secs()
                            ),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(io_err("creating", path)(e)),
            }
        }
    }

    /// The owner is gone (no such pid), or the file is older than any update takes.
    fn is_stale(path: &Path) -> bool {
        let owner_gone = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        let old = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        owner_gone || old
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn tags_move_between_images() {
        let r = ImageRef::parse("localhost:5000/a:v1").unwrap();
        let mut idx = IndexFile::default();
        idx.record(D1, Some(&r));
        assert_eq!(idx.lookup(&r).as_deref(), Some(D1));
        idx.record(D2, Some(&r));
        assert_eq!(idx.lookup(&r).as_deref(), Some(D2));
        assert!(idx.images[D1].references.is_empty());
        let pinned = r.with_digest(D1);
        assert_eq!(idx.lookup(&pinned).as_deref(), Some(D1));
        assert_eq!(idx.lookup(&r.with_digest(&D1.replace('1', "3"))), None);
    }

    #[test]
    fn atomic_write_and_stale_lock() {
        let dir = tempfile::tempdir().unwrap();
        // A lock left by a dead process is taken over.
        std::fs::write(dir.path().join("index.lock"), "999999999").unwrap();
        update(dir.path(), |idx| {
            idx.record(D1, None);
            Ok((true, ()))
        })
        .unwrap();
        assert!(!dir.path().join("index.lock").exists());
        let idx = read(&dir.path().join("index.json")).unwrap();
        assert!(idx.images.contains_key(D1));
        std::fs::write(dir.path().join("index.json"), "{").unwrap();
        assert!(matches!(
            read(&dir.path().join("index.json")),
            Err(ImageError::Index { .. })
        ));
    }
}
