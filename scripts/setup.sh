#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs the project with its test extra. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=...)")'
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import shardstats.cluster.cli, msgpack, numpy, click, pytest, hypothesis' \
  || { echo "setup failed: the project did not install into .venv" >&2; exit 1; }
