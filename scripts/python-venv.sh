# Sourced by scripts/test-python.sh and scripts/bench-clients.sh: the venv they share,
# target/venv-py, with the Python client installed as a user installs it (not editable, and
# again each time: its code may have changed) and what the tests use (pytest, anyio, the
# official MCP Python SDK, ruff, mypy). Sets $venv.
venv=target/venv-py
if [ ! -x "$venv/bin/pytest" ] || [ clients/python/pyproject.toml -nt "$venv/.installed" ]; then
    echo "== a venv for the Python tests ($venv): the client, pytest, the MCP SDK, ruff, mypy"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's python3 makes venvs only with python3-venv (ensurepip) installed.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/pip" install --quiet --disable-pip-version-check "./clients/python[test]"
    touch "$venv/.installed"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./clients/python
rm -rf clients/python/build
