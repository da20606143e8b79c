#!/usr/bin/env bash
# Telemetry overhead: pass-through Dispatch throughput of tyk-dispatcher with tracing exported
# at 100% sampling to a live OTLP/gRPC receiver, against the same server with telemetry off.
#
#   bench/telemetry_overhead.sh     # from anywhere; needs cargo, python3, taskset and curl
#
# Configurations, each a fresh dispatcher on CPU $SERVER_CPU under the load of compare.sh
# (the tutorial's Dispatch payload, $CONNECTIONS connections x $STREAMS calls in flight,
# $WARMUP_SECS s of warm-up, then $DURATION_SECS s measured; load generator on CPU $LOADGEN_CPU):
#   off      TYK_DISPATCHER_LOG_CALLS=false, no OTLP endpoint. Metrics cannot be turned off in
#            this server, so they are on in every configuration.
#   on       TYK_DISPATCHER_LOG_CALLS=false, OTEL_EXPORTER_OTLP_ENDPOINT pointing at
#            examples/otlp_sink.rs (OTLP/gRPC, counts and discards, on CPU $LOADGEN_CPU with the
#            load generator), default sampler parentbased_always_on (every call is a root span,
#            so 100% sampled), span queue $SPAN_QUEUE_SIZE, batches of $SPAN_BATCH_SIZE.
#   default  the default config (one INFO line per call to stdout, here a file), no tracing;
#            informational only.
# After the "on" run it reads tyk_dispatcher_spans_exported_total and _dropped_total from the
# admin /metrics and the sink's count. A run that dropped spans, whose sink did not receive
# every exported span, or that exported fewer spans than the calls it measured, is invalid.
# Prints a table, writes target/bench/telemetry_overhead.json, and exits 1 when on/off
# throughput is below 1 - MAX_OVERHEAD_PCT/100 or an "on" run is invalid (2 when a run failed).
#
# Settings (env): MAX_OVERHEAD_PCT=15 ROUNDS=3 CONFIGS="off on default" CONNECTIONS=16
# STREAMS=8 WARMUP_SECS=2 DURATION_SECS=10 SERVER_CPU=0 LOADGEN_CPU=1 SINK_CPU=$LOADGEN_CPU
# READY_SECS=60 SPAN_QUEUE_SIZE=65536 SPAN_BATCH_SIZE=512 SPAN_BATCH_DELAY_MS=1000
# FLUSH_SECS=15; SKIP_BUILD=1 uses the binaries already built. With ROUNDS > 1 every round runs
# each configuration once (even rounds in reverse order) and the summary uses the median of
# each configuration's figures.
# Other work on the machine skews the figures, so the script first waits up to
# WAIT_IDLE_SECS=60 for 3 s in a row under 10% busy, and repeats a run (up to ATTEMPTS=3 in
# all) during which other work took more than MAX_OTHER_CPU=0.1 of a core (the sink's own CPU
# is not counted as other work).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MAX_OVERHEAD_PCT="${MAX_OVERHEAD_PCT:-15}"
ROUNDS="${ROUNDS:-3}"
CONFIGS="${CONFIGS:-off on default}"
CONNECTIONS="${CONNECTIONS:-16}"
STREAMS="${STREAMS:-8}"
WARMUP_SECS="${WARMUP_SECS:-2}"
DURATION_SECS="${DURATION_SECS:-10}"
SERVER_CPU="${SERVER_CPU:-0}"
LOADGEN_CPU="${LOADGEN_CPU:-1}"
SINK_CPU="${SINK_CPU:-$LOADGEN_CPU}"
READY_SECS="${READY_SECS:-60}"
ATTEMPTS="${ATTEMPTS:-3}"
MAX_OTHER_CPU="${MAX_OTHER_CPU:-0.1}"
WAIT_IDLE_SECS="${WAIT_IDLE_SECS:-60}"
SPAN_QUEUE_SIZE="${SPAN_QUEUE_SIZE:-65536}"
SPAN_BATCH_SIZE="${SPAN_BATCH_SIZE:-512}"
SPAN_BATCH_DELAY_MS="${SPAN_BATCH_DELAY_MS:-1000}"
FLUSH_SECS="${FLUSH_SECS:-15}"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$TARGET_DIR/bench"
DISPATCHER="$TARGET_DIR/release/tyk-dispatcher"
LOADGEN="$TARGET_DIR/release/examples/loadgen"
SINK="$TARGET_DIR/release/examples/otlp_sink"
RUNS="$OUT/telemetry-runs"
mkdir -p "$OUT"
rm -rf "$RUNS"
mkdir -p "$RUNS"

