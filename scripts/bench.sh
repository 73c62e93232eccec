#!/usr/bin/env bash
# Benchmark tugboatd against Debian etcd 3.4 on this machine and write
# docs/benchmarks.md. Not a test: run it by hand (takes a few minutes plus the
# release build).
#
#   scripts/bench.sh                 # build release, run everything, write docs/benchmarks.md
#   BENCH_DURATION=5 scripts/bench.sh  # seconds per measured run (default 10)
#   BENCH_REPEAT=3 scripts/bench.sh    # rounds of the whole set (default 2; numbers are averaged)
#   BENCH_SKIP_BUILD=1 scripts/bench.sh
#   BENCH_ONLY=etcd scripts/bench.sh   # only etcd (checks the script itself); writes to stdout
#
# Both servers run on loopback in fresh temp dirs with default settings (both
# fsync before acknowledging), single node, plaintext client endpoint. Each benchmark
# runs against both servers back to back, alternating which goes first.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${BENCH_DURATION:-10}
REPEAT=${BENCH_REPEAT:-2}
ONLY=${BENCH_ONLY:-}
ETCD_BIN=${ETCD_BIN:-/usr/bin/etcd}
ETCDCTL_BIN=${ETCDCTL_BIN:-/usr/bin/etcdctl}
KEY_SIZE=16
VAL_SIZE=256
PUT_KEYSPACE=100000
RANGE_KEYSPACE=1000
CLIENTS=32
CONNS=4
WATCHERS=16
COMMAND_LINE="${BENCH_DURATION:+BENCH_DURATION=$BENCH_DURATION }${BENCH_REPEAT:+BENCH_REPEAT=$BENCH_REPEAT }scripts/bench.sh"

die() { echo "bench.sh: $*" >&2; exit 1; }

for tool in "$ETCD_BIN" "$ETCDCTL_BIN"; do
    [ -x "$tool" ] || die "$tool not found: apt-get install etcd-server etcd-client"
done
command -v python3 >/dev/null || die "python3 is needed to render the report"

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    echo "== building release binaries" >&2
    if [ "$ONLY" = etcd ]; then
        (cd "$ROOT" && cargo build --release -p tugboat-testsuite --bin tugboat-loadgen) >&2
    else
        (cd "$ROOT" && cargo build --release -p tugboat-ctl -p tugboat-testsuite) >&2
    fi
fi
TUGBOATD=$TARGET_DIR/release/tugboatd
LOADGEN=$TARGET_DIR/release/tugboat-loadgen
[ -x "$LOADGEN" ] || die "$LOADGEN missing (cargo build --release -p tugboat-testsuite)"
if [ "$ONLY" != etcd ]; then
    [ -x "$TUGBOATD" ] || die "$TUGBOATD missing (cargo build --release -p tugboat-ctl)"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tugboat-bench.XXXXXX")
RESULTS=$WORK/results
mkdir -p "$RESULTS"
declare -A PID=()
declare -A URL=()

cleanup() {
    local status=$?
    for name in "${!PID[@]}"; do
        kill -9 "${PID[$name]}" 2>/dev/null || true
        wait "${PID[$name]}" 2>/dev/null || true
    done
    if [ $status -ne 0 ]; then
        echo "bench.sh: failed; logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # name url
    local i
    for i in $(seq 1 300); do
        if ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints "$2" --dial-timeout=2s endpoint health >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "${PID[$1]}" 2>/dev/null || { tail -40 "$WORK/$1.log" >&2; die "$1 exited during startup"; }
        sleep 0.2
    done
    tail -40 "$WORK/$1.log" >&2
    die "$1 not healthy after 60s"
}

start_etcd() {
    local client peer
    client=$(free_port); peer=$(free_port)
    "$ETCD_BIN" --name bench --data-dir "$WORK/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" --initial-cluster-state new \
        >"$WORK/etcd.log" 2>&1 &
    PID[etcd]=$!
    URL[etcd]="http://127.0.0.1:$client"
    wait_ready etcd "${URL[etcd]}"
}

