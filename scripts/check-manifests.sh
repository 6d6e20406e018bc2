#!/usr/bin/env bash
# Checks every Kubernetes manifest the project ships or produces, with real tools:
#   - the chart's crds/ holds exactly crds/raftcluster.yaml and crds/raftbackup.yaml;
#   - values.schema.json rejects bad values; `helm lint --strict`;
#   - `helm template` with default values, with every optional feature on, and with the
#     chart's RBAC and ServiceAccount left to the user;
#   - `kubernetes-validate --strict`, for the oldest and the newest Kubernetes we support,
#     over every rendered manifest, the CRD, and the children `raft-operator render -f`
#     prints for each example;
#   - each example RaftCluster validates against the CRD's openAPIV3Schema (JSON Schema),
#     and every manifest in e2e/manifests/invalid/ is rejected (see validate-crd-manifests.py
#     for what JSON Schema can check and what only the API server's CEL rules can);
#   - the Grafana dashboard reads only metrics that raft-node or raft-operator export (a name
#     in node/src or operator/src).
# Installs helm and the Python tools into .tools/ when missing (scripts/install-k8s-tools.sh).
#
# Paths can be overridden (tests of this script): CRD_FILE, EXAMPLES_DIR, OPERATOR_BIN.
# SYNC_CRD=1 copies crds/raftcluster.yaml into the chart instead of failing on a difference.
set -euo pipefail
cd "$(dirname "$0")/.."

# kube 5 / k8s-openapi 0.29 support Kubernetes 1.33 to 1.37: validate against both ends.
KUBE_VERSIONS=(1.33.0 1.37.0)
CHART=charts/kuberaft-operator
CRD_FILE="${CRD_FILE:-crds/raftcluster.yaml}"
EXAMPLES_DIR="${EXAMPLES_DIR:-examples}"
INVALID_DIR=e2e/manifests/invalid
# Kinds kubernetes-validate has no schema for, and why that is acceptable.
NO_SCHEMA_OK='ServiceMonitor|PodMonitor' # prometheus-operator CRDs, not part of Kubernetes

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

step "tools"
bash scripts/install-k8s-tools.sh
HELM="$PWD/.tools/bin/helm"
PY="$PWD/.tools/venv/bin/python"
KV="$PWD/.tools/venv/bin/kubernetes-validate"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

# kubernetes-validate --strict over FILE for every supported version. A kind it has no
# schema for passes with only a warning: treat that as a failure unless listed above.
validate() {
  local file="$1" label="${2:-$1}" version log
  for version in "${KUBE_VERSIONS[@]}"; do
    log="$OUT/kv.log"
    if ! "$KV" --strict --kubernetes-version "$version" "$file" >"$log" 2>&1; then
      cat "$log"
      fail "kubernetes-validate --strict -k $version $label"
    fi
    if grep "Couldn't find schema" "$log" | grep -Ev "kind ($NO_SCHEMA_OK) " ; then
      fail "no schema for a kind above in $label (Kubernetes $version)"
    fi
    local passed
    passed=$(grep -c " passed for resource " "$log" || true)
    [ "$passed" -gt 0 ] || { cat "$log"; fail "$label: no resource validated"; }
    echo "ok   $label: $passed resources valid for Kubernetes $version" \
      "$(grep -o "Couldn't find schema for kind [A-Za-z]*" "$log" | sed 's/.* kind /(no schema: /;s/$/)/' | tr '\n' ' ')"
  done
}

step "the validator rejects what it should (negative control)"
cat >"$OUT/bad-deployment.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: c, image: i, imagePullPolicy: Sometimes, notAField: 1}]
YAML
for version in "${KUBE_VERSIONS[@]}"; do
  if "$KV" --strict --quiet -k "$version" "$OUT/bad-deployment.yaml" >/dev/null 2>&1; then
    fail "kubernetes-validate --strict accepted a Deployment with an unknown field (Kubernetes $version)"
  fi
done
echo "ok   an unknown container field is rejected for Kubernetes ${KUBE_VERSIONS[*]}"

step "CRD: $CRD_FILE and its copy in $CHART/crds/"
[ -f "$CRD_FILE" ] || fail "$CRD_FILE is missing: generate it with 'cargo run -p kuberaft-operator --bin raft-operator -- crd > $CRD_FILE'"
if [ "${SYNC_CRD:-0}" = 1 ]; then
  cp "$CRD_FILE" "$CHART/crds/raftcluster.yaml"
fi
cmp -s "$CRD_FILE" "$CHART/crds/raftcluster.yaml" ||
  fail "$CHART/crds/raftcluster.yaml differs from $CRD_FILE: run 'SYNC_CRD=1 bash scripts/check-manifests.sh' and commit"
echo "ok   the chart's CRD is the generated one"
validate "$CRD_FILE"
# The RaftBackup CRD (one backup now) is generated the same way.
BACKUP_CRD_FILE="$(dirname "$CRD_FILE")/raftbackup.yaml"
if [ -f "$BACKUP_CRD_FILE" ]; then
  [ "${SYNC_CRD:-0}" = 1 ] && cp "$BACKUP_CRD_FILE" "$CHART/crds/raftbackup.yaml"
  cmp -s "$BACKUP_CRD_FILE" "$CHART/crds/raftbackup.yaml" ||
    fail "$CHART/crds/raftbackup.yaml differs from $BACKUP_CRD_FILE: run 'SYNC_CRD=1 bash scripts/check-manifests.sh' and commit"
  validate "$BACKUP_CRD_FILE"
  echo "ok   the chart's RaftBackup CRD is the generated one"
