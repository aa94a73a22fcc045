# syntax=docker/dockerfile:1
# voxroute's container image, in two stages: a full Rust toolchain builds the release
# binaries, and a slim Debian image runs them as an unprivileged user. Build it with
# `docker compose build` (see docker-compose.yml) or `docker build -t voxroute .`.
#
# The image holds two programs: `voxroute` (the entrypoint: `serve` by default) and
# `voxroute-standin`, the stand-in provider server docker-compose.yml runs with
# `entrypoint: ["voxroute-standin"]`.

# ---- build ----------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# The opus crate builds libopus from source with cmake.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The cache mounts keep downloaded crates and compiled dependencies between builds; the
# binaries are copied out of the cached target/ so that the next stage can take them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p voxroute --bin voxroute \
        -p voxroute-loadtest --bin voxroute-standin \
    && cp target/release/voxroute target/release/voxroute-standin /usr/local/bin/

# ---- run ------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: TLS to the voice providers; curl: the compose healthcheck.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user whose home is the working directory: the default SQLite store
# (`sqlite://voxroute.db`) is created there when DATABASE_URL is not set.
RUN useradd --system --user-group --create-home --home-dir /var/lib/voxroute \
    --shell /usr/sbin/nologin voxroute

COPY --from=builder /usr/local/bin/voxroute /usr/local/bin/voxroute
COPY --from=builder /usr/local/bin/voxroute-standin /usr/local/bin/voxroute-standin

USER voxroute
WORKDIR /var/lib/voxroute

# Listen on every interface inside the container; docker-compose.yml decides what the host
# publishes.
ENV VOXROUTE_LISTEN=0.0.0.0:8080
EXPOSE 8080

ENTRYPOINT ["voxroute"]
CMD ["serve"]
