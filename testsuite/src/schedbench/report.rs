//! The Markdown table and goal lines of a schedbench run.

use serde::Serialize;

use super::{Params, Results, SchedulerPlace};

/// A whole run as written to the JSON result file.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The command that ran it.
    pub command: String,
    /// When it started (UTC).
    pub started_utc: String,
    /// `nproc`, CPU model, memory, kernel.
    pub machine: String,
    /// Load average before and after.
    pub loadavg_before: String,
    /// Load average after.
    pub loadavg_after: String,
    /// `git rev-parse --short HEAD` (+ dirty).
    pub commit: String,
    /// What ran.
    pub params: Params,
    /// What was measured.
    pub results: Results,
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}"))
        .unwrap_or_else(|| "not reached".into())
}

/// The results table.
pub fn table(r: &Report) -> String {
    let p = &r.params;
    let x = &r.results;
    let place = match p.scheduler {
        SchedulerPlace::Tugboatd => "in tugboatd",
        SchedulerPlace::InProcess => "in the bench process",
    };
    let rows: Vec<(String, String)> = vec![
        (
            "simulated nodes (NodeAgent + FakeRuntime)".into(),
            p.nodes.to_string(),
        ),
        ("scheduler".into(), place.into()),
        (
            "nodes registered and Ready (s)".into(),
            format!("{:.1}", x.nodes_ready_secs),
        ),
        (
            format!("Ships created (of {}), errors", p.ships),
            format!("{}, {}", x.created, x.create_errors),
        ),
        (
            format!("creates/s ({} concurrent)", p.create_concurrency),
            format!("{:.0}", x.created as f64 / x.create_secs.max(1e-9)),
        ),
        (
            "Ships bound (seen by the watch)".into(),
            x.bound.to_string(),
        ),
        (
            "scheduling throughput, first to last binding (Ships/s)".into(),
            format!("{:.0}", x.bind_rate),
        ),
        (
            "peak bindings in one second".into(),
            x.peak_bind_rate_1s.to_string(),
        ),
        (
            "first create to last binding (s)".into(),
            secs(x.all_bound_secs),
        ),
        (
            "first create to all Running (s)".into(),
            secs(x.all_running_secs),
        ),
        ("Ships Running".into(), x.running.to_string()),
        (
            "create sent to bound seen: p50 / p99 / max (ms)".into(),
            format!(
                "{:.0} / {:.0} / {:.0}",
                x.create_to_bound_ms[0], x.create_to_bound_ms[1], x.create_to_bound_ms[2]
            ),
        ),
        (
            format!(
                "bound to Running seen: p50 / p99 / max (ms; fake boot {} ms)",
                p.boot_delay_ms
            ),
            format!(
                "{:.0} / {:.0} / {:.0}",
                x.bound_to_running_ms[0], x.bound_to_running_ms[1], x.bound_to_running_ms[2]
            ),
        ),
        (
            "Ships per node: min / max".into(),
            format!("{} / {}", x.min_per_node, x.max_per_node),
        ),
        (
            "Ships bound to a second node (must be 0)".into(),
            x.rebinds.to_string(),
        ),
        (
            "tugboatd CPU, first create to all Running (s)".into(),
            format!("{:.1}", x.tugboatd_cpu_secs),
        ),
        (
            "tugboatd RSS before the creates (MiB)".into(),
            mib(x.tugboatd_rss_before_kib),
        ),
        (
            "tugboatd RSS peak (MiB)".into(),
            mib(x.tugboatd_rss_peak_kib),
        ),
        (
            "tugboatd VmHWM at the end (MiB)".into(),
            mib(x.tugboatd_hwm_kib),
        ),
        (
            "bench process CPU, same span (s)".into(),
            format!("{:.1}", x.bench_cpu_secs),
        ),
        (
            "bench process RSS peak (MiB)".into(),
            mib(x.bench_rss_peak_kib),
        ),
    ];
    let mut out = String::from("| metric | value |\n|---|---:|\n");
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out
}

/// One line per goal.
pub fn goals(r: &Report) -> String {
    let x = &r.results;
    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let running = x.all_running_secs;
    let rss = x.tugboatd_rss_peak_kib as f64 / 1024.0;
    format!(
        "Goals:\n- scheduling throughput ≥ 1,000 Ships/s: {:.0}/s: {}\n- all {} Ships Running in < 30 s: {}: {}\n- control-plane (tugboatd) RSS < 200 MiB: {:.1} MiB peak: {}\n",
        x.bind_rate,
        met(x.bind_rate >= 1000.0),
        r.params.ships,
        secs(running),
        met(running.is_some_and(|s| s < 30.0)),
        rss,
        met(rss < 200.0),
    )
}

/// The docs/benchmarks.md section.
pub fn markdown(r: &Report) -> String {
    let p = &r.params;
    format!(
        "## Scheduling: {nodes} simulated nodes, {ships} Ships\n\n\
Generated by `{command}` on {when}, tugboat commit {commit}, {machine}; \
load average before {lb}, after {la}.\n\n\
Setup: `tugboat-testsuite`'s `schedbench` starts one single-node `tugboatd run` (release build, \
default settings; store, apiserver, scheduler and controllers in one process) and, in the bench \
process, {nodes} node agents (`tugboat_nodeagent::NodeAgent` over `FakeRuntime`, boot delay \
{boot} ms, {cpu} CPUs and {mem} each, {zones} zones) sharing one kube-rs client with the admin \
kubeconfig. It creates {ships} Ships (1 core, 1 GiB; {conc} creates in flight) through the API; \
a watch of all Ships records when each is first seen bound (`spec.nodeName`) and Running. CPU is \
utime+stime from `/proc/<pid>/stat` from the first create until all Ships run; RSS is VmRSS \
sampled every 100 ms.\n\n{table}\n{goals}\nReproduce: `BENCH_ONLY=sched scripts/bench.sh`, or \
`target/release/schedbench --nodes 100 --ships 1000` for a small run (`--help`); the raw JSON is \
left in `target/bench-results/sched.json`.\n",
        nodes = p.nodes,
        ships = p.ships,
        command = r.command,
        when = r.started_utc,
        commit = r.commit,
        machine = r.machine,
        lb = r.loadavg_before,
        la = r.loadavg_after,
        boot = p.boot_delay_ms,
        cpu = p.node_cpu,
        mem = p.node_memory,
        zones = p.zones,
        conc = p.create_concurrency,
        table = table(r),
        goals = goals(r),
    )
}
