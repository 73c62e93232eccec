//! The MVCC key-value store: the key index in memory, every revision's
//! record in the backend, reads at any retained revision, write
//! transactions that share one revision, and physical compaction.

use super::backend::*;
use super::key_index::{KeyChange, KeyIndex, KeyRange};
use super::revision::Revision;
use crate::error::StoreError;
use crate::pb::etcdserverpb::{range_request, RangeRequest, RangeResponse};
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A lease as the replicated state knows it (its deadline is leader-local, see `lease`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Granted TTL in seconds (after the minimum TTL was applied).
    pub ttl: i64,
    /// Keys currently attached.
    pub keys: BTreeSet<Vec<u8>>,
}

/// The in-memory part of the store, guarded by one lock.
#[derive(Debug, Default)]
pub struct MvccState {
    /// Every key's retained history.
    pub index: KeyIndex,
    /// Revision of the last write.
    pub current: i64,
    /// Revision of the last compaction (0 = never).
    pub compacted: i64,
    /// Live leases.
    pub leases: BTreeMap<i64, LeaseRecord>,
}

/// The events of one revision, in sub-revision order, published to watchers.
#[derive(Debug, Clone)]
pub struct RevisionEvents {
    /// Revision all events share.
    pub revision: i64,
    /// Events with `prev_kv` filled when a previous value existed.
    pub events: Vec<Event>,
}

/// A stretch of history read by [`KvStore::history`].
#[derive(Debug)]
pub struct History {
    /// Matching events, grouped by revision.
    pub batches: Vec<RevisionEvents>,
    /// Every revision up to this one has been read.
    pub reached: i64,
}

/// Lease changes an applied batch made, for the leader-local expiry clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    /// A lease was granted with this TTL.
    Granted(i64, i64),
    /// A lease was revoked or expired.
    Removed(i64),
}

/// Where values of revisions are read from.
pub trait ValueSource {
    /// The record stored at `rev` (a put), if any.
    fn value(&self, rev: Revision) -> Result<Option<KeyValue>, StoreError>;
}

struct TreeValues<'a>(&'a sled::Tree);

impl ValueSource for TreeValues<'_> {
    fn value(&self, rev: Revision) -> Result<Option<KeyValue>, StoreError> {
        match self.0.get(rev_key(rev, false))? {
            Some(bytes) => Ok(Some(KeyValue::decode(bytes.as_ref())?)),
            None => Ok(None),
        }
    }
}

/// The store: backend tree, in-memory state and the watch publication channel.
pub struct KvStore {
    db: sled::Db,
    /// Name under which the active tree is recorded in [`ACTIVE_TREES`].
    base: String,
    /// The active tree (name, handle); replaced by a snapshot restore. Take `state` first.
    tree: RwLock<(String, sled::Tree)>,
    state: RwLock<MvccState>,
    events: tokio::sync::broadcast::Sender<Arc<RevisionEvents>>,
}

/// Revisions of history kept for slow watchers in the publication channel before they fall back to the backend.
const EVENT_CHANNEL_REVISIONS: usize = 4096;

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Storage("store lock poisoned by an earlier failure".into())
}

/// Tree recording which of a store's two trees is active (restores write the other one).
const ACTIVE_TREES: &str = "store_active_tree";
/// Records copied per backend batch while restoring an image.
const RESTORE_BATCH: usize = 4096;

fn other_tree_name(base: &str, active: &str) -> String {
    if active == base {
        format!("{base}.alt")
    } else {
        base.to_string()
    }
}

impl KvStore {
    /// Opens the store's tree `tree_name` in `db` and rebuilds the in-memory index.
    pub fn open(db: sled::Db, tree_name: &str) -> Result<KvStore, StoreError> {
        let pointers = db.open_tree(ACTIVE_TREES)?;
        let active = match pointers.get(tree_name)? {
            Some(v) => String::from_utf8(v.to_vec())
                .map_err(|_| StoreError::Corrupt("active tree name is not UTF-8".into()))?,
            None => tree_name.to_string(),
        };
        if active != tree_name && active != other_tree_name(tree_name, tree_name) {
            return Err(StoreError::Corrupt(format!(
                "unknown active tree {active:?}"
            )));
        }
        // A restore interrupted by a crash leaves a partial copy in the other tree.
        let spare = db.open_tree(other_tree_name(tree_name, &active))?;
        if !spare.is_empty() {
            spare.clear()?;
        }
        let tree = db.open_tree(&active)?;
        let state = load_state(&tree)?;
        let (events, _) = tokio::sync::broadcast::channel(EVENT_CHANNEL_REVISIONS);
        Ok(KvStore {
            db,
            base: tree_name.to_string(),
            tree: RwLock::new((active, tree)),
            state: RwLock::new(state),
            events,
        })
    }

