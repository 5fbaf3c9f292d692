#!/usr/bin/env bash
# The whole test suite: installs what it needs (the WASM target, PostgreSQL from
# Debian's packages if missing), runs every test with the embedded store (the store's
# own tests and the shared-store tests use PostgreSQL too), then runs the end-to-end
# suite again with every server on PostgreSQL: one conformance suite, both backends.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -q && $sudo apt-get install -y -q postgresql
fi

cargo test --workspace --locked
# --workspace: the same features as above, so nothing is built again.
PLUGHOST_TEST_STORE=postgres cargo test --workspace --locked --test it
