//! The node's image store: content-addressed blobs, extracted files and an index of names.
//!
//! ```text
//! DIR/blobs/sha256/<hex>   manifests, configs and layers exactly as pushed/pulled (read-only)
//! DIR/files/sha256/<hex>   the decompressed content of gzip layer <hex>: the base disks (read-only,
//!                          sparse); uncompressed layers (kernel, initrd) are used from blobs/
//! DIR/tmp/                 downloads and builds in progress; renamed into place once verified
//! DIR/index.json           manifest digest → references, created, last used (see `index`)
//! ```
//!
//! Every Ship using an image shares its files; the runtime puts a qcow2 overlay on the base
//! disk. Anything under `blobs/` and `files/` was verified before its rename, so a crash leaves
//! at worst a temp file (swept by [`ImageStore::gc`]) or an unreferenced blob.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::artifact::{ImageMetadata, LayerKind, Manifest, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use super::blobio::{self, digest_hex, sha256_digest, TempFile};
use super::disk::{self, DiskFormat};
use super::error::{io_err, ImageError, Result};
use super::index::{self, now_secs, IndexFile};
use super::progress::Progress;
use super::reference::{validate_digest, ImageRef};

/// Orphaned blobs and files (not part of an image removed in the same pass) are only deleted
/// when older than this, because another process may be about to record them.
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);
/// Temp files older than this are leftovers of a crash.
const TEMP_GRACE: Duration = Duration::from_secs(24 * 3600);

/// An image present in the store, with the paths the runtime boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    /// The reference it was asked for (normalized), or its digest.
    pub reference: String,
    /// `sha256:…` of its manifest.
    pub manifest_digest: String,
    /// Its config blob.
    pub metadata: ImageMetadata,
    /// Uncompressed base disk (read-only; put an overlay on it).
    pub disk: Option<PathBuf>,
    /// Format of `disk`.
    pub disk_format: Option<DiskFormat>,
    /// Kernel for direct boot.
    pub kernel: Option<PathBuf>,
    /// Initrd for direct boot.
    pub initrd: Option<PathBuf>,
    /// Kernel command line for direct boot.
    pub cmdline: Option<String>,
    /// Bytes it occupies in the store (blobs plus extracted files, as allocated on disk).
    pub size_bytes: u64,
}

/// One image as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// Normalized references naming it (may be empty: a dangling image).
    pub references: Vec<String>,
    /// Manifest digest.
    pub digest: String,
    /// Bytes it occupies in the store.
    pub size_bytes: u64,
    /// When it came into the store.
    pub created: SystemTime,
    /// When it was last pulled, built, loaded or started.
    pub last_used: SystemTime,
    /// Its metadata, when its config blob is readable.
    pub metadata: Option<ImageMetadata>,
}

impl ImageSummary {
    /// Every name of the image: its references and `repo@digest` for each repository.
    pub fn names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.references.iter().cloned().collect();
        for r in &self.references {
            if let Ok(parsed) = ImageRef::parse(r) {
                names.insert(parsed.with_digest(&self.digest).to_string());
            }
        }
        if names.is_empty() {
            names.insert(self.digest.clone());
        }
        names.into_iter().collect()
    }
}

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// References dropped.
    pub untagged: Vec<String>,
    /// Manifest digest of the image deleted, when no reference was left on it.
    pub deleted: Option<String>,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// What [`ImageStore::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifest digests of the images removed.
    pub images_removed: Vec<String>,
    /// Blobs deleted.
    pub blobs_removed: usize,
    /// Extracted files deleted.
    pub files_removed: usize,
    /// Temp files of crashed transfers deleted.
    pub temp_removed: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// The content-addressed image store of a node (or of a user, for the CLI).
///
/// Cheap to clone; clones share the locks that keep concurrent pulls of one blob to one download.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) dir: PathBuf,
    blobs: PathBuf,
    files: PathBuf,
    pub(super) tmp: PathBuf,
    /// Per-digest async locks: one download or extraction of a digest at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Digests an operation in this process is about to record; gc and remove leave them alone.
    pins: Mutex<HashMap<String, usize>>,
}

