#!/usr/bin/env bash
# Builds the local test cluster's binaries from the Go module proxy, once per version:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and kwok.
# They land in $RELAY_CLUSTER_CACHE/bin-<versions> (default ~/.cache/relay-cluster) and are
# reused by later runs; a binary already there is never rebuilt.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.33.13}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.7.0}
CACHE=${RELAY_CLUSTER_CACHE:-$HOME/.cache/relay-cluster}
BIN="$CACHE/bin-k8s$K8S_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN"

say() { printf 'build-cluster: %s\n' "$*" >&2; }

# A binary already on PATH at the wanted version is linked into the cache instead of built.
# usage: adopt NAME VERSION-TEXT-IN-ITS-`--version`
adopt() {
  local found
  [ -x "$BIN/$1" ] && return 0
  found=$(command -v "$1" 2>/dev/null) || return 1
  "$found" --version 2>/dev/null | grep -qF "$2" || return 1
  say "using $found ($2)"
  ln -sf "$found" "$BIN/$1"
}

# k8s.io/kubernetes cannot be required as is: its go.mod points every staging module at a
# directory of its own repository. A wrapper module replaces each with its published tag.
build_kubernetes() {
  local want=() c
  for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    [ -x "$BIN/$c" ] || adopt "$c" "Kubernetes $K8S_VERSION" || want+=("$c")
  done
  [ ${#want[@]} -gt 0 ] || return 0
  local mod="$CACHE/src/kubernetes-$K8S_VERSION"
  mkdir -p "$mod"
  if [ ! -f "$mod/go.sum" ] || [ ! -f "$mod/tools.go" ]; then
    say "preparing wrapper module for k8s.io/kubernetes $K8S_VERSION"
    local staging
    staging=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
      sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' |
      xargs sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p')
    {
      echo "module relay.local/cluster-kubernetes"
      echo
      echo "go 1.24.0"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      for m in $staging; do echo "	$m => $m $STAGING_VERSION"; done
      echo ")"
    } >"$mod/go.mod"
    cat >"$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
    (cd "$mod" && go mod tidy -e >/dev/null 2>&1 || true; cd "$mod" && go mod download)
  fi
  local ldflags="-s -w"
  for v in gitVersion=$K8S_VERSION gitMajor=1 gitMinor=${K8S_VERSION#v1.} gitTreeState=clean; do
    [ "${v%%=*}" = gitMinor ] && v="gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
    ldflags="$ldflags -X k8s.io/component-base/version.$v -X k8s.io/client-go/pkg/version.$v"
  done
  for c in "${want[@]}"; do
    say "building $c $K8S_VERSION"
    (cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$BIN/$c.tmp" "$BIN/$c"
  done
}

build_etcd() {
  [ -x "$BIN/etcd" ] && return 0
  adopt etcd "etcd Version: ${ETCD_VERSION#v}" && return 0
  local mod="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  if [ ! -f "$mod/go.mod" ]; then
    printf 'module relay.local/cluster-etcd\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$mod/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$mod/tools.go"
    (cd "$mod" && go mod tidy -e >/dev/null 2>&1 || true)
  fi
  say "building etcd $ETCD_VERSION"
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

# kwok's port-forward dials a fixed target port. A kubelet forwards to whatever port the
# client asks for, and relay's agent pod declares no ports, so kwok is built from its module
# source with one change: a forward target whose port is 0 means "the requested port".
# The stamp file tells this build apart from a stock kwok left in the cache.
build_kwok() {
  [ -x "$BIN/kwok" ] && [ -f "$BIN/kwok.any-port" ] && return 0
  local src="$CACHE/src/kwok-$KWOK_VERSION-any-port"
  local file=pkg/kwok/server/debugging_port_forword.go
  say "building kwok $KWOK_VERSION (forward target port 0 = requested port)"
  if [ ! -f "$src/$file.patched" ]; then
    rm -rf "$src"
    mkdir -p "$CACHE/src"
    (cd "$CACHE/src" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" >/dev/null)
    cp -r "$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION" "$src"
    chmod -R u+w "$src"
    local from='addr := fmt.Sprintf("%s:%d", target.Address, target.Port)'
    grep -qF "$from" "$src/$file" || { say "kwok source changed; cannot apply the port patch"; exit 1; }
    sed -i "s|$from|targetPort := target.Port\n\t\tif targetPort == 0 {\n\t\t\ttargetPort = port\n\t\t}\n\t\taddr := fmt.Sprintf(\"%s:%d\", target.Address, targetPort)|" "$src/$file"
    touch "$src/$file.patched"
  fi
  (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$BIN/kwok.tmp" ./cmd/kwok)
  mv "$BIN/kwok.tmp" "$BIN/kwok"
  touch "$BIN/kwok.any-port"
}

case "${1:-all}" in
  path) echo "$BIN" ;;
  kwok) build_kwok ;;
  crds) echo "$CACHE/src/kwok-$KWOK_VERSION-any-port/kustomize/crd/bases" ;;
  all)
    build_etcd
    build_kwok
    build_kubernetes
    echo "$BIN"
    ;;
  *) say "usage: build-cluster.sh [all|path|kwok|crds]"; exit 2 ;;
esac
