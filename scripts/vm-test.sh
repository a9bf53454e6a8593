#!/usr/bin/env bash
# The cgroup v2 test tier: boot a Debian kernel under qemu with cgroup v1 disabled
# (cgroup_no_v1=all, cgroup2 alone at /sys/fs/cgroup, as on a systemd host) — and, under
# KVM or when asked, a second time with systemd's hybrid v1 layout — and run in it
# `toolbox doctor`, a few checks of its own and the same integration test binaries the host
# runs (jail and daemon suites); report on the serial console, power off. The host's tests
# cover cgroup v1; this covers v2 on a real kernel.
#
#   scripts/vm-test.sh                             # as root
#   VM_TEST_ARGS=limits:: scripts/vm-test.sh       # only the tests whose name has this in it
#   VM_TEST_LAYOUTS="v2 hybrid" scripts/vm-test.sh # which boots (default: both under KVM,
#                                                  # v2 alone under TCG)
#
# KVM when a probe boot shows it works, TCG otherwise (VM_TEST_ACCEL=kvm|tcg forces one).
# Nothing is installed on the host but qemu and busybox-static (Debian packages): the kernel
# is fetched with `apt-get download` and unpacked into target/vm/, the root filesystem is an
# initramfs built here from busybox, the toolbox and test binaries, and a few host programs
# with their shared libraries. The whole run is bounded by a hard timeout on qemu
# (VM_TEST_TIMEOUT, default 1200 s: a v2 run takes ~420 s under TCG on our 2-CPU VMs, ~540 s on
# a slow day, when the old 540 s budget cut one run short).
#
# In the VM each `toolbox` runs in a cgroup of its own (scripts/vm/scoped), as
# `systemd-run --scope -p Delegate=yes` or a service with Delegate=yes gives it on a systemd
# host; one check runs it in a shared cgroup, where it must refuse and say what to do.
#
# Exit status: 0 when every check and test in the VM passed, 1 when one failed or the VM
# never reported. The last line is a summary: `vm-test: N passed, M failed` (tests counted
# one by one).
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$PWD
timeout_secs="${VM_TEST_TIMEOUT:-1200}"

if [ "$(id -u)" != 0 ]; then
    echo "vm-test: run as root (it installs qemu and builds jails inside the VM)" >&2
    exit 1
fi
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx switch_root || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
    echo "vm-test: installing ${need[*]}" >&2
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
    }
    apt_install "${need[@]}" || { apt-get update -q >/dev/null && apt_install "${need[@]}"; }
fi

cache="$root_dir/target/vm"
mkdir -p "$cache"

# The kernel: whatever linux-image-amd64 points at in this host's Debian archive.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then
    echo "vm-test: no linux-image-amd64 in the apt archive (apt-get update?)" >&2
    exit 1
fi
kdir="$cache/$kpkg"
if [ ! -d "$kdir/boot" ]; then
    echo "vm-test: fetching $kpkg" >&2
    rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
    (cd "$kdir.tmp" && apt-get download -q "$kpkg" >/dev/null 2>&1) || {
        echo "vm-test: apt-get download $kpkg failed" >&2
        exit 1
    }
    dpkg-deb -x "$kdir.tmp"/*.deb "$kdir.tmp/root"
    mv "$kdir.tmp/root" "$kdir"
    rm -rf "$kdir.tmp"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-*)

echo "vm-test: building toolbox and the integration test binaries" >&2
. scripts/target.sh
cargo build -q -p toolbox -p toolbox-shim
# The suites as the host runs them (debug; they use the binaries next to them in bin/).
# Not workloads and egress: they run real tools (Python, a JVM, curl, git) the guest does
# not have. (Its jobs in mode none get the proxy all the same.)
suites=$(cargo test -q -p toolbox-tests --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"kind":\["test"\].*"executable":"\([^"]*\)".*/\1/p' |
    grep -v -e '/workloads-[0-9a-f]*$' -e '/egress-[0-9a-f]*$')
if [ -z "$suites" ]; then
    echo "vm-test: cargo test --no-run named no test binaries" >&2
    exit 1
