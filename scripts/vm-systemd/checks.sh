# The checks of the systemd test tier (scripts/vm-systemd-test.sh), run as root by
# vmtest.service in a Debian guest booted with systemd on pure cgroup v2. The payload disk
# (this directory) holds the toolbox binaries in bin/, the probe, and the checkout's install
# script, units and policies. Each check prints `VMTEST-PASS name` or `VMTEST-FAIL name`;
# the last line is `VMTEST-SUMMARY passed failed`. Every command that could wait is bounded.
P=/mnt/payload
passed=0
failed=0
pass() { echo "VMTEST-PASS $1"; passed=$((passed + 1)); }
fail() { echo "VMTEST-FAIL $1"; failed=$((failed + 1)); }
check() {
    name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
say() { echo "$*" | sed 's/^/    /'; }
# The value of a field of a one-line JSON record (strings and numbers; enough for ours).
field() { echo "$1" | tr ',{}' '\n\n\n' | sed -n "s/^\"$2\":\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" | head -1; }
# The record: the last line of a --json run's stderr.
record() { grep '^{"job_id"' "$1" | tail -1; }
# Wait up to $1 seconds for a command to succeed.
wait_for() {
    t=$1
    shift
    i=0
    while [ "$i" -lt $((t * 10)) ]; do
        "$@" && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}
# As a user, in a login session of their own (pam_systemd: session-N.scope), bounded.
as() {
    user=$1
    shift
    timeout 120 su -l "$user" -c "$*"
}
unit_cg=/sys/fs/cgroup/system.slice/toolbox.service
job_cgroups() { find /sys/fs/cgroup -type d -name 'toolbox-*-*' ! -name '*.scope' 2>/dev/null; }
# The service keeps jails prepared ahead of jobs (`toolbox serve --warm`, by default half of
# --max-jobs: 4): each is a cgroup named toolbox-PID-warmN holding the jail's PID 1 (a shim)
# waiting for a job, and until its root is built the shim's helper that made its network
# namespace. A job that takes one runs in that cgroup, which is removed when the job ends,
# like any job's.
pool_size=4
# Whether cgroup $1 is a prepared jail of daemon $2 waiting for a job: so named, and holding
# one or two processes, both shims (a job's tool has exec'd).
waiting_jail() {
    case "${1##*/}" in "toolbox-$2-warm"[0-9]*) ;; *) return 1 ;; esac
    set -- $(cat "$1/cgroup.procs" 2>/dev/null)
    [ "$#" -ge 1 ] && [ "$#" -le 2 ] || return 1
    for p; do tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q '^toolbox-shim ' || return 1; done
}
# The job cgroups under $1 other than daemon $2's waiting jails (at most $pool_size of
# those, or every one is listed): what a daemon with no job running must not have.
left_under() {
    n=0
    for d in $(find "$1" -type d -name 'toolbox-*-*' ! -name '*.scope' 2>/dev/null); do
        if waiting_jail "$d" "$2"; then n=$((n + 1)); else echo "$d"; fi
    done
    [ "$n" -le "$pool_size" ] || find "$1" -type d -name "toolbox-$2-warm*"
}
# Whether process $1 is in a waiting jail of daemon $2.
in_waiting_jail() { waiting_jail "/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$1/cgroup" 2>/dev/null)" "$2"; }
# The processes of the unit's cgroup but the daemon and its waiting jails' shims.
unit_others() {
    for p in $(cat $(find "$unit_cg" -name cgroup.procs) | sort -u); do
        [ "$p" = "$1" ] || in_waiting_jail "$p" "$1" || echo "$p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"
    done
}
# Shims but those of the service's waiting jails (of daemon $1).
other_shims() {
    for p in $(shims); do
        in_waiting_jail "$p" "$1" || echo "$p"
    done
}
# How many waiting jails daemon $1 has.
pool_of() {
    n=0
    for d in $(find "$unit_cg" -maxdepth 1 -type d -name "toolbox-$1-warm*"); do
        waiting_jail "$d" "$1" && n=$((n + 1))
    done
    echo "$n"
}
# A job of the probe's is running.
has_probe() { [ -n "$(running /usr/local/bin/toolbox-probe)" ]; }
# Processes by the first word of their command line (the jail's PID 1 calls itself
# toolbox-shim; the probe runs as /usr/local/bin/toolbox-probe).
running() {
    for d in /proc/[0-9]*; do
        cat "$d/cmdline" 2>/dev/null | tr '\0' ' ' | grep -q "^$1" && echo "${d#/proc/}"
    done
}
shims() { running toolbox-shim; }
gone_pid() { ! kill -0 "$1" 2>/dev/null; }

