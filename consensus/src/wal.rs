//! The raft log as an append-only file (`DATA/wal/<first index>.wal` segments).
//!
//! Why not sled: every acknowledged append needs an fsync, and sled's `flush()` seals its write
//! buffer and hands the write to a thread pool that wakes all of its idle threads for every job;
//! on a small host that herd cost as much CPU as the rest of raft. Here an append is one
//! positional write and, on the flusher thread (`log_store`), one `fdatasync` shared by every
//! append that queued meanwhile.
//!
//! Record: `len: u32 LE | crc32(payload): u32 LE | payload` where payload is the bincode `Entry`.
//! Entries are contiguous by index; a segment file is named after its first index (20 digits).
//! On open, a torn record at the end of the last segment (a write cut by a crash; never
//! acknowledged, since the fsync had not returned) is cut off; a bad record anywhere else is
//! corruption and refuses to open.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::types::{decode, encode, Entry, LogId};

/// A new segment is started once the current one is this large.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Record header: length and checksum.
const HEADER: usize = 8;
/// Largest record accepted when reading (a batch entry is at most a few MiB).
const MAX_RECORD: usize = 256 * 1024 * 1024;

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// File system failure.
    #[error("raft log i/o on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// A record failed its checksum or did not decode, not at the tail of the log.
    #[error("raft log corrupt in {path} at byte {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An append that does not continue the log (a bug in the caller).
    #[error("raft log append of index {got} does not follow index {expected}")]
    Gap {
        /// The index the log expected next.
        expected: u64,
        /// The index offered.
        got: u64,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) first: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: File,
}

/// Where an entry lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    log_id: LogId,
}

/// The in-memory index, shared with readers.
#[derive(Debug, Default)]
pub(crate) struct Index {
    locs: VecDeque<Loc>,
    segments: BTreeMap<u64, Arc<Segment>>,
}

impl Index {
    fn first_index(&self) -> Option<u64> {
        self.locs.front().map(|l| l.log_id.index)
    }

    fn position(&self, index: u64) -> Option<usize> {
        let first = self.first_index()?;
        let pos = usize::try_from(index.checked_sub(first)?).ok()?;
        (pos < self.locs.len()).then_some(pos)
    }

    /// Last entry's log id.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.locs.back().map(|l| l.log_id)
    }

    /// Reads the entries with indexes in `[from, to)` that are present.
    pub(crate) fn read(&self, from: u64, to: u64) -> Result<Vec<Entry>, WalError> {
        let mut out = Vec::new();
        let Some(first) = self.first_index() else {
            return Ok(out);
        };
        let start = from.max(first);
        let mut buf = Vec::new();
        for index in start..to {
            let Some(pos) = self.position(index) else {
                break;
            };
            let loc = self.locs[pos];
            let Some(seg) = self.segments.get(&loc.segment) else {
                return Err(WalError::Corrupt {
                    path: PathBuf::from(format!("segment {}", loc.segment)),
                    offset: loc.offset,
                    reason: "index points at a missing segment".into(),
                });
            };
            buf.resize(loc.len as usize, 0);
            seg.file
                .read_exact_at(&mut buf, loc.offset + HEADER as u64)
                .map_err(io_at(&seg.path))?;
            let entry: Entry = decode(&buf).map_err(|e| WalError::Corrupt {
                path: seg.path.clone(),
                offset: loc.offset,
                reason: e.to_string(),
            })?;
            out.push(entry);
        }
        Ok(out)
    }
}

/// The writer side of the log; readers share its [`Index`].
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    index: Arc<RwLock<Index>>,
    /// The segment appends go to, and its length.
    current: Option<(Arc<Segment>, u64)>,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

fn open_segment(path: &Path, first: u64, create: bool) -> Result<Segment, WalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(io_at(path))?;
    Ok(Segment {
        first,
        path: path.to_path_buf(),
        file,
    })
}

