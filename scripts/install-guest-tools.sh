#!/usr/bin/env bash
# Installs the tools that build guest components into target/guest-tools/ (idempotent).
#
#   target/guest-tools/py   a Python venv with componentize-py (Python task modules ->
#                           components; `celeriac build` finds it there by default)
#
# Needs python3 (3.9+) with the venv module (Debian: apt-get install python3-venv) and PyPI.
set -euo pipefail

COMPONENTIZE_PY_VERSION="0.25.1"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/target/guest-tools/py"
python="${PYTHON:-python3}"

installed_version() {
    [ -x "$venv/bin/python" ] || return 0
    "$venv/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version, PackageNotFoundError
try:
    print(version("componentize-py"))
except PackageNotFoundError:
    pass
PY
}

have="$(installed_version)"
if [ "$have" = "$COMPONENTIZE_PY_VERSION" ] && [ -x "$venv/bin/componentize-py" ]; then
    echo "install-guest-tools: componentize-py $COMPONENTIZE_PY_VERSION already in $venv; nothing to do"
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    if ! "$python" -m venv "$venv"; then
        echo "install-guest-tools: '$python -m venv' failed; on Debian: apt-get install python3-venv" >&2
        exit 1
    fi
    created="created venv $venv and "
else
    created=""
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "componentize-py==$COMPONENTIZE_PY_VERSION"

echo "install-guest-tools: ${created}installed componentize-py $COMPONENTIZE_PY_VERSION${have:+ (was $have)} in $venv"
