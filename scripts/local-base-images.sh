#!/usr/bin/env bash
# Makes the Dockerfile's two base images locally, for machines that cannot pull from a container
# registry, so that the unmodified Dockerfile builds with `podman build --pull=never`:
#
#   the builder stage's image (rust:1.95-bookworm): Debian 12 (minbase, plus the compiler and C
#     library headers the build needs) with this machine's own Rust toolchain laid out as the
#     official image has it: RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo,
#     /usr/local/cargo/bin first on PATH, the toolchain named <version>-<host> with the minimal
#     profile's components (rustc, cargo, rust-std) and rustup's proxies;
#   the runtime's image (gcr.io/distroless/cc-debian12:nonroot): the files of Debian 12's
#     base-files, netbase, tzdata, libc6 (glibc 2.36), libssl3, libgcc-s1, gcc-12-base, libgomp1
#     and libstdc++6 (distroless cc's package set), the CA bundle made from ca-certificates,
#     /etc/passwd and /etc/group with nonroot (65532), /tmp, /home/nonroot; no shell, no package
#     manager, nothing run from a package's maintainer scripts.
#
# Both are labelled as local stand-ins (org.opencontainers.image.vendor and
# io.tyk-dispatcher.local-stand-in). The image names come from the Dockerfile's FROM lines; the
# Rust version from the builder's tag, which this machine's rustc (or $RUSTC) must match.
#
#   scripts/local-base-images.sh [--force]
#
# An image that exists with this script's recipe label is kept (--force makes it again). Needs
# podman and mmdebstrap (Debian packages), python3 and network access to Debian's archive (the
# host's apt sources when they are Debian 12's, else mmdebstrap's default mirror).
set -euo pipefail
cd "$(dirname "$0")/.."

force=
[ "${1:-}" = "--force" ] && force=1

say() { printf '==> %s\n' "$*"; }
die() { echo "local-base-images: $*" >&2; exit 1; }

for tool in podman mmdebstrap python3 tar; do
  command -v "$tool" >/dev/null || die "missing: $tool (apt-get install podman mmdebstrap)"
done

# The two FROM lines of the Dockerfile: builder first, runtime last.
mapfile -t froms < <(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile)
[ "${#froms[@]}" = 2 ] || die "expected two FROM lines in the Dockerfile, found ${#froms[@]}"
builder_ref=${froms[0]}
runtime_ref=${froms[1]}
case "$builder_ref" in
  rust:*-bookworm) ;;
  *) die "the builder is $builder_ref; this script makes rust:<version>-bookworm only" ;;
esac
[ "$runtime_ref" = "gcr.io/distroless/cc-debian12:nonroot" ] \
  || die "the runtime is $runtime_ref; this script makes gcr.io/distroless/cc-debian12:nonroot only"
