//! The result table (Markdown, printed and optionally written for docs/benchmarks.md).

use super::{Backend, BackendResult, RunReport};

type Getter = fn(&BackendResult) -> Option<f64>;

struct Row {
    label: String,
    fmt: fn(f64) -> String,
    get: Getter,
    ratio: bool,
}

fn f0(v: f64) -> String {
    format!("{v:.0}")
}
fn f1(v: f64) -> String {
    format!("{v:.1}")
}
fn f2(v: f64) -> String {
    format!("{v:.2}")
}
fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

fn rows(r: &RunReport) -> Vec<Row> {
    let p = &r.params;
    let row = |label: String, fmt: fn(f64) -> String, get: Getter, ratio: bool| Row {
        label,
        fmt,
        get,
        ratio,
    };
    vec![
        row(
            format!("Ships created (of {})", p.creates),
            f0,
            |b| b.creates.as_ref().map(|c| c.ok as f64),
            false,
        ),
        row(
            format!(
                "creates/s ({} concurrent, {} HTTP/2 conns)",
                p.concurrency, p.conns
            ),
            f0,
            |b| b.creates.as_ref().map(|c| c.creates_per_sec),
            true,
        ),
        row(
            "create latency p50 (ms)".into(),
            f2,
            |b| {
                b.creates
                    .as_ref()
                    .filter(|c| c.latency.count > 0)
                    .map(|c| c.latency.p50_ms)
            },
            true,
        ),
        row(
            "create latency p99 (ms)".into(),
            f2,
            |b| {
                b.creates
                    .as_ref()
                    .filter(|c| c.latency.count > 0)
                    .map(|c| c.latency.p99_ms)
            },
            true,
        ),
        row(
            format!("`kubectl get ships -A`, median of {} (ms)", p.list_repeat),
            f0,
            |b| b.lists.as_ref().and_then(|l| l.kubectl.median_ms),
            true,
        ),
        row(
            "`kubectl get ships -A`: rows printed".into(),
            f0,
            |b| {
                b.lists
                    .as_ref()
                    .and_then(|l| l.kubectl.rows.map(|r| r as f64))
            },
            false,
        ),
        row(
            format!(
                "`kubectl get ships -A --chunk-size=0`, median of {} (ms)",
                p.list_repeat
            ),
            f0,
            |b| b.lists.as_ref().and_then(|l| l.kubectl_unchunked.median_ms),
            true,
        ),
        row(
            "raw `GET /api/v1/ships` (JSON list), median (ms)".into(),
            f0,
            |b| b.lists.as_ref().and_then(|l| l.raw_json.median_ms),
            true,
        ),
        row(
            "raw JSON list: size (MiB)".into(),
            f1,
            |b| {
                b.lists
                    .as_ref()
                    .and_then(|l| l.raw_json.bytes.map(|x| x as f64 / 1048576.0))
            },
            true,
        ),
        row(
            "`GET /api/v1/ships` as Table, median (ms)".into(),
            f0,
            |b| b.lists.as_ref().and_then(|l| l.table.median_ms),
            true,
        ),
        row(
            "`GET /api/v1/ships` as Table in pages of 500 (kubectl's requests), median (ms)".into(),
            f0,
            |b| b.lists.as_ref().and_then(|l| l.table_paged.median_ms),
            true,
        ),
        row(
            "watchers established".into(),
            f0,
            |b| b.watch.as_ref().map(|w| w.established as f64),
            false,
        ),
        row(
            "updates acknowledged".into(),
            f0,
            |b| b.watch.as_ref().map(|w| w.updates_acked as f64),
            false,
        ),
        row(
            "watch deliveries received (of watchers x updates)".into(),
            f0,
            |b| b.watch.as_ref().map(|w| w.delivered as f64),
            false,
        ),
        row(
            "watchers that saw every update".into(),
            f0,
            |b| b.watch.as_ref().map(|w| w.complete_watchers as f64),
            false,
        ),
        row(
            "watch delivery after the PATCH's ack: p50 (ms)".into(),
            f2,
            |b| {
                b.watch
                    .as_ref()
                    .filter(|w| w.latency_from_ack.count > 0)
                    .map(|w| w.latency_from_ack.p50_ms)
            },
            true,
        ),
        row(
            "watch delivery after the PATCH's ack: p99 (ms)".into(),
            f2,
            |b| {
                b.watch
                    .as_ref()
                    .filter(|w| w.latency_from_ack.count > 0)
                    .map(|w| w.latency_from_ack.p99_ms)
            },
            true,
        ),
        row(
            "watch delivery after the PATCH's ack: max (ms)".into(),
            f2,
            |b| {
                b.watch
                    .as_ref()
                    .filter(|w| w.latency_from_ack.count > 0)
                    .map(|w| w.latency_from_ack.max_ms)
            },
            true,
        ),
        row(
            "watch delivery after the PATCH was sent: p50 (ms)".into(),
            f2,
            |b| {
                b.watch
                    .as_ref()
                    .filter(|w| w.latency_from_send.count > 0)
                    .map(|w| w.latency_from_send.p50_ms)
            },
            true,
        ),
        row(
            "watch delivery after the PATCH was sent: p99 (ms)".into(),
            f2,
            |b| {
                b.watch
                    .as_ref()
                    .filter(|w| w.latency_from_send.count > 0)
                    .map(|w| w.latency_from_send.p99_ms)
            },
            true,
        ),
        row(
            "deliveries before the PATCH's ack".into(),
            f0,
            |b| b.watch.as_ref().map(|w| w.before_ack as f64),
            false,
        ),
        row(
            "PATCH latency during the watch test: p50 (ms)".into(),
            f2,
            |b| {
                b.watch
                    .as_ref()
                    .filter(|w| w.update_latency.count > 0)
                    .map(|w| w.update_latency.p50_ms)
            },
            true,
        ),
        row(
            "tugboatd RSS idle (MiB)".into(),
            f1,
            |b| mib(b.memory.tugboatd_idle_kib),
            true,
        ),
        row(
            "tugboatd RSS peak during the creates (MiB)".into(),
            f1,
            |b| mib(b.memory.tugboatd_creates_peak_kib),
            true,
        ),
        row(
            "tugboatd RSS after the creates (MiB)".into(),
            f1,
            |b| mib(b.memory.tugboatd_after_creates_kib),
            true,
        ),
        row(
            "tugboatd RSS peak during the lists (MiB)".into(),
            f1,
            |b| mib(b.memory.tugboatd_lists_peak_kib),
            true,
        ),
        row(
            "tugboatd RSS peak during the watch test (MiB)".into(),
            f1,
            |b| mib(b.memory.tugboatd_watch_peak_kib),
            true,
        ),
        row(
            "tugboatd VmHWM at the end (MiB)".into(),
            f1,
            |b| mib(b.memory.tugboatd_hwm_kib),
            true,
        ),
        row(
            "etcd RSS idle (MiB)".into(),
            f1,
            |b| mib(b.memory.etcd_idle_kib),
            false,
        ),
        row(
            "etcd RSS after the creates (MiB)".into(),
            f1,
            |b| mib(b.memory.etcd_after_creates_kib),
            false,
        ),
        row(
            "etcd RSS peak during the watch test (MiB)".into(),
            f1,
            |b| mib(b.memory.etcd_watch_peak_kib),
            false,
        ),
    ]
}

