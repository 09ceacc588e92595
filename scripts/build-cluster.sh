#!/usr/bin/env bash
# Builds the local test cluster's binaries from the Go module proxy, once per version:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and kwok.
# They land in $RELAY_CLUSTER_CACHE/bin-<versions> (default ~/.cache/relay-cluster) and are
# reused by later runs; a binary already there is never rebuilt. krelay, the benchmark's
# peer, lands in $RELAY_CLUSTER_CACHE/krelay-<version>; without it the bench skips krelay.
# Toxiproxy, the bench's latency proxy, lands in $RELAY_CLUSTER_CACHE/toxiproxy-<version>.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.33.13}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.7.0}
KRELAY_VERSION=${KRELAY_VERSION:-v0.2.0}
TOXIPROXY_VERSION=${TOXIPROXY_VERSION:-v2.5.0}
CACHE=${RELAY_CLUSTER_CACHE:-$HOME/.cache/relay-cluster}
BIN="$CACHE/bin-k8s$K8S_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION"
KRELAY_DIR="$CACHE/krelay-$KRELAY_VERSION"
TOXIPROXY="$CACHE/toxiproxy-$TOXIPROXY_VERSION/toxiproxy-server"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

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

# kwok is built from its module source with two changes to its port-forward, the node's end
# of every `kubectl port-forward` and relay tunnel:
# - a forward target whose port is 0 means "the requested port": a kubelet forwards to
#   whatever port the client asks for, and relay's agent pod declares no ports;
# - once either way of a forwarded connection has ended, the other gets one second, then both
#   are closed, as containerd's port-forward does. kwok's own tunnel waits for both ways, so
#   the pod's side of every closed client connection stayed open for the whole session (after
#   20 s of kubectl at 450 connections/s, ~9,000 idle connections in kwok and the echo pod).
# KWOK_PATCHES names this set of changes: a kwok built with another set is rebuilt.
KWOK_PATCHES=any-port+containerd-close
KWOK_SRC="$CACHE/src/kwok-$KWOK_VERSION-$KWOK_PATCHES"
KWOK_STAMP="$BIN/kwok.$KWOK_PATCHES"

