#!/usr/bin/env bash
# The project's test command (README "Running the tests"; `.ci/run` calls it). On a fresh
# machine it installs what is missing, builds the worker and the example components, and
# runs every test in release mode (one target dir, so the worker binary and the tests share
# one build of wasmtime). It ends with one line totalling every suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/ensure-services.sh

# protocol/ is pure: no I/O crates and no other celeriac module (style guide, item 4).
# Test modules (after #[cfg(test)]) and comments may mention them.
impure=$(for file in host/src/protocol/*.rs; do
    awk '/^#\[cfg\(test\)\]/ { exit } !/^[[:space:]]*\/\// { print FILENAME ":" FNR ": " $0 }' "$file"
done | grep -E '\b(tokio|redis|lapin|std::(fs|net))\b|crate::(sandbox|registry|worker|broker|backend|control)' || true)
if [ -n "$impure" ]; then
    printf 'test.sh: host/src/protocol must stay pure:\n%s\n' "$impure" >&2
    exit 1
fi

# One build of the whole workspace, tests included, in release mode: the worker binary the
# interop tests run and the test binaries share one build of wasmtime (building the binary
# alone would resolve dependency features differently and compile wasmtime twice).
cargo build --release --locked --workspace --all-targets
# The library's docs: no broken links, no links from public docs to private items.
RUSTDOCFLAGS="-D warnings" cargo doc --release --locked --no-deps -p celeriac
CELERIAC_SKIP_HOST_BUILD=1 scripts/build-examples.sh
scripts/install-interop-venv.sh

log="target/test-output.log"
python3 -m unittest discover guest-sdk/python/tests 2>&1 | tee "$log"
cargo test --release --locked --workspace 2>&1 | tee -a "$log"
# The real Python Celery client against `celeriac worker` (tests/interop).
target/interop-venv/bin/python -m pytest tests/interop -q 2>&1 | tee -a "$log"

# Totals: cargo's "test result: ok. N passed; M failed" lines, unittest's "Ran N tests" and
# pytest's "N passed, M failed in Xs".
awk '
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
    /^Ran [0-9]+ tests? in/ { p += $2 }
    / in [0-9.]+s/ && /[0-9]+ (passed|failed)/ && !/^test result:/ {
        for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
    }
    END { printf "totals: %d passed, %d failed\n", p, f }
' "$log"
