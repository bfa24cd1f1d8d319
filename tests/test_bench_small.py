"""Smoke test of scripts/bench_small.py against a real local cluster: every row and the breakdown are printed.

Speed is not asserted (that is the script's job, on a quiet machine); the rows must be there and add up.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from shardstats.cluster import launcher
from tests.conftest import ROOT


def test_bench_small_prints_every_row_and_where_the_time_goes(tmp_path):
    info = launcher.start(2, "127.0.0.1", None, str(tmp_path / "logs"), "warning")
    try:
        info.save(tmp_path / "cluster.json")
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_small.py"), "--runs", "2", "--breakdown"],
                           capture_output=True, text=True, timeout=180,
                           env={**os.environ, "CLUSTER_FILE": str(tmp_path / "cluster.json")})
    finally:
        launcher.stop(info)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for row in ("python -c pass", "cluster submit mode ", "cluster submit mode --json", "API, open handle",
                "python -c numpy", "python start", "import ours: the op", "connect", "load + run + collect",
                "exit (flush, os._exit)"):
        assert row in out, (row, out)
    table = out[out.index("where the CLI's"):]
    rows = re.findall(r"^  (\S.*?)\s+([0-9.]+) ms$", table, re.M)
    assert [name for name, _ in rows][-1] == "sum" and len(rows) >= 12
    parts, total = [float(v) for _, v in rows[:-1]], float(rows[-1][1])
    assert abs(sum(parts) - total) <= 0.1 * len(parts) and total > 0
