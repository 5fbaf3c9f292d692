#!/usr/bin/env bash
# The whole test suite: installs what it needs (the WASM target; PostgreSQL,
# headless Chromium with its WebDriver for the dashboard's tests, aiosmtpd for the
# mail tests, and clang with wasi-libc for the C example, from Debian's packages if
# missing), runs every test with the embedded store (the store's
# own tests and the shared-store tests use PostgreSQL too), then runs the end-to-end
# suite again with every server on PostgreSQL: one conformance suite, both backends.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
/usr/bin/python3 -c "import aiosmtpd" 2>/dev/null || missing+=(python3-aiosmtpd)
command -v clang-19 >/dev/null || missing+=(clang-19)
command -v wasm-ld-19 >/dev/null || missing+=(lld-19)
[ -f /usr/lib/wasm32-wasi/libc.a ] || missing+=(wasi-libc)
ls /usr/lib/llvm-19/lib/clang/19/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1 || missing+=(libclang-rt-19-dev-wasm32)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -q && $sudo apt-get install -y -q "${missing[@]}"
fi

cargo test --workspace --locked
# --workspace: the same features as above, so nothing is built again.
PLUGHOST_TEST_STORE=postgres cargo test --workspace --locked --test it
