#!/usr/bin/env bash
# The Python tests: the client in clients/python (sync and async) and `toolbox mcp` driven by
# the official MCP Python SDK, both against a real daemon (tests/python), plus ruff and mypy
# on the client. Everything they need goes into a venv of their own, target/venv-py.
#
#   sudo scripts/test-python.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/target.sh
cargo build --quiet -p toolbox -p toolbox-shim -p toolbox-mcp
. scripts/python-venv.sh
echo "== ruff and mypy on the Python client and tests"
"$venv/bin/ruff" check clients/python tests/python tests/support benches
"$venv/bin/ruff" format --check clients/python tests/python tests/support benches
"$venv/bin/mypy" --strict --python-version 3.10 clients/python/src tests/python tests/support \
    benches/clients.py benches/egress.py
echo "== the Python client and toolbox mcp against a real daemon"
TOOLBOX_BIN_DIR="$PWD/target/$triple/debug" "$venv/bin/pytest" -q -p no:cacheprovider tests/python "$@"
