#!/usr/bin/env bash
# Memory returned after a burst of large calls, and CPU per call, under three allocators:
#   system   glibc malloc as it comes: the default build run with GLIBC_TUNABLES="" (set, so the
#            binary leaves malloc untuned; see src/malloc_tuning.rs)
#   tuned    the default build as shipped: it re-executes itself with GLIBC_TUNABLES (a fixed
#            mmap threshold, so large buffers are always mmapped and unmapped on free, a trim
#            threshold and two arenas)
#   mimalloc the binary built with `--features mimalloc` (GLIBC_TUNABLES="" as well)
#
#   bench/allocator.sh          # needs cargo, python3, taskset, curl
#
# Each round, for each allocator in turn (the order rotates between rounds): start the server
# (default config, max_in_flight_bytes 384 MiB) on CPU $SERVER_CPU, read VmRSS after
# $IDLE_SECS s idle; send a burst of 16 concurrent Dispatch calls of 20 MiB each on one
# connection; read VmRSS $AFTER_SECS s later; then measure CPU per call of the seed payload
# (16 connections x 8 streams, 2 s warm-up + $DURATION_SECS s) with the load generator on
# CPU $LOADGEN_CPU. Prints the medians over $ROUNDS rounds and writes target/bench/allocator.json.
#
# Settings (env): ROUNDS=5 IDLE_SECS=10 AFTER_SECS=30 DURATION_SECS=5 SERVER_CPU=0 LOADGEN_CPU=1
# SKIP_BUILD=1 uses the binaries already built.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-5}"
IDLE_SECS="${IDLE_SECS:-10}"
AFTER_SECS="${AFTER_SECS:-30}"
DURATION_SECS="${DURATION_SECS:-5}"
SERVER_CPU="${SERVER_CPU:-0}"
LOADGEN_CPU="${LOADGEN_CPU:-1}"
WAIT_IDLE_SECS="${WAIT_IDLE_SECS:-30}"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$TARGET_DIR/bench/allocator"
SYSTEM_BIN="$OUT/tyk-dispatcher-system"
MIMALLOC_BIN="$OUT/tyk-dispatcher-mimalloc"
LOADGEN="$TARGET_DIR/release/examples/loadgen"
mkdir -p "$OUT"