/// The comparison table; the ratio column is tugboat / etcd when both ran.
pub fn table(r: &RunReport) -> String {
    let bs = &r.backends;
    let tug = bs.iter().find(|b| b.backend == Backend::Tugboat);
    let etc = bs.iter().find(|b| b.backend == Backend::Etcd);
    let both = tug.is_some() && etc.is_some();
    let mut out = String::from("| metric |");
    for b in bs {
        out += &format!(" {} |", b.label);
    }
    if both {
        out += " tugboat/etcd |";
    }
    out += "\n|---|";
    for _ in bs {
        out += "---:|";
    }
    if both {
        out += "---:|";
    }
    out += "\n";
    for row in rows(r) {
        let vals: Vec<Option<f64>> = bs.iter().map(|b| (row.get)(b)).collect();
        if vals.iter().all(|v| v.is_none()) {
            continue;
        }
        out += &format!("| {} |", row.label);
        for v in &vals {
            out += &format!(" {} |", v.map(row.fmt).unwrap_or_else(|| "n/a".into()));
        }
        if both {
            let cell = match ((row.get)(tug.unwrap()), (row.get)(etc.unwrap())) {
                (Some(t), Some(e)) if row.ratio && e > 0.0 => format!("{:.2}", t / e),
                _ => String::new(),
            };
            out += &format!(" {cell} |");
        }
        out += "\n";
    }
    out
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        None => "n/a",
        Some(true) => "met",
        Some(false) => "**not met**",
    }
}

