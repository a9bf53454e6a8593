# Sourced by the build and test scripts (`. scripts/target.sh [--benches]`): the target every
# build here is for, exported as CARGO_BUILD_TARGET (cargo's own) and set as $triple, with what
# building for it needs. That is static musl (see .cargo/config.toml), its standard library
# added with rustup where missing. Where it cannot be had (no rustup, or rustup cannot reach
# its server), static glibc instead — the same code on the C library whose start-up costs
# more — said loudly. A CARGO_BUILD_TARGET already set is kept. --benches: also musl-gcc
# (Debian's musl-tools) for the one C file among the benchmarks' dependencies.
musl=x86_64-unknown-linux-musl
if [ -z "${CARGO_BUILD_TARGET:-}" ]; then
    if rustc --print target-libdir --target "$musl" 2>/dev/null | xargs -r test -d ||
        { command -v rustup >/dev/null &&
            echo "== adding the Rust target $musl (every toolbox binary is static musl)" &&
            timeout 300 rustup target add "$musl"; }; then
        CARGO_BUILD_TARGET=$musl
    else
        echo "!! the Rust target $musl is not installed and rustup could not add it:" \
            "building for x86_64-unknown-linux-gnu (static glibc) instead" >&2
        CARGO_BUILD_TARGET=x86_64-unknown-linux-gnu
    fi
fi
export CARGO_BUILD_TARGET
triple=$CARGO_BUILD_TARGET
if [ "${1:-}" = --benches ] && [ "$triple" = "$musl" ] && ! command -v musl-gcc >/dev/null; then
    echo "== installing musl-tools (musl-gcc, for a C file among the benchmarks' dependencies)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null
fi
