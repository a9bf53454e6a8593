#!/usr/bin/env bash
# Egress through a job's proxy against the host directly, in one run (benches/egress.py): a
# 1 GiB download's rate (and HAProxy's, relaying on the host), the time to a first byte
# (HTTP, and HTTPS through CONNECT), and the daemon's memory and CPU while 8 jobs each run
# 16 downloads through their proxies. Servers on this machine only (tests/support/
# egress_server.py). The binaries as installed (scripts/install.sh, staged; see
# scripts/bench-spawn.sh for why).
#
#   sudo scripts/bench-egress.sh          # 5 interleaved downloads of each
#   sudo scripts/bench-egress.sh 9
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
if [ "$(id -u)" != 0 ]; then
    echo "bench-egress: run as root (toolbox builds real jails)" >&2
    exit 1
fi
need=()
command -v curl >/dev/null || need+=(curl)
command -v git >/dev/null || need+=(git)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
command -v haproxy >/dev/null || need+=(haproxy)
if [ "${#need[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
. scripts/target.sh
cargo build --release -q -p toolbox -p toolbox-shim
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
DESTDIR="$stage" scripts/install.sh >/dev/null
TOOLBOX_POLICY_DIR="$stage/etc/toolbox/policies" \
    python3 benches/egress.py --toolbox "$stage/usr/local/bin/toolbox" --runs "$runs"
