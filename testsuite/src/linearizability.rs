//! A linearizability checker for key-value histories (Wing & Gong's search
//! with Lowe's memoization, as in porcupine). Keys are independent registers,
//! so each key's sub-history is checked on its own.
//!
//! A history is a list of operations with the times the client invoked them
//! and saw their response. An operation whose outcome is unknown (timed out,
//! connection lost) has no response time: it may take effect at any point
//! after its invocation, or never.
//!
//! Watches are checked against the store's history rather than a model:
//! [`check_watch_revisions`] (a stream covers a range of revisions once each,
//! in order), [`check_watch_stream`] (a delivered stream is exactly the
//! history of the watched keys) and [`check_events_present`] (acknowledged
//! writes are in the history at the revisions their responses named).

use std::collections::{BTreeMap, HashSet};

/// What a client did to one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Put of a value.
    Write(Vec<u8>),
    /// Read that returned this value (`None`: the key did not exist).
    Read(Option<Vec<u8>>),
    /// Delete of the key.
    Delete,
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Event {
    /// Key the operation touched.
    pub key: Vec<u8>,
    /// What it did (and, for reads, what it saw).
    pub op: Op,
    /// Invocation time (any monotonic unit).
    pub call: u64,
    /// Response time; `None` when the outcome is unknown.
    pub ret: Option<u64>,
}

/// Outcome of a check.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history has a valid linearization.
    Linearizable,
    /// This key's history has none.
    Violation {
        /// The offending key.
        key: Vec<u8>,
        /// Operations on it, for the report.
        ops: usize,
    },
    /// The search gave up (too many states); nothing is claimed.
    Unknown {
        /// The key whose search was cut off.
        key: Vec<u8>,
    },
}

/// Largest number of memoized states per key before the search gives up.
const MAX_STATES: usize = 2_000_000;

/// Checks a whole history.
pub fn check(history: &[Event]) -> Verdict {
    let mut by_key: BTreeMap<&[u8], Vec<&Event>> = BTreeMap::new();
    for e in history {
        by_key.entry(&e.key).or_default().push(e);
    }
    for (key, ops) in by_key {
        match check_register(&ops) {
            Some(true) => {}
            Some(false) => {
                return Verdict::Violation {
                    key: key.to_vec(),
                    ops: ops.len(),
                }
            }
            None => return Verdict::Unknown { key: key.to_vec() },
        }
    }
    Verdict::Linearizable
}

/// The register model: applies `op` to `state` if it can happen there.
fn step(state: &Option<Vec<u8>>, op: &Op) -> Option<Option<Vec<u8>>> {
    match op {
        Op::Write(v) => Some(Some(v.clone())),
        Op::Delete => Some(None),
        Op::Read(seen) => (seen == state).then(|| state.clone()),
    }
}

