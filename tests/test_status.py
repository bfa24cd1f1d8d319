"""`cluster status` against a real 3-worker cluster: the table, --json, and a killed worker shown down (exit 1)."""
from __future__ import annotations

import shardstats
import json
import re
import os
import signal
import time

import numpy as np
import pytest

from shardstats.cluster import launcher
from shardstats.cluster.gen import generate, write_shards
from shardstats.cluster.progress import human_bytes
from tests.conftest import cli


@pytest.fixture
def three(tmp_path):
    """Three local workers on OS-chosen ports, described by a cluster file; stopped afterwards."""
    info = launcher.start(3, "127.0.0.1", None, str(tmp_path / "logs"), "info", http_base=0)
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

    parts = generate(200_000, 3, "unique-dup", seed=5)      # over one chunk: every worker sends (no tree)
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
        assert w["bytes_sent_total"] == last["bytes_sent"] and w["jobs_failed"] == 0 and w["rss_bytes"] > 1 << 20
    table = _status(cf)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"cluster from {cf}" and lines[1].split() == [
        "id", "address", "state", "version", "jobs", "failed", "active", "sent", "memory", "budget", "spilled",
        "http", "last", "job"]
    assert lines[-1] == "3 of 3 workers up"
    for i, line in enumerate(lines[2:-1]):
        f = line.split()
        assert f[:7] == [str(i), info.workers[i], "up", shardstats.__version__, "1", "0", "0"]
        assert f"mode {human_bytes(rows[i]['last_job']['bytes_sent'])} sent" in line
        # memory now, the budget, bytes spilled, and the HTTP (metrics) port the cluster file records
        assert rows[i]["http_port"] == info.http_ports[i] and f[f.index("mode") - 1] == str(info.http_ports[i])
        assert f"{human_bytes(rows[i]['memory_budget'])} {'0 B':>10}" in line and rows[i]["spill_written_bytes"] == 0

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


def _read_until(fd: int, want: bytes, deadline: float) -> bytes:
    import select
    got = b""
    end = time.monotonic() + deadline
    while want not in got:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} within {deadline}s; got {got[-500:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:          # the child closed the terminal
                break
            if not chunk:
                break
            got += chunk
    return got


def test_status_watch_repaints_in_place_on_a_terminal_and_ctrl_c_exits_0(three, tmp_path):
    """Driven through a real pseudo-terminal: the table is drawn at the cursor home, redrawn, and Ctrl-C
    (the terminal's interrupt character, delivered as SIGINT by the line discipline) ends it with status 0."""
    import pty
    import sys
    info, cf = three
    pid, fd = pty.fork()
    if pid == 0:                                            # the child: the CLI on the pty
        os.environ["CLUSTER_WORKERS"] = ""
        os.execv(sys.executable, [sys.executable, "-m", "shardstats.cluster.cli", "status", "--watch",
                                  "--interval", "0.2", "--cluster-file", cf])
    try:
        out = _read_until(fd, b"refreshing every", 30)
        out += _read_until(fd, b"refreshing every", 10)       # a second frame
        frames = out.split(b"\x1b[H")[1:]
        assert len(frames) >= 2 and out.count(b"\x1b[2J") == 1   # cleared once, then repainted at home
        text = frames[-1].decode()
        for i, addr in enumerate(info.workers):
            assert re.search(rf"^\s*{i}\s+{re.escape(addr)}\s+up\b", text, re.M), text
        assert "3 of 3 workers up" in text
        os.write(fd, b"\x03")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            try:
                os.read(fd, 65536)
            except OSError:
                pass
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("status --watch did not stop on Ctrl-C")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)


def test_status_watch_off_a_terminal_prints_a_table_per_interval(three):
    import subprocess
    import sys
    info, cf = three
    p = subprocess.Popen([sys.executable, "-m", "shardstats.cluster.cli", "status", "--watch", "--interval", "0.2",
                          "--cluster-file", cf], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "CLUSTER_WORKERS": ""})
    try:
        time.sleep(2.0)
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    assert "\x1b" not in out                                  # no terminal codes in a pipe or a log
    tables = [t for t in out.split("-- ") if t.strip()]
    assert len(tables) >= 2
    assert all("3 of 3 workers up" in t for t in tables)
