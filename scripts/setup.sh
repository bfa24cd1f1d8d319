#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs the project with its test extra. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=...)")'
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The editable install is one path in a .pth ("compat"; shardstats/__init__.py finds the subpackages in the
# checkout): setuptools' default mapping finder costs ~10 ms at every interpreter start, a tenth of a small job.
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
# constraints.txt pins what the suite last passed with (a fresh machine installs the same versions; moto 5.2
# changed which IAM action a listing needs). Updating it is a deliberate step: scripts/lock.sh.
pip_install -c constraints.txt -e '.[test]' --config-settings editable_mode=compat
# Checked from / : here the checkout's own shardstats/ would import whatever the install did.
ROOT="$PWD"
installed() { (cd / && "$ROOT/.venv/bin/python" -c "$1"); }
installed 'import shardstats.worker.ops.contract' 2>/dev/null || pip_install -c constraints.txt -e '.[test]'
# An editable install leaves the project's modules uncompiled, and with PYTHONDONTWRITEBYTECODE set (as here and
# in the Dockerfile) every `cluster` command would compile them again: ~30 ms of a one-value job's ~0.1 s.
# Python reads bytecode that exists whatever that variable says; a stale file is simply recompiled in memory.
.venv/bin/python -m compileall -q -j 0 shardstats protocol coordinator cluster worker >/dev/null
installed 'import shardstats.cluster.cli, msgpack, numpy, click, pytest, hypothesis' \
  || { echo "setup failed: the project did not install into .venv" >&2; exit 1; }