log() { printf 'allocator: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

# Both binaries from one target directory (only this crate is rebuilt between them), copied
# out; the system build is built last, so target/release holds the default binary again.
if [ -z "${SKIP_BUILD:-}" ]; then
    log "building the mimalloc binary, then the system-allocator binary and the load generator"
    timeout 1800 cargo build --release --locked --bin tyk-dispatcher --features mimalloc >&2
    cp "$TARGET_DIR/release/tyk-dispatcher" "$MIMALLOC_BIN"
    timeout 1800 cargo build --release --locked --bin tyk-dispatcher --example loadgen >&2
    cp "$TARGET_DIR/release/tyk-dispatcher" "$SYSTEM_BIN"
fi
for bin in "$SYSTEM_BIN" "$MIMALLOC_BIN" "$LOADGEN"; do
    [ -x "$bin" ] || die "missing $bin"
done

# The 20 MiB payload: the seed Object's fields plus a 20 MiB raw_body (field 14 of request).
PAYLOAD="$OUT/burst.bin"
"$LOADGEN" --dump-payload "$OUT/seed.bin"
python3 bench/burst_payload.py "$OUT/seed.bin" "$PAYLOAD"

source "$ROOT/bench/lib.sh"   # PIDS, stop_pid, stop_all, busy_percent, wait_idle
trap stop_all EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# One measurement of allocator $1 in round $2: result in $OUT/$1-$2.json.
measure() {
    local name="$1" round="$2" bin="$SYSTEM_BIN" port admin pid idle after
    local -a tuning=()
    case "$name" in
        system) tuning=(GLIBC_TUNABLES=) ;;
        mimalloc) bin="$MIMALLOC_BIN"; tuning=(GLIBC_TUNABLES=) ;;
    esac
    port="$(free_port)"
    admin="$(free_port)"
    env -i PATH="$PATH" "${tuning[@]}" \
        TYK_DISPATCHER_LISTEN="127.0.0.1:$port" TYK_DISPATCHER_ADMIN_LISTEN="127.0.0.1:$admin" \
        TYK_DISPATCHER_MAX_IN_FLIGHT_BYTES=$((384 << 20)) \
        taskset -c "$SERVER_CPU" "$bin" >"$OUT/$name-$round.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 300); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$admin/readyz" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || die "$name exited: $(tail -n 5 "$OUT/$name-$round.log")"
        sleep 0.1
    done
    sleep "$IDLE_SECS"
    idle="$(rss_kib "$pid")"
    # 16 slots, each sending one 20 MiB call (the window closes before any second one).
    taskset -c "$LOADGEN_CPU" "$LOADGEN" --target "http://127.0.0.1:$port" --payload "$PAYLOAD" \
        --connections 1 --streams 16 --warmup-secs 0 --duration-secs 0.01 --grace-secs 60 \
        --json >"$OUT/$name-$round-burst.json" || true
    # The calls all end after the 10 ms window (the load generator then exits 1 for an empty
    # window): what counts is that all 16 came back without an error.
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(not (r["errors_total"] == 0 and r["calls"] + r["tail_calls"] >= 16))' \
        "$OUT/$name-$round-burst.json" || die "$name: the burst failed: $(cat "$OUT/$name-$round-burst.json")"
    sleep "$AFTER_SECS"
    after="$(rss_kib "$pid")"
    taskset -c "$LOADGEN_CPU" "$LOADGEN" --target "http://127.0.0.1:$port" \
        --connections 16 --streams 8 --warmup-secs 2 --duration-secs "$DURATION_SECS" \
        --server-pid "$pid" --label "$name" --json >"$OUT/$name-$round-load.json" \
        || die "$name: the load run failed"
    stop_pid "$pid"
    python3 - "$OUT/$name-$round-load.json" "$idle" "$after" >"$OUT/$name-$round.json" <<'EOF'
import json, sys
load = json.load(open(sys.argv[1]))
print(json.dumps({
    "idle_rss_mib": int(sys.argv[2]) / 1024,
    "after_burst_rss_mib": int(sys.argv[3]) / 1024,
    "cpu_us_per_call": load.get("server_cpu_us_per_call"),
    "calls_per_sec": load["throughput"],
    "other_cpu_util": load.get("other_cpu_util"),
}))
EOF
    log "round $round $name: $(cat "$OUT/$name-$round.json")"
}

NAMES=(system tuned mimalloc)
for round in $(seq "$ROUNDS"); do
    wait_idle
    for i in 0 1 2; do
        measure "${NAMES[$(((i + round) % 3))]}" "$round"
    done
done

python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
names = ("system", "tuned", "mimalloc")
results = {}
for name in names:
    runs = [json.load(open(os.path.join(out, f"{name}-{r}.json"))) for r in range(1, rounds + 1)]
    results[name] = {key: statistics.median(run[key] for run in runs)
                     for key in ("idle_rss_mib", "after_burst_rss_mib", "cpu_us_per_call", "calls_per_sec")}
base_cpu = results["system"]["cpu_us_per_call"]
print(f"\n{'allocator':<10} {'idle MiB':>9} {'after burst MiB':>16} {'after/idle':>11} {'CPU µs/call':>12} {'vs system':>10} {'calls/s':>9}")
for name, r in results.items():
    r["after_over_idle"] = r["after_burst_rss_mib"] / r["idle_rss_mib"]
    r["cpu_vs_system"] = r["cpu_us_per_call"] / base_cpu
    print(f"{name:<10} {r['idle_rss_mib']:>9.1f} {r['after_burst_rss_mib']:>16.1f} {r['after_over_idle']:>10.2f}x"
          f" {r['cpu_us_per_call']:>12.1f} {r['cpu_vs_system']:>9.3f}x {r['calls_per_sec']:>9.0f}")
print(f"\nmedians of {rounds} interleaved rounds; goal: after/idle <= 2x with CPU within 3% of system")
json.dump(results, open(os.path.join(out, "..", "allocator.json"), "w"), indent=2)
EOF