    /// The active tree. Callers hold the state lock so a restore cannot swap it meanwhile.
    fn tree(&self) -> sled::Tree {
        // The guarded value is a handle; a poisoned lock still holds a valid one.
        self.tree
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Read access to the in-memory state.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, MvccState>, StoreError> {
        self.state.read().map_err(poisoned)
    }

    /// Current and compaction revisions.
    pub fn revisions(&self) -> Result<(i64, i64), StoreError> {
        let st = self.read()?;
        Ok((st.current, st.compacted))
    }

    /// Subscribes to the events of every future revision.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<RevisionEvents>> {
        self.events.subscribe()
    }

    /// Serves a Range at the current state (header left for the caller).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let st = self.read()?;
        let tree = self.tree();
        let mut resp = range_in(&st, &TreeValues(&tree), req, st.current)?;
        resp.header = Some(crate::pb::etcdserverpb::ResponseHeader {
            revision: st.current,
            ..Default::default()
        });
        Ok(resp)
    }

    /// Events of revisions `[from, to]` for keys in `range`, grouped by
    /// revision, with previous values when `prev_kv` is set. Fails with
    /// `Compacted` when `from` is below the compaction point.
    ///
    /// One call reads at most about `max_events` matching events and
    /// `max_scanned` records (always whole revisions), because writes wait while
    /// it holds the store; `reached` says up to which revision it got, so the
    /// caller continues from `reached + 1`.
    pub fn history(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        prev_kv: bool,
        max_events: usize,
        max_scanned: usize,
    ) -> Result<History, StoreError> {
        let st = self.read()?;
        if from < st.compacted {
            return Err(StoreError::Compacted);
        }
        let tree = self.tree();
        let values = TreeValues(&tree);
        let mut out: Vec<RevisionEvents> = Vec::new();
        let (mut matched, mut scanned) = (0usize, 0usize);
        let mut last_main: Option<i64> = None;
        for item in tree.range(rev_scan_start(from)..rev_scan_start(to.saturating_add(1))) {
            let (k, v) = item?;
            let Some((rev, tombstone)) = parse_rev_key(&k) else {
                continue;
            };
            if let Some(prev_main) = last_main {
                if prev_main != rev.main && (matched >= max_events || scanned >= max_scanned) {
                    return Ok(History {
                        batches: out,
                        reached: prev_main,
                    });
                }
            }
            last_main = Some(rev.main);
            scanned += 1;
            let kv = KeyValue::decode(v.as_ref())?;
            if !range.contains(&kv.key) {
                continue;
            }
            let prev = if prev_kv {
                previous_value(&st, &values, &kv.key, rev.main)?
            } else {
                None
            };
            let ev = Event {
                r#type: if tombstone {
                    EventType::Delete
                } else {
                    EventType::Put
                } as i32,
                kv: Some(kv),
                prev_kv: prev,
            };
            match out.last_mut() {
                Some(last) if last.revision == rev.main => last.events.push(ev),
                _ => out.push(RevisionEvents {
                    revision: rev.main,
                    events: vec![ev],
                }),
            }
            matched += 1;
        }
        Ok(History {
            batches: out,
            reached: to,
        })
    }

    /// A consistent read-only view of the current state (writes wait while it lives).
    pub fn read_view(&self) -> Result<ReadView<'_>, StoreError> {
        let st = self.read()?;
        Ok(ReadView {
            st,
            tree: self.tree(),
        })
    }

    /// Starts applying a batch of replicated commands; commit it with [`ApplyBatch::commit`].
    pub fn begin_apply(&self) -> Result<ApplyBatch<'_>, StoreError> {
        let st = self.state.write().map_err(poisoned)?;
        Ok(ApplyBatch {
            store: self,
            tree: self.tree(),
            st,
            batch: sled::Batch::default(),
            pending: HashMap::new(),
            published: Vec::new(),
            lease_changes: Vec::new(),
            req: None,
        })
    }

    /// The consensus' applied record.
    pub fn applied_record(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let _st = self.read()?;
        Ok(self.tree().get(meta_key(META_APPLIED))?.map(|v| v.to_vec()))
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Writes every record of the store to `out` as a consistent image (writes wait meanwhile).
    pub fn write_image(&self, out: &mut dyn std::io::Write) -> Result<(), StoreError> {
        let _st = self.read()?;
        super::image::write_image(self.tree().iter(), out)
    }

    /// Replaces the whole store with an image made by [`KvStore::write_image`].
    ///
    /// The image is copied in bounded batches into the spare tree, made
    /// durable, and only then made active, so a crash leaves either the old
    /// store or the new one, and no image is ever held in memory whole.
    pub fn restore_image(&self, input: &mut dyn std::io::Read) -> Result<(), StoreError> {
        let mut st = self.state.write().map_err(poisoned)?;
        let active = self
            .tree
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        let next_name = other_tree_name(&self.base, &active);
        let next = self.db.open_tree(&next_name)?;
        next.clear()?;
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        super::image::read_image(input, |k, v| {
            batch.insert(k, v);
            pending += 1;
            if pending == RESTORE_BATCH {
                next.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
            Ok(())
        })?;
        next.apply_batch(batch)?;
        self.db.flush()?;
        self.db
            .open_tree(ACTIVE_TREES)?
            .insert(self.base.as_bytes(), next_name.as_bytes())?;
        self.db.flush()?;
        let new_state = load_state(&next)?;
        let old = std::mem::replace(
            &mut *self.tree.write().unwrap_or_else(|p| p.into_inner()),
            (next_name, next),
        );
        // Frees the old copy; a crash before this is cleaned up at the next open.
        old.1.clear()?;
        *st = new_state;
        Ok(())
    }

    /// CRC-32 of every key-value record up to revision `rev` (for HashKV).
    pub fn hash_kv(&self, rev: i64) -> Result<u32, StoreError> {
        let _st = self.read()?;
        let mut h = crc32fast::Hasher::new();
        for item in self
            .tree()
            .range(rev_scan_start(0)..rev_scan_start(rev.saturating_add(1)))
        {
            let (k, v) = item?;
            h.update(&k);
            h.update(&v);
        }
        Ok(h.finalize())
    }

    /// CRC-32 of the whole backend except the node-local applied record (for Hash).
    pub fn hash_all(&self) -> Result<u32, StoreError> {
        let _st = self.read()?;
        let mut h = crc32fast::Hasher::new();
        let applied = meta_key(META_APPLIED);
        for item in self.tree().iter() {
            let (k, v) = item?;
            if k.as_ref() != applied.as_slice() {
                h.update(&k);
                h.update(&v);
            }
        }
        Ok(h.finalize())
    }
}

/// Rebuilds the in-memory state from the backend.
fn load_state(tree: &sled::Tree) -> Result<MvccState, StoreError> {
    let mut st = MvccState::default();
    let mut lease_of: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut max_rev = 0;
    for item in tree.scan_prefix([REV_PREFIX]) {
        let (k, v) = item?;
        let (rev, tombstone) = parse_rev_key(&k)
            .ok_or_else(|| StoreError::Corrupt(format!("bad revision key {k:?}")))?;
        let kv = KeyValue::decode(v.as_ref())?;
        max_rev = max_rev.max(rev.main);
        if tombstone {
            st.index.restore(
                &kv.key,
                KeyChange {
                    rev,
                    create: 0,
                    version: 0,
                },
            );
            lease_of.remove(&kv.key);
        } else {
            st.index.restore(
                &kv.key,
                KeyChange {
                    rev,
                    create: kv.create_revision,
                    version: kv.version,
                },
            );
            if kv.lease != 0 {
                lease_of.insert(kv.key, kv.lease);
            } else {
                lease_of.remove(&kv.key);
            }
        }
    }
    for item in tree.scan_prefix([LEASE_PREFIX]) {
        let (k, v) = item?;
        let id = parse_lease_key(&k).ok_or_else(|| StoreError::Corrupt("bad lease key".into()))?;
        let ttl = decode_i64(&v).ok_or_else(|| StoreError::Corrupt("bad lease record".into()))?;
        st.leases.insert(
            id,
            LeaseRecord {
                ttl,
                keys: BTreeSet::new(),
            },
        );
    }
    for (key, lease) in lease_of {
        if let Some(l) = st.leases.get_mut(&lease) {
            l.keys.insert(key);
        }
    }
    let meta = |name: &str| -> Result<i64, StoreError> {
        Ok(match tree.get(meta_key(name))? {
            Some(v) => decode_i64(&v)
                .ok_or_else(|| StoreError::Corrupt(format!("bad meta record {name}")))?,
            None => 0,
        })
    };
    // A new store is at revision 1, as etcd's is: the first write gets revision 2.
    st.current = meta(META_CURRENT)?.max(max_rev).max(1);
    st.compacted = meta(META_COMPACTED)?;
    Ok(st)
}

/// The previous value of `key` just before main revision `main`.
fn previous_value(
    st: &MvccState,
    values: &dyn ValueSource,
    key: &[u8],
    main: i64,
) -> Result<Option<KeyValue>, StoreError> {
    match st.index.get(key).and_then(|h| h.visible_at(main - 1)) {
        Some(c) => values.value(c.rev),
        None => Ok(None),
    }
}

/// Serves a Range against `st` at current revision `current`.
pub fn range_in(
    st: &MvccState,
    values: &dyn ValueSource,
    req: &RangeRequest,
    current: i64,
) -> Result<RangeResponse, StoreError> {
    let at = if req.revision <= 0 {
        current
    } else {
        req.revision
    };
    if at > current {
        return Err(StoreError::FutureRevision);
    }
    if at < st.compacted {
        return Err(StoreError::Compacted);
    }
    let range = KeyRange::from_etcd(&req.key, &req.range_end);
    let mut count = 0i64;
    let mut hits: Vec<(&Vec<u8>, KeyChange)> = Vec::new();
    for (k, c) in st.index.visible(&range, at) {
        count += 1;
        if req.count_only {
            continue;
        }
        let mod_ok = (req.min_mod_revision == 0 || c.rev.main >= req.min_mod_revision)
            && (req.max_mod_revision == 0 || c.rev.main <= req.max_mod_revision);
        let create_ok = (req.min_create_revision == 0 || c.create >= req.min_create_revision)
            && (req.max_create_revision == 0 || c.create <= req.max_create_revision);
        if mod_ok && create_ok {
            hits.push((k, c));
        }
    }
    let mut resp = RangeResponse {
        count,
        ..Default::default()
    };
    if req.count_only {
        return Ok(resp);
    }
    use range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    let limit = if req.limit > 0 {
        req.limit as usize
    } else {
        usize::MAX
    };
    let descending = order == SortOrder::Descend;
    let mut kvs: Vec<KeyValue>;
    if target == SortTarget::Value {
        kvs = fetch(values, &hits)?;
        kvs.sort_by(|a, b| {
            let o = a.value.cmp(&b.value);
            if descending {
                o.reverse()
            } else {
                o
            }
        });
    } else {
        if order != SortOrder::None {
            let field = |c: &KeyChange| match target {
                SortTarget::Version => c.version,
                SortTarget::Create => c.create,
                SortTarget::Mod => c.rev.main,
                _ => 0,
            };
            if target == SortTarget::Key {
                if descending {
                    hits.reverse();
                }
            } else {
                hits.sort_by(|a, b| {
                    let o = field(&a.1).cmp(&field(&b.1));
                    if descending {
                        o.reverse()
                    } else {
                        o
                    }
                });
            }
        }
        let take = hits.len().min(limit);
        kvs = fetch(values, &hits[..take])?;
        resp.more = hits.len() > limit;
    }
    if kvs.len() > limit {
        kvs.truncate(limit);
        resp.more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    resp.kvs = kvs;
    Ok(resp)
}

fn fetch(
    values: &dyn ValueSource,
    hits: &[(&Vec<u8>, KeyChange)],
) -> Result<Vec<KeyValue>, StoreError> {
    hits.iter()
        .map(|(k, c)| {
            values.value(c.rev)?.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "index points at missing record {}:{} of key {:?}",
                    c.rev.main,
                    c.rev.sub,
                    String::from_utf8_lossy(k)
                ))
            })
        })
        .collect()
}