start_tugboat() {
    local peer tls plain
    peer=$(free_port); tls=$(free_port); plain=$(free_port)
    "$TUGBOATD" run --data-dir "$WORK/tugboat-data" --name bench \
        --peer-listen "127.0.0.1:$peer" --etcd-listen "127.0.0.1:$tls" --etcd-listen-plain "127.0.0.1:$plain" \
        >"$WORK/tugboat.log" 2>&1 &
    PID[tugboat]=$!
    URL[tugboat]="http://127.0.0.1:$plain"
    wait_ready tugboat "${URL[tugboat]}"
}

status_kib() { # pid field -> KiB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# Samples VmRSS of a pid every 100 ms into a file until the file $2.stop exists.
sample_rss() { # pid outfile
    : >"$2"
    while [ ! -e "$2.stop" ] && kill -0 "$1" 2>/dev/null; do
        status_kib "$1" VmRSS >>"$2" || true
        sleep 0.1
    done
}

loadgen() { # name label args...
    local name=$1 label=$2
    shift 2
    echo "   $label on $name" >&2
    "$LOADGEN" --endpoint "${URL[$name]}" --json --key-size $KEY_SIZE --val-size $VAL_SIZE "$@" \
        >"$RESULTS/$label-$name.json" || die "loadgen $label on $name failed"
}

TARGETS=(etcd tugboat)
[ "$ONLY" = etcd ] && TARGETS=(etcd)
# Alternate which server goes first, so warm caches and background noise do not
# always favour the same one.
ORDER_FLIP=0
ORDER=()
next_order() { # sets ORDER; not a $(...) call, so the flip survives
    if [ ${#TARGETS[@]} -eq 2 ] && [ $ORDER_FLIP -eq 1 ]; then
        ORDER=("${TARGETS[1]}" "${TARGETS[0]}")
    else
        ORDER=("${TARGETS[@]}")
    fi
    ORDER_FLIP=$((1 - ORDER_FLIP))
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== starting servers in $WORK (load average $LOAD_BEFORE)" >&2
start_etcd
[ "$ONLY" = etcd ] || start_tugboat
sleep 5
for t in "${TARGETS[@]}"; do
    echo "{\"idle_rss_kib\": $(status_kib "${PID[$t]}" VmRSS)}" >"$RESULTS/idle-$t.json"
done

for rep in $(seq 1 "$REPEAT"); do
echo "== round $rep of $REPEAT: put, 1 client" >&2
next_order
for t in "${ORDER[@]}"; do
    loadgen "$t" "put1-$rep" --mode put --clients 1 --conns 1 --key-space $PUT_KEYSPACE --duration "$DURATION"
done

echo "== round $rep of $REPEAT: put, $CLIENTS clients" >&2
next_order
for t in "${ORDER[@]}"; do
    rm -f "$WORK/rss-$t.stop"
    sample_rss "${PID[$t]}" "$WORK/rss-$t" &
    sampler=$!
    loadgen "$t" "put32-$rep" --mode put --clients $CLIENTS --conns $CONNS --key-space $PUT_KEYSPACE --duration "$DURATION"
    touch "$WORK/rss-$t.stop"
    wait "$sampler" || true
    peak=$(sort -n "$WORK/rss-$t" | tail -1)
    echo "{\"peak_rss_kib\": ${peak:-0}, \"hwm_kib\": $(status_kib "${PID[$t]}" VmHWM)}" >"$RESULTS/rss-$rep-$t.json"
done

echo "== round $rep of $REPEAT: range (linearizable), $CLIENTS clients" >&2
next_order
for t in "${ORDER[@]}"; do
    loadgen "$t" "range32-$rep" --mode range --clients $CLIENTS --conns $CONNS --key-space $RANGE_KEYSPACE --duration "$DURATION"
done

echo "== round $rep of $REPEAT: watch, $WATCHERS watchers + 1 writer" >&2
next_order
for t in "${ORDER[@]}"; do
    loadgen "$t" "watch-$rep" --mode watch --clients $WATCHERS --conns $CONNS --key-space $RANGE_KEYSPACE \
        --prefix "bw/" --duration "$DURATION"
done
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ETCD_VERSION=$("$ETCD_BIN" --version 2>/dev/null | awk '/etcd Version/ { print $3 }')
GIT_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(cd "$ROOT" && git status --porcelain 2>/dev/null | head -1)" ]; then GIT_REV="$GIT_REV (dirty tree)"; fi

# Keep the raw per-run JSON next to the build output (ignored by git).
rm -rf "$TARGET_DIR/bench-results"
cp -r "$RESULTS" "$TARGET_DIR/bench-results"

OUT=$ROOT/docs/benchmarks.md
[ "$ONLY" = etcd ] && OUT=/dev/stdout
python3 - "$RESULTS" "$OUT" <<PY
import json, os, sys
res, out = sys.argv[1], sys.argv[2]
targets = "${TARGETS[*]}".split()

def load(name):
    p = os.path.join(res, name)
    return json.load(open(p)) if os.path.exists(p) else None

reps = int("${REPEAT}")

def runs(label, t):
    found = [load(f"{label}-{r}-{t}.json") for r in range(1, reps + 1)]
    return [x for x in found if x is not None]

def mean(label, *path):
    def get(t):
        vals = []
        for r in runs(label, t):
            for k in path:
                r = r[k]
            vals.append(r)
        return sum(vals) / len(vals) if vals else None
    return get

def peak(field):
    return lambda t: max((x[field] for x in runs("rss", t)), default=None)

def cell(v, fmt):
    return "n/a" if v is None else fmt.format(v)

rows = []  # (label, {target: value}, fmt)
def add(label, fmt, getter):
    vals = {}
    for t in targets:
        try:
            vals[t] = getter(t)
        except (TypeError, KeyError):
            vals[t] = None
    rows.append((label, vals, fmt))

kib = lambda g: (lambda t: None if g(t) is None else g(t) / 1024.0)
add("idle RSS (MiB)", "{:.1f}", lambda t: load(f"idle-{t}.json")["idle_rss_kib"] / 1024.0)
add("put, 1 client: puts/s", "{:.0f}", mean("put1", "ops_per_sec"))
add("put, 1 client: p50 (ms)", "{:.3f}", mean("put1", "latency_ms", "p50"))
add("put, 1 client: p99 (ms)", "{:.3f}", mean("put1", "latency_ms", "p99"))
add("put, ${CLIENTS} clients: puts/s", "{:.0f}", mean("put32", "ops_per_sec"))
add("put, ${CLIENTS} clients: p50 (ms)", "{:.3f}", mean("put32", "latency_ms", "p50"))
add("put, ${CLIENTS} clients: p99 (ms)", "{:.3f}", mean("put32", "latency_ms", "p99"))
add("range (linearizable), ${CLIENTS} clients: ranges/s", "{:.0f}", mean("range32", "ops_per_sec"))
add("range (linearizable), ${CLIENTS} clients: p99 (ms)", "{:.3f}", mean("range32", "latency_ms", "p99"))
add("watch, ${WATCHERS} watchers: events/s", "{:.0f}", mean("watch", "ops_per_sec"))
add("watch event latency p50 (ms)", "{:.3f}", mean("watch", "latency_ms", "p50"))
add("watch event latency p99 (ms)", "{:.3f}", mean("watch", "latency_ms", "p99"))
add("loaded RSS, peak during ${CLIENTS}-client puts (MiB)", "{:.1f}", kib(peak("peak_rss_kib")))
add("VmHWM after ${CLIENTS}-client puts (MiB)", "{:.1f}", kib(peak("hwm_kib")))

names = {"etcd": "etcd ${ETCD_VERSION}", "tugboat": "tugboat"}
head = "| metric | " + " | ".join(names[t] for t in targets)
sep = "|---|" + "---:|" * len(targets)
if targets == ["etcd", "tugboat"]:
    head += " | tugboat/etcd"
    sep += "---:|"
lines = [head + " |", sep]
for label, vals, fmt in rows:
    line = f"| {label} | " + " | ".join(cell(vals[t], fmt) for t in targets)
    if targets == ["etcd", "tugboat"]:
        e, g = vals["etcd"], vals["tugboat"]
        line += " | " + ("n/a" if not e or g is None else f"{g / e:.2f}")
    lines.append(line + " |")

errors = []
for f in sorted(os.listdir(res)):
    r = load(f)
    if isinstance(r, dict) and r.get("errors"):
        errors.append(f"- {f[:-5]}: {r['errors']} errors, e.g. {r.get('sample_errors', [])[:2]}")

def sh(cmd):
    return os.popen(cmd).read().strip()

mem_kib = int(sh("awk '/MemTotal/ {print \$2}' /proc/meminfo") or 0)
doc = f"""# Benchmarks: tugboatd vs etcd

Generated by \`{"${COMMAND_LINE}"}\` on {sh("date -u '+%Y-%m-%d %H:%M UTC'")}, tugboat commit {"${GIT_REV}"}.

Machine:
- CPUs (\`nproc\`): {sh("nproc")} ({sh("awk -F': ' '/model name/ {print \$2; exit}' /proc/cpuinfo")})
- memory: {mem_kib / 1024 / 1024:.1f} GiB
- kernel: {sh("uname -sr")}
- load average (1/5/15 min) before the runs: {"${LOAD_BEFORE}"}, after: {"${LOAD_AFTER}"}
- disk under {sh("dirname $WORK")}: {sh("df -hT $WORK | awk 'NR==2 {print \$2}'")} filesystem

The machine is shared (other builds may run at the same time), so treat differences under ~20% as
noise and rerun before drawing conclusions.

Setup: one single-node server of each kind on loopback, fresh temp data dirs, default settings,
both fsync their log before acknowledging a write (etcd 3.4's default WAL fsync; tugboatd's
raft log flush, one per batch of concurrent proposals), plaintext client endpoint, release builds. The load
generator is \`tugboat-loadgen\` (Rust, tonic; {"${CONNS}"} HTTP/2 connections shared by the clients,
closed loop: each client waits for its answer before sending the next request), running on the same
machine, so it competes with the server for the {sh("nproc")} CPUs in the same way for both. Each
measured run lasts {"${DURATION}"} s; each benchmark runs against both servers back to back, alternating
which goes first, and the whole set runs {reps} times (rates and latencies are the mean over the
rounds, RSS the maximum). Keys {"${KEY_SIZE}"} B, values {"${VAL_SIZE}"} B; puts go to random keys among
{"${PUT_KEYSPACE}"}; ranges read one random key among {"${RANGE_KEYSPACE}"} prefilled keys; the watch
run has {"${WATCHERS}"} watchers on one prefix and one writer, and latency is from the put being sent
to the event arriving (the value carries the send time). RSS is VmRSS from /proc: idle 5 s after
startup, and the peak of 100 ms samples during the {"${CLIENTS}"}-client put run.

{chr(10).join(lines)}

Ratios above 1 mean tugboat's number is larger (better for rates, worse for latency and memory).
"""
if errors:
    doc += "\nErrors during the runs (the numbers above only count successful requests):\n" + "\n".join(errors) + "\n"
else:
    doc += "\nNo request failed in any run.\n"
doc += "\nReproduce: \`scripts/bench.sh\` (\`BENCH_DURATION\` seconds per run, \`BENCH_REPEAT\` rounds; the raw \`tugboat-loadgen --json\` output of each run is left in \`target/bench-results/\`).\n"
open(out, "w").write(doc)
PY
[ "$ONLY" = etcd ] || echo "== wrote $OUT" >&2
