//! The leader-local lease clock. Which leases exist is replicated state;
//! when they expire is decided by the current leader alone, which then
//! proposes their revocation through the log so every replica deletes the
//! same keys at the same revision.

use crate::mvcc::LeaseChange;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Deadlines of the leases this member knows, meaningful while it leads.
#[derive(Debug, Default)]
pub struct LeaseClock {
    inner: Mutex<ClockState>,
}

#[derive(Debug, Default)]
struct ClockState {
    deadlines: HashMap<i64, (Instant, i64)>,
    /// Leases whose expiry has been proposed and not yet applied.
    expiring: HashSet<i64>,
}

impl LeaseClock {
    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // The clock holds no invariants a panic could break; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows grants and revocations applied by the state machine.
    pub fn on_applied(&self, changes: &[LeaseChange]) {
        let mut st = self.state();
        let now = Instant::now();
        for c in changes {
            match *c {
                LeaseChange::Granted(id, ttl) => {
                    st.deadlines.insert(id, (now + secs(ttl), ttl));
                }
                LeaseChange::Removed(id) => {
                    st.deadlines.remove(&id);
                    st.expiring.remove(&id);
                }
            }
        }
    }

    /// Restarts every lease's full TTL, as etcd does when a member becomes leader
    /// (it cannot know how much time the previous leader had counted).
    pub fn promote(&self, leases: impl Iterator<Item = (i64, i64)>) {
        let mut st = self.state();
        let now = Instant::now();
        st.deadlines = leases
            .map(|(id, ttl)| (id, (now + secs(ttl), ttl)))
            .collect();
        st.expiring.clear();
    }

    /// Renews a lease; returns its TTL, or `None` when it is unknown.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut st = self.state();
        if st.expiring.contains(&id) {
            return None;
        }
        let entry = st.deadlines.get_mut(&id)?;
        entry.0 = Instant::now() + secs(entry.1);
        Some(entry.1)
    }

    /// Remaining whole seconds and granted TTL of a lease.
    pub fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        let st = self.state();
        let (deadline, ttl) = st.deadlines.get(&id)?;
        let left = deadline.saturating_duration_since(Instant::now()).as_secs() as i64;
        Some((left, *ttl))
    }

    /// When a lease expires, as this member's clock sees it.
    pub fn deadline(&self, id: i64) -> Option<Instant> {
        self.state().deadlines.get(&id).map(|(d, _)| *d)
    }

    /// Leases past their deadline that are not already being revoked; marks them as being revoked.
    pub fn take_expired(&self, max: usize) -> Vec<i64> {
        let mut st = self.state();
        let now = Instant::now();
        let mut ids: Vec<i64> = st
            .deadlines
            .iter()
            .filter(|(id, (deadline, _))| *deadline <= now && !st.expiring.contains(id))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.truncate(max);
        st.expiring.extend(ids.iter().copied());
        ids
    }

    /// Forgets that an expiry was proposed (the proposal failed); it will be retried.
    pub fn expiry_failed(&self, ids: &[i64]) {
        let mut st = self.state();
        for id in ids {
            st.expiring.remove(id);
        }
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_taken_once() {
        let c = LeaseClock::default();
        c.on_applied(&[LeaseChange::Granted(1, 0), LeaseChange::Granted(2, 3600)]);
        assert_eq!(c.take_expired(10), vec![1]);
        assert!(
            c.take_expired(10).is_empty(),
            "an expiry in flight is not proposed twice"
        );
        assert_eq!(c.renew(1), None, "an expiring lease cannot be renewed");
        c.expiry_failed(&[1]);
        assert_eq!(c.take_expired(10), vec![1]);
        c.on_applied(&[LeaseChange::Removed(1)]);
        assert_eq!(c.renew(2), Some(3600));
        assert_eq!(c.remaining(2).map(|r| r.1), Some(3600));
    }
}