log() { printf 'telemetry_overhead: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

for tool in cargo python3 taskset curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
for cpu in "$SERVER_CPU" "$LOADGEN_CPU" "$SINK_CPU"; do
    taskset -c "$cpu" true 2>/dev/null || die "cannot pin to CPU $cpu (this machine has $(nproc))"
done
[ "$SERVER_CPU" != "$LOADGEN_CPU" ] || log "warning: server and load generator share CPU $SERVER_CPU"
[ "$SINK_CPU" != "$SERVER_CPU" ] || log "warning: the OTLP sink shares the server's CPU $SERVER_CPU"
for config in $CONFIGS; do
    case "$config" in off | on | default) ;; *) die "unknown configuration $config (off, on, default)" ;; esac
done

# --- everything this script starts is stopped on exit -------------------------------------
source "$ROOT/bench/lib.sh"   # PIDS, stop_pid, stop_all, busy_percent, wait_idle
trap stop_all EXIT
trap 'exit 130' INT TERM

# --- build ----------------------------------------------------------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
    log "building release binaries"
    timeout 1800 cargo build --release --bin tyk-dispatcher --example loadgen --example otlp_sink >&2
fi
for bin in "$DISPATCHER" "$LOADGEN" "$SINK"; do
    [ -x "$bin" ] || die "missing $bin"
done
# Run private copies: another build into the same target directory while this script runs
# would otherwise change the binaries between two configurations.
BIN="$OUT/telemetry-bin"
rm -rf "$BIN"
mkdir -p "$BIN"
cp "$DISPATCHER" "$LOADGEN" "$SINK" "$BIN/"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -z "$(git status --porcelain -- src Cargo.toml Cargo.lock examples 2>/dev/null)" ] || GIT_REV="$GIT_REV+dirty"
DISPATCHER="$BIN/tyk-dispatcher"
LOADGEN="$BIN/loadgen"
SINK="$BIN/otlp_sink"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU seconds (user + system) process $1 has used so far.
proc_cpu_secs() {
    local ticks
    ticks=$(getconf CLK_TCK)
    python3 - "$1" "$ticks" <<'EOF' 2>/dev/null || echo 0
import sys
stat = open(f"/proc/{sys.argv[1]}/stat").read()
fields = stat[stat.rfind(")") + 2:].split()
print((int(fields[11]) + int(fields[12])) / float(sys.argv[2]))
EOF
}


# Runs the load against $1 (run name) at $2 (host:port) for server pid $3, with the sink (pid
# $4, or empty) sharing the machine; result in $RUNS/$1.json. The sink's CPU share over the
# run is added to the JSON as sink_cpu_util and taken out of other_cpu_util. A run during which
# other work took over $MAX_OTHER_CPU of a core is repeated, up to $ATTEMPTS runs in all.
run_load() {
    local name="$1" addr="$2" pid="$3" sink_pid="$4" limit attempt other rc t0 t1 c0 c1
    limit=$(awk -v w="$WARMUP_SECS" -v d="$DURATION_SECS" 'BEGIN { print int(w + d + 60) }')
    for attempt in $(seq "$ATTEMPTS"); do
        [ "$attempt" -eq 1 ] || wait_idle
        log "$name: $CONNECTIONS connections x $STREAMS streams, ${WARMUP_SECS}s warm-up + ${DURATION_SECS}s measured"
        rc=0
        c0=0
        [ -z "$sink_pid" ] || c0=$(proc_cpu_secs "$sink_pid")
        t0=$(date +%s.%N)
        timeout "$limit" taskset -c "$LOADGEN_CPU" "$LOADGEN" \
            --target "http://$addr" --connections "$CONNECTIONS" --streams "$STREAMS" \
            --warmup-secs "$WARMUP_SECS" --duration-secs "$DURATION_SECS" \
            --server-pid "$pid" --label "$name" --json >"$RUNS/$name.raw.json" || rc=$?
        t1=$(date +%s.%N)
        c1=0
        [ -z "$sink_pid" ] || c1=$(proc_cpu_secs "$sink_pid")
        kill -0 "$pid" 2>/dev/null || die "$name: the server died during the run"
        [ "$rc" -eq 0 ] || die "$name: load generator failed (exit $rc): $(cat "$RUNS/$name.raw.json")"
        other=$(python3 - "$RUNS/$name.raw.json" "$RUNS/$name.json" "$c0" "$c1" "$t0" "$t1" "$attempt" <<'EOF'
import json, sys
raw, out, c0, c1, t0, t1, attempt = sys.argv[1:]
r = json.load(open(raw))
sink = (float(c1) - float(c0)) / (float(t1) - float(t0))
r["sink_cpu_util"] = sink
if r.get("other_cpu_util") is not None:
    # The sink is part of the "on" setup, not other work.
    r["other_cpu_util"] = max(0.0, r["other_cpu_util"] - sink)
r["attempt"] = int(attempt)
json.dump(r, open(out, "w"))
print(r.get("other_cpu_util") or 0)
EOF
)
        awk -v o="$other" -v m="$MAX_OTHER_CPU" 'BEGIN { exit !(o > m) }' || return 0
        log "$name: other work used $other of a core during the run (attempt $attempt of $ATTEMPTS)"
    done
}

