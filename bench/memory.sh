#!/usr/bin/env bash
# Memory of tyk-dispatcher with its default config: idle, at the peak of a burst of large calls,
# and over a soak at a steady load.
#
#   bench/memory.sh             # idle + burst (about a minute); SOAK_SECS=600 adds the soak
#
# 1. idle: VmRSS (and its anonymous and file-backed parts) $IDLE_SECS s after start, no calls;
# 2. burst: 16 concurrent pass-through Pre calls with 20 MiB bodies on one connection
#    (max_in_flight_bytes = 384 MiB); the peak is the process's VmHWM, read after the calls;
#    then VmRSS $AFTER_SECS s later;
# 3. soak (SOAK_SECS > 0): the capacity is measured first (h2load closed loop, 16 x 8, $CAP_SECS
#    s), then h2load holds $SOAK_SHARE of it (open loop, --rps) for SOAK_SECS; VmRSS is sampled
#    every 10 s, and the report compares minute 2 with the last sample.
# The server runs on CPU $SERVER_CPU, the clients on CPU $LOADGEN_CPU. Prints a table, writes
# target/bench/memory.json; exit 2 when something failed.
#
# Settings (env): IDLE_SECS=10 AFTER_SECS=30 SOAK_SECS=0 SOAK_SHARE=0.8 CAP_SECS=10
# SERVER_CPU=0 LOADGEN_CPU=1 WAIT_IDLE_SECS=30 SKIP_BUILD=1 (use the binaries already built)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

IDLE_SECS="${IDLE_SECS:-10}"
AFTER_SECS="${AFTER_SECS:-30}"
SOAK_SECS="${SOAK_SECS:-0}"
SOAK_SHARE="${SOAK_SHARE:-0.8}"
CAP_SECS="${CAP_SECS:-10}"
SERVER_CPU="${SERVER_CPU:-0}"
LOADGEN_CPU="${LOADGEN_CPU:-1}"
WAIT_IDLE_SECS="${WAIT_IDLE_SECS:-30}"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$TARGET_DIR/bench/memory"
DISPATCHER="$TARGET_DIR/release/tyk-dispatcher"
LOADGEN="$TARGET_DIR/release/examples/loadgen"
mkdir -p "$OUT"

log() { printf 'memory: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

for tool in cargo python3 taskset curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
if [ "$SOAK_SECS" -gt 0 ] && ! command -v h2load >/dev/null; then
    die "the soak needs h2load (Debian: nghttp2-client; bench/compare.sh installs it)"
fi
if [ -z "${SKIP_BUILD:-}" ]; then
    log "building release binaries"
    timeout 1800 cargo build --release --bin tyk-dispatcher --example loadgen >&2
fi
[ -x "$DISPATCHER" ] && [ -x "$LOADGEN" ] || die "missing $DISPATCHER or $LOADGEN"

source "$ROOT/bench/lib.sh"   # PIDS, stop_pid, stop_all, busy_percent, wait_idle
trap stop_all EXIT
trap 'exit 130' INT TERM

"$LOADGEN" --dump-payload "$OUT/seed.bin"
python3 bench/burst_payload.py "$OUT/seed.bin" "$OUT/burst.bin" 20
printf '\0' >"$OUT/seed.grpc"
python3 -c 'import sys; n = len(open(sys.argv[1], "rb").read()); sys.stdout.buffer.write(n.to_bytes(4, "big"))' \
    "$OUT/seed.bin" >>"$OUT/seed.grpc"
cat "$OUT/seed.bin" >>"$OUT/seed.grpc"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
status_kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }

start_server() {
    PORT="$(free_port)"
    local admin
    admin="$(free_port)"
    env -i PATH="$PATH" \
        TYK_DISPATCHER_LISTEN="127.0.0.1:$PORT" TYK_DISPATCHER_ADMIN_LISTEN="127.0.0.1:$admin" \
        TYK_DISPATCHER_MAX_IN_FLIGHT_BYTES=$((384 << 20)) \
        taskset -c "$SERVER_CPU" "$DISPATCHER" >"$OUT/server.log" 2>&1 &
    SERVER=$!
    PIDS+=("$SERVER")
    for _ in $(seq 300); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$admin/readyz" 2>/dev/null && return
        kill -0 "$SERVER" 2>/dev/null || die "the server exited: $(tail -n 5 "$OUT/server.log")"
        sleep 0.1
    done
    die "the server was not ready in 30 s"
}

h2load_run() { # seconds, extra h2load options...
    local secs="$1"
    shift
    taskset -c "$LOADGEN_CPU" h2load -c 16 -m 8 -t 1 -D "$secs" -d "$OUT/seed.grpc" "$@" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$PORT/coprocess.Dispatcher/Dispatch"
}

