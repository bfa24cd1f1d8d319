"""The warm template (worker/usercode.py): each mapreduce job's child is a fresh fork of the worker's template
process, not an interpreter of its own; nothing of one job reaches the next; the template and its children die
with their worker; a --no-user-code worker starts none."""
from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.testing import in_process_cluster
from shardstats.worker import usercode
from tests.conftest import free_base

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(6):
        (d / f"d{i}.txt").write_text("\n".join(" ".join(WORDS[(i + j) % len(WORDS):][:5]) for j in range(7)) + "\n")
    return d


def job_file(tmp_path, name: str, body: str) -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return str(p)


async def mr(c, inp, **params):
    return await run_job(c.addrs, c.token, job_spec("mapreduce", str(inp), {"limit": 0, **params}))


def values(rep) -> dict:
    out: dict = {}
    for k, v in rep.result["data"]:
        out.setdefault(k, []).append(v)
    return out


async def test_a_jobs_child_is_a_fork_of_the_template_and_nothing_of_a_job_reaches_the_next(tmp_path, docs):
    # the old child was an interpreter the worker started itself (its parent: the worker, here this process)
    spy = job_file(tmp_path, "spy.py", '''
        import json, os, random
        import numpy as np
        def mapper(rec):
            leaked = hasattr(json, "shardstats_leak")
            json.shardstats_leak = True          # a monkeypatch: the next job's fresh fork must not see it
            yield "ppid", os.getppid()
            yield "leaked", leaked
            yield "np", float(np.random.random())
            yield "random", random.random()
        def reducer(key, vals):
            yield key, sorted(set(vals))
    ''')
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        first = values(await mr(c, docs, job=spy))
        second = values(await mr(c, docs, job=spy))
    template = usercode.TEMPLATE.pid
    assert template is not None and template != os.getpid()
    for got in (first, second):
        assert got["ppid"] == [[template]]
        assert got["leaked"] == [[False, True]]     # each worker's child: False for its first record only
    # numpy's and random's generators reseeded in each child: two workers, two jobs, four different draws
    for gen in ("np", "random"):
        assert len(set(first[gen][0]) | set(second[gen][0])) == len(first[gen][0]) + len(second[gen][0])


async def test_a_partitioner_of_pythons_hash_sends_each_key_to_one_reducer(tmp_path, docs):
    # every worker's child hashed str keys with its own random seed: a key went to several reducers
    job = job_file(tmp_path, "hp.py", '''
        def mapper(rec):
            for w in rec["text"].split():
                yield w, 1
        def partitioner(key, n):
            return hash(key) % n
        def reducer(key, vals):
            yield key, sum(vals)
    ''')
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await mr(c, docs, job=job, reducers=3)
    want = Counter(w for f in sorted(docs.iterdir()) for line in f.read_text().splitlines() for w in line.split())
    keys = [k for k, _ in rep.result["data"]]
    assert len(keys) == len(set(keys)) and dict(rep.result["data"]) == dict(want)
    # the same hash on every machine's workers: the seed is fixed (PYTHONHASHSEED=0), not this process's
    seeded = subprocess.run([sys.executable, "-c", "print(hash('shardstats'))"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONHASHSEED": "0"}, check=True, timeout=60).stdout.strip()
    async with in_process_cluster(1, root=str(tmp_path)) as c:
        rep = await mr(c, docs, job=job_file(tmp_path, "h.py", '''
            def mapper(rec):
                yield "h", hash("shardstats")
            def reducer(key, vals):
                yield key, sorted(set(vals))
        '''))
    assert rep.result["data"] == [["h", [int(seeded)]]]


def _worker(tmp_path, port: int, *extra: str) -> subprocess.Popen:
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(24))
    return subprocess.Popen([sys.executable, "-m", "shardstats.cluster.cli", "worker", "--id", "0",
                             "--listen", f"127.0.0.1:{port}", "--peers", f"127.0.0.1:{port}",
                             "--token-file", str(token), "--allow-any-path", "--no-http", *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "wb"))


def _until(what, deadline: float = 60.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"not within {deadline} s: {what.__doc__}")


def _listening(port: int) -> None:
    import socket

    def up():
        """the worker listening"""
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    _until(up)


def _alive(pids) -> list:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


async def test_a_killed_worker_leaves_no_template_and_no_child(tmp_path, docs):
    port = free_base(1)
    proc = _worker(tmp_path, port)
    job = None
    try:
        me = psutil.Process(proc.pid)
        _listening(port)
        hang = job_file(tmp_path, "hang.py", '''
            def mapper(rec):
                while True:
                    pass
        ''')
        token = (tmp_path / "token").read_text().encode()
        job = asyncio.create_task(run_job([f"127.0.0.1:{port}"], token,
                                          job_spec("mapreduce", str(docs), {"job": hang, "limit": 0}, timeout=120)))

        def child():
            """the job's child, forked by the worker's template (started by this first job)"""
            tpl = [p for p in me.children() if "--template" in p.cmdline()]
            return tpl and tpl[0].children() and (tpl[0], tpl[0].children()[0])
        loop = asyncio.get_running_loop()
        tpl, kid = await loop.run_in_executor(None, _until, child)
        assert kid.ppid() == tpl.pid and "--template" in kid.cmdline()
        everyone = [p.pid for p in me.children(recursive=True)]
        assert set(everyone) == {tpl.pid, kid.pid}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)

        def gone():
            """every process of the killed worker gone"""
            return not _alive(everyone)
        await loop.run_in_executor(None, _until, gone, 30.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if job is not None:
            job.cancel()
            with pytest.raises(BaseException):
                await job


def test_a_worker_without_user_code_starts_no_template(tmp_path):
    port = free_base(1)
    proc = _worker(tmp_path, port, "--no-user-code")
    try:
        _listening(port)
        assert psutil.Process(proc.pid).children(recursive=True) == []
    finally:
        proc.terminate()
        proc.wait(30)


async def test_a_dead_template_is_replaced_and_a_job_it_took_along_fails_as_the_clusters(tmp_path, docs):
    from shardstats.errors import JobError
    hang = job_file(tmp_path, "hang.py", '''
        def mapper(rec):
            while True:
                pass
    ''')
    wc = str(Path(__file__).resolve().parent.parent / "examples" / "wordcount.py")
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        await mr(c, docs, job=wc)
        first = usercode.TEMPLATE.pid
        os.kill(first, signal.SIGKILL)            # between jobs: the next job starts a new one
        assert values(await mr(c, docs, job=wc))["alpha"] == [Counter(
            w for f in docs.iterdir() for w in f.read_text().split())["alpha"]]
        second = usercode.TEMPLATE.pid
        assert second not in (None, first)
        job = asyncio.create_task(mr(c, docs, job=hang))

        def running():
            """the hanging job's children"""
            return len(psutil.Process(second).children()) == 2
        await asyncio.get_running_loop().run_in_executor(None, _until, running)
        kids = psutil.Process(second).children()
        os.kill(second, signal.SIGKILL)           # mid-job: its children die with it, the job fails as exit 1
        with pytest.raises(JobError, match="the worker's user-code template process died"):
            await asyncio.wait_for(job, 60)
        pids = [k.pid for k in kids]

        def dead():
            """the template's children dead with it"""
            return not _alive(pids)
        await asyncio.get_running_loop().run_in_executor(None, _until, dead, 30.0)
        assert values(await mr(c, docs, job=wc))["alpha"]   # and the next job runs