/// The goals of issue 4, per backend.
pub fn goals(r: &RunReport) -> String {
    let mut out = String::new();
    for b in &r.backends {
        let list = b.lists.as_ref().and_then(|l| l.kubectl.median_ms);
        let rows_ok =
            b.lists.as_ref().and_then(|l| l.kubectl.rows) == Some(r.params.creates as u64);
        let p99 = b
            .watch
            .as_ref()
            .filter(|w| w.latency_from_ack.count > 0)
            .map(|w| w.latency_from_ack.p99_ms);
        let all = b
            .watch
            .as_ref()
            .map(|w| w.complete_watchers == w.watchers && w.watchers > 0);
        out += &format!(
            "- {}: {}-Ship `kubectl get ships -A` under 1 s: {}{}; watch fan-out p99 under 50 ms ({} watchers): {}; every watcher saw every update: {}\n",
            b.label,
            r.params.creates,
            list.map(|v| format!("{v:.0} ms: ")).unwrap_or_default(),
            verdict(list.map(|v| v < 1000.0 && rows_ok)),
            r.params.watchers,
            match p99 {
                Some(v) => format!("{v:.1} ms: {}", verdict(Some(v < 50.0))),
                None => "n/a".into(),
            },
            match all {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            }
        );
    }
    out
}

/// Errors and failures seen, as a Markdown list (empty when there were none).
pub fn problems(r: &RunReport) -> String {
    let mut out = String::new();
    for b in &r.backends {
        let key = b.backend.key();
        if let Some(f) = &b.failure {
            out += &format!("- {key}: stopped early: {f}\n");
        }
        let mut add = |what: &str, e: &super::phases::Errors| {
            if e.count > 0 {
                out += &format!(
                    "- {key}, {what}: {} errors, e.g. {}\n",
                    e.count,
                    e.samples.first().cloned().unwrap_or_default()
                );
            }
        };
        if let Some(c) = &b.creates {
            add("creates", &c.errors);
        }
        if let Some(l) = &b.lists {
            add("kubectl get", &l.kubectl.errors);
            add("kubectl get --chunk-size=0", &l.kubectl_unchunked.errors);
            add("raw list", &l.raw_json.errors);
            add("Table list", &l.table.errors);
            add("paged Table list", &l.table_paged.errors);
        }
        if let Some(w) = &b.watch {
            add("watch", &w.errors);
        }
    }
    out
}