/// Searches one key's operations; `None` when the state budget ran out.
fn check_register(ops: &[&Event]) -> Option<bool> {
    let n = ops.len();
    // Entries: (time, is_return, op index); calls sort before returns at equal times.
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in ops.iter().enumerate() {
        entries.push((e.call, false, i));
        entries.push((e.ret.unwrap_or(u64::MAX), true, i));
    }
    entries.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));
    // Doubly linked list over `entries`; `head` is a sentinel before the first, END follows the last.
    let n2 = entries.len();
    const END: usize = usize::MAX;
    let head = n2;
    let mut next: Vec<usize> = (0..=n2)
        .map(|i| if i + 1 < n2 { i + 1 } else { END })
        .collect();
    next[head] = if n2 > 0 { 0 } else { END };
    let mut prev: Vec<usize> = (0..=n2)
        .map(|i| if i == 0 { head } else { i - 1 })
        .collect();
    prev[head] = END;
    let mut ret_pos = vec![0usize; n];
    for (pos, &(_, is_ret, i)) in entries.iter().enumerate() {
        if is_ret {
            ret_pos[i] = pos;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        let (a, b) = (prev[p], next[p]);
        next[a] = b;
        if b != END {
            prev[b] = a;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        let (a, b) = (prev[p], next[p]);
        next[a] = p;
        if b != END {
            prev[b] = p;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<Vec<u8>> = None;
    let mut seen: HashSet<(Vec<u64>, Option<Vec<u8>>)> = HashSet::new();
    // Stack of (call position, state before).
    let mut stack: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
    let mut cur = next[head];
    loop {
        if next[head] == END {
            return Some(true);
        }
        if cur == END {
            // Fell off the end without a return blocking: cannot happen with
            // returns at u64::MAX, but treat it as a dead end.
            let (pos, before) = stack.pop()?;
            let i = entries[pos].2;
            relink(&mut next, &mut prev, ret_pos[i]);
            relink(&mut next, &mut prev, pos);
            linearized[i / 64] &= !(1 << (i % 64));
            state = before;
            cur = next[pos];
            continue;
        }
        let (_, is_ret, i) = entries[cur];
        if !is_ret {
            if let Some(after) = step(&state, &ops[i].op) {
                let mut bits = linearized.clone();
                bits[i / 64] |= 1 << (i % 64);
                if seen.insert((bits.clone(), after.clone())) {
                    if seen.len() > MAX_STATES {
                        return None;
                    }
                    stack.push((cur, std::mem::replace(&mut state, after)));
                    linearized = bits;
                    unlink(&mut next, &mut prev, cur);
                    unlink(&mut next, &mut prev, ret_pos[i]);
                    cur = next[head];
                    continue;
                }
            }
            cur = next[cur];
        } else {
            // An operation returned before every pending call could be placed: backtrack.
            let Some((pos, before)) = stack.pop() else {
                return Some(false);
            };
            let j = entries[pos].2;
            relink(&mut next, &mut prev, ret_pos[j]);
            relink(&mut next, &mut prev, pos);
            linearized[j / 64] &= !(1 << (j % 64));
            state = before;
            cur = next[pos];
        }
    }
}

/// One change of a key as a watch delivers it, or as a store's history holds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// Revision of the change (the key's `mod_revision`).
    pub revision: i64,
    /// Key that changed.
    pub key: Vec<u8>,
    /// Value put; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

impl std::fmt::Display for WatchEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = String::from_utf8_lossy(&self.key);
        match &self.value {
            Some(v) => write!(
                f,
                "PUT {key}={}@{}",
                String::from_utf8_lossy(v),
                self.revision
            ),
            None => write!(f, "DELETE {key}@{}", self.revision),
        }
    }
}

/// Checks that a stream of events covers every revision from `first` to `last` once, in order:
/// revisions never go back, no event comes twice, and no revision in the range is skipped.
///
/// Meant for a watch over the whole keyspace (every revision is made by at least one change).
/// Several events may share a revision (a transaction changing several keys), but not a key.
pub fn check_watch_revisions(events: &[WatchEvent], first: i64, last: i64) -> Result<(), String> {
    let mut expect = first;
    let mut at_rev: HashSet<&[u8]> = HashSet::new();
    let mut prev: Option<&WatchEvent> = None;
    for (i, e) in events.iter().enumerate() {
        match prev {
            Some(p) if e.revision < p.revision => {
                return Err(format!(
                    "reordered: event #{i} {e} comes after revision {}",
                    p.revision
                ))
            }
            Some(p) if e.revision == p.revision => {
                if !at_rev.insert(&e.key) {
                    return Err(format!(
                        "duplicate: event #{i} {e} repeats a change of revision {}",
                        e.revision
                    ));
                }
            }
            _ => {
                if e.revision > expect {
                    return Err(format!(
                        "gap: revision {expect} missing (event #{i} is {e}, the one before it {})",
                        prev.map_or("none".to_string(), |p| p.to_string())
                    ));
                }
                if e.revision < expect {
                    return Err(format!(
                        "event #{i} {e} is before the first revision checked, {first}"
                    ));
                }
                if e.revision > last {
                    return Err(format!(
                        "event #{i} {e} is past the last revision checked, {last}"
                    ));
                }
                at_rev.clear();
                at_rev.insert(&e.key);
                expect = e.revision + 1;
            }
        }
        prev = Some(e);
    }
    if expect <= last {
        return Err(format!(
            "gap: revisions {expect}..={last} missing at the end ({} events delivered)",
            events.len()
        ));
    }
    Ok(())
}

/// Checks that a delivered watch stream is exactly `expected` (the store's history of the
/// watched keys over the same revisions): the same events in the same order, none missing,
/// repeated, reordered or made up. The error names the first difference and what it is.
pub fn check_watch_stream(delivered: &[WatchEvent], expected: &[WatchEvent]) -> Result<(), String> {
    let mut seen: HashSet<&WatchEvent> = HashSet::with_capacity(delivered.len());
    for (i, d) in delivered.iter().enumerate() {
        if let Some(p) = i.checked_sub(1).map(|j| &delivered[j]) {
            if d.revision < p.revision {
                return Err(format!("reordered: event #{i} {d} delivered after {p}"));
            }
        }
        if !seen.insert(d) {
            return Err(format!("duplicate: event #{i} {d} was delivered before"));
        }
        match expected.get(i) {
            Some(e) if e == d => {}
            Some(e) => {
                let in_history = expected.contains(d);
                return Err(
                    if !in_history
                        && expected
                            .iter()
                            .any(|x| x.revision == d.revision && x.key == d.key)
                    {
                        format!("event #{i} {d} differs from the history's change of that key at that revision")
                    } else if !in_history {
                        format!("event #{i} {d} is not in the history")
                    } else if delivered[i + 1..].contains(e) {
                        format!(
                            "reordered: {e} (event #{i} of the history) delivered only after {d}"
                        )
                    } else {
                        format!("gap: {e} (event #{i} of the history) never delivered; {d} came in its place")
                    },
                );
            }
            None => {
                return Err(format!(
                    "event #{i} {d} delivered past the end of the history ({} events)",
                    expected.len()
                ))
            }
        }
    }
    if let Some(e) = expected.get(delivered.len()) {
        return Err(format!(
            "gap: {e} and {} more events of the history never delivered",
            expected.len() - delivered.len() - 1
        ));
    }
    Ok(())
}

/// Checks that every event of `wanted` (say, each acknowledged write with the revision its
/// response carried) is in `history` with the same key, value and revision.
pub fn check_events_present(history: &[WatchEvent], wanted: &[WatchEvent]) -> Result<(), String> {
    let in_history: HashSet<&WatchEvent> = history.iter().collect();
    let missing: Vec<&WatchEvent> = wanted.iter().filter(|w| !in_history.contains(w)).collect();
    match missing.first() {
        None => Ok(()),
        Some(first) => {
            let at = history
                .iter()
                .filter(|h| h.revision == first.revision)
                .map(|h| h.to_string())
                .collect::<Vec<_>>();
            Err(format!(
                "{} of {} events missing from the history; first: {first} (the history has {} at that revision)",
                missing.len(),
                wanted.len(),
                if at.is_empty() { "nothing".to_string() } else { at.join(", ") }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, call: u64, ret: Option<u64>) -> Event {
        Event {
            key: b"k".to_vec(),
            op,
            call,
            ret,
        }
    }
    fn w(v: &str) -> Op {
        Op::Write(v.as_bytes().to_vec())
    }
    fn r(v: Option<&str>) -> Op {
        Op::Read(v.map(|s| s.as_bytes().to_vec()))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            ev(r(None), 0, Some(1)),
            ev(w("a"), 2, Some(3)),
            ev(r(Some("a")), 4, Some(5)),
            ev(Op::Delete, 6, Some(7)),
            ev(r(None), 8, Some(9)),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn overlapping_read_may_see_either_value() {
        for seen in [None, Some("a")] {
            let h = vec![ev(w("a"), 0, Some(10)), ev(r(seen), 5, Some(6))];
            assert_eq!(check(&h), Verdict::Linearizable, "{seen:?}");
        }
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_caught() {
        let h = vec![ev(w("a"), 0, Some(1)), ev(r(None), 2, Some(3))];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn lost_write_is_caught() {
        let h = vec![
            ev(w("a"), 0, Some(1)),
            ev(w("b"), 2, Some(3)),
            ev(r(Some("a")), 4, Some(5)),
        ];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn value_nobody_wrote_is_caught() {
        let h = vec![ev(w("a"), 0, Some(1)), ev(r(Some("z")), 2, Some(3))];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn reads_going_back_in_time_are_caught() {
        // Two concurrent writes; one reader sees b then a, another sees a then b
        // strictly after: no single order explains both.
        let h = vec![
            ev(w("a"), 0, Some(100)),
            ev(w("b"), 0, Some(100)),
            ev(r(Some("b")), 10, Some(11)),
            ev(r(Some("a")), 12, Some(13)),
            ev(r(Some("b")), 14, Some(15)),
        ];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn unknown_outcome_may_or_may_not_happen() {
        let took_effect = vec![ev(w("a"), 0, None), ev(r(Some("a")), 5, Some(6))];
        assert_eq!(check(&took_effect), Verdict::Linearizable);
        let did_not = vec![ev(w("a"), 0, None), ev(r(None), 5, Some(6))];
        assert_eq!(check(&did_not), Verdict::Linearizable);
        let flip_flop = vec![
            ev(w("a"), 0, None),
            ev(r(Some("a")), 5, Some(6)),
            ev(r(None), 7, Some(8)),
        ];
        assert!(matches!(check(&flip_flop), Verdict::Violation { .. }));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = vec![ev(w("a"), 0, Some(1))];
        h.push(Event {
            key: b"other".to_vec(),
            op: r(None),
            call: 2,
            ret: Some(3),
        });
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    fn put(rev: i64, key: &str, v: &str) -> WatchEvent {
        WatchEvent {
            revision: rev,
            key: key.as_bytes().to_vec(),
            value: Some(v.as_bytes().to_vec()),
        }
    }
    fn del(rev: i64, key: &str) -> WatchEvent {
        WatchEvent {
            revision: rev,
            key: key.as_bytes().to_vec(),
            value: None,
        }
    }
    fn full() -> Vec<WatchEvent> {
        vec![
            put(2, "a", "1"),
            put(3, "b", "1"),
            // One transaction changing two keys.
            put(4, "a", "2"),
            del(4, "b"),
            put(5, "a", "3"),
        ]
    }

    #[test]
    fn complete_revision_sequence_passes() {
        assert_eq!(check_watch_revisions(&full(), 2, 5), Ok(()));
        assert_eq!(check_watch_revisions(&[], 5, 4), Ok(()));
    }

    #[test]
    fn revision_gap_is_caught() {
        let mut h = full();
        h.remove(1);
        let err = check_watch_revisions(&h, 2, 5).unwrap_err();
        assert!(err.starts_with("gap: revision 3"), "{err}");
        // Missing at the start and at the end.
        assert!(check_watch_revisions(&full()[1..], 2, 5).is_err());
        let err = check_watch_revisions(&full()[..4], 2, 5).unwrap_err();
        assert!(err.starts_with("gap: revisions 5..=5"), "{err}");
    }

    #[test]
    fn revision_duplicate_is_caught() {
        let mut h = full();
        h.insert(2, h[1].clone());
        let err = check_watch_revisions(&h, 2, 5).unwrap_err();
        assert!(err.starts_with("duplicate"), "{err}");
        // A repeated key within one multi-key revision.
        let mut h = full();
        h.insert(4, h[2].clone());
        let err = check_watch_revisions(&h, 2, 5).unwrap_err();
        assert!(err.starts_with("duplicate"), "{err}");
    }

    #[test]
    fn revision_reordering_is_caught() {
        let mut h = full();
        h.swap(0, 1);
        let err = check_watch_revisions(&h, 2, 5).unwrap_err();
        assert!(
            err.starts_with("gap") || err.starts_with("reordered"),
            "{err}"
        );
        let mut h = full();
        h.swap(3, 4);
        let err = check_watch_revisions(&h, 2, 5).unwrap_err();
        assert!(err.starts_with("reordered"), "{err}");
    }

    #[test]
    fn revisions_outside_the_range_are_caught() {
        assert!(check_watch_revisions(&full(), 3, 5).is_err());
        assert!(check_watch_revisions(&full(), 2, 4).is_err());
    }

    #[test]
    fn identical_stream_passes() {
        assert_eq!(check_watch_stream(&full(), &full()), Ok(()));
        assert_eq!(check_watch_stream(&[], &[]), Ok(()));
    }

    #[test]
    fn stream_gap_is_caught() {
        let mut d = full();
        d.remove(2);
        let err = check_watch_stream(&d, &full()).unwrap_err();
        assert!(err.starts_with("gap"), "{err}");
        let err = check_watch_stream(&full()[..3], &full()).unwrap_err();
        assert!(err.starts_with("gap"), "{err}");
    }

    #[test]
    fn stream_duplicate_is_caught() {
        let mut d = full();
        d.insert(3, d[2].clone());
        let err = check_watch_stream(&d, &full()).unwrap_err();
        assert!(err.starts_with("duplicate"), "{err}");
        // A duplicate at the very end (redelivery after a resume) too.
        let mut d = full();
        d.push(d[4].clone());
        let err = check_watch_stream(&d, &full()).unwrap_err();
        assert!(err.starts_with("duplicate"), "{err}");
    }

    #[test]
    fn stream_reordering_is_caught() {
        let mut d = full();
        d.swap(1, 2);
        let err = check_watch_stream(&d, &full()).unwrap_err();
        assert!(err.starts_with("reordered"), "{err}");
        // Same revision, keys swapped: not a revision reordering but still not the history.
        let mut d = full();
        d.swap(2, 3);
        assert!(check_watch_stream(&d, &full()).is_err());
    }

    #[test]
    fn stream_with_wrong_or_made_up_events_is_caught() {
        let mut d = full();
        d[1] = put(3, "b", "other");
        let err = check_watch_stream(&d, &full()).unwrap_err();
        assert!(err.contains("differs"), "{err}");
        let mut d = full();
        d.push(put(9, "z", "1"));
        assert!(check_watch_stream(&d, &full()).is_err());
    }

    #[test]
    fn acknowledged_write_missing_from_history_is_caught() {
        let acked = vec![put(3, "b", "1"), del(4, "b")];
        assert_eq!(check_events_present(&full(), &acked), Ok(()));
        let lost = vec![put(3, "b", "1"), put(6, "b", "2")];
        assert!(check_events_present(&full(), &lost).is_err());
        // Right revision, wrong value: the acknowledged write was replaced.
        let replaced = vec![put(5, "a", "4")];
        let err = check_events_present(&full(), &replaced).unwrap_err();
        assert!(err.contains("PUT a=3@5"), "{err}");
    }
}