/// The store at one revision, for read-only transactions.
pub struct ReadView<'a> {
    st: RwLockReadGuard<'a, MvccState>,
    tree: sled::Tree,
}

impl ReadView<'_> {
    /// The in-memory state.
    pub fn state(&self) -> &MvccState {
        &self.st
    }

    /// The revision this view reads at.
    pub fn revision(&self) -> i64 {
        self.st.current
    }

    /// Range at this view's revision (header left for the caller).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        range_in(&self.st, &TreeValues(&self.tree), req, self.st.current)
    }

    /// The live value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        match self
            .st
            .index
            .get(key)
            .and_then(|h| h.visible_at(self.st.current))
        {
            Some(c) => TreeValues(&self.tree).value(c.rev),
            None => Ok(None),
        }
    }
}

/// The request being applied inside a batch: its revision and changes so far.
struct RequestScope {
    main: i64,
    sub: i64,
    events: Vec<Event>,
}

/// One applied raft batch: every change goes to one sled batch, committed atomically.
pub struct ApplyBatch<'a> {
    store: &'a KvStore,
    tree: sled::Tree,
    st: RwLockWriteGuard<'a, MvccState>,
    batch: sled::Batch,
    pending: HashMap<Revision, KeyValue>,
    published: Vec<Arc<RevisionEvents>>,
    lease_changes: Vec<LeaseChange>,
    req: Option<RequestScope>,
}