# Value of metric $1 in the admin /metrics at port $2 (empty when missing).
metric() {
    local text
    text="$(curl -fsS --max-time 2 "http://127.0.0.1:$2/metrics" 2>/dev/null)" || return 0
    awk -v name="$1" '$1 == name && !found { print $2; found = 1 }' <<<"$text"
}
# The sink's span count from its count file $1.
sink_spans() {
    sed -n 's/^spans=\([0-9]*\).*/\1/p' "$1" 2>/dev/null || true
}

# Only our settings: drop every inherited dispatcher, gateway and OpenTelemetry variable.
UNSET_ENV=()
while IFS= read -r name; do UNSET_ENV+=(-u "$name"); done \
    < <(env | grep -oE '^(TYK_DISPATCHER_|TYK_GW_|OTEL_)[A-Za-z0-9_]*' || true)

# Runs configuration $1 in round $2.
run_config() {
    local config="$1" round="$2" name="$1-$2" port admin sink_pid="" sink_port sink_file
    local settings=() exported dropped received prev="" now i ready
    port="$(free_port)"
    admin="$(free_port)"
    settings=(TYK_DISPATCHER_LISTEN="127.0.0.1:$port" TYK_DISPATCHER_ADMIN_LISTEN="127.0.0.1:$admin")
    case "$config" in
        off) settings+=(TYK_DISPATCHER_LOG_CALLS=false) ;;
        default) ;;
        on)
            sink_port="$(free_port)"
            sink_file="$RUNS/$name.sink-count"
            rm -f "$RUNS/$name.sink-ready" "$sink_file"
            taskset -c "$SINK_CPU" "$SINK" --listen "127.0.0.1:$sink_port" \
                --count-file "$sink_file" --ready-file "$RUNS/$name.sink-ready" \
                >"$RUNS/$name.sink.log" 2>&1 &
            sink_pid=$!
            PIDS+=("$sink_pid")
            for _ in $(seq $((READY_SECS * 10))); do
                [ -s "$RUNS/$name.sink-ready" ] && break
                kill -0 "$sink_pid" 2>/dev/null || die "otlp_sink exited: $(cat "$RUNS/$name.sink.log")"
                sleep 0.1
            done
            [ -s "$RUNS/$name.sink-ready" ] || die "otlp_sink not listening after ${READY_SECS}s"
            settings+=(
                TYK_DISPATCHER_LOG_CALLS=false
                OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port"
                TYK_DISPATCHER_SPAN_QUEUE_SIZE="$SPAN_QUEUE_SIZE"
                TYK_DISPATCHER_SPAN_BATCH_SIZE="$SPAN_BATCH_SIZE"
                TYK_DISPATCHER_SPAN_BATCH_DELAY_MS="$SPAN_BATCH_DELAY_MS"
            )
            ;;
    esac
    printf '%s\n' "${settings[@]}" >"$RUNS/$name.env"
    env "${UNSET_ENV[@]}" "${settings[@]}" \
        taskset -c "$SERVER_CPU" "$DISPATCHER" >"$RUNS/$name.server.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    ready=""
    for _ in $(seq $((READY_SECS * 10))); do
        if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$admin/readyz" 2>/dev/null; then
            ready=1
            break
        fi
        kill -0 "$pid" 2>/dev/null || die "tyk-dispatcher exited: $(tail -n 20 "$RUNS/$name.server.log")"
        sleep 0.1
    done
    [ -n "$ready" ] || die "tyk-dispatcher not ready after ${READY_SECS}s"
    run_load "$name" "127.0.0.1:$port" "$pid" "$sink_pid"

    exported=""
    dropped=""
    received=""
    if [ "$config" = on ]; then
        # Every call has ended; wait for the queue to drain: exported, dropped and the sink's
        # count unchanged for longer than the batch delay (a partial batch waits that long),
        # and the sink holding everything exported.
        local steady=0 need
        need=$(((SPAN_BATCH_DELAY_MS + 1000) / 200 + 1))
        for i in $(seq $((FLUSH_SECS * 5))); do
            exported="$(metric tyk_dispatcher_spans_exported_total "$admin")"
            dropped="$(metric tyk_dispatcher_spans_dropped_total "$admin")"
            received="$(sink_spans "$sink_file")"
            now="$exported/$dropped/$received"
            if [ "$now" = "$prev" ]; then steady=$((steady + 1)); else steady=0; fi
            if [ "$steady" -ge "$need" ] && [ -n "$exported" ] && [ "$exported" = "$received" ]; then
                break
            fi
            prev="$now"
            sleep 0.2
        done
        log "$name: spans exported $exported, dropped $dropped, received by the sink $received"
    fi
    stop_pid "$pid"
    if [ -n "$sink_pid" ]; then
        stop_pid "$sink_pid"
        received="$(sink_spans "$sink_file")"
    fi
    python3 - "$RUNS/$name.json" "$config" "$round" "$exported" "$dropped" "$received" <<'EOF'
