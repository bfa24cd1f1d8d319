"""`cluster status` against a real 3-worker cluster: the table, --json, and a killed worker shown down (exit 1)."""
from __future__ import annotations

import shardstats
import json
import os
import signal
import time

import numpy as np
import pytest

from shardstats.cluster import launcher
from shardstats.cluster.gen import generate, write_shards
from tests.conftest import cli


@pytest.fixture
def three(tmp_path):
    """Three local workers on OS-chosen ports, described by a cluster file; stopped afterwards."""
    info = launcher.start(3, "127.0.0.1", None, str(tmp_path / "logs"), "info")
    try:
        path = tmp_path / "cluster.json"
        info.save(path)
        yield info, str(path)
    finally:
        launcher.stop(info)


def _status(cluster_file: str, *extra: str):
    return cli("status", "--cluster-file", cluster_file, *extra, env={"CLUSTER_WORKERS": ""})


def test_status_shows_every_worker_and_its_last_job_then_a_killed_one_down(three, tmp_path):
    info, cf = three
    r = _status(cf, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["workers"]
    assert [(w["id"], w["addr"], w["up"], w["jobs_run"]) for w in rows] == \
        [(i, a, True, 0) for i, a in enumerate(info.workers)]
    assert all(w["version"] == shardstats.__version__ and w["last_job"] == {} for w in rows)

    parts = generate(30_000, 3, "unique-dup", seed=5)
    write_shards(parts, tmp_path / "in", "npy")
    job = cli("submit", "mode", "--input", str(tmp_path / "in"), "--cluster-file", cf, "--json")
    assert job.returncode == 0, job.stderr
    doc = json.loads(job.stdout)
    r = _status(cf, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["workers"]
    per_worker = {w["id"]: w for w in doc["stats"]["per_worker"]}
    for w in rows:
        last = w["last_job"]
        assert w["jobs_run"] == 1 and last["op"] == "mode" and last["job"].startswith(doc["stats"]["job"])
        assert last["bytes_sent"] == per_worker[w["id"]]["bytes_sent"] > 0 and last["seconds"] > 0
    table = _status(cf)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"cluster from {cf}" and lines[1].split() == ["id", "address", "state", "version", "jobs",
                                                                     "last", "job"]
    for i, line in enumerate(lines[2:]):
        f = line.split()
        assert f[:6] == [str(i), info.workers[i], "up", shardstats.__version__, "1", "mode"]
        assert f"{rows[i]['last_job']['bytes_sent']:,} B sent" in line

    os.kill(info.pids[2], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while launcher.alive(info.pids[2]) and time.monotonic() < deadline:
        time.sleep(0.02)
    r = _status(cf, "--json")
    assert r.returncode == 1                                  # documented: any worker down -> exit 1
    rows = json.loads(r.stdout)["workers"]
    assert [w["up"] for w in rows] == [True, True, False]
    assert rows[2]["id"] == 2 and rows[2]["addr"] == info.workers[2] and rows[2]["error"]
    table = _status(cf)
    assert table.returncode == 1
    assert table.stdout.splitlines()[4].split()[:3] == ["2", info.workers[2], "DOWN"]
    assert [ln.split()[2] for ln in table.stdout.splitlines()[2:4]] == ["up", "up"]
    # The two survivors still answer jobs.
    one = np.concatenate(parts)
    r = cli("submit", "median", "--input", str(tmp_path / "in"), "--cluster-file", cf, "--json")
    if r.returncode == 0:                                     # the job ran on the survivors
        assert json.loads(r.stdout)["result"]["lower"] == int(np.sort(one)[(len(one) - 1) // 2])
    else:                                                     # or said clearly which worker is missing
        assert r.returncode == 1 and info.workers[2] in r.stderr
