//! Revisions: the global (main) revision of a write request and the
//! sub-revision of each change inside it, encoded so that byte order equals
//! revision order in the backend.

/// A point in the store's history: `main` is the request's revision, `sub` orders changes within it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// Revision shared by every change of one write request.
    pub main: i64,
    /// Index of the change inside its request.
    pub sub: i64,
}

/// Length of an encoded revision key in the backend.
pub const REVISION_KEY_LEN: usize = 17;

/// Marks a backend record as a deletion (tombstone).
const TOMBSTONE: u8 = b't';
/// Marks a backend record as a live put.
const PUT: u8 = b'p';

impl Revision {
    /// A revision from its two parts.
    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Backend key: big-endian main and sub followed by the record kind, so
    /// that a scan in key order is a scan in revision order.
    pub fn to_key(self, tombstone: bool) -> [u8; REVISION_KEY_LEN] {
        let mut out = [0u8; REVISION_KEY_LEN];
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8..16].copy_from_slice(&(self.sub as u64).to_be_bytes());
        out[16] = if tombstone { TOMBSTONE } else { PUT };
        out
    }

    /// The smallest backend key of revision `main` (for range scans).
    pub fn scan_start(main: i64) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&(main.max(0) as u64).to_be_bytes());
        out
    }

    /// Decodes a backend key; `None` when it is not a revision key.
    pub fn from_key(key: &[u8]) -> Option<(Revision, bool)> {
        if key.len() != REVISION_KEY_LEN {
            return None;
        }
        let main = u64::from_be_bytes(key[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(key[8..16].try_into().ok()?) as i64;
        let tombstone = match key[16] {
            TOMBSTONE => true,
            PUT => false,
            _ => return None,
        };
        Some((Revision { main, sub }, tombstone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_revision_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 3),
            Revision::new(1 << 40, 0),
        ];
        for w in revs.windows(2) {
            assert!(w[0].to_key(false) < w[1].to_key(true));
        }
    }

    #[test]
    fn round_trip_and_rejects_garbage() {
        let r = Revision::new(77, 5);
        assert_eq!(Revision::from_key(&r.to_key(true)), Some((r, true)));
        assert_eq!(Revision::from_key(&r.to_key(false)), Some((r, false)));
        assert_eq!(Revision::from_key(b"short"), None);
        let mut bad = r.to_key(false);
        bad[16] = b'x';
        assert_eq!(Revision::from_key(&bad), None);
    }
}