import json, sys
path, config, round_, exported, dropped, received = sys.argv[1:]
r = json.load(open(path))
r["config"], r["round"] = config, int(round_)
num = lambda s: int(float(s)) if s else None
r["spans_exported"], r["spans_dropped"], r["spans_received"] = num(exported), num(dropped), num(received)
json.dump(r, open(path, "w"))
EOF
}

wait_idle
BUSY_BEFORE="$(busy_percent)"
if [ "$BUSY_BEFORE" -gt 10 ]; then
    log "warning: the machine was $BUSY_BEFORE% busy just before the runs; other work may skew the figures"
fi
# Even rounds run the configurations in reverse order, so drift in the machine's speed over
# the rounds does not favour one of them.
REVERSED="$(printf '%s\n' $CONFIGS | tac | tr '\n' ' ')"
for round in $(seq "$ROUNDS"); do
    order="$CONFIGS"
    [ $((round % 2)) -eq 1 ] || order="$REVERSED"
    for config in $order; do
        run_config "$config" "$round"
    done
done

# --- report ---------------------------------------------------------------------------------
GIT_REV="$GIT_REV" BUSY_BEFORE="$BUSY_BEFORE" SERVER_CPU="$SERVER_CPU" LOADGEN_CPU="$LOADGEN_CPU" SINK_CPU="$SINK_CPU" \
SPAN_QUEUE_SIZE="$SPAN_QUEUE_SIZE" SPAN_BATCH_SIZE="$SPAN_BATCH_SIZE" SPAN_BATCH_DELAY_MS="$SPAN_BATCH_DELAY_MS" \
    python3 - "$OUT" "$RUNS" "$MAX_OVERHEAD_PCT" "$MAX_OTHER_CPU" "$CONFIGS" <<'EOF'
import glob, json, os, platform, statistics, sys, time

out, runs_dir, max_overhead, max_other, configs = sys.argv[1:]
max_overhead, max_other, configs = float(max_overhead), float(max_other), configs.split()
runs = []
for path in glob.glob(os.path.join(runs_dir, "*.json")):
    if not path.endswith(".raw.json"):
        runs.append(json.load(open(path)))
runs.sort(key=lambda r: (r["round"], configs.index(r["config"])))

def fmt(v, spec, scale=1, unit=""):
    return "n/a" if v is None else format(v * scale, spec) + unit

def valid(r):
    """A traced run counts only when nothing was dropped and the sink got every span."""
    if r["config"] != "on":
        return True
    return (r.get("spans_dropped") == 0 and r.get("spans_exported") is not None
            and (r.get("spans_received") or 0) >= r["spans_exported"] >= r["calls"])

model = ""
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
except OSError:
    pass