echo "== systemd $(systemctl --version | head -1 | cut -d' ' -f2), kernel $(uname -r), $(stat -fc %T /sys/fs/cgroup)"
check "pure cgroup v2 under systemd" sh -c '[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && [ -d /run/systemd/system ]'

echo "== install"
(cd "$P" && BINDIR="$P/bin" timeout 120 bash scripts/install.sh) 2>&1 | sed 's/^/    /'
install -m 0755 "$P/toolbox-probe" /usr/local/bin/toolbox-probe
check "install.sh installs toolbox and enables toolbox.socket" systemctl -q is-enabled toolbox.socket
check "the installed unit is the one shipped, unchanged" cmp -s /etc/systemd/system/toolbox.service "$P/systemd/toolbox.service"
check "the service is not running before the first job" sh -c '! systemctl -q is-active toolbox.service'
useradd -m -U -s /bin/sh tester
usermod -aG toolbox tester
tester_uid=$(id -u tester)

echo "== the service, through socket activation"
out=$(as tester 'toolbox run --json -- id -u' 2>/tmp/rec)
rec=$(record /tmp/rec)
say "$rec"
check "the first toolbox run of a user in group toolbox starts the service" systemctl -q is-active toolbox.service
check "the job ran as that user" [ "$out" = "$tester_uid" ]
check "its record: cgroup v2, under the unit's cgroup, placement own" sh -c '[ "$1" = v2 ] && [ "$3" = own ] &&
    case "$2" in /system.slice/toolbox.service/toolbox-*) true ;; *) false ;; esac' - \
    "$(field "$rec" cgroup)" "$(field "$rec" cgroup_path)" "$(field "$rec" cgroup_placement)"
main=$(systemctl show -P MainPID toolbox.service)
daemon_filters=$(sed -n 's/^Seccomp_filters:[[:space:]]*//p' "/proc/$main/status")
say "daemon (pid $main): Seccomp_filters $daemon_filters"
check "the daemon inherits no seccomp filter from its unit" [ "$daemon_filters" = 0 ]
out=$(as tester 'toolbox run -- grep Seccomp /proc/self/status')
say "$out"
check "a job runs under toolbox's seccomp filter and no other" sh -c 'echo "$1" | grep -q "^Seccomp_filters:[[:space:]]*1$"' - "$out"
out=$(as tester 'toolbox run -- sh -c "cat /proc/1/cgroup /proc/self/cgroup /proc/1/oom_score_adj"' 2>&1)
say "$out"
check "the jail's PID 1 is born in the job's cgroup by clone3, out of the OOM killer's reach" sh -c '
    [ "$1" = "$(printf "0::/\n0::/\n-1000")" ] &&
    ! journalctl -q -u toolbox.service --no-pager | grep -q CLONE_INTO_CGROUP' - "$out"
as tester 'toolbox run --json --memory 64M -- /usr/local/bin/toolbox-probe memhog 512' >/dev/null 2>/tmp/rec
code=$?
rec=$(record /tmp/rec)
check "OOM is reported as oom (exit 137)" sh -c '[ "$1" = 137 ] && [ "$2" = oom ]' - "$code" "$(field "$rec" status)"
out=$(as tester 'toolbox run --json --pids 32 --timeout 60s -- /usr/local/bin/toolbox-probe forkbomb tbbomb' 2>/tmp/rec)
rec=$(record /tmp/rec)
say "$out" "pids_peak $(field "$rec" pids_peak)"
check "a fork bomb stops at pids.max" sh -c '[ "$1" -le 32 ] && [ "$2" -le 32 ] && [ "$3" = 11 ]' - \
    "$(field "$out" forked)" "$(field "$rec" pids_peak)" "$(field "$out" errno)"