suite=bookworm
# A short name is what Docker would make of it.
builder_image=docker.io/library/$builder_ref
rust_minor=${builder_ref#rust:}
rust_minor=${rust_minor%-bookworm}

# The recipe: this script's text, the host's Rust toolchain and its local CA certificates (both
# go into the builder). An image carrying the same recipe label is current; Debian's newer
# package versions need --force.
local_cas=/usr/local/share/ca-certificates
recipe=$({ cat "$0"; "${RUSTC:-rustc}" -vV 2>/dev/null || true; cat "$local_cas"/*.crt 2>/dev/null || true; } \
  | sha256sum | cut -c1-16)
current() {
  [ -z "$force" ] && [ "$(podman image inspect --format '{{index .Labels "io.tyk-dispatcher.local-stand-in"}}' "$1" 2>/dev/null)" = "$recipe" ]
}

# Debian 12's sources: the host's own when they name bookworm (its mirror, updates and security).
sources=()
for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
  if [ -f "$candidate" ] && grep -Eq '^[^#]*\bbookworm\b' "$candidate"; then
    sources=("$candidate")
    break
  fi
done

work=target/local-base-images
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
stand_in_labels=(
  --change "LABEL io.tyk-dispatcher.local-stand-in=$recipe"
  --change "LABEL org.opencontainers.image.vendor=\"local stand-in made by scripts/local-base-images.sh\""
)

# ---------------------------------------------------------------------------------------------
# The runtime: distroless cc-debian12's files, from the Debian packages themselves.

make_runtime() {
  local stage=$work/runtime-debs root=$work/runtime deb
  local packages=(base-files netbase tzdata libc6 libssl3 libgcc-s1 gcc-12-base libgomp1 libstdc++6)
  say "runtime stand-in $runtime_ref: downloading ${packages[*]} ca-certificates ($suite)"
  mkdir -p "$stage/debs"
  # The extract variant fetches the packages and their dependencies; only the listed ones are used.
  mmdebstrap --quiet --variant=extract --include="$(IFS=,; echo "${packages[*]},ca-certificates")" \
    --extract-hook="cp \"\$1\"/var/cache/apt/archives/*.deb '$PWD/$stage/debs/'" \
    "$suite" "$stage/chroot" "${sources[@]}"
  rm -rf "$stage/chroot"

  # Merged /usr, as distroless debian12 has it.
  mkdir -p "$root"/usr/{bin,sbin,lib,lib64}
  for dir in bin sbin lib lib64; do ln -s "usr/$dir" "$root/$dir"; done
  mkdir -p "$root/var/lib/dpkg/status.d"
  for pkg in "${packages[@]}"; do
    deb=$(find "$stage/debs" -name "${pkg}_*.deb" | head -1)
    [ -n "$deb" ] || die "$pkg was not downloaded"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$root" --keep-directory-symlink --no-same-owner
    # What was installed, for image scanners (as distroless keeps it).
    dpkg-deb --field "$deb" > "$root/var/lib/dpkg/status.d/$pkg"
  done
  # No maintainer scripts ran: the CA bundle is made here, as update-ca-certificates makes it
  # (every certificate Debian ships, in name order).
  deb=$(find "$stage/debs" -name 'ca-certificates_*.deb' | head -1)
  mkdir -p "$stage/ca" "$root/etc/ssl/certs"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$stage/ca" --no-same-owner
  find "$stage/ca/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | while read -r crt; do
    sed -e '$a\' "$crt"
  done > "$root/etc/ssl/certs/ca-certificates.crt"
  grep -c 'BEGIN CERTIFICATE' "$root/etc/ssl/certs/ca-certificates.crt" | grep -qv '^0$' || die "empty CA bundle"
  cp "$stage/ca/usr/share/doc/ca-certificates/copyright" "$root/usr/share/doc/" 2>/dev/null || true
  dpkg-deb --field "$deb" > "$root/var/lib/dpkg/status.d/ca-certificates"

  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' > "$root/etc/group"
  printf '%s\n' 'hosts: files dns' 'networks: files' 'passwd: files' 'group: files' 'shadow: files' \
    > "$root/etc/nsswitch.conf"
  mkdir -p "$root/tmp" "$root/root" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root" "$root/home/nonroot"
  chown 65532:65532 "$root/home/nonroot"

  # Nothing that runs commands: base-files' motd script is the only executable besides the
  # libraries, and it is a shell script without a shell.
  rm -rf "$root/etc/update-motd.d"
  for forbidden in sh bash dash busybox dpkg apt apt-get; do
    if [ -e "$root/usr/bin/$forbidden" ] || [ -e "$root/usr/sbin/$forbidden" ]; then
      die "the runtime stand-in has $forbidden"
    fi
  done

  tar -C "$root" --numeric-owner --sort=name -cf "$work/runtime.tar" .
  podman rmi --force "$runtime_ref" >/dev/null 2>&1 || true
  podman import --quiet "${stand_in_labels[@]}" \
    --change "LABEL org.opencontainers.image.description=\"Debian 12 files in the layout of gcr.io/distroless/cc-debian12:nonroot\"" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    --change "USER 65532" --change "WORKDIR /home/nonroot" \
    --message "local stand-in for $runtime_ref" \
    "$work/runtime.tar" "$runtime_ref" >/dev/null
  rm -rf "$root" "$stage" "$work/runtime.tar"
}

# ---------------------------------------------------------------------------------------------
# The builder: Debian 12 with this machine's Rust toolchain in the official image's layout.

make_builder() {
  local rustc=${RUSTC:-rustc} sysroot version host toolchain stage=$work/rust
  version=$("$rustc" --version | awk '{print $2}')
  case "$version" in
    "$rust_minor".*) ;;
    *) die "this machine's rustc is $version; the Dockerfile's builder is Rust $rust_minor (set RUSTC to a $rust_minor rustc)" ;;
  esac
  sysroot=$("$rustc" --print sysroot)
  host=$("$rustc" -vV | awk '/^host:/ {print $2}')
  toolchain=$version-$host
  local rustup
  rustup=$(command -v rustup) || die "missing: rustup (the official image's cargo and rustc are rustup's proxies)"
  rustup=$(readlink -f "$rustup")
  say "builder stand-in $builder_ref: Rust $version from $sysroot, Debian $suite minbase + gcc, libc6-dev"

  # RUSTUP_HOME: the toolchain with the minimal profile's components only.
  mkdir -p "$stage/rustup/toolchains" "$stage/cargo/bin"
  cp -a "$sysroot/." "$stage/rustup/toolchains/$toolchain"
  python3 - "$stage/rustup/toolchains/$toolchain" "$host" <<'EOF'
import pathlib, re, shutil, sys
root, host = pathlib.Path(sys.argv[1]), sys.argv[2]
rustlib = root / "lib" / "rustlib"
keep = {f"rustc-{host}", f"cargo-{host}", f"rust-std-{host}"}
components = (rustlib / "components").read_text().split()
missing = keep - set(components)
if missing:
    sys.exit(f"the toolchain lacks {sorted(missing)}")
for component in components:
    if component in keep:
        continue
    manifest = rustlib / f"manifest-{component}"
    for line in manifest.read_text().splitlines():
        kind, _, rel = line.partition(":")
        path = root / rel
        if kind == "dir":
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    manifest.unlink()
(rustlib / "components").write_text("".join(f"{c}\n" for c in components if c in keep))
config = rustlib / "multirust-config.toml"
if config.exists():
    def name(block):
        fields = dict(re.findall(r'(?m)^(pkg|target) = "([^"]+)"', block))
        return f"{fields['pkg']}-{fields['target']}"
    blocks = re.split(r"(?m)^(?=\[\[components\]\])", config.read_text())
    config.write_text("".join(b for b in blocks if not b.startswith("[[components]]") or name(b) in keep))
EOF
  # Empty folders the removed components leave (documentation) go too.
  find "$stage/rustup/toolchains/$toolchain/share" -depth -type d -empty -delete 2>/dev/null || true
  cat > "$stage/rustup/settings.toml" <<EOF
version = "12"
default_toolchain = "$toolchain"
profile = "minimal"

[overrides]
EOF
  # CARGO_HOME/bin: rustup and its proxies, as rustup-init installs them.
  install -m 0755 "$rustup" "$stage/cargo/bin/rustup"
  for proxy in cargo cargo-clippy cargo-fmt cargo-miri clippy-driver rls rust-analyzer rust-gdb rust-gdbgui \
               rust-lldb rustc rustdoc rustfmt; do
    ln "$stage/cargo/bin/rustup" "$stage/cargo/bin/$proxy"
  done
  chmod -R a+w "$stage/rustup" "$stage/cargo"

  # The host's own additions to its CA store (update-ca-certificates' local folder), so that the
  # build reaches the crate registry wherever the host does (e.g. behind a TLS-inspecting proxy).
  local cas=()
  if compgen -G "$local_cas/*.crt" >/dev/null; then
    mkdir -p "$stage/ca"
    cp "$local_cas"/*.crt "$stage/ca/"
    cas=(--customize-hook="cp '$PWD/$stage/ca/'*.crt \"\$1\"$local_cas/ && chroot \"\$1\" update-ca-certificates")
  fi
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,gcc,libc6-dev,make,pkg-config \
    --customize-hook="mkdir -p \"\$1\"/usr/local && cp -a '$PWD/$stage/rustup' '$PWD/$stage/cargo' \"\$1\"/usr/local/" \
    "${cas[@]}" \
    --customize-hook='chroot "$1" env RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo /usr/local/cargo/bin/cargo --version' \
    --customize-hook='chroot "$1" env RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo /usr/local/cargo/bin/rustup show active-toolchain' \
    "$suite" "$work/builder.tar" "${sources[@]}"
  rm -rf "$stage"
  podman rmi --force "$builder_image" >/dev/null 2>&1 || true
  podman import --quiet "${stand_in_labels[@]}" \
    --change "LABEL org.opencontainers.image.description=\"Debian 12 with Rust $version in the layout of the official rust:$rust_minor-bookworm image\"" \
    --change "ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV RUSTUP_HOME=/usr/local/rustup" --change "ENV CARGO_HOME=/usr/local/cargo" \
    --change "ENV RUST_VERSION=$version" --change 'CMD ["bash"]' \
    --message "local stand-in for $builder_ref" \
    "$work/builder.tar" "$builder_image" >/dev/null
  rm -f "$work/builder.tar"
}

started=$SECONDS
if current "$runtime_ref"; then say "runtime stand-in $runtime_ref is current"; else make_runtime; fi
if current "$builder_image"; then say "builder stand-in $builder_ref is current"; else make_builder; fi
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' --filter "label=io.tyk-dispatcher.local-stand-in=$recipe"
say "base images ready in $((SECONDS - started)) s"
