#!/usr/bin/env bash
# Makes the linters the distribution tests need available, and prints where each one is:
#   scripts/tools.sh [actionlint|validate-krew-manifest|kubectl-krew|shellcheck]...  (default: all)
# prints one absolute path per requested tool, in the order asked, on stdout.
#
# actionlint, validate-krew-manifest and kubectl-krew are built from the Go module proxy into
# $RELAY_TOOLS_CACHE (default ~/.cache/relay-tools), one directory per version, so a fresh CI
# machine builds them once and later runs reuse them. shellcheck comes from the distribution's
# package (Debian: apt-get install shellcheck) when it is not already on PATH.
# Exits non-zero, naming the tool, when one cannot be had: the tests that call this must fail
# rather than silently skip a check.
set -euo pipefail

ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}
# v0.4.4 is the newest krew tag the module proxy serves that builds with Go 1.26.
KREW_VERSION=${KREW_VERSION:-v0.4.4}
CACHE=${RELAY_TOOLS_CACHE:-$HOME/.cache/relay-tools}

# The machine's own Go, never a downloaded toolchain: builds stay reproducible and offline-safe.
export GOTOOLCHAIN=local CGO_ENABLED=0

say() { printf 'tools: %s\n' "$*" >&2; }
fail() {
  say "$*"
  exit 1
}

# go_tool NAME MODULE VERSION PACKAGE_DIR: builds MODULE/PACKAGE_DIR at VERSION once, as NAME, in
# a cache directory of its own. This is what `go install MODULE/PACKAGE_DIR@VERSION` does (the
# module is its own main module, its go.sum pins every dependency), done by hand because
# `go install` also asks the proxy for the module's version list to check for deprecation, and
# some proxies refuse that list while serving the version itself (krew's, here).
go_tool() {
  local name=$1 module=$2 version=$3 pkg_dir=$4
  local dir="$CACHE/$name-$version"
  if [ ! -x "$dir/$name" ]; then
    command -v go >/dev/null 2>&1 || fail "cannot build $name: go is not installed"
    say "building $name $version from the Go module proxy (once; cached in $dir)"
    local src
    src=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') ||
      true
    if [ -z "$src" ] || [ ! -d "$src" ]; then
      fail "could not download $module@$version"
    fi
    mkdir -p "$dir"
    # nice: this machine may be busy building other things; the tools are not urgent.
    if ! (cd "$src" && nice -n 19 go build -trimpath -o "$dir/$name.tmp" "./$pkg_dir") >&2; then
      rm -f "$dir/$name.tmp"
      fail "could not build $name from $module@$version"
    fi
    mv "$dir/$name.tmp" "$dir/$name"
  fi
  printf '%s\n' "$dir/$name"
}

shellcheck_tool() {
  if ! command -v shellcheck >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 ||
      fail "shellcheck is not installed and there is no apt-get to install it with"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo >/dev/null 2>&1 || fail "shellcheck is missing; installing it needs root"
      sudo=sudo
    fi
    say "installing shellcheck with apt-get"
    # A fresh image often has empty package lists; install first, update only if that fails.
    if ! $sudo apt-get install -y -qq shellcheck >&2 2>/dev/null; then
      $sudo apt-get update -qq >&2 || fail "apt-get update failed"
      $sudo apt-get install -y -qq shellcheck >&2 || fail "could not install shellcheck"
    fi
  fi
  command -v shellcheck
}

tool() {
  case $1 in
  actionlint) go_tool actionlint github.com/rhysd/actionlint "$ACTIONLINT_VERSION" cmd/actionlint ;;
  validate-krew-manifest)
    go_tool validate-krew-manifest sigs.k8s.io/krew "$KREW_VERSION" cmd/validate-krew-manifest
    ;;
  # validate-krew-manifest installs the plugin for every platform through `kubectl krew`.
  kubectl-krew) go_tool kubectl-krew sigs.k8s.io/krew "$KREW_VERSION" cmd/krew ;;
  shellcheck) shellcheck_tool ;;
  *)
    fail "unknown tool '$1' (known: actionlint, validate-krew-manifest, kubectl-krew, shellcheck)"
    ;;
  esac
}

if [ $# -eq 0 ]; then
  set -- actionlint validate-krew-manifest kubectl-krew shellcheck
fi
for t in "$@"; do
  tool "$t"
done