as tester 'toolbox run --json --timeout 2s --grace 1s -- /usr/local/bin/toolbox-probe ignore-term tbterm' >/dev/null 2>/tmp/rec
code=$?
rec=$(record /tmp/rec)
say "exit $code, status $(field "$rec" status), $(field "$rec" duration_ms) ms"
check "a SIGTERM-ignoring job ends at timeout + grace (124)" sh -c '[ "$1" = 124 ] && [ "$2" = timeout ] &&
    [ "$3" -ge 3000 ] && [ "$3" -lt 8000 ]' - "$code" "$(field "$rec" status)" "$(field "$rec" duration_ms)"
# Every job has ended: the unit's cgroup holds the daemon's leaf and the pool's waiting jails,
# nothing else. (A jail being prepared as the last job ended is waiting within moments.)
settled() { [ -z "$(left_under "$unit_cg" "$main")" ] && [ -z "$(unit_others "$main")" ] &&
    [ -z "$(find "$unit_cg" -mindepth 1 -type d ! -name supervisor ! -name 'toolbox-*')" ]; }
wait_for 10 settled
say "unit cgroup: $(ls "$unit_cg" | grep -e supervisor -e '^toolbox-' | tr '\n' ' ')" \
    "left of jobs: $(left_under "$unit_cg" "$main" | tr '\n' ' ')" "other processes: $(unit_others "$main" | tr '\n' ' ')"
check "nothing of any job is left in the unit's cgroup (only the daemon and its prepared jails)" settled
rec=$(as tester 'toolbox run --json -- true' 2>&1 | grep '^{"job_id"' | tail -1)
say "$rec"
check "a job through the installed service runs in a prepared jail (isolation.warm), in the unit's cgroup" sh -c '
    [ "$1" = true ] && case "$2" in /system.slice/toolbox.service/toolbox-"$3"-warm*) true ;; *) false ;; esac' - \
    "$(field "$rec" warm)" "$(field "$rec" cgroup_path)" "$main"
pool_full() { [ "$(pool_of "$main")" = "$pool_size" ]; }
wait_for 10 pool_full
say "waiting jails: $(pool_of "$main")"
check "the pool refills to its size, $pool_size" pool_full

echo "== toolbox mcp, as an MCP client starts it, through the installed service"
install -m 0755 "$P/mcp-smoke.sh" /usr/local/bin/toolbox-mcp-smoke
answer=$(as tester 'toolbox-mcp-smoke "echo mcp-\$((6*7)); id -u"')
say "$(echo "$answer" | cut -c1-200)"
check "toolbox mcp runs a job through the service, as the user who started it" sh -c '
    case "$1" in *"\"text\":\"mcp-42\\n$2\\n[exit 0"*) true ;; *) false ;; esac &&
    case "$1" in *"\"isError\":true"*) false ;; *) true ;; esac' - "$answer" "$tester_uid"

echo "== toolbox run from a login session"
# A workspace anyone may write (root's own home is 0700, and a root caller's jobs run as an
# unprivileged uid).
mkdir -p /srv/share/work && chmod 0777 /srv/share/work
ws="-C /srv/share/work"
as root "cat /proc/self/cgroup; toolbox run --local --json $ws --memory 64M -- /usr/local/bin/toolbox-probe memhog 512" >/tmp/out 2>/tmp/rec
code=$?
rec=$(record /tmp/rec)
session=$(grep '^0::' /tmp/out)
say "$session" "$rec"
check "su -l root gives a login session (session-N.scope)" sh -c 'echo "$1" | grep -q "^0::/user.slice/user-0.slice/session-.*\.scope$"' - "$session"
check "from it, toolbox runs in a systemd scope of its own" sh -c '[ "$1" = systemd_scope ] &&
    echo "$2" | grep -q "^/user.slice/user-0.slice/toolbox-run-[0-9]*\.scope/toolbox-"' - \
    "$(field "$rec" cgroup_placement)" "$(field "$rec" cgroup_path)"
check "there too the jail's PID 1 is born in the job's cgroup by clone3" sh -c '! grep -q CLONE_INTO_CGROUP "$1"' - /tmp/rec
check "memory is enforced there (oom, 137)" sh -c '[ "$1" = 137 ] && [ "$2" = oom ]' - "$code" "$(field "$rec" status)"
out=$(as root "toolbox run --local --json $ws --pids 32 --timeout 60s -- /usr/local/bin/toolbox-probe forkbomb tbbomb2" 2>/tmp/rec)
rec=$(record /tmp/rec)
check "pids are enforced there (a fork bomb stops at 32)" sh -c '[ "$1" -le 32 ] && [ "$2" = 11 ]' - \
    "$(field "$out" forked)" "$(field "$out" errno)"
