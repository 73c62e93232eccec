//! A small ISO 9660 image writer and reader with Joliet and Rock Ridge names.
//!
//! Written for the cloud-init NoCloud seed disk (`cidata`): a flat root directory holding a few
//! small files. It is done here rather than by running genisoimage so a node needs no extra tool
//! at run time and the bytes are deterministic (same files and timestamp, same image), which
//! keeps seed disks cacheable and comparable.
//!
//! Each image carries three views of the same root directory, like `genisoimage -J -r`:
//! - the ISO 9660 primary tree, whose names must be upper-case 8.3 d-characters
//!   (`user-data` becomes `USER_DAT.;1`), for readers that know nothing else;
//! - Rock Ridge `NM`/`PX` entries on that primary tree, carrying the exact names and POSIX modes
//!   (Linux prefers Rock Ridge when it finds it);
//! - a Joliet supplementary tree with the exact names in UCS-2 (what Linux uses with `norock`,
//!   and what Windows uses).
//!
//! Layout, in 2048-byte sectors: 0-15 system area (zero), 16 primary volume descriptor,
//! 17 Joliet descriptor, 18 set terminator, 19-22 the L and M path tables of both trees,
//! 23.. Rock Ridge continuation area, primary root directory, Joliet root directory, then the
//! file data, each file starting on a sector and shared by both trees.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use thiserror::Error;

/// Bytes per sector (and per logical block) in every image written or read here.
pub const SECTOR_SIZE: usize = 2048;
/// Largest image the writer builds and the most file data the reader extracts, in bytes.
pub const MAX_IMAGE_SIZE: u64 = 1 << 30;
/// Most files in the root directory.
pub const MAX_FILES: usize = 1024;
/// Longest file name in UTF-16 units: the Joliet limit.
pub const MAX_NAME_LEN: usize = 64;
/// Longest volume id: the Joliet descriptor holds 16 UCS-2 characters.
pub const MAX_VOLUME_ID_LEN: usize = 16;

const SECTOR: u64 = SECTOR_SIZE as u64;
const PVD_LBA: u64 = 16;
const PVD_L_PATH_LBA: u32 = 19;
const PVD_M_PATH_LBA: u32 = 20;
const SVD_L_PATH_LBA: u32 = 21;
const SVD_M_PATH_LBA: u32 = 22;
const CONTINUATION_LBA: u32 = 23;
/// A path table holding only the root: 8 header bytes, a 1-byte identifier, 1 pad byte.
const PATH_TABLE_SIZE: u32 = 10;
/// UCS-2 level 3, as genisoimage writes; readers accept any of `%/@`, `%/C`, `%/E`.
const JOLIET_ESCAPE: &[u8; 3] = b"%/E";
const FLAG_DIRECTORY: u8 = 0x02;
const FLAG_MULTI_EXTENT: u8 = 0x80;
/// Rock Ridge modes, as `genisoimage -r` sets them: read-only, owned by root.
const MODE_DIRECTORY: u32 = 0o040_555;
const MODE_FILE: u32 = 0o100_444;
const RRIP_ID: &[u8] = b"RRIP_1991A";
const RRIP_DESCRIPTOR: &[u8] =
    b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const RRIP_SOURCE: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";
const APPLICATION_ID: &str = "TUGBOAT";
/// Directory records store the year as an offset from 1900 in one byte.
const MIN_YEAR: i64 = 1900;
const MAX_YEAR: i64 = 2155;
/// Bounds for the reader, so hostile images cannot make it loop or allocate without end.
const MAX_DESCRIPTORS: u64 = 64;
const MAX_CONTINUATIONS: usize = 16;

