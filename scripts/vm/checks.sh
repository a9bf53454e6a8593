# The checks of the cgroup v2 test VM, run by /vm/init. /vm/env names the binaries:
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

echo "== kernel $(uname -r); cgroup mounts: $(awk '$3 ~ /^cgroup/ {print $3 " at " $2}' /proc/mounts)"
check "no cgroup v1 hierarchy" sh -c "! awk '\$3 == \"cgroup\" {f=1} END {exit !f}' /proc/mounts"

# Run from this shell's cgroup, which holds other processes: toolbox cannot delegate
# controllers out of it and must say so, and what to do, instead of running unlimited.
out=$($toolbox run --local -C $ws -- /bin/true 2>&1)
code=$?
echo "$out" | sed 's/^/    /'
check "a shared cgroup is refused (125) with the way out" \
    sh -c "[ $code = 125 ] && echo \"\$1\" | grep -q 'systemd-run --scope'" - "$out"

/vm/scoped $toolbox doctor
check "toolbox doctor (in a scope of its own)" [ $? = 0 ]
record=$(/vm/scoped $toolbox run --local --json -C $ws -- /bin/sh -c 'echo hello' 2>&1 >/tmp/hello)
echo "$record" | sed 's/^/    /'
check "a job runs" grep -qx hello /tmp/hello
check "its record says cgroup v2" sh -c "echo \"\$1\" | grep -q '\"cgroup\":\"v2\"'" - "$record"

for suite in $SUITES; do
    name=$(basename "$suite" | sed 's/-[0-9a-f]*$//')
    echo "== suite $name"
    # shellcheck disable=SC2086 # VM_TEST_ARGS: extra libtest arguments, split
    CI=true TOOLBOX_TEST_PREBUILT=1 TOOLBOX_TEST_SCOPES=/sys/fs/cgroup/vm-test.slice \
        RUST_BACKTRACE=1 "$suite" --test-threads=2 --skip the_systemd_units_verify \
        $VM_TEST_ARGS >/tmp/suite.out 2>&1
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
# What systemd does once a scope's processes are gone: remove it, with what is under it.
# A scope that cannot go still holds a process.
for scope in /sys/fs/cgroup/vm-test.slice/*.scope; do
    case "$scope" in */checks.scope) continue ;; esac
    find "$scope" -depth -type d -exec rmdir {} \; 2>/dev/null
done
busy=$(ls -d /sys/fs/cgroup/vm-test.slice/*.scope | grep -v /checks.scope)
for scope in $busy; do
    echo "    busy: $scope: $(find "$scope" -name cgroup.procs -exec cat {} \; | tr '\n' ' ')"
done
check "every scope emptied (no process left)" [ -z "$busy" ]

echo "VMTEST-SUMMARY $passed $failed"
