//! Layout of the store's records in its sled tree. Everything the state
//! machine owns lives in one tree so that one `apply_batch` makes a whole
//! applied raft batch (data, leases, revision counters, applied position)
//! atomic.

use super::revision::Revision;

/// Prefix of key-value records, keyed by revision.
pub const REV_PREFIX: u8 = b'r';
/// Prefix of lease records, keyed by lease ID.
pub const LEASE_PREFIX: u8 = b'l';
/// Prefix of the store's counters and the consensus' applied record.
pub const META_PREFIX: u8 = b'm';

/// Meta record: current revision.
pub const META_CURRENT: &str = "current";
/// Meta record: compaction revision.
pub const META_COMPACTED: &str = "compacted";
/// Meta record: the consensus' applied position (opaque).
pub const META_APPLIED: &str = "applied";

/// Backend key of the record of a change at `rev`.
pub fn rev_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + super::revision::REVISION_KEY_LEN);
    k.push(REV_PREFIX);
    k.extend_from_slice(&rev.to_key(tombstone));
    k
}

/// First backend key of main revision `main`.
pub fn rev_scan_start(main: i64) -> Vec<u8> {
    let mut k = vec![REV_PREFIX];
    k.extend_from_slice(&Revision::scan_start(main));
    k
}

/// Decodes a revision record key.
pub fn parse_rev_key(k: &[u8]) -> Option<(Revision, bool)> {
    match k.split_first() {
        Some((&REV_PREFIX, rest)) => Revision::from_key(rest),
        _ => None,
    }
}

/// Backend key of lease `id`.
pub fn lease_key(id: i64) -> Vec<u8> {
    let mut k = vec![LEASE_PREFIX];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Decodes a lease record key.
pub fn parse_lease_key(k: &[u8]) -> Option<i64> {
    match k.split_first() {
        Some((&LEASE_PREFIX, rest)) => Some(i64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// Backend key of a meta record.
pub fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(name.as_bytes());
    k
}

/// Encodes an i64 meta value.
pub fn encode_i64(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Decodes an i64 meta value; `None` if it has the wrong length.
pub fn decode_i64(v: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(v.try_into().ok()?))
}