/// Why an image could not be built or read.
#[derive(Debug, Error)]
pub enum IsoError {
    /// The volume id is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    #[error("invalid volume id {id:?}: {reason}")]
    InvalidVolumeId {
        /// The rejected volume id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file name cannot be stored (empty, too long, or a character Joliet forbids).
    #[error("invalid file name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same name was added twice.
    #[error("duplicate file name {0:?}")]
    DuplicateName(String),
    /// More than [`MAX_FILES`] files.
    #[error("too many files (at most {max})")]
    TooManyFiles {
        /// The limit.
        max: usize,
    },
    /// The image would be (or the extracted data is) larger than [`MAX_IMAGE_SIZE`].
    #[error("image too large: {size} bytes (at most {max})")]
    TooLarge {
        /// The size reached.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The timestamp is outside the years 1900-2155 that directory records can hold.
    #[error("timestamp {0} is outside the years 1900-2155")]
    TimestampOutOfRange(i64),
    /// The image being read is truncated or inconsistent.
    #[error("malformed ISO 9660 image: {0}")]
    Malformed(String),
    /// The image being read uses a feature this reader does not implement.
    #[error("unsupported ISO 9660 image: {0}")]
    Unsupported(String),
    /// Writing the image failed.
    #[error("writing ISO 9660 image: {0}")]
    Io(#[from] std::io::Error),
}

fn malformed(what: impl Into<String>) -> IsoError {
    IsoError::Malformed(what.into())
}

/// A calendar time in UTC, as both ISO 9660 date formats need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

/// The default timestamp, the Unix epoch: fixed so images are reproducible.
const EPOCH: DateTime = DateTime {
    year: 1970,
    month: 1,
    day: 1,
    hour: 0,
    minute: 0,
    second: 0,
};

impl DateTime {
    /// Converts Unix seconds (UTC) with Howard Hinnant's `civil_from_days`.
    fn from_unix(secs: i64) -> Option<DateTime> {
        // Far outside 1900..=2155 anyway; bounding first keeps the arithmetic from overflowing.
        if !(-(1i64 << 40)..=(1i64 << 40)).contains(&secs) {
            return None;
        }
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
            return None;
        }
        // All of these are below 256 by construction.
        Some(DateTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        })
    }

    /// The 7-byte form of directory records (ECMA-119 9.1.5), offset from UTC 0.
    fn record_form(&self) -> [u8; 7] {
        [
            (self.year - MIN_YEAR) as u8,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// The 17-byte form of volume descriptors (ECMA-119 8.4.26.1), offset from UTC 0.
    fn descriptor_form(&self) -> [u8; 17] {
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(&text.as_bytes()[..16]);
        out
    }
}

/// The 17-byte "not specified" date: sixteen ASCII zeros and a zero offset.
const NO_DATE: [u8; 17] = *b"0000000000000000\0";

/// Builds an ISO 9660 image with a flat root directory, Joliet and Rock Ridge names.
///
/// Files are kept sorted by name, so the image does not depend on the order they were added.
#[derive(Debug, Clone)]
pub struct IsoBuilder {
    volume_id: String,
    time: DateTime,
    files: BTreeMap<String, Vec<u8>>,
    /// Sector-rounded sum of the file sizes, to refuse oversized images early.
    data_bytes: u64,
}

impl IsoBuilder {
    /// Starts an empty image labelled `volume_id` (1-16 characters of `[A-Za-z0-9_-]`).
    pub fn new(volume_id: &str) -> Result<Self, IsoError> {
        validate_volume_id(volume_id)?;
        Ok(IsoBuilder {
            volume_id: volume_id.to_owned(),
            time: EPOCH,
            files: BTreeMap::new(),
            data_bytes: 0,
        })
    }

    /// Sets the timestamp (Unix seconds, UTC) of the volume and its files; default the epoch.
    pub fn set_timestamp(&mut self, unix_seconds: i64) -> Result<(), IsoError> {
        self.time =
            DateTime::from_unix(unix_seconds).ok_or(IsoError::TimestampOutOfRange(unix_seconds))?;
        Ok(())
    }

    /// Adds a file to the root directory under `name` (the exact name Joliet and Rock Ridge show).
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), IsoError> {
        validate_name(name)?;
        if self.files.contains_key(name) {
            return Err(IsoError::DuplicateName(name.to_owned()));
        }
        if self.files.len() >= MAX_FILES {
            return Err(IsoError::TooManyFiles { max: MAX_FILES });
        }
        let size = self
            .data_bytes
            .saturating_add(sectors(data.len() as u64) * SECTOR);
        if size > MAX_IMAGE_SIZE {
            return Err(IsoError::TooLarge {
                size,
                max: MAX_IMAGE_SIZE,
            });
        }
        self.data_bytes = size;
        self.files.insert(name.to_owned(), data);
        Ok(())
    }

    /// Writes the image to `w`.
    pub fn write_to<W: Write>(&self, mut w: W) -> Result<(), IsoError> {
        let plan = self.plan()?;
        let mut written = 0u64;
        let mut put = |bytes: &[u8]| -> Result<(), IsoError> {
            w.write_all(bytes)?;
            written += bytes.len() as u64;
            // Everything is sector-aligned: pad each piece to the next sector boundary.
            let pad = (SECTOR - written % SECTOR) % SECTOR;
            w.write_all(&ZEROS[..pad as usize])?;
            written += pad;
            Ok(())
        };
        for _ in 0..PVD_LBA {
            put(&ZEROS)?;
        }
        put(&self.volume_descriptor(Tree::Primary, &plan))?;
        put(&self.volume_descriptor(Tree::Joliet, &plan))?;
        put(&terminator())?;
        put(&path_table(plan.primary_dir_lba, false))?;
        put(&path_table(plan.primary_dir_lba, true))?;
        put(&path_table(plan.joliet_dir_lba, false))?;
        put(&path_table(plan.joliet_dir_lba, true))?;
        put(&plan.continuation)?;
        put(&plan.primary_dir)?;
        put(&plan.joliet_dir)?;
        for data in self.files.values().filter(|d| !d.is_empty()) {
            put(data)?;
        }
        debug_assert_eq!(written, u64::from(plan.total_sectors) * SECTOR);
        w.flush()?;
        Ok(())
    }

    /// Returns the image as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, IsoError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Places everything: directories first (their sizes do not depend on where files go),
    /// then the files, then the directories again with the real file locations.
    fn plan(&self) -> Result<Plan, IsoError> {
        let mut entries = entries(&self.files);
        let (primary_size, continuation_size) = {
            let (dir, cont) = primary_dir(&entries, 0, 0, &self.time);
            (dir.len() as u64, cont.len() as u64)
        };
        let joliet_size = joliet_dir(&entries, 0, 0, &self.time).len() as u64;
        let primary_lba = u64::from(CONTINUATION_LBA) + continuation_size / SECTOR;
        let joliet_lba = primary_lba + primary_size / SECTOR;
        let mut next = joliet_lba + joliet_size / SECTOR;
        for e in &mut entries {
            // An empty file gets no sector; like genisoimage, point it at the next data sector.
            e.lba = next;
            next += sectors(e.data_len);
        }
        let total = next * SECTOR;
        if total > MAX_IMAGE_SIZE {
            return Err(IsoError::TooLarge {
                size: total,
                max: MAX_IMAGE_SIZE,
            });
        }
        // Below 2^19 sectors now, so every location and size fits its u32 field.
        let (primary_dir, continuation) = primary_dir(
            &entries,
            primary_lba as u32,
            primary_size as u32,
            &self.time,
        );
        let joliet_dir = joliet_dir(&entries, joliet_lba as u32, joliet_size as u32, &self.time);
        debug_assert_eq!(primary_dir.len() as u64, primary_size);
        debug_assert_eq!(joliet_dir.len() as u64, joliet_size);
        debug_assert_eq!(continuation.len() as u64, continuation_size);
        Ok(Plan {
            total_sectors: next as u32,
            continuation,
            primary_dir,
            primary_dir_lba: primary_lba as u32,
            joliet_dir,
            joliet_dir_lba: joliet_lba as u32,
        })
    }

    /// A primary (type 1) or Joliet supplementary (type 2) volume descriptor, ECMA-119 8.4.
    fn volume_descriptor(&self, tree: Tree, plan: &Plan) -> Vec<u8> {
        let mut d = vec![0u8; SECTOR_SIZE];
        let (kind, root_lba, root_size, l_path, m_path) = match tree {
            Tree::Primary => (
                1,
                plan.primary_dir_lba,
                plan.primary_dir.len(),
                PVD_L_PATH_LBA,
                PVD_M_PATH_LBA,
            ),
            Tree::Joliet => (
                2,
                plan.joliet_dir_lba,
                plan.joliet_dir.len(),
                SVD_L_PATH_LBA,
                SVD_M_PATH_LBA,
            ),
        };
        d[0] = kind;
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        put_text(&mut d[8..40], "", tree); // system identifier
        put_text(&mut d[40..72], &self.volume_id, tree);
        d[80..88].copy_from_slice(&both32(plan.total_sectors));
        if tree == Tree::Joliet {
            d[88..91].copy_from_slice(JOLIET_ESCAPE);
        }
        d[120..124].copy_from_slice(&both16(1)); // volume set size
        d[124..128].copy_from_slice(&both16(1)); // volume sequence number
        d[128..132].copy_from_slice(&both16(SECTOR_SIZE as u16));
        d[132..140].copy_from_slice(&both32(PATH_TABLE_SIZE));
        d[140..144].copy_from_slice(&l_path.to_le_bytes());
        d[148..152].copy_from_slice(&m_path.to_be_bytes());
        let root = dir_record(
            root_lba,
            root_size as u32,
            FLAG_DIRECTORY,
            &[0],
            &[],
            &self.time,
        );
        d[156..190].copy_from_slice(&root);
        put_text(&mut d[190..318], "", tree); // volume set
        put_text(&mut d[318..446], "", tree); // publisher
        put_text(&mut d[446..574], "", tree); // data preparer
        put_text(&mut d[574..702], APPLICATION_ID, tree);
        put_text(&mut d[702..739], "", tree); // copyright file
        put_text(&mut d[739..776], "", tree); // abstract file
        put_text(&mut d[776..813], "", tree); // bibliographic file
        let date = self.time.descriptor_form();
        d[813..830].copy_from_slice(&date); // creation
        d[830..847].copy_from_slice(&date); // modification
        d[847..864].copy_from_slice(&NO_DATE); // expiration
        d[864..881].copy_from_slice(&NO_DATE); // effective
        d[881] = 1; // file structure version
        d
    }
}

static ZEROS: [u8; SECTOR_SIZE] = [0u8; SECTOR_SIZE];

/// Where everything goes, and the directory bytes that depend on it.
struct Plan {
    total_sectors: u32,
    continuation: Vec<u8>,
    primary_dir: Vec<u8>,
    primary_dir_lba: u32,
    joliet_dir: Vec<u8>,
    joliet_dir_lba: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    Primary,
    Joliet,
}

/// One file as both trees see it.
struct Entry<'a> {
    name: &'a str,
    data_len: u64,
    primary_id: Vec<u8>,
    /// Sort key of the primary tree: the name and extension, space padded (ECMA-119 9.3).
    primary_key: Vec<u8>,
    joliet_units: Vec<u16>,
    lba: u64,
}

fn entries(files: &BTreeMap<String, Vec<u8>>) -> Vec<Entry<'_>> {
    let mut used = HashSet::new();
    files
        .iter()
        .map(|(name, data)| {
            let (base, ext) = primary_name(name, &used);
            used.insert((base.clone(), ext.clone()));
            let primary_id = format!("{base}.{ext};1").into_bytes();
            let primary_key = format!("{base:<8}{ext:<3}").into_bytes();
            Entry {
                name,
                data_len: data.len() as u64,
                primary_id,
                primary_key,
                joliet_units: name.encode_utf16().collect(),
                lba: 0,
            }
        })
        .collect()
}

