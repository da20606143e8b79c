#!/usr/bin/env bash
# The end-to-end suite: the release dispatcher behind a real Tyk Gateway, with Redis and a local
# upstream, all on loopback, and the container image run by podman next to the gateway. Installs
# redis-server (Debian), and podman, buildah, runc and mmdebstrap, when root; finds the gateway at
# TYK_GATEWAY_BIN, else through ../shared/tyk-gateway/install.sh. SKIP_E2E=1 skips it (never
# under CI). Extra arguments go to pytest (e.g. -k seed).
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '==> %s\n' "$*"; }
missing() { echo "e2e: missing: $*" >&2; exit 1; }

if [ -n "${SKIP_E2E:-}" ]; then
  if [ -n "${CI:-}" ]; then echo "e2e: SKIP_E2E is set under CI: the real-gateway suite must run" >&2; exit 1; fi
  echo "SKIPPED (SKIP_E2E=1): the real-gateway suite (tests/e2e) did not run"
  exit 0
fi

if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    say "installing redis-server from Debian"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
  else
    missing "redis-server (sudo apt-get install redis-server)"
  fi
fi

if [ -z "${TYK_GATEWAY_BIN:-}" ]; then
  installer=../shared/tyk-gateway/install.sh
  if [ -x "$installer" ]; then
    TYK_GATEWAY_BIN=$("$installer" "$PWD/target/tyk-gateway")
  else
    missing "a Tyk Gateway: set TYK_GATEWAY_BIN to a tyk v5.14 binary, or provide ../shared/tyk-gateway/install.sh"
  fi
fi
export TYK_GATEWAY_BIN
"$TYK_GATEWAY_BIN" --version 2>&1 | head -1

if [ -z "${SKIP_BUILD:-}" ]; then
  say "cargo build --release"
  cargo build --release --locked --bin tyk-dispatcher
fi

venv=target/test-tools
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
if ! cmp -s tests/e2e/requirements.txt "$venv/e2e-requirements.txt"; then
  say "installing the end-to-end suite's Python packages into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
  cp tests/e2e/requirements.txt "$venv/e2e-requirements.txt"
fi

# The sidecar scenario renders the chart with Helm's own engine (the chart suite's venv).
tests/helm/tools.sh target/helm-venv -

# The image scenario (test_image.py): the Dockerfile built with podman on local base images
# (scripts/build-image.sh) and run with runc. Podman, buildah, runc and mmdebstrap are installed
# when root; otherwise the scenario is skipped, loudly, and never under CI.
image_skip=
image_tools=(podman buildah runc mmdebstrap)
missing_image_tools=()
for tool in "${image_tools[@]}"; do command -v "$tool" >/dev/null || missing_image_tools+=("$tool"); done
if [ "$(id -u)" != 0 ]; then
  image_skip="not root (rootful podman is needed; missing: ${missing_image_tools[*]:-nothing})"
elif [ "${#missing_image_tools[@]}" != 0 ]; then
  say "installing podman, buildah, runc and mmdebstrap from Debian"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi
if [ -n "$image_skip" ]; then
  if [ -n "${CI:-}" ]; then echo "e2e: the image scenario cannot run under CI: $image_skip" >&2; exit 1; fi
  echo "SKIPPED: the image scenario (tests/e2e/test_image.py) will not run: $image_skip" >&2
  export E2E_IMAGE_SKIP="$image_skip"
else
  say "container image: scripts/build-image.sh (base images, then podman build of the Dockerfile)"
  image_started=$SECONDS
  scripts/build-image.sh
  say "container image ready in $((SECONDS - image_started)) s"
fi

say "end-to-end suite: the release dispatcher behind Tyk Gateway $("$TYK_GATEWAY_BIN" --version 2>&1 | head -1)"
cd tests/e2e
"../../$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
# Again with trimmed replies (trim_replies), the one exception to byte-for-byte replies: the
# gateway must behave the same. The image scenario runs the same binary and is not repeated.
say "end-to-end suite again with TYK_DISPATCHER_TRIM_REPLIES=true"
status=0
E2E_DISPATCHER_ENV=TYK_DISPATCHER_TRIM_REPLIES=true \
  "../../$venv/bin/python" -m pytest -q -p no:cacheprovider --ignore=test_image.py "$@" || status=$?
# 5: the arguments selected only the image scenario, which this pass leaves out.
[ "$status" -eq 5 ] && status=0
exit "$status"
