#!/usr/bin/env bash
# Installs the real Python Celery client used by the interoperability tests into
# target/interop-venv, pinned by tests/interop/requirements.txt (idempotent: reinstalls only
# when the requirements file changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/target/interop-venv"
requirements="$root/tests/interop/requirements.txt"
stamp="$venv/.requirements"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$requirements" "$stamp"; then
    echo "install-interop-venv: $venv is up to date"
    exit 0
fi
mkdir -p "$(dirname "$venv")"
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
echo "install-interop-venv: installed $(grep -c '==' "$requirements") pinned packages into $venv"
