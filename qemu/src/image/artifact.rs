//! The OCI artifact a Tugboat image is: an OCI image manifest with our media types.
//!
//! ```text
//! manifest  application/vnd.oci.image.manifest.v1+json, artifactType application/vnd.tugboat.image.v1
//! config    application/vnd.tugboat.metadata.v1+json  {"format","arch","bootMode","cmdline","labels","diskSize"}
//! layers    application/vnd.tugboat.disk.qcow2.v1+gzip | application/vnd.tugboat.disk.raw.v1+gzip
//!           application/vnd.tugboat.kernel.v1            (uncompressed: kernels are compressed already)
//!           application/vnd.tugboat.initrd.v1            (uncompressed, same reason)
//! ```
//!
//! Each layer carries `org.opencontainers.image.title` with its file name. Nothing in the
//! artifact depends on the build time, so building the same inputs twice gives the same digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::disk::{Arch, DiskFormat};
use super::error::{ImageError, Result};
use super::reference::validate_digest;

/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// `artifactType` of every Tugboat image.
pub const ARTIFACT_TYPE: &str = "application/vnd.tugboat.image.v1";
/// Media type of the config blob ([`ImageMetadata`]).
pub const METADATA_MEDIA_TYPE: &str = "application/vnd.tugboat.metadata.v1+json";
/// Media type of a gzip-compressed qcow2 disk layer.
pub const DISK_QCOW2_MEDIA_TYPE: &str = "application/vnd.tugboat.disk.qcow2.v1+gzip";
/// Media type of a gzip-compressed raw disk layer.
pub const DISK_RAW_MEDIA_TYPE: &str = "application/vnd.tugboat.disk.raw.v1+gzip";
/// Media type of the (uncompressed) kernel layer.
pub const KERNEL_MEDIA_TYPE: &str = "application/vnd.tugboat.kernel.v1";
/// Media type of the (uncompressed) initrd layer.
pub const INITRD_MEDIA_TYPE: &str = "application/vnd.tugboat.initrd.v1";
/// Layer annotation holding the file name.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Largest manifest accepted from a registry or an archive.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest config blob accepted.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// Annotations (the layer title).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The `org.opencontainers.image.title` annotation, or the digest.
    pub fn title(&self) -> &str {
        self.annotations
            .get(TITLE_ANNOTATION)
            .map(String::as_str)
            .unwrap_or(&self.digest)
    }
}

/// An OCI image manifest (only the fields Tugboat images use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// [`ARTIFACT_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The metadata blob.
    pub config: Descriptor,
    /// Disk, kernel and initrd layers.
    pub layers: Vec<Descriptor>,
    /// Manifest annotations (the image's labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How an image boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// Firmware boots the disk's bootloader.
    Disk,
    /// QEMU loads the image's kernel (and initrd) directly.
    Direct,
}

/// The config blob: what the runtime needs to boot the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageMetadata {
    /// Format of the base disk; `None` for a diskless (`FROM scratch`) image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Architecture.
    pub arch: Arch,
    /// Disk or direct kernel boot.
    pub boot_mode: BootMode,
    /// Kernel command line (direct boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Labels from the Imagefile.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Virtual size of the disk in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<u64>,
}

/// What a layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// The base disk, gzip-compressed.
    Disk(DiskFormat),
    /// The kernel, as is.
    Kernel,
    /// The initrd, as is.
    Initrd,
}

impl LayerKind {
    /// The layer's media type.
    pub fn media_type(self) -> &'static str {
        match self {
            LayerKind::Disk(DiskFormat::Qcow2) => DISK_QCOW2_MEDIA_TYPE,
            LayerKind::Disk(DiskFormat::Raw) => DISK_RAW_MEDIA_TYPE,
            LayerKind::Kernel => KERNEL_MEDIA_TYPE,
            LayerKind::Initrd => INITRD_MEDIA_TYPE,
        }
    }

    /// The kind a media type names, if it is one of ours.
    pub fn from_media_type(media_type: &str) -> Option<LayerKind> {
        match media_type {
            DISK_QCOW2_MEDIA_TYPE => Some(LayerKind::Disk(DiskFormat::Qcow2)),
            DISK_RAW_MEDIA_TYPE => Some(LayerKind::Disk(DiskFormat::Raw)),
            KERNEL_MEDIA_TYPE => Some(LayerKind::Kernel),
            INITRD_MEDIA_TYPE => Some(LayerKind::Initrd),
            _ => None,
        }
    }

    /// True when the blob is gzip and must be decompressed into the extracted file.
    pub fn gzipped(self) -> bool {
        matches!(self, LayerKind::Disk(_))
    }
}