struct Overlay<'a> {
    pending: &'a HashMap<Revision, KeyValue>,
    tree: &'a sled::Tree,
}

impl ValueSource for Overlay<'_> {
    fn value(&self, rev: Revision) -> Result<Option<KeyValue>, StoreError> {
        if let Some(kv) = self.pending.get(&rev) {
            return Ok(Some(kv.clone()));
        }
        TreeValues(self.tree).value(rev)
    }
}

impl ApplyBatch<'_> {
    /// The in-memory state as this batch has changed it so far.
    pub fn state(&self) -> &MvccState {
        &self.st
    }

    /// Starts one client request; every change until [`ApplyBatch::end_request`] shares a revision.
    pub fn begin_request(&mut self) {
        self.req = Some(RequestScope {
            main: self.st.current + 1,
            sub: 0,
            events: Vec::new(),
        });
    }

    /// Finishes the request; returns the store revision after it.
    pub fn end_request(&mut self) -> i64 {
        if let Some(scope) = self.req.take() {
            if !scope.events.is_empty() {
                self.st.current = scope.main;
                self.published.push(Arc::new(RevisionEvents {
                    revision: scope.main,
                    events: scope.events,
                }));
            }
        }
        self.st.current
    }

    /// Revision reads inside the current request see (its own writes included).
    pub fn read_revision(&self) -> i64 {
        match &self.req {
            Some(s) if !s.events.is_empty() => s.main,
            _ => self.st.current,
        }
    }

    /// Revision the current request will have if it writes.
    pub fn write_revision(&self) -> i64 {
        self.req.as_ref().map_or(self.st.current + 1, |s| s.main)
    }

    /// Range inside the current request.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let values = Overlay {
            pending: &self.pending,
            tree: &self.tree,
        };
        range_in(&self.st, &values, req, self.read_revision())
    }

    /// The live value of `key` as the current request sees it.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let at = self.read_revision();
        match self.st.index.get(key).and_then(|h| h.visible_at(at)) {
            Some(c) => Overlay {
                pending: &self.pending,
                tree: &self.tree,
            }
            .value(c.rev),
            None => Ok(None),
        }
    }

    fn next_rev(&mut self) -> Revision {
        let scope = self.req.get_or_insert_with(|| RequestScope {
            main: self.st.current + 1,
            sub: 0,
            events: Vec::new(),
        });
        let rev = Revision::new(scope.main, scope.sub);
        scope.sub += 1;
        rev
    }

    /// Puts `key` = `value` with `lease`; returns the previous value.
    pub fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<Option<KeyValue>, StoreError> {
        let prev = self.get(key)?;
        let rev = self.next_rev();
        let change = self.st.index.put(key, rev);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: change.create,
            mod_revision: rev.main,
            version: change.version,
            value,
            lease,
        };
        let prev_lease = prev.as_ref().map_or(0, |p| p.lease);
        if prev_lease != lease {
            if let Some(l) = self.st.leases.get_mut(&prev_lease) {
                l.keys.remove(key);
            }
        }
        if let Some(l) = self.st.leases.get_mut(&lease) {
            l.keys.insert(key.to_vec());
        }
        self.batch.insert(rev_key(rev, false), kv.encode_to_vec());
        self.pending.insert(rev, kv.clone());
        self.push_event(EventType::Put, kv, prev.clone());
        Ok(prev)
    }

    /// Deletes the live keys in `range`; returns their previous values.
    pub fn delete_range(&mut self, range: &KeyRange) -> Result<Vec<KeyValue>, StoreError> {
        let at = self.read_revision();
        let keys: Vec<Vec<u8>> = self
            .st
            .index
            .visible(range, at)
            .map(|(k, _)| k.clone())
            .collect();
        let mut prevs = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(prev) = self.delete_key(&key)? {
                prevs.push(prev);
            }
        }
        Ok(prevs)
    }

    fn delete_key(&mut self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let Some(prev) = self.get(key)? else {
            return Ok(None);
        };
        let rev = self.next_rev();
        self.st.index.tombstone(key, rev);
        if let Some(l) = self.st.leases.get_mut(&prev.lease) {
            l.keys.remove(key);
        }
        let kv = KeyValue {
            key: key.to_vec(),
            mod_revision: rev.main,
            ..Default::default()
        };
        self.batch.insert(rev_key(rev, true), kv.encode_to_vec());
        self.push_event(EventType::Delete, kv, Some(prev.clone()));
        Ok(Some(prev))
    }

    fn push_event(&mut self, ty: EventType, kv: KeyValue, prev: Option<KeyValue>) {
        if let Some(scope) = self.req.as_mut() {
            scope.events.push(Event {
                r#type: ty as i32,
                kv: Some(kv),
                prev_kv: prev,
            });
        }
    }

    /// Compacts history below `rev` physically.
    pub fn compact(&mut self, rev: i64) -> Result<(), StoreError> {
        if rev <= self.st.compacted {
            return Err(StoreError::Compacted);
        }
        if rev > self.st.current {
            return Err(StoreError::FutureRevision);
        }
        for (r, tombstone) in self.st.index.compact(rev) {
            self.pending.remove(&r);
            self.batch.remove(rev_key(r, tombstone));
        }
        self.st.compacted = rev;
        Ok(())
    }

    /// Records a granted lease.
    pub fn grant_lease(&mut self, id: i64, ttl: i64) {
        self.st.leases.insert(
            id,
            LeaseRecord {
                ttl,
                keys: BTreeSet::new(),
            },
        );
        self.batch.insert(lease_key(id), &encode_i64(ttl));
        self.lease_changes.push(LeaseChange::Granted(id, ttl));
    }

    /// Revokes a lease, deleting its keys in key order in the current request.
    pub fn revoke_lease(&mut self, id: i64) -> Result<bool, StoreError> {
        let Some(lease) = self.st.leases.remove(&id) else {
            return Ok(false);
        };
        for key in &lease.keys {
            self.delete_key(key)?;
        }
        self.batch.remove(lease_key(id));
        self.lease_changes.push(LeaseChange::Removed(id));
        Ok(true)
    }

    /// Writes the batch with the consensus' applied record; returns what to publish.
    pub fn commit(
        mut self,
        applied: &[u8],
    ) -> Result<(Vec<Arc<RevisionEvents>>, Vec<LeaseChange>), StoreError> {
        self.end_request();
        self.batch
            .insert(meta_key(META_CURRENT), &encode_i64(self.st.current));
        self.batch
            .insert(meta_key(META_COMPACTED), &encode_i64(self.st.compacted));
        self.batch.insert(meta_key(META_APPLIED), applied);
        self.tree.apply_batch(self.batch)?;
        drop(self.st);
        for ev in &self.published {
            // No receivers is fine: nobody is watching.
            let _ = self.store.events.send(ev.clone());
        }
        Ok((self.published, self.lease_changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, KvStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, KvStore::open(db, "kv").unwrap())
    }

    fn put(s: &KvStore, k: &str, v: &str) -> i64 {
        let mut b = s.begin_apply().unwrap();
        b.begin_request();
        b.put(k.as_bytes(), v.as_bytes().to_vec(), 0).unwrap();
        let rev = b.end_request();
        b.commit(b"x").unwrap();
        rev
    }

    fn get(s: &KvStore, k: &str, rev: i64) -> Result<Vec<(String, String)>, StoreError> {
        let r = s.range(&RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        })?;
        Ok(r.kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key).unwrap(),
                    String::from_utf8(kv.value).unwrap(),
                )
            })
            .collect())
    }

    #[test]
    fn historic_reads_and_compaction_errors() {
        let (_d, s) = store();
        assert_eq!(
            s.revisions().unwrap(),
            (1, 0),
            "a new store is at revision 1, like etcd"
        );
        assert_eq!(put(&s, "a", "1"), 2);
        assert_eq!(put(&s, "a", "2"), 3);
        assert_eq!(get(&s, "a", 2).unwrap(), vec![("a".into(), "1".into())]);
        assert_eq!(get(&s, "a", 4), Err(StoreError::FutureRevision));
        let mut b = s.begin_apply().unwrap();
        b.compact(3).unwrap();
        b.commit(b"x").unwrap();
        assert_eq!(get(&s, "a", 2), Err(StoreError::Compacted));
        assert_eq!(get(&s, "a", 3).unwrap(), vec![("a".into(), "2".into())]);
        let mut b = s.begin_apply().unwrap();
        assert_eq!(b.compact(3), Err(StoreError::Compacted));
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let s = KvStore::open(db.clone(), "kv").unwrap();
            put(&s, "a", "1");
            put(&s, "b", "2");
            let mut b = s.begin_apply().unwrap();
            b.begin_request();
            b.delete_range(&KeyRange::Single(b"b".to_vec())).unwrap();
            b.end_request();
            b.compact(4).unwrap();
            b.commit(b"applied-3").unwrap();
            db.flush().unwrap();
        }
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let s = KvStore::open(db, "kv").unwrap();
        assert_eq!(s.revisions().unwrap(), (4, 4));
        assert_eq!(get(&s, "a", 0).unwrap().len(), 1);
        assert!(get(&s, "b", 0).unwrap().is_empty());
        assert_eq!(
            s.applied_record().unwrap().as_deref(),
            Some(b"applied-3".as_slice())
        );
    }

    #[test]
    fn history_passes_are_bounded_and_resume_exactly() {
        let (_d, s) = store();
        for i in 0..10 {
            put(&s, if i % 3 == 0 { "w" } else { "other" }, &format!("v{i}"));
        }
        let range = KeyRange::Single(b"w".to_vec());
        let (current, _) = s.revisions().unwrap();
        let mut seen = Vec::new();
        let mut from = 1;
        let mut passes = 0;
        while from <= current {
            let h = s.history(&range, from, current, false, 1000, 2).unwrap();
            assert!(h.reached >= from, "every pass makes progress");
            for b in h.batches {
                assert!(b.revision >= from && b.revision <= h.reached);
                seen.push(b.revision);
            }
            from = h.reached + 1;
            passes += 1;
        }
        assert_eq!(
            seen,
            vec![2, 5, 8, 11],
            "each matching revision exactly once, in order"
        );
        assert!(passes >= 5, "scan bound split the work: {passes} passes");
    }

    #[test]
    fn restored_store_survives_reopen() {
        let (_d, a) = store();
        put(&a, "k1", "v1");
        let mut img = Vec::new();
        a.write_image(&mut img).unwrap();
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let b = KvStore::open(db.clone(), "kv").unwrap();
            put(&b, "old", "x");
            b.restore_image(&mut img.as_slice()).unwrap();
            db.flush().unwrap();
        }
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let b = KvStore::open(db.clone(), "kv").unwrap();
        assert_eq!(get(&b, "k1", 0).unwrap(), vec![("k1".into(), "v1".into())]);
        assert!(get(&b, "old", 0).unwrap().is_empty());
        assert!(
            db.open_tree("kv").unwrap().is_empty(),
            "the replaced copy was freed"
        );
    }

    #[test]
    fn image_round_trip() {
        let (_d, a) = store();
        put(&a, "k1", "v1");
        put(&a, "k2", "v2");
        let mut img = Vec::new();
        a.write_image(&mut img).unwrap();
        let (_d2, b) = store();
        put(&b, "junk", "x");
        b.restore_image(&mut img.as_slice()).unwrap();
        assert_eq!(b.revisions().unwrap(), (3, 0));
        assert!(get(&b, "junk", 0).unwrap().is_empty());
        assert_eq!(a.hash_kv(3).unwrap(), b.hash_kv(3).unwrap());
        // A second restore goes back to the first tree; both survive a reopen.
        b.restore_image(&mut img.as_slice()).unwrap();
        assert_eq!(b.revisions().unwrap(), (3, 0));
        img.truncate(img.len() - 3);
        let (_d3, c) = store();
        assert!(
            c.restore_image(&mut img.as_slice()).is_err(),
            "truncated image is refused"
        );
    }
}
