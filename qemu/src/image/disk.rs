//! Disk formats and architectures of images, and what a disk file's header says about it.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{io_err, ImageError, Result};

/// The magic at the start of every qcow2 file.
pub const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// Format of an image's base disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// A plain byte-for-byte disk.
    Raw,
}

impl DiskFormat {
    /// The name QEMU (`-F`, `format=`) and the Imagefile use.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }

    /// Parses `qcow2` or `raw`.
    pub fn parse(s: &str) -> Option<DiskFormat> {
        match s {
            "qcow2" => Some(DiskFormat::Qcow2),
            "raw" => Some(DiskFormat::Raw),
            _ => None,
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// CPU architecture an image boots on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Arch {
    /// 64-bit x86 (`amd64`, `x64`).
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM (`arm64`).
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    /// The canonical name (`x86_64`, `aarch64`), as QEMU's binaries spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Parses a name or a common alias (`amd64`, `x64`, `arm64`), case-insensitively.
    pub fn parse(s: &str) -> Option<Arch> {
        match s.to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x64" | "x86-64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a disk file's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskProbe {
    /// qcow2 when the magic is there, else raw.
    pub format: DiskFormat,
    /// Virtual size in bytes (qcow2 header; the file length of a raw disk).
    pub virtual_size: u64,
    /// True when a qcow2 header names a backing file.
    pub has_backing_file: bool,
}

/// Reads the header of the disk at `path` (qcow2 magic, virtual size, backing file).
pub fn probe(path: &Path) -> Result<DiskProbe> {
    let mut f = std::fs::File::open(path).map_err(io_err("opening", path))?;
    let len = f.metadata().map_err(io_err("reading", path))?.len();
    let mut header = [0u8; 32];
    let mut got = 0;
    while got < header.len() {
        match f
            .read(&mut header[got..])
            .map_err(io_err("reading", path))?
        {
            0 => break,
            n => got += n,
        }
    }
    Ok(probe_header(&header[..got], len))
}

/// Interprets a disk's first (up to) 32 bytes; `len` is the file length.
pub fn probe_header(header: &[u8], len: u64) -> DiskProbe {
    if header.len() >= 32 && header[..4] == QCOW2_MAGIC[..] {
        // qcow2 header: magic, version (u32), backing_file_offset (u64), backing_file_size
        // (u32), cluster_bits (u32), size (u64) — all big-endian.
        let be64 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[at..at + 8]);
            u64::from_be_bytes(b)
        };
        DiskProbe {
            format: DiskFormat::Qcow2,
            virtual_size: be64(24),
            has_backing_file: be64(8) != 0,
        }
    } else {
        DiskProbe {
            format: DiskFormat::Raw,
            virtual_size: len,
            has_backing_file: false,
        }
    }
}

/// Checks that the disk at `path` really is `format` and self-contained.
///
/// A qcow2 base with a backing file would make QEMU open a host path chosen by whoever built
/// the image, so such disks are refused on build and on pull alike.
pub fn check(path: &Path, format: DiskFormat) -> Result<DiskProbe> {
    let probe = probe(path)?;
    let fail = |message: String| ImageError::Disk {
        path: path.to_path_buf(),
        message,
    };
    match (format, probe.format) {
        (DiskFormat::Qcow2, DiskFormat::Raw) => {
            return Err(fail("declared qcow2 but has no qcow2 header".into()))
        }
        (DiskFormat::Qcow2, DiskFormat::Qcow2) if probe.has_backing_file => {
            return Err(fail(
                "qcow2 image has a backing file; flatten it first \
                 (qemu-img convert -O qcow2 in.qcow2 out.qcow2)"
                    .into(),
            ))
        }
        _ => {}
    }
    // A raw disk that happens to start with the qcow2 magic stays raw: QEMU is always told the
    // format (`-F raw`), so it never probes the header.
    Ok(DiskProbe {
        format,
        virtual_size: match format {
            DiskFormat::Raw => std::fs::metadata(path)
                .map_err(io_err("reading", path))?
                .len(),
            DiskFormat::Qcow2 => probe.virtual_size,
        },
        has_backing_file: probe.has_backing_file && format == DiskFormat::Qcow2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2_header(size: u64, backing: u64) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(QCOW2_MAGIC);
        h.extend_from_slice(&3u32.to_be_bytes());
        h.extend_from_slice(&backing.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&16u32.to_be_bytes());
        h.extend_from_slice(&size.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_header_fields() {
        let p = probe_header(&qcow2_header(1 << 30, 0), 200_000);
        assert_eq!(p.format, DiskFormat::Qcow2);
        assert_eq!(p.virtual_size, 1 << 30);
        assert!(!p.has_backing_file);
        assert!(probe_header(&qcow2_header(1, 512), 9).has_backing_file);
    }

    #[test]
    fn raw_and_short_files() {
        let p = probe_header(b"hello", 5);
        assert_eq!(p.format, DiskFormat::Raw);
        assert_eq!(p.virtual_size, 5);
        assert_eq!(probe_header(QCOW2_MAGIC, 4).format, DiskFormat::Raw);
    }

    #[test]
    fn check_refuses_lies_and_backing_files() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.img");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        assert!(check(&raw, DiskFormat::Qcow2).is_err());
        assert_eq!(check(&raw, DiskFormat::Raw).unwrap().virtual_size, 4096);
        let backed = dir.path().join("backed.qcow2");
        std::fs::write(&backed, qcow2_header(1 << 20, 1024)).unwrap();
        let e = check(&backed, DiskFormat::Qcow2).unwrap_err();
        assert!(e.to_string().contains("backing file"), "{e}");
        // Declared raw, a qcow2-looking file is just bytes.
        assert!(!check(&backed, DiskFormat::Raw).unwrap().has_backing_file);
    }

    #[test]
    fn names() {
        assert_eq!(Arch::parse("AMD64"), Some(Arch::X86_64));
        assert_eq!(Arch::parse("arm64"), Some(Arch::Aarch64));
        assert_eq!(Arch::parse("riscv64"), None);
        assert_eq!(DiskFormat::parse("qcow2"), Some(DiskFormat::Qcow2));
        assert_eq!(DiskFormat::parse("vmdk"), None);
        assert_eq!(serde_json::to_string(&Arch::X86_64).unwrap(), "\"x86_64\"");
    }
}
