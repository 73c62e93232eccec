//! The measured phases: creates, lists (kubectl and raw), watch fan-out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;

use super::client::{ApiTarget, H2};
use super::stats::{histogram, median, record, Quantiles};

/// Annotation carrying an update's sequence number (what watchers key on).
pub const SEQ_ANNOTATION: &str = "apibench.tugboat.io/seq";
/// Annotation carrying the update's send time (ns since the Unix epoch), for people reading the objects.
pub const SENT_ANNOTATION: &str = "apibench.tugboat.io/sent-unix-ns";
/// Error messages kept per phase.
const KEPT_ERRORS: usize = 5;

/// Knobs of one run (the same for both backends).
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Ships created.
    pub creates: usize,
    /// Concurrent create requests (closed loop).
    pub concurrency: usize,
    /// HTTP/2 connections the creates share.
    pub conns: usize,
    /// Namespace of the Ships.
    pub namespace: String,
    /// Timed runs of each list.
    pub list_repeat: usize,
    /// kubectl binary.
    pub kubectl: PathBuf,
    /// Concurrent watchers.
    pub watchers: usize,
    /// HTTP/2 connections the watchers share.
    pub watch_conns: usize,
    /// Updates (merge patches) the watchers must all see.
    pub updates: usize,
    /// Updates per second (open loop, one at a time).
    pub update_rate: f64,
    /// Seconds to wait after the last update for stragglers.
    pub drain_secs: f64,
}

fn now_unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Name of Ship number `i`.
pub fn ship_name(i: usize) -> String {
    format!("s-{i}")
}

fn ship_body(ns: &str, i: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Ship","metadata":{{"name":"{}","namespace":"{ns}","labels":{{"app":"apibench"}}}},"spec":{{"image":"example.org/img:1","shipClass":"lightweight"}}}}"#,
        ship_name(i)
    ))
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Errors {
    pub count: u64,
    pub samples: Vec<String>,
}

impl Errors {
    fn add(&mut self, what: impl std::fmt::Display) {
        self.count += 1;
        if self.samples.len() < KEPT_ERRORS {
            self.samples.push(what.to_string());
        }
    }
    fn merge(&mut self, o: &Errors) {
        self.count += o.count;
        for s in &o.samples {
            if self.samples.len() < KEPT_ERRORS {
                self.samples.push(s.clone());
            }
        }
    }
}

