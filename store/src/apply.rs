//! Applies replicated commands to the MVCC store. Runs identically on every
//! replica: the outcome depends only on the command and the store's state.

use crate::error::{StoreError, MAX_LEASE_TTL};
use crate::mvcc::{ApplyBatch, KeyRange, ReadView};
use crate::pb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    response_op::Response,
    CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, ResponseHeader,
    ResponseOp, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::KeyValue;
use crate::pb::raftcmd::{
    store_command::Cmd, store_result::Result as Res, CommandError, StoreCommand, StoreResult,
};

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Applies one command inside its own request scope and returns its result.
pub fn apply_command(b: &mut ApplyBatch<'_>, cmd: StoreCommand, min_lease_ttl: i64) -> StoreResult {
    b.begin_request();
    let outcome = match cmd.cmd {
        Some(Cmd::Put(p)) => put(b, p).map(Res::Put),
        Some(Cmd::DeleteRange(d)) => delete_range(b, d).map(Res::DeleteRange),
        Some(Cmd::Txn(t)) => txn(b, t).map(Res::Txn),
        Some(Cmd::Compaction(c)) => b.compact(c.revision).map(|_| {
            Res::Compaction(CompactionResponse {
                header: header(b.read_revision()),
            })
        }),
        Some(Cmd::LeaseGrant(g)) => lease_grant(b, g, min_lease_ttl).map(Res::LeaseGrant),
        Some(Cmd::LeaseRevoke(r)) => match b.revoke_lease(r.id) {
            Ok(true) => {
                let rev = b.end_request();
                Ok(Res::LeaseRevoke(LeaseRevokeResponse {
                    header: header(rev),
                }))
            }
            Ok(false) => Err(StoreError::LeaseNotFound),
            Err(e) => Err(e),
        },
        Some(Cmd::LeaseExpire(e)) => {
            let mut outcome = Ok(());
            for id in e.ids {
                if let Err(err) = b.revoke_lease(id) {
                    outcome = Err(err);
                    break;
                }
            }
            outcome.map(|_| Res::Revision(b.read_revision()))
        }
        None => Err(StoreError::InvalidArgument("empty command".into())),
    };
    // A failed request must leave no partial effect; commands are validated
    // before proposal and checks run before the first write, so failures here
    // happen before anything was written.
    b.end_request();
    StoreResult {
        result: Some(outcome.unwrap_or_else(|e| {
            Res::Error(CommandError {
                code: e.code() as i32,
                message: e.to_string(),
            })
        })),
    }
}

fn put(b: &mut ApplyBatch<'_>, p: PutRequest) -> Result<PutResponse, StoreError> {
    let mut value = p.value;
    let mut lease = p.lease;
    if p.ignore_value || p.ignore_lease {
        let cur = b.get(&p.key)?.ok_or(StoreError::KeyNotFound)?;
        if p.ignore_value {
            value = cur.value;
        }
        if p.ignore_lease {
            lease = cur.lease;
        }
    }
    if lease != 0 && !b.state().leases.contains_key(&lease) {
        return Err(StoreError::LeaseNotFound);
    }
    let prev = b.put(&p.key, value, lease)?;
    Ok(PutResponse {
        header: header(b.write_revision()),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

fn delete_range(
    b: &mut ApplyBatch<'_>,
    d: DeleteRangeRequest,
) -> Result<DeleteRangeResponse, StoreError> {
    let prevs = b.delete_range(&KeyRange::from_etcd(&d.key, &d.range_end))?;
    Ok(DeleteRangeResponse {
        header: header(b.read_revision()),
        deleted: prevs.len() as i64,
        prev_kvs: if d.prev_kv { prevs } else { Vec::new() },
    })
}

/// What evaluating a txn reads: a write in progress (seeing its own
/// writes) or a read-only view of the current revision.
trait TxnView {
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError>;
    fn range_raw(
        &self,
        r: &RangeRequest,
    ) -> Result<crate::pb::etcdserverpb::RangeResponse, StoreError>;
    fn read_revision(&self) -> i64;
    fn compacted(&self) -> i64;
    fn has_lease(&self, id: i64) -> bool;
    /// Executes a Put or DeleteRange of a txn branch.
    fn write(&mut self, req: Request) -> Result<Response, StoreError>;
}

impl TxnView for ApplyBatch<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        ApplyBatch::get(self, key)
    }
    fn range_raw(
        &self,
        r: &RangeRequest,
    ) -> Result<crate::pb::etcdserverpb::RangeResponse, StoreError> {
        ApplyBatch::range(self, r)
    }
    fn read_revision(&self) -> i64 {
        ApplyBatch::read_revision(self)
    }
    fn compacted(&self) -> i64 {
        self.state().compacted
    }
    fn has_lease(&self, id: i64) -> bool {
        self.state().leases.contains_key(&id)
    }
    fn write(&mut self, req: Request) -> Result<Response, StoreError> {
        match req {
            Request::RequestPut(p) => Ok(Response::ResponsePut(put(self, p)?)),
            Request::RequestDeleteRange(d) => {
                Ok(Response::ResponseDeleteRange(delete_range(self, d)?))
            }
            _ => Err(StoreError::InvalidArgument("not a write operation".into())),
        }
    }
}

impl TxnView for ReadView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        ReadView::get(self, key)
    }
    fn range_raw(
        &self,
        r: &RangeRequest,
    ) -> Result<crate::pb::etcdserverpb::RangeResponse, StoreError> {
        ReadView::range(self, r)
    }
    fn read_revision(&self) -> i64 {
        self.revision()
    }
    fn compacted(&self) -> i64 {
        self.state().compacted
    }
    fn has_lease(&self, id: i64) -> bool {
        self.state().leases.contains_key(&id)
    }
    fn write(&mut self, _: Request) -> Result<Response, StoreError> {
        Err(StoreError::InvalidArgument(
            "a read-only transaction cannot write".into(),
        ))
    }
}

