#!/usr/bin/env bash
# What building toolbox needs beyond a Rust toolchain: the standard library of the musl target
# every binary is built for (see .cargo/config.toml), and, with --benches, musl-gcc for the one
# C file among the benchmarks' dependencies (Debian's musl-tools; needs root). Quiet when all
# is there already.
#
#   scripts/build-deps.sh              # before cargo build
#   scripts/build-deps.sh --benches    # before cargo test/clippy --workspace, cargo bench
set -euo pipefail
target=x86_64-unknown-linux-musl
if ! command -v rustup >/dev/null; then
    if ! rustc --print target-libdir --target "$target" 2>/dev/null | xargs -r test -d; then
        echo "build-deps: no rustup to add the $target standard library: install it with your" \
            "toolchain, or build for glibc instead (CARGO_BUILD_TARGET=x86_64-unknown-linux-gnu)" >&2
        exit 1
    fi
elif ! rustup target list --installed | grep -qx "$target"; then
    echo "== adding the Rust target $target (every toolbox binary is static musl)"
    rustup target add "$target"
fi
if [ "${1:-}" = --benches ] && ! command -v musl-gcc >/dev/null; then
    echo "== installing musl-tools (musl-gcc, for a C file among the benchmarks' dependencies)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null
fi