as root "toolbox run --local --json $ws --cpus 0.2 -- /usr/local/bin/toolbox-probe spin 2" >/dev/null 2>/tmp/rec
rec=$(record /tmp/rec)
cpu=$(($(field "$rec" cpu_user_ms) + $(field "$rec" cpu_system_ms)))
wall=$(field "$rec" duration_ms)
say "--cpus 0.2: $(field "$rec" status), $cpu ms of CPU in $wall ms"
check "cpu is enforced there (0.2 CPUs: under 0.35 of the wall time)" sh -c '[ "$1" = exited ] && [ "$3" -ge 2000 ] &&
    [ $(($2 * 100)) -lt $(($3 * 35)) ]' - "$(field "$rec" status)" "$cpu" "$wall"
# The scopes go when their toolbox exits; systemd collects them at its own pace. (The
# service, still running, keeps its prepared jails.)
main=$(systemctl show -P MainPID toolbox.service)
gone() { [ -z "$(systemctl list-units --all --plain --no-legend 'toolbox-run-*' 2>/dev/null)" ] &&
    [ -z "$(left_under /sys/fs/cgroup "$main")" ] && [ -z "$(other_shims "$main")" ]; }
wait_for 10 gone
say "scopes: $(systemctl list-units --all --plain --no-legend 'toolbox-run-*' | tr '\n' ' ')" \
    "job cgroups: $(left_under /sys/fs/cgroup "$main" | tr '\n' ' ')" "shims: $(other_shims "$main" | tr '\n' ' ')"
check "nothing is left behind: no scope, no job cgroup, no shim (the service's prepared jails aside)" gone
# No dbus-daemon: the session opened first (logind needs the bus), then the bus goes.
as root "systemctl mask -q --now dbus.socket dbus.service; toolbox run --local --json $ws --memory 64M -- /usr/local/bin/toolbox-probe memhog 512" >/dev/null 2>/tmp/rec
code=$?
rec=$(record /tmp/rec)
say "$(grep -v '^{' /tmp/rec)"
check "with dbus masked, toolbox gets its scope over systemd's private socket" sh -c '[ "$1" = systemd_scope ] &&
    [ "$2" = 137 ] && [ "$3" = oom ]' - "$(field "$rec" cgroup_placement)" "$code" "$(field "$rec" status)"
systemctl unmask -q dbus.socket dbus.service
systemctl start dbus.socket dbus.service
wait_for 10 gone

echo "== crun containers (private cgroup namespace)"
# A container's root: the guest's /usr and /etc read-only (toolbox is installed there), its
# own /tmp and /run, the cgroup2 filesystem of its namespace, and a directory shared with
# the guest at the same path for the socket and the workspace. Privileged otherwise, as
# `docker run --privileged --cgroupns=private` would be: every capability, no seccomp.
caps='"CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_DAC_READ_SEARCH","CAP_FOWNER","CAP_FSETID","CAP_KILL","CAP_SETGID","CAP_SETUID","CAP_SETPCAP","CAP_NET_ADMIN","CAP_NET_RAW","CAP_SYS_CHROOT","CAP_SYS_ADMIN","CAP_SYS_RESOURCE","CAP_SYS_PTRACE","CAP_MKNOD","CAP_AUDIT_WRITE","CAP_SETFCAP"'
container() { # name, cgroup mount option (rw|ro), args as a JSON list
    dir=/srv/ctr/$1
    rm -rf "$dir" && mkdir -p "$dir/rootfs"
    (cd "$dir/rootfs" && mkdir -p usr etc proc sys dev tmp run srv/share &&
        ln -s usr/bin bin && ln -s usr/sbin sbin && ln -s usr/lib lib && ln -s usr/lib64 lib64)
    cat >"$dir/config.json" <<EOC
{"ociVersion":"1.0.2",
 "process":{"terminal":false,"user":{"uid":0,"gid":0},"cwd":"/","args":$3,
  "env":["PATH=/usr/local/bin:/usr/bin:/bin","container=crun"],
  "capabilities":{"bounding":[$caps],"effective":[$caps],"permitted":[$caps],"inheritable":[$caps],"ambient":[$caps]},
  "noNewPrivileges":false},
 "root":{"path":"rootfs","readonly":false},
 "hostname":"$1",
 "mounts":[
  {"destination":"/proc","type":"proc","source":"proc"},
  {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]},
  {"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","noexec","nodev"]},
  {"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["nosuid","noexec","nodev","$2"]},
  {"destination":"/usr","type":"bind","source":"/usr","options":["rbind","ro"]},
  {"destination":"/etc","type":"bind","source":"/etc","options":["rbind","ro"]},
  {"destination":"/tmp","type":"tmpfs","source":"tmpfs","options":["mode=1777"]},
  {"destination":"/run","type":"tmpfs","source":"tmpfs","options":["mode=755"]},
  {"destination":"/srv/share","type":"bind","source":"/srv/share","options":["rbind","rw"]}],
 "linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"ipc"},{"type":"uts"},{"type":"cgroup"}],
  "cgroupsPath":"machine.slice:toolbox-test:$1",
  "resources":{"devices":[{"allow":true,"access":"rwm"}]}}}
