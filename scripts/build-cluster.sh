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

# k8s.io/kubernetes cannot be required as is: its go.mod points every staging module at a
# directory of its own repository. A wrapper module replaces each with its published tag.
build_kubernetes() {
  local want=() c
  for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    [ -x "$BIN/$c" ] || want+=("$c")
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

build_kwok() {
  [ -x "$BIN/kwok" ] && return 0
  say "building kwok $KWOK_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

case "${1:-all}" in
  path) echo "$BIN" ;;
  all)
    build_etcd
    build_kwok
    build_kubernetes
    echo "$BIN"
    ;;
  *) say "usage: build-cluster.sh [all|path]"; exit 2 ;;
esac