print()
print(f"{'run':<10} {'calls/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU µs/call':>12} {'server CPU':>11}"
      f" {'loadgen CPU':>12} {'sink CPU':>9} {'other CPU':>10} {'exported':>10} {'dropped':>8} {'received':>10}")
for r in runs:
    lat = r["latency_us"]
    name = f"{r['config']}-{r['round']}"
    dash = lambda v: "-" if v is None else str(v)
    print(
        f"{name:<10} {r['throughput']:>9.0f} {lat['p50'] / 1000:>7.2f} {lat['p99'] / 1000:>7.2f}"
        f" {fmt(r.get('server_cpu_us_per_call'), '.1f'):>12}"
        f" {fmt(r.get('server_cpu_util'), '.0f', 100, '%'):>11}"
        f" {fmt(r.get('client_cpu_util'), '.0f', 100, '%'):>12}"
        f" {fmt(r.get('sink_cpu_util') if r['config'] == 'on' else None, '.0f', 100, '%'):>9}"
        f" {fmt(r.get('other_cpu_util'), '.0f', 100, '%'):>10}"
        f" {dash(r.get('spans_exported')):>10} {dash(r.get('spans_dropped')):>8} {dash(r.get('spans_received')):>10}"
        + ("" if valid(r) else "  INVALID")
    )

def median(config, key):
    values = [r[key] for r in runs if r["config"] == config and r.get(key) is not None]
    return statistics.median(values) if values else None

summary = {c: {"throughput": median(c, "throughput"),
               "server_cpu_us_per_call": median(c, "server_cpu_us_per_call")} for c in configs}
print()
ratio = cpu_ratio = None
ok = True
invalid = [f"{r['config']}-{r['round']}" for r in runs if not valid(r)]
if "off" in summary and "on" in summary and summary["off"]["throughput"]:
    ratio = summary["on"]["throughput"] / summary["off"]["throughput"]
    floor = 1 - max_overhead / 100
    ok = ratio >= floor
    print(f"on/off throughput: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% overhead; at most {max_overhead:g}% passes)"
          if ratio <= 1 else f"on/off throughput: {ratio:.3f} (on was faster)")
    if summary["on"]["server_cpu_us_per_call"] and summary["off"]["server_cpu_us_per_call"]:
        cpu_ratio = summary["on"]["server_cpu_us_per_call"] / summary["off"]["server_cpu_us_per_call"]
        print(f"on/off server CPU per call: {cpu_ratio:.3f}"
              f" (+{summary['on']['server_cpu_us_per_call'] - summary['off']['server_cpu_us_per_call']:.1f} µs)")
if "default" in summary and "off" in summary and summary["off"]["throughput"] and summary["default"]["throughput"]:
    print(f"default/off throughput: {summary['default']['throughput'] / summary['off']['throughput']:.3f}"
          " (the cost of the per-call INFO line)")
if len({r['round'] for r in runs}) > 1:
    print("(medians over rounds)")
if invalid:
    ok = False
    print(f"INVALID: {', '.join(invalid)}: spans were dropped, did not all reach the sink, or were"
          " fewer than the calls measured")
noisy = [f"{r['config']}-{r['round']}" for r in runs if (r.get("other_cpu_util") or 0) > max_other]
if noisy:
    print(f"warning: other work used CPU during {', '.join(noisy)}; figures are skewed"
          " (retry on an idle machine, or with WAIT_IDLE_SECS / ATTEMPTS)")

result = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "git": os.environ["GIT_REV"],
    "machine": {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release()},
    "server_cpu": int(os.environ["SERVER_CPU"]),
    "loadgen_cpu": int(os.environ["LOADGEN_CPU"]),
    "sink_cpu": int(os.environ["SINK_CPU"]),
    "busy_percent_before": int(os.environ["BUSY_BEFORE"]),
    "span_settings": {k.lower(): int(os.environ[k]) for k in
                      ("SPAN_QUEUE_SIZE", "SPAN_BATCH_SIZE", "SPAN_BATCH_DELAY_MS")},
    "max_overhead_pct": max_overhead,
    "summary": summary,
    "on_off_throughput_ratio": ratio,
    "on_off_cpu_per_call_ratio": cpu_ratio,
    "invalid_runs": invalid,
    "pass": ok,
    "runs": runs,
}
path = os.path.join(out, "telemetry_overhead.json")
with open(path, "w") as f:
    json.dump(result, f, indent=2)
print(f"results: {path} (build {os.environ['GIT_REV']})")
sys.exit(0 if ok else 1)
EOF