impl Manifest {
    /// A manifest of our artifact type for `config` and `layers`.
    pub fn new(
        config: Descriptor,
        layers: Vec<Descriptor>,
        annotations: BTreeMap<String, String>,
    ) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
            artifact_type: Some(ARTIFACT_TYPE.to_string()),
            config,
            layers,
            annotations,
        }
    }

    /// The bytes that are stored, pushed and hashed (deterministic: fields in declaration order,
    /// maps sorted).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| ImageError::Internal(format!("serializing a manifest: {e}")))
    }

    /// Parses and checks a manifest: schema 2, OCI image manifest, our config and layer types.
    pub fn parse(bytes: &[u8], reference: &str) -> Result<Manifest> {
        let invalid = |message: String| ImageError::InvalidImage {
            reference: reference.to_string(),
            message,
        };
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("manifest is not an OCI image manifest: {e}")))?;
        if m.schema_version != 2 {
            return Err(invalid(format!(
                "manifest schemaVersion {} (expected 2)",
                m.schema_version
            )));
        }
        if let Some(mt) = &m.media_type {
            if mt != MANIFEST_MEDIA_TYPE {
                return Err(invalid(format!(
                    "manifest media type {mt} (expected {MANIFEST_MEDIA_TYPE})"
                )));
            }
        }
        if m.config.media_type != METADATA_MEDIA_TYPE {
            return Err(invalid(format!(
                "not a Tugboat VM image: config media type {} (expected {METADATA_MEDIA_TYPE})",
                m.config.media_type
            )));
        }
        if m.config.size > MAX_CONFIG_BYTES {
            return Err(invalid(format!(
                "config of {} bytes is too large",
                m.config.size
            )));
        }
        let mut seen: Vec<LayerKind> = Vec::new();
        for d in std::iter::once(&m.config).chain(&m.layers) {
            validate_digest(&d.digest).map_err(|e| invalid(format!("descriptor: {e}")))?;
        }
        for l in &m.layers {
            let kind = LayerKind::from_media_type(&l.media_type)
                .ok_or_else(|| invalid(format!("unknown layer media type {}", l.media_type)))?;
            let slot = |k: LayerKind| match k {
                LayerKind::Disk(_) => 0,
                LayerKind::Kernel => 1,
                LayerKind::Initrd => 2,
            };
            if seen.iter().any(|s| slot(*s) == slot(kind)) {
                return Err(invalid(format!("more than one {} layer", l.media_type)));
            }
            seen.push(kind);
        }
        Ok(m)
    }

    /// The layer of `kind`'s slot (any disk format for a disk).
    pub fn layer(&self, want: fn(LayerKind) -> bool) -> Option<(&Descriptor, LayerKind)> {
        self.layers.iter().find_map(|l| {
            let k = LayerKind::from_media_type(&l.media_type)?;
            want(k).then_some((l, k))
        })
    }

    /// Every blob digest the manifest references (config first).
    pub fn blob_digests(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.config.digest.as_str())
            .chain(self.layers.iter().map(|l| l.digest.as_str()))
    }
}