/// Waits until the API answers a Ship list with 200 and the namespace exists (created if
/// missing). Returns the first connection.
pub async fn wait_ready(kubeconfig: &Path, ns: &str, timeout: Duration) -> Result<(ApiTarget, H2)> {
    let start = Instant::now();
    let mut last = String::from("admin.kubeconfig not written yet");
    loop {
        if kubeconfig.is_file() {
            match try_ready(kubeconfig, ns).await {
                Ok(v) => return Ok(v),
                Err(e) => last = format!("{e:#}"),
            }
        }
        if start.elapsed() > timeout {
            bail!("the API was not ready after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn try_ready(kubeconfig: &Path, ns: &str) -> Result<(ApiTarget, H2)> {
    let target = ApiTarget::from_kubeconfig(kubeconfig)?;
    let conn = target.connect().await?;
    let r = conn.get(&format!("/api/v1/namespaces/{ns}")).await?;
    if r.status == StatusCode::NOT_FOUND {
        let body =
            format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{ns}"}}}}"#);
        let c = conn
            .call(
                Method::POST,
                "/api/v1/namespaces",
                &[
                    ("content-type", "application/json"),
                    ("accept", "application/json"),
                ],
                Some(Bytes::from(body)),
            )
            .await?;
        if !c.status.is_success() && c.status != StatusCode::CONFLICT {
            bail!(
                "POST /api/v1/namespaces ({ns}): {} {}",
                c.status,
                c.snippet()
            );
        }
    } else if !r.status.is_success() {
        bail!("GET /api/v1/namespaces/{ns}: {} {}", r.status, r.snippet());
    }
    let r = conn
        .get(&format!("/api/v1/namespaces/{ns}/ships?limit=1"))
        .await?;
    if !r.status.is_success() {
        bail!(
            "GET /api/v1/namespaces/{ns}/ships?limit=1: {} {}",
            r.status,
            r.snippet()
        );
    }
    Ok((target, conn))
}

/// Result of the create phase.
#[derive(Debug, Clone, Serialize)]
pub struct CreateResult {
    pub requested: usize,
    pub ok: u64,
    pub errors: Errors,
    pub seconds: f64,
    pub creates_per_sec: f64,
    pub latency: Quantiles,
}

/// Creates `p.creates` Ships named s-0.. with `p.concurrency` closed-loop workers.
pub async fn creates(conns: &[H2], p: &Params) -> CreateResult {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..p.concurrency.max(1) {
        let conn = conns[w % conns.len()].clone();
        let next = next.clone();
        let (n, ns) = (p.creates, p.namespace.clone());
        let path = format!("/api/v1/namespaces/{ns}/ships");
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut errors = Errors::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(30),
                    conn.call(
                        Method::POST,
                        &path,
                        &[
                            ("content-type", "application/json"),
                            ("accept", "application/json"),
                        ],
                        Some(ship_body(&ns, i)),
                    ),
                )
                .await;
                match r {
                    Ok(Ok(r)) if r.status == StatusCode::CREATED || r.status == StatusCode::OK => {
                        record(&mut h, t0.elapsed())
                    }
                    Ok(Ok(r)) => errors.add(format!(
                        "POST {path} ({}): {} {}",
                        ship_name(i),
                        r.status,
                        r.snippet()
                    )),
                    Ok(Err(e)) => errors.add(format!("POST {path}: {e:#}")),
                    Err(_) => errors.add(format!("POST {path}: no answer in 30 s")),
                }
            }
            (h, errors)
        }));
    }
    let mut h = histogram();
    let mut errors = Errors::default();
    for t in tasks {
        match t.await {
            Ok((th, te)) => {
                let _ = h.add(&th);
                errors.merge(&te);
            }
            Err(e) => errors.add(format!("create worker panicked: {e}")),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    CreateResult {
        requested: p.creates,
        ok: h.len(),
        errors,
        seconds,
        creates_per_sec: h.len() as f64 / seconds.max(1e-9),
        latency: Quantiles::of(&h),
    }
}

/// One timed list variant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timed {
    /// Wall time of each run (ms).
    pub runs_ms: Vec<f64>,
    pub median_ms: Option<f64>,
    /// Rows / items / lines seen in the first run (for checking it was complete).
    pub rows: Option<u64>,
    /// Response bytes of the first run.
    pub bytes: Option<u64>,
    pub errors: Errors,
}

impl Timed {
    fn finish(mut self) -> Self {
        self.median_ms = median(&self.runs_ms);
        self
    }
}

/// Result of the list phase.
#[derive(Debug, Clone, Serialize)]
pub struct ListResult {
    /// `kubectl get ships -A` (kubectl's default --chunk-size=500: paged requests for Tables).
    pub kubectl: Timed,
    /// `kubectl get ships -A --chunk-size=0` (one request).
    pub kubectl_unchunked: Timed,
    /// The discovery warm-up run (`kubectl api-resources`), not counted above.
    pub kubectl_warmup_ms: Option<f64>,
    /// Raw `GET /api/v1/ships` (JSON list).
    pub raw_json: Timed,
    /// `GET /api/v1/ships` as a server-side Table (`as=Table;v=v1;g=meta.k8s.io`).
    pub table: Timed,
    /// The Table in pages of 500 (`limit=500`, following `continue`), as kubectl asks for it.
    pub table_paged: Timed,
    /// Pages the paged Table took.
    pub table_pages: Option<u64>,
}

