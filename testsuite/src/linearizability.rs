//! A linearizability checker for key-value histories (Wing & Gong's search
//! with Lowe's memoization, as in porcupine). Keys are independent registers,
//! so each key's sub-history is checked on its own.
//!
//! A history is a list of operations with the times the client invoked them
//! and saw their response. An operation whose outcome is unknown (timed out,
//! connection lost) has no response time: it may take effect at any point
//! after its invocation, or never.

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
}