EOC
}
crun_() { timeout 60 crun --cgroup-manager=systemd "$@"; }
# 1. toolbox serve as the container's PID 1.
container c1 rw '["/usr/local/bin/toolbox","serve","--socket","/srv/share/c1.sock"]'
crun_ run -d --bundle /srv/ctr/c1 c1 >/tmp/c1.out 2>&1
wait_for 30 test -S /srv/share/c1.sock
out=$(timeout 120 toolbox run --socket /srv/share/c1.sock --json -C /srv/share/work -- sh -c 'echo in-the-jail' 2>/tmp/rec)
rec=$(record /tmp/rec)
say "$out" "$rec"
check "a crun container: toolbox serve as PID 1 runs jobs" sh -c '[ "$1" = in-the-jail ] && [ "$2" = own ] &&
    echo "$3" | grep -q "^/toolbox-"' - "$out" "$(field "$rec" cgroup_placement)" "$(field "$rec" cgroup_path)"
timeout 120 toolbox run --socket /srv/share/c1.sock --json -C /srv/share/work --memory 64M -- /usr/local/bin/toolbox-probe memhog 512 >/dev/null 2>/tmp/rec
check "its jobs' limits hold (oom)" [ "$(field "$(record /tmp/rec)" status)" = oom ]
c1_cg=/sys/fs/cgroup/machine.slice/toolbox-test-c1.scope
say "container cgroup: $(find "$c1_cg" -mindepth 1 -type d | sed "s|$c1_cg/||" | tr '\n' ' ')"
# (The daemon is the container's PID 1: its prepared jails are toolbox-1-warmN.)
c1_left() { [ -z "$(left_under "$c1_cg" 1)" ]; }
wait_for 10 c1_left
say "jobs' cgroups left: $(left_under "$c1_cg" 1 | sed "s|$c1_cg/||" | tr '\n' ' ')"
c1_own() { [ -n "$(find "$c1_cg" -maxdepth 2 -type d -name supervisor)" ] && c1_left; }
check "it manages its own cgroup: a supervisor leaf, every job's cgroup removed (its prepared jails aside)" c1_own
crun_ kill c1 TERM
wait_for 20 sh -c '! crun state c1 2>/dev/null | grep -q running'
crun_ delete -f c1 >/dev/null 2>&1
# 2. Something else is PID 1: refused, naming the ways out; with --take-cgroup it works.
container c2 rw '["/usr/bin/sleep","600"]'
crun_ run -d --bundle /srv/ctr/c2 c2 >/dev/null 2>&1
crun_ exec c2 toolbox run --local -C /srv/share/work -- true >/tmp/out 2>&1
code=$?
say "exit $code: $(cat /tmp/out)"
check "a container whose PID 1 is something else refuses, naming the ways out" sh -c '[ "$1" = 125 ] &&
    grep -q "PID 1" /tmp/out && grep -q -- "--take-cgroup" /tmp/out && grep -q -- "--privileged" /tmp/out'  - "$code"
