#!/usr/bin/env bash
# Builds the real Go peers the tests compare kuberaft with, from their official Go modules
# through the Go module proxy, at the versions pinned in scripts/go-peers.versions:
#
#   etcd         etcd, etcdctl, etcdutl     go.etcd.io/etcd/{server,etcdctl,etcdutl}/v3
#   benchmark    etcd's benchmark tool      go.etcd.io/etcd/v3/tools/benchmark
#   kubernetes   kube-apiserver,            k8s.io/kubernetes/cmd/...  (staging modules
#                kube-controller-manager    k8s.io/api, k8s.io/apiserver, ... at v0.x.y)
#
# Each is built once per machine into
#   ${KUBERAFT_GO_PEERS_CACHE:-$HOME/.cache/kuberaft-go-peers}/<name>-<version>/bin/
# outside the repository; a later run finds it there and builds nothing. The Go build and
# module caches are Go's defaults (also outside the repository).
#
# Usage: scripts/go-peers.sh [--print-env] [--only NAME[,NAME...]] [--no-build]
#   (no option)    build what is missing, then say where the binaries are
#   --print-env    the same, but print only NAME=PATH lines on stdout (logs go to stderr):
#                  ETCD36_BIN ETCDCTL36_BIN ETCDUTL36_BIN BENCHMARK_BIN KUBE_APISERVER_BIN
#                  KUBE_CONTROLLER_MANAGER_BIN
#   --only         build (and print) only these of: etcd, benchmark, kubernetes
#   --no-build     build nothing: print only what is already cached
# Environment: GO_PEERS_NICE (default 19) is the niceness of the Go commands;
#   GO_PEERS_LOCK_WAIT (default 5400 s) bounds the wait for another run building the same.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=go-peers.versions
. "$here/go-peers.versions"

CACHE=${KUBERAFT_GO_PEERS_CACHE:-$HOME/.cache/kuberaft-go-peers}
NICE=${GO_PEERS_NICE:-19}
LOCK_WAIT=${GO_PEERS_LOCK_WAIT:-5400}

