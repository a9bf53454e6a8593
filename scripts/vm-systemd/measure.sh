# measure.sh session|delegated RUNS: the microseconds each `toolbox run --local -- true`
# takes, one figure a line, for the systemd tier's placement measurement (checks.sh).
#   session    from where it is started (a login session: toolbox asks systemd for a scope)
#   delegated  from a cgroup of its own inside the delegated scope this runs in (systemd-run
#              --scope -p Delegate=yes): toolbox uses it as it is
# Each run's toolbox waits on a fifo until the clock starts, so its start-up (and, when
# delegated, the move into its cgroup) is not counted; bash's EPOCHREALTIME reads the clock
# without a fork.
mode=$1
runs=$2
fifo=$(mktemp -u /tmp/measure.XXXXXX)
mkfifo "$fifo"
if [ "$mode" = delegated ]; then
    scope=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
    mkdir "$scope/driver"
    echo $$ >"$scope/driver/cgroup.procs"
    echo "+memory +pids +cpu" >"$scope/cgroup.subtree_control"
fi
micros() { local t=${EPOCHREALTIME/./}; echo "$t"; }
for ((i = 0; i < runs; i++)); do
    if [ "$mode" = delegated ]; then
        leaf="$scope/run$i"
        mkdir "$leaf"
        sh -c "echo \$\$ >$leaf/cgroup.procs; read go <$fifo; exec toolbox run --local -C /srv/share/work -- true" &
        # (cgroupfs files have no size: read them.)
        for ((t = 0; t < 100; t++)); do
            [ -n "$(cat "$leaf/cgroup.procs")" ] && break
            sleep 0.05
        done
    else
        sh -c "read go <$fifo; exec toolbox run --local -C /srv/share/work -- true" &
    fi
    sleep 0.5
    start=$(micros)
    echo go >"$fifo"
    wait $!
    end=$(micros)
    echo $((end - start))
    if [ "$mode" = delegated ]; then
        find "$leaf" -depth -type d -exec rmdir {} + 2>/dev/null
    fi
done
rm -f "$fifo"
