//! Watch features etcdctl does not reach: progress notifications (periodic and
//! requested) carry the revision the stream has delivered, and large
//! revisions are split into fragments when the watcher asks for it.

use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tugboat_store::pb::etcdserverpb::{
    request_op, watch_client::WatchClient, watch_request::RequestUnion, PutRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tugboat_testsuite::load::kvutil::{kv, plain_channel};
use tugboat_testsuite::{TugboatNode, TugboatOptions};

/// Guards against a hung server; not a performance expectation.
const WAIT: Duration = Duration::from_secs(30);

async fn next(stream: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("watch response within the guard time")
        .expect("watch stream")
        .expect("watch stream open")
}

fn create(key: &str, progress_notify: bool, fragment: bool) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: vec![],
            progress_notify,
            fragment,
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_fragments() {
    let node = tokio::task::spawn_blocking(|| {
        TugboatNode::start(TugboatOptions {
            extra_args: vec!["--watch-progress-notify-interval".into(), "1".into()],
            ..Default::default()
        })
    })
    .await
    .expect("join")
    .expect("start tugboatd");
    let channel = plain_channel(&node.plain_endpoint())
        .await
        .expect("connect");
    let mut kv = kv(channel.clone());
    let mut watch = WatchClient::new(channel);

    let (tx, rx) = mpsc::channel(8);
    let mut stream = watch
        .watch(ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    tx.send(create("quiet", true, false)).await.expect("send");
    let created = next(&mut stream).await;
    assert!(created.created);
    let quiet_id = created.watch_id;

    // A write elsewhere moves the store on; the idle watcher's periodic notification reports it.
    let put = kv
        .put(PutRequest {
            key: b"elsewhere".to_vec(),
            value: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner();
    let rev = put.header.expect("header").revision;
    let mut notified = None;
    for _ in 0..10 {
        let r = next(&mut stream).await;
        assert!(r.events.is_empty(), "the quiet key saw no events");
        if r.watch_id == quiet_id && r.header.as_ref().is_some_and(|h| h.revision >= rev) {
            notified = Some(r);
            break;
        }
    }
    let notified = notified.expect("a progress notification for the idle watcher");
    assert_eq!(notified.header.expect("header").revision, rev);

    // A requested progress answers with watch id -1 and the delivered revision.
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    })
    .await
    .expect("send");
    let mut progress = None;
    for _ in 0..10 {
        let r = next(&mut stream).await;
        if r.watch_id == -1 {
            progress = Some(r);
            break;
        }
    }
    assert_eq!(
        progress
            .expect("progress response")
            .header
            .expect("header")
            .revision,
        rev
    );

    // Three 500 KiB values with their 500 KiB previous values make a 3 MB
    // revision, over the 1.5 MiB response limit: a fragmenting watcher gets
    // it in several responses, only the last one unflagged.
    let value = |c: u8| vec![c; 500 * 1024];
    for i in 0..3 {
        kv.put(PutRequest {
            key: format!("big/{i}").into_bytes(),
            value: value(b'a'),
            ..Default::default()
        })
        .await
        .expect("seed big value");
    }
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"big/".to_vec(),
            range_end: b"big0".to_vec(),
            fragment: true,
            prev_kv: true,
            ..Default::default()
        })),
    })
    .await
    .expect("send");
    let frag_id = loop {
        let r = next(&mut stream).await;
        if r.created {
            break r.watch_id;
        }
    };
    let txn = TxnRequest {
        success: (0..3)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("big/{i}").into_bytes(),
                    value: value(b'b'),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    };
    let txn_rev = kv
        .txn(txn)
        .await
        .expect("txn")
        .into_inner()
        .header
        .expect("header")
        .revision;
    let mut parts = Vec::new();
    let mut events = 0;
    while events < 3 {
        let r = next(&mut stream).await;
        if r.watch_id != frag_id || r.events.is_empty() {
            continue;
        }
        assert_eq!(r.header.as_ref().expect("header").revision, txn_rev);
        assert!(
            r.events.iter().all(|e| e.prev_kv.is_some()),
            "previous values are included"
        );
        events += r.events.len();
        parts.push(r.fragment);
    }
    assert_eq!(events, 3, "every event of the revision arrives");
    assert!(parts.len() >= 2, "the revision was split: {parts:?}");
    assert_eq!(parts.last(), Some(&false), "the last fragment is unflagged");
    assert!(
        parts[..parts.len() - 1].iter().all(|f| *f),
        "earlier fragments are flagged: {parts:?}"
    );
    drop(tx);
}

/// History replay is read in passes of bounded size; filters must not make a
/// pass look complete. 1,100 puts then 3 deletes, watched from the start with
/// NOPUT: exactly the 3 deletes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_replay_over_long_history() {
    use tugboat_store::pb::etcdserverpb::{watch_create_request::FilterType, DeleteRangeRequest};
    let node = tokio::task::spawn_blocking(|| TugboatNode::start(TugboatOptions::default()))
        .await
        .expect("join")
        .expect("start tugboatd");
    let channel = plain_channel(&node.plain_endpoint())
        .await
        .expect("connect");
    let mut kv = kv(channel.clone());
    let writes: Vec<_> = (0..8)
        .map(|w| {
            let mut kv = kv.clone();
            tokio::spawn(async move {
                for i in (w..1100).step_by(8) {
                    kv.put(PutRequest {
                        key: format!("h/{i:04}").into_bytes(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .expect("put");
                }
            })
        })
        .collect();
    for w in writes {
        w.await.expect("writer");
    }
    let mut last = 0;
    for i in [3, 500, 1099] {
        let r = kv
            .delete_range(DeleteRangeRequest {
                key: format!("h/{i:04}").into_bytes(),
                ..Default::default()
            })
            .await
            .expect("delete")
            .into_inner();
        last = r.header.expect("header").revision;
    }
    let mut watch = WatchClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"h/".to_vec(),
            range_end: b"h0".to_vec(),
            start_revision: 1,
            filters: vec![FilterType::Noput as i32],
            ..Default::default()
        })),
    })
    .await
    .expect("send");
    let mut stream = watch
        .watch(ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let mut deleted = Vec::new();
    while deleted.len() < 3 {
        let r = next(&mut stream).await;
        for e in r.events {
            let kv = e.kv.expect("kv");
            assert_eq!(e.r#type, 1, "only deletes pass the NOPUT filter");
            deleted.push((
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            ));
        }
    }
    assert_eq!(
        deleted.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec!["h/0003", "h/0500", "h/1099"]
    );
    assert_eq!(deleted[2].1, last);
    drop(tx);
}