fi
bin="$root_dir/target/$triple/debug"

# The root filesystem. Binaries keep their host paths, so what the jail binds in the VM is
# laid out as on the host (/usr merged, /bin -> usr/bin).
rootfs="$cache/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,proc,sys,dev,tmp,run,root,mnt,var/tmp,vm}
ln -s usr/bin "$rootfs/bin"
ln -s usr/sbin "$rootfs/sbin"
ln -s usr/lib "$rootfs/lib"
ln -s usr/lib64 "$rootfs/lib64"
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
# A host program and the shared libraries it loads, at their host paths.
add_program() {
    local program=$1
    install -D -m 0755 "$program" "$rootfs$program"
    ldd "$program" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
        [ -e "$rootfs$lib" ] || install -D -m 0755 "$lib" "$rootfs$lib"
    done
}
# setarch: busybox has none, and the strict policy's seccomp test needs personality().
# sleep and date from coreutils: the tests name processes through argv[0] (which busybox
# takes for the applet to run) and read the clock in nanoseconds (%N), which busybox lacks.
# dash as /bin/sh, as on a Debian host: busybox's sh would run its own date applet.
for program in setarch sleep date dash; do
    add_program "$(command -v "$program")"
done
ln -s dash "$rootfs/usr/bin/sh"
# A few files the tests bind or list from /usr/share.
mkdir -p "$rootfs/usr/share"
cp -r /usr/share/common-licenses "$rootfs/usr/share/"
mkdir -p "$rootfs/usr/share/doc"
cp -r /usr/share/doc/dash "$rootfs/usr/share/doc/"
cp /bin/busybox "$rootfs/usr/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$rootfs/usr/bin/$applet" ] || ln -s busybox "$rootfs/usr/bin/$applet"
done
mkdir -p "$rootfs$bin/deps"
for b in toolbox-shim toolbox-serve probe; do
    cp "$bin/$b" "$rootfs$bin/$b"
done
# `toolbox` itself is reached through /vm/scoped: a cgroup of its own per run, as
# `systemd-run --scope -p Delegate=yes` gives it on a systemd host.
cp "$bin/toolbox" "$rootfs$bin/toolbox.bin"
printf '#!/bin/sh\nexec /vm/scoped %s "$@"\n' "$bin/toolbox.bin" >"$rootfs$bin/toolbox"
chmod 0755 "$rootfs$bin/toolbox"
for suite in $suites; do
    cp "$suite" "$rootfs$bin/deps/"
