#!/usr/bin/env bash
# Builds the JavaScript example plug-in into a component:
#   example-plugins/javascript/build.sh [OUT] [--quickjs]
#   (default OUT: example-plugins/javascript/target/name_normalizer.wasm)
# --quickjs builds the same app.js with componentize-qjs (QuickJS, ~1.6 MB) instead
# of componentize-js (SpiderMonkey, ~14 MB): see BENCHMARKS.md for both.
# Installs componentize-js from npm (versions pinned by package-lock.json) on first
# use, into target/npm: `npm ci` refuses this lock file (npm leaves other platforms'
# optional packages out of it), so `npm install` runs on a copy, leaving the tree clean.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/target/name_normalizer.wasm}"
backend="${2:-}"
tools="$here/target/npm"
cd "$here"
if [ ! -x "$tools/node_modules/.bin/componentize-js" ] || ! cmp -s package-lock.json "$tools/installed-lock.json"; then
  mkdir -p "$tools"
  cp package.json package-lock.json "$tools/"
  (cd "$tools" && npm install --no-audit --no-fund --loglevel=error) >&2
  cp package-lock.json "$tools/installed-lock.json"
fi
mkdir -p "$(dirname "$out")"
if [ "$backend" = "--quickjs" ]; then
  # The synchronous runtime: the world has no async functions.
  "$tools/node_modules/.bin/componentize-qjs" --wit ../../wit --world plugin --js app.js --sync -o "$out" >&2
else
  # No wasi:http and no fetch-event handler: a plug-in gets no network anyway.
  "$tools/node_modules/.bin/componentize-js" app.js --wit ../../wit --world-name plugin -d http fetch-event -o "$out" >&2
fi
