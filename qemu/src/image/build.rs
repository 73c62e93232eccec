//! `tugboat build`: an Imagefile and its context become an image in the store.
//!
//! Each file is read once: the disk is gzipped and hashed into a blob and, in the same pass,
//! copied (sparse) to the extracted base disk; kernel and initrd are copied and hashed. Nothing
//! is held in memory but one chunk.

use std::path::Path;

use super::artifact::{
    BootMode, Descriptor, ImageMetadata, LayerKind, Manifest, METADATA_MEDIA_TYPE, TITLE_ANNOTATION,
};
use super::blobio;
use super::error::{ImageError, Result};
use super::imagefile::Imagefile;
use super::progress::Progress;
use super::reference::{ImageRef, ReferenceError};
use super::store::{ImageStore, LocalImage};

fn title_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into())
}

fn descriptor(kind: LayerKind, digest: String, size: u64, title: String) -> Descriptor {
    Descriptor {
        media_type: kind.media_type().to_string(),
        digest,
        size,
        annotations: [(TITLE_ANNOTATION.to_string(), title)]
            .into_iter()
            .collect(),
    }
}

impl ImageStore {
    /// Builds the image `imagefile` describes from files in `context` and tags it `tag`.
    pub async fn build(
        &self,
        imagefile: &Path,
        context: &Path,
        tag: &str,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let tag_ref = ImageRef::parse(tag)?;
        if tag_ref.digest.is_some() {
            return Err(ImageError::Reference(ReferenceError {
                reference: tag.to_string(),
                reason: "a build tag cannot carry a digest".into(),
            }));
        }
        let spec = Imagefile::read(imagefile)?;
        let ctx = context.to_path_buf();
        let resolved = tokio::task::spawn_blocking(move || spec.resolve(&ctx)).await??;

        let mut layers = Vec::new();
        let mut pins = Vec::new();
        if let Some((path, probe)) = &resolved.disk {
            let title = title_of(path);
            let len = std::fs::metadata(path)
                .map_err(super::error::io_err("reading", path))?
                .len();
            let task = progress.task("building", &title, Some(len));
            let gz = self.temp(&title);
            let copy = self.temp(&title);
            let src = path.clone();
            let (c, gz, copy) = tokio::task::spawn_blocking(move || {
                let c = blobio::compress_file(&src, gz.path(), Some(copy.path()), &task)?;
                task.finish("");
                Ok::<_, ImageError>((c, gz, copy))
            })
            .await??;
            pins.push(self.pin([c.digest.as_str()]));
            let kind = LayerKind::Disk(probe.format);
            let (digest, size) = (c.digest.clone(), c.size);
            self.commit_blob(gz, &title, &digest, None, &digest, size)?;
            copy.persist(&self.layer_file(&digest, kind))?;
            layers.push(descriptor(kind, digest, size, title));
        }
        for (file, kind) in [
            (&resolved.kernel, LayerKind::Kernel),
            (&resolved.initrd, LayerKind::Initrd),
        ] {
            let Some(path) = file else { continue };
            let title = title_of(path);
            let len = std::fs::metadata(path)
                .map_err(super::error::io_err("reading", path))?
                .len();
            let task = progress.task("building", &title, Some(len));
            let tmp = self.temp(&title);
            let src = path.clone();
            let (digest, size, tmp) = tokio::task::spawn_blocking(move || {
                let (d, n) = blobio::copy_hashed(&src, tmp.path(), &task)?;
                task.finish("");
                Ok::<_, ImageError>((d, n, tmp))
            })
            .await??;
            pins.push(self.pin([digest.as_str()]));
            self.commit_blob(tmp, &title, &digest, None, &digest, size)?;
            layers.push(descriptor(kind, digest, size, title));
        }

        let metadata = ImageMetadata {
            format: resolved.disk.as_ref().map(|(_, p)| p.format),
            arch: resolved.arch,
            boot_mode: if resolved.kernel.is_some() {
                BootMode::Direct
            } else {
                BootMode::Disk
            },
            cmdline: resolved.cmdline.clone(),
            labels: resolved.labels.clone(),
            disk_size: resolved.disk.as_ref().map(|(_, p)| p.virtual_size),
        };
        let config_bytes = metadata.to_bytes()?;
        let config_digest = self.write_blob(&config_bytes)?;
        pins.push(self.pin([config_digest.as_str()]));
        let manifest = Manifest::new(
            Descriptor {
                media_type: METADATA_MEDIA_TYPE.to_string(),
                digest: config_digest,
                size: config_bytes.len() as u64,
                annotations: Default::default(),
            },
            layers,
            resolved.labels.clone(),
        );
        let manifest_digest = self.write_blob(&manifest.to_bytes()?)?;
        let _pin = self.pin([manifest_digest.as_str()]);
        let image = self.commit_image(&manifest_digest, Some(&tag_ref), false)?;
        progress.message(&format!("built {tag_ref} {manifest_digest}"));
        Ok(image)
    }
}