fi

step "helm lint --strict"
"$HELM" lint --strict "$CHART"

step "values.schema.json rejects bad values"
for bad in "replicaCount=0" "leaderElection.enabld=true" "image.pullPolicy=Sometimes" \
  "securityContext.readOnlyRootFilesystem=false" "serviceMonitor.interval=soon" \
  "leaderElection.leaseSeconds=1"; do
  if "$HELM" template t "$CHART" --set "$bad" >/dev/null 2>"$OUT/err"; then
    fail "helm template accepted --set $bad"
  fi
  grep -q "values don't meet the specifications of the schema" "$OUT/err" ||
    { cat "$OUT/err"; fail "--set $bad failed for another reason than the values schema"; }
  echo "ok   --set $bad is rejected by values.schema.json"
done

step "helm template: default values, every optional feature on, RBAC and ServiceAccount off"
ALL_ON=(--set serviceMonitor.enabled=true --set podMonitor.enabled=true
  --set grafanaDashboard.enabled=true --set networkPolicy.enabled=true)
"$HELM" template kuberaft "$CHART" --namespace kuberaft-system >"$OUT/chart-default.yaml"
"$HELM" template kuberaft "$CHART" --namespace kuberaft-system "${ALL_ON[@]}" >"$OUT/chart-all-on.yaml"
"$HELM" template kuberaft "$CHART" --namespace kuberaft-system \
  --set rbac.create=false --set serviceAccount.create=false --set serviceAccount.name=ops \
  --set replicaCount=1 >"$OUT/chart-no-rbac.yaml"
# Chart.yaml's kubeVersion admits exactly the supported range.
for version in "${KUBE_VERSIONS[@]}"; do
  "$HELM" template kuberaft "$CHART" --kube-version "$version" >/dev/null ||
    fail "the chart refuses Kubernetes $version"
done
"$HELM" template kuberaft "$CHART" --kube-version 1.32.0 >/dev/null 2>&1 &&
  fail "the chart installs on Kubernetes 1.32, older than kube 5 supports"
echo "ok   the chart's kubeVersion admits ${KUBE_VERSIONS[*]} and refuses 1.32"
for kind in ServiceMonitor PodMonitor NetworkPolicy; do
  grep -q "^kind: $kind$" "$OUT/chart-default.yaml" && fail "$kind rendered with default values (should be off)"
  grep -q "^kind: $kind$" "$OUT/chart-all-on.yaml" || fail "$kind missing with every feature on"
done
grep -q "name: kuberaft-kuberaft-operator-dashboard" "$OUT/chart-all-on.yaml" || fail "dashboard ConfigMap missing"
for rendered in chart-default chart-all-on chart-no-rbac; do
  validate "$OUT/$rendered.yaml" "helm template ($rendered)"
done

step "the Grafana dashboard reads only metrics raft-node and raft-operator export (names in node/src, operator/src)"
missing=0
for metric in $(grep -o 'kuberaft_[a-z_]*' "$CHART/files/dashboard.json" | sed -E 's/_(bucket|count|sum)$//' | sort -u); do
  if grep -rqw --include='*.rs' "$metric" node/src operator/src; then
    echo "ok   $metric"
  else
    echo "FAIL $metric is exported by neither raft-node nor raft-operator"
    missing=1
  fi
done
[ "$missing" = 0 ] || fail "the dashboard reads metrics nobody exports"

step "RaftCluster manifests against the CRD's openAPIV3Schema (JSON Schema)"
shopt -s nullglob
examples=("$EXAMPLES_DIR"/*.yaml)
invalid=("$INVALID_DIR"/*.yaml)
[ ${#examples[@]} -gt 0 ] || fail "no examples in $EXAMPLES_DIR/"
[ ${#invalid[@]} -gt 0 ] || fail "no invalid manifests in $INVALID_DIR/"
"$PY" scripts/validate-crd-manifests.py "$CRD_FILE" --valid "${examples[@]}" --invalid "${invalid[@]}"

step "children rendered by raft-operator for each example"
if [ -z "${OPERATOR_BIN:-}" ]; then
  if grep -q 'name = "raft-operator"' operator/Cargo.toml; then
    cargo build --locked -q -p kuberaft-operator --bin raft-operator
    OPERATOR_BIN="${CARGO_TARGET_DIR:-target}/debug/raft-operator"
  fi
fi
if [ -z "${OPERATOR_BIN:-}" ]; then
  fail "operator/Cargo.toml declares no raft-operator binary: cannot render the examples' children"
fi
for example in "${examples[@]}"; do
  children="$OUT/children-$(basename "$example")"
  "$OPERATOR_BIN" render -f "$example" >"$children"
  grep -q '^kind: StatefulSet$' "$children" || fail "raft-operator render -f $example printed no StatefulSet"
  validate "$children" "raft-operator render -f $example"
done

echo
echo "manifest checks passed (Kubernetes ${KUBE_VERSIONS[*]})"
