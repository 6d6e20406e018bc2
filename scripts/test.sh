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

step "system packages (etcdctl for the client tests, etcd 3.4 for the compatibility test, protoc for the etcd-client crate, nft for the robustness runner's partitions)"
missing=()
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
etcdctl version | sed -n 1p   # sed reads all input: head would close the pipe early (SIGPIPE under pipefail)
etcd --version | sed -n 1p
protoc --version

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

step "fuzz: every decoder of outside bytes, ${FUZZ_SECONDS:=20} s per target (profile sim; a new seed each run, printed)"
FUZZ_SECONDS=$FUZZ_SECONDS cargo test --profile sim --locked -p kuberaft-node --test fuzz -- --nocapture --test-threads=2

step "robustness runner: real processes, crash points, partitions, membership changes (README \"Robustness\"; a new seed each run, printed)"
ROBUST_SECONDS=${ROBUST_SECONDS:-20} \
  cargo test --locked -p kuberaft-node --features failpoints --test robustness -- --ignored --nocapture

echo
echo "all tests passed"
