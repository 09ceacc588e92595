#!/bin/sh
# Installs relay, a drop-in replacement for `kubectl port-forward`:
#
#   curl -fsSL https://github.com/relay-dev/relay/releases/latest/download/install.sh | sh
#
# Settings (environment variables):
#   RELAY_VERSION        a version to install, e.g. 0.1.0 (default: the latest release)
#   RELAY_INSTALL_DIR    where to put `relay` (default: /usr/local/bin when writable, else
#                        ~/.local/bin when it is on PATH, else /usr/local/bin through sudo)
#   RELAY_DOWNLOAD_URL   base URL of the release assets; <base>/<archive> and <base>/SHA256SUMS
#                        (default: the GitHub release of RELAY_VERSION, or the latest one)
#   RELAY_REPLACE_PLUGIN set to 1 to link `kubectl-relay` even when one exists already (krelay,
#                        installed by krew as `relay`, is also `kubectl relay`)
#
# Everything is downloaded and checked in a temporary directory first; the install directory
# is only touched once the archive's checksum matches, so a failure leaves nothing behind.
set -eu

REPO="relay-dev/relay"

say() { printf 'relay-install: %s\n' "$*" >&2; }
fail() {
  say "error: $*"
  exit 1
}

detect_os() {
  case $(uname -s) in
  Linux) echo linux ;;
  Darwin) echo darwin ;;
  MINGW* | MSYS* | CYGWIN* | Windows_NT)
    fail "this script installs on Linux and macOS; on Windows download relay-<version>-windows-x86_64.zip from https://github.com/$REPO/releases"
    ;;
  *) fail "unsupported operating system: $(uname -s) (relay is released for Linux and macOS; build from source with 'deno task compile')" ;;
  esac
}

detect_arch() {
  arch=$(uname -m)
  case $arch in
  x86_64 | amd64)
    # A shell under Rosetta 2 reports x86_64 on Apple silicon; the native build is better.
    if [ "$1" = darwin ] && [ "$(sysctl -n sysctl.proc_translated 2>/dev/null || true)" = 1 ]; then
      echo aarch64
    else
      echo x86_64
    fi
    ;;
  aarch64 | arm64) echo aarch64 ;;
  *) fail "unsupported CPU architecture: $arch (relay is released for x86_64 and aarch64)" ;;
  esac
}

# download URL FILE: fetches URL into FILE, or fails naming the URL.
download() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 2 -o "$2" "$1" || fail "download failed: $1"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$2" "$1" || fail "download failed: $1"
  else
    fail "neither curl nor wget is installed"
  fi
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d' ' -f1
  elif command -v openssl >/dev/null 2>&1; then
    openssl dgst -sha256 -r "$1" | cut -d' ' -f1
  else
    fail "no sha256sum, shasum or openssl to verify the download with"
  fi
}

# on_path DIR: whether DIR is one of PATH's entries.
on_path() {
  case ":$PATH:" in
  *":$1:"*) return 0 ;;
  *) return 1 ;;
  esac
}

# The directory to install into, and whether writing there needs sudo ($SUDO).
choose_dir() {
  SUDO=""
  if [ -n "${RELAY_INSTALL_DIR:-}" ]; then
    dir=$RELAY_INSTALL_DIR
  elif [ -w /usr/local/bin ]; then
    dir=/usr/local/bin
  elif [ -n "${HOME:-}" ] && on_path "$HOME/.local/bin"; then
    dir=$HOME/.local/bin
  elif command -v sudo >/dev/null 2>&1 && [ -d /usr/local/bin ]; then
    dir=/usr/local/bin
  elif [ -n "${HOME:-}" ]; then
    dir=$HOME/.local/bin
  else
    fail "cannot choose an install directory; set RELAY_INSTALL_DIR"
  fi
  # Only an existing directory we cannot write, or a missing one under a parent we cannot
  # write, needs sudo.
  probe=$dir
  while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
  if [ ! -w "$probe" ]; then
    command -v sudo >/dev/null 2>&1 || fail "$dir is not writable and sudo is not available; set RELAY_INSTALL_DIR"
    SUDO=sudo
    say "$dir is not writable; using sudo"
  fi
  INSTALL_DIR=$dir
}

