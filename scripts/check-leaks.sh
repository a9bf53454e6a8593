#!/usr/bin/env bash
# After a test run: no job cgroup, jail process or jail mount of toolbox may be left on
# this host. Exits non-zero (and says what) if any is.
set -u
# A supervisor that was killed on purpose (a test does that) leaves its jail's PID 1 to the
# host's init to reap: give the host a few seconds before calling anything a leak.
for _ in $(seq 30); do
    if [ -z "$(find /sys/fs/cgroup -maxdepth 8 -type d -name 'toolbox-*' 2>/dev/null)" ] &&
        [ -z "$(pgrep -x toolbox-shim 2>/dev/null)" ]; then
        break
    fi
    sleep 0.1
done
status=0
cgroups=$(find /sys/fs/cgroup -maxdepth 8 -type d -name 'toolbox-*' 2>/dev/null)
if [ -n "$cgroups" ]; then
    echo "check-leaks: job cgroups left behind:" >&2
    echo "$cgroups" >&2
    status=1
fi
shims=$(pgrep -a -x toolbox-shim 2>/dev/null)
if [ -n "$shims" ]; then
    echo "check-leaks: jail processes left behind:" >&2
    echo "$shims" >&2
    status=1
fi
probes=$(pgrep -a -f '^tbtest-' 2>/dev/null)
if [ -n "$probes" ]; then
    echo "check-leaks: test processes left behind:" >&2
    echo "$probes" >&2
    status=1
fi
if grep -q 'toolbox' /proc/self/mountinfo; then
    echo "check-leaks: mounts left behind in the host's mount table:" >&2
    grep 'toolbox' /proc/self/mountinfo >&2
    status=1
fi
[ "$status" = 0 ] && echo "check-leaks: nothing left behind"
exit "$status"