wait_idle
start_server
sleep "$IDLE_SECS"
IDLE_RSS="$(status_kib "$SERVER" VmRSS)"
IDLE_ANON="$(status_kib "$SERVER" RssAnon)"
IDLE_FILE="$(status_kib "$SERVER" RssFile)"
log "idle: VmRSS $IDLE_RSS KiB (anonymous $IDLE_ANON, file-backed $IDLE_FILE)"

log "burst: 16 calls of 20 MiB on one connection"
taskset -c "$LOADGEN_CPU" "$LOADGEN" --target "http://127.0.0.1:$PORT" --payload "$OUT/burst.bin" \
    --connections 1 --streams 16 --warmup-secs 0 --duration-secs 0.01 --grace-secs 60 \
    --json >"$OUT/burst.json" || true
python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(not (r["errors_total"] == 0 and r["calls"] + r["tail_calls"] >= 16))' \
    "$OUT/burst.json" || die "the burst failed: $(cat "$OUT/burst.json")"
PEAK_RSS="$(status_kib "$SERVER" VmHWM)"
sleep "$AFTER_SECS"
AFTER_RSS="$(status_kib "$SERVER" VmRSS)"
log "burst: peak VmRSS $PEAK_RSS KiB, $AFTER_SECS s later $AFTER_RSS KiB"

SOAK_RATE=0 CAPACITY=0
: >"$OUT/soak.tsv"
if [ "$SOAK_SECS" -gt 0 ]; then
    CAPACITY="$(h2load_run "$CAP_SECS" | awk '/^finished in/ { print int($4) }')"
    [ "${CAPACITY:-0}" -gt 0 ] || die "could not measure the capacity"
    SOAK_RATE="$(awk -v c="$CAPACITY" -v s="$SOAK_SHARE" 'BEGIN { print int(c * s) }')"
    log "soak: capacity $CAPACITY calls/s; $SOAK_RATE calls/s for $SOAK_SECS s"
    h2load_run "$SOAK_SECS" "--rps=$(awk -v r="$SOAK_RATE" 'BEGIN { print r / 16 }')" >"$OUT/soak-h2load.txt" &
    LOAD=$!
    PIDS+=("$LOAD")
    started=$(date +%s)
    while kill -0 "$LOAD" 2>/dev/null; do
        sleep 10
        kill -0 "$LOAD" 2>/dev/null || break
        printf '%s\t%s\n' "$(($(date +%s) - started))" "$(status_kib "$SERVER" VmRSS)" >>"$OUT/soak.tsv"
    done
    wait "$LOAD" || die "h2load failed during the soak: $(tail -n 5 "$OUT/soak-h2load.txt")"
    grep -q ' 0 failed, 0 errored' "$OUT/soak-h2load.txt" \
        || die "calls failed during the soak: $(grep '^requests:' "$OUT/soak-h2load.txt")"
fi
stop_pid "$SERVER"

python3 - "$OUT" "$IDLE_RSS" "$IDLE_ANON" "$IDLE_FILE" "$PEAK_RSS" "$AFTER_RSS" "$CAPACITY" "$SOAK_RATE" <<'EOF'
import json, os, sys

out = sys.argv[1]
idle, anon, file_backed, peak, after, capacity, rate = (int(v) for v in sys.argv[2:9])
mib = lambda kib: kib / 1024
print(f"\nidle VmRSS            {mib(idle):7.1f} MiB (anonymous {mib(anon):.1f}, file-backed {mib(file_backed):.1f})")
print(f"burst peak VmRSS      {mib(peak):7.1f} MiB (16 x 20 MiB Pre calls on one connection)")
print(f"VmRSS after the burst {mib(after):7.1f} MiB")
result = {"idle_rss_kib": idle, "idle_anon_kib": anon, "idle_file_kib": file_backed,
          "burst_peak_rss_kib": peak, "after_burst_rss_kib": after}
samples = [tuple(int(v) for v in line.split("\t")) for line in open(os.path.join(out, "soak.tsv"))]
if samples:
    minute2 = min(samples, key=lambda s: abs(s[0] - 120))
    last = samples[-1]
    print(f"soak at {rate} calls/s ({rate / capacity:.0%} of {capacity}): VmRSS {mib(minute2[1]):.1f} MiB"
          f" at {minute2[0]} s, {mib(last[1]):.1f} MiB at {last[0]} s"
          f" ({mib(last[1] - minute2[1]):+.1f} MiB)")
    result.update(soak_rate=rate, capacity=capacity, soak_samples=samples,
                  soak_growth_kib=last[1] - minute2[1])
json.dump(result, open(os.path.join(out, "..", "memory.json"), "w"), indent=2)
EOF