main() {
  os=$(detect_os)
  arch=$(detect_arch "$os")
  version=${RELAY_VERSION:-}
  version=${version#v}

  if [ -n "${RELAY_DOWNLOAD_URL:-}" ]; then
    base=${RELAY_DOWNLOAD_URL%/}
  elif [ -n "$version" ]; then
    base="https://github.com/$REPO/releases/download/v$version"
  else
    base="https://github.com/$REPO/releases/latest/download"
  fi

  tmp=$(mktemp -d 2>/dev/null || mktemp -d -t relay-install)
  trap 'rm -rf "$tmp"' EXIT
  trap 'exit 1' HUP INT TERM

  download "$base/SHA256SUMS" "$tmp/SHA256SUMS"
  # The checksum list names every archive, so it also tells which version "latest" is.
  if [ -n "$version" ]; then
    archive="relay-$version-$os-$arch.tar.gz"
  else
    archive=$(sed -n "s/^[0-9a-f]\{64\} [ *]\(relay-[^ ]*-$os-$arch\.tar\.gz\)\$/\1/p" "$tmp/SHA256SUMS" | head -n 1)
    [ -n "$archive" ] || fail "no relay build for $os/$arch is listed in $base/SHA256SUMS"
    version=${archive#relay-}
    version=${version%-"$os"-"$arch".tar.gz}
  fi
  want=$(awk -v f="$archive" '$2 == f || $2 == "*" f { print $1; exit }' "$tmp/SHA256SUMS")
  [ -n "$want" ] || fail "$archive is not listed in $base/SHA256SUMS (no relay $version build for $os/$arch?)"

  say "downloading relay $version for $os/$arch"
  download "$base/$archive" "$tmp/$archive"
  got=$(sha256_of "$tmp/$archive")
  [ "$got" = "$want" ] || fail "checksum mismatch for $archive: expected $want, got $got; nothing was installed"

  mkdir "$tmp/unpacked"
  tar -xzf "$tmp/$archive" -C "$tmp/unpacked" || fail "could not unpack $archive"
  [ -f "$tmp/unpacked/relay" ] || fail "$archive holds no relay binary"
  chmod 0755 "$tmp/unpacked/relay"

  choose_dir
  $SUDO mkdir -p "$INSTALL_DIR"
  # Copy beside the target, then rename: the rename is atomic, and a running relay keeps its
  # old file.
  staged="$INSTALL_DIR/.relay.new.$$"
  if ! $SUDO cp "$tmp/unpacked/relay" "$staged" || ! $SUDO mv -f "$staged" "$INSTALL_DIR/relay"; then
    $SUDO rm -f "$staged"
    fail "could not write $INSTALL_DIR/relay"
  fi
  say "installed $INSTALL_DIR/relay ($version)"

  link_plugin
  if ! on_path "$INSTALL_DIR"; then
    say "note: $INSTALL_DIR is not on your PATH; add it, e.g. export PATH=\"$INSTALL_DIR:\$PATH\""
  fi
}

# Links kubectl-relay -> relay beside the binary so `kubectl relay` runs it, unless another
# kubectl-relay (krelay's krew plugin is one) exists and the user did not ask to replace it.
link_plugin() {
  link="$INSTALL_DIR/kubectl-relay"
  other=""
  if [ -L "$link" ] && [ "$(readlink "$link")" = relay ]; then
    other="" # our own link from an earlier install
  elif [ -e "$link" ] || [ -L "$link" ]; then
    other=$link
  elif command -v kubectl-relay >/dev/null 2>&1; then
    other=$(command -v kubectl-relay)
  fi
  if [ -n "$other" ] && [ "${RELAY_REPLACE_PLUGIN:-}" != 1 ]; then
    say "left $other alone: a kubectl-relay already exists (krelay's krew plugin is named relay)."
    say "run relay as 'relay', or rerun with RELAY_REPLACE_PLUGIN=1 to link kubectl-relay to it"
    return 0
  fi
  $SUDO ln -sf relay "$link"
  say "linked $link -> relay, so 'kubectl relay' runs it"
  if [ -n "$other" ] && [ "$other" != "$link" ]; then
    say "note: $other also exists; whichever comes first on PATH is 'kubectl relay'"
  fi
}

main "$@"