print_env=0
no_build=0
only="etcd,benchmark,kubernetes"
while [ $# -gt 0 ]; do
  case "$1" in
    --print-env) print_env=1 ;;
    --no-build) no_build=1 ;;
    --only) only=$2; shift ;;
    --only=*) only=${1#--only=} ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "go-peers: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf 'go-peers: %s\n' "$*" >&2; }
die() { printf 'go-peers: error: %s\n' "$*" >&2; exit 1; }
wanted() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

command -v go >/dev/null 2>&1 || die "no go command on PATH (Go 1.26 or later is needed)"

# The Go commands: never fetch another toolchain, never read a go.work, no cgo (static
# binaries), paths trimmed from the binaries.
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=mod"
gocmd() { nice -n "$NICE" go "$@"; }

# Fails with the names of the modules the proxy does not have at these versions.
check_modules() {
  local out missing
  out=$(gocmd list -m -e -f '{{.Path}}@{{.Version}} {{if .Error}}MISSING {{.Error.Err}}{{end}}' "$@" 2>&1) ||
    die "could not ask the module proxy about $*: $out"
  missing=$(printf '%s\n' "$out" | grep ' MISSING ' || true)
  if [ -n "$missing" ]; then
    printf '%s\n' "$missing" | sed 's/ MISSING / is not available: /; s/^/go-peers: missing module /' >&2
    die "a module needed to build this is missing from the module proxy (above)"
  fi
}

# Runs a go build and, when it fails, names the modules it could not find.
go_build() {
  local log_file=$1; shift
  if ! gocmd build "$@" >"$log_file" 2>&1; then
    cat "$log_file" >&2
    grep -oE '(module|package) [^ :]+(@[^ :]+)?[^:]*: (reading|unknown revision|not found|no matching versions|cannot find module)[^\n]*' \
      "$log_file" | sed 's/^/go-peers: missing: /' >&2 || true
    grep -oE 'missing go.sum entry for module providing package [^ ]+|no required module provides package [^;]+' \
      "$log_file" | sed 's/^/go-peers: missing: /' >&2 || true
    return 1
  fi
}

# build_peer NAME VERSION FUNCTION BINARIES... : runs FUNCTION VERSION OUTDIR in a fresh
# temporary module unless
# $CACHE/NAME-VERSION/bin has every binary. The finished directory appears atomically.
build_peer() {
  local name=$1 version=$2 build=$3; shift 3
  local dir="$CACHE/$name-$version" bin ok=1
  for bin in "$@"; do [ -x "$dir/bin/$bin" ] || ok=0; done
  if [ $ok = 1 ]; then
    log "$name $version: cached in $dir ($(sed -n 's/^build_seconds=//p' "$dir/BUILD_INFO" 2>/dev/null || echo '?') s to build)"
    return 0
  fi
  [ $no_build = 1 ] && { log "$name $version: not built (--no-build)"; return 0; }
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock-$name-$version"
  flock -w "$LOCK_WAIT" 9 || die "another run has been building $name $version for ${LOCK_WAIT}s"
  ok=1
  for bin in "$@"; do [ -x "$dir/bin/$bin" ] || ok=0; done
  if [ $ok = 1 ]; then exec 9>&-; log "$name $version: built by another run meanwhile"; return 0; fi

  local work start end
  work=$(mktemp -d "$CACHE/.build-$name-$version.XXXXXX")
  mkdir -p "$work/mod" "$work/out/bin"
  start=$(date +%s)
  log "$name $version: building in $work (go $(go env GOVERSION), module cache $(go env GOMODCACHE))"
  if ! (cd "$work/mod" && "$build" "$version" "$work/out/bin"); then
    log "$name $version: build failed; its module is kept in $work/mod"
    exec 9>&-
    return 1
  fi
  end=$(date +%s)
  for bin in "$@"; do [ -x "$work/out/bin/$bin" ] || die "$name $version: the build made no $bin"; done
  cp "$work/mod/go.mod" "$work/mod/go.sum" "$work/out/"
  {
    echo "name=$name"
    echo "version=$version"
    echo "go=$(go env GOVERSION)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$((end - start))"
    echo "nproc=$(nproc)"
  } >"$work/out/BUILD_INFO"
  rm -rf "$dir"
  mv "$work/out" "$dir"
  rm -rf "$work"
  exec 9>&-
  log "$name $version: built in $((end - start)) s -> $dir/bin"
}

# --- etcd server, etcdctl, etcdutl ---------------------------------------------------------
build_etcd() {
  local v=$1 out=$2
  check_modules go.etcd.io/etcd/server/v3@"$v" go.etcd.io/etcd/etcdctl/v3@"$v" go.etcd.io/etcd/etcdutl/v3@"$v"
  gocmd mod init kuberaft.invalid/go-peers/etcd 2>/dev/null || return 1
  gocmd mod edit -require=go.etcd.io/etcd/server/v3@"$v" \
    -require=go.etcd.io/etcd/etcdctl/v3@"$v" -require=go.etcd.io/etcd/etcdutl/v3@"$v" || return 1
  local ld="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$v"
  go_build build.log -trimpath -ldflags "$ld" -o "$out/etcd" go.etcd.io/etcd/server/v3 &&
    go_build build.log -trimpath -ldflags "$ld" -o "$out/etcdctl" go.etcd.io/etcd/etcdctl/v3 &&
    go_build build.log -trimpath -ldflags "$ld" -o "$out/etcdutl" go.etcd.io/etcd/etcdutl/v3
}

# --- etcd's benchmark tool -----------------------------------------------------------------
# tools/benchmark is in etcd's root module (go.etcd.io/etcd/v3); the client and server
# libraries it uses are required at ETCD_VERSION, so minimal version selection builds it
# on the same etcd code as the server above.
build_benchmark() {
  local v=$1 out=$2
  local libs=(api/v3 client/pkg/v3 client/v3 pkg/v3 server/v3)
  local mods=(go.etcd.io/etcd/v3@"$v") lib
  for lib in "${libs[@]}"; do mods+=(go.etcd.io/etcd/"$lib"@"$ETCD_VERSION"); done
  check_modules "${mods[@]}"
  gocmd mod init kuberaft.invalid/go-peers/benchmark 2>/dev/null || return 1
  local args=()
  for lib in "${mods[@]}"; do args+=(-require="$lib"); done
  gocmd mod edit "${args[@]}" || return 1
  go_build build.log -trimpath -ldflags "-s -w" -o "$out/benchmark" go.etcd.io/etcd/v3/tools/benchmark
}

# --- kube-apiserver, kube-controller-manager ----------------------------------------------
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
# ./staging/src/...; a module that depends on it must replace each of them with the
# published staging module of the matching version (v0.<minor>.<patch>). The list comes
# from k8s.io/kubernetes's own go.mod at the pinned version.
build_kubernetes() {
  local v=$1 out=$2 sv=$KUBERNETES_STAGING_VERSION
  check_modules k8s.io/kubernetes@"$v"
  local kmod
  kmod=$(gocmd mod download -json k8s.io/kubernetes@"$v" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [ -f "$kmod" ] || die "could not download the go.mod of k8s.io/kubernetes@$v"
  local staging
  staging=$(gocmd mod edit -json "$kmod" | python3 -c '
import json, sys
m = json.load(sys.stdin)
required = {r["Path"] for r in m.get("Require") or []}
for r in m.get("Replace") or []:
    new = r["New"]
    if new["Path"].startswith("./staging/") and r["Old"]["Path"] in required:
        print(r["Old"]["Path"])
')
  [ -n "$staging" ] || die "found no staging modules in k8s.io/kubernetes@$v's go.mod"
  local mods=() args=(-require=k8s.io/kubernetes@"$v") m
  for m in $staging; do
    mods+=("$m@$sv")
    args+=(-replace="$m=$m@$sv")
  done
  log "kubernetes $v: $(echo "$staging" | wc -l) staging modules replaced by their $sv releases"
  check_modules "${mods[@]}"
  gocmd mod init kuberaft.invalid/go-peers/kubernetes 2>/dev/null || return 1
  gocmd mod edit "${args[@]}" || return 1
  local minor=${v#v1.}; minor=${minor%%.*}
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ld+=" -X $p.gitCommit=module-$v -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  go_build build.log -trimpath -ldflags "$ld" -o "$out/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver &&
    go_build build.log -trimpath -ldflags "$ld" -o "$out/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
}

failed=()
if wanted etcd; then build_peer etcd "$ETCD_VERSION" build_etcd etcd etcdctl etcdutl || failed+=(etcd); fi
if wanted benchmark; then build_peer etcd-benchmark "$ETCD_BENCHMARK_VERSION" build_benchmark benchmark || failed+=(benchmark); fi
if wanted kubernetes; then
  build_peer kubernetes "$KUBERNETES_VERSION" build_kubernetes kube-apiserver kube-controller-manager || failed+=(kubernetes)
fi

env_line() { # NAME PATH: printed only if the binary is there
  if [ -x "$2" ]; then
    if [ $print_env = 1 ]; then printf '%s=%s\n' "$1" "$2"; else printf '%-28s %s\n' "$1" "$2"; fi
  fi
}
if wanted etcd; then
  env_line ETCD36_BIN "$CACHE/etcd-$ETCD_VERSION/bin/etcd"
  env_line ETCDCTL36_BIN "$CACHE/etcd-$ETCD_VERSION/bin/etcdctl"
  env_line ETCDUTL36_BIN "$CACHE/etcd-$ETCD_VERSION/bin/etcdutl"
fi
if wanted benchmark; then env_line BENCHMARK_BIN "$CACHE/etcd-benchmark-$ETCD_BENCHMARK_VERSION/bin/benchmark"; fi
if wanted kubernetes; then
  env_line KUBE_APISERVER_BIN "$CACHE/kubernetes-$KUBERNETES_VERSION/bin/kube-apiserver"
  env_line KUBE_CONTROLLER_MANAGER_BIN "$CACHE/kubernetes-$KUBERNETES_VERSION/bin/kube-controller-manager"
fi
[ ${#failed[@]} -eq 0 ] || die "failed to build: ${failed[*]}"
