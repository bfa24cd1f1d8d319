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
    assert _blas_threads_of_a_new_worker(tmp_path / "a") == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")      # an operator's explicit choice still wins
    assert _blas_threads_of_a_new_worker(tmp_path / "b") == 2


def _blas_threads_of_a_new_worker(log_dir) -> int:
    info = launcher.start(1, "127.0.0.1", None, str(log_dir), "warning")
    try:
        time.sleep(0.3)
        return _python_threads(info.pids[0])
    finally:
        launcher.stop(info)
