#!/usr/bin/env bash
# One `true` job through the daemon's socket by curl, through the Python client, and through
# `toolbox mcp` called by the official MCP Python SDK — interleaved in one run, medians and
# ratios to curl (benches/clients.py). The binaries as installed (scripts/install.sh,
# staged; see scripts/bench-spawn.sh for why).
#
#   sudo scripts/bench-clients.sh          # 200 runs of each
#   sudo scripts/bench-clients.sh 500
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-200}"
if [ "$(id -u)" != 0 ]; then
    echo "bench-clients: run as root (toolbox builds real jails)" >&2
    exit 1
fi
if ! command -v curl >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl >/dev/null
fi
. scripts/target.sh
cargo build --release -q -p toolbox -p toolbox-shim -p toolbox-mcp
. scripts/python-venv.sh
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
DESTDIR="$stage" scripts/install.sh >/dev/null
TOOLBOX_POLICY_DIR="$stage/etc/toolbox/policies" \
    "$venv/bin/python" benches/clients.py --toolbox "$stage/usr/local/bin/toolbox" --runs "$runs"
