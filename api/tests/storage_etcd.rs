//! The storage layer and watch cache against a real etcd (Debian's `etcd-server`): paginated
//! lists stay consistent while writes happen between pages, optimistic concurrency answers
//! 409, the cache follows every write, and compacted revisions answer 410.

use serde_json::{json, Value};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tugboat_api::error::ApiError;
use tugboat_api::kv::{EtcdTls, Kv};
use tugboat_api::storage::{ListRequest, Storage};

struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn start_etcd() -> Etcd {
    let bin = "/usr/bin/etcd";
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} is missing: install Debian's etcd-server (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let child = Command::new(bin)
        .args([
            "--name",
            "t",
            "--data-dir",
            &dir.path().join("etcd").display().to_string(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("t=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcd");
    Etcd {
        child,
        _dir: dir,
        url,
    }
}

async fn wait_ready(storage: &Storage) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !storage.ready() {
        assert!(Instant::now() < deadline, "watch caches never filled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ship(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Ship",
        "metadata": {"name": name, "namespace": "default", "uid": name},
        "spec": {"image": "img", "shipClass": "c"},
    })
}

fn rv(v: &Value) -> i64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_and_watch_cache_over_real_etcd() {
    let etcd = start_etcd();
    let kv = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let kv =
                Kv::connect(std::slice::from_ref(&etcd.url), &EtcdTls::default()).expect("client");
            if kv.current_revision().await.is_ok() {
                break kv;
            }
            assert!(Instant::now() < deadline, "etcd did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let registry = tugboat_api::kinds::registry();
    let storage = Storage::new(kv.clone(), &registry, &[]);
    wait_ready(&storage).await;
    let ships = registry.get("", "v1", "ships").expect("ships").clone();

    // Creates, and a duplicate.
    let mut last = Value::Null;
    for i in 0..30 {
        let n = format!("s-{i:02}");
        last = storage
            .create(&ships, Some("default"), &n, ship(&n))
            .await
            .expect("create");
    }
    let dup = storage
        .create(&ships, Some("default"), "s-00", ship("s-00"))
        .await;
    assert!(
        matches!(dup, Err(ApiError::AlreadyExists { .. })),
        "{dup:?}"
    );

    // Optimistic concurrency: a stale resourceVersion is a 409.
    let s29 = storage
        .get(&ships, Some("default"), "s-29")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(rv(&s29), rv(&last));
    let mut changed = s29.clone();
    changed["spec"]["image"] = json!("img2");
    let updated = storage
        .update(&ships, Some("default"), "s-29", changed.clone(), rv(&s29))
        .await
        .expect("update");
    assert!(rv(&updated) > rv(&s29));
    let stale = storage
        .update(&ships, Some("default"), "s-29", changed, rv(&s29))
        .await;
    assert!(matches!(stale, Err(ApiError::Conflict { .. })), "{stale:?}");

    // Pages of 7 at one revision, with writes between pages that the pages must not show.
    let keep = |_: &Value| true;
    let mut req = ListRequest {
        limit: 7,
        ..Default::default()
    };
    let mut names = Vec::new();
    let mut list_rev = None;
    let mut pages = 0;
    loop {
        let page = storage
            .list(&ships, Some("default"), &req, &keep)
            .await
            .expect("list page");
        pages += 1;
        if let Some(r) = list_rev {
            assert_eq!(
                page.revision, r,
                "every page reflects the first page's revision"
            );
        }
        list_rev = Some(page.revision);
        names.extend(
            page.items
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string()),
        );
        let n = format!("late-{pages}");
        storage
            .create(&ships, Some("default"), &n, ship(&n))
            .await
            .expect("create between pages");
        match page.continue_token {
            Some(c) => req.continue_token = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let expected: Vec<String> = (0..30).map(|i| format!("s-{i:02}")).collect();
    assert_eq!(names, expected);

    // The cache follows: a fresh consistent list sees the late writes too.
    let all = storage
        .list(&ships, Some("default"), &ListRequest::default(), &keep)
        .await
        .expect("list");
    assert_eq!(all.items.len(), 35);

    // Watch from a revision: exactly the later events, in order.
    let cache = storage.cache(ships.storage).expect("cache").clone();
    let from = all.revision;
    let mut sub = cache.subscribe(Some(from), None).expect("subscribe");
    assert!(sub.backlog.is_empty());
    // A feed routed to node n1 only gets the events of Ships bound to n1 (before or after).
    let mut routed = cache
        .subscribe(Some(from), Some("n1"))
        .expect("routed subscribe");
    let mut s00 = storage
        .get(&ships, Some("default"), "s-00")
        .await
        .expect("get")
        .expect("exists");
    let s00_rv = rv(&s00);
    s00["metadata"]["labels"] = json!({"a": "b"});
    storage
        .update(&ships, Some("default"), "s-00", s00.clone(), s00_rv)
        .await
        .expect("update s-00");
    let ev = tokio::time::timeout(Duration::from_secs(10), sub.live.recv())
        .await
        .expect("event in time")
        .expect("event");
    assert_eq!(ev.object["metadata"]["name"], "s-00");
    assert_eq!(ev.kind.as_str(), "MODIFIED");
    assert!(ev.rev > from);
    let mut bound = ev.object.as_ref().clone();
    bound["spec"]["nodeName"] = json!("n1");
    let bound_rv = rv(&bound);
    storage
        .update(&ships, Some("default"), "s-00", bound.clone(), bound_rv)
        .await
        .expect("bind s-00 to n1");
    let mut moved = storage
        .get(&ships, Some("default"), "s-00")
        .await
        .expect("get")
        .expect("exists");
    let moved_rv = rv(&moved);
    moved["spec"]["nodeName"] = json!("n2");
    storage
        .update(&ships, Some("default"), "s-00", moved, moved_rv)
        .await
        .expect("move s-00 to n2");
    let mut elsewhere = storage
        .get(&ships, Some("default"), "s-01")
        .await
        .expect("get")
        .expect("exists");
    let elsewhere_rv = rv(&elsewhere);
    elsewhere["spec"]["nodeName"] = json!("n3");
    storage
        .update(&ships, Some("default"), "s-01", elsewhere, elsewhere_rv)
        .await
        .expect("bind s-01 to n3");
    let mut seen = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(2), routed.live.recv()).await {
        seen.push((
            ev.object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            ev.object["spec"]["nodeName"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        ));
    }
    assert_eq!(
        seen,
        [("s-00".to_string(), "n1".to_string()), ("s-00".to_string(), "n2".to_string())],
        "the n1 feed: the bind to n1 and the move away from it, nothing of s-01 or the label change"
    );

    // Secondary lookups need no scan; a progress request moves the cache to etcd's revision
    // even when nothing under its prefix changed.
    let other = registry
        .get("", "v1", "configmaps")
        .expect("configmaps")
        .clone();
    storage
        .create(
            &other,
            Some("default"),
            "cm",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "default"}}),
        )
        .await
        .expect("configmap");
    let now = kv.current_revision().await.expect("revision");
    cache
        .wait_for(now, Duration::from_secs(10))
        .await
        .expect("ships cache catches up through progress notifications");

    // A continue token of a compacted revision is 410 Expired.
    let page = storage
        .list(
            &ships,
            Some("default"),
            &ListRequest {
                limit: 5,
                ..Default::default()
            },
            &keep,
        )
        .await
        .expect("first page");
    let token = page.continue_token.expect("more pages");
    for i in 0..3 {
        let n = format!("after-{i}");
        storage
            .create(&ships, Some("default"), &n, ship(&n))
            .await
            .expect("create");
    }
    let head = kv.current_revision().await.expect("revision");
    kv.compact(head).await.expect("compact");
    let expired = storage
        .list(
            &ships,
            Some("default"),
            &ListRequest {
                limit: 5,
                continue_token: Some(token),
                ..Default::default()
            },
            &keep,
        )
        .await;
    assert!(
        matches!(expired, Err(ApiError::Expired(_))),
        "{:?}",
        expired.err()
    );

    // A forged continue token is a 400, not a panic.
    let forged = storage
        .list(
            &ships,
            Some("default"),
            &ListRequest {
                limit: 5,
                continue_token: Some("!!not-base64!!".into()),
                ..Default::default()
            },
            &keep,
        )
        .await;
    assert!(matches!(forged, Err(ApiError::BadRequest(_))));
    drop(Arc::clone(&cache));
}