impl ImageMetadata {
    /// Parses a config blob and checks it against the manifest's layers.
    pub fn parse(bytes: &[u8], manifest: &Manifest, reference: &str) -> Result<ImageMetadata> {
        let invalid = |message: String| ImageError::InvalidImage {
            reference: reference.to_string(),
            message,
        };
        let meta: ImageMetadata = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("metadata (config blob): {e}")))?;
        let disk = manifest.layer(|k| matches!(k, LayerKind::Disk(_)));
        let kernel = manifest.layer(|k| k == LayerKind::Kernel);
        match (disk, meta.format) {
            (Some((_, LayerKind::Disk(f))), Some(m)) if f != m => {
                return Err(invalid(format!(
                    "metadata says {m} but the disk layer is {f}"
                )))
            }
            (Some(_), None) => return Err(invalid("disk layer but no format in metadata".into())),
            (None, Some(_)) => {
                return Err(invalid("metadata has a format but no disk layer".into()))
            }
            _ => {}
        }
        if disk.is_none() && kernel.is_none() {
            return Err(invalid("neither a disk nor a kernel layer".into()));
        }
        if meta.boot_mode == BootMode::Direct && kernel.is_none() {
            return Err(invalid("bootMode direct but no kernel layer".into()));
        }
        Ok(meta)
    }

    /// The config blob's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| ImageError::Internal(format!("serializing image metadata: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(media_type: &str, n: u8, title: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{}", hex::encode([n; 32])),
            size: 10,
            annotations: [(TITLE_ANNOTATION.to_string(), title.to_string())]
                .into_iter()
                .collect(),
        }
    }

    fn sample() -> (Manifest, ImageMetadata) {
        let meta = ImageMetadata {
            format: Some(DiskFormat::Qcow2),
            arch: Arch::X86_64,
            boot_mode: BootMode::Direct,
            cmdline: Some("console=ttyS0".into()),
            labels: [("os".to_string(), "debian".to_string())]
                .into_iter()
                .collect(),
            disk_size: Some(1 << 30),
        };
        let mut config = d(METADATA_MEDIA_TYPE, 1, "");
        config.annotations.clear();
        let m = Manifest::new(
            config,
            vec![
                d(DISK_QCOW2_MEDIA_TYPE, 2, "disk.qcow2"),
                d(KERNEL_MEDIA_TYPE, 3, "vmlinuz"),
                d(INITRD_MEDIA_TYPE, 4, "initrd.img"),
            ],
            meta.labels.clone(),
        );
        (m, meta)
    }

    #[test]
    fn manifest_json_shape() {
        let (m, _) = sample();
        let v: serde_json::Value = serde_json::from_slice(&m.to_bytes().unwrap()).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(v["artifactType"], ARTIFACT_TYPE);
        assert_eq!(v["config"]["mediaType"], METADATA_MEDIA_TYPE);
        assert!(v["config"].get("annotations").is_none());
        assert_eq!(v["layers"][0]["mediaType"], DISK_QCOW2_MEDIA_TYPE);
        assert_eq!(
            v["layers"][0]["annotations"][TITLE_ANNOTATION],
            "disk.qcow2"
        );
        assert_eq!(
            v["layers"][1]["mediaType"],
            "application/vnd.tugboat.kernel.v1"
        );
        assert_eq!(
            v["layers"][2]["mediaType"],
            "application/vnd.tugboat.initrd.v1"
        );
        assert_eq!(v["layers"][0]["size"], 10);
        assert_eq!(v["annotations"]["os"], "debian");
        // Round trip, and the same manifest gives the same bytes.
        let back = Manifest::parse(&m.to_bytes().unwrap(), "x").unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_bytes().unwrap(), m.to_bytes().unwrap());
    }

    #[test]
    fn config_json_shape() {
        let (m, meta) = sample();
        let bytes = meta.to_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "format": "qcow2", "arch": "x86_64", "bootMode": "direct",
                "cmdline": "console=ttyS0", "labels": {"os": "debian"}, "diskSize": 1073741824u64
            })
        );
        assert_eq!(ImageMetadata::parse(&bytes, &m, "x").unwrap(), meta);
        let scratch = serde_json::json!({"arch": "aarch64", "bootMode": "direct"});
        let mut m2 = m.clone();
        m2.layers.remove(0);
        let parsed = ImageMetadata::parse(scratch.to_string().as_bytes(), &m2, "x").unwrap();
        assert_eq!(parsed.format, None);
        assert_eq!(parsed.arch, Arch::Aarch64);
    }

    #[test]
    fn foreign_and_broken_manifests_are_refused() {
        let (m, meta) = sample();
        let mut container = m.clone();
        container.config.media_type = "application/vnd.oci.image.config.v1+json".into();
        let e = Manifest::parse(&container.to_bytes().unwrap(), "busybox").unwrap_err();
        assert!(e.to_string().contains("not a Tugboat VM image"), "{e}");
        let mut two = m.clone();
        two.layers.push(d(DISK_RAW_MEDIA_TYPE, 5, "other"));
        assert!(Manifest::parse(&two.to_bytes().unwrap(), "x").is_err());
        let mut odd = m.clone();
        odd.layers[0].media_type = "application/x-foo".into();
        assert!(Manifest::parse(&odd.to_bytes().unwrap(), "x").is_err());
        let mut bad_digest = m.clone();
        bad_digest.layers[0].digest = "sha256:xyz".into();
        assert!(Manifest::parse(&bad_digest.to_bytes().unwrap(), "x").is_err());
        assert!(Manifest::parse(b"{", "x").is_err());
        // Metadata disagreeing with the layers.
        let mut raw = meta.clone();
        raw.format = Some(DiskFormat::Raw);
        assert!(ImageMetadata::parse(&raw.to_bytes().unwrap(), &m, "x").is_err());
    }
}
