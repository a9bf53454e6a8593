# The checks of the cgroup test VM, run by /vm/init with VM_LAYOUT=v2 or hybrid. /vm/env
# names the binaries:
#   BIN     the directory of the toolbox binaries (the tests' target/<triple>/debug)
#   SUITES  the integration test executables
#   VM_TEST_ARGS  extra arguments for each of them (a test name filter, say)
# Each check prints `VMTEST-PASS name` or `VMTEST-FAIL name`; a test suite adds its own
# `test result:` line. The last line is `VMTEST-SUMMARY passed failed`, counting tests.
. /vm/env
passed=0
failed=0
pass() { echo "VMTEST-PASS $1"; passed=$((passed + 1)); }
fail() { echo "VMTEST-FAIL $1"; failed=$((failed + 1)); }
check() {
    name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
toolbox=$BIN/toolbox.bin
ws=/work-vm
mkdir -p $ws && chown 65534:65534 $ws

echo "== $VM_LAYOUT: kernel $(uname -r); cgroup mounts: $(awk '$3 ~ /^cgroup/ {print $3 " at " $2}' /proc/mounts | tr '\n' ' ')"
if [ "$VM_LAYOUT" = v2 ]; then
    check "no cgroup v1 hierarchy" sh -c "! awk '\$3 == \"cgroup\" {f=1} END {exit !f}' /proc/mounts"
    # Run from this shell's cgroup, which holds other processes: toolbox cannot delegate
    # controllers out of it and must say so, and what to do, instead of running unlimited.
    out=$($toolbox run --local -C $ws -- /bin/true 2>&1)
    code=$?
    echo "$out" | sed 's/^/    /'
    check "a shared cgroup is refused (125) with the ways out" \
        sh -c "[ $code = 125 ] && echo \"\$1\" | grep -q 'Delegate=yes' && echo \"\$1\" | grep -q -- '--take-cgroup'" - "$out"
    scopes=/sys/fs/cgroup/vm-test.slice
else
    check "v1 memory, pids and cpu hierarchies" sh -c "awk '\$3 == \"cgroup\" {print \$4}' /proc/mounts |
        grep -c 'memory\\|pids\\|cpu,cpuacct' | grep -qx 3"
    scopes=
fi

/vm/scoped $toolbox doctor
check "toolbox doctor" [ $? = 0 ]
record=$(/vm/scoped $toolbox run --local --json -C $ws -- /bin/sh -c 'echo hello' 2>&1 >/tmp/hello)
echo "$record" | sed 's/^/    /'
check "a job runs" grep -qx hello /tmp/hello

# A root-owned workspace, as a checkout in a container is. The guest's only filesystem is
# tmpfs, which Linux can idmap from 6.3 on: before, the job must be refused, saying why
# (the suites' test of the write itself runs on the host tier, and is left out here).
rootws=/root-ws
mkdir -p $rootws && chown 0:0 $rootws
idmap_skip=
/vm/scoped $toolbox run --local -C $rootws -- /bin/sh -c 'echo x > f' 2>/tmp/idmap.err
code=$?
sed 's/^/    /' /tmp/idmap.err
if [ "$(uname -r | awk -F. '{print ($1 > 6 || ($1 == 6 && $2 >= 3))}')" = 1 ]; then
    check "a root-owned workspace is written, as root on disk" \
        sh -c "[ $code = 0 ] && [ \"\$(stat -c %u $rootws/f)\" = 0 ]"
else
    check "a root-owned workspace tmpfs cannot idmap is refused (125), saying why" \
        sh -c "[ $code = 125 ] && grep -q 'idmapped mount' /tmp/idmap.err && [ ! -e $rootws/f ]"
    idmap_skip="--skip a_root_owned_workspace_is_written_by_an_unprivileged_job"
fi
version=$([ "$VM_LAYOUT" = v2 ] && echo v2 || echo v1)
check "its record says cgroup $version" sh -c "echo \"\$1\" | grep -q '\"cgroup\":\"$version\"'" - "$record"

for suite in $SUITES; do
    name=$(basename "$suite" | sed 's/-[0-9a-f]*$//')
    echo "== suite $name"
    # shellcheck disable=SC2086 # VM_TEST_ARGS: extra libtest arguments, split
    # TOOLBOX_TEST_SCOPES (v2): where each toolbox's scope is, for the tests that look.
    env ${scopes:+TOOLBOX_TEST_SCOPES=$scopes} CI=true TOOLBOX_TEST_PREBUILT=1 \
        RUST_BACKTRACE=1 "$suite" --test-threads=2 --skip the_systemd_units_verify \
        $idmap_skip $VM_TEST_ARGS >/tmp/suite.out 2>&1
    code=$?
    cat /tmp/suite.out
    result=$(grep '^test result:' /tmp/suite.out | tail -1)
    if [ -z "$result" ]; then
        fail "suite $name (exited $code without a result)"
        continue
    fi
    p=$(echo "$result" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
    f=$(echo "$result" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    [ "$code" = 0 ] || [ "${f:-0}" != 0 ] || fail "suite $name (exited $code)"
done

# Every job's cgroup went with its job, and the stale ones the cleanup tests left were swept.
left=$(find /sys/fs/cgroup -type d -name 'toolbox-*')
echo "$left" | sed '/^$/d; s/^/    left: /'
check "no job cgroup left after the suites" [ -z "$left" ]
if [ -n "$scopes" ]; then
    # What systemd does once a scope's processes are gone: remove it, with what is under it.
    # A scope that cannot go still holds a process.
    for scope in "$scopes"/*.scope; do
        case "$scope" in */checks.scope) continue ;; esac
        find "$scope" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    busy=$(ls -d "$scopes"/*.scope | grep -v /checks.scope)
    for scope in $busy; do
        echo "    busy: $scope: $(find "$scope" -name cgroup.procs -exec cat {} \; | tr '\n' ' ')"
    done
    check "every scope emptied (no process left)" [ -z "$busy" ]
fi
# No process of any job left, whatever cgroup it might have got into.
strays=$(for dir in /proc/[0-9]*; do
    cmdline=$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null)
    case "$cmdline" in *toolbox-shim* | */probe* | tbtest-*) echo "${dir#/proc/}: $cmdline" ;; esac
done)
echo "$strays" | sed '/^$/d; s/^/    stray: /'
check "no jail or probe process left" [ -z "$strays" ]
echo "VMTEST-SUMMARY $passed $failed"
