//! The store's image format: every backend record framed with lengths and a
//! trailing checksum. Used for raft snapshots and `etcdctl snapshot save`.

use crate::error::StoreError;
use std::io::{Read, Write};

const MAGIC: &[u8; 16] = b"TUGBOAT-IMAGE-1\n";
const END: u32 = u32::MAX;
/// Largest record accepted when reading an image (keys and values are far smaller).
const MAX_RECORD: u32 = 64 * 1024 * 1024;

fn io(e: std::io::Error) -> StoreError {
    StoreError::Storage(format!("image i/o: {e}"))
}

/// Writes `records` as an image.
pub fn write_image(
    records: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    out: &mut dyn Write,
) -> Result<(), StoreError> {
    let mut crc = crc32fast::Hasher::new();
    let mut put = |buf: &[u8], out: &mut dyn Write| -> Result<(), StoreError> {
        crc.update(buf);
        out.write_all(buf).map_err(io)
    };
    put(MAGIC, out)?;
    for item in records {
        let (k, v) = item?;
        put(&(k.len() as u32).to_be_bytes(), out)?;
        put(&k, out)?;
        put(&(v.len() as u32).to_be_bytes(), out)?;
        put(&v, out)?;
    }
    put(&END.to_be_bytes(), out)?;
    let sum = crc.clone().finalize();
    out.write_all(&sum.to_be_bytes()).map_err(io)?;
    out.flush().map_err(io)
}

/// Reads an image, handing every record to `sink`; fails on a bad or truncated image.
pub fn read_image(
    input: &mut dyn Read,
    mut sink: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut crc = crc32fast::Hasher::new();
    let mut read = |n: usize, input: &mut dyn Read| -> Result<Vec<u8>, StoreError> {
        let mut buf = vec![0u8; n];
        input
            .read_exact(&mut buf)
            .map_err(|e| StoreError::Corrupt(format!("image truncated: {e}")))?;
        crc.update(&buf);
        Ok(buf)
    };
    let magic = read(MAGIC.len(), input)?;
    if magic.as_slice() != MAGIC {
        return Err(StoreError::Corrupt("not a tugboat store image".into()));
    }
    let len = |b: Vec<u8>| -> u32 { u32::from_be_bytes([b[0], b[1], b[2], b[3]]) };
    loop {
        let klen = len(read(4, input)?);
        if klen == END {
            break;
        }
        if klen > MAX_RECORD {
            return Err(StoreError::Corrupt(format!("image record of {klen} bytes")));
        }
        let k = read(klen as usize, input)?;
        let vlen = len(read(4, input)?);
        if vlen > MAX_RECORD {
            return Err(StoreError::Corrupt(format!("image record of {vlen} bytes")));
        }
        let v = read(vlen as usize, input)?;
        sink(k, v)?;
    }
    let expected = crc.finalize();
    let mut sum = [0u8; 4];
    input
        .read_exact(&mut sum)
        .map_err(|e| StoreError::Corrupt(format!("image checksum missing: {e}")))?;
    if u32::from_be_bytes(sum) != expected {
        return Err(StoreError::Corrupt("image checksum mismatch".into()));
    }
    Ok(())
}
