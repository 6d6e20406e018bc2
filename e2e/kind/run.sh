#!/usr/bin/env bash
# The kind end-to-end suite, in one command (needs Docker, kind and a Rust toolchain):
#
#   bash e2e/kind/run.sh
#
# Creates a kind cluster, builds both images and loads them into it, installs the chart,
# runs the kind test suite (e2e/tests/kind/), uninstalls the chart and checks that it
# left nothing behind, then deletes the cluster (kept with KEEP_CLUSTER=1).
#
#   KIND_CLUSTER      cluster name (default kuberaft-e2e)
#   KIND_NODE_IMAGE   kindest/node image, e.g. to test the oldest or newest Kubernetes we
#                     support (1.33, 1.37); default: kind's own
#   KEEP_CLUSTER=1    keep the cluster (and the tests' namespaces) for a look afterwards
#   TEST_FILTER       run only the tests whose name contains this
#
# Without Docker or kind it says what is missing and exits with status 2: skipped, not passed.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${KIND_CLUSTER:-kuberaft-e2e}"
TAG=0.1.0
NODE_IMAGE="ghcr.io/kuberaft/raft-node:$TAG"
OPERATOR_IMAGE="ghcr.io/kuberaft/raft-operator:$TAG"
RELEASE=kuberaft
RELEASE_NAMESPACE=kuberaft-system

step() { printf '\n==> %s\n' "$*"; }
skip() {
  echo "SKIPPED: the kind suite did not run: $*" >&2
  exit 2
}

command -v docker >/dev/null 2>&1 || skip "docker is not installed"
docker info >/dev/null 2>&1 || skip "no Docker engine answers ('docker info' failed)"
command -v kind >/dev/null 2>&1 || skip "kind is not installed (https://kind.sigs.k8s.io, or 'go install sigs.k8s.io/kind@latest')"
command -v kubectl >/dev/null 2>&1 || skip "kubectl is not installed"
command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
if command -v helm >/dev/null 2>&1; then
  HELM=helm
else
  bash scripts/install-k8s-tools.sh
  HELM="$PWD/.tools/bin/helm"
fi

step "kind cluster $CLUSTER"
created=0
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
  created=1
fi
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "--- diagnostics (exit status $status)"
    kubectl get raftclusters,statefulsets,pods,pvc -A -o wide || true
    kubectl -n "$RELEASE_NAMESPACE" logs deployment/"$RELEASE"-kuberaft-operator --tail=200 || true
    kubectl get events -A --sort-by=.lastTimestamp | tail -50 || true
  fi
  if [ "${KEEP_CLUSTER:-0}" != 1 ] && [ "$created" = 1 ]; then
    kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$status"
}
trap cleanup EXIT
kubectl config use-context "kind-$CLUSTER"
kubectl version

step "images: build and load into kind"
export DOCKER_BUILDKIT=1
docker build -f docker/raft-node.Dockerfile -t "$NODE_IMAGE" .
docker build -f docker/raft-operator.Dockerfile -t "$OPERATOR_IMAGE" .
kind load docker-image --name "$CLUSTER" "$NODE_IMAGE" "$OPERATOR_IMAGE"

step "helm install $RELEASE (chart charts/kuberaft-operator)"
"$HELM" upgrade --install "$RELEASE" charts/kuberaft-operator \
  --namespace "$RELEASE_NAMESPACE" --create-namespace \
  --set image.tag="$TAG" \
  --wait --timeout 5m
kubectl -n "$RELEASE_NAMESPACE" rollout status deployment/"$RELEASE"-kuberaft-operator --timeout=180s
kubectl get crd raftclusters.kuberaft.io

step "kind test suite (cargo test -p kuberaft-e2e --test kind -- --ignored)"
keep=()
[ "${KEEP_CLUSTER:-0}" = 1 ] && keep=(KUBERAFT_KIND_KEEP=1)
env KUBERAFT_KIND=1 KUBERAFT_NODE_IMAGE="$NODE_IMAGE" "${keep[@]}" \
  KUBERAFT_OPERATOR_NAMESPACE="$RELEASE_NAMESPACE" KUBERAFT_OPERATOR_LEASE="$RELEASE-kuberaft-operator" \
  cargo test --locked -p kuberaft-e2e --test kind -- --ignored --test-threads 1 --nocapture ${TEST_FILTER:-}

step "helm uninstall leaves nothing of the release behind"
"$HELM" uninstall "$RELEASE" --namespace "$RELEASE_NAMESPACE" --wait --timeout 3m
selector="app.kubernetes.io/instance=$RELEASE"
leftovers=""
for attempt in $(seq 1 60); do
  leftovers="$(kubectl get all,serviceaccounts,roles,rolebindings,configmaps,networkpolicies \
      -n "$RELEASE_NAMESPACE" -l "$selector" -o name 2>/dev/null || true)
$(kubectl get clusterroles,clusterrolebindings -l "$selector" -o name 2>/dev/null || true)"
  [ -z "$(echo "$leftovers" | tr -d '[:space:]')" ] && break
  sleep 2
done
if [ -n "$(echo "$leftovers" | tr -d '[:space:]')" ]; then
  echo "left behind after helm uninstall:"
  echo "$leftovers"
  exit 1
fi
echo "ok   nothing labelled $selector is left"
# Kept on purpose: the CRD (helm never deletes what crds/ installed, so RaftClusters and
# their data survive an uninstall) and the leader-election Lease (the operator's, removed
# with the namespace).
kubectl get crd raftclusters.kuberaft.io -o name

echo
echo "kind suite passed"
