# Sourced by scripts/test-python.sh and scripts/bench-clients.sh: the venv they share,
# target/venv-py, with the Python client installed as a user installs it (not editable, and
# again each time: its code may have changed) and what the tests use (pytest, anyio, the
# official MCP Python SDK, ruff, mypy). Sets $venv.
venv=target/venv-py
if [ ! -x "$venv/bin/pytest" ] || [ clients/python/pyproject.toml -nt "$venv/.installed" ]; then
    echo "== a venv for the Python tests ($venv): the client, pytest, the MCP SDK, ruff, mypy"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/pip" install --quiet --disable-pip-version-check "./clients/python[test]"
    touch "$venv/.installed"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./clients/python
rm -rf clients/python/build
