#!/usr/bin/env bash
# Builds the example task modules into target/wasm-tasks/ (idempotent; does nothing when no
# input changed):
#
#   target/wasm-tasks/tasks.wasm      examples/python/tasks.py  (celeriac build, componentize-py)
#   target/wasm-tasks/rs_tasks.wasm   examples/rust             (cargo, wasm32-wasip2)
#
# Installs what is missing first (componentize-py in target/guest-tools, the rustup target).
# If the wasm32-wasip2 target cannot be installed, the Rust example is skipped with a loud
# line and target/wasm-tasks/RUST_SKIPPED says why, so the tests that need it can say so.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="target/wasm-tasks"
mkdir -p "$out"

scripts/install-guest-tools.sh
# scripts/test.sh builds the binary with the test crates' features (one wasmtime build for
# everything) and sets CELERIAC_SKIP_HOST_BUILD so this does not rebuild it without them.
if [ -z "${CELERIAC_SKIP_HOST_BUILD:-}" ]; then
    cargo build --release --locked -p celeriac
fi
celeriac="target/release/celeriac"

# Python: rebuild only when tasks.py, the SDK or the celeriac binary (which embeds the SDK)
# is newer than the component.
python_out="$out/tasks.wasm"
if [ ! -f "$python_out" ] || [ -n "$(find examples/python guest-sdk/python "$celeriac" -newer "$python_out" \
        \( -name '*.py' -o -name celeriac \) -print -quit)" ]; then
    started=$(date +%s)
    "$celeriac" build examples/python/tasks.py -o "$python_out"
    echo "build-examples: built $python_out in $(( $(date +%s) - started ))s"
else
    echo "build-examples: $python_out is up to date"
fi

# Rust: cargo knows what changed.
rm -f "$out/RUST_SKIPPED"
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2; then
    cargo build --release --locked --target wasm32-wasip2 -p celeriac-example-tasks
    cp -p target/wasm32-wasip2/release/celeriac_example_tasks.wasm "$out/rs_tasks.wasm"
    echo "build-examples: $out/rs_tasks.wasm ready"
else
    reason="rustup could not install the wasm32-wasip2 target"
    echo "$reason" > "$out/RUST_SKIPPED"
    rm -f "$out/rs_tasks.wasm"
    echo "!!!!! build-examples: RUST EXAMPLE SKIPPED: $reason; the rs.* tests will report it !!!!!" >&2
fi
