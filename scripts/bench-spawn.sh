#!/usr/bin/env bash
# Spawn latency and output throughput of `toolbox run`, and the daemon's throughput, latency
# and memory, each against baselines measured in the same run: bare /bin/true and
# bubblewrap (spawn), a bare pipe (1 GiB flood), bubblewrap 8 at a time (500 jobs through
# `toolbox serve` at concurrency 8), `toolbox run --local` (one job through the socket).
#
#   scripts/bench-spawn.sh            # 5 rounds of 100 interleaved runs each
#   scripts/bench-spawn.sh 300        # 5 rounds of 300
#
# Needs root (toolbox builds real jails). Installs bubblewrap from Debian if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-100}"
if [ "$(id -u)" != 0 ]; then
    echo "bench-spawn: run as root (toolbox builds real jails)" >&2
    exit 1
fi
if ! command -v bwrap >/dev/null; then
    echo "bench-spawn: installing bubblewrap for the baseline" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null
fi
. scripts/target.sh
cargo build --release -q -p toolbox -p toolbox-shim -p toolbox-mcp -p toolbox-benches
bin="target/$triple/release"
# toolbox as installed (scripts/install.sh, staged), as bubblewrap is from its package, not
# straight out of target/: the linker writes its output through mmap, and a binary whose page
# cache was filled that way maps in small pages — about 25 more page faults a run here, until
# the cache is dropped. Installed copies, written with write(2), do not.
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
DESTDIR="$stage" scripts/install.sh >/dev/null
TOOLBOX_POLICY_DIR="$stage/etc/toolbox/policies" \
    "$bin/spawn-bench" all --runs "$runs" --rounds 5 --toolbox "$stage/usr/local/bin/toolbox"
