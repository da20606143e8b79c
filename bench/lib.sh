# Shared by the benchmark scripts (sourced): stopping what they started, and waiting for an idle
# machine before a measured run, since other work takes CPU from the pinned processes and skews
# the figures.

# Every process a script starts goes into PIDS; stop_all (on exit) stops them, newest first.
PIDS=()

# Stops one process: TERM, up to 10 s, then KILL; reaps it.
stop_pid() {
    local pid="$1"
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Stops everything in PIDS, newest first (a client before the server it talks to).
stop_all() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}"
    done
}

# Busy share of all CPUs over the next second, in percent, from /proc/stat.
busy_percent() {
    local a b
    a=$(head -1 /proc/stat)
    sleep 1
    b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x); split(b, y); busy = 0; idle = 0
        for (i = 2; i <= 9 && i <= n; i++) {
            d = y[i] - x[i]
            if (i == 5 || i == 6) idle += d; else busy += d
        }
        print (busy + idle > 0) ? int(100 * busy / (busy + idle)) : 0
    }'
}

# Waits up to $WAIT_IDLE_SECS for three seconds in a row under 10% busy. Always succeeds (the
# scripts run under `set -e`); IDLE_REACHED says 1 when the machine went idle, else 0.
wait_idle() {
    local waited=0 quiet=0
    while [ "$quiet" -lt 3 ] && [ "$waited" -lt "$WAIT_IDLE_SECS" ]; do
        if [ "$(busy_percent)" -le 10 ]; then quiet=$((quiet + 1)); else quiet=0; fi
        waited=$((waited + 1))
    done
    IDLE_REACHED=$(( quiet >= 3 ))
}
