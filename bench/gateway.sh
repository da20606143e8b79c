#!/usr/bin/env bash
# Gateway-level benchmark: HTTP load through a real Tyk Gateway v5.14.0, on a keyless Tyk Classic
# API with no plugin and on one with the tutorial's gRPC Pre (MyPreRequestPlugin) and Response
# (MyResponsePlugin, require_session) plugins, served in turn by
#
#   rust    target/release/tyk-dispatcher, as the Helm chart's sidecar runs it: Unix socket,
#           TYK_DISPATCHER_LOG_CALLS=false, TYK_DISPATCHER_LOG_FORMAT=json
#   go      bench/go-dispatcher (plain grpc-go, built by its build.sh), same socket
#   python  bench/baseline_server.py (grpc.aio, no logging), same socket
#
#   bench/gateway.sh        # from anywhere; needs cargo, Go, python3 (with venv), taskset, curl
#
# Every request of the plugin API makes two Dispatch calls (Pre, Response). The gateway and the
# dispatcher share the CPUs in $SUT_CPUS (default 0: one core, like a pod with a 1-CPU limit);
# the load generator (bench/httpload), the upstream (bench/upstream) and redis run on $LOAD_CPUS
# (default 1). Each run: a fresh dispatcher and gateway, $WARMUP_SECS s of warm-up, then
# $DURATION_SECS s measured at $CONNECTIONS connections (closed loop). $ROUNDS rounds, the
# order of the configurations reversed in even rounds and rotated every two rounds; the table
# gives medians. Every response must be 200 with the upstream's body.
#
# Settings (env): DURATION_SECS=10 WARMUP_SECS=3 ROUNDS=3 CONNECTIONS=32 CONFIGS="none rust go
# python" SUT_CPUS=0 LOAD_CPUS=1 READY_SECS=60 WAIT_IDLE_SECS=30 ATTEMPTS=2 MAX_OTHER_CPU=0.2
# SKIP_BUILD=1 (use target/release/tyk-dispatcher as it is) TYK_DISPATCHER_BIN=/path (use that
# binary instead) TYK_GATEWAY_BIN=/path/to/tyk KEEP_TMP=1 (keep the temp dir of logs and
# configs). Before each run the script waits up to WAIT_IDLE_SECS for the machine to go idle,
# and repeats a run (ATTEMPTS in all) during which processes not its own used more than
# MAX_OTHER_CPU of a core. Results: a table on stdout and target/bench/gateway.json. Exit
# status 0, or 2 when something failed (tails of the logs printed). See bench/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION_SECS="${DURATION_SECS:-10}"
WARMUP_SECS="${WARMUP_SECS:-3}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-32}"
CONFIGS="${CONFIGS:-none rust go python}"
SUT_CPUS="${SUT_CPUS:-0}"
LOAD_CPUS="${LOAD_CPUS:-1}"
READY_SECS="${READY_SECS:-60}"
WAIT_IDLE_SECS="${WAIT_IDLE_SECS:-30}"
ATTEMPTS="${ATTEMPTS:-2}"
MAX_OTHER_CPU="${MAX_OTHER_CPU:-0.2}"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RESULT_JSON="$TARGET_DIR/bench/gateway.json"
BODY=$'{"upstream":"ok"}\n' # what bench/upstream answers; checked on every response

log() { printf 'gateway.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

for config in $CONFIGS; do
    case "$config" in none | rust | rust-trim | go | python) ;; *) die "unknown configuration '$config' in CONFIGS" ;; esac
done
for tool in taskset curl python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
for cpus in "$SUT_CPUS" "$LOAD_CPUS"; do
    taskset -c "$cpus" true 2>/dev/null || die "cannot pin to CPUs $cpus (this machine has $(nproc))"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tyk-gateway-bench.XXXXXX")"
LOGS="$WORK/logs"
RUNS="$WORK/runs"
BIN="$WORK/bin"
mkdir -p "$LOGS" "$RUNS" "$BIN" "$WORK/apps" "$WORK/redis"
SOCK="$WORK/dispatcher.sock"

