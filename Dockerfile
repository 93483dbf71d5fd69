# syntax=docker/dockerfile:1
# The Kataven Hub API image: `docker build -t kataven-hub .` (or `docker compose up`, see
# docker-compose.yml and the README's "Run with Docker Compose").
#
# Three build stages with cargo-chef: the dependency layer (`cargo chef cook`) is rebuilt only
# when Cargo.toml or Cargo.lock change, not when the service's own code does. The runtime
# image is Debian slim with the binary, CA certificates (HTTPS to the OIDC issuer) and curl
# (the health check), running as an unprivileged user.
#
# tests/api/compose.rs keeps this file honest: the build command is the one below, every
# KATAVEN_* variable is one the binary knows, and the entrypoint and command are run by the
# test suite against a real PostgreSQL and Redis.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency graph only (the recipe changes when the manifests do).
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Crates patched in through `[patch.crates-io]` (vendor/README.md): the recipe leaves them out,
# and the dependency layer is built with them.
COPY vendor vendor
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin kataven-hub
COPY . .
RUN cargo build --release --locked --bin kataven-hub

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/kataven --create-home \
        --shell /usr/sbin/nologin kataven \
    && chmod 0700 /var/lib/kataven
COPY --from=builder /src/target/release/kataven-hub /usr/local/bin/kataven-hub
COPY --chmod=0755 docker/init-demo.sh /usr/local/bin/kataven-init-demo
USER kataven:kataven
WORKDIR /var/lib/kataven
ENV KATAVEN_LISTEN=0.0.0.0:8080 \
    KATAVEN_LOG_FORMAT=json
EXPOSE 8080
# Ready when the system database answers (503 otherwise); see docs/operations.md.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/readyz > /dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/kataven-hub"]
CMD ["serve"]
