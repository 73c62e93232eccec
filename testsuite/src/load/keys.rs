//! Key and value shapes.

use std::time::Instant;

/// Bytes of a watch-mode value used by the send timestamp.
pub const STAMP_LEN: usize = 8;

/// Maps key indexes to fixed-size keys under a prefix.
#[derive(Debug, Clone)]
pub struct KeyShape {
    prefix: Vec<u8>,
    width: usize,
}

impl KeyShape {
    /// Keys of `key_size` bytes (or the minimum that fits every index) under `prefix`.
    pub fn new(prefix: &str, key_size: usize, key_space: u64) -> Self {
        let digits = key_space.saturating_sub(1).max(1).to_string().len();
        let width = key_size.saturating_sub(prefix.len()).max(digits);
        KeyShape {
            prefix: prefix.as_bytes().to_vec(),
            width,
        }
    }

    /// The key with index `i`; zero-padded so that keys sort by index.
    pub fn key(&self, i: u64) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(format!("{i:0width$}", width = self.width).as_bytes());
        k
    }
}

/// A value of `len` bytes of printable filler.
pub fn filler(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Writes the time elapsed since `base` into the first bytes of `value`.
///
/// Writer and watchers live in one process, so a monotonic clock shared
/// through `base` is enough; no wall-clock skew enters the latency.
pub fn stamp(value: &mut [u8], base: Instant) {
    let nanos = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
    if let Some(head) = value.get_mut(..STAMP_LEN) {
        head.copy_from_slice(&nanos.to_be_bytes());
    }
}

/// The timestamp written by [`stamp`], if the value carries one.
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    let head: [u8; STAMP_LEN] = value.get(..STAMP_LEN)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_to_size() {
        let shape = KeyShape::new("lg/", 16, 1000);
        assert_eq!(shape.key(7), b"lg/0000000000007".to_vec());
        let tight = KeyShape::new("lg/", 2, 1000);
        assert_eq!(tight.key(7), b"lg/007".to_vec());
    }

    #[test]
    fn stamp_round_trips() {
        let base = Instant::now();
        let mut v = filler(32);
        stamp(&mut v, base);
        let got = read_stamp(&v);
        assert!(got.is_some());
        assert!(read_stamp(b"short").is_none());
    }
}