fn run_kubectl(
    kubectl: &Path,
    kubeconfig: &Path,
    cache: &Path,
    args: &[&str],
) -> Result<(f64, u64, u64)> {
    let t0 = Instant::now();
    let out = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", kubectl.display()))?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "kubectl {} exited with {}: {}",
            args.join(" "),
            out.status,
            err.trim().chars().take(400).collect::<String>()
        );
    }
    let lines = out.stdout.iter().filter(|b| **b == b'\n').count() as u64;
    Ok((ms, lines, out.stdout.len() as u64))
}

async fn kubectl_timed(
    p: &Params,
    kubeconfig: &Path,
    cache: &Path,
    args: &'static [&'static str],
) -> Timed {
    let mut t = Timed::default();
    for i in 0..p.list_repeat.max(1) {
        let (k, kc, c) = (
            p.kubectl.clone(),
            kubeconfig.to_path_buf(),
            cache.to_path_buf(),
        );
        let r = tokio::task::spawn_blocking(move || run_kubectl(&k, &kc, &c, args)).await;
        match r {
            Ok(Ok((ms, lines, bytes))) => {
                t.runs_ms.push(ms);
                if i == 0 {
                    // The header line is not a Ship.
                    t.rows = Some(lines.saturating_sub(1));
                    t.bytes = Some(bytes);
                }
            }
            Ok(Err(e)) => t.errors.add(format!("{e:#}")),
            Err(e) => t.errors.add(format!("kubectl task: {e}")),
        }
    }
    t.finish()
}

async fn raw_timed(
    conn: &H2,
    p: &Params,
    accept: &str,
    count: fn(&serde_json::Value) -> Option<u64>,
) -> Timed {
    let mut t = Timed::default();
    for i in 0..p.list_repeat.max(1) {
        let t0 = Instant::now();
        match conn
            .call(Method::GET, "/api/v1/ships", &[("accept", accept)], None)
            .await
        {
            Ok(r) if r.status.is_success() => {
                t.runs_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                if i == 0 {
                    t.bytes = Some(r.body.len() as u64);
                    match serde_json::from_slice::<serde_json::Value>(&r.body) {
                        Ok(v) => t.rows = count(&v),
                        Err(e) => t.errors.add(format!(
                            "GET /api/v1/ships ({accept}): body is not JSON: {e}"
                        )),
                    }
                }
            }
            Ok(r) => t.errors.add(format!(
                "GET /api/v1/ships ({accept}): {} {}",
                r.status,
                r.snippet()
            )),
            Err(e) => t.errors.add(format!("GET /api/v1/ships ({accept}): {e:#}")),
        }
    }
    t.finish()
}

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// The whole Table in pages of `limit`; returns (rows, bytes, pages).
async fn paged_table(conn: &H2, limit: usize) -> Result<(u64, u64, u64)> {
    let (mut rows, mut bytes, mut pages) = (0u64, 0u64, 0u64);
    let mut cont: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/ships?limit={limit}");
        if let Some(c) = &cont {
            path.push_str("&continue=");
            for b in c.bytes() {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    path.push(b as char);
                } else {
                    path.push_str(&format!("%{b:02X}"));
                }
            }
        }
        let r = conn
            .call(Method::GET, &path, &[("accept", TABLE_ACCEPT)], None)
            .await?;
        if !r.status.is_success() {
            bail!("GET {path} (Table): {} {}", r.status, r.snippet());
        }
        pages += 1;
        bytes += r.body.len() as u64;
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).context("Table page is not JSON")?;
        rows += v["rows"].as_array().map(|a| a.len() as u64).unwrap_or(0);
        match v["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => cont = Some(c.to_string()),
            _ => return Ok((rows, bytes, pages)),
        }
        if pages > 100_000 {
            bail!("paged Table list does not end");
        }
    }
}

