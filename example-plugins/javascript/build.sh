#!/usr/bin/env bash
# Builds the JavaScript example plug-in into a component:
#   example-plugins/javascript/build.sh [OUT]   (default OUT: example-plugins/javascript/target/name_normalizer.wasm)
# Installs componentize-js from npm (pinned in package-lock.json) on first use.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/target/name_normalizer.wasm}"
cd "$here"
if [ ! -x node_modules/.bin/componentize-js ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
mkdir -p "$(dirname "$out")"
# No wasi:http and no fetch-event handler: a plug-in gets no network anyway.
node_modules/.bin/componentize-js app.js --wit ../../wit --world-name plugin -d http fetch-event -o "$out" >&2