done
# Debug info off (symbols stay, for backtraces): a third of the initramfs to unpack.
strip --strip-debug "$rootfs$bin"/* "$rootfs$bin"/deps/* 2>/dev/null || true
# busybox's switch_root insists on a regular /init in the initramfs.
install -m 0755 scripts/vm/init "$rootfs/init"
install -m 0755 scripts/vm/scoped "$rootfs/vm/scoped"
cp scripts/vm/checks.sh "$rootfs/vm/"
{
    echo "BIN=$bin"
    echo "VM_TEST_ARGS=\"${VM_TEST_ARGS:-}\""
    echo "SUITES=\"$(for s in $suites; do printf '%s ' "$bin/deps/$(basename "$s")"; done)\""
} >"$rootfs/vm/env"
# The suites read the shipped policies and units from the source tree, at its host path,
# as $CARGO_MANIFEST_DIR/../policies: tests/ must exist for the `..` to resolve.
mkdir -p "$rootfs$root_dir/tests"
cp -r policies systemd "$rootfs$root_dir/"
mkdir -p "$rootfs/etc/toolbox/policies"
cp policies/*.toml "$rootfs/etc/toolbox/policies/"
cat >"$rootfs/etc/passwd" <<'EOP'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOP
cat >"$rootfs/etc/group" <<'EOP'
root:x:0:
nogroup:x:65534:
EOP
# Secrets the jail must keep out, readable by anyone here so only the view can.
echo "root:VMTEST-SHADOW-SECRET:19000:0:99999:7:::" >"$rootfs/etc/shadow"
echo "root:VMTEST-GSHADOW-SECRET::" >"$rootfs/etc/gshadow"
chmod 0644 "$rootfs/etc/shadow" "$rootfs/etc/gshadow"
echo "127.0.0.1 localhost" >"$rootfs/etc/hosts"
echo "hosts: files" >"$rootfs/etc/nsswitch.conf"
: >"$rootfs/etc/resolv.conf"
echo "toolbox-vm" >"$rootfs/etc/hostname"

echo "vm-test: packing the initramfs" >&2
(cd "$rootfs" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$cache/initramfs.gz"

# KVM when it really boots a guest, TCG otherwise. /dev/kvm existing is not enough: on a
# nested host without virtualization extensions it opens, but the guest hangs right after
# the BIOS. A probe boot (seconds under KVM) decides; VM_TEST_ACCEL=kvm|tcg skips it.
qemu_base=(qemu-system-x86_64 -m 4096 -smp 2 -nographic -no-reboot -monitor none -display none
    -net none -kernel "$vmlinuz" -initrd "$cache/initramfs.gz")
cmdline="console=ttyS0 panic=-1 rdinit=/init quiet"
kvm=(-accel kvm -cpu host,-arch-capabilities)
accel_choice="${VM_TEST_ACCEL:-auto}"
if [ "$accel_choice" = auto ]; then
    accel_choice=tcg
    if [ -w /dev/kvm ]; then
        probe_log="$cache/kvm-probe.log"
        rm -f "$probe_log"
        timeout --kill-after=5 20 "${qemu_base[@]}" "${kvm[@]}" \
            -append "$cmdline vmtest.probe" -serial "file:$probe_log" >/dev/null 2>&1 || true
        if grep -q VMTEST-BOOTED "$probe_log" 2>/dev/null; then
            accel_choice=kvm
        else
            echo "vm-test: /dev/kvm is there but a KVM guest did not boot in 20s; using TCG" >&2
        fi
    fi
fi
accel=(-accel tcg)
[ "$accel_choice" = kvm ] && accel=("${kvm[@]}")
# One boot per layout: v2 (cgroup v1 off, as on a systemd host), then hybrid (systemd's v1
# layout with cpu and cpuacct mounted together — ours keeps them apart — on the VM's kernel).
# The hybrid boot only by default where it is cheap (KVM): the host's own tests cover v1,
# and under TCG a boot takes minutes.
layouts="v2 hybrid"
[ "$accel_choice" = kvm ] || layouts=v2
total_passed=0
total_failed=0
for layout in ${VM_TEST_LAYOUTS:-$layouts}; do
    case "$layout" in
        v2) layout_args="cgroup_no_v1=all" ;;
        hybrid) layout_args="vmtest.hybrid" ;;
        *)
            echo "vm-test: unknown layout $layout (VM_TEST_LAYOUTS: v2 hybrid)" >&2
            exit 1
            ;;
    esac
    log="$cache/console-$layout.log"
    rm -f "$log"
    echo "vm-test: booting $(basename "$vmlinuz") ($accel_choice, $layout), console in $log" >&2
    set +e
    timeout --kill-after=10 "$timeout_secs" "${qemu_base[@]}" "${accel[@]}" \
        -append "$cmdline $layout_args" -serial "file:$log"
    qemu_status=$?
    set -e
    tr -d '\r' <"$log" | sed -n '/^== /,$p' | grep -v '^$' || true
    summary=$(tr -d '\r' <"$log" | awk '/^VMTEST-SUMMARY/ {print $2, $3}' | tail -1)
    if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
        echo "vm-test: the $layout VM did not finish within ${timeout_secs}s" >&2
    fi
    if [ -z "$summary" ]; then
        echo "vm-test: the $layout VM never reported; see $log" >&2
        summary="0 1"
    fi
    read -r passed failed <<<"$summary"
    echo "vm-test: $layout: $passed passed, $failed failed"
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
done
echo "vm-test: $total_passed passed, $total_failed failed"
[ "$total_failed" = 0 ]
