#!/usr/bin/env bash
# Hook pipeline cost: pass-through Dispatch throughput against a pipeline of three header steps
# and against API-key authentication, one after the other under the load of compare.sh (the
# tutorial's payload, 16 connections x 8 streams, warm-up then 10 s; server on CPU 0, load
# generator on CPU 1). Per-call logging is off in all three, so only the hooks differ.
#
#   bench/hooks_overhead.sh     # needs cargo, taskset and curl; SKIP_BUILD=1 reuses binaries
#
# Prints calls/s and server CPU µs per call of each, and the ratios to pass-through; exits 1 when
# the header pipeline keeps under MIN_HEADERS (0.8) or API-key auth under MIN_API_KEY (0.5) of
# pass-through throughput.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MIN_HEADERS="${MIN_HEADERS:-0.8}"
MIN_API_KEY="${MIN_API_KEY:-0.5}"
OUT="$ROOT/target/bench/hooks"
mkdir -p "$OUT"
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --bin tyk-dispatcher --example loadgen >&2
fi
DISPATCHER="$ROOT/target/release/tyk-dispatcher"
LOADGEN="$ROOT/target/release/examples/loadgen"

PID=""
trap '[ -z "$PID" ] || kill "$PID" 2>/dev/null || true' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# run LABEL CONFIG_FILE|"" LOADGEN_ARGS...: one server, one measured load, result in $OUT/LABEL.json.
run() {
    local label="$1" config="$2"; shift 2
    local port admin
    port="$(free_port)"; admin="$(free_port)"
    env -i PATH="$PATH" TYK_DISPATCHER_LISTEN="127.0.0.1:$port" TYK_DISPATCHER_ADMIN_LISTEN="127.0.0.1:$admin" \
        TYK_DISPATCHER_LOG_CALLS=false ${config:+TYK_DISPATCHER_CONFIG="$config"} \
        taskset -c 0 "$DISPATCHER" >"$OUT/$label.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$admin/readyz" 2>/dev/null && break
        sleep 0.1
    done
    echo "hooks_overhead: $label" >&2
    taskset -c 1 "$LOADGEN" --target "http://127.0.0.1:$port" --connections 16 --streams 8 \
        --warmup-secs 2 --duration-secs 10 --server-pid "$PID" --label "$label" --json "$@" >"$OUT/$label.json"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}

run pass_through ""
run headers bench/hooks/headers.toml --any-reply
run api_key bench/hooks/api_key.toml --hook-type CustomKeyCheck --hook-name MyAuth --any-reply

python3 - "$OUT" "$MIN_HEADERS" "$MIN_API_KEY" <<'PY'
import json, sys
out, min_headers, min_api_key = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
runs = {n: json.load(open(f"{out}/{n}.json")) for n in ("pass_through", "headers", "api_key")}
base = runs["pass_through"]["throughput"]
print(f"{'config':<14} {'calls/s':>9} {'CPU µs/call':>12} {'vs pass-through':>16}")
for name, r in runs.items():
    print(f"{name:<14} {r['throughput']:>9.0f} {r.get('server_cpu_us_per_call') or 0:>12.1f} {r['throughput'] / base:>16.2f}")
ok = runs["headers"]["throughput"] / base >= min_headers and runs["api_key"]["throughput"] / base >= min_api_key
print(f"required: headers >= {min_headers}, api_key >= {min_api_key}: {'pass' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
