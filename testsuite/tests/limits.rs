//! Bad input and limits: the same requests against Debian's etcd 3.4 and
//! tugboatd must fail with the same gRPC code and message, and leave the
//! store unchanged.

use tonic::Code;
use tugboat_store::pb::etcdserverpb::{
    compare, kv_client::KvClient, lease_client::LeaseClient, request_op, watch_client::WatchClient,
    watch_request, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use tugboat_testsuite::load::kvutil::{kv, plain_channel};
use tugboat_testsuite::{start_server, TargetKind};

fn put_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    }
}

/// One request that must fail, and how it answered.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    what: &'static str,
    code: Code,
    message: String,
}

async fn refusals(endpoint: &str) -> (Vec<Refusal>, i64) {
    let channel = plain_channel(endpoint).await.expect("connect");
    let mut kv: KvClient<_> = kv(channel.clone());
    let mut lease = LeaseClient::new(channel.clone());
    let mut out = Vec::new();
    let mut record = |what: &'static str, r: Result<(), tonic::Status>| match r {
        Ok(()) => panic!("{what}: succeeded, expected an error"),
        Err(s) => out.push(Refusal {
            what,
            code: s.code(),
            message: s.message().to_string(),
        }),
    };
    // Something to compact and compare against.
    for i in 0..3 {
        kv.put(PutRequest {
            key: b"k".to_vec(),
            value: format!("v{i}").into_bytes(),
            ..Default::default()
        })
        .await
        .expect("seed put");
    }
    kv.compact(CompactionRequest {
        revision: 3,
        physical: true,
    })
    .await
    .expect("seed compaction");
    let rev_before = kv
        .range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .header
        .map_or(0, |h| h.revision);

    let big = vec![b'x'; 1536 * 1024 + 16];
    record(
        "put larger than 1.5 MiB",
        kv.put(PutRequest {
            key: b"big".to_vec(),
            value: big,
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "put with an empty key",
        kv.put(PutRequest {
            key: vec![],
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "range with an empty key",
        kv.range(RangeRequest::default()).await.map(|_| ()),
    );
    record(
        "delete with an empty key",
        kv.delete_range(DeleteRangeRequest::default())
            .await
            .map(|_| ()),
    );
    record(
        "txn with 129 operations",
        kv.txn(TxnRequest {
            success: (0..129).map(|i| put_op(&format!("t{i}"))).collect(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "txn writing one key twice",
        kv.txn(TxnRequest {
            success: vec![put_op("d"), put_op("d")],
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "txn putting inside a range it deletes",
        kv.txn(TxnRequest {
            success: vec![
                put_op("m"),
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: b"a".to_vec(),
                            range_end: b"z".to_vec(),
                            ..Default::default()
                        },
                    )),
                },
            ],
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "txn compare with an empty key",
        kv.txn(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: vec![],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "range at a compacted revision",
        kv.range(RangeRequest {
            key: b"k".to_vec(),
            revision: 2,
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "range at a future revision",
        kv.range(RangeRequest {
            key: b"k".to_vec(),
            revision: 1000,
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "compaction at an already compacted revision",
        kv.compact(CompactionRequest {
            revision: 2,
            physical: false,
        })
        .await
        .map(|_| ()),
    );
    record(
        "compaction at a future revision",
        kv.compact(CompactionRequest {
            revision: 1000,
            physical: false,
        })
        .await
        .map(|_| ()),
    );
    record(
        "put --ignore-value of a missing key",
        kv.put(PutRequest {
            key: b"missing".to_vec(),
            ignore_value: true,
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "put --ignore-value with a value",
        kv.put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "put --ignore-lease with a lease",
        kv.put(PutRequest {
            key: b"k".to_vec(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "put with an unknown lease",
        kv.put(PutRequest {
            key: b"k".to_vec(),
            lease: 12345,
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    record(
        "lease grant with too large a TTL",
        lease
            .lease_grant(LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            })
            .await
            .map(|_| ()),
    );
    lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 777 })
        .await
        .expect("grant 777");
    record(
        "lease grant with an ID in use",
        lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 777 })
            .await
            .map(|_| ()),
    );
    lease
        .lease_revoke(LeaseRevokeRequest { id: 777 })
        .await
        .expect("revoke 777");
    record(
        "lease revoke of an unknown lease",
        lease
            .lease_revoke(LeaseRevokeRequest { id: 777 })
            .await
            .map(|_| ()),
    );
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 777,
            keys: true,
        })
        .await
        .expect("time-to-live of an unknown lease is answered, not refused")
        .into_inner();
    assert_eq!(ttl.ttl, -1, "unknown lease reports TTL -1");

    // A watch from a compacted revision is created, then cancelled with the compaction point.
    let mut watch = WatchClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"k".to_vec(),
                start_revision: 2,
                ..Default::default()
            },
        )),
    })
    .await
    .expect("queue watch");
    let mut stream = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let mut cancelled = None;
    while let Some(resp) = stream.message().await.expect("watch stream") {
        if resp.canceled {
            cancelled = Some(resp);
            break;
        }
    }
    let cancelled = cancelled.expect("watch on a compacted revision is cancelled");
    assert_eq!(cancelled.compact_revision, 3);
    drop(tx);

    let rev_after = kv
        .range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    // Lease grant/revoke without keys never bump the revision; the refusals wrote nothing.
    assert_eq!(rev_before, rev_after, "refused requests changed the store");
    (out, rev_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_match_etcd() {
    let etcd = start_server(TargetKind::Etcd).expect("start etcd");
    let (expected, etcd_rev) = refusals(&etcd.plain_endpoint()).await;
    let tugboat = start_server(TargetKind::Tugboat).expect("start tugboatd");
    let (got, tugboat_rev) = refusals(&tugboat.plain_endpoint()).await;
    let mut mismatches = Vec::new();
    for (e, g) in expected.iter().zip(&got) {
        eprintln!("{:<45} etcd: {:?} {:?}", e.what, e.code, e.message);
        if e != g {
            mismatches.push(format!(
                "{}: etcd {:?} {:?}, tugboatd {:?} {:?}",
                e.what, e.code, e.message, g.code, g.message
            ));
        }
    }
    assert_eq!(expected.len(), got.len());
    assert!(
        mismatches.is_empty(),
        "answers differ from etcd:\n{}",
        mismatches.join("\n")
    );
    assert_eq!(
        etcd_rev, tugboat_rev,
        "both stores end at the same revision"
    );
}
