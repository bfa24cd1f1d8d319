"""The worker daemon runs numpy with one BLAS thread: many workers share a host's cores.

OpenBLAS names its pool's threads after the process (``python``); uvloop's are
``libuv-worker``.  So a worker with one BLAS thread has exactly one thread called
``python``: its main thread.
"""
from __future__ import annotations

import os
import time

from shardstats.cluster import launcher


def _python_threads(pid: int) -> int:
    names = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            names.append(open(f"/proc/{pid}/task/{t}/comm").read().strip())
        except OSError:
            pass
    return names.count("python")


def test_workers_run_with_one_blas_thread(tmp_path, monkeypatch):
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    info = launcher.start(1, "127.0.0.1", None, str(tmp_path / "a"), "warning")
    try:
        time.sleep(0.3)
        assert _python_threads(info.pids[0]) == 1
    finally:
        launcher.stop(info)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")      # an operator's explicit choice still wins
    info = launcher.start(1, "127.0.0.1", None, str(tmp_path / "b"), "warning")
    try:
        time.sleep(0.3)
        assert _python_threads(info.pids[0]) == 2
    finally:
        launcher.stop(info)
