#!/usr/bin/env bash
# Builds the Python example plug-in into a component:
#   example-plugins/python/build.sh [OUT]   (default OUT: example-plugins/python/target/credit_check.wasm)
# Installs componentize-py from PyPI (pinned) if it is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/target/credit_check.wasm}"
version=0.25.1
if ! componentize-py --version 2>/dev/null | grep -q " $version"; then
  python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$version" >&2
fi
mkdir -p "$(dirname "$out")"
cd "$here"
componentize-py -d ../../wit -w plugin componentize app -o "$out" >&2
