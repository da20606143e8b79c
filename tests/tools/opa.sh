#!/usr/bin/env bash
# Builds the Open Policy Agent server (opa) that the tests run as a real policy engine, from its
# Go module at a pinned version, into $TOOLS_DIR/bin/opa (default: target/test-tools/bin/opa).
# Nothing of OPA is kept in this repository: the source comes from the Go module proxy and the
# binary stays under target/. Idempotent: when the binary is already there and reports the pinned
# version, nothing is built. Prints the binary's absolute path on stdout, and its messages on
# stderr, so that a caller can write OPA_BIN=$(tests/tools/opa.sh).
set -euo pipefail

# The pinned release. Raise it on purpose, together with whatever the tests expect of it.
OPA_VERSION=1.22.4

# The repository is found from this script's place, so that it runs from any checkout and any cwd.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tools=${TOOLS_DIR:-$repo/target/test-tools}
bin="$tools/bin/opa"

say() { printf '==> %s\n' "$*" >&2; }

# `opa version` prints lines such as "Version: 1.22.4": the first of them tells the release.
installed_version() {
  "$bin" version 2>/dev/null | sed -n 's/^Version: *//p' | head -1
}

if [ -x "$bin" ] && [ "$(installed_version)" = "$OPA_VERSION" ]; then
  echo "$bin"
  exit 0
fi

# Go's official archive installs to /usr/local/go, which a non-login shell may not have on PATH.
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null; then
  echo "missing: a Go toolchain (go) to build opa v$OPA_VERSION" >&2
  exit 1
fi

say "building opa v$OPA_VERSION into $tools/bin (Go module: 1.5 to 2.5 min with cold Go caches)"
started=$SECONDS
mkdir -p "$repo/target" "$tools/bin"

# A module of our own, thrown away afterwards: it only asks for OPA at the pinned version, so that
# `go build` resolves OPA's own dependencies exactly as its go.mod and go.sum pin them.
work=$(mktemp -d "$repo/target/opa-build.XXXXXX")
# The new binary is written next to its final place, then renamed over it (below), so that a
# stopped build never leaves a half-written bin/opa that a later run would take for a good one.
partial="$tools/bin/.opa.partial.$$"
trap 'rm -rf "$work" "$partial"' EXIT

# -mod=mod lets the throwaway module record what it needs; cgo off gives a static binary that does
# not depend on the machine's C library; the local toolchain only, never a downloaded one.
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local
(
  cd "$work"
  # `go get` lists every module it adds: keep that in a log, shown only when something fails.
  if ! { go mod init opa-build && go get "github.com/open-policy-agent/opa@v$OPA_VERSION"; } >go.log 2>&1; then
    cat go.log >&2
    exit 1
  fi
  # -trimpath and -s -w: no local paths and no debug tables in the binary, which is smaller.
  go build -trimpath -ldflags='-s -w' -o "$partial" github.com/open-policy-agent/opa
)
mv -f "$partial" "$bin"

got=$(installed_version)
if [ "$got" != "$OPA_VERSION" ]; then
  echo "opa: built binary reports version '$got', expected $OPA_VERSION" >&2
  exit 1
fi
say "opa v$OPA_VERSION ready in $((SECONDS - started)) s"
echo "$bin"