fn range<V: TxnView + ?Sized>(
    b: &V,
    r: &RangeRequest,
) -> Result<crate::pb::etcdserverpb::RangeResponse, StoreError> {
    let mut resp = b.range_raw(r)?;
    resp.header = header(b.read_revision());
    Ok(resp)
}

/// True when no branch of `t` (nested ones included) writes.
pub fn is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) => true,
            Some(Request::RequestTxn(n)) => is_read_only(n),
            _ => false,
        })
}

/// Evaluates a txn that writes nothing against a read view, without replication.
pub fn read_only_txn(view: &mut ReadView<'_>, t: TxnRequest) -> Result<TxnResponse, StoreError> {
    let mut path = Vec::new();
    decide_path(view, &t, &mut path)?;
    check_path(view, &t, &path, &mut 0)?;
    exec_txn(view, t, &path, &mut 0)
}

fn txn(b: &mut ApplyBatch<'_>, t: TxnRequest) -> Result<TxnResponse, StoreError> {
    // Like etcd: every compare (nested ones included) is decided on the state
    // before the txn writes, and everything that can fail is checked before the
    // first write, so a failed txn leaves no partial effect.
    let mut path = Vec::new();
    decide_path(b, &t, &mut path)?;
    check_path(b, &t, &path, &mut 0)?;
    exec_txn(b, t, &path, &mut 0)
}

