//! Streaming file work for blobs: hashing, gzip in and out, sparse writes, temp files.
//!
//! Everything here is blocking I/O in fixed-size chunks (run it under `spawn_blocking`): a disk
//! is never held in memory, and each file is read once however many things are computed from it.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest as _, Sha256};

use super::error::{io_err, ImageError, Result};
use super::progress::Task;

/// Read and write chunk size.
pub const CHUNK: usize = 1 << 20;
/// All-zero blocks of this size (aligned) become holes in extracted disks.
const SPARSE_BLOCK: usize = 64 << 10;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a validated `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// A writer that hashes and counts what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The digest and byte count so far, and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a fresh file, turning aligned all-zero blocks into holes (disks are mostly zeros).
pub struct SparseWriter {
    file: File,
    buf: Vec<u8>,
    len: u64,
}

impl SparseWriter {
    /// Wraps a newly created, empty file.
    pub fn new(file: File) -> Self {
        SparseWriter {
            file,
            buf: Vec::with_capacity(SPARSE_BLOCK),
            len: 0,
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.buf.iter().all(|b| *b == 0) {
            self.file.seek(SeekFrom::Current(self.buf.len() as i64))?;
        } else {
            self.file.write_all(&self.buf)?;
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered, sets the final length (a trailing hole) and syncs.
    pub fn finish(mut self) -> io::Result<u64> {
        if !self.buf.is_empty() {
            self.emit()?;
        }
        self.file.set_len(self.len)?;
        self.file.sync_all()?;
        Ok(self.len)
    }
}

impl Write for SparseWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = SPARSE_BLOCK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == SPARSE_BLOCK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A file under the store's `tmp/` that is deleted unless [`TempFile::persist`] moves it.
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl TempFile {
    /// A fresh unique path in `dir` (the file is not created).
    pub fn new_in(dir: &Path, hint: &str) -> TempFile {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let hint: String = hint
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        TempFile {
            path: dir.join(format!("{}-{seq}-{nanos}-{hint}.part", std::process::id())),
            keep: false,
        }
    }

    /// The temp path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file for writing.
    pub fn create(&self) -> Result<File> {
        File::create(&self.path).map_err(io_err("creating", &self.path))
    }

    /// Makes it read-only and renames it to `dest` (atomically replacing nothing: a
    /// content-addressed `dest` that exists already has the same bytes, so this one is dropped).
    pub fn persist(mut self, dest: &Path) -> Result<()> {
        if dest.exists() {
            return Ok(());
        }
        set_read_only(&self.path)?;
        std::fs::rename(&self.path, dest).map_err(io_err("renaming into", dest))?;
        self.keep = true;
        if let Some(parent) = dest.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Drops write permission: base disks and blobs are shared and must never change.
pub fn set_read_only(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .map_err(io_err("setting permissions of", path))
}

/// fsyncs a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// Result of [`compress_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    /// Digest of the gzip stream (the layer digest).
    pub digest: String,
    /// Size of the gzip stream.
    pub size: u64,
    /// Size of the input.
    pub uncompressed_size: u64,
}

/// Reads `src` once, writing gzip to `gz_out` and, when given, a sparse copy to `copy_out`.
///
/// Compression level 1: disks are large and mostly zeros, which every level squeezes alike;
/// higher levels cost several times the CPU for a few percent.
pub fn compress_file(
    src: &Path,
    gz_out: &Path,
    copy_out: Option<&Path>,
    task: &Task,
) -> Result<Compressed> {
    let mut input = File::open(src).map_err(io_err("opening", src))?;
    let out = File::create(gz_out).map_err(io_err("creating", gz_out))?;
    let mut gz = GzEncoder::new(
        HashWriter::new(BufWriter::with_capacity(CHUNK, out)),
        Compression::fast(),
    );
    let mut copy = match copy_out {
        Some(p) => Some(SparseWriter::new(
            File::create(p).map_err(io_err("creating", p))?,
        )),
        None => None,
    };
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = read_some(&mut input, &mut buf).map_err(io_err("reading", src))?;
        if n == 0 {
            break;
        }
        gz.write_all(&buf[..n]).map_err(io_err("writing", gz_out))?;
        if let (Some(c), Some(p)) = (copy.as_mut(), copy_out) {
            c.write_all(&buf[..n]).map_err(io_err("writing", p))?;
        }
        total += n as u64;
        task.inc(n as u64);
    }
    let hw = gz.finish().map_err(io_err("writing", gz_out))?;
    let (digest, size, bw) = hw.finish();
    let file = bw
        .into_inner()
        .map_err(|e| io_err("writing", gz_out)(e.into_error()))?;
    file.sync_all().map_err(io_err("syncing", gz_out))?;
    if let (Some(c), Some(p)) = (copy, copy_out) {
        c.finish().map_err(io_err("writing", p))?;
    }
    Ok(Compressed {
        digest,
        size,
        uncompressed_size: total,
    })
}