# --- everything started here is stopped on exit, by pid ---------------------------------------
source "$ROOT/bench/lib.sh"   # PIDS, stop_pid, stop_all, busy_percent, wait_idle
cleanup() {
    local rc=$? pid i f
    trap - EXIT INT TERM
    # Newest first: the gateway before the dispatcher it dials, redis and the upstream last.
    stop_all
    if [ "$rc" -ne 0 ]; then
        # Redis's and the upstream's, then the newest four (the failed run's), newest last.
        for f in "$LOGS/redis.log" "$LOGS/upstream.log" \
            $(ls -tr "$LOGS"/*.log 2>/dev/null | grep -v -e '/redis\.log$' -e '/upstream\.log$' | tail -n 4); do
            [ -s "$f" ] || continue
            printf '\n===== %s (last 25 lines) =====\n' "$f" >&2
            tail -n 25 "$f" >&2
        done
        log "failed (exit $rc); logs and configs kept in $WORK"
    elif [ -n "${KEEP_TMP:-}" ]; then
        log "logs and configs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a process in the background (pinned to CPUs $1, output to $LOGS/$2.log) and sets
# STARTED_PID. The pid is the command's own: taskset and env exec it.
start() {
    local cpus="$1" name="$2"
    shift 2
    taskset -c "$cpus" "$@" >>"$LOGS/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}
forget_pid() {
    local pid="$1" kept=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install_with_apt() { # PACKAGE: installs it when root, else fails
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null \
        || die "$1 is missing and this is not root with apt: install it (apt-get install $1)"
    log "installing $1 with apt"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"; } >"$LOGS/apt-$1.log" 2>&1 \
        || die "apt-get install $1 failed: $(tail -n 5 "$LOGS/apt-$1.log")"
}

# --- binaries ----------------------------------------------------------------------------------
GO="$(command -v go || true)"
[ -n "$GO" ] || GO=/usr/local/go/bin/go
[ -x "$GO" ] || die "go is not installed (looked on PATH and in /usr/local/go/bin)"
export PATH="$(dirname "$GO"):$PATH"

GIT_DESC="$(git describe --always --dirty 2>/dev/null || echo unknown)"
if [ -n "${TYK_DISPATCHER_BIN:-}" ]; then
    [ -x "$TYK_DISPATCHER_BIN" ] || die "TYK_DISPATCHER_BIN=$TYK_DISPATCHER_BIN is not executable"
    DISPATCHER_SRC="$TYK_DISPATCHER_BIN"
    DISPATCHER_DESC="$TYK_DISPATCHER_BIN (given)"
else
    DISPATCHER_SRC="$TARGET_DIR/release/tyk-dispatcher"
    if [ -z "${SKIP_BUILD:-}" ]; then
        log "cargo build --release --locked --bin tyk-dispatcher"
        timeout 1800 cargo build --release --locked --bin tyk-dispatcher >"$LOGS/cargo-build.log" 2>&1 \
            || die "cargo build failed: $(tail -n 20 "$LOGS/cargo-build.log")"
        DISPATCHER_DESC="built from $GIT_DESC"
    else
        DISPATCHER_DESC="target/release as found (SKIP_BUILD; tree now $GIT_DESC)"
    fi
fi
[ -x "$DISPATCHER_SRC" ] || die "missing $DISPATCHER_SRC (run without SKIP_BUILD)"
# Copies, so that a build into target/ during the run cannot swap a binary between two runs.
cp "$DISPATCHER_SRC" "$BIN/tyk-dispatcher"

if [[ " $CONFIGS " == *" go "* ]]; then
    log "bench/go-dispatcher/build.sh"
    go_bin="$(bench/go-dispatcher/build.sh 2>"$LOGS/go-dispatcher-build.log")" \
        || die "go-dispatcher build failed: $(tail -n 20 "$LOGS/go-dispatcher-build.log")"
    cp "$go_bin" "$BIN/go-dispatcher"
fi
for tool in upstream httpload; do
    (cd "bench/$tool" && CGO_ENABLED=0 "$GO" build -buildvcs=false -trimpath -o "$BIN/$tool" .) \
        >"$LOGS/build-$tool.log" 2>&1 || die "building bench/$tool failed: $(cat "$LOGS/build-$tool.log")"
done

if [ -n "${TYK_GATEWAY_BIN:-}" ]; then
    TYK="$TYK_GATEWAY_BIN"
else
    [ -x "$ROOT/../shared/tyk-gateway/install.sh" ] \
        || die "set TYK_GATEWAY_BIN, or provide ../shared/tyk-gateway/install.sh beside the repository"
    TYK="$("$ROOT/../shared/tyk-gateway/install.sh")" || die "../shared/tyk-gateway/install.sh failed"
fi
[ -x "$TYK" ] || die "no Tyk gateway binary at $TYK"
TEMPLATES="${TYK_GATEWAY_TEMPLATES:-$(dirname "$TYK")/templates}"
[ -d "$TEMPLATES" ] || die "no templates/ beside $TYK (set TYK_GATEWAY_TEMPLATES)"
mkdir -p "$WORK/gateway-tmp" # see start_gateway
TYK_VERSION="$(TMPDIR="$WORK/gateway-tmp" "$TYK" --version 2>&1 | tail -n 1)"

command -v redis-server >/dev/null || install_with_apt redis-server
REDIS_VERSION="$(redis-server --version | grep -oE 'v=[0-9.]+' | cut -c3-)"

PY=""
if [[ " $CONFIGS " == *" python "* ]]; then
    VENV="$TARGET_DIR/bench-venv" # shared with bench/compare.sh
    STAMP="$VENV/.requirements.sha256"
    WANT="$(sha256sum bench/requirements.txt | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
        log "setting up $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        timeout 600 "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt >&2
        echo "$WANT" >"$STAMP"
    fi
    PY="$VENV/bin/python"
fi

# --- machine idle? -------------------------------------------------------------------------------
wait_idle_or_warn() {
    wait_idle
    [ "$IDLE_REACHED" = 1 ] || log "warning: the machine did not go idle within ${WAIT_IDLE_SECS}s"
}

# --- redis and the upstream, for the whole run ---------------------------------------------------
REDIS_PORT="$(free_port)"
start "$LOAD_CPUS" redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$WORK/redis" --daemonize no --protected-mode yes
REDIS_PID=$STARTED_PID
for _ in $(seq $((READY_SECS * 10))); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited"
    sleep 0.1
done
[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] || die "redis not answering on port $REDIS_PORT"

start "$LOAD_CPUS" upstream "$BIN/upstream" -listen 127.0.0.1:0 -addr-file "$WORK/upstream.addr"
UPSTREAM_PID=$STARTED_PID
for _ in $(seq $((READY_SECS * 10))); do
    [ -s "$WORK/upstream.addr" ] && break
    kill -0 "$UPSTREAM_PID" 2>/dev/null || die "upstream exited"
    sleep 0.1
done
[ -s "$WORK/upstream.addr" ] || die "upstream not listening after ${READY_SECS}s"
UPSTREAM="$(cat "$WORK/upstream.addr")"

# --- gateway configuration ------------------------------------------------------------------------
GW_PORT="$(free_port)"
echo '{}' >"$WORK/policies.json"
cat >"$WORK/tyk.conf" <<EOF
{
  "listen_address": "127.0.0.1",
  "listen_port": $GW_PORT,
  "secret": "gateway-bench-secret",
  "node_secret": "gateway-bench-node-secret",
  "template_path": "$TEMPLATES",
  "app_path": "$WORK/apps",
  "use_db_app_configs": false,
  "disable_dashboard_zeroconf": true,
  "storage": {
    "type": "redis",
    "host": "127.0.0.1",
    "port": $REDIS_PORT,
    "database": 0,
    "optimisation_max_idle": 100,
    "optimisation_max_active": 500
  },
  "policies": {
    "policy_source": "file",
    "policy_record_name": "$WORK/policies.json"
  },
  "enable_analytics": false,
  "health_check": { "enable_health_checks": false },
  "uptime_tests": { "disable": true },
  "hash_keys": true,
  "enable_jsvm": false,
  "log_level": "warn",
  "pid_file_location": "$WORK/tyk.pid",
  "max_idle_connections_per_host": 500,
  "graceful_shutdown_timeout_duration": 2,
  "coprocess_options": {
    "enable_coprocess": true,
    "coprocess_grpc_server": "unix://$SOCK"
  }
}
EOF
# api_definition: NAME LISTEN_PATH [CUSTOM_MIDDLEWARE_JSON]
api_definition() {
    cat <<EOF
{
  "name": "$1",
  "api_id": "$1",
  "org_id": "bench",
  "slug": "$1",
  "active": true,
  "use_keyless": true,
  "proxy": {
    "listen_path": "$2",
    "target_url": "http://$UPSTREAM/",
    "strip_listen_path": true
  },
  "version_data": {
    "not_versioned": true,
    "versions": { "Default": { "name": "Default", "use_extended_paths": true } }
  }${3:+,
  \"custom_middleware\": $3}
}
EOF
}
api_definition bench-no-plugin /no-plugin/ >"$WORK/apps/no-plugin.json"
api_definition bench-grpc-plugin /grpc-plugin/ '{
    "pre": [
      { "disabled": false, "name": "MyPreRequestPlugin", "path": "", "require_session": false, "raw_body_only": false }
    ],
    "post": [],
    "post_key_auth": [],
    "auth_check": { "disabled": false, "name": "", "path": "", "require_session": false, "raw_body_only": false },
    "response": [
      { "disabled": false, "name": "MyResponsePlugin", "path": "", "require_session": true, "raw_body_only": false }
    ],
    "driver": "grpc",
    "id_extractor": { "disabled": false, "extract_from": "", "extract_with": "", "extractor_config": {} }
  }' >"$WORK/apps/grpc-plugin.json"
for f in "$WORK/tyk.conf" "$WORK/apps/"*.json; do
    python3 -m json.tool "$f" >/dev/null || die "generated $f is not JSON"
done

# Inherited settings must not leak into the servers.
CLEAN_ENV=()
while IFS= read -r name; do CLEAN_ENV+=(-u "$name"); done \
    < <(env | grep -oE '^(TYK_DISPATCHER_|TYK_GW_|OTEL_|RUST_LOG|GOMAXPROCS|GODEBUG|GRPC_)[A-Za-z0-9_]*' || true)

# --- one run ---------------------------------------------------------------------------------
DISPATCHER_PID=""
GATEWAY_PID=""
ADMIN_PORT=""

start_dispatcher() { # CONFIG RUN_NAME: starts it on $SOCK, waits until it listens
    local config="$1" name="$2" i
    rm -f "$SOCK"
    DISPATCHER_PID=""
    ADMIN_PORT=""
    case "$config" in
        none) return 0 ;;
        rust | rust-trim)
            ADMIN_PORT="$(free_port)"
            start "$SUT_CPUS" "$name-dispatcher" env "${CLEAN_ENV[@]}" \
                TYK_DISPATCHER_LISTEN="unix://$SOCK" TYK_DISPATCHER_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
                TYK_DISPATCHER_LOG_CALLS=false TYK_DISPATCHER_LOG_FORMAT=json \
                TYK_DISPATCHER_TRIM_REPLIES="$([ "$config" = rust-trim ] && echo true || echo false)" \
                "$BIN/tyk-dispatcher"
            ;;
        go)
            start "$SUT_CPUS" "$name-dispatcher" env "${CLEAN_ENV[@]}" "$BIN/go-dispatcher" -listen "unix://$SOCK"
            ;;
        python)
            rm -f "$WORK/python.ready"
            start "$SUT_CPUS" "$name-dispatcher" env "${CLEAN_ENV[@]}" \
                "$PY" bench/baseline_server.py "unix://$SOCK" --ready-file "$WORK/python.ready"
            ;;
    esac
    DISPATCHER_PID=$STARTED_PID
    for i in $(seq $((READY_SECS * 10))); do
        kill -0 "$DISPATCHER_PID" 2>/dev/null || die "$name: the $config dispatcher exited"
        case "$config" in
            rust | rust-trim) curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null && return 0 ;;
            go) [ -S "$SOCK" ] && return 0 ;;
            python) [ -s "$WORK/python.ready" ] && [ -S "$SOCK" ] && return 0 ;;
        esac
        sleep 0.1
    done
    die "$name: the $config dispatcher was not ready after ${READY_SECS}s"
}

start_gateway() { # RUN_NAME PATH: starts it and waits until PATH answers 200 with the body
    local name="$1" path="$2" i
    # Every start of the gateway leaves an empty tyk-middleware-path* dir in $TMPDIR (made at
    # package init by gateway/testutil.go): keep them in the work dir.
    start "$SUT_CPUS" "$name-gateway" env "${CLEAN_ENV[@]}" TMPDIR="$WORK/gateway-tmp" \
        "$TYK" --conf "$WORK/tyk.conf"
    GATEWAY_PID=$STARTED_PID
    for i in $(seq $((READY_SECS * 10))); do
        kill -0 "$GATEWAY_PID" 2>/dev/null || die "$name: the gateway exited"
        if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$GW_PORT/hello" 2>/dev/null \
            && "$BIN/httpload" -probe -timeout 2s -url "http://127.0.0.1:$GW_PORT$path" -body "$BODY" \
                >"$WORK/probe.json" 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    die "$name: $path never answered 200 with the upstream's body: $(cat "$WORK/probe.json")"
}

# Sum of tyk_dispatcher_dispatch_requests_total by hook_type, as "Pre=N Response=N ...".
dispatch_counts() {
    curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null | awk '
        /^tyk_dispatcher_dispatch_requests_total\{/ {
            if (match($0, /hook_type="[^"]*"/)) { t = substr($0, RSTART + 11, RLENGTH - 12); n[t] += $NF }
        }
        END { for (t in n) printf "%s=%d ", t, n[t] }'
}

run_one() { # ROUND CONFIG
    local round="$1" config="$2" run="r$1-$2" name path pids attempt rc other summary counts
    path=/grpc-plugin/
    [ "$config" != none ] || path=/no-plugin/
    for attempt in $(seq "$ATTEMPTS"); do
        name="$run-a$attempt" # logs are per attempt, results per run
        wait_idle_or_warn
        log "round $round: $config (attempt $attempt): ${WARMUP_SECS}s warm-up + ${DURATION_SECS}s at $CONNECTIONS connections on $path"
        start_dispatcher "$config" "$name"
        start_gateway "$name" "$path"
        pids=(-pid "gateway=$GATEWAY_PID" -pid "upstream=$UPSTREAM_PID" -pid "redis=$REDIS_PID")
        [ -z "$DISPATCHER_PID" ] || pids+=(-pid "dispatcher=$DISPATCHER_PID")
        rc=0
        timeout $((WARMUP_SECS + DURATION_SECS + 60)) taskset -c "$LOAD_CPUS" "$BIN/httpload" \
            -url "http://127.0.0.1:$GW_PORT$path" -c "$CONNECTIONS" -warmup "${WARMUP_SECS}s" \
            -duration "${DURATION_SECS}s" -body "$BODY" -label "$config" "${pids[@]}" \
            >"$RUNS/$run.json" 2>"$LOGS/$name-httpload.log" || rc=$?
        counts=""
        [ -z "$ADMIN_PORT" ] || counts="$(dispatch_counts)"
        kill -0 "$GATEWAY_PID" 2>/dev/null || die "$name: the gateway died during the run"
        [ -z "$DISPATCHER_PID" ] || kill -0 "$DISPATCHER_PID" 2>/dev/null || die "$name: the dispatcher died during the run"
        # The gateway first: it holds the dispatcher's connection, and the dispatcher drains
        # until its clients have gone.
        stop_pid "$GATEWAY_PID"
        forget_pid "$GATEWAY_PID"
        if [ -n "$DISPATCHER_PID" ]; then
            stop_pid "$DISPATCHER_PID"
            forget_pid "$DISPATCHER_PID"
        fi
        [ "$rc" -eq 0 ] || die "$name: httpload failed (exit $rc): $(head -c 3000 "$RUNS/$run.json")"
        # Adds the run's identity (and the dispatcher's call counts) to its JSON; prints the CPU
        # share of other work and a one-line summary.
        read -r other summary < <(python3 - "$RUNS/$run.json" "$round" "$config" "$attempt" "$counts" <<'EOF'
import json, sys
path, round_, config, attempt, counts = sys.argv[1:6]
r = json.load(open(path))
r.update(round=int(round_), config=config, attempt=int(attempt))
if counts.strip():
    r["dispatch_calls"] = {k: int(v) for k, v in (p.split("=") for p in counts.split())}
json.dump(r, open(path, "w"), indent=2)
# Other processes: process time on the machine that none of ours accounts for.
known = sum(v["util"] for v in r["cpu"].values() if v) + r["loadgen_cpu_util"]
other = max(0.0, r["machine"]["user_system_cores"] - known)
lat = r["latency_us"]
print(f"{other:.3f} {r['rps']:.0f} req/s, p50 {lat['p50'] / 1000:.2f} ms, p99 {lat['p99'] / 1000:.2f} ms,"
      f" other CPU {other:.2f}")
EOF
        )
        log "round $round: $config: $summary"
        awk -v o="$other" -v m="$MAX_OTHER_CPU" 'BEGIN { exit !(o > m) }' || return 0
        log "round $round: $config: other work used $other of a core during the window"
        [ "$attempt" -ge "$ATTEMPTS" ] || mv "$RUNS/$run.json" "$RUNS/$run.attempt$attempt.json"
    done
}

log "Tyk $TYK_VERSION at $TYK; redis $REDIS_VERSION on :$REDIS_PORT; upstream $UPSTREAM; gateway :$GW_PORT"
log "gateway + dispatcher on CPUs $SUT_CPUS; httpload, upstream and redis on CPUs $LOAD_CPUS"
read -r -a config_list <<<"$CONFIGS"
n=${#config_list[@]}
for round in $(seq "$ROUNDS"); do
    shift_by=$(((round - 1) / 2 % n))
    order=("${config_list[@]:shift_by}" "${config_list[@]:0:shift_by}")
    if [ $((round % 2)) -eq 0 ]; then
        reversed=()
        for ((i = n - 1; i >= 0; i--)); do reversed+=("${order[$i]}"); done
        order=("${reversed[@]}")
    fi
    for config in "${order[@]}"; do
        run_one "$round" "$config"
    done
done

# --- report ------------------------------------------------------------------------------------
mkdir -p "$(dirname "$RESULT_JSON")"
TYK_VERSION="$TYK_VERSION" REDIS_VERSION="$REDIS_VERSION" GO_VERSION="$("$GO" version)" \
    SUT_CPUS="$SUT_CPUS" LOAD_CPUS="$LOAD_CPUS" CONNECTIONS="$CONNECTIONS" MAX_OTHER_CPU="$MAX_OTHER_CPU" \
    DISPATCHER_DESC="$DISPATCHER_DESC" \
    python3 - "$RUNS" "$RESULT_JSON" "$CONFIGS" <<'EOF'
import glob, json, os, platform, statistics, sys, time

runs_dir, out_path, configs = sys.argv[1], sys.argv[2], sys.argv[3].split()
runs = []
for path in sorted(glob.glob(os.path.join(runs_dir, "r*-*.json"))):
    if ".attempt" in path:
        continue
    runs.append(json.load(open(path)))
runs.sort(key=lambda r: (r["round"], configs.index(r["config"])))
def cpu_list(spec):  # taskset's list: "0", "0,1", "0-1"
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out
sut_cpus = cpu_list(os.environ["SUT_CPUS"])
names = {"none": "no plugin", "rust": "tyk-dispatcher", "rust-trim": "tyk-dispatcher, trim_replies",
         "go": "grpc-go", "python": "Python grpc.aio"}

def cpu(r, name, key):
    v = r["cpu"].get(name)
    return v[key] if v else None

def derived(r):
    reqs = r["requests"]
    d = cpu(r, "dispatcher", "secs")
    g = cpu(r, "gateway", "secs")
    known = sum(v["util"] for v in r["cpu"].values() if v) + r["loadgen_cpu_util"]
    m = r["machine"]
    return {
        "rps": r["rps"],
        "p50_ms": r["latency_us"]["p50"] / 1000,
        "p99_ms": r["latency_us"]["p99"] / 1000,
        "dispatcher_us_per_call": d * 1e6 / (2 * reqs) if d is not None and reqs else None,
        "gateway_us_per_request": g * 1e6 / reqs if g is not None and reqs else None,
        "sut_us_per_request": ((g or 0) + (d or 0)) * 1e6 / reqs if reqs else None,
        "dispatcher_util": cpu(r, "dispatcher", "util"),
        "gateway_util": cpu(r, "gateway", "util"),
        "load_side_util": r["loadgen_cpu_util"] + (cpu(r, "upstream", "util") or 0) + (cpu(r, "redis", "util") or 0),
        "sut_cpus_busy": sum(m["busy_per_cpu"].get(f"cpu{c}", 0) for c in sut_cpus),
        "irq_util": m["irq_cores"],
        "steal_util": m["steal_cores"],
        "other_util": max(0.0, m["user_system_cores"] - known),
    }

def fmt(v, spec, unit=""):
    return "—" if v is None else format(v, spec) + unit

print()
print("Per run:")
print(f"{'round':>5} {'config':<16} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'disp µs/call':>12}"
      f" {'gw µs/req':>9} {'gw CPU':>7} {'disp CPU':>8} {'SUT CPUs':>8} {'load CPU':>8} {'irq':>5} {'other':>6}")
for r in runs:
    d = derived(r)
    r["derived"] = d
    print(f"{r['round']:>5} {names[r['config']]:<16} {d['rps']:>8.0f} {d['p50_ms']:>7.2f} {d['p99_ms']:>7.2f}"
          f" {fmt(d['dispatcher_us_per_call'], '.1f'):>12} {fmt(d['gateway_us_per_request'], '.1f'):>9}"
          f" {fmt(d['gateway_util'] and d['gateway_util'] * 100, '.0f', '%'):>7}"
          f" {fmt(d['dispatcher_util'] and d['dispatcher_util'] * 100, '.0f', '%'):>8}"
          f" {d['sut_cpus_busy'] * 100:>7.0f}% {d['load_side_util'] * 100:>7.0f}%"
          f" {d['irq_util'] * 100:>4.0f}% {d['other_util'] * 100:>5.0f}%")

medians = {}
for c in configs:
    rs = [r["derived"] for r in runs if r["config"] == c]
    if not rs:
        continue
    m = {}
    for key in rs[0]:
        vals = [x[key] for x in rs if x[key] is not None]
        m[key] = statistics.median(vals) if vals else None
    m["runs"] = len(rs)
    medians[c] = m

print()
print(f"Medians over {max(m['runs'] for m in medians.values())} rounds:")
print(f"{'config':<16} {'req/s':>8} {'vs none':>8} {'p50 ms':>7} {'p99 ms':>7} {'disp µs/call':>12}"
      f" {'gw µs/req':>9} {'gw extra':>8} {'gw+disp µs/req':>14}")
base = medians.get("none", {}).get("rps")
base_gw = medians.get("none", {}).get("gateway_us_per_request")
for c, m in medians.items():
    rel = m["rps"] / base if base else None
    m["rps_vs_none"] = rel
    extra = m["gateway_us_per_request"] - base_gw if base_gw and c != "none" else None
    m["gateway_extra_us_per_request"] = extra
    print(f"{names[c]:<16} {m['rps']:>8.0f} {fmt(rel, '.2f'):>8} {m['p50_ms']:>7.2f} {m['p99_ms']:>7.2f}"
          f" {fmt(m['dispatcher_us_per_call'], '.1f'):>12} {fmt(m['gateway_us_per_request'], '.1f'):>9}"
          f" {fmt(extra, '.1f'):>8} {fmt(m['sut_us_per_request'], '.1f'):>14}")
print("(gw extra: the gateway's CPU per request above the no-plugin median, i.e. its side of the two"
      " calls; gw+disp: gateway and dispatcher CPU per request, which sets req/s on the pinned CPUs)")

ratios = {}
def ratio(a, b, key):
    x, y = medians.get(a, {}).get(key), medians.get(b, {}).get(key)
    return x / y if x and y else None
ratios["go_over_rust_cpu_per_call"] = ratio("go", "rust", "dispatcher_us_per_call")
ratios["python_over_rust_cpu_per_call"] = ratio("python", "rust", "dispatcher_us_per_call")
ratios["rust_over_go_rps"] = ratio("rust", "go", "rps")
ratios["rust_over_python_rps"] = ratio("rust", "python", "rps")
ratios["trim_over_rust_rps"] = ratio("rust-trim", "rust", "rps")
ratios["rust_over_go_cpu_per_call"] = ratio("rust", "go", "dispatcher_us_per_call")
print()
if ratios["go_over_rust_cpu_per_call"]:
    print(f"Dispatcher CPU per call: grpc-go / tyk-dispatcher = {ratios['go_over_rust_cpu_per_call']:.2f}x")
if ratios["python_over_rust_cpu_per_call"]:
    print(f"Dispatcher CPU per call: Python / tyk-dispatcher = {ratios['python_over_rust_cpu_per_call']:.1f}x")
if ratios["rust_over_go_rps"]:
    print(f"Gateway req/s: tyk-dispatcher / grpc-go = {ratios['rust_over_go_rps']:.2f}x")
if ratios["rust_over_python_rps"]:
    print(f"Gateway req/s: tyk-dispatcher / Python = {ratios['rust_over_python_rps']:.2f}x")
if ratios["rust_over_go_cpu_per_call"]:
    print(f"Dispatcher CPU per call: tyk-dispatcher / grpc-go = {ratios['rust_over_go_cpu_per_call']:.2f}"
          " (goal: at most 0.50)")
if ratios["trim_over_rust_rps"]:
    print(f"Gateway req/s: trimmed replies / byte-for-byte = {ratios['trim_over_rust_rps']:.3f}x")
for r in runs:
    calls = r.get("dispatch_calls")
    if calls:
        total = r["requests"] + r["warmup_requests"]
        n = sum(calls.values())
        print(f"round {r['round']} tyk-dispatcher: Dispatch calls {calls}, {n / total:.3f} per request (warm-up + window)")
print("(CPU columns: share of one core over the window. SUT CPUs: busy time of the CPUs the gateway"
      " and dispatcher are pinned to, whoever used it; load CPU: httpload + upstream + redis; irq:"
      " interrupt time, charged to no process; other: time of processes not ours.)")
max_other = float(os.environ["MAX_OTHER_CPU"])
noisy = [f"r{r['round']}-{r['config']}" for r in runs if r["derived"]["other_util"] > max_other]
if noisy:
    print("warning: other work used CPU during " + ", ".join(noisy) + "; those figures are skewed")

model = ""
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
summary = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "dispatcher_binary": os.environ["DISPATCHER_DESC"],
    "machine": {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release()},
    "tyk_version": os.environ["TYK_VERSION"],
    "redis_version": os.environ["REDIS_VERSION"],
    "go_version": os.environ["GO_VERSION"],
    "sut_cpus": os.environ["SUT_CPUS"],
    "load_cpus": os.environ["LOAD_CPUS"],
    "connections": int(os.environ["CONNECTIONS"]),
    "medians": medians,
    "ratios": ratios,
    "runs": runs,
}
json.dump(summary, open(out_path, "w"), indent=2)
print(f"\nresults: {out_path}")
EOF
