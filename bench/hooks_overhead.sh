#!/usr/bin/env bash
# Hook pipeline cost: pass-through Dispatch throughput against a pipeline of three header steps,
# API-key authentication, three CEL conditions with a computed header (bench/hooks/cel.toml) and
# an OPA decision with a warm cache (bench/hooks/opa.toml, a real OPA server on CPU 1 beside the
# load), one after the other under the load of compare.sh (the tutorial's payload, 16
# connections x 8 streams, warm-up then 10 s; server on CPU 0, load generator on CPU 1).
# Per-call logging is off in all of them, so only the hooks differ.
#
#   bench/hooks_overhead.sh     # needs cargo, go, taskset and curl; SKIP_BUILD=1 reuses binaries
#
# The machine's speed drifts from minute to minute, so the three run ROUNDS times (default 3),
# even rounds in reverse order, and the summary takes each configuration's median.
# Prints calls/s and server CPU µs per call of each run, the medians and their ratios to
# pass-through; exits 1 when the header pipeline keeps under MIN_HEADERS (0.8), API-key auth
# under MIN_API_KEY (0.5), the CEL hook under MIN_CEL (0.7) or the cached OPA step under MIN_OPA
# (0.6) of pass-through throughput.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MIN_HEADERS="${MIN_HEADERS:-0.8}"
MIN_API_KEY="${MIN_API_KEY:-0.5}"
MIN_CEL="${MIN_CEL:-0.7}"
MIN_OPA="${MIN_OPA:-0.6}"
CONFIGS="${CONFIGS:-pass_through headers api_key cel opa}"
ROUNDS="${ROUNDS:-3}"
DURATION_SECS="${DURATION_SECS:-10}"
OUT="$ROOT/target/bench/hooks"
rm -rf "$OUT"
mkdir -p "$OUT"
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --bin tyk-dispatcher --example loadgen >&2
fi
DISPATCHER="$ROOT/target/release/tyk-dispatcher"
LOADGEN="$ROOT/target/release/examples/loadgen"

PID=""
OPA_PID=""
trap '[ -z "$PID" ] || kill "$PID" 2>/dev/null || true; [ -z "$OPA_PID" ] || kill "$OPA_PID" 2>/dev/null || true' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The OPA server of the `opa` configuration, on the load generator's CPU.
if [[ " $CONFIGS " == *" opa "* ]]; then
    OPA_BIN="${OPA_BIN:-$(tests/tools/opa.sh)}"
    OPA_PORT="$(free_port)"
    taskset -c 1 "$OPA_BIN" run --server --addr "127.0.0.1:$OPA_PORT" --log-level error --skip-version-check \
        bench/hooks/opa >"$OUT/opa.log" 2>&1 &
    OPA_PID=$!
    for _ in $(seq 100); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$OPA_PORT/health" 2>/dev/null && break
        sleep 0.1
    done
    sed "s/OPA_PORT/$OPA_PORT/" bench/hooks/opa.toml >"$OUT/opa.toml"
fi

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
        --warmup-secs 2 --duration-secs "$DURATION_SECS" --server-pid "$PID" --label "$label" --json "$@" >"$OUT/$label.json"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}

for round in $(seq "$ROUNDS"); do
    order="$CONFIGS"
    [ $((round % 2)) -eq 1 ] || order="$(echo "$CONFIGS" | tr ' ' '\n' | tac | tr '\n' ' ')"
    for config in $order; do
        case "$config" in
            pass_through) run "pass_through-$round" "" ;;
            headers) run "headers-$round" bench/hooks/headers.toml --any-reply ;;
            api_key) run "api_key-$round" bench/hooks/api_key.toml --hook-type CustomKeyCheck --hook-name MyAuth --any-reply ;;
            cel) run "cel-$round" bench/hooks/cel.toml --any-reply ;;
            opa) run "opa-$round" "$OUT/opa.toml" --any-reply ;;
        esac
    done
done

python3 - "$OUT" "$ROUNDS" "$CONFIGS" "headers=$MIN_HEADERS api_key=$MIN_API_KEY cel=$MIN_CEL opa=$MIN_OPA" <<'PY'
import json, statistics, sys
out, rounds, configs = sys.argv[1], int(sys.argv[2]), tuple(sys.argv[3].split())
minimum = {k: float(v) for k, v in (pair.split("=") for pair in sys.argv[4].split())}
runs = {(c, n): json.load(open(f"{out}/{c}-{n}.json")) for c in configs for n in range(1, rounds + 1)}
print(f"{'run':<16} {'calls/s':>9} {'CPU µs/call':>12}")
for (c, n), r in sorted(runs.items(), key=lambda kv: (kv[0][1], configs.index(kv[0][0]))):
    print(f"{c}-{n:<{15 - len(c)}} {r['throughput']:>9.0f} {r.get('server_cpu_us_per_call') or 0:>12.1f}")
median = {c: {k: statistics.median(runs[(c, n)].get(k) or 0 for n in range(1, rounds + 1))
              for k in ("throughput", "server_cpu_us_per_call")} for c in configs}
base = median["pass_through"]["throughput"]
print(f"\n{'median':<16} {'calls/s':>9} {'CPU µs/call':>12} {'vs pass-through':>16}")
for c in configs:
    m = median[c]
    print(f"{c:<16} {m['throughput']:>9.0f} {m['server_cpu_us_per_call']:>12.1f} {m['throughput'] / base:>16.2f}")
required = {c: minimum[c] for c in configs if c in minimum}
ok = all(median[c]["throughput"] / base >= floor for c, floor in required.items())
print("required: " + ", ".join(f"{c} >= {floor}" for c, floor in required.items()) + f": {'pass' if ok else 'FAIL'}")
json.dump({"rounds": rounds, "median": median, "pass": ok}, open(f"{out}/summary.json", "w"), indent=2)
sys.exit(0 if ok else 1)
PY