/// Copies `src` to `dest` while hashing it: `(digest, size)`.
pub fn copy_hashed(src: &Path, dest: &Path, task: &Task) -> Result<(String, u64)> {
    let input = File::open(src).map_err(io_err("opening", src))?;
    let out = File::create(dest).map_err(io_err("creating", dest))?;
    let mut w = HashWriter::new(BufWriter::with_capacity(CHUNK, out));
    copy_with_progress(input, &mut w, task).map_err(|e| io_err("copying to", dest)(e))?;
    let (digest, size, bw) = w.finish();
    let file = bw
        .into_inner()
        .map_err(|e| io_err("writing", dest)(e.into_error()))?;
    file.sync_all().map_err(io_err("syncing", dest))?;
    Ok((digest, size))
}

/// `(digest, size)` of the file at `path`.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let input = File::open(path).map_err(io_err("opening", path))?;
    let mut w = HashWriter::new(io::sink());
    io::copy(&mut io::BufReader::with_capacity(CHUNK, input), &mut w)
        .map_err(io_err("reading", path))?;
    let (d, n, _) = w.finish();
    Ok((d, n))
}

/// Decompresses the gzip blob `src` into a sparse `dest`; returns the uncompressed size.
pub fn gunzip_file(src: &Path, dest: &Path, task: &Task) -> Result<u64> {
    let input = File::open(src).map_err(io_err("opening", src))?;
    // Multi-member: pigz and concatenated streams are valid gzip too.
    let mut gz = flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(CHUNK, input));
    let out = File::create(dest).map_err(io_err("creating", dest))?;
    let mut w = SparseWriter::new(out);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match gz.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ImageError::Io {
                    op: "decompressing",
                    path: src.to_path_buf(),
                    source: e,
                })
            }
        };
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).map_err(io_err("writing", dest))?;
        task.inc(n as u64);
    }
    w.finish().map_err(io_err("writing", dest))
}

/// Copies a reader into a writer in [`CHUNK`]s, counting progress.
pub fn copy_with_progress(mut r: impl Read, w: &mut impl Write, task: &Task) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = read_some(&mut r, &mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        w.write_all(&buf[..n])?;
        total += n as u64;
        task.inc(n as u64);
    }
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::progress::Progress;

    #[test]
    fn compress_copy_and_gunzip_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disk");
        // Zeros (holes on extraction), data, and a tail shorter than a block.
        let mut data = vec![0u8; 3 * SPARSE_BLOCK];
        data.extend((0..100_000u32).map(|i| (i % 251) as u8));
        data.extend(vec![0u8; 1000]);
        std::fs::write(&src, &data).unwrap();
        let task = Progress::silent().task("t", "disk", None);
        let gz = dir.path().join("disk.gz");
        let copy = dir.path().join("copy");
        let c = compress_file(&src, &gz, Some(&copy), &task).unwrap();
        assert_eq!(c.uncompressed_size, data.len() as u64);
        assert_eq!(hash_file(&gz).unwrap(), (c.digest.clone(), c.size));
        assert_eq!(std::fs::read(&copy).unwrap(), data);
        let out = dir.path().join("out");
        assert_eq!(gunzip_file(&gz, &out, &task).unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), data);
        // The same input compresses to the same bytes (reproducible digests).
        let gz2 = dir.path().join("disk2.gz");
        assert_eq!(
            compress_file(&src, &gz2, None, &task).unwrap().digest,
            c.digest
        );
    }

    #[test]
    fn extraction_is_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("zeros");
        std::fs::File::create(&src)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let task = Progress::silent().task("t", "zeros", None);
        let gz = dir.path().join("z.gz");
        compress_file(&src, &gz, None, &task).unwrap();
        let out = dir.path().join("out");
        assert_eq!(gunzip_file(&gz, &out, &task).unwrap(), 64 << 20);
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(
            meta.blocks() * 512 < (1 << 20),
            "holes expected, {} blocks",
            meta.blocks()
        );
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("bad.gz");
        std::fs::write(&gz, b"\x1f\x8b\x08\x00garbage").unwrap();
        let task = Progress::silent().task("t", "bad", None);
        assert!(gunzip_file(&gz, &dir.path().join("o"), &task).is_err());
    }

    #[test]
    fn temp_files_vanish_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempFile::new_in(dir.path(), "a");
        std::fs::write(t.path(), b"x").unwrap();
        let p = t.path().to_path_buf();
        drop(t);
        assert!(!p.exists());
        let t = TempFile::new_in(dir.path(), "b");
        std::fs::write(t.path(), b"y").unwrap();
        let dest = dir.path().join("dest");
        t.persist(&dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"y");
    }
}
