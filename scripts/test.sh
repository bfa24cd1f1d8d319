#!/usr/bin/env bash
# The test suite: the same command the README gives and .ci/run runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
