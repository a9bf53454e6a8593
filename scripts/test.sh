#!/usr/bin/env bash
# The whole test suite, as root: the Rust tests (unit tests, real jails attacked by a probe,
# a real daemon on a socket), the Python client and `toolbox mcp` driven by the official MCP
# Python SDK against a real daemon (scripts/test-python.sh, in a venv of its own), a check
# that nothing was left behind, the install script's staging, then the two VM tiers — pure
# cgroup v2 (scripts/vm-test.sh) and a guest booting systemd (scripts/vm-systemd-test.sh).
# It installs what it needs: the musl target (rustup) and musl-tools (scripts/target.sh),
# from Debian's archive systemd-analyze for the unit check, qemu, busybox-static and
# mmdebstrap for the VMs, and from PyPI the Python tests' tools (in target/venv-py).
#
#   sudo scripts/test.sh            # everything (about 15 minutes on 2 CPUs, TCG)
#   cargo test --workspace          # the Rust tests alone (a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "test.sh: run as root (the tests build real jails and boot VMs)" >&2
    exit 1
fi
if ! command -v systemd-analyze >/dev/null; then
    echo "== installing systemd (for systemd-analyze)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd >/dev/null
fi
# The real tools tests/tests/workloads.rs and egress.rs run in jails, as agents do (they look
# for them in /usr/bin and /bin), and what egress.rs's servers need (openssl, unshare).
tools=()
has() { [ -x "/usr/bin/$1" ] || [ -x "/bin/$1" ]; }
has python3 || tools+=(python3)
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || tools+=(python3-pip)
has script || tools+=(bsdutils)
has javac || tools+=(default-jdk-headless)
has mvn || tools+=(maven)
has curl || tools+=(curl)
has git || tools+=(git)
has openssl || tools+=(openssl)
has unshare || tools+=(util-linux)
if [ "${#tools[@]}" -gt 0 ]; then
    echo "== installing ${tools[*]} (the workload tests run them)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${tools[@]}" >/dev/null
fi
. scripts/target.sh --benches
echo "== the Rust tests (every daemon answer checked against api/openapi.yaml)"
cargo test --workspace
echo "== the Python client and toolbox mcp (the official MCP Python SDK as its client)"
scripts/test-python.sh
echo "== api/openapi.yaml through a standard OpenAPI 3.1 validator"
scripts/check-openapi.sh
echo "== nothing left behind"
scripts/check-leaks.sh
echo "== the install script stages binaries, policies and units (building nothing)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
DESTDIR="$stage" BINDIR="target/$triple/debug" scripts/install.sh
for f in usr/local/bin/toolbox usr/local/bin/toolbox-serve usr/local/bin/toolbox-shim \
    etc/toolbox/policies/default.toml etc/systemd/system/toolbox.service \
    etc/systemd/system/toolbox.socket; do
    test -f "$stage/$f" || { echo "install.sh did not stage $f" >&2; exit 1; }
done
echo "== the cgroup v2 VM tier: doctor and the same suites on a pure cgroup v2 boot"
# KVM where a guest boots on it (and then a hybrid-layout boot too); on our hosts it does
# not, and TCG runs the v2 boot in about 4 minutes.
scripts/vm-test.sh
echo "== the systemd VM tier: the installed unit, a login session, containers"
scripts/vm-systemd-test.sh
echo "== test.sh: all passed"
