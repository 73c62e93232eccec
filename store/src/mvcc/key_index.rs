//! The in-memory key index: for every key, the revisions at which it was
//! written or deleted. Values live in the backend, keyed by revision; the
//! index answers "which revision of key K is visible at revision R".

use super::revision::Revision;
use std::collections::BTreeMap;
use std::ops::Bound;

/// One change of a key as the index remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyChange {
    /// Where the change's record lives in the backend.
    pub rev: Revision,
    /// Main revision that created the key's current generation; 0 for a tombstone.
    pub create: i64,
    /// Puts in the generation up to and including this one; 0 for a tombstone.
    pub version: i64,
}

impl KeyChange {
    /// True when the change is a deletion.
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }
}

/// The history of one key, oldest first.
#[derive(Clone, Debug, Default)]
pub struct KeyHistory {
    changes: Vec<KeyChange>,
}

impl KeyHistory {
    /// The change visible at main revision `at`, if the key exists then.
    pub fn visible_at(&self, at: i64) -> Option<KeyChange> {
        let idx = self.changes.partition_point(|c| c.rev.main <= at);
        if idx == 0 {
            return None;
        }
        let c = self.changes[idx - 1];
        (!c.is_tombstone()).then_some(c)
    }

    /// The newest change, tombstones included.
    pub fn latest(&self) -> Option<KeyChange> {
        self.changes.last().copied()
    }

    /// Changes with main revision in `[from, to]`.
    pub fn changes_between(&self, from: i64, to: i64) -> impl Iterator<Item = &KeyChange> {
        let start = self.changes.partition_point(|c| c.rev.main < from);
        self.changes[start..]
            .iter()
            .take_while(move |c| c.rev.main <= to)
    }

    fn push(&mut self, change: KeyChange) {
        self.changes.push(change);
    }

    /// Drops what compaction at `at` makes unreachable and returns the dropped
    /// revisions (with their tombstone flag) for the backend to delete. The
    /// change visible at `at` survives unless it is a tombstone.
    fn compact(&mut self, at: i64, dropped: &mut Vec<(Revision, bool)>) {
        let idx = self.changes.partition_point(|c| c.rev.main <= at);
        if idx == 0 {
            return;
        }
        let keep_from = if self.changes[idx - 1].is_tombstone() {
            idx
        } else {
            idx - 1
        };
        dropped.extend(
            self.changes[..keep_from]
                .iter()
                .map(|c| (c.rev, c.is_tombstone())),
        );
        self.changes.drain(..keep_from);
    }

    fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Index of every key's history, ordered by key for range scans.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, KeyHistory>,
}

/// Bounds of a key range in the etcd convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key.
    Single(Vec<u8>),
    /// `[start, end)`; `end == None` means no upper bound.
    Span(Vec<u8>, Option<Vec<u8>>),
}

impl KeyRange {
    /// Interprets etcd's `key`/`range_end` pair: empty end = single key,
    /// `"\0"` = every key from `key` on, otherwise the half-open interval.
    pub fn from_etcd(key: &[u8], range_end: &[u8]) -> KeyRange {
        if range_end.is_empty() {
            KeyRange::Single(key.to_vec())
        } else if range_end == [0] {
            KeyRange::Span(key.to_vec(), None)
        } else {
            KeyRange::Span(key.to_vec(), Some(range_end.to_vec()))
        }
    }

    /// Whether `k` falls inside the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => key.as_slice() == k,
            KeyRange::Span(start, end) => {
                k >= start.as_slice() && end.as_ref().is_none_or(|e| k < e.as_slice())
            }
        }
    }
}

impl KeyIndex {
    /// Records a put of `key` at `rev`; returns the recorded change.
    pub fn put(&mut self, key: &[u8], rev: Revision) -> KeyChange {
        let hist = self.keys.entry(key.to_vec()).or_default();
        let change = match hist.visible_at(i64::MAX) {
            Some(prev) => KeyChange {
                rev,
                create: prev.create,
                version: prev.version + 1,
            },
            None => KeyChange {
                rev,
                create: rev.main,
                version: 1,
            },
        };
        hist.push(change);
        change
    }

