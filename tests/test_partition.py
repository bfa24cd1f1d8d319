"""A network partition on the multi-host test bed: a host's link goes down in the middle of a job.

The worker on the cut-off host keeps running but nobody hears it: no connection
closes, so only the heartbeats can tell.  The coordinator must declare it lost
within ``dead_after``, re-run the job on the three survivors, and return the exact
answer; once the link is back, the host takes part in the next job again, and
the job it was cut off in has been dropped there.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from scripts import testbed  # noqa: E402

from shardstats.coordinator.job import run_job  # noqa: E402
from shardstats.coordinator.spec import job_spec  # noqa: E402
from shardstats.coordinator.liveness import Liveness  # noqa: E402
from tests.conftest import shard_files  # noqa: E402

pytestmark = pytest.mark.netns
_OK, _WHY = testbed.available()

HOSTS = 4
ROWS = 1_500_000
LIVE = Liveness(heartbeat=0.5, dead_after=2.0)


@pytest.fixture(scope="module")
def bed():
    if not _OK:
        pytest.skip(f"network namespaces unavailable: {_WHY}")
    # 20 Mbit/s: the mode's shuffle (~9 MB over four links) takes about a second, so a cut lands inside it.
    b = testbed.TestBed(HOSTS, testbed.LinkShape(rate="20mbit", delay_ms=0.0), job_timeout=30.0, log_level="info")
    with b:
        yield b
    assert b.leftovers() == {"namespaces": [], "links": [], "pids": []}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path, ref = shard_files(tmp_path_factory.mktemp("cutshards"), ROWS, HOSTS, seed=5)
    return path, ref["mode"]


def _job(bed, path):
    return run_job(bed.addrs, bed.token.encode(), job_spec("mode", str(path), timeout=60.0, heartbeat=LIVE.heartbeat,
                                                           dead_after=LIVE.dead_after), absolute_paths=True)


def test_a_host_cut_off_mid_job_is_detected_and_the_job_reruns_exactly(bed, dataset):
    path, ref = dataset
    t = time.perf_counter()
    rep = asyncio.run(_job(bed, path))
    span = time.perf_counter() - t
    assert (rep.result["value"], rep.result["count"]) == ref and rep.attempts == 1
    victim = 2

    async def cut_during_job():
        task = asyncio.create_task(_job(bed, path))
        await asyncio.sleep(min(0.5, span / 2))
        bed.cut(victim)
        cut_at = time.perf_counter()
        try:
            rep = await asyncio.wait_for(task, 60.0)
        finally:
            bed.restore(victim)
        return rep, time.perf_counter() - cut_at

    rep, after_cut = asyncio.run(cut_during_job())
    print(f"\nclean job {span:.2f} s; cut -> exact answer {after_cut:.2f} s "
          f"(dead_after {LIVE.dead_after:g} s, rerun {rep.seconds + rep.load_seconds:.2f} s)")
    assert (rep.result["value"], rep.result["count"]) == ref
    assert rep.attempts == 2 and [w["id"] for w in rep.lost_workers] == [victim]
    assert "silent" in rep.lost_workers[0]["reason"]
    assert after_cut < LIVE.dead_after + 3 * span + 5        # detected by heartbeat, not by a 30-60 s timeout

    # Back on the network: the host drops the job it was cut off in and serves the next one.
    deadline = time.monotonic() + 3 * LIVE.worker_dead_after
    while True:
        rows = bed.ping()
        if rows[victim]["up"] and rows[victim]["active_jobs"] == 0:
            break
        assert time.monotonic() < deadline, rows[victim]
        time.sleep(0.2)
    rep = asyncio.run(_job(bed, path))
    assert (rep.result["value"], rep.result["count"]) == ref
    assert rep.attempts == 1 and len(rep.workers) == HOSTS
