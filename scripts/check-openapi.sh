#!/usr/bin/env bash
# api/openapi.yaml through a standard OpenAPI 3.1 validator (openapi-spec-validator, from
# PyPI, in a virtualenv of its own under target/). The Rust tests check every daemon
# response they see against the same document (tests/src/openapi.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-openapi
if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        echo "== installing python3-venv (for the OpenAPI validator's virtualenv)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check 'openapi-spec-validator>=0.7,<0.8'
fi
"$venv/bin/openapi-spec-validator" --schema 3.1.0 api/openapi.yaml