/// Times kubectl and raw lists of all Ships.
pub async fn lists(conn: &H2, p: &Params, kubeconfig: &Path, cache: &Path) -> ListResult {
    let warm = {
        let (k, kc, c) = (
            p.kubectl.clone(),
            kubeconfig.to_path_buf(),
            cache.to_path_buf(),
        );
        tokio::task::spawn_blocking(move || {
            run_kubectl(&k, &kc, &c, &["api-resources", "-o", "name"])
        })
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|(ms, _, _)| ms)
    };
    let kubectl = kubectl_timed(p, kubeconfig, cache, &["get", "ships", "-A"]).await;
    let kubectl_unchunked = kubectl_timed(
        p,
        kubeconfig,
        cache,
        &["get", "ships", "-A", "--chunk-size=0"],
    )
    .await;
    let raw_json = raw_timed(conn, p, "application/json", |v| {
        v["items"].as_array().map(|a| a.len() as u64)
    })
    .await;
    let table = raw_timed(conn, p, TABLE_ACCEPT, |v| {
        v["rows"].as_array().map(|a| a.len() as u64)
    })
    .await;
    let mut table_paged = Timed::default();
    let mut table_pages = None;
    for i in 0..p.list_repeat.max(1) {
        let t0 = Instant::now();
        match paged_table(conn, 500).await {
            Ok((rows, bytes, pages)) => {
                table_paged
                    .runs_ms
                    .push(t0.elapsed().as_secs_f64() * 1000.0);
                if i == 0 {
                    table_paged.rows = Some(rows);
                    table_paged.bytes = Some(bytes);
                    table_pages = Some(pages);
                }
            }
            Err(e) => table_paged.errors.add(format!("{e:#}")),
        }
    }
    let table_paged = table_paged.finish();
    ListResult {
        kubectl,
        kubectl_unchunked,
        kubectl_warmup_ms: warm,
        raw_json,
        table,
        table_paged,
        table_pages,
    }
}

/// Result of the watch phase.
#[derive(Debug, Clone, Serialize)]
pub struct WatchResult {
    pub watchers: usize,
    pub connections: usize,
    /// Watchers whose request got a 200 and a stream.
    pub established: usize,
    /// Seconds from the first watch request until every watcher had its response head.
    pub establish_seconds: f64,
    pub updates_sent: usize,
    pub updates_acked: usize,
    /// Latency of the PATCH requests themselves.
    pub update_latency: Quantiles,
    /// watchers x acknowledged updates.
    pub expected_deliveries: u64,
    /// Distinct (watcher, update) pairs received.
    pub delivered: u64,
    pub duplicates: u64,
    /// Watchers that saw every acknowledged update.
    pub complete_watchers: usize,
    /// Receive time minus the time the PATCH response arrived (events that arrive before the
    /// acknowledgement count as 0).
    pub latency_from_ack: Quantiles,
    /// Deliveries that arrived before the PATCH's response.
    pub before_ack: u64,
    /// Receive time minus the time the PATCH was sent.
    pub latency_from_send: Quantiles,
    pub errors: Errors,
}

struct WatcherLog {
    established: bool,
    seen: Vec<(u32, Instant)>,
    errors: Errors,
}

