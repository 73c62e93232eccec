#!/usr/bin/env bash
# Builds tugboatd and runs a single-node Tugboat with the defaults:
# data in /var/lib/tugboat (override with TUGBOAT_DATA_DIR), etcd API on
# 0.0.0.0:2379 (mTLS), raft peers on 0.0.0.0:2380 (mTLS), the Kubernetes API on
# 0.0.0.0:6443 (HTTPS; kubeconfig in DATA/admin.kubeconfig). Extra arguments go
# to `tugboatd run`, e.g. `scripts/run.sh --etcd-listen-plain 127.0.0.1:2381`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcdctl >/dev/null; then
    # Not needed by tugboatd itself; installed so the README's etcdctl examples work.
    echo "== installing etcdctl (Debian etcd-client)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-client) >&2 \
        || echo "warning: could not install etcd-client; tugboatd runs without it" >&2
fi

if ! command -v kubectl >/dev/null; then
    # Not needed by tugboatd itself; installed so `kubectl --kubeconfig DATA/admin.kubeconfig` works.
    echo "== installing kubectl (Debian kubernetes-client)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client) >&2 \
        || echo "warning: could not install kubernetes-client; tugboatd runs without it" >&2
fi

if ! command -v qemu-system-x86_64 >/dev/null || ! command -v qemu-img >/dev/null; then
    # The node agent runs Ships as QEMU VMs (`--runtime qemu`, the default).
    echo "== installing QEMU (Debian qemu-system-x86, qemu-utils)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 qemu-utils >&2
fi

echo "== building tugboatd and tugboat (release)" >&2
cargo build --release --locked -p tugboat-ctl --bin tugboatd --bin tugboat >&2

data_dir=${TUGBOAT_DATA_DIR:-/var/lib/tugboat}
echo "== starting tugboatd; data in $data_dir; stop with Ctrl-C" >&2
exec target/release/tugboatd run --data-dir "$data_dir" "$@"
