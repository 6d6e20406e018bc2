#!/usr/bin/env bash
# Operator manifests: the committed CRD equals the generator's output, and the CRD and
# the children rendered for every example pass `kubernetes-validate --strict` against
# the oldest and the newest Kubernetes version the operator supports (k8s-openapi 0.29:
# 1.33 to 1.37). Installs kubernetes-validate into a venv under ~/.cache if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=(1.33.0 1.37.0)
VENV="${KUBERAFT_KV_VENV:-$HOME/.cache/kuberaft/kubernetes-validate}"
: "${CARGO_TARGET_DIR:=target}"

cargo build --locked -q -p kuberaft-operator --bin raft-operator
OP="$CARGO_TARGET_DIR/debug/raft-operator"

echo "CRD drift: crds/raftcluster.yaml vs raft-operator crd"
if ! diff -u crds/raftcluster.yaml <("$OP" crd); then
  echo "crds/raftcluster.yaml is stale; regenerate: $OP crd > crds/raftcluster.yaml" >&2
  exit 1
fi

KV="$VENV/bin/kubernetes-validate"
if [ ! -x "$KV" ]; then
  echo "installing kubernetes-validate into $VENV"
  if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q kubernetes-validate; }; then
    echo "!!!!!!!!!! SKIPPED: could not install kubernetes-validate (pip failed); schema validation NOT run !!!!!!!!!!" >&2
    exit 0
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The examples themselves are RaftClusters (checked against the CRD's schema by the API
# server and by `render`); what is validated here is the CRD and their children.
files=(crds/raftcluster.yaml)
for example in examples/*.yaml; do
  out="$work/$(basename "$example" .yaml)-children.yaml"
  "$OP" render -f "$example" > "$out"
  files+=("$out")
done

# The validator must be able to fail: a child with an unknown field is rejected.
sed 's/^  serviceName:/  serviceNameTypo:/' "$work/minimal-children.yaml" > "$work/broken.yaml"
if "$KV" --strict --quiet -k "${K8S_VERSIONS[0]}" "$work/broken.yaml" >/dev/null 2>&1; then
  echo "kubernetes-validate accepted a StatefulSet with an unknown field; the check is broken" >&2
  exit 1
fi

for version in "${K8S_VERSIONS[@]}"; do
  echo "kubernetes-validate --strict -k $version: ${#files[@]} files"
  "$KV" --strict --quiet -k "$version" "${files[@]}"
done
echo "operator manifests OK"
