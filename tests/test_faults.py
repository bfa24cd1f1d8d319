"""Faults on ten real worker processes: SIGKILL at random moments, retries, rejoin, concurrent jobs.

Every run must end with the exact answer (the job re-runs on the survivors) or,
when the kills exceed the retry budget, with one clear error -- within a deadline,
with no job left running on any worker and no process or port left behind.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest

from shardstats.cluster import launcher
from shardstats.errors import ShardstatsError
from shardstats.coordinator.job import ping_all, run_job
from shardstats.coordinator.spec import job_spec  # noqa: E402
from shardstats.coordinator.liveness import Liveness
from tests.conftest import shard_files

WORKERS = 10
ROWS = 1_500_000
DEADLINE = 60.0
LIVE = Liveness(heartbeat=0.5, dead_after=3.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shard_files(tmp_path_factory.mktemp("faultshards"), ROWS, WORKERS, seed=11)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    info = launcher.start(WORKERS, "127.0.0.1", None, str(tmp_path_factory.mktemp("faultlogs")), "info")
    try:
        yield info
    finally:
        launcher.stop(info)
    assert not [p for p in info.pids if launcher.alive(p)]
    assert launcher.ports_in_use("127.0.0.1", [int(a.rsplit(":", 1)[1]) for a in info.workers]) == []


def _job(info, op: str, path, **kw):
    spec = job_spec(op, str(path), timeout=DEADLINE, heartbeat=LIVE.heartbeat, dead_after=LIVE.dead_after,
                    **{k: kw.pop(k) for k in ("max_retries",) if k in kw})
    return run_job(info.workers, info.token.encode(), spec, absolute_paths=True, **kw)


def _check(op: str, result: dict, ref) -> None:
    if op == "mode":
        assert (result["value"], result["count"]) == ref
    else:
        assert (result["lower"], result["upper"]) == ref


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while launcher.alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} outlived SIGKILL by {timeout:g}s"
        time.sleep(0.01)


def _everyone_back(info) -> None:
    for i, pid in enumerate(info.pids):
        if not launcher.alive(pid):
            launcher.restart(info, i)
    rows = asyncio.run(ping_all(info.workers, info.token.encode()))
    assert all(r["up"] for r in rows), rows


def _idle(info, timeout: float = 5.0) -> list[dict]:
    """Every live worker holds no job (aborted attempts are gone, not left running)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in asyncio.run(ping_all(info.workers, info.token.encode())) if r["up"]]
        if all(r["active_jobs"] == 0 for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_sigkill_at_random_moments_still_gives_the_exact_answer(cluster, data):
    path, ref = data
    rng = random.Random(2026)
    # How long each job takes here (warm), so the kills land across the whole job, not after it.
    span = {}
    for op in ("mode", "median", "mode", "median"):
        t = time.perf_counter()
        _check(op, asyncio.run(_job(cluster, op, path)).result, ref[op])
        span[op] = time.perf_counter() - t
    outcomes = []
    for run in range(20):
        op = ("mode", "median")[run % 2]
        victim = rng.randrange(WORKERS)
        delay = rng.uniform(0, span[op])

        async def one():
            task = asyncio.create_task(_job(cluster, op, path))
            await asyncio.sleep(delay)
            os.kill(cluster.pids[victim], signal.SIGKILL)
            killed_at = time.perf_counter()
            rep = await asyncio.wait_for(task, DEADLINE)
            return rep, time.perf_counter() - killed_at

        rep, after_kill = asyncio.run(one())
        _wait_gone(cluster.pids[victim])   # a kill that landed after the job may still be on its way
        _check(op, rep.result, ref[op])
        assert rep.attempts in (1, 2)
        if rep.attempts == 2:
            assert [w["id"] for w in rep.lost_workers] == [victim]
            assert sum(w["values"] for w in rep.workers) == ROWS     # the victim's files went to survivors
            assert len(rep.workers) == WORKERS - 1
        outcomes.append((op, victim, round(delay, 3), rep.attempts, round(after_kill, 3)))
        rows = _idle(cluster)
        assert all(r["active_jobs"] == 0 for r in rows), rows
        _everyone_back(cluster)
    retried = [o for o in outcomes if o[3] == 2]
    print("\nfault runs (op, victim, kill after s, attempts, s from kill to answer):", *outcomes, sep="\n  ")
    assert len(retried) >= 8, f"too few kills landed during a job to test recovery: {outcomes}"


def test_more_kills_than_retries_is_one_clear_error(cluster, data):
    path, _ = data
    _everyone_back(cluster)

    async def one():
        task = asyncio.create_task(_job(cluster, "mode", path, max_retries=0))
        await asyncio.sleep(0.05)
        os.kill(cluster.pids[3], signal.SIGKILL)
        return await asyncio.wait_for(task, DEADLINE)

    with pytest.raises(ShardstatsError) as err:
        asyncio.run(one())
    assert err.value.exit_code == 1
    assert "worker 3" in str(err.value) and "\n" not in str(err.value)
    assert all(r["active_jobs"] == 0 for r in _idle(cluster))
    _wait_gone(cluster.pids[3])
    _everyone_back(cluster)


def test_a_dead_worker_at_submit_time_is_worked_around_and_rejoins_after_restart(cluster, data):
    path, ref = data
    _everyone_back(cluster)
    os.kill(cluster.pids[7], signal.SIGKILL)
    _wait_gone(cluster.pids[7])
    rep = asyncio.run(_job(cluster, "median", path))
    _check("median", rep.result, ref["median"])
    assert [w["id"] for w in rep.lost_workers] == [7] and rep.lost_workers[0]["attempt"] == 0
    assert 7 not in [w["id"] for w in rep.workers]
    launcher.restart(cluster, 7)
    rep = asyncio.run(_job(cluster, "mode", path))
    _check("mode", rep.result, ref["mode"])
    assert rep.lost_workers == [] and sorted(w["id"] for w in rep.workers) == list(range(WORKERS))
    assert rep.workers[7]["bytes_sent"] and sum(rep.workers[7]["bytes_sent"]) > 0   # it took part in the shuffle


def test_two_concurrent_jobs_both_answer_exactly(cluster, data):
    path, ref = data
    _everyone_back(cluster)

    async def both():
        return await asyncio.gather(_job(cluster, "mode", path), _job(cluster, "median", path),
                                    _job(cluster, "mode", path))

    reps = asyncio.run(both())
    assert len({r.job for r in reps}) == 3
    for rep in reps:
        _check(rep.op, rep.result, ref[rep.op])
        assert rep.attempts == 1
