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
venv=target/venv-py
if [ ! -x "$venv/bin/pytest" ] || [ clients/python/pyproject.toml -nt "$venv/.installed" ]; then
    echo "== a venv for the Python tests ($venv): the client, pytest, the MCP SDK, ruff, mypy"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
    touch "$venv/.installed"
fi
# The client as a user installs it (not editable), every run: its code may have changed.
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./clients/python
"$venv/bin/pip" install --quiet --disable-pip-version-check "./clients/python[test]"
echo "== ruff and mypy on the Python client and tests"
"$venv/bin/ruff" check clients/python tests/python
"$venv/bin/ruff" format --check clients/python tests/python
"$venv/bin/mypy" --strict --python-version 3.10 clients/python/src tests/python
echo "== the Python client and toolbox mcp against a real daemon"
TOOLBOX_BIN_DIR="$PWD/target/$triple/debug" "$venv/bin/pytest" -q -p no:cacheprovider tests/python "$@"