/// The docs/benchmarks.md section.
pub fn markdown(r: &RunReport) -> String {
    let p = &r.params;
    let m = &r.machine;
    let order: Vec<&str> = r.backends.iter().map(|b| b.backend.key()).collect();
    let problems = problems(r);
    format!(
        "## Kubernetes API: Ships through the apiserver\n\
\n\
Generated by `{cmd}` on {when}, tugboat commit {commit}, {nproc} CPUs ({cpu}), {mem:.1} GiB, {kernel}; load average \
before {lb}, after {la}. kubectl {kv}.\n\
\n\
Setup: `tugboat-testsuite`'s `apibench` starts one single-node `tugboatd run` (release build, \
default settings, apiserver on `--api-listen` with the cluster CA) per backend, one after the \
other ({order}): the apiserver over tugboat's own in-process store, then the same binary with \
`--etcd-endpoints` pointing at a fresh Debian etcd {ev} (default settings, plaintext loopback). \
Both fsync before acknowledging. The client runs on the same machine and authenticates with the \
client certificate of `DATA/admin.kubeconfig` (cluster-admin).\n\
\n\
- Creates: {n} `POST /api/v1/namespaces/{ns}/ships` of a minimal Ship, closed loop with {c} \
concurrent requests multiplexed over {conns} HTTP/2 connections; latency is per request, creates/s \
is successful creates over the wall time of the phase.\n\
- Lists, with the {n} Ships present: the real kubectl ({kubectl}) `get ships -A` {lr} times \
after one discovery warm-up (`kubectl api-resources`, same `--cache-dir`), wall time of the \
process, median reported; kubectl asks for server-side Tables in pages of 500 (its default \
`--chunk-size`), so the `--chunk-size=0` row shows one unpaged request. The raw rows time \
`GET /api/v1/ships` (the JSON list, and the Table that kubectl asks for, in one request and in \
pages of 500 following `continue` as kubectl does) from request to the last byte on an open \
HTTP/2 connection, median of {lr}.\n\
- Watch: {w} watchers `GET /api/v1/namespaces/{ns}/ships?watch=true&resourceVersion=RV` (RV of a \
fresh list) spread over {wc} HTTP/2 connections, then {u} merge patches, one at a time at \
{rate}/s, each setting an annotation with its sequence number (and send time) on one of the \
Ships. Every watcher timestamps each event as its frame arrives; latency is receive time minus \
the time the PATCH's response arrived (events that beat the response count as 0 and are counted \
separately), over all watcher x update pairs; \"after sent\" measures from sending the PATCH.\n\
- Memory: VmRSS of `tugboatd` (apiserver and its own store in one process; with the etcd backend \
its store is idle) {idle} s after the API first answered, sampled every 100 ms during each phase \
(peak), and right after the creates; etcd's separately.\n\
\n\
{table}\n\
Ratios above 1 mean the number over tugboat's store is larger (better for rates, worse for \
latency and memory).\n\
\n\
Goals (issue 4):\n\
{goals}\n\
{problems_text}\n\
Reproduce: `BENCH_ONLY=api scripts/bench.sh` (or `target/release/apibench --help`: \
`APIBENCH_CREATES`, `APIBENCH_WATCHERS`, … for a smaller run); the raw JSON is left in \
`target/bench-results/api.json`.\n",
        cmd = r.command,
        commit = r.tugboat_commit,
        when = r.started_utc,
        nproc = m.nproc,
        cpu = m.cpu,
        mem = m.mem_gib,
        kernel = m.kernel,
        lb = m.loadavg_before,
        la = m.loadavg_after,
        kv = r.kubectl_version,
        order = order.join(", then "),
        ev = r.etcd_version,
        n = p.creates,
        ns = p.namespace,
        c = p.concurrency,
        conns = p.conns,
        kubectl = p.kubectl.display(),
        lr = p.list_repeat,
        w = p.watchers,
        wc = p.watch_conns,
        u = p.updates,
        rate = p.update_rate,
        idle = r.idle_secs,
        table = table(r),
        goals = goals(r),
        problems_text = if problems.is_empty() {
            "No request failed.\n".to_string()
        } else {
            format!("Errors (the numbers above count successful requests only):\n{problems}")
        },
    )
}
