#!/usr/bin/env bash
# Records the versions in .venv as constraints.txt (what scripts/setup.sh installs on a fresh machine).
# Run it after upgrading a dependency on purpose and seeing the suite pass: updating the pins is a deliberate step.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^-e ' > constraints.txt
echo "constraints.txt: $(wc -l < constraints.txt) pins"
