#!/usr/bin/env bash
# Benchmark tugboatd against Debian etcd 3.4 on this machine and write
# docs/benchmarks.md. Not a test: run it by hand (takes about seven minutes plus
# the release build: ~3 single-node, ~3.5 three-node clusters).
#
#   scripts/bench.sh                 # build release, run everything, write docs/benchmarks.md
#   BENCH_DURATION=5 scripts/bench.sh  # seconds per measured load run (default 10)
#   BENCH_REPEAT=3 scripts/bench.sh    # rounds of the load runs (default 2; numbers are averaged)
#   BENCH_JOIN_REPEAT=5 scripts/bench.sh     # cluster formations timed per system (default 5)
#   BENCH_FAILOVER_KILLS=10 scripts/bench.sh # leader kills per system (default 10)
#   BENCH_CLUSTER=0 scripts/bench.sh   # single-node benchmarks only
#   BENCH_SKIP_BUILD=1 scripts/bench.sh
#   BENCH_ONLY=etcd scripts/bench.sh   # only etcd (checks the script itself); writes to stdout
#   BENCH_ONLY=cluster scripts/bench.sh  # only the 3-node cluster benchmarks; writes to stdout
#   BENCH_ONLY=api scripts/bench.sh    # only the Kubernetes API benchmark (apibench); writes to stdout
#   BENCH_API=0 scripts/bench.sh       # leave the API benchmark out of a full run
#   BENCH_ONLY=sched scripts/bench.sh  # only the scheduling benchmark (schedbench); writes to stdout
#   BENCH_ONLY=vm scripts/bench.sh     # only the VM benchmark (vmbench: boot vs bare QEMU, RSS per VM, 1 GiB pull vs skopeo)
#   BENCH_SCHED=0 scripts/bench.sh     # leave the scheduling benchmark out of a full run
#   SCHEDBENCH_NODES=100 SCHEDBENCH_SHIPS=1000 BENCH_ONLY=sched scripts/bench.sh  # quick run
#                                      # (all SCHEDBENCH_* knobs: target/release/schedbench --help)
#   APIBENCH_CREATES=500 APIBENCH_WATCHERS=50 BENCH_ONLY=api scripts/bench.sh  # quick API run
#                                      # (all APIBENCH_* knobs: target/release/apibench --help)
#   BENCH_OUT=/tmp/b.md scripts/bench.sh # write the report there instead
#
# Single node: both servers run on loopback in fresh temp dirs with default
# settings (both fsync before acknowledging), plaintext client endpoint. Each
# benchmark runs against both servers back to back, alternating which goes first.
#
# Three nodes: a tugboat cluster (formed with `tugboatd join`) and an etcd
# cluster (static bootstrap) run side by side on loopback, heartbeat 100 ms and
# election timeout 1000 ms on both. Measured, alternating which system goes first:
# write throughput and latency (clients spread over all three members, then
# leader only), time from `tugboatd join` to voter (etcd: `member add --learner`,
# start, `member promote`) on freshly formed clusters, and the write outage after
# kill -9 of the leader (`tugboat-loadgen failover-probe`; the killed member is
# restarted and caught up before the next kill).
#
# Kubernetes API (`apibench`, after the others): the same tugboatd apiserver
# over tugboat's own store and over Debian etcd (`--etcd-endpoints`), one after
# the other: Ship creates/s and p99, `kubectl get ships -A` with 10,000 Ships,
# raw list times, watch delivery latency to 1,000 watchers, RSS.
#
# Scheduling (`schedbench`, last): one tugboatd (store, apiserver, scheduler,
# controllers) and 1,000 simulated nodes (node agents over the fake runtime) in
# the bench process; 10,000 Ships created through the API; Ships bound per
# second, time until all run, tugboatd CPU seconds and RSS.
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
CLUSTER=${BENCH_CLUSTER:-1}
JOIN_REPEAT=${BENCH_JOIN_REPEAT:-5}
KILLS=${BENCH_FAILOVER_KILLS:-10}
API=${BENCH_API:-1}
SCHED=${BENCH_SCHED:-1}
VM=${BENCH_VM:-1}
KUBECTL_BIN=${KUBECTL_BIN:-/usr/bin/kubectl}
CLUSTER_CONNS=6 # two HTTP/2 connections per member when spreading over three
HEARTBEAT_MS=100
ELECTION_MS=1000
PROBE_INTERVAL_MS=5
COMMAND_LINE="${BENCH_DURATION:+BENCH_DURATION=$BENCH_DURATION }${BENCH_REPEAT:+BENCH_REPEAT=$BENCH_REPEAT }\
${BENCH_JOIN_REPEAT:+BENCH_JOIN_REPEAT=$BENCH_JOIN_REPEAT }${BENCH_FAILOVER_KILLS:+BENCH_FAILOVER_KILLS=$BENCH_FAILOVER_KILLS }\
${BENCH_CLUSTER:+BENCH_CLUSTER=$BENCH_CLUSTER }${BENCH_API:+BENCH_API=$BENCH_API }${BENCH_SCHED:+BENCH_SCHED=$BENCH_SCHED }${BENCH_VM:+BENCH_VM=$BENCH_VM }${BENCH_ONLY:+BENCH_ONLY=$BENCH_ONLY }scripts/bench.sh"
export ETCDCTL_API=3

