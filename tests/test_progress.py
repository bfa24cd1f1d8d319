"""Progress: the workers' low-rate ``progress`` messages, the CLI's one-line renderer, and stdout staying clean."""
from __future__ import annotations

import asyncio
import io
import re
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from shardstats.cluster.gen import generate, write_shards
from shardstats.cluster.progress import ProgressLine, progress_enabled
from shardstats.protocol.messages import validate
from tests.conftest import ref_mode
from shardstats.worker.comm.progress import MIN_INTERVAL, Progress, interval_from, reporting


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def msg(phase: str, done: int = 0, total: int = 0, sent: int = 0, job: str = "j1") -> dict:
    return {"t": "progress", "v": 1, "job": job, "phase": phase, "done": done, "total": total, "bytes": sent}


def screen(raw: str) -> str:
    """What a terminal shows after ``raw``: each \\r rewinds the one line, later text overwrites earlier."""
    row: list[str] = []
    col = 0
    for ch in raw:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            raise AssertionError("the progress line must never write a newline")
        else:
            row[col:col + 1] = [ch]
            col += 1
    return "".join(row)


# -- the renderer ---------------------------------------------------------------------------
def test_line_sums_the_newest_phase_over_workers_and_overwrites_itself():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, "mode", clock=clock, width=200)
    line.update(0, msg("load", 0, 2))
    assert screen(out.getvalue()) == "mode 0.0s | load 0/2 files"
    clock.t += 0.5
    line.update(1, msg("load", 1, 3))
    assert screen(out.getvalue()) == "mode 0.5s | load 1/5 files"
    clock.t += 0.5
    line.update(0, msg("shuffle", 3, 10, sent=3 << 20))
    clock.t += 0.5
    line.update(1, msg("shuffle", 5, 10, sent=5 << 20))
    assert screen(out.getvalue()).rstrip() == "mode 1.5s | shuffle 8/20 chunks | 8.0 MiB sent"
    clock.t += 0.5
    line.update(0, msg("reduce", sent=10 << 20))        # shorter text: padded so no old characters remain
    assert screen(out.getvalue()).rstrip() == "mode 2.0s | reduce | 15.0 MiB sent | 1 of 2 workers at reduce"
    line.close()
    assert screen(out.getvalue()).strip() == "" and out.getvalue().endswith("\r")


def test_the_line_says_who_is_where_and_totals_only_when_every_worker_reported():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, "mode", clock=clock, width=200, workers=4)
    assert line.text() == "mode 0.0s | starting"
    line.update(0, msg("load", 0, 2))                   # 1 of 4 reported: a files total would be a quarter
    assert line.text() == "mode 0.0s | load | 1 of 4 workers at load"
    for w in (1, 2, 3):
        line.update(w, msg("load", 1, 3))
    assert line.text() == "mode 0.0s | load 3/11 files"
    line.update(2, msg("mode"))                          # the op's own name: the run began, no phase yet
    assert line.text() == "mode 0.0s | starting | 1 of 4 workers starting"


async def test_the_clock_moves_without_news_from_the_workers():
    import asyncio
    out = io.StringIO()
    line = ProgressLine(out, "mode", width=200)
    line.update(0, msg("load", 0, 1))
    got = await line.ticking(asyncio.sleep(0.65, result="done"), interval=0.1)
    assert got == "done"
    clocks = [float(m) for m in re.findall(r"mode (\d+\.\d)s", out.getvalue())]
    assert len(clocks) >= 4 and clocks[-1] >= 0.5 and clocks == sorted(clocks)


