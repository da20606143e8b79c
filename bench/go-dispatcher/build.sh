#!/usr/bin/env bash
# Generates the coprocess Go package from the repository's proto/*.proto and builds the grpc-go
# Dispatcher. Prints the path of the binary (stdout, one line); progress goes to stderr.
#
#   bench/go-dispatcher/build.sh [OUT_BINARY]     # default: target/bench/go-dispatcher/go-dispatcher
#
# Nothing generated is written into the source tree: the sources are copied to a build
# directory ($GO_DISPATCHER_BUILD_DIR, default target/bench/go-dispatcher), the .pb.go files are
# generated beside them, and the binary is built there. A run whose inputs (protos, main.go,
# go.mod, go.sum, plugin and Go versions, this script) have not changed since the last build of
# the same OUT_BINARY does nothing.
#
# Tools: Go (PATH or /usr/local/go/bin); protoc-gen-go and protoc-gen-go-grpc, installed with
# `go install` from the module proxy into the build directory; protoc: $PROTOC, else `protoc` on
# PATH, else the binary of the protoc-bin-vendored-linux-x86_64 crate in ~/.cargo/registry
# (present after `cargo build`), else Debian's protobuf-compiler, installed with apt when root.
#
# The protos say `option go_package = "/coprocess"`, which is not a usable Go import path, so
# each file is mapped with protoc-gen-go's M option to this module's coprocess package.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BUILD="${GO_DISPATCHER_BUILD_DIR:-$TARGET_DIR/bench/go-dispatcher}"
OUT="${1:-$BUILD/go-dispatcher}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac

MODULE="tyk-dispatcher/bench/go-dispatcher"
PROTOC_GEN_GO_GRPC_VERSION="v1.6.2"

log() { printf 'go-dispatcher/build.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

GO="$(command -v go || true)"
[ -n "$GO" ] || GO=/usr/local/go/bin/go
[ -x "$GO" ] || die "go is not installed (looked on PATH and in /usr/local/go/bin)"

# protoc-gen-go must match the google.golang.org/protobuf the code is built with.
PROTOC_GEN_GO_VERSION="$(awk '$1 == "google.golang.org/protobuf" { print $2 }' "$HERE/go.mod")"
[ -n "$PROTOC_GEN_GO_VERSION" ] || die "google.golang.org/protobuf is not required in go.mod"
[ -f "$HERE/go.sum" ] || die "go.sum is missing (run 'go mod tidy' on a generated copy, see README)"

shopt -s nullglob
PROTOS=("$ROOT"/proto/*.proto)
shopt -u nullglob
[ "${#PROTOS[@]}" -gt 0 ] || die "no .proto files in $ROOT/proto"

# --- up to date? ------------------------------------------------------------------------------
STAMP_DIR="$BUILD/stamps"
STAMP="$STAMP_DIR/$(printf '%s' "$OUT" | sha256sum | cut -c1-16)"
INPUTS="$(
    {
        sha256sum "${PROTOS[@]}" "$HERE/main.go" "$HERE/go.mod" "$HERE/go.sum" "$HERE/build.sh"
        echo "$PROTOC_GEN_GO_VERSION $PROTOC_GEN_GO_GRPC_VERSION"
        "$GO" version
    } | sed "s|$ROOT/||" | sha256sum | cut -d' ' -f1
)"
if [ -x "$OUT" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$INPUTS" ]; then
    echo "$OUT"
    exit 0
fi

# --- protoc -------------------------------------------------------------------------------------
find_protoc() {
    if [ -n "${PROTOC:-}" ]; then
        [ -x "$PROTOC" ] || die "PROTOC=$PROTOC is not executable"
        echo "$PROTOC"
        return
    fi
    if command -v protoc >/dev/null; then
        command -v protoc
        return
    fi
    local candidate
    if [ "$(uname -m)" = x86_64 ]; then
        for candidate in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/protoc-bin-vendored-linux-x86_64-*/bin/protoc; do
            if [ -x "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
                echo "$candidate"
                return
            fi
        done
    fi
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        log "installing protobuf-compiler with apt"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler; } >&2 \
            || die "apt-get install protobuf-compiler failed"
        command -v protoc
        return
    fi
    die "no protoc: set PROTOC, install protobuf-compiler, or run cargo build once (protoc-bin-vendored)"
}
PROTOC_BIN="$(find_protoc)"
log "protoc: $PROTOC_BIN ($("$PROTOC_BIN" --version))"

# --- code generators ------------------------------------------------------------------------------
mkdir -p "$BUILD/bin" "$STAMP_DIR"
BIN="$BUILD/bin"
if [ "$("$BIN/protoc-gen-go" --version 2>/dev/null)" != "protoc-gen-go $PROTOC_GEN_GO_VERSION" ]; then
    log "go install google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
    GOBIN="$BIN" "$GO" install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION" >&2
fi
if [ "$("$BIN/protoc-gen-go-grpc" --version 2>/dev/null)" != "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" ]; then
    log "go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
    GOBIN="$BIN" "$GO" install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION" >&2
fi

# --- generate into a fresh copy of the sources --------------------------------------------------
SRC="$BUILD/src"
rm -rf "$SRC"
mkdir -p "$SRC/coprocess"
cp "$HERE/main.go" "$HERE/go.mod" "$HERE/go.sum" "$SRC/"
mappings=()
for proto in "${PROTOS[@]}"; do
    mappings+=("M$(basename "$proto")=$MODULE/coprocess;coprocess")
done
go_opts=(--go_opt=paths=source_relative)
grpc_opts=(--go-grpc_opt=paths=source_relative)
for m in "${mappings[@]}"; do
    go_opts+=("--go_opt=$m")
    grpc_opts+=("--go-grpc_opt=$m")
done
log "generating Go code from ${#PROTOS[@]} protos"
PATH="$BIN:$PATH" "$PROTOC_BIN" --proto_path="$ROOT/proto" \
    --go_out="$SRC/coprocess" "${go_opts[@]}" \
    --go-grpc_out="$SRC/coprocess" "${grpc_opts[@]}" \
    "${PROTOS[@]}"

# --- build ------------------------------------------------------------------------------------
log "go build -> $OUT"
mkdir -p "$(dirname "$OUT")"
(cd "$SRC" && CGO_ENABLED=0 "$GO" build -mod=readonly -buildvcs=false -trimpath -o "$OUT.tmp" .) >&2
mv -f "$OUT.tmp" "$OUT"
echo "$INPUTS" >"$STAMP"
echo "$OUT"