crun_ exec c2 toolbox run --local --take-cgroup --json -C /srv/share/work -- sh -c 'echo taken' >/tmp/out 2>/tmp/rec
code=$?
rec=$(record /tmp/rec)
say "exit $code: $(cat /tmp/out)" "$rec"
c2_cg=/sys/fs/cgroup/machine.slice/toolbox-test-c2.scope
# (crun puts the container in a child of its scope, "container".)
init_procs=$(cat $(find "$c2_cg" -maxdepth 3 -path '*/init/cgroup.procs') 2>/dev/null)
say "$c2_cg: init holds $(echo $init_procs)"
check "and works with --take-cgroup (the others moved into /init)" sh -c '[ "$1" = 0 ] && [ "$2" = took_over ] &&
    [ -n "$3" ]' - "$code" "$(field "$rec" cgroup_placement)" "$init_procs"
crun_ kill c2 KILL
wait_for 20 sh -c '! crun state c2 2>/dev/null | grep -q running'
crun_ delete -f c2 >/dev/null 2>&1
# 3. A read-only cgroup mount (docker's default without --privileged).
container c3 ro '["/usr/local/bin/toolbox","serve","--socket","/srv/share/c3.sock"]'
crun_ run --bundle /srv/ctr/c3 c3 >/tmp/out 2>&1
code=$?
say "exit $code: $(cat /tmp/out)"
check "a read-only cgroup mount is reported as read-only" sh -c '[ "$1" != 0 ] && grep -q "mounted read-only" /tmp/out &&
    ! grep -q "controller" /tmp/out' - "$code"
crun_ delete -f c3 >/dev/null 2>&1

echo "== the service: kill -9, restart, stop"
as tester 'toolbox run -- /usr/local/bin/toolbox-probe sleep 120' >/dev/null 2>&1 &
client=$!
wait_for 30 has_probe
old=$(systemctl show -P MainPID toolbox.service)
kill -9 "$old"
restarted() {
    new=$(systemctl show -P MainPID toolbox.service)
    [ "$new" != 0 ] && [ "$new" != "$old" ] && systemctl -q is-active toolbox.service
}
wait_for 30 restarted
say "daemon $old killed; now $(systemctl show -P MainPID toolbox.service)"
check "after kill -9, systemd restarts the daemon" restarted
wait_for 30 gone_pid "$client"
wait "$client" 2>/dev/null
dead_left() { [ -z "$(find /sys/fs/cgroup -type d -name "toolbox-$old-*")" ] && [ -z "$(running /usr/local/bin/toolbox-probe)" ]; }
wait_for 10 dead_left
check "nothing of the dead daemon's job is left (process, cgroup)" dead_left
out=$(as tester 'toolbox run -- echo again')
check "jobs run again" [ "$out" = again ]
as tester 'toolbox run -- /usr/local/bin/toolbox-probe ignore-term tbstop' >/dev/null 2>&1 &
client=$!
wait_for 30 has_probe
timeout 90 systemctl stop toolbox.service 2>/dev/null
wait_for 30 gone_pid "$client"
wait "$client" 2>/dev/null
say "the running job's client exited $?"
stopped() { [ -z "$(job_cgroups)" ] && [ -z "$(shims)" ] && ! has_probe && [ ! -d "$unit_cg" ]; }
wait_for 10 stopped
say "job cgroups: $(job_cgroups | tr '\n' ' ')" "shims: $(shims | tr '\n' ' ')" \
    "probes: $(running /usr/local/bin/toolbox-probe | tr '\n' ' ')" "unit cgroup: $(find "$unit_cg" 2>/dev/null | tr '\n' ' ')"
stopped || journalctl -q -u toolbox.service --no-pager | tail -15 | sed 's/^/    /'
check "systemctl stop cancels running jobs and leaves no job cgroup or process, prepared jails included" stopped

echo "== measure: toolbox run --local -- true from a login session (scope request included) and from a delegated cgroup"
runs=${MEASURE_RUNS:-20}
session=$(as root "bash $P/measure.sh session $runs")
delegated=$(timeout 300 systemd-run --quiet --scope -p Delegate=yes bash "$P/measure.sh" delegated "$runs")
say "session: $(echo $session)" "delegated: $(echo $delegated)"
median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
s_med=$(echo "$session" | median)
d_med=$(echo "$delegated" | median)
if [ -n "$s_med" ] && [ -n "$d_med" ]; then
    echo "MEASURE placement ($runs runs each, medians): login session ${s_med} us, delegated ${d_med} us, difference $((s_med - d_med)) us, ratio $(awk -v a="$s_med" -v b="$d_med" 'BEGIN {printf "%.2f", a / b}')"
fi

echo "VMTEST-SUMMARY $passed $failed"