/// Finds `"apibench.tugboat.io/seq": "N"` in an event line.
fn seq_of(line: &[u8]) -> Option<u32> {
    let key = b"\"apibench.tugboat.io/seq\"";
    let pos = line.windows(key.len()).position(|w| w == key)?;
    let mut rest = &line[pos + key.len()..];
    let skip_ws = |r: &mut &[u8]| {
        while let Some((c, tail)) = r.split_first() {
            if c.is_ascii_whitespace() {
                *r = tail;
            } else {
                break;
            }
        }
    };
    skip_ws(&mut rest);
    rest = rest.strip_prefix(b":")?;
    skip_ws(&mut rest);
    rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|c| !c.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

async fn one_watcher(
    conn: H2,
    path: String,
    updates: usize,
    ready: tokio::sync::mpsc::Sender<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> WatcherLog {
    let mut log = WatcherLog {
        established: false,
        seen: Vec::with_capacity(updates),
        errors: Errors::default(),
    };
    let resp = match conn
        .start(Method::GET, &path, &[("accept", "application/json")], None)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            log.errors.add(format!("GET {path}: {e:#}"));
            let _ = ready.send(false).await;
            return log;
        }
    };
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        log.errors.add(format!(
            "GET {path}: {status} {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        ));
        let _ = ready.send(false).await;
        return log;
    }
    log.established = true;
    let _ = ready.send(true).await;
    drop(ready);
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut distinct = std::collections::HashSet::new();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.wait_for(|s| *s) => break,
        };
        let at = Instant::now();
        let data = match frame {
            None => {
                if distinct.len() < updates {
                    log.errors.add(format!(
                        "watch stream ended after {} of {updates} updates",
                        distinct.len()
                    ));
                }
                break;
            }
            Some(Err(e)) => {
                log.errors.add(format!("watch stream: {e}"));
                break;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            if line.iter().all(|c| c.is_ascii_whitespace()) {
                continue;
            }
            match seq_of(line) {
                Some(seq) => {
                    log.seen.push((seq, at));
                    distinct.insert(seq);
                }
                None => {
                    let head = String::from_utf8_lossy(&line[..line.len().min(200)]).to_string();
                    if head.contains("\"ERROR\"") || !head.contains("\"type\"") {
                        log.errors.add(format!("unexpected watch line: {head}"));
                    }
                }
            }
        }
        if distinct.len() >= updates {
            break;
        }
    }
    log
}