def test_every_rank_estimates_the_median_rounds_from_the_first_round():
    from shardstats.worker.comm.inmemory import InMemoryNetwork
    from shardstats.worker.ops.median import median
    from tests.conftest import run_op
    rng = np.random.default_rng(1)
    shards = [rng.integers(-10 ** 12, 10 ** 12, 40_000) for _ in range(4)]
    net = InMemoryNetwork(4, timeout=20)
    res, stats, _ = run_op(median, shards, 4, {"gather_limit": 64}, net=net)
    s = np.sort(np.concatenate(shards))
    assert (res["lower"], res["upper"]) == (int(s[(len(s) - 1) // 2]), int(s[len(s) // 2]))
    assert stats[0]["rounds"] >= 2
    assert all(net.comms[r].progress.total >= 2 for r in range(4))     # not only rank 0 knows "~m"


def test_median_rounds_show_n_of_the_estimate():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, "median", clock=clock, width=200)
    line.update(1, msg("select", 1, 0))                 # no estimate yet
    assert line.text().endswith("select round 1")
    line.update(0, msg("select", 2, 3))
    assert "select round 2 of ~3" in line.text()
    line.update(1, msg("select", 4, 0))                 # an estimate that fell short is not shown
    assert line.text().endswith("select round 4")


def test_redraws_are_rate_limited_and_cut_to_the_terminal_width():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, "mode", clock=clock, width=30, min_interval=0.1)
    for i in range(50):                                 # a burst: one draw
        line.update(i, msg("shuffle", 1, 4))
    assert out.getvalue().count("\r") == 1
    clock.t += 0.2
    line.update(0, msg("shuffle", 2, 4))
    assert out.getvalue().count("\r") == 2
    assert all(len(part) <= 29 for part in out.getvalue().split("\r"))


def test_a_retry_starts_the_line_over():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, "mode", clock=clock, width=200)
    line.update(0, msg("shuffle", 5, 9, job="abc"))
    line.update(1, msg("shuffle", 5, 9, job="abc"))
    line.update(0, msg("load", 0, 4, job="abc.2"))
    assert line.text().startswith("mode 0.0s (attempt 2) | load 0/4 files")


def test_a_log_record_erases_the_line_first_and_the_next_update_redraws_it():
    import logging
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, "mode", clock=clock, width=200)
    log = logging.getLogger("cluster.test_progress")
    handler = line.log_handler()
    log.addHandler(handler)
    try:
        line.update(0, msg("shuffle", 1, 4))
        log.warning("event=worker_lost worker=2")
        clock.t += 1
        line.update(1, msg("shuffle", 2, 4))
    finally:
        log.removeHandler(handler)
    first, rest = out.getvalue().split("\n")
    assert screen(first).strip() == "event=worker_lost worker=2"
    assert screen(rest).startswith("mode 1.0s | shuffle 3/8 chunks")


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty,quiet,env,want", [
    (True, False, {}, True),
    (False, False, {}, False),
    (True, True, {}, False),
    (False, False, {"CLUSTER_PROGRESS": "always"}, True),
    (False, True, {"CLUSTER_PROGRESS": "always"}, False),     # --quiet wins
    (True, False, {"CLUSTER_PROGRESS": "never"}, False),
    (True, False, {"CLUSTER_PROGRESS": "auto"}, True),
])
def test_progress_only_on_a_terminal_and_never_when_quiet(tty, quiet, env, want):
    assert progress_enabled(FakeStream(tty), quiet, env) is want


# -- the worker's side -----------------------------------------------------------------------
def test_interval_from_the_load_message():
    assert interval_from(None) is None and interval_from(0) is None and interval_from(True) is None
    assert interval_from("0.5") is None and interval_from(-1) is None
    assert interval_from(0.25) == 0.25 and interval_from(0.0001) == MIN_INTERVAL


async def test_reporting_sends_on_entry_on_change_and_on_exit_at_a_bounded_rate():
    sent: list[dict] = []
    p = Progress("load")
    p.total = 3
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with reporting("j", p, sent.append, 0.05, lambda: 7):
        for i in range(30):                 # changes far more often than the interval allows
            p.done = i % 3
            await asyncio.sleep(0.01)
    elapsed = loop.time() - t0
    for m in sent:
        validate(m)
        assert m["job"] == "j" and m["phase"] == "load" and m["total"] == 3 and m["bytes"] == 7
    assert sent[0]["done"] == 0 and sent[-1]["done"] == 29 % 3
    assert 2 <= len(sent) <= elapsed / 0.05 + 2      # entry + one per interval at most + exit
    n = len(sent)
    await asyncio.sleep(0.15)
    assert len(sent) == n                            # the ticker is gone with the block


async def test_reporting_sends_nothing_unless_asked_and_nothing_after_a_failure():
    sent: list[dict] = []
    async with reporting("j", Progress(), None, 0.05):
        await asyncio.sleep(0.07)
    async with reporting("j", Progress(), sent.append, None):
        await asyncio.sleep(0.07)
    assert sent == []
    p = Progress("count")
    with pytest.raises(RuntimeError):
        async with reporting("j", p, sent.append, 10.0):
            p.set("shuffle", 1, 2)
            raise RuntimeError("boom")
    assert [m["phase"] for m in sent] == ["count"]


