#!/usr/bin/env bash
# The systemd test tier: boot a Debian guest whose PID 1 is systemd, on pure cgroup v2 — the
# host most users have — install toolbox there with scripts/install.sh, and check that
# every entry point works as shipped: the service through socket activation, `toolbox run`
# from a real login session (a systemd scope of its own, also with no dbus-daemon), inside
# crun containers, a daemon killed and restarted, `systemctl stop`. Each check prints a
# named pass/fail line; the last line is `vm-systemd-test: N passed, M failed`, and the exit
# status follows it.
#
#   sudo scripts/vm-systemd-test.sh
#
# The guest's root filesystem is built once with mmdebstrap from Debian's archive and
# cached as target/vm-systemd/base-<key>.img (the key hashes the recipe below, so a changed
# recipe builds anew); each run adds a small second disk with the toolbox binaries (release
# build), the probe, the install script, units and policies, and the checks
# (scripts/vm-systemd/checks.sh). The guest boots the Debian kernel and initrd from the
# image straight from qemu (no bootloader) under KVM where a probe boot shows it works,
# TCG otherwise, under a hard timeout (VM_SYSTEMD_TIMEOUT, default 900 s) so it never hangs.
# The console is target/vm-systemd/console.log.
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$PWD
timeout_secs="${VM_SYSTEMD_TIMEOUT:-900}"

if [ "$(id -u)" != 0 ]; then
    echo "vm-systemd-test: run as root (it builds a root filesystem and boots it)" >&2
    exit 1
fi
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
if [ "${#need[@]}" -gt 0 ]; then
    echo "vm-systemd-test: installing ${need[*]}" >&2
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
    }
    apt_install "${need[@]}" || { apt-get update -q >/dev/null && apt_install "${need[@]}"; }
fi

cache="$root_dir/target/vm-systemd"
mkdir -p "$cache"

# The guest: Debian's release of this host, systemd as init, logind for login sessions,
# dbus (to be masked by one check), crun for the container checks.
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
packages="systemd-sysv,dbus,libpam-systemd,udev,linux-image-amd64,initramfs-tools,crun,kmod,iproute2,procps"
recipe="$suite $packages $(sha256sum scripts/vm-systemd/vmtest.service | cut -c1-16) v1"
key=$(echo "$recipe" | sha256sum | cut -c1-12)
base="$cache/base-$key.img"
if [ ! -f "$base" ]; then
    echo "vm-systemd-test: building the guest image ($suite, systemd; a few minutes, once)" >&2
    rootfs="$cache/rootfs.tmp"
    rm -rf "$rootfs" "$cache"/base-*.img "$cache"/vmlinuz-* "$cache"/initrd-*
    started=$(date +%s)
    mmdebstrap --mode=root --variant=minbase --include="$packages" "$suite" "$rootfs" \
        >"$cache/mmdebstrap.log" 2>&1 || {
        tail -20 "$cache/mmdebstrap.log" >&2
        echo "vm-systemd-test: mmdebstrap failed (log: $cache/mmdebstrap.log)" >&2
        exit 1
    }
    echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$rootfs/etc/fstab"
    echo "toolbox-vm" >"$rootfs/etc/hostname"
    echo "127.0.0.1 localhost toolbox-vm" >"$rootfs/etc/hosts"
    install -m 0644 scripts/vm-systemd/vmtest.service "$rootfs/etc/systemd/system/"
    chroot "$rootfs" systemctl enable vmtest.service >/dev/null 2>&1
    # Nothing to log in on, and nothing that reaches for the network.
    chroot "$rootfs" systemctl mask serial-getty@ttyS0.service getty@tty1.service \
        systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
    cp "$rootfs"/boot/vmlinuz-* "$cache/vmlinuz-$key"
    cp "$rootfs"/boot/initrd.img-* "$cache/initrd-$key"
    mke2fs -q -t ext4 -L toolbox-vm -d "$rootfs" "$base.tmp" 3G >/dev/null
    mv "$base.tmp" "$base"
    rm -rf "$rootfs"
    echo "vm-systemd-test: image built in $(($(date +%s) - started)) s: $base" >&2
fi

echo "vm-systemd-test: building toolbox (release) and the probe" >&2
# (Two builds: `--bin probe` would select that one binary of every package named.)
. scripts/target.sh
cargo build --release -q -p toolbox -p toolbox-shim -p toolbox-mcp
cargo build --release -q -p toolbox-tests --bin probe
bin="$root_dir/target/$triple/release"
payload="$cache/payload"
rm -rf "$payload"
mkdir -p "$payload/bin" "$payload/scripts"
cp "$bin/toolbox" "$bin/toolbox-serve" "$bin/toolbox-mcp" "$bin/toolbox-shim" "$payload/bin/"
cp "$bin/probe" "$payload/toolbox-probe"
# What `scripts/install.sh` reads, laid out as in the checkout: it is run in the guest.
cp scripts/install.sh "$payload/scripts/"
cp -r systemd policies README.md "$payload/"
cp scripts/vm-systemd/checks.sh scripts/vm-systemd/measure.sh scripts/vm-systemd/mcp-smoke.sh "$payload/"
rm -f "$cache/payload.img"
mke2fs -q -t ext4 -d "$payload" "$cache/payload.img" 256M >/dev/null

# KVM when a probe boot shows it works (as scripts/vm-test.sh decides), TCG otherwise.
accel=(-accel tcg)
if [ "${VM_TEST_ACCEL:-auto}" = kvm ] || { [ "${VM_TEST_ACCEL:-auto}" = auto ] &&
    [ -f target/vm/kvm-probe.log ] && grep -q VMTEST-BOOTED target/vm/kvm-probe.log; }; then
    accel=(-accel kvm -cpu host,-arch-capabilities)
fi
log="$cache/console.log"
rm -f "$log"
echo "vm-systemd-test: booting (${accel[1]}), console in $log" >&2
set +e
timeout --kill-after=10 "$timeout_secs" qemu-system-x86_64 -machine q35 "${accel[@]}" \
    -smp 2 -m 3072 -nographic -no-reboot -monitor none -display none -nic none \
    -kernel "$cache/vmlinuz-$key" -initrd "$cache/initrd-$key" \
    -append "root=/dev/vda rw console=ttyS0 quiet panic=-1 systemd.show_status=0" \
    -drive "file=$base,if=virtio,format=raw,snapshot=on" \
    -drive "file=$cache/payload.img,if=virtio,format=raw,snapshot=on" \
    -serial "file:$log"
qemu_status=$?
set -e
tr -d '\r' <"$log" | sed -n '/^== /,$p' | grep -v '^$' || true
if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
    echo "vm-systemd-test: the VM did not finish within ${timeout_secs}s" >&2
fi
summary=$(tr -d '\r' <"$log" | awk '/^VMTEST-SUMMARY/ {print $2, $3}' | tail -1)
if [ -z "$summary" ]; then
    echo "vm-systemd-test: the VM never reported; see $log" >&2
    summary="0 1"
fi
read -r passed failed <<<"$summary"
echo "vm-systemd-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