build_kwok() {
  [ -x "$BIN/kwok" ] && [ -f "$KWOK_STAMP" ] && return 0
  local file=pkg/kwok/server/debugging_port_forword.go
  say "building kwok $KWOK_VERSION ($KWOK_PATCHES)"
  if [ ! -f "$KWOK_SRC/$file.patched" ]; then
    rm -rf "$KWOK_SRC"
    mkdir -p "$CACHE/src"
    (cd "$CACHE/src" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" >/dev/null)
    cp -r "$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION" "$KWOK_SRC"
    chmod -R u+w "$KWOK_SRC"
    local port='addr := fmt.Sprintf("%s:%d", target.Address, target.Port)'
    local tunnel='return utilsnet.Tunnel(ctx, stream, dial, buf1, buf2)'
    local import='utilsnet "sigs.k8s.io/kwok/pkg/utils/net"'
    for from in "$port" "$tunnel" "$import"; do
      grep -qF "$from" "$KWOK_SRC/$file" || { say "kwok source changed; cannot patch: $from"; exit 1; }
    done
    sed -i -e "s|$port|targetPort := target.Port\n\t\tif targetPort == 0 {\n\t\t\ttargetPort = port\n\t\t}\n\t\taddr := fmt.Sprintf(\"%s:%d\", target.Address, targetPort)|" \
      -e "s|$tunnel|return forwardThenClose(ctx, stream, dial)|" \
      -e "\|$import|d" -e '/TODO: remove this when upgrade/d' \
      -e '/buf1 := s.bufPool.Get()/,/^\t\t}()$/d' "$KWOK_SRC/$file"
    cat >"$KWOK_SRC/pkg/kwok/server/relay_forward_then_close.go" <<'GO'
package server

import (
	"context"
	"io"
	"time"
)

// forwardThenClose copies both ways between a port-forward stream and the pod's connection
// until one way ends, gives the other one second, and returns; the caller then closes both.
// Its own buffers: a straggling copy may outlive the call, so it must not hold pooled ones.
func forwardThenClose(ctx context.Context, stream, pod io.ReadWriter) error {
	ended := make(chan error, 2)
	copyTo := func(dst io.Writer, src io.Reader) {
		_, err := io.Copy(dst, src)
		ended <- err
	}
	go copyTo(pod, stream)
	go copyTo(stream, pod)
	var first error
	select {
	case first = <-ended:
	case <-ctx.Done():
		return ctx.Err()
	}
	grace := time.NewTimer(time.Second)
	defer grace.Stop()
	select {
	case <-ended:
	case <-grace.C:
	case <-ctx.Done():
	}
	return first
}
GO
    touch "$KWOK_SRC/$file.patched"
  fi
  (cd "$KWOK_SRC" && go build -trimpath -ldflags "-s -w" -o "$BIN/kwok.tmp" ./cmd/kwok)
  mv "$BIN/kwok.tmp" "$BIN/kwok"
  rm -f "$BIN"/kwok.any-port "$BIN"/kwok.*+*
  touch "$KWOK_STAMP"
}

# What `all` would build, a name a line (none: the cluster's binaries are all there).
missing() {
  local c
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kwok; do
    [ -x "$BIN/$c" ] || echo "$c"
  done
  [ -x "$BIN/kwok" ] && [ ! -f "$KWOK_STAMP" ] && echo "kwok ($KWOK_PATCHES)"
  return 0
}

# krelay (github.com/knight42/krelay), for the benchmark only: its client, kubectl-relay,
# and its server, which the kubelet shim runs for the image knight42/krelay-server.
build_krelay() {
  [ -x "$KRELAY_DIR/kubectl-relay" ] && [ -x "$KRELAY_DIR/krelay-server" ] && return 0
  local src="$CACHE/src/krelay-$KRELAY_VERSION" c
  say "building krelay $KRELAY_VERSION"
  if [ ! -f "$src/go.mod" ]; then
    rm -rf "$src"
    mkdir -p "$CACHE/src"
    (cd "$CACHE/src" && go mod download -json "github.com/knight42/krelay@$KRELAY_VERSION" >/dev/null) ||
      return 1
    cp -r "$(go env GOMODCACHE)/github.com/knight42/krelay@$KRELAY_VERSION" "$src"
    chmod -R u+w "$src"
  fi
  mkdir -p "$KRELAY_DIR"
  for c in client:kubectl-relay server:krelay-server; do
    (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$KRELAY_DIR/${c#*:}.tmp" "./cmd/${c%%:*}") ||
      return 1
    mv "$KRELAY_DIR/${c#*:}.tmp" "$KRELAY_DIR/${c#*:}"
  done
}

# Toxiproxy (github.com/Shopify/toxiproxy), for the benchmark's laptop-to-cluster round trip
# (`deno task bench --rtt`): a latency proxy in front of the API server.
build_toxiproxy() {
  [ -x "$TOXIPROXY" ] && return 0
  say "building toxiproxy $TOXIPROXY_VERSION"
  mkdir -p "$(dirname "$TOXIPROXY")"
  GOBIN="$(dirname "$TOXIPROXY")" go install -trimpath -ldflags "-s -w" \
    "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" || return 1
  mv "$(dirname "$TOXIPROXY")/server" "$TOXIPROXY"
}

case "${1:-all}" in
  path) echo "$BIN" ;;
  kwok) mkdir -p "$BIN" && build_kwok ;;
  crds) echo "$KWOK_SRC/kustomize/crd/bases" ;;
  missing) missing ;;
  krelay-path) echo "$KRELAY_DIR" ;;
  krelay) build_krelay && echo "$KRELAY_DIR" ;;
  toxiproxy) build_toxiproxy && echo "$TOXIPROXY" ;;
  all)
    # Only a build creates the cache: `path` and `missing` answer `deno task demo --check`,
    # which must leave the machine as it found it.
    mkdir -p "$BIN"
    build_etcd
    build_kwok
    build_kubernetes
    # Only the benchmark needs krelay, and it says why it skips it; the cluster does not.
    build_krelay || say "krelay $KRELAY_VERSION not built; the benchmark will skip it"
    build_toxiproxy || say "toxiproxy $TOXIPROXY_VERSION not built; the benchmark runs at 0 ms only"
    echo "$BIN"
    ;;
  *) say "usage: build-cluster.sh [all|path|missing|kwok|crds|krelay|krelay-path|toxiproxy]"; exit 2 ;;
esac
