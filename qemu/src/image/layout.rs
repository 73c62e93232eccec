//! Air-gapped transfer: images saved to and loaded from an OCI image layout tar archive.
//!
//! ```text
//! oci-layout         {"imageLayoutVersion":"1.0.0"}
//! index.json         one manifest descriptor per saved reference, annotated
//!                    org.opencontainers.image.ref.name = the full reference
//! blobs/sha256/<hex> manifests, configs, layers (each once)
//! ```
//!
//! Saving streams blobs from the store into the tar (re-hashing them on the way, so a corrupt
//! store is caught, not copied). Loading reads the tar once, front to back, writing each blob to
//! a temp file while hashing it; a blob whose content does not match its name fails the load and
//! leaves nothing behind. Then every manifest is checked and extracted exactly like a pull.
//! No network is involved.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::artifact::{
    ImageMetadata, LayerKind, Manifest, ARTIFACT_TYPE, MANIFEST_MEDIA_TYPE, MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
};
use super::blobio::{self, digest_hex, HashWriter, TempFile};
use super::error::{io_err, ImageError, Result};
use super::progress::Progress;
use super::reference::{validate_digest, ImageRef};
use super::store::{ImageStore, Pins};

/// Media type of the layout's `index.json`.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Annotation naming a manifest in `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Largest `index.json` or `oci-layout` accepted from an archive.
const MAX_INDEX_BYTES: u64 = 4 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutFile {
    image_layout_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutIndex {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// A reader that hashes what it yields and counts progress.
struct HashReader<R> {
    inner: R,
    hasher: HashWriter<std::io::Sink>,
    task: super::progress::Task,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.write_all(&buf[..n])?;
        self.task.inc(n as u64);
        Ok(n)
    }
}

fn tar_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    // Fixed metadata: saving the same images twice gives the same archive.
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

impl ImageStore {
    /// Writes the images `references` name to an OCI layout tar archive at `out`.
    ///
    /// The archive is written to a temp file beside `out` and renamed when complete.
    pub async fn save(&self, references: &[String], out: &Path, progress: &Progress) -> Result<()> {
        let index = self.read_index()?;
        let mut entries = Vec::new();
        let mut blobs: Vec<(String, u64, String)> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut digests = Vec::new();
        for reference in references {
            let digest = self.resolve(&index, reference)?;
            let name = if reference.starts_with("sha256:") {
                None
            } else {
                Some(ImageRef::parse(reference)?.to_string())
            };
            let manifest_bytes = self.read_blob(&digest, MAX_MANIFEST_BYTES)?;
            let manifest = Manifest::parse(&manifest_bytes, reference)?;
            let mut annotations = BTreeMap::new();
            if let Some(n) = name {
                annotations.insert(REF_NAME_ANNOTATION.to_string(), n);
            }
            entries.push(IndexEntry {
                media_type: MANIFEST_MEDIA_TYPE.to_string(),
                digest: digest.clone(),
                size: manifest_bytes.len() as u64,
                artifact_type: Some(ARTIFACT_TYPE.to_string()),
                annotations,
            });
            let mut add = |d: &str, size: u64, title: &str| {
                if seen.insert(d.to_string()) {
                    blobs.push((d.to_string(), size, title.to_string()));
                }
            };
            add(&digest, manifest_bytes.len() as u64, "manifest");
            add(&manifest.config.digest, manifest.config.size, "config");
            for l in &manifest.layers {
                add(&l.digest, l.size, l.title());
            }
            digests.push(digest);
        }
        let _pins = self.pin(seen.iter().map(String::as_str));
        let layout = serde_json::to_vec(&LayoutFile {
            image_layout_version: "1.0.0".into(),
        })
        .map_err(|e| ImageError::Internal(e.to_string()))?;
        let index_json = serde_json::to_vec(&LayoutIndex {
            schema_version: 2,
            media_type: Some(INDEX_MEDIA_TYPE.to_string()),
            manifests: entries,
        })
        .map_err(|e| ImageError::Internal(e.to_string()))?;

        let out = out.to_path_buf();
        let partial = partial_path(&out);
        let store = self.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let _cleanup = TempGuard(partial.clone());
            let file = File::create(&partial).map_err(io_err("creating", &partial))?;
            let mut tar = tar::Builder::new(BufWriter::with_capacity(blobio::CHUNK, file));
            tar.append_data(
                &mut tar_header(layout.len() as u64),
                "oci-layout",
                &layout[..],
            )
            .map_err(io_err("writing", &partial))?;
            tar.append_data(
                &mut tar_header(index_json.len() as u64),
                "index.json",
                &index_json[..],
            )
            .map_err(io_err("writing", &partial))?;
            for (digest, size, title) in &blobs {
                let path = store.blob_path(digest);
                let f = File::open(&path).map_err(io_err("opening", &path))?;
                let actual_size = f.metadata().map_err(io_err("reading", &path))?.len();
                if actual_size != *size {
                    return Err(ImageError::SizeMismatch {
                        what: path.display().to_string(),
                        expected: *size,
                        actual: actual_size,
                    });
                }
                let task = progress.task("saving", title, Some(*size));
                let mut reader = HashReader {
                    inner: BufReader::with_capacity(blobio::CHUNK, f),
                    hasher: HashWriter::new(std::io::sink()),
                    task: task.clone(),
                };
                tar.append_data(
                    &mut tar_header(*size),
                    format!("blobs/sha256/{}", digest_hex(digest)),
                    &mut reader,
                )
                .map_err(io_err("writing", &partial))?;
                let (actual, _, _) = reader.hasher.finish();
                if actual != *digest {
                    return Err(ImageError::DigestMismatch {
                        what: path.display().to_string(),
                        expected: digest.clone(),
                        actual,
                    });
                }
                task.finish("");
            }
            let w = tar.into_inner().map_err(io_err("writing", &partial))?;
            let file = w
                .into_inner()
                .map_err(|e| io_err("writing", &partial)(e.into_error()))?;
            file.sync_all().map_err(io_err("syncing", &partial))?;
            std::fs::rename(&partial, &out).map_err(io_err("renaming into", &out))?;
            Ok(())
        })
        .await??;
        Ok(())
    }

    /// Loads every image of an OCI layout tar archive; returns the references (or digests of
    /// unnamed images) loaded.
    pub async fn load(&self, archive: &Path, progress: &Progress) -> Result<Vec<String>> {
        let file = File::open(archive).map_err(io_err("opening", archive))?;
        self.load_from(file, archive, progress).await
    }

    /// Like [`ImageStore::load`], reading the archive front to back from `reader` (a blocking
    /// reader, read on a blocking thread: a file, or an upload bridged from a network stream);
    /// `archive` names it in errors.
    pub async fn load_from<R: Read + Send + 'static>(
        &self,
        reader: R,
        archive: &Path,
        progress: &Progress,
    ) -> Result<Vec<String>> {
        let store = self.clone();
        let path = archive.to_path_buf();
        let p = progress.clone();
        let (index_bytes, pins) =
            tokio::task::spawn_blocking(move || store.read_archive(reader, &path, &p)).await??;
        let bad = |message: String| ImageError::Archive {
            path: archive.to_path_buf(),
            message,
        };
        let index: LayoutIndex =
            serde_json::from_slice(&index_bytes).map_err(|e| bad(format!("index.json: {e}")))?;
        let _pins = pins;
        // Every image is checked before any is named, so a bad archive adds no image.
        let mut checked = Vec::new();
        for entry in &index.manifests {
            if entry.media_type != MANIFEST_MEDIA_TYPE {
                return Err(bad(format!(
                    "index.json lists a {} (only image manifests are supported)",
                    entry.media_type
                )));
            }
            validate_digest(&entry.digest).map_err(|m| bad(format!("index.json: {m}")))?;
            let name = entry
                .annotations
                .get(REF_NAME_ANNOTATION)
                .or_else(|| entry.annotations.get("io.containerd.image.name"))
                // A bare tag (the spec's own example) names no repository: keep the image unnamed.
                .filter(|n| n.contains('/') || n.contains(':'))
                .map(|n| ImageRef::parse(n))
                .transpose()?;
            let shown = name
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|| entry.digest.clone());
            if !self.has_blob(&entry.digest) {
                return Err(bad(format!(
                    "manifest {} is not in the archive",
                    entry.digest
                )));
            }
            let manifest = self.manifest(&entry.digest)?;
            for d in manifest.blob_digests() {
                if !self.has_blob(d) {
                    return Err(bad(format!("blob {d} of {shown} is not in the archive")));
                }
            }
            let config = self.read_blob(&manifest.config.digest, MAX_CONFIG_BYTES)?;
            ImageMetadata::parse(&config, &manifest, &shown)?;
            checked.push((entry, name, shown, manifest));
        }
        let mut loaded = Vec::new();
        for (entry, name, shown, manifest) in checked {
            for layer in &manifest.layers {
                let Some(kind) = LayerKind::from_media_type(&layer.media_type) else {
                    continue;
                };
                self.extract_layer(&layer.digest, kind, layer.title(), progress)
                    .await?;
            }
            self.commit_image(&entry.digest, name.as_ref(), true)?;
            progress.message(&format!("loaded {shown} {}", entry.digest));
            loaded.push(shown);
        }
        Ok(loaded)
    }

    /// Reads the archive front to back: stores verified blobs, returns `index.json`.
    fn read_archive(
        &self,
        reader: impl Read,
        path: &Path,
        progress: &Progress,
    ) -> Result<(Vec<u8>, Vec<Pins>)> {
        let bad = |message: String| ImageError::Archive {
            path: path.to_path_buf(),
            message,
        };
        let mut archive = tar::Archive::new(BufReader::with_capacity(blobio::CHUNK, reader));
        let mut index = None;
        let mut layout_ok = false;
        let mut pins = Vec::new();
        let rerr = io_err("reading", path);
        for entry in archive.entries().map_err(rerr)? {
            let mut entry = entry.map_err(io_err("reading", path))?;
            let name = entry
                .path()
                .map_err(io_err("reading", path))?
                .to_string_lossy()
                .into_owned();
            let name = name.trim_start_matches("./").to_string();
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() {
                return Err(bad(format!("{name}: only regular files are expected")));
            }
            let size = entry.size();
            match name.as_str() {
                "oci-layout" => {
                    let bytes = read_limited(&mut entry, MAX_INDEX_BYTES)
                        .map_err(|e| bad(format!("oci-layout: {e}")))?;
                    let l: LayoutFile = serde_json::from_slice(&bytes)
                        .map_err(|e| bad(format!("oci-layout: {e}")))?;
                    if l.image_layout_version != "1.0.0" {
                        return Err(bad(format!(
                            "imageLayoutVersion {} (expected 1.0.0)",
                            l.image_layout_version
                        )));
                    }
                    layout_ok = true;
                }
                "index.json" => {
                    index = Some(
                        read_limited(&mut entry, MAX_INDEX_BYTES)
                            .map_err(|e| bad(format!("index.json: {e}")))?,
                    );
                }
                n if n.starts_with("blobs/") => {
                    let rest = &n["blobs/".len()..];
                    let digest = rest.replacen('/', ":", 1);
                    validate_digest(&digest).map_err(|m| bad(format!("{n}: {m}")))?;
                    pins.push(self.pin([digest.as_str()]));
                    if self.has_blob(&digest) {
                        continue;
                    }
                    let task = progress.task("loading", &digest[7..19], Some(size));
                    let tmp: TempFile = self.temp("load");
                    let out = tmp.create()?;
                    let mut w = HashWriter::new(BufWriter::with_capacity(blobio::CHUNK, out));
                    blobio::copy_with_progress(&mut entry, &mut w, &task)
                        .map_err(io_err("reading", path))?;
                    let (actual, n_bytes, bw) = w.finish();
                    let f = bw
                        .into_inner()
                        .map_err(|e| io_err("writing", tmp.path())(e.into_error()))?;
                    f.sync_all().map_err(io_err("syncing", tmp.path()))?;
                    drop(f);
                    self.commit_blob(tmp, n, &digest, Some(size), &actual, n_bytes)?;
                    task.finish("");
                }
                // Docker's manifest.json and anything else: not ours to read.
                _ => {}
            }
        }
        if !layout_ok {
            return Err(bad("no oci-layout file: not an OCI image layout".into()));
        }
        let index = index.ok_or_else(|| bad("no index.json".into()))?;
        Ok((index, pins))
    }
}

fn read_limited(r: &mut impl Read, max: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(buf)
}

fn partial_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "images.tar".into());
    out.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// Removes a half-written archive when saving fails.
struct TempGuard(PathBuf);

impl Drop for TempGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