die() { echo "bench.sh: $*" >&2; exit 1; }

for tool in "$ETCD_BIN" "$ETCDCTL_BIN"; do
    [ -x "$tool" ] || die "$tool not found: apt-get install etcd-server etcd-client"
done
command -v python3 >/dev/null || die "python3 is needed to render the report"
case "$ONLY" in
    "") ;;
    etcd) API=0; SCHED=0; VM=0 ;;
    cluster) CLUSTER=1; API=0; SCHED=0; VM=0 ;;
    api) CLUSTER=0; API=1; SCHED=0; VM=0 ;;
    sched) CLUSTER=0; API=0; SCHED=1; VM=0 ;;
    vm) CLUSTER=0; API=0; SCHED=0; VM=1 ;;
    *) die "BENCH_ONLY must be etcd, cluster, api, sched or vm" ;;
esac
SINGLE=1
[ "$ONLY" = cluster ] && SINGLE=0
[ "$ONLY" = api ] && SINGLE=0
[ "$ONLY" = sched ] && SINGLE=0
[ "$ONLY" = vm ] && SINGLE=0
[ "$CLUSTER" = 0 ] || [ "$CLUSTER" = 1 ] || die "BENCH_CLUSTER must be 0 or 1"
[ "$API" = 0 ] || [ "$API" = 1 ] || die "BENCH_API must be 0 or 1"
[ "$SCHED" = 0 ] || [ "$SCHED" = 1 ] || die "BENCH_SCHED must be 0 or 1"
if [ "$API" = 1 ]; then
    [ -x "$KUBECTL_BIN" ] || die "$KUBECTL_BIN not found (set KUBECTL_BIN, or BENCH_API=0)"
fi

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    echo "== building release binaries" >&2
    if [ "$ONLY" = etcd ]; then
        (cd "$ROOT" && cargo build --release -p tugboat-testsuite --bin tugboat-loadgen) >&2
    else
        (cd "$ROOT" && cargo build --release -p tugboat-ctl -p tugboat-testsuite) >&2
    fi
fi
TUGBOATD=$TARGET_DIR/release/tugboatd
TUGBOAT_CLI=$TARGET_DIR/release/tugboat
LOADGEN=$TARGET_DIR/release/tugboat-loadgen
APIBENCH=$TARGET_DIR/release/apibench
SCHEDBENCH=$TARGET_DIR/release/schedbench
VMBENCH=$TARGET_DIR/release/vmbench
[ -x "$LOADGEN" ] || die "$LOADGEN missing (cargo build --release -p tugboat-testsuite)"
if [ "$API" = 1 ]; then
    [ -x "$APIBENCH" ] || die "$APIBENCH missing (cargo build --release -p tugboat-testsuite --bin apibench)"
fi
if [ "$SCHED" = 1 ]; then
    [ -x "$SCHEDBENCH" ] || die "$SCHEDBENCH missing (cargo build --release -p tugboat-testsuite --bin schedbench)"
fi
if [ "$VM" = 1 ]; then
    [ -x "$VMBENCH" ] || die "$VMBENCH missing (cargo build --release -p tugboat-testsuite --bin vmbench)"
fi
if [ "$ONLY" != etcd ]; then
    [ -x "$TUGBOATD" ] || die "$TUGBOATD missing (cargo build --release -p tugboat-ctl)"
    [ -x "$TUGBOAT_CLI" ] || die "$TUGBOAT_CLI missing (cargo build --release -p tugboat-ctl)"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tugboat-bench.XXXXXX")
RESULTS=$WORK/results
mkdir -p "$RESULTS"
declare -A PID=()     # process key -> pid
declare -A URL=()     # process key -> plaintext client URL
declare -A PEER=()    # process key -> peer host:port
declare -A RESTART=() # process key -> command line (printf %q) that restarts it

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

