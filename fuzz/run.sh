#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted bytes (AFL++ through afl.rs, stable Rust).
#
#   fuzz/run.sh [SECONDS]        fuzz all targets for SECONDS in total (default 60), one after
#                                another; FUZZ_SECONDS=3600 fuzz/run.sh for a longer run
#   FUZZ_TARGETS="wire keys" fuzz/run.sh 30   only those targets
#   FUZZ_RELEASE=1 fuzz/run.sh 3600           optimised build: slower to build, more execs per
#                                             second; for long runs (the default, an unoptimised
#                                             build, is what the CI's bounded run uses)
#
# Each input gets at most 1 s and 256 MiB. Starts from fuzz/corpus/<target>/ (seeds and every
# crash found before; `cargo test --test it fuzz_corpus` replays them without the fuzzer).
# Exits 1 when a target crashed or hung, listing the inputs under fuzz/out/<target>/; copy each
# into fuzz/corpus/<target>/ once it is fixed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
total="${1:-${FUZZ_SECONDS:-60}}"
targets=(${FUZZ_TARGETS:-wire wire_structured object_log event_log config keys})
per_target=$(( total / ${#targets[@]} ))
(( per_target >= 5 )) || per_target=5

# cargo-afl, then AFL++ built from the sources bundled in the crate (needs make and a C
# compiler, nothing downloaded beyond crates.io): about 45 s and 30 s here.
afl_version=0.18.2
if ! cargo afl --version >/dev/null 2>&1; then
    cargo install cargo-afl --version "$afl_version" --locked
fi
afl_data="${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs"
if ! compgen -G "$afl_data/rustc-*/afl.rs-$afl_version/afl/bin/afl-fuzz" >/dev/null; then
    cargo afl config --build
fi

cd "$here"
# Its own target folder: afl's instrumentation flags would otherwise rebuild the main crate's.
export CARGO_TARGET_DIR="$here/target"
if [[ -n "${FUZZ_RELEASE:-}" ]]; then
    profile_dir=release
    cargo afl build --release --locked --bins
else
    profile_dir=debug
    cargo afl build --locked --bins
fi

# No UI, no core-pattern or CPU-governor checks (CI machines and containers), no pinning on a
# shared machine, quick calibration.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
    AFL_NO_AFFINITY=1 AFL_FAST_CAL=1 AFL_QUIET=1

failed=()
for target in "${targets[@]}"; do
    out="$here/out/$target"
    rm -rf "$out"; mkdir -p "$here/out"
    echo "== $target: ${per_target}s"
    cargo afl fuzz -i "$here/corpus/$target" -o "$out" -V "$per_target" -t 1000 -m 256 \
        "$CARGO_TARGET_DIR/$profile_dir/$target" >"$here/out/$target.log" 2>&1 || {
        echo "afl-fuzz failed for $target:"; tail -20 "$here/out/$target.log"; failed+=("$target"); continue; }
    stats="$out/default/fuzzer_stats"
    grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs) ' "$stats" | tr -s ' ' | paste -sd' '
    found=$(find "$out/default/crashes" "$out/default/hangs" -type f -name 'id:*' 2>/dev/null)
    if [[ -n "$found" ]]; then
        echo "$found"
        failed+=("$target")
    fi
done

if (( ${#failed[@]} )); then
    echo "crashes, hangs or errors in: ${failed[*]}"
    exit 1
fi
echo "no crashes in ${targets[*]}"
