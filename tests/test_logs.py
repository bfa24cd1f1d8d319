"""Worker logs: one line per event, key=value, always the worker id and the job id of job events; --log-level."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import numpy as np
import pytest

from shardstats.cluster import launcher
from shardstats.errors import ShardstatsError
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec  # noqa: E402
from tests.conftest import cli, free_base
from shardstats import logs

LINE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (debug|info|warning|error) event=[a-z_]+'
                  r'( [a-z_]+=("([^"\\]|\\.)*"|[^\s"]+))*$')     # a value: a bare word or a JSON string
TOKEN = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')
JOB_EVENTS = {"job_loaded", "job_done", "job_failed", "job_crashed", "job_aborted"}


def fields(line: str) -> dict[str, str]:
    """The key=value pairs of a log line (a quoted value is a JSON string)."""
    return {k: json.loads(v) if v.startswith('"') else v for k, v in TOKEN.findall(line)}


@pytest.fixture
def captured():
    """The ``cluster`` logger writing into a buffer; its previous state restored afterwards."""
    log = logging.getLogger("cluster")
    saved = (log.handlers[:], log.level, log.propagate, dict(logs._fields))
    buf = io.StringIO()
    try:
        logs.setup("info", worker=4)
        log.handlers[0].setStream(buf)
        yield buf
    finally:
        log.handlers[:], log.level, log.propagate = saved[:3]
        logs._fields.clear()
        logs._fields.update(saved[3])


def test_event_is_one_line_with_the_worker_id_even_for_awkward_values(captured):
    logs.event("job_failed", logging.WARNING, job="abc", error="bad.txt:3: not an integer: 'x'\nsecond line",
               remote=("127.0.0.1", 9), empty="", eq="a=b")
    logs.event("connection_authenticated", logging.DEBUG, peer=1)        # below the level: not written
    out = captured.getvalue().splitlines()
    assert len(out) == 1 and LINE.match(out[0]), out
    f = fields(out[0])
    assert f["event"] == "job_failed" and f["worker"] == "4" and f["job"] == "abc"
    assert f["error"] == "bad.txt:3: not an integer: 'x'\nsecond line" and f["empty"] == "" and f["eq"] == "a=b"
    assert out[0].split()[1] == "warning"


def _job(info, op: str, path: str) -> str:
    rep = asyncio.run(run_job(info.workers, info.token.encode(), job_spec(op, path, timeout=30)))
    return rep.job


def test_worker_logs_name_the_worker_on_every_line_and_the_job_on_job_lines(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(1000))
    np.save(tmp_path / "b.npy", np.arange(500))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.txt").write_text("1\n")
    (tmp_path / "bad" / "y.txt").write_text("2\nzwei\n")
    info = launcher.start(2, "127.0.0.1", None, str(tmp_path / "logs"), "debug")
    try:
        good = _job(info, "mode", str(tmp_path / "*.npy"))
        with pytest.raises(ShardstatsError) as ei:
            _job(info, "median", str(tmp_path / "bad"))
        assert ei.value.exit_code == 2
    finally:
        launcher.stop(info)
    seen_jobs = set()
    for i in range(2):
        lines = (tmp_path / "logs" / f"worker{i}.log").read_text().splitlines()
        assert lines, f"worker {i} wrote no log"
        events = []
        for line in lines:
            assert LINE.match(line), line
            f = fields(line)
            assert f["worker"] == str(i), line
            events.append(f["event"])
            if f["event"] in JOB_EVENTS:
                assert re.fullmatch(r"[0-9a-f]{12}(\.\d+)?", f["job"]), line
                seen_jobs.add(f["job"])
        assert events[0] == "worker_listening" and events[-1] == "worker_stopping"
        assert "job_done" in events and "connection_authenticated" in events      # debug level is on
    assert good in seen_jobs and len(seen_jobs) == 2                             # the good job and the bad one
    failed = [ln for i in range(2) for ln in (tmp_path / "logs" / f"worker{i}.log").read_text().splitlines()
              if "event=job_failed" in ln]
    assert len(failed) == 1 and "y.txt:2" in fields(failed[0])["error"]


def test_log_level_warning_keeps_info_out(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(100))
    info = launcher.start(1, "127.0.0.1", None, str(tmp_path / "logs"), "warning")
    try:
        _job(info, "mode", str(tmp_path / "a.npy"))
    finally:
        launcher.stop(info)
    assert (tmp_path / "logs" / "worker0.log").read_text() == ""


def test_cluster_up_passes_log_level_to_its_workers(tmp_path):
    env = {"CLUSTER_FILE": str(tmp_path / "c.json")}
    for attempt in range(5):           # ports the OS just called free; retry if one got taken meanwhile
        r = cli("up", "--workers", "2", "--detach", "--base-port", str(free_base(2)), "--log-dir", str(tmp_path / "logs"),
                "--log-level", "debug", env=env)
        if r.returncode == 0:
            break
    assert r.returncode == 0, r.stderr
    try:
        status = cli("status", "--json", env=env)
        assert status.returncode == 0, status.stderr
    finally:
        down = cli("down", env=env)
    assert down.returncode == 0, down.stderr
    for i in range(2):
        text = (tmp_path / "logs" / f"worker{i}.log").read_text()
        assert f"debug event=connection_authenticated worker={i} role=coord" in text
    assert json.loads(status.stdout)["workers"][1]["up"] is True