# N distinct free ports on one line (all held at once, so they cannot repeat).
free_ports() { # n
    python3 -c 'import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
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
    "$TUGBOATD" run --data-dir "$WORK/tugboat-data" --name bench --runtime none \
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

stop_node() { # key
    [ -n "${PID[$1]:-}" ] || return 0
    kill -9 "${PID[$1]}" 2>/dev/null || true
    wait "${PID[$1]}" 2>/dev/null || true
    unset "PID[$1]"
}

# Starts a server in the background, logging to $WORK/KEY.log; RESTART[KEY]
# defaults to the same command line.
spawn() { # key cmd...
    local key=$1
    shift
    RESTART[$key]=$(printf '%q ' "$@")
    "$@" >>"$WORK/$key.log" 2>&1 &
    PID[$key]=$!
}

respawn() { # key
    echo "--- restart" >>"$WORK/$1.log"
    eval "${RESTART[$1]}" '>>"$WORK/$1.log" 2>&1 &'
    PID[$1]=$!
}

endpoints_of() { # keys... -> comma-separated client URLs
    local k out=()
    for k in "$@"; do out+=("${URL[$k]}"); done
    (IFS=,; echo "${out[*]}")
}

# Waits until the members agree on one leader, raft index and revision (so a
# restarted member has caught up); sets LEADER to the leader's key.
LEADER=
wait_synced() { # keys...
    local i out args=() k
    for k in "$@"; do args+=("$k=${URL[$k]}"); done
    for i in $(seq 1 300); do
        out=$("$ETCDCTL_BIN" --endpoints "$(endpoints_of "$@")" --dial-timeout=1s --command-timeout=2s \
            endpoint status -w json 2>/dev/null || true)
        LEADER=$(python3 - "$out" "${args[@]}" <<'PY'
import json, sys
try:
    got = {e["Endpoint"]: e["Status"] for e in json.loads(sys.argv[1])}
except (ValueError, KeyError, TypeError):
    sys.exit(0)
want = {url: key for key, url in (a.split("=", 1) for a in sys.argv[2:])}
if set(got) != set(want):
    sys.exit(0)
leaders = {s.get("leader", 0) for s in got.values()}
indexes = {s.get("raftIndex", 0) for s in got.values()}
revisions = {s.get("header", {}).get("revision", 0) for s in got.values()}
if len(leaders) != 1 or 0 in leaders or len(indexes) != 1 or len(revisions) != 1:
    sys.exit(0)
lead = leaders.pop()
for url, s in got.items():
    if s.get("header", {}).get("member_id") == lead:
        print(want[url])
PY
)
        [ -n "$LEADER" ] && return 0
        for k in "$@"; do
            kill -0 "${PID[$k]}" 2>/dev/null || { tail -40 "$WORK/$k.log" >&2; die "$k exited"; }
        done
        sleep 0.2
    done
    die "members $* do not agree on a leader and index after 60s"
}

# Node flags of a tugboat member KEY named NAME, on the given four ports;
# sets NODE_FLAGS, URL[KEY] and PEER[KEY].
NODE_FLAGS=()
tugboat_flags() { # key name peer tls plain metrics
    NODE_FLAGS=(--data-dir "$WORK/$1.data" --name "$2"
        --peer-listen "127.0.0.1:$3" --etcd-listen "127.0.0.1:$4" --etcd-listen-plain "127.0.0.1:$5"
        --metrics-listen "127.0.0.1:$6" --runtime none
        --heartbeat-interval $HEARTBEAT_MS --election-timeout $ELECTION_MS)
    URL[$1]="http://127.0.0.1:$5"
    PEER[$1]="127.0.0.1:$3"
}

# A three-member tugboat cluster PREFIX-{a,b,c}: `tugboatd run` for a, then
# `tugboatd join` for b and c at the same time. The join-timer's JSON (time from
# starting the joins until each is a voter) goes to OUT.
tugboat_cluster() { # prefix out
    local p=$1 out=$2 ports token t0 flags_b flags_c
    read -r -a ports < <(free_ports 12)
    tugboat_flags "$p-a" a "${ports[@]:0:4}"
    spawn "$p-a" "$TUGBOATD" run "${NODE_FLAGS[@]}"
    wait_ready "$p-a" "${URL[$p-a]}"
    token=$("$TUGBOAT_CLI" token create --data-dir "$WORK/$p-a.data" --uses 2 --ttl 10m) ||
        die "tugboat token create failed"
    tugboat_flags "$p-b" b "${ports[@]:4:4}"
    flags_b=("${NODE_FLAGS[@]}")
    tugboat_flags "$p-c" c "${ports[@]:8:4}"
    flags_c=("${NODE_FLAGS[@]}")
    t0=$(date +%s%N)
    spawn "$p-b" "$TUGBOATD" join "${PEER[$p-a]}" --token "$token" "${flags_b[@]}"
    spawn "$p-c" "$TUGBOATD" join "${PEER[$p-a]}" --token "$token" "${flags_c[@]}"
    "$LOADGEN" join-timer --endpoint "${URL[$p-a]}" --member b --member c --since-unix-ns "$t0" \
        >"$out" || { tail -20 "$WORK/$p-b.log" "$WORK/$p-c.log" >&2; die "tugboat join did not finish"; }
    # Restarting a joined member is `tugboatd run` on its data dir.
    RESTART[$p-b]=$(printf '%q ' "$TUGBOATD" run "${flags_b[@]}")
    RESTART[$p-c]=$(printf '%q ' "$TUGBOATD" run "${flags_c[@]}")
    wait_ready "$p-b" "${URL[$p-b]}"
    wait_ready "$p-c" "${URL[$p-c]}"
}

etcd_member() { # key name client-port peer-port initial-cluster state
    URL[$1]="http://127.0.0.1:$3"
    PEER[$1]="127.0.0.1:$4"
    spawn "$1" "$ETCD_BIN" --name "$2" --data-dir "$WORK/$1.data" \
        --listen-client-urls "http://127.0.0.1:$3" --advertise-client-urls "http://127.0.0.1:$3" \
        --listen-peer-urls "http://127.0.0.1:$4" --initial-advertise-peer-urls "http://127.0.0.1:$4" \
        --initial-cluster "$5" --initial-cluster-state "$6" --initial-cluster-token "bench-${1%-?}" \
        --heartbeat-interval $HEARTBEAT_MS --election-timeout $ELECTION_MS
}

# A three-member etcd cluster PREFIX-{a,b,c}, static bootstrap.
etcd_cluster() { # prefix
    local p=$1 ports initial n
    read -r -a ports < <(free_ports 6)
    initial="a=http://127.0.0.1:${ports[1]},b=http://127.0.0.1:${ports[3]},c=http://127.0.0.1:${ports[5]}"
    etcd_member "$p-a" a "${ports[0]}" "${ports[1]}" "$initial" new
    etcd_member "$p-b" b "${ports[2]}" "${ports[3]}" "$initial" new
    etcd_member "$p-c" c "${ports[4]}" "${ports[5]}" "$initial" new
    for n in a b c; do wait_ready "$p-$n" "${URL[$p-$n]}"; done
}

# etcd's way to grow a one-member cluster to three: for b, then c (etcd 3.4
# allows one learner at a time): `member add --learner`, start the member,
# `member promote` until it is accepted. etcd refuses a member add until every
# voter has been connected for 5 s (strict reconfig check, on by default), so
# the add is retried every 100 ms. Each member's time runs from its accepted
# `member add`; the join-timer output of member N goes to OUT-N.json and the
# start times (ns) to OUT-starts.json.
etcd_join() { # prefix out-stem
    local p=$1 out=$2 ports initial n i t0 first err tries
    read -r -a ports < <(free_ports 6)
    initial="a=http://127.0.0.1:${ports[1]}"
    etcd_member "$p-a" a "${ports[0]}" "${ports[1]}" "$initial" new
    wait_ready "$p-a" "${URL[$p-a]}"
    i=2
    first=$(date +%s%N)
    echo "{\"first_ns\": $first" >"$out-starts.json"
    for n in b c; do
        tries=0
        while :; do
            t0=$(date +%s%N)
            if err=$("$ETCDCTL_BIN" --endpoints "${URL[$p-a]}" member add "$n" --learner \
                --peer-urls "http://127.0.0.1:${ports[$((i + 1))]}" 2>&1 >/dev/null); then
                break
            fi
            tries=$((tries + 1))
            [ $tries -lt 300 ] || die "etcdctl member add $n failed: $err"
            sleep 0.1
        done
        echo ", \"${n}_ns\": $t0, \"${n}_refused_adds\": $tries" >>"$out-starts.json"
        initial="$initial,$n=http://127.0.0.1:${ports[$((i + 1))]}"
        etcd_member "$p-$n" "$n" "${ports[$i]}" "${ports[$((i + 1))]}" "$initial" existing
        "$LOADGEN" join-timer --endpoint "${URL[$p-a]}" --member "$n@127.0.0.1:${ports[$((i + 1))]}" --promote \
            --since-unix-ns "$t0" >"$out-$n.json" || { tail -20 "$WORK/$p-$n.log" >&2; die "etcd member $n not promoted"; }
        i=$((i + 2))
    done
    echo "}" >>"$out-starts.json"
    for n in b c; do wait_ready "$p-$n" "${URL[$p-$n]}"; done
}

remove_cluster() { # prefix
    local n
    for n in a b c; do
        stop_node "$1-$n"
        rm -rf "$WORK/$1-$n.data"
    done
}

# Prefix of the benchmark cluster of each system.
declare -A CPFX=([etcd]=ec [tugboat]=tc)

# One leader kill: write to a follower, kill -9 the leader (done by the probe,
# which times the outage), restart it and wait until it has caught up.
failover_once() { # system round
    local t=$1 i=$2 p=${CPFX[$1]} keys follower k
    keys=("$p-a" "$p-b" "$p-c")
    wait_synced "${keys[@]}"
    local leader=$LEADER
    for k in "${keys[@]}"; do
        if [ "$k" != "$leader" ]; then follower=$k; break; fi
    done
    echo "   kill $i on $t: leader $leader, writing to $follower" >&2
    # The group's stderr also takes bash's "Killed" notice about the leader's job.
    local ok=1
    {
        "$LOADGEN" failover-probe --endpoint "${URL[$follower]}" --kill-pid "${PID[$leader]}" \
            --interval-ms $PROBE_INTERVAL_MS >"$RESULTS/failover-$i-$t.json" || ok=0
        if [ $ok = 1 ]; then wait "${PID[$leader]}" || true; fi
    } 2>>"$WORK/probe.log"
    if [ $ok = 0 ]; then
        cat "$RESULTS/failover-$i-$t.json" >&2
        tail -5 "$WORK/probe.log" >&2
        die "failover probe on $t failed"
    fi
    respawn "$leader"
    wait_ready "$leader" "${URL[$leader]}"
    wait_synced "${keys[@]}"
}

cluster_benchmarks() {
    local rep t n mode eps started=$SECONDS
    for rep in $(seq 1 "$JOIN_REPEAT"); do
        echo "== join to voter, round $rep of $JOIN_REPEAT" >&2
        next_order
        for t in "${ORDER[@]}"; do
            echo "   forming a 3-member $t cluster" >&2
            if [ "$t" = tugboat ]; then
                tugboat_cluster "tj$rep" "$RESULTS/join-$rep-tugboat.json"
                remove_cluster "tj$rep"
            else
                etcd_join "ej$rep" "$RESULTS/join-$rep-etcd"
                remove_cluster "ej$rep"
            fi
        done
    done

    echo "== starting the 3-member benchmark clusters" >&2
    for t in "${TARGETS[@]}"; do
        if [ "$t" = tugboat ]; then
            tugboat_cluster tc "$WORK/tc-join.json"
        else
            etcd_cluster ec
        fi
        wait_synced "${CPFX[$t]}-a" "${CPFX[$t]}-b" "${CPFX[$t]}-c"
    done

    for rep in $(seq 1 "$REPEAT"); do
        for mode in all leader; do
            echo "== round $rep of $REPEAT: 3 members, put, $CLIENTS clients, to $mode" >&2
            next_order
            for t in "${ORDER[@]}"; do
                n=${CPFX[$t]}
                if [ $mode = all ]; then
                    eps=$(endpoints_of "$n-a" "$n-b" "$n-c")
                else
                    wait_synced "$n-a" "$n-b" "$n-c"
                    eps=${URL[$LEADER]}
                fi
                echo "   cput-$mode-$rep on $t ($eps)" >&2
                "$LOADGEN" --endpoint "$eps" --json --key-size $KEY_SIZE --val-size $VAL_SIZE --mode put \
                    --clients $CLIENTS --conns $CLUSTER_CONNS --key-space $PUT_KEYSPACE --duration "$DURATION" \
                    >"$RESULTS/cput$mode-$rep-$t.json" || die "loadgen cput-$mode on $t failed"
            done
        done
    done

    echo "== failover: $KILLS leader kills per system" >&2
    for rep in $(seq 1 "$KILLS"); do
        next_order
        for t in "${ORDER[@]}"; do
            failover_once "$t" "$rep"
        done
    done
    for t in "${TARGETS[@]}"; do remove_cluster "${CPFX[$t]}"; done
    echo "== cluster benchmarks took $((SECONDS - started)) s" >&2
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== working in $WORK (load average $LOAD_BEFORE)" >&2

if [ $SINGLE = 1 ]; then
echo "== starting single-node servers" >&2
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
for t in "${TARGETS[@]}"; do stop_node "$t"; done
fi

if [ "$CLUSTER" = 1 ]; then
    cluster_benchmarks
fi

# The Kubernetes API benchmark starts its own servers (tugboatd via TUGBOATD_BIN,
# etcd from /usr/bin/etcd) one backend at a time and writes api.json and the
# Markdown section api.md. A failed backend is reported in that section instead
# of failing the whole run.
if [ "$API" = 1 ]; then
    echo "== Kubernetes API benchmark (apibench)" >&2
    api_started=$SECONDS
    api_cmd="$( (env | grep '^APIBENCH_' || true) | sort | tr '\n' ' ')$COMMAND_LINE"
    TUGBOATD_BIN=$TUGBOATD "$APIBENCH" --kubectl "$KUBECTL_BIN" --json-out "$RESULTS/api.json" \
        --markdown-out "$RESULTS/api.md" --command "$api_cmd" >"$WORK/apibench.out" ||
        echo "bench.sh: apibench reported a failure (see the API section)" >&2
    cat "$WORK/apibench.out" >&2
    [ -s "$RESULTS/api.md" ] || die "apibench wrote no report"
    echo "== API benchmark took $((SECONDS - api_started)) s" >&2
fi

# The scheduling benchmark starts its own tugboatd (TUGBOATD_BIN) and runs the
# simulated nodes in its own process; it writes sched.json and the Markdown
# section sched.md.
if [ "$SCHED" = 1 ]; then
    echo "== scheduling benchmark (schedbench)" >&2
    sched_started=$SECONDS
    sched_cmd="$( (env | grep '^SCHEDBENCH_' || true) | sort | tr '\n' ' ')$COMMAND_LINE"
    TUGBOATD_BIN=$TUGBOATD "$SCHEDBENCH" --json-out "$RESULTS/sched.json" \
        --markdown-out "$RESULTS/sched.md" --command "$sched_cmd" >"$WORK/schedbench.out" ||
        echo "bench.sh: schedbench reported a failure" >&2
    cat "$WORK/schedbench.out" >&2
    [ -s "$RESULTS/sched.md" ] || die "schedbench wrote no report"
    echo "== scheduling benchmark took $((SECONDS - sched_started)) s" >&2
fi

# The VM benchmark boots real QEMU guests (TCG here) through its own tugboatd and beside
# bare QEMU, and pulls a large image from Debian's docker-registry with tugboat and skopeo.
if [ "$VM" = 1 ]; then
    echo "== VM benchmark (vmbench)" >&2
    vm_started=$SECONDS
    TUGBOATD_BIN=$TUGBOATD "$VMBENCH" --markdown-out "$RESULTS/vm.md" >"$WORK/vmbench.out" ||
        echo "bench.sh: vmbench reported a failure" >&2
    cat "$WORK/vmbench.out" >&2
    [ -s "$RESULTS/vm.md" ] || die "vmbench wrote no report"
    echo "== VM benchmark took $((SECONDS - vm_started)) s" >&2
fi

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ETCD_VERSION=$("$ETCD_BIN" --version 2>/dev/null | awk '/etcd Version/ { print $3 }')
GIT_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(cd "$ROOT" && git status --porcelain 2>/dev/null || true)" ]; then GIT_REV="$GIT_REV (dirty tree)"; fi

# Keep the raw per-run JSON next to the build output (ignored by git).
rm -rf "$TARGET_DIR/bench-results"
cp -r "$RESULTS" "$TARGET_DIR/bench-results"

OUT=$ROOT/docs/benchmarks.md
[ -n "$ONLY" ] && OUT=/dev/stdout
OUT=${BENCH_OUT:-$OUT}
if [ "$ONLY" = api ]; then
    cat "$RESULTS/api.md" >"$OUT"
    [ "$OUT" = /dev/stdout ] || echo "== wrote $OUT" >&2
    exit 0
fi
if [ "$ONLY" = vm ]; then
    cat "$RESULTS/vm.md" >"$OUT"
    [ "$OUT" = /dev/stdout ] || echo "== wrote $OUT" >&2
    exit 0
fi
if [ "$ONLY" = sched ]; then
    cat "$RESULTS/sched.md" >"$OUT"
    [ "$OUT" = /dev/stdout ] || echo "== wrote $OUT" >&2
    exit 0
fi
python3 - "$RESULTS" "$OUT" <<PY
import json, os, sys
res, out = sys.argv[1], sys.argv[2]
targets = "${TARGETS[*]}".split()
single = "${SINGLE}" == "1"
cluster = "${CLUSTER}" == "1"

def load(name):
    p = os.path.join(res, name)
    return json.load(open(p)) if os.path.exists(p) else None

reps = int("${REPEAT}")
join_reps = int("${JOIN_REPEAT}")
kills = int("${KILLS}")

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

def median(xs):
    xs = sorted(x for x in xs if x is not None)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

def peak(field):
    return lambda t: max((x[field] for x in runs("rss", t)), default=None)

def cell(v, fmt):
    return "n/a" if v is None else fmt.format(v)

def row(rows, label, fmt, getter, ratio=True):
    vals = {}
    for t in targets:
        try:
            vals[t] = getter(t)
        except (TypeError, KeyError, AttributeError, ValueError):
            vals[t] = None
    rows.append((label, vals, fmt, ratio))
    return vals

names = {"etcd": "etcd ${ETCD_VERSION}", "tugboat": "tugboat"}
both = targets == ["etcd", "tugboat"]

def table(rows, heads=None):
    heads = heads or names
    head = "| metric | " + " | ".join(heads[t] for t in targets)
    sep = "|---|" + "---:|" * len(targets)
    if both:
        head += " | tugboat/etcd"
        sep += "---:|"
    lines = [head + " |", sep]
    for label, vals, fmt, ratio in rows:
        line = f"| {label} | " + " | ".join(cell(vals[t], fmt) for t in targets)
        if both:
            e, g = vals["etcd"], vals["tugboat"]
            line += " | " + ("" if not ratio else "n/a" if not e or g is None else f"{g / e:.2f}")
        lines.append(line + " |")
    return "\n".join(lines)

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
"""

if single:
    rows = []
    kib = lambda g: (lambda t: None if g(t) is None else g(t) / 1024.0)
    row(rows, "idle RSS (MiB)", "{:.1f}", lambda t: load(f"idle-{t}.json")["idle_rss_kib"] / 1024.0)
    row(rows, "put, 1 client: puts/s", "{:.0f}", mean("put1", "ops_per_sec"))
    row(rows, "put, 1 client: p50 (ms)", "{:.3f}", mean("put1", "latency_ms", "p50"))
    row(rows, "put, 1 client: p99 (ms)", "{:.3f}", mean("put1", "latency_ms", "p99"))
    row(rows, "put, ${CLIENTS} clients: puts/s", "{:.0f}", mean("put32", "ops_per_sec"))
    row(rows, "put, ${CLIENTS} clients: p50 (ms)", "{:.3f}", mean("put32", "latency_ms", "p50"))
    row(rows, "put, ${CLIENTS} clients: p99 (ms)", "{:.3f}", mean("put32", "latency_ms", "p99"))
    row(rows, "range (linearizable), ${CLIENTS} clients: ranges/s", "{:.0f}", mean("range32", "ops_per_sec"))
    row(rows, "range (linearizable), ${CLIENTS} clients: p99 (ms)", "{:.3f}", mean("range32", "latency_ms", "p99"))
    row(rows, "watch, ${WATCHERS} watchers: events/s", "{:.0f}", mean("watch", "ops_per_sec"))
    row(rows, "watch event latency p50 (ms)", "{:.3f}", mean("watch", "latency_ms", "p50"))
    row(rows, "watch event latency p99 (ms)", "{:.3f}", mean("watch", "latency_ms", "p99"))
    row(rows, "loaded RSS, peak during ${CLIENTS}-client puts (MiB)", "{:.1f}", kib(peak("peak_rss_kib")))
    row(rows, "VmHWM after ${CLIENTS}-client puts (MiB)", "{:.1f}", kib(peak("hwm_kib")))
    doc += f"""
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

{table(rows)}

Ratios above 1 mean tugboat's number is larger (better for rates, worse for latency and memory).
"""

if cluster:
    # Write throughput.
    trows = []
    tp_all = row(trows, "put, ${CLIENTS} clients spread over the 3 members: puts/s", "{:.0f}", mean("cputall", "ops_per_sec"))
    row(trows, "put, ${CLIENTS} clients spread over the 3 members: p50 (ms)", "{:.3f}", mean("cputall", "latency_ms", "p50"))
    row(trows, "put, ${CLIENTS} clients spread over the 3 members: p99 (ms)", "{:.3f}", mean("cputall", "latency_ms", "p99"))
    row(trows, "put, ${CLIENTS} clients to the leader only: puts/s", "{:.0f}", mean("cputleader", "ops_per_sec"))
    row(trows, "put, ${CLIENTS} clients to the leader only: p50 (ms)", "{:.3f}", mean("cputleader", "latency_ms", "p50"))
    row(trows, "put, ${CLIENTS} clients to the leader only: p99 (ms)", "{:.3f}", mean("cputleader", "latency_ms", "p99"))

    # Join to voter: per member, and until the cluster has three voters.
    def join_members(t):
        per, total, listed = [], [], []
        for r in range(1, join_reps + 1):
            if t == "tugboat":
                j = load(f"join-{r}-tugboat.json")
                if not j:
                    continue
                ms = list(j["members"].values())
                total.append(j.get("all_voters_ms"))
            else:
                ms = [x["members"][n] for n in ("b", "c") for x in [load(f"join-{r}-etcd-{n}.json")] if x]
                st = load(f"join-{r}-etcd-starts.json")
                if st and len(ms) == 2 and ms[1].get("voter_ms") is not None:
                    total.append((st["c_ns"] - st["first_ns"]) / 1e6 + ms[1]["voter_ms"])
            per += [m.get("voter_ms") for m in ms]
            listed += [m.get("listed_ms") for m in ms]
        return per, total, listed
    jrows = []
    join_med = row(jrows, "join to voter, per member: median (ms)", "{:.0f}", lambda t: median(join_members(t)[0]))
    row(jrows, "join to voter, per member: min (ms)", "{:.0f}", lambda t: min(x for x in join_members(t)[0] if x is not None))
    row(jrows, "join to voter, per member: max (ms)", "{:.0f}", lambda t: max(x for x in join_members(t)[0] if x is not None))
    row(jrows, "join to listed as a member (learner), per member: median (ms)", "{:.0f}", lambda t: median(join_members(t)[2]))
    row(jrows, "one member to three voters: median (ms)", "{:.0f}", lambda t: median(join_members(t)[1]))
    row(jrows, "members timed", "{:.0f}", lambda t: len([x for x in join_members(t)[0] if x is not None]), ratio=False)
    jheads = {"etcd": "etcd ${ETCD_VERSION} (member add --learner, start, member promote)",
              "tugboat": "tugboat (tugboatd join)"}

    # Failover.
    def probes(t):
        return [x for x in (load(f"failover-{r}-{t}.json") for r in range(1, kills + 1)) if x]
    def fo(field, agg):
        return lambda t: agg([p.get(field) for p in probes(t) if p.get(field) is not None])
    frows = []
    fo_med = row(frows, "write outage (kill to first ack of a put sent after it): median (ms)", "{:.0f}", fo("write_gap_ms", median))
    row(frows, "write outage: min (ms)", "{:.0f}", fo("write_gap_ms", min))
    row(frows, "write outage: max (ms)", "{:.0f}", fo("write_gap_ms", max))
    row(frows, "kill to new leader reported by the follower: median (ms)", "{:.0f}", fo("leader_gap_ms", median))
    row(frows, "kill to new leader: max (ms)", "{:.0f}", fo("leader_gap_ms", max))
    row(frows, "longest gap between acknowledged puts: median (ms)", "{:.0f}", fo("longest_ack_gap_ms", median))
    row(frows, "kills measured", "{:.0f}", lambda t: len(probes(t)), ratio=False)

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "**not met**")
    tb = lambda d: d.get("tugboat")
    et = lambda d: d.get("etcd")
    goal_tp = None if tb(tp_all) is None or not et(tp_all) else tb(tp_all) > et(tp_all)
    goal_fo = None if tb(fo_med) is None else tb(fo_med) < 2000
    goal_join = None if tb(join_med) is None else tb(join_med) < 3000
    tp_ratio = "n/a" if goal_tp is None else f"{tb(tp_all) / et(tp_all):.2f}x etcd"
    goals = "" if "tugboat" not in targets else f"""Goals (tugboat; from the issue):
- 3-member write throughput ahead of etcd (clients spread over the members): {tp_ratio}: {verdict(goal_tp)}
- failover under 2 s (median write outage): {cell(tb(fo_med), "{:.0f} ms")}: {verdict(goal_fo)}
- join to voter under 3 s (median per member): {cell(tb(join_med), "{:.0f} ms")}: {verdict(goal_join)}
"""
    doc += f"""
## Three-member clusters

Setup: a three-member tugboat cluster and a three-member etcd cluster run at the same time on
loopback (six processes on the same {sh("nproc")} CPUs; the cluster not being measured only sends
heartbeats), fresh temp data dirs, heartbeat {"${HEARTBEAT_MS}"} ms and election timeout {"${ELECTION_MS}"} ms on
both (both defaults), plaintext client endpoints. Peer traffic is mutual TLS for tugboat (always) and
plain HTTP for etcd (its default without certificates). The tugboat cluster is formed the supported
way (\`tugboatd run\` for the first member, \`tugboatd join\` with a token for the other two, both
promoted to voters together); the etcd cluster is a static bootstrap (\`--initial-cluster\` with all
three). Benchmarks alternate which system goes first.

### Write throughput

Same load generator and put workload as the single-node table (closed loop, ${CLIENTS} clients, keys
{"${KEY_SIZE}"} B, values {"${VAL_SIZE}"} B, random keys among {"${PUT_KEYSPACE}"}, {"${DURATION}"} s per run, mean of {reps}
rounds). "Spread over the 3 members": the load generator opens {"${CLUSTER_CONNS}"} HTTP/2 connections,
two to each member, and client i uses connection i mod {"${CLUSTER_CONNS}"}, so about a third of the clients
write through each member and followers forward their puts to the leader (as etcd's own client and
\`benchmark --endpoints\` do). "Leader only": all {"${CLUSTER_CONNS}"} connections go to the current leader.

{table(trows)}

### Join to voter

Each of {join_reps} rounds forms a new cluster from one running member. Tugboat: \`tugboat token
create\`, then \`tugboatd join\` for the second and third member started at the same time; the time
runs from starting each join until the member list (polled every 10 ms by \`tugboat-loadgen
join-timer\`) shows that member as a voter. etcd has no single join command; its equivalent is
\`etcdctl member add --learner\`, starting the member with \`--initial-cluster-state existing\`, and
\`member promote\` retried every 10 ms until etcd accepts it (only once the learner has caught up),
timed from the \`member add\`. etcd 3.4 allows one learner at a time, so its members join one after
the other, and it refuses a \`member add\` until every voter has been connected for 5 s (its strict
reconfiguration check, on by default; the script retries the add every 100 ms and starts the
member's clock at the accepted add). "One member to three voters" runs from the first join (etcd:
the first \`member add\`) until the last member is a voter, so for etcd it includes those retries.

{table(jrows, jheads)}

### Failover

{kills} leader kills per system. Before each kill the members agree on the leader and on the raft
index. \`tugboat-loadgen failover-probe\` writes to one follower, starting a put every
{"${PROBE_INTERVAL_MS}"} ms (open loop, each with a 10 s timeout, so a put lost with the dead leader does
not hold back the next), and after 1 s of acknowledged writes it sends SIGKILL to the leader's
process. The write outage is the time from the kill until the first acknowledgement of a put that was
sent after the kill (so it was served by a new leader); the new-leader time is when the follower's
\`Status\` (polled every 10 ms) first names another leader; the longest gap is the longest time
without any acknowledged put during the probe. The killed member is then restarted with the same
command (tugboat: \`tugboatd run\` on its data dir) and must be caught up before the next kill, so
every kill hits a healthy three-member cluster, and the leader role moves around the members.

{table(frows)}

{goals}"""

errors = []
for f in sorted(os.listdir(res)):
    r = load(f)
    if isinstance(r, dict) and r.get("errors"):
        errors.append(f"- {f[:-5]}: {r['errors']} errors, e.g. {r.get('sample_errors', [])[:2]}")
if errors:
    doc += "\nErrors during the load runs (the numbers above only count successful requests):\n" + "\n".join(errors) + "\n"
else:
    doc += "\nNo request failed in any load run" + (" (failed puts during failover are expected and not counted here)" if cluster else "") + ".\n"
doc += "\nReproduce: \`scripts/bench.sh\` (\`BENCH_DURATION\` seconds per load run, \`BENCH_REPEAT\` rounds, \`BENCH_JOIN_REPEAT\` cluster formations, \`BENCH_FAILOVER_KILLS\` leader kills; the raw JSON of each run is left in \`target/bench-results/\`).\n"
api_md = os.path.join(res, "api.md")
if os.path.exists(api_md):
    doc += "\n" + open(api_md).read()
sched_md = os.path.join(res, "sched.md")
if os.path.exists(sched_md):
    doc += "\n" + open(sched_md).read()
vm_md = os.path.join(res, "vm.md")
if os.path.exists(vm_md):
    doc += "\n## Real VMs: Tugboat beside bare QEMU\n\n" + open(vm_md).read()
open(out, "w").write(doc)
PY
[ "$OUT" = /dev/stdout ] || echo "== wrote $OUT" >&2