/// Maps a name to a unique 8.3 d-character name: `user-data` → (`USER_DAT`, ``).
fn primary_name(name: &str, used: &HashSet<(String, String)>) -> (String, String) {
    fn d_chars(s: &str, max: usize) -> String {
        s.chars()
            .take(max)
            .map(|c| match c.to_ascii_uppercase() {
                c @ ('A'..='Z' | '0'..='9' | '_') => c,
                _ => '_',
            })
            .collect()
    }
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let mut base = d_chars(base, 8);
    let ext = d_chars(ext, 3);
    if base.is_empty() {
        base.push('_');
    }
    let mut candidate = base.clone();
    let mut n = 1usize;
    // MAX_FILES bounds this loop: at most that many names are taken.
    while used.contains(&(candidate.clone(), ext.clone())) {
        let suffix = n.to_string();
        let keep = 8usize.saturating_sub(suffix.len());
        candidate = base.chars().take(keep).collect::<String>() + &suffix;
        n += 1;
    }
    (candidate, ext)
}

/// Compares identifiers as ECMA-119 9.3 orders them: the shorter padded with spaces.
fn cmp_padded(a: &[u16], b: &[u16]) -> Ordering {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = a.get(i).copied().unwrap_or(0x20);
            let y = b.get(i).copied().unwrap_or(0x20);
            x.cmp(&y)
        })
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.cmp(b))
}

/// The primary root directory with Rock Ridge entries, and its continuation area.
fn primary_dir(entries: &[Entry], lba: u32, size: u32, time: &DateTime) -> (Vec<u8>, Vec<u8>) {
    let mut cont = Continuation::default();
    let mut records = Vec::with_capacity(entries.len() + 2);
    // "." of the root starts the SUSP area: SP first (SUSP 5.3), and the ER entry that names
    // Rock Ridge, too long for the record, goes to the continuation area.
    let mut dot = susp_sp();
    dot.extend(susp_px(MODE_DIRECTORY, 2));
    dot.extend(cont.push(&susp_er()));
    records.push(dir_record(lba, size, FLAG_DIRECTORY, &[0], &dot, time));
    records.push(dir_record(
        lba,
        size,
        FLAG_DIRECTORY,
        &[1],
        &susp_px(MODE_DIRECTORY, 2),
        time,
    ));
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by(|a, b| a.primary_key.cmp(&b.primary_key));
    for e in order {
        let mut su = susp_px(MODE_FILE, 1);
        su.extend(susp_nm(e.name.as_bytes()));
        if record_len(e.primary_id.len(), su.len()) > 255 {
            // Long UTF-8 names do not fit in the 255-byte record: continue elsewhere.
            su = cont.push(&su);
        }
        records.push(dir_record(
            e.lba as u32,
            e.data_len as u32,
            0,
            &e.primary_id,
            &su,
            time,
        ));
    }
    (pack(&records), cont.finish())
}

