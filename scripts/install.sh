#!/usr/bin/env bash
# Install toolbox system-wide: its binaries (toolbox, and next to it toolbox-serve, toolbox-mcp
# and toolbox-shim), the shipped policies, the systemd units,
# and the "toolbox" group whose members may use the daemon's socket.
#
#   sudo scripts/install.sh                       # build, install under /usr/local, enable
#   sudo PREFIX=/usr scripts/install.sh
#   DESTDIR=/tmp/stage scripts/install.sh         # stage only: no group, no systemctl
#   sudo BINDIR=/path scripts/install.sh          # the binaries in /path, as they are
#
# Only a plain install builds (cargo build --release, when cargo is there). Staging
# (DESTDIR) and BINDIR never do: they take the binaries as they are, from BINDIR or
# target/$CARGO_BUILD_TARGET/release (x86_64-unknown-linux-musl unless set), so a packager's
# staging or a machine without a toolchain (a VM, a container image) needs none.
#
# Then: sudo usermod -aG toolbox "$USER" (log in again), and `toolbox run -- cmd` uses the
# daemon at /run/toolbox/toolbox.sock.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${PREFIX:-/usr/local}"
dest="${DESTDIR:-}"
if [ -z "$dest" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or set DESTDIR to stage the files)" >&2
    exit 1
fi

bin="${BINDIR:-target/${CARGO_BUILD_TARGET:-x86_64-unknown-linux-musl}/release}"
if [ -z "${BINDIR:-}" ] && [ -z "$dest" ] && command -v cargo >/dev/null; then
    . scripts/target.sh
    bin="target/$triple/release"
    cargo build --release --quiet -p toolbox -p toolbox-shim -p toolbox-mcp
fi
for b in toolbox toolbox-serve toolbox-mcp toolbox-shim; do
    if [ ! -x "$bin/$b" ]; then
        echo "install.sh: $bin/$b is missing; build it first (cargo build --release) or set BINDIR" >&2
        exit 1
    fi
done

install -d -m 0755 "$dest$prefix/bin" "$dest/etc/toolbox/policies" \
    "$dest/etc/systemd/system" "$dest$prefix/share/doc/toolbox"
# toolbox-serve (the daemon), toolbox-mcp (`toolbox mcp`) and the shim sit next to toolbox,
# where toolbox looks for them.
install -m 0755 "$bin/toolbox" "$bin/toolbox-serve" "$bin/toolbox-mcp" "$bin/toolbox-shim" \
    "$dest$prefix/bin/"
# Shipped policies are replaced; policies of your own (other names) are left alone.
install -m 0644 policies/*.toml "$dest/etc/toolbox/policies/"
install -m 0644 README.md "$dest$prefix/share/doc/toolbox/README.md"
for unit in toolbox.service toolbox.socket; do
    sed -e "s#/usr/local/bin/toolbox#$prefix/bin/toolbox#g" \
        -e "s#/usr/local/share/doc#$prefix/share/doc#g" \
        "systemd/$unit" >"$dest/etc/systemd/system/$unit"
    chmod 0644 "$dest/etc/systemd/system/$unit"
done

if [ -n "$dest" ]; then
    echo "install.sh: staged under $dest"
    exit 0
fi
getent group toolbox >/dev/null || groupadd --system toolbox
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now toolbox.socket
    echo "install.sh: toolbox.socket enabled; the daemon starts on the first connection"
else
    echo "install.sh: no systemd here; start the daemon yourself: $prefix/bin/toolbox serve --group toolbox"
fi
