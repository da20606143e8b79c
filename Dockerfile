# syntax=docker/dockerfile:1
#
# tyk-dispatcher image: a Rust builder and a distroless runtime on the same Debian release
# (bookworm = Debian 12), so the binary never needs a newer glibc than the runtime has (rust:1.95
# alone now means trixie, whose glibc 2.41 binaries fail on distroless cc-debian12's 2.36).
# tests/helm/test_dockerfile.py checks that pairing, the binary's glibc needs and hadolint.
#
#   docker build -t tyk-dispatcher:0.1.0 .
#   docker run --rm tyk-dispatcher:0.1.0 check-config

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# build.rs generates the protocol code with a vendored protoc: nothing to install.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# The registry, git checkouts and target directory stay in BuildKit caches between builds; the
# binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,id=tyk-dispatcher-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=tyk-dispatcher-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=tyk-dispatcher-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin tyk-dispatcher \
    && install -D -m 0755 target/release/tyk-dispatcher /out/tyk-dispatcher

# glibc, libgcc_s and CA certificates, no shell; "nonroot" is UID/GID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="tyk-dispatcher" \
      org.opencontainers.image.description="gRPC plugin server (coprocess Dispatcher) for Tyk Gateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /out/tyk-dispatcher /usr/local/bin/tyk-dispatcher
USER 65532:65532
# gRPC (plaintext) and the admin HTTP port (/livez, /readyz, /metrics).
EXPOSE 50051 9464
# No arguments: serve. `check-config` prints the effective configuration.
ENTRYPOINT ["/usr/local/bin/tyk-dispatcher"]