/// The Joliet root directory: UCS-2 big-endian names, no version suffix (as genisoimage).
fn joliet_dir(entries: &[Entry], lba: u32, size: u32, time: &DateTime) -> Vec<u8> {
    let mut records = Vec::with_capacity(entries.len() + 2);
    records.push(dir_record(lba, size, FLAG_DIRECTORY, &[0], &[], time));
    records.push(dir_record(lba, size, FLAG_DIRECTORY, &[1], &[], time));
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by(|a, b| cmp_padded(&a.joliet_units, &b.joliet_units));
    for e in order {
        let id: Vec<u8> = e
            .joliet_units
            .iter()
            .flat_map(|u| u.to_be_bytes())
            .collect();
        records.push(dir_record(
            e.lba as u32,
            e.data_len as u32,
            0,
            &id,
            &[],
            time,
        ));
    }
    pack(&records)
}

/// Length of a directory record: 33 fixed bytes, the identifier, a pad byte after an
/// even-length identifier, the system use area, and a final pad to keep it even.
fn record_len(id_len: usize, su_len: usize) -> usize {
    let len = 33 + id_len + usize::from(id_len.is_multiple_of(2)) + su_len;
    len + len % 2
}

/// A directory record, ECMA-119 9.1.
fn dir_record(
    lba: u32,
    size: u32,
    flags: u8,
    id: &[u8],
    system_use: &[u8],
    time: &DateTime,
) -> Vec<u8> {
    let len = record_len(id.len(), system_use.len());
    debug_assert!(len <= 255);
    let mut r = Vec::with_capacity(len);
    r.push(len as u8);
    r.push(0); // extended attribute record length
    r.extend(both32(lba));
    r.extend(both32(size));
    r.extend(time.record_form());
    r.push(flags);
    r.push(0); // file unit size (not interleaved)
    r.push(0); // interleave gap
    r.extend(both16(1)); // volume sequence number
    r.push(id.len() as u8);
    r.extend(id);
    if id.len().is_multiple_of(2) {
        r.push(0);
    }
    r.extend(system_use);
    r.resize(len, 0);
    r
}

/// Lays records out in sectors; a record never crosses a sector boundary (ECMA-119 6.8.1.1).
fn pack(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let used = out.len() % SECTOR_SIZE;
        if used + r.len() > SECTOR_SIZE {
            out.resize(out.len() + SECTOR_SIZE - used, 0);
        }
        out.extend(r);
    }
    let rounded = (sectors(out.len() as u64).max(1) * SECTOR) as usize;
    out.resize(rounded, 0);
    out
}

/// The Rock Ridge continuation area: SUSP entries that did not fit their directory record.
#[derive(Default)]
struct Continuation {
    data: Vec<u8>,
}

impl Continuation {
    /// Stores `entries` (each at most 255 bytes) within one sector; returns the CE entry
    /// pointing at them.
    fn push(&mut self, entries: &[u8]) -> Vec<u8> {
        let used = self.data.len() % SECTOR_SIZE;
        if used + entries.len() > SECTOR_SIZE {
            self.data.resize(self.data.len() + SECTOR_SIZE - used, 0);
        }
        let lba = CONTINUATION_LBA + (self.data.len() / SECTOR_SIZE) as u32;
        let offset = (self.data.len() % SECTOR_SIZE) as u32;
        self.data.extend(entries);
        susp_ce(lba, offset, entries.len() as u32)
    }

    fn finish(mut self) -> Vec<u8> {
        let rounded = (sectors(self.data.len() as u64) * SECTOR) as usize;
        self.data.resize(rounded, 0);
        self.data
    }
}

/// SUSP "SP": marks the use of the System Use Sharing Protocol, no bytes skipped.
fn susp_sp() -> Vec<u8> {
    vec![b'S', b'P', 7, 1, 0xBE, 0xEF, 0]
}

/// SUSP "CE": where the system use area continues.
fn susp_ce(lba: u32, offset: u32, len: u32) -> Vec<u8> {
    let mut e = vec![b'C', b'E', 28, 1];
    e.extend(both32(lba));
    e.extend(both32(offset));
    e.extend(both32(len));
    e
}

/// SUSP "ER": declares the Rock Ridge extension (RRIP 1991A, which genisoimage writes).
fn susp_er() -> Vec<u8> {
    let len = 8 + RRIP_ID.len() + RRIP_DESCRIPTOR.len() + RRIP_SOURCE.len();
    let mut e = vec![
        b'E',
        b'R',
        len as u8,
        1,
        RRIP_ID.len() as u8,
        RRIP_DESCRIPTOR.len() as u8,
        RRIP_SOURCE.len() as u8,
        1,
    ];
    e.extend(RRIP_ID);
    e.extend(RRIP_DESCRIPTOR);
    e.extend(RRIP_SOURCE);
    e
}

/// Rock Ridge "PX" (1991A form, without inode number): mode, links, uid 0, gid 0.
fn susp_px(mode: u32, links: u32) -> Vec<u8> {
    let mut e = vec![b'P', b'X', 36, 1];
    e.extend(both32(mode));
    e.extend(both32(links));
    e.extend(both32(0));
    e.extend(both32(0));
    e
}

/// Rock Ridge "NM": the exact name; at most 192 bytes, since names are 64 UCS-2 characters.
fn susp_nm(name: &[u8]) -> Vec<u8> {
    let mut e = vec![b'N', b'M', (5 + name.len()) as u8, 1, 0];
    e.extend(name);
    e
}

/// A path table holding only the root directory (ECMA-119 9.4), little or big endian.
fn path_table(root_lba: u32, big_endian: bool) -> Vec<u8> {
    let mut t = vec![1, 0];
    if big_endian {
        t.extend(root_lba.to_be_bytes());
        t.extend(1u16.to_be_bytes());
    } else {
        t.extend(root_lba.to_le_bytes());
        t.extend(1u16.to_le_bytes());
    }
    t.extend([0, 0]); // root identifier, then the pad to an even length
    t
}

/// The volume descriptor set terminator.
fn terminator() -> Vec<u8> {
    let mut d = vec![0u8; SECTOR_SIZE];
    d[0] = 255;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d
}

