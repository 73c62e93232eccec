//! Checks every client request at the edge, before it is proposed, with
//! the same rules and messages as etcd's API layer.

use crate::error::{StoreError, MAX_LEASE_TTL, MAX_REQUEST_BYTES, MAX_TXN_OPS};
use crate::mvcc::KeyRange;
use crate::pb::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use prost::Message;
use std::collections::BTreeSet;

/// Refuses requests larger than etcd's request limit.
pub fn check_size(msg: &impl Message) -> Result<(), StoreError> {
    if msg.encoded_len() > MAX_REQUEST_BYTES {
        return Err(StoreError::RequestTooLarge);
    }
    Ok(())
}

/// Checks a Range.
pub fn check_range(r: &RangeRequest) -> Result<(), StoreError> {
    if r.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if r.limit < 0 {
        return Err(StoreError::InvalidArgument(
            "limit must not be negative".into(),
        ));
    }
    Ok(())
}

/// Checks a Put.
pub fn check_put(r: &PutRequest) -> Result<(), StoreError> {
    if r.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(StoreError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(StoreError::LeaseProvided);
    }
    Ok(())
}

/// Checks a DeleteRange.
pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), StoreError> {
    if r.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    Ok(())
}

/// Checks a lease grant.
pub fn check_lease_ttl(ttl: i64) -> Result<(), StoreError> {
    if ttl > MAX_LEASE_TTL {
        return Err(StoreError::LeaseTtlTooLarge);
    }
    Ok(())
}

/// Checks a Txn: op counts, every op, compares, and that no key is written twice.
pub fn check_txn(r: &TxnRequest) -> Result<(), StoreError> {
    if r.compare.len() > MAX_TXN_OPS
        || r.success.len() > MAX_TXN_OPS
        || r.failure.len() > MAX_TXN_OPS
    {
        return Err(StoreError::TooManyOps);
    }
    for c in &r.compare {
        if c.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(x)) => check_range(x)?,
            Some(Request::RequestPut(x)) => check_put(x)?,
            Some(Request::RequestDeleteRange(x)) => check_delete(x)?,
            Some(Request::RequestTxn(x)) => check_txn(x)?,
            None => {
                return Err(StoreError::InvalidArgument(
                    "txn operation without a request".into(),
                ))
            }
        }
    }
    writes(&r.success)?;
    writes(&r.failure)?;
    Ok(())
}

/// Keys put and ranges deleted by a list of ops (nested txns included); fails on overlaps.
fn writes(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<KeyRange>), StoreError> {
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut dels: Vec<KeyRange> = Vec::new();
    for op in ops {
        match &op.request {
            Some(Request::RequestPut(p)) if !puts.insert(p.key.clone()) => {
                return Err(StoreError::DuplicateKey);
            }
            Some(Request::RequestDeleteRange(d)) => {
                dels.push(KeyRange::from_etcd(&d.key, &d.range_end))
            }
            Some(Request::RequestTxn(t)) => {
                // The two branches of a nested txn never both run: they may overlap each other, not this level.
                let (sp, sd) = writes(&t.success)?;
                let (fp, fd) = writes(&t.failure)?;
                let nested: BTreeSet<Vec<u8>> = sp.union(&fp).cloned().collect();
                if nested.iter().any(|k| puts.contains(k)) {
                    return Err(StoreError::DuplicateKey);
                }
                puts.extend(nested);
                dels.extend(sd);
                dels.extend(fd);
            }
            _ => {}
        }
    }
    if puts.iter().any(|k| dels.iter().any(|d| d.contains(k))) {
        return Err(StoreError::DuplicateKey);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn duplicate_writes_are_refused() {
        let txn = |ops: Vec<RequestOp>| TxnRequest {
            success: ops,
            ..Default::default()
        };
        assert_eq!(
            check_txn(&txn(vec![put("a"), put("a")])),
            Err(StoreError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![put("b"), del("a", "c")])),
            Err(StoreError::DuplicateKey)
        );
        assert_eq!(check_txn(&txn(vec![put("c"), del("a", "c")])), Ok(()));
        assert_eq!(check_txn(&txn(vec![del("a", "c"), del("b", "d")])), Ok(()));
        let nested = RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success: vec![put("x")],
                failure: vec![put("x")],
                ..Default::default()
            })),
        };
        assert_eq!(check_txn(&txn(vec![nested.clone()])), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![nested, put("x")])),
            Err(StoreError::DuplicateKey)
        );
        let many = TxnRequest {
            success: (0..129).map(|i| put(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert_eq!(check_txn(&many), Err(StoreError::TooManyOps));
    }

    #[test]
    fn put_flags() {
        let p = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(StoreError::ValueProvided));
        assert_eq!(check_put(&PutRequest::default()), Err(StoreError::EmptyKey));
    }
}