# -- through the CLI, on a real cluster -------------------------------------------------------
def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    """Like tests.conftest.cli, but keeps "\r" (text mode would turn it into "\n")."""
    r = subprocess.run([sys.executable, "-m", "shardstats.cluster.cli", *args], capture_output=True, timeout=120,
                       env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    parts = generate(150_000, 6, "unique-dup", seed=3)
    write_shards(parts, d / "npy", "npy")
    return d / "npy", np.concatenate(parts)


def test_json_on_stdout_stays_one_document_with_progress_forced_on(data, tmp_path):
    path, allv = data
    env = {"CLUSTER_FILE": str(tmp_path / "c.json"), "CLUSTER_PROGRESS": "always"}
    r = cli("submit", "mode", "--input", str(path), "--local", "3", "--json", "--chunk-bytes", "65536", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and "\r" not in r.stdout
    doc = json.loads(r.stdout)
    value, count, _ = ref_mode(allv)
    assert (doc["result"]["value"], doc["result"]["count"]) == (value, count)
    assert "\r" in r.stderr and "\n" not in r.stderr            # the line only, erased at the end
    shown = r.stderr.split("\r")
    assert any(s.startswith("mode ") and "load" in s for s in shown), shown
    assert screen(r.stderr).strip() == ""
    r = cli("submit", "median", "--input", str(path), "--local", "2", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["lower"] == int(np.sort(allv)[(len(allv) - 1) // 2])
    assert r.stdout.count("\n") == 1 and "median" in r.stderr


def test_no_progress_when_not_a_terminal_or_quiet(data, tmp_path):
    path, _ = data
    env = {"CLUSTER_FILE": str(tmp_path / "c.json")}
    r = cli("submit", "mode", "--input", str(path), "--local", "2", "--json", env=env)
    assert r.returncode == 0 and r.stderr == ""
    r = cli("submit", "median", "--input", str(path), "--local", "2", "--quiet", env={**env, "CLUSTER_PROGRESS": "always"})
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("median: ")


def test_an_error_erases_the_line_before_its_one_line_message(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("1\n2\n")
    (tmp_path / "in" / "b.txt").write_text("1\nzwei\n")
    r = cli("submit", "mode", "--input", str(tmp_path / "in"), "--local", "2",
            env={"CLUSTER_FILE": str(tmp_path / "c.json"), "CLUSTER_PROGRESS": "always"})
    assert r.returncode == 2
    last = r.stderr.split("\r")[-1]
    assert last.startswith("error: ") and "b.txt:2" in last and last.count("\n") == 1


def test_the_load_says_bytes_read_of_total_and_passes_say_n_of_m():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, "mode", clock=clock, width=200, workers=2)
    line.update(0, {**msg("load", 1, 2), "read": 3 << 30, "read_total": 5 << 30})
    assert line.text() == "mode 0.0s | load | 1 of 2 workers at load"     # one worker's bytes would mislead
    line.update(1, {**msg("load", 0, 1), "read": 0, "read_total": 3 << 30})
    assert line.text() == "mode 0.0s | load 1/3 files, 3.0 GiB of 8.0 GiB read"
    line.update(1, {**msg("load", 1, 1), "read": 3 << 30, "read_total": 3 << 30})
    assert line.text() == "mode 0.0s | load 2/3 files, 6.0 GiB of 8.0 GiB read"
    line.update(0, msg("pass", 2, 4, sent=1 << 30))
    line.update(1, msg("pass", 1, 4, sent=1 << 30))
    assert line.text() == "mode 0.0s | pass 1 of 4 | 2.0 GiB sent"


async def test_reporting_counts_the_load_in_bytes_by_the_files_sizes():
    sent: list[dict] = []
    p = Progress("load")
    p.set("load", 0, 3)
    p.sizes = [100, 0, 50]
    async with reporting("j", p, sent.append, 0.05):
        for i in range(1, 4):
            p.done = i
            await asyncio.sleep(0.07)
        p.set("count")
    reads = [(m["read"], m["read_total"]) for m in sent if m["phase"] == "load"]
    assert reads[0] == (0, 150) and reads[-1] == (150, 150) and (100, 150) in reads
    assert all(validate(m) and "read" not in m for m in sent if m["phase"] != "load")