/// Keeps digests safe from gc until dropped.
pub(super) struct Pins {
    store: ImageStore,
    digests: Vec<String>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let mut pins = lock(&self.store.inner.pins);
        for d in &self.digests {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Bytes a file occupies on disk (holes of sparse disks do not count).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

impl ImageStore {
    /// Opens (creating when missing) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ImageStore> {
        let blobs = dir.join("blobs").join("sha256");
        let files = dir.join("files").join("sha256");
        let tmp = dir.join("tmp");
        for d in [&blobs, &files, &tmp] {
            std::fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        let store = ImageStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                blobs,
                files,
                tmp,
                locks: Mutex::new(HashMap::new()),
                pins: Mutex::new(HashMap::new()),
            }),
        };
        // Fail now, not at the first pull, on a corrupt index.
        index::read(&store.index_path())?;
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn index_path(&self) -> PathBuf {
        self.inner.dir.join("index.json")
    }

    pub(super) fn read_index(&self) -> Result<IndexFile> {
        index::read(&self.index_path())
    }

    pub(super) fn update_index<R>(
        &self,
        f: impl FnOnce(&mut IndexFile) -> Result<(bool, R)>,
    ) -> Result<R> {
        index::update(&self.inner.dir, f)
    }

    /// Path of the blob `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.inner.blobs.join(digest_hex(digest))
    }

    /// Path of the decompressed content of gzip layer `layer_digest`.
    fn extracted_path(&self, layer_digest: &str) -> PathBuf {
        self.inner.files.join(digest_hex(layer_digest))
    }

    /// Where the usable file of a layer is: the extracted file for gzip layers, else the blob.
    pub fn layer_file(&self, layer_digest: &str, kind: LayerKind) -> PathBuf {
        if kind.gzipped() {
            self.extracted_path(layer_digest)
        } else {
            self.blob_path(layer_digest)
        }
    }

    /// True when the blob `digest` is in the store.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A fresh temp file in the store (same file system as the blobs, so renames are atomic).
    pub(super) fn temp(&self, hint: &str) -> TempFile {
        TempFile::new_in(&self.inner.tmp, hint)
    }

    /// Waits for exclusive work on `digest` (download, extraction).
    pub(super) async fn lock_digest(&self, digest: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = lock(&self.inner.locks);
            // Forget locks nobody holds or waits for.
            locks.retain(|_, m| Arc::strong_count(m) > 1);
            locks
                .entry(digest.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        m.lock_owned().await
    }

    /// Protects `digests` from gc and remove until the guard drops.
    pub(super) fn pin<'a>(&self, digests: impl IntoIterator<Item = &'a str>) -> Pins {
        let digests: Vec<String> = digests.into_iter().map(str::to_string).collect();
        let mut pins = lock(&self.inner.pins);
        for d in &digests {
            *pins.entry(d.clone()).or_insert(0) += 1;
        }
        Pins {
            store: self.clone(),
            digests,
        }
    }

    fn is_pinned(&self, digest: &str) -> bool {
        lock(&self.inner.pins).contains_key(digest)
    }

    /// Reads a small blob (manifest, config), checking its digest and a size limit.
    pub(super) fn read_blob(&self, digest: &str, max: u64) -> Result<Vec<u8>> {
        validate_digest(digest).map_err(|m| ImageError::InvalidImage {
            reference: digest.to_string(),
            message: m,
        })?;
        let path = self.blob_path(digest);
        let len = std::fs::metadata(&path)
            .map_err(io_err("reading", &path))?
            .len();
        if len > max {
            return Err(ImageError::InvalidImage {
                reference: digest.to_string(),
                message: format!("blob of {len} bytes exceeds the {max}-byte limit"),
            });
        }
        let bytes = std::fs::read(&path).map_err(io_err("reading", &path))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: path.display().to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Stores a small blob given in memory; returns its digest.
    pub(super) fn write_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        let dest = self.blob_path(&digest);
        if dest.is_file() {
            return Ok(digest);
        }
        let tmp = self.temp("blob");
        std::fs::write(tmp.path(), bytes).map_err(io_err("writing", tmp.path()))?;
        std::fs::File::open(tmp.path())
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing", tmp.path()))?;
        tmp.persist(&dest)?;
        Ok(digest)
    }

    /// Moves a downloaded temp file into `blobs/` after checking its digest and size.
    pub(super) fn commit_blob(
        &self,
        tmp: TempFile,
        what: &str,
        expected_digest: &str,
        expected_size: Option<u64>,
        actual_digest: &str,
        actual_size: u64,
    ) -> Result<PathBuf> {
        if actual_digest != expected_digest {
            // `tmp` drops here: nothing is left behind.
            return Err(ImageError::DigestMismatch {
                what: what.to_string(),
                expected: expected_digest.to_string(),
                actual: actual_digest.to_string(),
            });
        }
        if let Some(size) = expected_size {
            if size != actual_size {
                return Err(ImageError::SizeMismatch {
                    what: what.to_string(),
                    expected: size,
                    actual: actual_size,
                });
            }
        }
        let dest = self.blob_path(expected_digest);
        tmp.persist(&dest)?;
        Ok(dest)
    }

    /// Decompresses a stored gzip layer into `files/` (once; verified disks only). Uncompressed
    /// layers are used from `blobs/` as they are.
    pub(super) async fn extract_layer(
        &self,
        layer_digest: &str,
        kind: LayerKind,
        title: &str,
        progress: &Progress,
    ) -> Result<()> {
        if !kind.gzipped() {
            return Ok(());
        }
        let dest = self.extracted_path(layer_digest);
        let _guard = self.lock_digest(&format!("extract:{layer_digest}")).await;
        if dest.is_file() {
            return Ok(());
        }
        let task = progress.task("extracting", title, None);
        let src = self.blob_path(layer_digest);
        let tmp = self.temp(title);
        let title = title.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            blobio::gunzip_file(&src, tmp.path(), &task)?;
            if let LayerKind::Disk(format) = kind {
                disk::check(tmp.path(), format).map_err(|e| ImageError::InvalidImage {
                    reference: title.clone(),
                    message: e.to_string(),
                })?;
            }
            tmp.persist(&dest)?;
            task.finish("");
            Ok(())
        })
        .await?
    }

    /// Records a manifest already stored as a blob (with all its blobs and files) under
    /// `reference`, and returns it as a [`LocalImage`].
    /// `local` marks an image loaded from an archive, which garbage collection keeps (see
    /// `ImageEntry::local`).
    pub(super) fn commit_image(
        &self,
        manifest_digest: &str,
        reference: Option<&ImageRef>,
        local: bool,
    ) -> Result<LocalImage> {
        // Check completeness before naming it, so a name never points at half an image.
        let shown = reference
            .map(|r| r.to_string())
            .unwrap_or_else(|| manifest_digest.to_string());
        let image =
            self.local_image(manifest_digest, &shown)?
                .ok_or_else(|| ImageError::InvalidImage {
                    reference: shown.clone(),
                    message: "blobs missing after the transfer".into(),
                })?;
        self.update_index(|idx| {
            idx.record(manifest_digest, reference);
            if local {
                if let Some(e) = idx.images.get_mut(manifest_digest) {
                    e.local = true;
                }
            }
            Ok((true, ()))
        })?;
        Ok(image)
    }

    /// Builds the [`LocalImage`] of a stored manifest; `None` when a blob or file is missing.
    pub(super) fn local_image(&self, digest: &str, reference: &str) -> Result<Option<LocalImage>> {
        if !self.has_blob(digest) {
            return Ok(None);
        }
        let manifest_bytes = self.read_blob(digest, MAX_MANIFEST_BYTES)?;
        let manifest = Manifest::parse(&manifest_bytes, reference)?;
        if !self.has_blob(&manifest.config.digest) {
            return Ok(None);
        }
        let config = self.read_blob(&manifest.config.digest, MAX_CONFIG_BYTES)?;
        let metadata = ImageMetadata::parse(&config, &manifest, reference)?;
        let mut size = allocated(&self.blob_path(digest))
            + allocated(&self.blob_path(&manifest.config.digest));
        let mut image = LocalImage {
            reference: reference.to_string(),
            manifest_digest: digest.to_string(),
            cmdline: metadata.cmdline.clone(),
            metadata,
            disk: None,
            disk_format: None,
            kernel: None,
            initrd: None,
            size_bytes: 0,
        };
        for layer in &manifest.layers {
            let Some(kind) = LayerKind::from_media_type(&layer.media_type) else {
                continue;
            };
            let blob = self.blob_path(&layer.digest);
            let file = self.layer_file(&layer.digest, kind);
            if !blob.is_file() || !file.is_file() {
                return Ok(None);
            }
            size += allocated(&blob);
            if kind.gzipped() {
                size += allocated(&file);
            }
            match kind {
                LayerKind::Disk(f) => {
                    image.disk = Some(file);
                    image.disk_format = Some(f);
                }
                LayerKind::Kernel => image.kernel = Some(file),
                LayerKind::Initrd => image.initrd = Some(file),
            }
        }
        image.size_bytes = size;
        Ok(Some(image))
    }

    /// Reads a stored manifest.
    pub(super) fn manifest(&self, digest: &str) -> Result<Manifest> {
        let bytes = self.read_blob(digest, MAX_MANIFEST_BYTES)?;
        Manifest::parse(&bytes, digest)
    }

    /// The image `reference` names (a tag in the index, or a digest), if complete in the store.
    pub fn get(&self, reference: &str) -> Result<Option<LocalImage>> {
        let r = ImageRef::parse(reference)?;
        let index = self.read_index()?;
        match index.lookup(&r) {
            Some(digest) => self.local_image(&digest, &r.to_string()),
            None => Ok(None),
        }
    }

    /// Resolves a reference or a bare `sha256:…` digest to a stored manifest digest.
    pub(super) fn resolve(&self, index: &IndexFile, reference: &str) -> Result<String> {
        if reference.starts_with("sha256:") {
            return if index.images.contains_key(reference) {
                Ok(reference.to_string())
            } else {
                Err(ImageError::NotFound(reference.to_string()))
            };
        }
        let r = ImageRef::parse(reference)?;
        index
            .lookup(&r)
            .ok_or_else(|| ImageError::NotFound(r.to_string()))
    }

    /// Every image in the store, newest first.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let index = self.read_index()?;
        let mut out: Vec<ImageSummary> = index
            .images
            .iter()
            .map(|(digest, e)| {
                let local = self.local_image(digest, digest).ok().flatten();
                ImageSummary {
                    references: e.references.iter().cloned().collect(),
                    digest: digest.clone(),
                    size_bytes: local.as_ref().map(|l| l.size_bytes).unwrap_or(0),
                    created: to_time(e.created),
                    last_used: to_time(e.last_used),
                    metadata: local.map(|l| l.metadata),
                }
            })
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.digest.cmp(&b.digest)));
        Ok(out)
    }

    /// Points `target` at the image `source` names (like `docker tag`).
    pub fn tag(&self, source: &str, target: &str) -> Result<String> {
        let t = ImageRef::parse(target)?;
        if t.digest.is_some() {
            return Err(ImageError::Reference(super::reference::ReferenceError {
                reference: target.to_string(),
                reason: "a tag target cannot carry a digest".into(),
            }));
        }
        self.update_index(|idx| {
            let digest = self.resolve(idx, source)?;
            idx.record(&digest, Some(&t));
            Ok((true, digest))
        })
    }

    /// Records that the image `digest` (or reference) was used now (the runtime calls this when
    /// a VM starts; gc spares recently used images).
    pub fn touch(&self, digest: &str) -> Result<()> {
        self.update_index(|idx| {
            let d = self.resolve(idx, digest)?;
            if let Some(e) = idx.images.get_mut(&d) {
                e.last_used = now_secs();
            }
            Ok((true, ()))
        })
    }

    /// Drops `reference`; deletes the image and its unshared blobs and files when no reference
    /// is left on it. A digest (`sha256:…` or `repo@sha256:…`) deletes the image outright.
    pub fn remove(&self, reference: &str) -> Result<Removed> {
        let by_digest = reference.starts_with("sha256:") || reference.contains('@');
        let (removed, remaining) = self.update_index(|idx| {
            let digest = self.resolve(idx, reference)?;
            let mut removed = Removed::default();
            let entry_refs: Vec<String> = idx
                .images
                .get(&digest)
                .map(|e| e.references.iter().cloned().collect())
                .unwrap_or_default();
            if by_digest {
                removed.untagged = entry_refs;
            } else {
                let key = ImageRef::parse(reference)?.to_string();
                if let Some(e) = idx.images.get_mut(&digest) {
                    e.references.remove(&key);
                }
                removed.untagged = vec![key];
            }
            let now_unnamed = idx
                .images
                .get(&digest)
                .is_some_and(|e| e.references.is_empty());
            if by_digest || now_unnamed {
                idx.images.remove(&digest);
                removed.deleted = Some(digest.clone());
            }
            Ok((true, (removed, idx.clone())))
        })?;
        let mut removed = removed;
        if let Some(digest) = &removed.deleted {
            let (bytes, _, _) =
                self.delete_unreferenced(&remaining, std::slice::from_ref(digest))?;
            removed.bytes_freed = bytes;
        }
        Ok(removed)
    }

    /// Removes images not in `keep` (manifest digests of running VMs) and unused for longer than
    /// `unused_for`, then blobs and files no image references, and stale temp files.
    pub fn gc(&self, keep: &HashSet<String>, unused_for: Duration) -> Result<GcReport> {
        let now = now_secs();
        let (removed, remaining) = self.update_index(|idx| {
            let doomed: Vec<String> = idx
                .images
                .iter()
                .filter(|(d, e)| {
                    !keep.contains(*d)
                        && !e.local
                        && now.saturating_sub(e.last_used) >= unused_for.as_secs()
                        && !self.is_pinned(d)
                })
                .map(|(d, _)| d.clone())
                .collect();
            for d in &doomed {
                idx.images.remove(d);
            }
            Ok((!doomed.is_empty(), (doomed, idx.clone())))
        })?;
        let (bytes, blobs, files) = self.delete_unreferenced(&remaining, &removed)?;
        let mut report = GcReport {
            images_removed: removed,
            blobs_removed: blobs,
            files_removed: files,
            temp_removed: 0,
            bytes_freed: bytes,
        };
        let (n, b) = self.sweep_temp()?;
        report.temp_removed = n;
        report.bytes_freed += b;
        Ok(report)
    }

    /// Deletes blobs and files that no image in `index` references. Those of the images in
    /// `just_removed` go at once; other orphans only after [`ORPHAN_GRACE`].
    fn delete_unreferenced(
        &self,
        index: &IndexFile,
        just_removed: &[String],
    ) -> Result<(u64, usize, usize)> {
        let mut live: HashSet<String> = HashSet::new();
        for digest in index.images.keys() {
            live.insert(digest.clone());
            match self.manifest(digest) {
                Ok(m) => live.extend(m.blob_digests().map(str::to_string)),
                Err(e) => {
                    // Without the manifest we cannot tell what is shared: delete nothing.
                    tracing::warn!(digest, error = %e, "unreadable manifest; skipping blob cleanup");
                    return Ok((0, 0, 0));
                }
            }
        }
        let mut prompt: HashSet<String> = HashSet::new();
        for digest in just_removed {
            prompt.insert(digest.clone());
            if let Ok(m) = self.manifest(digest) {
                prompt.extend(m.blob_digests().map(str::to_string));
            }
        }
        let (mut bytes, mut blobs, mut files) = (0, 0, 0);
        for (dir, count) in [
            (&self.inner.blobs, &mut blobs),
            (&self.inner.files, &mut files),
        ] {
            let entries = std::fs::read_dir(dir).map_err(io_err("listing", dir))?;
            for entry in entries {
                let entry = entry.map_err(io_err("listing", dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let digest = format!("sha256:{name}");
                if live.contains(&digest) || self.is_pinned(&digest) {
                    continue;
                }
                let path = entry.path();
                let old_enough = std::fs::symlink_metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > ORPHAN_GRACE);
                if !prompt.contains(&digest) && !old_enough {
                    continue;
                }
                let size = allocated(&path);
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        bytes += size;
                        *count += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("removing", &path)(e)),
                }
            }
        }
        Ok((bytes, blobs, files))
    }

    fn sweep_temp(&self) -> Result<(usize, u64)> {
        let (mut n, mut bytes) = (0, 0);
        let dir = &self.inner.tmp;
        for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let entry = entry.map_err(io_err("listing", dir))?;
            let path = entry.path();
            let stale = std::fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > TEMP_GRACE);
            if stale {
                let size = allocated(&path);
                if std::fs::remove_file(&path).is_ok() {
                    n += 1;
                    bytes += size;
                }
            }
        }
        Ok((n, bytes))
    }
}
