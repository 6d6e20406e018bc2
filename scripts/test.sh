#!/usr/bin/env bash
# The one test command (README "Tests"). Installs what a fresh machine lacks, then
# runs formatting, lint, unit and integration tests and the deterministic simulator.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "installing missing component $component"
    rustup component add "$component"
  fi
done

step "system packages (etcdctl for the client tests, etcd 3.4 for the compatibility test, protoc for the etcd-client crate)"
missing=()
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
etcdctl version | sed -n 1p   # sed reads all input: head would close the pipe early (SIGPIPE under pipefail)
etcd --version | sed -n 1p
protoc --version

step "real Go peers (scripts/go-peers.sh): etcd, etcdctl, etcdutl 3.6, etcd's benchmark tool, kube-apiserver, kube-controller-manager"
# Built from their official Go modules once per machine and cached outside the repository
# (~/.cache/kuberaft-go-peers); a cached run takes well under a second. The one-time builds
# on a 2-core machine (README "Real Go peers"): etcd 149 s, the benchmark tool 2 s after it,
# Kubernetes 1,220 s (measured with the cores shared with other builds). The tests find the binaries through these variables: the etcd 3.6
# comparisons in node/tests/etcd_compat.rs and the Go-client comparison need them.
command -v go >/dev/null 2>&1 || { echo "go is required (Go 1.26: the polyglot machines have it)"; exit 1; }
go version
go_peers_env=$(bash scripts/go-peers.sh --print-env)
while IFS='=' read -r name value; do
  [ -n "$name" ] && export "$name=$value"
done <<<"$go_peers_env"
printf '%s\n' "$go_peers_env"
"$ETCD36_BIN" --version | sed -n 1p
"$ETCDCTL36_BIN" version | sed -n 1p

step "Go: gofmt and go vet of e2e/go-client (etcd's Go client against kuberaft: node/tests/go_client.rs)"
unformatted=$(gofmt -l e2e/go-client)
[ -z "$unformatted" ] || { echo "gofmt would change: $unformatted"; exit 1; }
(cd e2e/go-client && GOFLAGS=-mod=readonly GOTOOLCHAIN=local go vet ./...)

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit and integration tests"
cargo test --workspace --locked

step "Kubernetes manifests: chart, CRD, examples and their children (scripts/check-manifests.sh)"
bash scripts/check-manifests.sh

step "simulator: ${SIM_SEEDS:=2000} seeds from ${SIM_SEED_START:=0} (profile sim: release with debug assertions)"
SIM_SEEDS=$SIM_SEEDS SIM_SEED_START=$SIM_SEED_START \
  cargo test --profile sim --locked -p kuberaft-node --test simulation -- --nocapture

step "the simulator catches three injected consensus bugs (each at least 5 times in the CI seed range)"
python3 scripts/inject-bugs.py --seeds "$SIM_SEEDS" --require 5

echo
echo "all tests passed"