fn decide_path<V: TxnView + ?Sized>(
    b: &V,
    t: &TxnRequest,
    path: &mut Vec<bool>,
) -> Result<(), StoreError> {
    let mut ok = true;
    for c in &t.compare {
        if !compare(b, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in if ok { &t.success } else { &t.failure } {
        if let Some(Request::RequestTxn(n)) = &op.request {
            decide_path(b, n, path)?;
        }
    }
    Ok(())
}

fn check_path<V: TxnView + ?Sized>(
    b: &V,
    t: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<(), StoreError> {
    let ok = path.get(*at).copied().unwrap_or(false);
    *at += 1;
    for op in if ok { &t.success } else { &t.failure } {
        match &op.request {
            Some(Request::RequestPut(p)) => {
                if (p.ignore_value || p.ignore_lease) && b.get(&p.key)?.is_none() {
                    return Err(StoreError::KeyNotFound);
                }
                if p.lease != 0 && !b.has_lease(p.lease) {
                    return Err(StoreError::LeaseNotFound);
                }
            }
            Some(Request::RequestRange(r)) => {
                if r.revision > b.read_revision() {
                    return Err(StoreError::FutureRevision);
                }
                if r.revision > 0 && r.revision < b.compacted() {
                    return Err(StoreError::Compacted);
                }
            }
            Some(Request::RequestTxn(n)) => check_path(b, n, path, at)?,
            _ => {}
        }
    }
    Ok(())
}

fn exec_txn<V: TxnView + ?Sized>(
    b: &mut V,
    t: TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<TxnResponse, StoreError> {
    let succeeded = path.get(*at).copied().unwrap_or(false);
    *at += 1;
    let ops = if succeeded { t.success } else { t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let resp = match op.request {
            Some(Request::RequestRange(r)) => Response::ResponseRange(range(b, &r)?),
            Some(Request::RequestTxn(n)) => Response::ResponseTxn(exec_txn(b, n, path, at)?),
            Some(write) => b.write(write)?,
            None => {
                return Err(StoreError::InvalidArgument(
                    "txn operation without a request".into(),
                ))
            }
        };
        responses.push(ResponseOp {
            response: Some(resp),
        });
    }
    Ok(TxnResponse {
        header: header(b.read_revision()),
        succeeded,
        responses,
    })
}

fn compare<V: TxnView + ?Sized>(b: &V, c: &Compare) -> Result<bool, StoreError> {
    let target = CompareTarget::try_from(c.target)
        .map_err(|_| StoreError::InvalidArgument("unknown compare target".into()))?;
    let kvs = if c.range_end.is_empty() {
        b.get(&c.key)?.into_iter().collect::<Vec<_>>()
    } else {
        b.range_raw(&RangeRequest {
            key: c.key.clone(),
            range_end: c.range_end.clone(),
            ..Default::default()
        })?
        .kvs
    };
    if kvs.is_empty() {
        if target == CompareTarget::Value {
            return Ok(false);
        }
        return compare_kv(c, target, &KeyValue::default());
    }
    for kv in &kvs {
        if !compare_kv(c, target, kv)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> Result<bool, StoreError> {
    use std::cmp::Ordering;
    let ord: Ordering = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        _ => {
            let want = match c.target_union {
                Some(TargetUnion::Version(v))
                | Some(TargetUnion::CreateRevision(v))
                | Some(TargetUnion::ModRevision(v))
                | Some(TargetUnion::Lease(v)) => v,
                _ => 0,
            };
            let have = match target {
                CompareTarget::Version => kv.version,
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                CompareTarget::Lease => kv.lease,
                CompareTarget::Value => 0,
            };
            have.cmp(&want)
        }
    };
    let result = CompareResult::try_from(c.result)
        .map_err(|_| StoreError::InvalidArgument("unknown compare result".into()))?;
    Ok(match result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    })
}

fn lease_grant(
    b: &mut ApplyBatch<'_>,
    g: LeaseGrantRequest,
    min_ttl: i64,
) -> Result<LeaseGrantResponse, StoreError> {
    if g.ttl > MAX_LEASE_TTL {
        return Err(StoreError::LeaseTtlTooLarge);
    }
    if g.id <= 0 {
        return Err(StoreError::InvalidArgument(
            "lease ID must be positive".into(),
        ));
    }
    if b.state().leases.contains_key(&g.id) {
        return Err(StoreError::LeaseExists);
    }
    let ttl = g.ttl.max(min_ttl);
    b.grant_lease(g.id, ttl);
    Ok(LeaseGrantResponse {
        header: header(b.read_revision()),
        id: g.id,
        ttl,
        error: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::KvStore;
    use crate::pb::etcdserverpb::{compare, RequestOp};

    fn store() -> (tempfile::TempDir, KvStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, KvStore::open(db, "kv").unwrap())
    }

    fn run(s: &KvStore, cmd: Cmd) -> Res {
        let mut b = s.begin_apply().unwrap();
        let r = apply_command(&mut b, StoreCommand { cmd: Some(cmd) }, 2);
        b.commit(b"a").unwrap();
        r.result.unwrap()
    }

    fn put_cmd(k: &str, v: &str) -> Cmd {
        Cmd::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })
    }

    #[test]
    fn txn_compare_and_swap() {
        let (_d, s) = store();
        run(&s, put_cmd("k", "v1"));
        let cas = |expect: &str, new: &str| TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: b"k".to_vec(),
                target_union: Some(TargetUnion::Value(expect.into())),
                range_end: vec![],
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: new.into(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
            }],
        };
        match run(&s, Cmd::Txn(cas("v1", "v2"))) {
            Res::Txn(t) => {
                assert!(t.succeeded);
                assert_eq!(t.header.unwrap().revision, 3);
            }
            other => panic!("{other:?}"),
        }
        match run(&s, Cmd::Txn(cas("v1", "v3"))) {
            Res::Txn(t) => {
                assert!(!t.succeeded);
                assert_eq!(
                    t.header.unwrap().revision,
                    3,
                    "a failed compare does not bump the revision"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn read_only_txn_reads_without_writing() {
        let (_d, s) = store();
        run(&s, put_cmd("k", "v1"));
        let t = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: b"k".to_vec(),
                target_union: Some(TargetUnion::Value(b"v1".to_vec())),
                range_end: vec![],
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        assert!(is_read_only(&t));
        let mut view = s.read_view().unwrap();
        let r = read_only_txn(&mut view, t).unwrap();
        drop(view);
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, 2);
        match &r.responses[0].response {
            Some(Response::ResponseRange(rr)) => assert_eq!(rr.kvs[0].value, b"v1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.revisions().unwrap().0, 2, "nothing was written");
        let writes = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest::default())),
            }],
            ..Default::default()
        };
        assert!(!is_read_only(&writes));
    }

    #[test]
    fn failing_txn_writes_nothing() {
        let (_d, s) = store();
        let t = TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: b"a".to_vec(),
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: b"b".to_vec(),
                        lease: 42,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        assert!(matches!(run(&s, Cmd::Txn(t)), Res::Error(_)));
        assert_eq!(s.revisions().unwrap().0, 1);
    }

    #[test]
    fn lease_revoke_deletes_keys_in_one_revision() {
        let (_d, s) = store();
        run(&s, Cmd::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 7 }));
        for k in ["b", "a"] {
            run(
                &s,
                Cmd::Put(PutRequest {
                    key: k.into(),
                    lease: 7,
                    ..Default::default()
                }),
            );
        }
        match run(
            &s,
            Cmd::LeaseRevoke(crate::pb::etcdserverpb::LeaseRevokeRequest { id: 7 }),
        ) {
            Res::LeaseRevoke(r) => assert_eq!(r.header.unwrap().revision, 4),
            other => panic!("{other:?}"),
        }
        assert!(s.read().unwrap().leases.is_empty());
        assert!(matches!(
            run(
                &s,
                Cmd::LeaseRevoke(crate::pb::etcdserverpb::LeaseRevokeRequest { id: 7 })
            ),
            Res::Error(_)
        ));
    }
}
