#!/usr/bin/env bash
# The cgroup v2 test tier: boot a Debian kernel under qemu with cgroup v1 disabled
# (cgroup_no_v1=all, cgroup2 at /sys/fs/cgroup), run toolbox in it, report on the serial
# console, power off. The host's own tests cover cgroup v1; this covers v2 on a real kernel.
#
#   scripts/vm-test.sh            # as root: KVM when /dev/kvm works, TCG otherwise
#
# Nothing is installed on the host but qemu and busybox-static (Debian packages): the kernel
# is fetched with `apt-get download` and unpacked into target/vm/, the root filesystem is an
# initramfs built here from busybox, the toolbox binaries and the shared libraries of the
# few host programs the jobs use. The whole run is bounded by a hard timeout on qemu.
#
# Exit status: 0 when every check in the VM passed, 1 when one failed or the VM never
# reported. The last line is a summary: `vm-test: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$PWD
timeout_secs="${VM_TEST_TIMEOUT:-540}"

if [ "$(id -u)" != 0 ]; then
    echo "vm-test: run as root (it installs qemu and builds jails inside the VM)" >&2
    exit 1
fi
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx switch_root || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
    echo "vm-test: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
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

echo "vm-test: building toolbox" >&2
cargo build -q --release -p toolbox -p toolbox-shim
bin="$root_dir/target/x86_64-unknown-linux-gnu/release"

# The root filesystem. Binaries keep their host paths, so what the jail binds in the VM is
# laid out as on the host (/usr merged, /bin -> usr/bin).
rootfs="$cache/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,proc,sys,dev,tmp,run,root,mnt,var/tmp}
ln -s usr/bin "$rootfs/bin"
ln -s usr/sbin "$rootfs/sbin"
ln -s usr/lib "$rootfs/lib"
ln -s usr/lib64 "$rootfs/lib64"
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
cp /bin/busybox "$rootfs/usr/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$rootfs/usr/bin/$applet" ] || ln -s busybox "$rootfs/usr/bin/$applet"
done
# A host program and the shared libraries it loads, at their host paths.
add_program() {
    local program=$1
    install -D -m 0755 "$program" "$rootfs$program"
    ldd "$program" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
        [ -e "$rootfs$lib" ] || install -D -m 0755 "$lib" "$rootfs$lib"
    done
}
# setarch: busybox has none, and the strict policy's seccomp test needs personality().
add_program "$(command -v setarch)"
mkdir -p "$rootfs$bin"
for b in toolbox toolbox-shim toolbox-serve; do
    cp "$bin/$b" "$rootfs$bin/$b"
done
mkdir -p "$rootfs/etc/toolbox/policies"
cp policies/*.toml "$rootfs/etc/toolbox/policies/"
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo "127.0.0.1 localhost" >"$rootfs/etc/hosts"
echo "hosts: files" >"$rootfs/etc/nsswitch.conf"
: >"$rootfs/etc/resolv.conf"
echo "toolbox-vm" >"$rootfs/etc/hostname"

cat >"$rootfs/init" <<EOF
#!/bin/sh
# PID 1 of the VM. The initramfs is rootfs, where pivot_root (which every jail does) is
# refused: copy it into a tmpfs and switch to that first.
if [ ! -e /.switched ]; then
    mount -t proc proc /proc
    mount -t tmpfs -o mode=0755 root /mnt
    for entry in /*; do
        case "\$entry" in /mnt|/proc) ;; *) cp -a "\$entry" /mnt/ ;; esac
    done
    mkdir -p /mnt/mnt /mnt/proc
    touch /mnt/.switched
    umount /proc
    exec switch_root /mnt /init
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t tmpfs -o mode=0755 run /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
hostname toolbox-vm
export PATH=/usr/bin:/usr/sbin HOME=/root
# As systemd sets up a host: the controllers on at the root, the work in a child cgroup of
# its own (toolbox must enable them further down and keep out of the internal-process rule).
echo "+memory +pids +cpu" >/sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/vm-test.scope
echo \$\$ >/sys/fs/cgroup/vm-test.scope/cgroup.procs
sh /vm-checks.sh
poweroff -f
EOF
chmod 0755 "$rootfs/init"

cat >"$rootfs/vm-checks.sh" <<EOF
# Runs inside the VM. Each check prints VMTEST-PASS or VMTEST-FAIL and a name.
passed=0
failed=0
check() {
    name=\$1
    shift
    if "\$@"; then
        echo "VMTEST-PASS \$name"
        passed=\$((passed + 1))
    else
        echo "VMTEST-FAIL \$name"
        failed=\$((failed + 1))
    fi
}
toolbox=$bin/toolbox
echo "== kernel \$(uname -r); cgroup mounts: \$(awk '\$3 ~ /^cgroup/ {print \$3 " at " \$2}' /proc/mounts)"
check "no cgroup v1 hierarchy" sh -c "! awk '\\\$3 == \\"cgroup\\" {found=1} END {exit !found}' /proc/mounts"
check "toolbox doctor" sh -c "\$toolbox doctor; test \\\$? = 0"
mkdir -p /work-vm && chown 65534:65534 /work-vm
check "a job runs" sh -c "\$toolbox run --local -C /work-vm -- /bin/sh -c 'echo hello' | grep -qx hello"
echo "VMTEST-SUMMARY \$passed \$failed"
EOF

echo "vm-test: packing the initramfs" >&2
(cd "$rootfs" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$cache/initramfs.gz"

# TCG by default for now: on our Firecracker hosts /dev/kvm opens, but a nested guest hangs
# right after the BIOS (-cpu host also trips on MSR 0x10a). VM_TEST_ACCEL=kvm forces KVM;
# a short KVM boot probe that falls back to TCG is still to come.
accel=(-accel tcg)
if [ "${VM_TEST_ACCEL:-tcg}" = kvm ]; then
    accel=(-enable-kvm -cpu host,-arch-capabilities)
fi
log="$cache/console.log"
echo "vm-test: booting $(basename "$vmlinuz") (${accel[*]}), console in $log" >&2
set +e
timeout --kill-after=10 "$timeout_secs" qemu-system-x86_64 "${accel[@]}" \
    -m 4096 -smp 2 -nographic -no-reboot \
    -kernel "$vmlinuz" -initrd "$cache/initramfs.gz" \
    -append "console=ttyS0 panic=-1 cgroup_no_v1=all rdinit=/init quiet" \
    -serial "file:$log" -monitor none -display none -net none
qemu_status=$?
set -e
grep -E '^(==|VMTEST-|test |running |failures|test result)' "$log" | tr -d '\r' || true
summary=$(tr -d '\r' <"$log" | awk '/^VMTEST-SUMMARY/ {print $2, $3}' | tail -1)
if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
    echo "vm-test: the VM did not finish within ${timeout_secs}s" >&2
fi
if [ -z "$summary" ]; then
    echo "vm-test: 0 passed, 1 failed (the VM never reported; see $log)"
    exit 1
fi
read -r passed failed <<<"$summary"
echo "vm-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