    /// Records a deletion of a live `key` at `rev`. Returns false when the key
    /// is not live (nothing recorded).
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        match self.keys.get_mut(key) {
            Some(hist) if hist.visible_at(i64::MAX).is_some() => {
                hist.push(KeyChange {
                    rev,
                    create: 0,
                    version: 0,
                });
                true
            }
            _ => false,
        }
    }

    /// Re-inserts a change read back from the backend at start-up (in revision order).
    pub fn restore(&mut self, key: &[u8], change: KeyChange) {
        self.keys.entry(key.to_vec()).or_default().push(change);
    }

    /// History of one key.
    pub fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.keys.get(key)
    }

    /// Keys with their history in `range`, in key order.
    pub fn range<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a KeyHistory)> + 'a> {
        match range {
            KeyRange::Single(k) => Box::new(self.keys.get_key_value(k).into_iter()),
            KeyRange::Span(start, end) => {
                let upper = match end {
                    Some(e) if e.as_slice() <= start.as_slice() => {
                        return Box::new(std::iter::empty())
                    }
                    Some(e) => Bound::Excluded(e.clone()),
                    None => Bound::Unbounded,
                };
                Box::new(
                    self.keys
                        .range::<Vec<u8>, _>((Bound::Included(start.clone()), upper)),
                )
            }
        }
    }

    /// Live keys in `range` at revision `at`, in key order.
    pub fn visible<'a>(
        &'a self,
        range: &'a KeyRange,
        at: i64,
    ) -> impl Iterator<Item = (&'a Vec<u8>, KeyChange)> + 'a {
        self.range(range)
            .filter_map(move |(k, h)| h.visible_at(at).map(|c| (k, c)))
    }

    /// Applies compaction at main revision `at` to every key; returns the
    /// backend records to delete.
    pub fn compact(&mut self, at: i64) -> Vec<(Revision, bool)> {
        let mut dropped = Vec::new();
        self.keys.retain(|_, hist| {
            hist.compact(at, &mut dropped);
            !hist.is_empty()
        });
        dropped
    }

    /// Number of keys with any retained history.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key has retained history.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn versions_and_generations() {
        let mut ix = KeyIndex::default();
        assert_eq!(ix.put(b"a", r(2)).version, 1);
        assert_eq!(ix.put(b"a", r(3)).version, 2);
        assert!(ix.tombstone(b"a", r(4)));
        assert!(
            !ix.tombstone(b"a", r(5)),
            "deleting a dead key records nothing"
        );
        let c = ix.put(b"a", r(6));
        assert_eq!((c.create, c.version), (6, 1));
        let h = ix.get(b"a").unwrap();
        assert_eq!(h.visible_at(1), None);
        assert_eq!(h.visible_at(3).map(|c| (c.create, c.version)), Some((2, 2)));
        assert_eq!(h.visible_at(4), None);
        assert_eq!(h.visible_at(5), None);
        assert_eq!(h.visible_at(6).map(|c| c.rev), Some(r(6)));
    }

    #[test]
    fn compaction_keeps_visible_change_and_drops_tombstones() {
        let mut ix = KeyIndex::default();
        ix.put(b"a", r(2));
        ix.put(b"a", r(3));
        ix.put(b"b", r(4));
        ix.tombstone(b"b", r(5));
        ix.put(b"c", r(6));
        let dropped = ix.compact(5);
        assert_eq!(dropped, vec![(r(2), false), (r(4), false), (r(5), true)]);
        assert!(ix.get(b"b").is_none(), "fully deleted key leaves the index");
        assert_eq!(
            ix.get(b"a").unwrap().visible_at(5).map(|c| c.rev),
            Some(r(3))
        );
        assert_eq!(
            ix.get(b"c").unwrap().visible_at(6).map(|c| c.rev),
            Some(r(6))
        );
        assert!(ix.compact(5).is_empty(), "compaction is idempotent");
    }

    #[test]
    fn ranges_follow_etcd_conventions() {
        let mut ix = KeyIndex::default();
        for (i, k) in [b"a".as_slice(), b"ab", b"b", b"c"].iter().enumerate() {
            ix.put(k, r(i as i64 + 2));
        }
        let keys = |range: KeyRange| -> Vec<Vec<u8>> {
            ix.visible(&range, 100).map(|(k, _)| k.clone()).collect()
        };
        assert_eq!(keys(KeyRange::from_etcd(b"a", b"")), vec![b"a".to_vec()]);
        assert_eq!(keys(KeyRange::from_etcd(b"a", b"b")).len(), 2);
        assert_eq!(keys(KeyRange::from_etcd(b"ab", &[0])).len(), 3);
        assert!(keys(KeyRange::from_etcd(b"c", b"a")).is_empty());
        assert!(KeyRange::from_etcd(b"a", b"b").contains(b"az"));
        assert!(!KeyRange::from_etcd(b"a", b"b").contains(b"b"));
    }
}