/// Fills a descriptor text field: ASCII padded with spaces, or for Joliet UCS-2 big endian
/// padded with UCS-2 spaces (and a final zero byte in odd-sized fields, as genisoimage).
fn put_text(field: &mut [u8], text: &str, tree: Tree) {
    match tree {
        Tree::Primary => {
            field.fill(b' ');
            for (dst, src) in field.iter_mut().zip(text.bytes()) {
                *dst = src;
            }
        }
        Tree::Joliet => {
            field.fill(0);
            let units = text.encode_utf16().chain(std::iter::repeat(0x20));
            for (dst, unit) in field.chunks_exact_mut(2).zip(units) {
                dst.copy_from_slice(&unit.to_be_bytes());
            }
        }
    }
}

fn both16(v: u16) -> [u8; 4] {
    let (le, be) = (v.to_le_bytes(), v.to_be_bytes());
    [le[0], le[1], be[0], be[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (le, be) = (v.to_le_bytes(), v.to_be_bytes());
    [le[0], le[1], le[2], le[3], be[0], be[1], be[2], be[3]]
}

fn sectors(bytes: u64) -> u64 {
    bytes.div_ceil(SECTOR)
}

fn validate_volume_id(id: &str) -> Result<(), IsoError> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id.len() > MAX_VOLUME_ID_LEN {
        Some("longer than 16 characters")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Some("only A-Z, a-z, 0-9, '_' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IsoError::InvalidVolumeId {
            id: id.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks that `name` is a valid Joliet name (which makes it a valid Rock Ridge name too).
fn validate_name(name: &str) -> Result<(), IsoError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name.encode_utf16().count() > MAX_NAME_LEN {
        Some("longer than 64 characters")
    } else if name.contains('/') {
        Some("contains '/' (only a flat root directory is supported)")
    } else if name.chars().any(|c| c.is_control()) {
        Some("contains a control character")
    } else if name
        .chars()
        .any(|c| matches!(c, '*' | ':' | ';' | '?' | '\\'))
    {
        Some("contains one of * : ; ? \\ which Joliet forbids")
    } else if name.chars().any(|c| u32::from(c) > 0xFFFF) {
        Some("contains a character outside the Basic Multilingual Plane (Joliet is UCS-2)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IsoError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// What [`read_iso`] found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoContents {
    /// The volume id (label), from the Joliet descriptor when there is one.
    pub volume_id: String,
    /// Whether names came from the Joliet tree.
    pub joliet: bool,
    /// The regular files of the root directory, in directory order.
    pub files: Vec<IsoFile>,
}

impl IsoContents {
    /// The data of the file called `name`, if there is one.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.data.as_slice())
    }
}

/// A file of the root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoFile {
    /// Its name: Joliet, else Rock Ridge, else the ISO 9660 name without `;1`.
    pub name: String,
    /// Its contents.
    pub data: Vec<u8>,
}

/// Reads the volume id and the root directory's files of an ISO 9660 image.
///
/// The Joliet tree is preferred when present; subdirectories are skipped. Truncated or
/// inconsistent images are errors, never panics.
pub fn read_iso(bytes: &[u8]) -> Result<IsoContents, IsoError> {
    read_tree(bytes, true)
}

fn read_tree(bytes: &[u8], prefer_joliet: bool) -> Result<IsoContents, IsoError> {
    let mut primary = None;
    let mut joliet = None;
    let mut terminated = false;
    for i in 0..MAX_DESCRIPTORS {
        let d = slice(bytes, (PVD_LBA + i) * SECTOR, SECTOR)
            .map_err(|_| malformed("truncated volume descriptor set"))?;
        if &d[1..6] != b"CD001" {
            return Err(malformed(format!(
                "sector {} is not a volume descriptor",
                PVD_LBA + i
            )));
        }
        match d[0] {
            1 if primary.is_none() => primary = Some(d),
            2 if joliet.is_none() && matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => {
                joliet = Some(d)
            }
            255 => {
                terminated = true;
                break;
            }
            _ => {}
        }
    }
    if !terminated {
        return Err(malformed("no volume descriptor set terminator"));
    }
    let primary = primary.ok_or_else(|| malformed("no primary volume descriptor"))?;
    let (d, is_joliet) = match joliet {
        Some(j) if prefer_joliet => (j, true),
        _ => (primary, false),
    };
    let block_size = read_both16(&d[128..132])?;
    if usize::from(block_size) != SECTOR_SIZE {
        return Err(IsoError::Unsupported(format!(
            "logical block size {block_size}"
        )));
    }
    let volume_id = if is_joliet {
        decode_ucs2(&d[40..72])?
    } else {
        String::from_utf8_lossy(&d[40..72]).into_owned()
    };
    let volume_id = volume_id.trim_end_matches([' ', '\0']).to_owned();
    let root = parse_record(&d[156..190])?;
    if root.flags & FLAG_DIRECTORY == 0 {
        return Err(malformed("root record is not a directory"));
    }
    let dir = slice(bytes, u64::from(root.lba) * SECTOR, u64::from(root.size))?;
    let files = read_root(bytes, dir, is_joliet)?;
    Ok(IsoContents {
        volume_id,
        joliet: is_joliet,
        files,
    })
}

fn read_root(image: &[u8], dir: &[u8], joliet: bool) -> Result<Vec<IsoFile>, IsoError> {
    let mut files = Vec::new();
    let mut extracted = 0u64;
    // Rock Ridge is in use when the root's "." record starts with SUSP "SP" (SUSP 5.3).
    let mut susp_skip = None;
    let mut pos = 0usize;
    let mut first = true;
    while pos < dir.len() {
        let len = usize::from(dir[pos]);
        if len == 0 {
            // The rest of this sector is padding; records continue in the next one.
            pos = (pos / SECTOR_SIZE + 1) * SECTOR_SIZE;
            continue;
        }
        if pos % SECTOR_SIZE + len > SECTOR_SIZE {
            return Err(malformed("directory record crosses a sector boundary"));
        }
        let rec = parse_record(dir.get(pos..).unwrap_or_default())?;
        pos += len;
        if first {
            first = false;
            if !joliet && rec.system_use.len() >= 7 && &rec.system_use[..2] == b"SP" {
                if rec.system_use[4..6] != [0xBE, 0xEF] {
                    return Err(malformed("bad SUSP SP entry"));
                }
                susp_skip = Some(usize::from(rec.system_use[6]));
            }
        }
        if rec.id == [0] || rec.id == [1] || rec.flags & FLAG_DIRECTORY != 0 {
            continue;
        }
        if rec.flags & FLAG_MULTI_EXTENT != 0 {
            return Err(IsoError::Unsupported("multi-extent file".into()));
        }
        if files.len() >= MAX_FILES {
            return Err(IsoError::TooManyFiles { max: MAX_FILES });
        }
        let name = if joliet {
            strip_version(&decode_ucs2(rec.id)?)
        } else {
            let rr = match susp_skip {
                Some(skip) => rock_ridge_name(image, rec.system_use, skip)?,
                None => None,
            };
            match rr {
                Some(name) => name,
                None => strip_version(&String::from_utf8_lossy(rec.id)),
            }
        };
        extracted += u64::from(rec.size);
        if extracted > MAX_IMAGE_SIZE {
            return Err(IsoError::TooLarge {
                size: extracted,
                max: MAX_IMAGE_SIZE,
            });
        }
        let start = (u64::from(rec.lba) + u64::from(rec.ext_attr_len)) * SECTOR;
        let data = slice(image, start, u64::from(rec.size))?.to_vec();
        files.push(IsoFile { name, data });
    }
    Ok(files)
}

/// The fields of a directory record the reader uses.
struct Record<'a> {
    ext_attr_len: u8,
    lba: u32,
    size: u32,
    flags: u8,
    id: &'a [u8],
    system_use: &'a [u8],
}

/// Parses the directory record at the start of `b`.
fn parse_record(b: &[u8]) -> Result<Record<'_>, IsoError> {
    let len = usize::from(
        *b.first()
            .ok_or_else(|| malformed("empty directory record"))?,
    );
    if len < 34 || len > b.len() {
        return Err(malformed(format!("bad directory record length {len}")));
    }
    let r = &b[..len];
    let id_len = usize::from(r[32]);
    if 33 + id_len > len {
        return Err(malformed("file identifier overruns its directory record"));
    }
    let su_start = 33 + id_len + usize::from(id_len.is_multiple_of(2));
    Ok(Record {
        ext_attr_len: r[1],
        lba: read_both32(&r[2..10])?,
        size: read_both32(&r[10..18])?,
        flags: r[25],
        id: &r[33..33 + id_len],
        system_use: r.get(su_start..).unwrap_or_default(),
    })
}

/// The Rock Ridge "NM" name in a system use area, following "CE" continuations.
fn rock_ridge_name(image: &[u8], su: &[u8], skip: usize) -> Result<Option<String>, IsoError> {
    let mut area = su.get(skip..).unwrap_or_default();
    let mut name = Vec::new();
    let mut found = false;
    let mut hops = 0;
    loop {
        let mut next = None;
        let mut p = 0;
        while p + 4 <= area.len() {
            let sig = &area[p..p + 2];
            let len = usize::from(area[p + 2]);
            if sig == [0, 0] {
                break; // padding
            }
            if len < 4 || p + len > area.len() {
                return Err(malformed("bad SUSP entry length"));
            }
            let e = &area[p..p + len];
            match sig {
                // Flags 2 and 4 mean "." and ".."; anything else carries name bytes.
                b"NM" if len >= 5 && e[4] & 0x06 == 0 => {
                    name.extend_from_slice(&e[5..]);
                    found = true;
                }
                b"CE" if len >= 28 => {
                    next = Some((
                        read_both32(&e[4..12])?,
                        read_both32(&e[12..20])?,
                        read_both32(&e[20..28])?,
                    ));
                }
                b"ST" => break,
                _ => {}
            }
            p += len;
        }
        let Some((lba, offset, len)) = next else {
            break;
        };
        hops += 1;
        if hops > MAX_CONTINUATIONS {
            return Err(malformed("too many SUSP continuation areas"));
        }
        if u64::from(offset) + u64::from(len) > SECTOR {
            return Err(malformed("SUSP continuation area crosses a block"));
        }
        area = slice(
            image,
            u64::from(lba) * SECTOR + u64::from(offset),
            u64::from(len),
        )?;
    }
    if !found {
        return Ok(None);
    }
    String::from_utf8(name)
        .map(Some)
        .map_err(|_| malformed("Rock Ridge name is not UTF-8"))
}

/// Drops an ISO 9660 version suffix (`;1`) and the dot of an empty extension.
fn strip_version(name: &str) -> String {
    let base = match name.rfind(';') {
        Some(i) if name[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &name[..i],
        _ => name,
    };
    match base.strip_suffix('.') {
        Some(b) if !b.is_empty() => b.to_owned(),
        _ => base.to_owned(),
    }
}

fn decode_ucs2(b: &[u8]) -> Result<String, IsoError> {
    if !b.len().is_multiple_of(2) {
        return Err(malformed("odd-length Joliet identifier"));
    }
    let units = b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|_| malformed("Joliet identifier is not valid UCS-2"))
}

/// `len` bytes at `start`, or an error if the image is too short.
fn slice(bytes: &[u8], start: u64, len: u64) -> Result<&[u8], IsoError> {
    let end = start
        .checked_add(len)
        .filter(|&end| end <= bytes.len() as u64)
        .ok_or_else(|| malformed(format!("extent at byte {start} runs past the image end")))?;
    // Both fit in usize now: they are at most bytes.len().
    Ok(&bytes[start as usize..end as usize])
}

/// A both-endian 16-bit field (4 bytes); the two halves must agree.
fn read_both16(b: &[u8]) -> Result<u16, IsoError> {
    match b {
        [l0, l1, b0, b1, ..] if [*l0, *l1] == [*b1, *b0] => Ok(u16::from_le_bytes([*l0, *l1])),
        _ => Err(malformed("inconsistent both-endian 16-bit field")),
    }
}

/// A both-endian 32-bit field (8 bytes); the two halves must agree.
fn read_both32(b: &[u8]) -> Result<u32, IsoError> {
    match b {
        [l0, l1, l2, l3, b0, b1, b2, b3, ..] if [*l0, *l1, *l2, *l3] == [*b3, *b2, *b1, *b0] => {
            Ok(u32::from_le_bytes([*l0, *l1, *l2, *l3]))
        }
        _ => Err(malformed("inconsistent both-endian 32-bit field")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// Runs the real `isoinfo` (Debian package genisoimage); it must be installed.
    pub(crate) fn isoinfo(args: &[&str], image: &Path) -> String {
        let out = Command::new("isoinfo")
            .args(args)
            .arg("-i")
            .arg(image)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run isoinfo ({e}): install it with `apt-get install genisoimage`; \
                     these tests check our ISO images against it and must not be skipped"
                )
            });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "isoinfo {args:?} failed: {}\n{stderr}",
            out.status
        );
        assert!(
            stderr.trim().is_empty(),
            "isoinfo {args:?} complained: {stderr}"
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn sample() -> IsoBuilder {
        let mut b = IsoBuilder::new("cidata").unwrap();
        b.add_file("user-data", b"#cloud-config\n{}\n".to_vec())
            .unwrap();
        b.add_file("meta-data", b"instance-id: i-1\n".to_vec())
            .unwrap();
        b.add_file("empty", Vec::new()).unwrap();
        b.add_file("one-sector.bin", vec![0xA5; SECTOR_SIZE])
            .unwrap();
        b.add_file("big.bin", (0..10_000u32).map(|i| (i * 7) as u8).collect())
            .unwrap();
        b
    }

    #[test]
    fn round_trip_joliet_and_rock_ridge() {
        let b = sample();
        let bytes = b.to_bytes().unwrap();
        assert_eq!(bytes.len() % SECTOR_SIZE, 0);
        for prefer_joliet in [true, false] {
            let got = read_tree(&bytes, prefer_joliet).unwrap();
            assert_eq!(got.volume_id, "cidata");
            assert_eq!(got.joliet, prefer_joliet);
            assert_eq!(got.files.len(), b.files.len());
            for (name, data) in &b.files {
                assert_eq!(got.file(name), Some(data.as_slice()), "{name}");
            }
        }
        // Joliet directory order is by name.
        let names: Vec<_> = read_iso(&bytes)
            .unwrap()
            .files
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(
            names,
            [
                "big.bin",
                "empty",
                "meta-data",
                "one-sector.bin",
                "user-data"
            ]
        );
    }

    #[test]
    fn many_and_long_names_span_sectors() {
        let mut b = IsoBuilder::new("MANY").unwrap();
        // 64 three-byte UTF-8 characters: the Rock Ridge name needs a continuation area.
        let long: String = std::iter::repeat_n('€', MAX_NAME_LEN).collect();
        b.add_file(&long, b"long".to_vec()).unwrap();
        for i in 0..300 {
            b.add_file(
                &format!("file-with-a-rather-long-name-{i:04}.yaml"),
                vec![i as u8; i],
            )
            .unwrap();
        }
        let bytes = b.to_bytes().unwrap();
        for prefer_joliet in [true, false] {
            let got = read_tree(&bytes, prefer_joliet).unwrap();
            assert_eq!(got.files.len(), 301);
            assert_eq!(got.file(&long), Some(&b"long"[..]));
            for (name, data) in &b.files {
                assert_eq!(got.file(name), Some(data.as_slice()), "{name}");
            }
        }
    }

    #[test]
    fn primary_names_are_unique_8_3_d_characters() {
        let mut b = IsoBuilder::new("X").unwrap();
        for name in [
            "user-data",
            "user-data2",
            "user_data",
            "USER-DATA",
            "user-dat",
            "network-config",
            ".hidden",
            "a.tar.gz",
            "ünïcode",
        ] {
            b.add_file(name, Vec::new()).unwrap();
        }
        let entries = entries(&b.files);
        let mut seen = HashSet::new();
        for e in &entries {
            let id = std::str::from_utf8(&e.primary_id).unwrap();
            let (stem, version) = id.split_once(';').unwrap();
            assert_eq!(version, "1");
            let (base, ext) = stem.split_once('.').unwrap();
            assert!((1..=8).contains(&base.len()) && ext.len() <= 3, "{id}");
            assert!(
                stem.bytes().all(|c| c == b'.'
                    || c == b'_'
                    || c.is_ascii_uppercase()
                    || c.is_ascii_digit()),
                "{id}"
            );
            assert!(seen.insert(id.to_owned()), "duplicate {id}");
        }
        let by_name = |n: &str| {
            let e = entries.iter().find(|e| e.name == n).unwrap();
            String::from_utf8(e.primary_id.clone()).unwrap()
        };
        // Collisions are resolved in name order: "USER-DATA" < "user-dat" < "user-data".
        assert_eq!(by_name("USER-DATA"), "USER_DAT.;1");
        assert_eq!(by_name("user-dat"), "USER_DA1.;1");
        assert_eq!(by_name("user-data"), "USER_DA2.;1");
        assert_eq!(by_name("network-config"), "NETWORK_.;1");
        assert_eq!(by_name("a.tar.gz"), "A_TAR.GZ;1");
        assert_eq!(by_name(".hidden"), "_HIDDEN.;1");
    }

    #[test]
    fn deterministic() {
        let a = sample().to_bytes().unwrap();
        // Same files added in another order: same bytes.
        let mut b = IsoBuilder::new("cidata").unwrap();
        for (name, data) in sample().files.into_iter().rev() {
            b.add_file(&name, data).unwrap();
        }
        assert_eq!(a, b.to_bytes().unwrap());
        let mut c = sample();
        c.set_timestamp(1_700_000_000).unwrap();
        let c = c.to_bytes().unwrap();
        assert_ne!(a, c);
        let mut d = sample();
        d.set_timestamp(1_700_000_000).unwrap();
        assert_eq!(c, d.to_bytes().unwrap());
    }

    #[test]
    fn timestamps() {
        assert_eq!(DateTime::from_unix(0), Some(EPOCH));
        let t = DateTime::from_unix(951_782_400 + 3_723).unwrap(); // 2000-02-29 01:02:03
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2000, 2, 29, 1, 2, 3)
        );
        assert_eq!(&t.descriptor_form(), b"2000022901020300\0");
        assert_eq!(t.record_form(), [100, 2, 29, 1, 2, 3, 0]);
        let first = DateTime::from_unix(-2_208_988_800).unwrap();
        assert_eq!(first.year, 1900);
        assert!(DateTime::from_unix(-2_208_988_801).is_none());
        assert!(DateTime::from_unix(i64::MAX).is_none());
        let mut b = IsoBuilder::new("X").unwrap();
        assert!(matches!(
            b.set_timestamp(i64::MIN),
            Err(IsoError::TimestampOutOfRange(_))
        ));
    }

    #[test]
    fn rejects_bad_input() {
        for id in ["", "seventeen-chars-x", "ci data", "cidätä", "a/b"] {
            assert!(
                matches!(IsoBuilder::new(id), Err(IsoError::InvalidVolumeId { .. })),
                "{id:?}"
            );
        }
        let mut b = IsoBuilder::new("cidata").unwrap();
        let too_long = "x".repeat(65);
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "a\nb",
            "a;1",
            "a:b",
            "a*",
            "a\\b",
            "emoji-😀",
            too_long.as_str(),
        ] {
            assert!(
                matches!(
                    b.add_file(name, Vec::new()),
                    Err(IsoError::InvalidName { .. })
                ),
                "{name:?}"
            );
        }
        b.add_file(&"x".repeat(64), Vec::new()).unwrap();
        b.add_file("user-data", Vec::new()).unwrap();
        assert!(matches!(
            b.add_file("user-data", Vec::new()),
            Err(IsoError::DuplicateName(_))
        ));
        let mut big = IsoBuilder::new("big").unwrap();
        big.data_bytes = MAX_IMAGE_SIZE - SECTOR;
        big.add_file("fits", vec![0; 1]).unwrap();
        assert!(matches!(
            big.add_file("over", vec![0; 1]),
            Err(IsoError::TooLarge { .. })
        ));
    }

    /// A deterministic xorshift generator, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = sample().to_bytes().unwrap();
        assert!(read_iso(&[]).is_err());
        assert!(read_iso(&good[..SECTOR_SIZE * 16]).is_err());
        // Every truncation that cuts into the metadata or file data fails.
        let last_data = good.len() - SECTOR_SIZE * 4;
        for cut in (0..last_data).step_by(97) {
            assert!(read_iso(&good[..cut]).is_err(), "cut at {cut}");
            let _ = read_tree(&good[..cut], false);
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Random bytes, with and without a plausible descriptor header.
        for _ in 0..200 {
            let len = (rng.next() % 40_000) as usize;
            let mut junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(read_iso(&junk).is_err());
            if junk.len() > 17 * SECTOR_SIZE {
                junk[16 * SECTOR_SIZE] = 1;
                junk[16 * SECTOR_SIZE + 1..16 * SECTOR_SIZE + 6].copy_from_slice(b"CD001");
                assert!(read_iso(&junk).is_err());
            }
        }
        // Corrupted metadata: may read or fail, must not panic.
        let metadata_end = 40 * SECTOR_SIZE;
        for _ in 0..5_000 {
            let mut bad = good.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % metadata_end.min(bad.len());
                bad[at] = rng.next() as u8;
            }
            let _ = read_iso(&bad);
            let _ = read_tree(&bad, false);
        }
    }

    #[test]
    fn reads_genisoimage_output() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user-data"), "#cloud-config\n{}\n").unwrap();
        std::fs::write(dir.path().join("meta-data"), "instance-id: x\n").unwrap();
        let iso = dir.path().join("seed.iso");
        let status = Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(&iso)
            .arg(dir.path().join("user-data"))
            .arg(dir.path().join("meta-data"))
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run genisoimage ({e}): install it with `apt-get install genisoimage`"
                )
            });
        assert!(status.success());
        let bytes = std::fs::read(&iso).unwrap();
        for prefer_joliet in [true, false] {
            let got = read_tree(&bytes, prefer_joliet).unwrap();
            assert_eq!(got.volume_id, "cidata");
            assert_eq!(got.file("user-data"), Some(&b"#cloud-config\n{}\n"[..]));
            assert_eq!(got.file("meta-data"), Some(&b"instance-id: x\n"[..]));
        }
    }

    #[test]
    fn isoinfo_accepts_our_images() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("test.iso");
        let mut b = sample();
        b.set_timestamp(1_700_000_000).unwrap();
        std::fs::write(&iso, b.to_bytes().unwrap()).unwrap();

        let info = isoinfo(&["-d"], &iso);
        assert!(info.contains("Volume id: cidata\n"), "{info}");
        assert!(info.contains("Joliet with UCS level 3 found"), "{info}");
        assert!(
            info.contains("Rock Ridge signatures version 1 found"),
            "{info}"
        );
        assert!(info.contains("Logical block size is: 2048"), "{info}");
        let sectors = std::fs::metadata(&iso).unwrap().len() / SECTOR;
        assert!(
            info.contains(&format!("Volume size is: {sectors}\n")),
            "{info}"
        );

        let expected = [
            "/big.bin",
            "/empty",
            "/meta-data",
            "/one-sector.bin",
            "/user-data",
        ];
        let joliet = isoinfo(&["-J", "-f"], &iso);
        assert_eq!(joliet.lines().collect::<Vec<_>>(), expected);
        let rock = isoinfo(&["-R", "-f"], &iso);
        let mut rock: Vec<_> = rock.lines().collect();
        rock.sort();
        assert_eq!(rock, expected);
        let plain = isoinfo(&["-f"], &iso);
        assert_eq!(
            plain.lines().collect::<Vec<_>>(),
            [
                "/BIG.BIN;1",
                "/EMPTY.;1",
                "/META_DAT.;1",
                "/ONE_SECT.BIN;1",
                "/USER_DAT.;1"
            ]
        );
        let listing = isoinfo(&["-R", "-l"], &iso);
        assert!(
            listing.contains("-r--r--r--   1    0    0              17 Nov 14 2023"),
            "{listing}"
        );

        for (name, data) in &b.files {
            let out = Command::new("isoinfo")
                .args(["-J", "-x", &format!("/{name}"), "-i"])
                .arg(&iso)
                .output()
                .unwrap();
            assert!(out.status.success());
            assert_eq!(&out.stdout, data, "{name}");
        }
    }
}