/// Opens `p.watchers` watches from the current revision over `p.watch_conns` connections,
/// sends `p.updates` merge patches (each to another of the first Ships), and measures delivery.
pub async fn watch(
    target: &ApiTarget,
    first: &H2,
    p: &Params,
    targets: usize,
) -> Result<WatchResult> {
    let ns = &p.namespace;
    let r = first
        .get(&format!("/api/v1/namespaces/{ns}/ships?limit=1"))
        .await?;
    if !r.status.is_success() {
        bail!("GET ships?limit=1: {} {}", r.status, r.snippet());
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).context("list body")?;
    let rv = v["metadata"]["resourceVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("list has no metadata.resourceVersion: {}", r.snippet()))?
        .to_string();
    let conns = target.connect_many(p.watch_conns.max(1)).await?;
    let path = format!(
        "/api/v1/namespaces/{ns}/ships?watch=true&resourceVersion={rv}&timeoutSeconds=3600"
    );
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(p.watchers.max(1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t_open = Instant::now();
    let mut tasks = Vec::with_capacity(p.watchers);
    for w in 0..p.watchers {
        tasks.push(tokio::spawn(one_watcher(
            conns[w % conns.len()].clone(),
            path.clone(),
            p.updates,
            ready_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ready_tx);
    let mut established = 0usize;
    let mut answered = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while answered < p.watchers {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(ok)) => {
                answered += 1;
                established += ok as usize;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let establish_seconds = t_open.elapsed().as_secs_f64();
    let mut errors = Errors::default();
    if answered < p.watchers {
        errors.add(format!(
            "only {answered} of {} watch requests answered within 120 s",
            p.watchers
        ));
    }
    // Let the server finish setting up its side of the streams.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Updates: one at a time, at most `update_rate` per second.
    let mut sends = Vec::with_capacity(p.updates);
    let mut acks: Vec<Option<Instant>> = Vec::with_capacity(p.updates);
    let mut uh = histogram();
    let period = Duration::from_secs_f64(1.0 / p.update_rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if established > 0 {
        for seq in 0..p.updates {
            tick.tick().await;
            let name = ship_name(seq % targets.max(1));
            let body = format!(
                r#"{{"metadata":{{"annotations":{{"{SEQ_ANNOTATION}":"{seq}","{SENT_ANNOTATION}":"{}"}}}}}}"#,
                now_unix_ns()
            );
            let upath = format!("/api/v1/namespaces/{ns}/ships/{name}");
            let t0 = Instant::now();
            sends.push(t0);
            let r = first
                .call(
                    Method::PATCH,
                    &upath,
                    &[
                        ("content-type", "application/merge-patch+json"),
                        ("accept", "application/json"),
                    ],
                    Some(Bytes::from(body)),
                )
                .await;
            let t1 = Instant::now();
            match r {
                Ok(r) if r.status.is_success() => {
                    record(&mut uh, t1 - t0);
                    acks.push(Some(t1));
                }
                Ok(r) => {
                    errors.add(format!("PATCH {upath}: {} {}", r.status, r.snippet()));
                    acks.push(None);
                }
                Err(e) => {
                    errors.add(format!("PATCH {upath}: {e:#}"));
                    acks.push(None);
                }
            }
        }
    }
    let acked = acks.iter().filter(|a| a.is_some()).count();
    // Watchers stop by themselves once they saw every update; give stragglers a while.
    let drain_until = tokio::time::Instant::now() + Duration::from_secs_f64(p.drain_secs);
    let mut logs = Vec::with_capacity(tasks.len());
    let mut stopped = false;
    for mut t in tasks {
        let log = if stopped {
            t.await
        } else {
            match tokio::time::timeout_at(drain_until, &mut t).await {
                Ok(r) => r,
                Err(_) => {
                    stopped = true;
                    let _ = stop_tx.send(true);
                    t.await
                }
            }
        };
        match log {
            Ok(l) => logs.push(l),
            Err(e) => errors.add(format!("watcher panicked: {e}")),
        }
    }
    let _ = stop_tx.send(true);

    let mut from_ack = histogram();
    let mut from_send = histogram();
    let (mut delivered, mut duplicates, mut before_ack, mut complete) = (0u64, 0u64, 0u64, 0usize);
    for log in &logs {
        errors.merge(&log.errors);
        if !log.established {
            continue;
        }
        let mut got = vec![false; p.updates];
        for &(seq, at) in &log.seen {
            let i = seq as usize;
            if i >= p.updates {
                continue;
            }
            if got[i] {
                duplicates += 1;
                continue;
            }
            got[i] = true;
            delivered += 1;
            record(&mut from_send, at.saturating_duration_since(sends[i]));
            if let Some(ack) = acks[i] {
                if at < ack {
                    before_ack += 1;
                }
                record(&mut from_ack, at.saturating_duration_since(ack));
            }
        }
        if (0..p.updates).all(|i| acks.get(i).copied().flatten().is_none() || got[i]) && acked > 0 {
            complete += 1;
        }
    }
    Ok(WatchResult {
        watchers: p.watchers,
        connections: conns.len(),
        established,
        establish_seconds,
        updates_sent: sends.len(),
        updates_acked: acked,
        update_latency: Quantiles::of(&uh),
        expected_deliveries: established as u64 * acked as u64,
        delivered,
        duplicates,
        complete_watchers: complete,
        latency_from_ack: Quantiles::of(&from_ack),
        before_ack,
        latency_from_send: Quantiles::of(&from_send),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::seq_of;

    #[test]
    fn finds_the_sequence_annotation() {
        let line = br#"{"type":"MODIFIED","object":{"metadata":{"annotations":{"apibench.tugboat.io/seq":"17","x":"y"}}}}"#;
        assert_eq!(seq_of(line), Some(17));
        assert_eq!(seq_of(br#"{"apibench.tugboat.io/seq" : "3"}"#), Some(3));
        assert_eq!(seq_of(br#"{"type":"BOOKMARK"}"#), None);
    }
}
