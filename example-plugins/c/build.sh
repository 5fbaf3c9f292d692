#!/usr/bin/env bash
# Builds the C example plug-in into a component:
#   example-plugins/c/build.sh [OUT]   (default OUT: example-plugins/c/target/duplicate_check.wasm)
# Needs clang-19, lld-19, wasi-libc and libclang-rt-19-dev-wasm32 (Debian packages)
# and plughost (PLUGHOST, default `plughost` on the PATH) for the bindings and the
# component.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/target/duplicate_check.wasm}"
plughost="${PLUGHOST:-plughost}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$out")"
"$plughost" component bindgen-c --out-dir "$work" >&2
# A reactor: no main; the host calls the exported handler.
clang-19 --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor -Wall -Werror \
  -I"$work" -o "$work/core.wasm" \
  "$here/duplicate_check.c" "$work/plugin.c" "$work/plugin_component_type.o" -Wl,--strip-all
"$plughost" component new "$work/core.wasm" -o "$out" >&2
