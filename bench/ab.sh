#!/usr/bin/env bash
# A/B: one benchmark run against two builds of tyk-dispatcher, interleaved, so a change to the
# call path is judged by server CPU per call against the build before it, in the same minutes.
#
#   bench/ab.sh BASE_TREE NEW_TREE SCRIPT [ROUNDS]
#
# BASE_TREE and NEW_TREE are checkouts whose target/release holds tyk-dispatcher and
# examples/loadgen (cargo build --release --bin tyk-dispatcher --example loadgen; a symlinked
# target/ is fine). SCRIPT is compare.sh, hooks_overhead.sh or telemetry_overhead.sh: each
# round runs the tree's own copy of it once per tree (SKIP_BUILD=1 ROUNDS=1), the order
# alternating from round to round, and the summary gives every configuration's median server
# CPU µs per call and calls/s for each tree, and new/base. ROUNDS defaults to 5. Results:
# target/bench/ab/SCRIPT/{base,new}-N.json and summary.json under the directory this runs in.
set -euo pipefail

[ $# -ge 3 ] || { echo "usage: bench/ab.sh BASE_TREE NEW_TREE SCRIPT [ROUNDS]" >&2; exit 2; }
BASE="$(cd "$1" && pwd)"
NEW="$(cd "$2" && pwd)"
SCRIPT="$3"
ROUNDS="${4:-5}"
OUT="$(pwd)/target/bench/ab/${SCRIPT%.sh}"
rm -rf "$OUT"
mkdir -p "$OUT"

log() { printf 'ab: %s\n' "$*" >&2; }

for tree in "$BASE" "$NEW"; do
    for bin in target/release/tyk-dispatcher target/release/examples/loadgen; do
        [ -x "$tree/$bin" ] || { log "$tree/$bin is missing: build it first"; exit 2; }
    done
    [ -x "$tree/bench/$SCRIPT" ] || { log "$tree/bench/$SCRIPT is missing"; exit 2; }
done

# Where each script leaves its figures, relative to the tree.
result_of() {
    case "$SCRIPT" in
        compare.sh) echo "target/bench/compare.json" ;;
        hooks_overhead.sh) echo "target/bench/hooks/summary.json" ;;
        telemetry_overhead.sh) echo "target/bench/telemetry_overhead.json" ;;
        *) log "unknown script $SCRIPT"; exit 2 ;;
    esac
}

for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="base new"; else order="new base"; fi
    for label in $order; do
        tree="$BASE"; [ "$label" = new ] && tree="$NEW"
        log "round $round/$ROUNDS: $label ($tree)"
        # A failed threshold (exit 1) still leaves figures; a failed run (2) does not.
        status=0
        (cd "$tree" && env -u CARGO_TARGET_DIR SKIP_BUILD=1 ROUNDS=1 SERVERS=rust,rust-logged RATES=closed "bench/$SCRIPT" >"$OUT/$label-$round.log" 2>&1) || status=$?
        [ "$status" -le 1 ] || { log "$label run failed (exit $status): $OUT/$label-$round.log"; exit 2; }
        cp "$tree/$(result_of)" "$OUT/$label-$round.json"
    done
done

python3 - "$OUT" "$SCRIPT" "$ROUNDS" <<'EOF'
import json, statistics, sys

out, script, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])

def figures(doc):
    """{configuration: (calls/s, server CPU µs per call)} of one result file."""
    if script == "compare.sh":
        if "tables" in doc:  # compare.py: medians per server of the closed-loop runs
            table = doc["tables"]["closed"]["medians"]
            return {k: (table[k]["calls_per_s"], table[k]["cpu_us_per_call"])
                    for k in ("rust", "rust-logged") if k in table}
        rust = doc["runs"]["rust"]
        return {"pass-through": (rust["throughput"], rust.get("server_cpu_us_per_call"))}
    table = doc["median"] if script == "hooks_overhead.sh" else doc["summary"]
    return {c: (f["throughput"], f.get("server_cpu_us_per_call")) for c, f in table.items()}

runs = {label: [figures(json.load(open(f"{out}/{label}-{n}.json"))) for n in range(1, rounds + 1)]
        for label in ("base", "new")}
summary = {}
print(f"\n{'configuration':<16} {'base µs/call':>13} {'new µs/call':>12} {'new/base':>9} {'base calls/s':>13} {'new calls/s':>12}")
for config in runs["base"][0]:
    median = {label: (statistics.median(r[config][0] for r in runs[label]),
                      statistics.median(r[config][1] for r in runs[label] if r[config][1]))
              for label in ("base", "new")}
    ratio = median["new"][1] / median["base"][1]
    summary[config] = {"base": median["base"], "new": median["new"], "cpu_ratio": ratio}
    print(f"{config:<16} {median['base'][1]:>13.1f} {median['new'][1]:>12.1f} {ratio:>9.3f}"
          f" {median['base'][0]:>13.0f} {median['new'][0]:>12.0f}")
json.dump({"script": script, "rounds": rounds, "summary": summary, "runs": runs},
          open(f"{out}/summary.json", "w"), indent=2)
print(f"\n{rounds} interleaved rounds; medians; results in {out}")
EOF
