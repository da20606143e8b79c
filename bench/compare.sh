#!/usr/bin/env bash
# Pass-through Dispatch, side by side: tyk-dispatcher (log_calls off, and its default config)
# against the servers a Tyk user would write instead, a plain grpc-go Dispatcher and the
# tutorial's Python grpc.aio server, under h2load.
#
#   bench/compare.sh            # from anywhere; needs cargo, Go, python3 (with venv), taskset
#
# Each server runs alone on CPU $SERVER_CPU (one worker: GOMAXPROCS=1 for Go; the dispatcher
# sizes its runtime from its CPU affinity), h2load on CPU $LOADGEN_CPU with $CONNECTIONS
# connections x $STREAMS streams and the seed's Dispatch payload; $WARMUP_SECS s of warm-up,
# then $DURATION_SECS s measured; once as fast as each server goes ("closed") and once at each
# fixed rate of $RATES. $ROUNDS interleaved rounds (the order of the servers rotates), medians.
# Every run checks h2load's counts, the DATA bytes of the replies (a gRPC error has none) and a
# probe call's reply before and after. The driver is bench/compare.py.
#
# Prints the tables (requests/s, server CPU µs per call, client p50/p99), the CPU ratios against
# grpc-go with the goals, and throughput against Python; writes target/bench/compare.json.
# Exit status: 0; 1 when the default config's throughput is below $MIN_RATIO x Python's; 2 when
# a run failed.
#
# Settings (env): ROUNDS=5 RATES=closed,10000 SERVERS=rust,rust-logged,go,python MIN_RATIO=10
# CONNECTIONS=16 STREAMS=8 WARMUP_SECS=2 DURATION_SECS=10 SERVER_CPU=0 LOADGEN_CPU=1
# READY_SECS=60 WAIT_IDLE_SECS=60; SKIP_BUILD=1 uses the binaries already built.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-5}"
RATES="${RATES:-closed,10000}"
SERVERS="${SERVERS:-rust,rust-logged,go,python}"
MIN_RATIO="${MIN_RATIO:-10}"
CONNECTIONS="${CONNECTIONS:-16}"
STREAMS="${STREAMS:-8}"
WARMUP_SECS="${WARMUP_SECS:-2}"
DURATION_SECS="${DURATION_SECS:-10}"
SERVER_CPU="${SERVER_CPU:-0}"
LOADGEN_CPU="${LOADGEN_CPU:-1}"
READY_SECS="${READY_SECS:-60}"
WAIT_IDLE_SECS="${WAIT_IDLE_SECS:-60}"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$TARGET_DIR/bench"
VENV="$TARGET_DIR/bench-venv"
DISPATCHER="$TARGET_DIR/release/tyk-dispatcher"
LOADGEN="$TARGET_DIR/release/examples/loadgen"
mkdir -p "$OUT"

log() { printf 'compare: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

for tool in cargo python3 taskset; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
for cpu in "$SERVER_CPU" "$LOADGEN_CPU"; do
    taskset -c "$cpu" true 2>/dev/null || die "cannot pin to CPU $cpu (this machine has $(nproc))"
done
if ! command -v h2load >/dev/null; then
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null || die "h2load is not installed (Debian: nghttp2-client)"
    log "installing h2load (nghttp2-client) with apt"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client; } >&2 \
        || die "apt-get install nghttp2-client failed"
fi

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building release binaries"
    timeout 1800 cargo build --release --bin tyk-dispatcher --example loadgen >&2
fi
[ -x "$DISPATCHER" ] && [ -x "$LOADGEN" ] || die "missing $DISPATCHER or $LOADGEN"
GO_DISPATCHER="$(bench/go-dispatcher/build.sh)" || die "building the grpc-go Dispatcher failed"

STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum bench/requirements.txt | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    log "setting up $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    timeout 600 "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
    echo "$WANT" >"$STAMP"
fi

source "$ROOT/bench/lib.sh"   # busy_percent, wait_idle
wait_idle
[ "$IDLE_REACHED" -eq 1 ] || log "warning: the machine did not go idle; other work may skew the figures"

exec "$VENV/bin/python" bench/compare.py \
    --dispatcher "$DISPATCHER" --go-dispatcher "$GO_DISPATCHER" \
    --python-server bench/baseline_server.py --loadgen "$LOADGEN" \
    --servers "$SERVERS" --rounds "$ROUNDS" --rates "$RATES" \
    --connections "$CONNECTIONS" --streams "$STREAMS" \
    --warmup-secs "$WARMUP_SECS" --duration-secs "$DURATION_SECS" \
    --server-cpu "$SERVER_CPU" --loadgen-cpu "$LOADGEN_CPU" --ready-secs "$READY_SECS" \
    --min-python-ratio "$MIN_RATIO" --json "$OUT/compare.json"