/// Encodes one record.
fn record(entry: &Entry, out: &mut Vec<u8>) -> Result<u32, WalError> {
    let payload = encode(entry).map_err(|e| WalError::Corrupt {
        path: PathBuf::new(),
        offset: 0,
        reason: format!("encoding entry {}: {e}", entry.log_id.index),
    })?;
    let len = u32::try_from(payload.len()).map_err(|_| WalError::Corrupt {
        path: PathBuf::new(),
        offset: 0,
        reason: format!("entry {} is larger than 4 GiB", entry.log_id.index),
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(len)
}

/// Scans one segment; returns its entries' locations and the length of its valid prefix.
/// `Err` when a record is bad and `tolerate_tail` is false.
fn scan(seg: &Segment, tolerate_tail: bool) -> Result<(Vec<Loc>, u64), WalError> {
    let mut data = Vec::new();
    (&seg.file)
        .read_to_end(&mut data)
        .map_err(io_at(&seg.path))?;
    let mut locs = Vec::new();
    let mut offset = 0usize;
    while offset < data.len() {
        let problem = if data.len() - offset < HEADER {
            Some("truncated record header".to_string())
        } else {
            let len = u32::from_le_bytes([
                data[offset],
                data[offset + 1],
                data[offset + 2],
                data[offset + 3],
            ]) as usize;
            let crc = u32::from_le_bytes([
                data[offset + 4],
                data[offset + 5],
                data[offset + 6],
                data[offset + 7],
            ]);
            if len > MAX_RECORD || data.len() - offset - HEADER < len {
                Some(format!("record of {len} bytes runs past the end"))
            } else {
                let payload = &data[offset + HEADER..offset + HEADER + len];
                if crc32fast::hash(payload) != crc {
                    Some("checksum mismatch".to_string())
                } else {
                    match decode::<Entry>(payload) {
                        Ok(entry) => {
                            locs.push(Loc {
                                segment: seg.first,
                                offset: offset as u64,
                                len: len as u32,
                                log_id: entry.log_id,
                            });
                            offset += HEADER + len;
                            None
                        }
                        Err(e) => Some(e.to_string()),
                    }
                }
            }
        };
        if let Some(reason) = problem {
            if tolerate_tail {
                tracing::warn!(path = %seg.path.display(), offset, %reason, "cutting off a torn record at the end of the raft log");
                return Ok((locs, offset as u64));
            }
            return Err(WalError::Corrupt {
                path: seg.path.clone(),
                offset: offset as u64,
                reason,
            });
        }
    }
    Ok((locs, offset as u64))
}

impl Wal {
    /// Opens (creating) the log in `dir`; entries at or below `purged` are dropped.
    pub(crate) fn open(dir: &Path, purged: Option<LogId>) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let mut firsts = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_at(dir))? {
            let item = item.map_err(io_at(dir))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".wal") {
                if let Ok(first) = stem.parse::<u64>() {
                    firsts.push(first);
                }
            }
        }
        firsts.sort_unstable();
        let mut index = Index::default();
        let mut current = None;
        for (i, first) in firsts.iter().enumerate() {
            let last_segment = i + 1 == firsts.len();
            let path = dir.join(segment_name(*first));
            let seg = open_segment(&path, *first, false)?;
            let (locs, valid) = scan(&seg, last_segment)?;
            if last_segment {
                let len = seg.file.metadata().map_err(io_at(&path))?.len();
                if valid < len {
                    seg.file.set_len(valid).map_err(io_at(&path))?;
                    seg.file.sync_all().map_err(io_at(&path))?;
                }
            }
            for loc in locs {
                if let Some(prev) = index.locs.back() {
                    if loc.log_id.index != prev.log_id.index + 1 {
                        return Err(WalError::Corrupt {
                            path: path.clone(),
                            offset: loc.offset,
                            reason: format!(
                                "index {} follows index {}",
                                loc.log_id.index, prev.log_id.index
                            ),
                        });
                    }
                }
                index.locs.push_back(loc);
            }
            let seg = Arc::new(seg);
            index.segments.insert(*first, seg.clone());
            if last_segment {
                current = Some((seg, valid));
            }
        }
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            index: Arc::new(RwLock::new(index)),
            current,
        };
        if let Some(p) = purged {
            wal.purge(p.index)?;
        }
        Ok(wal)
    }

    /// The index shared with readers.
    pub(crate) fn index(&self) -> Arc<RwLock<Index>> {
        self.index.clone()
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Last entry's log id.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.read_index().last_log_id()
    }

    /// Entries with indexes in `[from, to)`.
    pub(crate) fn read(&self, from: u64, to: u64) -> Result<Vec<Entry>, WalError> {
        self.read_index().read(from, to)
    }

    /// Writes `entries` (not yet durable; see [`Wal::sync_target`]). They must continue the log.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        let Some(first_new) = entries.first() else {
            return Ok(());
        };
        if let Some(last) = self.last_log_id() {
            if first_new.log_id.index != last.index + 1 {
                return Err(WalError::Gap {
                    expected: last.index + 1,
                    got: first_new.log_id.index,
                });
            }
        }
        let roll = match &self.current {
            None => true,
            Some((_, len)) => *len >= SEGMENT_BYTES,
        };
        if roll {
            self.start_segment(first_new.log_id.index)?;
        }
        let Some((seg, len)) = self.current.as_mut() else {
            return Err(WalError::Io {
                path: self.dir.clone(),
                source: io::Error::other("no segment to append to"),
            });
        };
        let mut buf = Vec::new();
        let mut locs = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 && entry.log_id.index != entries[i - 1].log_id.index + 1 {
                return Err(WalError::Gap {
                    expected: entries[i - 1].log_id.index + 1,
                    got: entry.log_id.index,
                });
            }
            let offset = *len + buf.len() as u64;
            let rec_len = record(entry, &mut buf)?;
            locs.push(Loc {
                segment: seg.first,
                offset,
                len: rec_len,
                log_id: entry.log_id,
            });
        }
        seg.file
            .write_all_at(&buf, *len)
            .map_err(io_at(&seg.path))?;
        *len += buf.len() as u64;
        self.write_index().locs.extend(locs);
        Ok(())
    }

    /// The file whose `fdatasync` makes every append so far durable.
    pub(crate) fn sync_target(&self) -> Option<Arc<Segment>> {
        self.current.as_ref().map(|(s, _)| s.clone())
    }

    fn start_segment(&mut self, first: u64) -> Result<(), WalError> {
        if let Some((old, _)) = &self.current {
            // Appends to the old segment must be durable before the new one can be.
            old.file.sync_data().map_err(io_at(&old.path))?;
        }
        let path = self.dir.join(segment_name(first));
        let seg = Arc::new(open_segment(&path, first, true)?);
        seg.file.set_len(0).map_err(io_at(&path))?;
        sync_dir(&self.dir)?;
        self.write_index().segments.insert(first, seg.clone());
        self.current = Some((seg, 0));
        Ok(())
    }

    /// Removes the entries from `index` on, durably.
    pub(crate) fn truncate(&mut self, index: u64) -> Result<(), WalError> {
        let mut idx = self.write_index();
        let Some(pos) = idx.position(index) else {
            return Ok(());
        };
        let loc = idx.locs[pos];
        idx.locs.truncate(pos);
        // Later segments go first (newest first), so a crash never leaves a hole before them.
        let later: Vec<u64> = idx
            .segments
            .range(loc.segment + 1..)
            .map(|(k, _)| *k)
            .collect();
        for first in later.iter().rev() {
            if let Some(seg) = idx.segments.remove(first) {
                std::fs::remove_file(&seg.path).map_err(io_at(&seg.path))?;
            }
        }
        let Some(seg) = idx.segments.get(&loc.segment).cloned() else {
            return Err(WalError::Corrupt {
                path: self.dir.clone(),
                offset: loc.offset,
                reason: "truncating into a missing segment".into(),
            });
        };
        drop(idx);
        seg.file.set_len(loc.offset).map_err(io_at(&seg.path))?;
        seg.file.sync_all().map_err(io_at(&seg.path))?;
        sync_dir(&self.dir)?;
        self.current = Some((seg, loc.offset));
        Ok(())
    }

    /// Forgets the entries up to and including `upto` and deletes segments holding only those.
    /// The caller records the purge point durably first.
    pub(crate) fn purge(&mut self, upto: u64) -> Result<(), WalError> {
        let mut idx = self.write_index();
        while idx.locs.front().is_some_and(|l| l.log_id.index <= upto) {
            idx.locs.pop_front();
        }
        let current = self.current.as_ref().map(|(s, _)| s.first);
        // A segment can go when the next one starts at or below upto + 1.
        let firsts: Vec<u64> = idx.segments.keys().copied().collect();
        let mut removed = false;
        for pair in firsts.windows(2) {
            let (this, next) = (pair[0], pair[1]);
            if next <= upto.saturating_add(1) && Some(this) != current {
                if let Some(seg) = idx.segments.remove(&this) {
                    std::fs::remove_file(&seg.path).map_err(io_at(&seg.path))?;
                    removed = true;
                }
            }
        }
        drop(idx);
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Appends and makes durable at once (tools and imports; the node uses the flusher).
    pub(crate) fn append_sync(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        self.append(entries)?;
        if let Some(seg) = self.sync_target() {
            seg.file.sync_data().map_err(io_at(&seg.path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64, size: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command(vec![index as u8; size])),
        }
    }

    fn indexes(wal: &Wal) -> Vec<u64> {
        wal.read(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[test]
    fn append_reopen_truncate_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None).unwrap();
        wal.append_sync(&(1..=10).map(|i| entry(i, 100)).collect::<Vec<_>>())
            .unwrap();
        assert!(matches!(
            wal.append(&[entry(12, 1)]),
            Err(WalError::Gap {
                expected: 11,
                got: 12
            })
        ));
        drop(wal);
        let mut wal = Wal::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&wal), (1..=10).collect::<Vec<_>>());
        assert_eq!(wal.read(4, 6).unwrap()[1], entry(5, 100));
        wal.truncate(8).unwrap();
        assert_eq!(wal.last_log_id().unwrap().index, 7);
        wal.append_sync(&[entry(8, 5)]).unwrap();
        wal.purge(3).unwrap();
        drop(wal);
        let last_purged = LogId::new(CommittedLeaderId::new(1, 1), 3);
        let wal = Wal::open(dir.path(), Some(last_purged)).unwrap();
        assert_eq!(indexes(&wal), (4..=8).collect::<Vec<_>>());
        assert_eq!(wal.read(8, 9).unwrap()[0], entry(8, 5));
    }

    #[test]
    fn torn_tail_is_cut_but_corruption_inside_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None).unwrap();
        wal.append_sync(&(1..=5).map(|i| entry(i, 50)).collect::<Vec<_>>())
            .unwrap();
        let path = dir.path().join(segment_name(1));
        drop(wal);
        // A half-written sixth record.
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2]);
        std::fs::write(&path, &bytes).unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&wal), (1..=5).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good as u64);
        drop(wal);
        // A flipped byte in the second record, followed by a later segment: corruption.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[70] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(dir.path().join(segment_name(6)), []).unwrap();
        assert!(matches!(
            Wal::open(dir.path(), None),
            Err(WalError::Corrupt { .. })
        ));
    }

    #[test]
    fn segments_roll_and_purge_deletes_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None).unwrap();
        // Force small segments by starting new ones by hand.
        wal.append_sync(&(1..=3).map(|i| entry(i, 10)).collect::<Vec<_>>())
            .unwrap();
        wal.start_segment(4).unwrap();
        wal.append_sync(&(4..=6).map(|i| entry(i, 10)).collect::<Vec<_>>())
            .unwrap();
        wal.start_segment(7).unwrap();
        wal.append_sync(&(7..=9).map(|i| entry(i, 10)).collect::<Vec<_>>())
            .unwrap();
        wal.purge(5).unwrap();
        assert!(!dir.path().join(segment_name(1)).exists());
        assert!(dir.path().join(segment_name(4)).exists());
        assert_eq!(indexes(&wal), (6..=9).collect::<Vec<_>>());
        // Truncating into segment 4 deletes segment 7.
        wal.truncate(6).unwrap();
        assert!(!dir.path().join(segment_name(7)).exists());
        assert_eq!(wal.last_log_id(), None);
        wal.append_sync(&[entry(6, 1)]).unwrap();
        drop(wal);
        let purged = LogId::new(CommittedLeaderId::new(1, 1), 5);
        let wal = Wal::open(dir.path(), Some(purged)).unwrap();
        assert_eq!(indexes(&wal), vec![6]);
    }
}
