#!/usr/bin/env bash
# The project's test command (README "Running the tests"; `.ci/run` calls it). On a fresh
# machine it installs what is missing, builds the worker and the example components, and
# runs every test in release mode (one target dir, so the worker binary and the tests share
# one build of wasmtime).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/ensure-services.sh
scripts/build-examples.sh
python3 -m unittest discover guest-sdk/python/tests
cargo test --release --locked --workspace
