#!/usr/bin/env bash
# One command: set up, generate sample shards, start ten local workers, run mode and median, stop.
# The mode job also writes a picture of itself: sample-shards/mode-report.html.
#   ROWS=10000000 (default) DIST=unique-dup CLUSTER_BASE_PORT=7000 scripts/demo.sh
# (BASE_PORT, the older name, still works; CLUSTER_BASE_PORT wins when both are set.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ROWS="${ROWS:-10000000}"
DIST="${DIST:-unique-dup}"
DATA="sample-shards/${DIST}-${ROWS}"
export CLUSTER_FILE="$PWD/.cluster/cluster.json"
C=.venv/bin/cluster
if [ ! -d "$DATA" ]; then
  $C gen --out "$DATA" --shards 10 --rows "$ROWS" --dist "$DIST" --format npy --seed 1
fi
$C down >/dev/null 2>&1 || true
$C up --workers 10 --detach --base-port "${CLUSTER_BASE_PORT:-${BASE_PORT:-7000}}"
trap '$C down' EXIT
$C status
echo
$C submit mode --input "$DATA" --report sample-shards/mode-report.html
echo
$C submit median --input "$DATA" --quantiles 0.9,0.99
echo
echo "a picture of the mode job: sample-shards/mode-report.html (open it in a browser)"
