#!/usr/bin/env bash
# The one test command (README "Tests"). Installs what a fresh machine lacks, then
# runs formatting, lint, unit and integration tests and the deterministic simulator.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version

step "disk: the build and the tests need about 15 GiB free (a fresh build's target/ is ~8 GiB)"
df -h . | sed -n 2p
avail_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
if [ "$avail_kib" -lt $((15 * 1024 * 1024)) ]; then
  echo "warning: only $((avail_kib / 1024 / 1024)) GiB free here; a full disk shows up later as a linker crash (SIGBUS) or ENOSPC in a test"
fi
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

step "an S3-compatible server for the backup e2e test (PyPI moto[server]: moto_server)"
if ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install --quiet 'moto[server]==5.2.1' || python3 -m pip install --quiet --user 'moto[server]==5.2.1'
  export PATH="$PATH:$(python3 -m site --user-base)/bin"
fi
moto_server --help >/dev/null && echo "moto_server: $(command -v moto_server)"
export KUBERAFT_REQUIRE_MOTO=1 # the backup e2e test fails instead of skipping without it

step "real Go peers (scripts/go-peers.sh): etcd, etcdctl, etcdutl 3.6, etcd's benchmark tool, kube-apiserver, kube-controller-manager"
# Built from their official Go modules once per machine and cached outside the repository
# (~/.cache/kuberaft-go-peers); a cached run takes well under a second. The one-time builds
# on an idle 2-core machine from empty Go caches (README "Real Go peers"): 390 s in all
# (etcd 46 s, the benchmark tool 1 s, Kubernetes 343 s). The tests find the binaries
# through these variables: the etcd 3.6 comparisons in node/tests/etcd_compat.rs, the
# Go-client comparison, Kubernetes' API server on kuberaft and the operator against a real
# API server need them.
command -v go >/dev/null 2>&1 || { echo "go is required (Go 1.26: the polyglot machines have it)"; exit 1; }
go version
# All of them are built by default. KUBERAFT_GO_PEERS=etcd,benchmark leaves the Kubernetes
# binaries out (about 6 minutes less on a fresh machine); they are then exported only if
# already cached (--no-build), and the Kubernetes tests say they are skipped otherwise.
# etcd and the benchmark tool are required. A Kubernetes build that fails (a module the
# proxy did not serve, say) is reported and its tests are skipped, not the whole run failed.
peers="${KUBERAFT_GO_PEERS:-etcd,benchmark,kubernetes}"
go_peers_env=$(bash scripts/go-peers.sh --print-env --only etcd,benchmark)
case ",$peers," in
  *,kubernetes,*)
    if ! kube_env=$(bash scripts/go-peers.sh --print-env --only kubernetes); then
      echo "WARNING: building kube-apiserver and kube-controller-manager FAILED (output above);" \
        "the Kubernetes tests will be skipped"
      kube_env=""
    fi ;;
  *) kube_env=$(bash scripts/go-peers.sh --print-env --only kubernetes --no-build) ;;
esac
go_peers_env+=$'\n'"$kube_env"
while IFS='=' read -r name value; do
  [ -n "$name" ] && export "$name=$value"
done <<<"$go_peers_env"
if [ -z "${KUBE_APISERVER_BIN:-}" ]; then
  echo "kube-apiserver is not cached: node/tests/kube_apiserver.rs will be skipped" \
    "(KUBERAFT_GO_PEERS leaves kubernetes out: build it once with bash scripts/test.sh)"
else
  bash scripts/install-k8s-tools.sh >/dev/null # kubectl for that test, in .tools/bin
fi
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

step "fuzz: every decoder of outside bytes, ${FUZZ_SECONDS:=20} s per target (profile sim; a new seed each run, printed)"
FUZZ_SECONDS=$FUZZ_SECONDS cargo test --profile sim --locked -p kuberaft-node --test fuzz -- --nocapture --test-threads=2

step "robustness runner: real processes, crash points, power loss, partitions (5 members in partition), membership changes (README \"Robustness\"; a new seed each run, printed)"
ROBUST_SECONDS=${ROBUST_SECONDS:-20} \
  cargo test --locked -p kuberaft-node --features failpoints --test robustness -- --ignored --nocapture

if [ "${ROBUST_INJECT:-0}" = 1 ]; then
  # About 10 minutes more: three mutant builds, then the runner at the CI budget until each is caught.
  step "the robustness runner catches three injected bugs on every one of ${ROBUST_INJECT_SEEDS:=2} seeds"
  python3 scripts/inject-robust-bugs.py --seeds "$ROBUST_INJECT_SEEDS" --seconds "${ROBUST_SECONDS:-20}" --require
fi

echo
df -h . | sed -n 2p
echo "all tests passed"
