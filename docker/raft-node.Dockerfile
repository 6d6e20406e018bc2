# syntax=docker/dockerfile:1
# raft-node: the Raft member that speaks the etcd v3 API.
#   docker build -f docker/raft-node.Dockerfile -t ghcr.io/kuberaft/raft-node:0.1.0 .
# Runtime: distroless cc (glibc, CA certificates, no shell, no package manager), user nonroot
# (65532). Data lives on the volumes the operator mounts; the root filesystem can be read-only.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# protoc comes from the protoc-bin-vendored crate; nothing else to install.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kuberaft-node --bin raft-node \
 && install -D -m 0755 target/release/raft-node /out/raft-node

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/raft-node /usr/local/bin/raft-node
USER 65532:65532
# client (etcd v3 gRPC, admin API), peer, metrics and probes
EXPOSE 2379 2380 2381
ENTRYPOINT ["/usr/local/bin/raft-node"]
