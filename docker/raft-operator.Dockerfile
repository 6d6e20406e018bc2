# syntax=docker/dockerfile:1
# raft-operator (the controller) and raftctl (for `kubectl exec ... raftctl status`).
#   docker build -f docker/raft-operator.Dockerfile -t ghcr.io/kuberaft/raft-operator:0.1.0 .
# Runtime: distroless cc (glibc, CA certificates, no shell), user nonroot (65532); the chart
# runs it with a read-only root filesystem and every capability dropped.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kuberaft-operator --bin raft-operator --bin raftctl \
 && install -D -m 0755 target/release/raft-operator /out/raft-operator \
 && install -D -m 0755 target/release/raftctl /out/raftctl

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/raft-operator /out/raftctl /usr/local/bin/
USER 65532:65532
# metrics, /healthz and /readyz
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/raft-operator"]
CMD ["run"]
