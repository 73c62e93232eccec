#!/usr/bin/env bash
# Runs every check and test of the workspace: format, lints, build, unit and integration tests.
# Installs the tools the tests drive when they are missing (Debian's etcd-server and etcd-client,
# kubectl, openssl, iproute2 for the network-namespace tests, and QEMU, docker-registry, skopeo and the
# rest of the real-VM tests' tools listed below). The namespace tests need root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

stage() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

stage "tools"
missing_pkgs=()
[ -x /usr/bin/etcd ] || missing_pkgs+=(etcd-server)
[ -x /usr/bin/etcdctl ] || missing_pkgs+=(etcd-client)
command -v openssl >/dev/null || missing_pkgs+=(openssl)
command -v ip >/dev/null || missing_pkgs+=(iproute2)
# kubectl comes with the machine image; Debian's kubernetes-client provides it otherwise.
command -v kubectl >/dev/null || missing_pkgs+=(kubernetes-client)
# The real-VM tests: QEMU (TCG here), qemu-img, Debian's cloud kernel and a static busybox for
# the test guest, Debian's docker-registry to push to, skopeo and isoinfo as third-party readers.
command -v qemu-system-x86_64 >/dev/null || missing_pkgs+=(qemu-system-x86)
command -v qemu-img >/dev/null || missing_pkgs+=(qemu-utils)
[ -x /usr/bin/docker-registry ] || missing_pkgs+=(docker-registry)
# htpasswd (bcrypt entries) for the registry-credentials test.
command -v htpasswd >/dev/null || missing_pkgs+=(apache2-utils)
command -v skopeo >/dev/null || missing_pkgs+=(skopeo)
command -v isoinfo >/dev/null || missing_pkgs+=(genisoimage)
# The guest needs the static build (Debian's `busybox` package is dynamically linked).
[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null || true)" = "install ok installed" ] ||
    missing_pkgs+=(busybox-static)
compgen -G '/boot/vmlinuz-*-cloud-amd64' >/dev/null || missing_pkgs+=(linux-image-cloud-amd64)
# The guest-agent test copies Debian's real qemu-ga (and its libraries) into its guest.
[ -x /usr/sbin/qemu-ga ] || missing_pkgs+=(qemu-guest-agent)
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    echo "installing ${missing_pkgs[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing_pkgs[@]}"
fi
installed_components="$(rustup component list --installed 2>/dev/null || true)"
for component in rustfmt clippy; do
    if ! grep -q "^${component}" <<<"${installed_components}"; then
        echo "adding toolchain component ${component}"
        rustup component add "${component}"
    fi
done
etcd_version="$(/usr/bin/etcd --version)"
etcdctl_version="$(/usr/bin/etcdctl version)"
echo "${etcd_version%%$'\n'*}; ${etcdctl_version%%$'\n'*}"
# Some kubectl builds print several lines; take the first without `head` (SIGPIPE under pipefail).
kubectl_version="$(kubectl version --client 2>/dev/null || true)"
echo "${kubectl_version%%$'\n'*}"
cargo --version

# Incremental caches only help repeated local builds; a one-shot run would just spend disk on them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | tail -1

stage "cargo fmt --all --check"
cargo fmt --all --check

stage "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

stage "cargo build --workspace --bins"
cargo build --workspace --bins

# The integration tests start real tugboatd/etcd processes; two at a time suits a 2-core machine
# (and keeps the count fixed on bigger ones, where cargo would otherwise run one per core).
stage "cargo test --workspace"
cargo test --workspace --no-fail-fast -- --test-threads=2

stage "done"
