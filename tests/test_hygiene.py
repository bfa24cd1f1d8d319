"""`cluster up`/`down` and `--local` leave nothing of theirs behind and touch nothing that is not theirs.

Real processes: a stale cluster file naming an unrelated process (and one that merely
looks like a worker but started at another time) must not get it signalled; a cluster
file whose workers are gone must not stop `cluster up`; the temporary log directories
that `cluster up` and `--local` make are removed (each command runs with its own
``TMPDIR`` so other users of /tmp do not disturb the count).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from shardstats.cluster import launcher
from shardstats.cluster.config import ClusterInfo
from tests.conftest import cli

BASE_PORT = "7640"       # this suite's own range (7600-7699); `cluster up` needs fixed ports


def _bystander(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stale_file(path, pids, starts=()) -> None:
    ClusterInfo(workers=[f"127.0.0.1:{int(BASE_PORT) + i}" for i in range(len(pids))], token="x" * 64, local=True,
                pids=list(pids), starts=list(starts)).save(path)
    # what `cluster up` wrote before a crash (on a reboot the pids are anyone's now)


def test_down_with_a_stale_file_signals_no_process_that_is_not_ours(tmp_path):
    plain = _bystander()
    lookalike = _bystander("shardstats.cluster.cli", "worker")     # a worker's command line, another start time
    try:
        time.sleep(0.2)
        real_start = launcher.start_time(lookalike.pid)
        assert real_start is not None
        cf = tmp_path / "cluster.json"
        _stale_file(cf, [plain.pid, lookalike.pid], [launcher.start_time(plain.pid), real_start - 1])
        r = cli("down", "--cluster-file", str(cf))
        assert r.returncode == 0, r.stderr
        assert "stopped 0 workers" in r.stdout and "2 had already exited" in r.stdout
        assert plain.poll() is None and lookalike.poll() is None, "an unrelated process was signalled"
        assert not cf.exists()
    finally:
        for p in (plain, lookalike):
            p.kill()
            p.wait()


def test_up_after_a_crash_starts_anew_and_down_removes_its_logs(tmp_path):
    env = {"TMPDIR": str(tmp_path)}
    cf = tmp_path / "cluster.json"
    other = _bystander()                      # the crashed cluster's pid now belongs to someone else
    try:
        _stale_file(cf, [other.pid], [launcher.start_time(other.pid)])
        r = cli("up", "--workers", "2", "--base-port", BASE_PORT, "--detach", "--cluster-file", str(cf), env=env)
        assert r.returncode == 0, r.stderr
        assert "workers are gone" in r.stderr and other.poll() is None
        info = ClusterInfo.load(cf)
        assert info.own_logs and os.path.isdir(info.log_dir) and len(info.starts) == 2
        assert all(launcher.ours(p, s) for p, s in zip(info.pids, info.starts))
        r = cli("up", "--workers", "2", "--base-port", BASE_PORT, "--detach", "--cluster-file", str(cf), env=env)
        assert r.returncode == 2 and "already running" in r.stderr              # a live cluster is refused
        r = cli("down", "--cluster-file", str(cf), env=env)
        assert r.returncode == 0 and "stopped 2 workers" in r.stdout, r.stdout + r.stderr
        assert not any(launcher.alive(p) for p in info.pids)
        assert not os.path.exists(info.log_dir)
        assert not [d for d in os.listdir(tmp_path) if d.startswith("cluster-logs-")]
    finally:
        other.kill()
        other.wait()
        for p in (ClusterInfo.load(cf).pids if cf.exists() else []):
            if launcher.ours(p):
                os.kill(p, signal.SIGKILL)


def test_a_local_job_leaves_no_log_directory(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    vals = np.arange(-7, 50, dtype=np.int64)
    np.save(data / "a.npy", vals)
    r = cli("submit", "median", "--input", str(data), "--local", "2", "--json", env={"TMPDIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    s = np.sort(vals)
    doc = json.loads(r.stdout)["result"]
    assert (doc["lower"], doc["upper"]) == (int(s[(len(s) - 1) // 2]), int(s[len(s) // 2]))
    assert not [d for d in os.listdir(tmp_path) if d.startswith("cluster-logs-")]
