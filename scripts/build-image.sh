#!/usr/bin/env bash
# Builds the image from the Dockerfile, unmodified, with podman: on the local base images of
# scripts/local-base-images.sh (made when missing or stale), never pulling (--pull=never); the
# crates come from the registry into the Dockerfile's cache mounts, which are its only cache. The revision label is the
# git commit (with -dirty when the build context differs from it).
#
#   scripts/build-image.sh [TAG]        (default: tyk-dispatcher:<Cargo.toml version>)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
tag=${1:-tyk-dispatcher:$version}
context=(Cargo.toml Cargo.lock build.rs proto src Dockerfile)
if revision=$(git rev-parse HEAD 2>/dev/null); then
  if [ -n "$(git status --porcelain -- "${context[@]}")" ]; then revision=$revision-dirty; fi
else
  revision=unknown
fi

started=$SECONDS
scripts/local-base-images.sh
bases=$((SECONDS - started))

# --layers=false: buildah 1.28 (Debian 12) reuses a cached LABEL step when only a build argument's
# value changed, which left the previous commit's revision on the image. The cache mounts keep the
# crates and the target directory, so an unchanged tree still builds in seconds.
say "podman build --pull=never --layers=false -t $tag (revision $revision)"
previous=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
started=$SECONDS
podman build --pull=never --layers=false --build-arg "VERSION=$version" --build-arg "REVISION=$revision" -t "$tag" .
say "image $tag built in $((SECONDS - started)) s (base images: $bases s)"
# The image this tag named before, now untagged (unless a container still uses it).
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
podman image inspect --format '{{.Id}} {{.Size}} bytes' "$tag"
