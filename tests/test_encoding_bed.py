"""``--encoding auto`` where it matters: compact on a slow shaped link of the netns bed, plain on loopback.

The bed (``scripts.bench_encoding.EncodingBed``: names ``sse28_*``, addresses 10.228.0.0/16)
has four hosts whose links are shaped to 5 Mbit/s each way: there the plain shuffle of
~0.6 MB a host takes about a second and compact's coding a few hundredths, so a probe
that measures the link must choose compact.  The same job on four workers on loopback
must stay plain.  Every answer is checked against numpy; the bed is checked gone after.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from scripts import bench_encoding, testbed
from shardstats import reference
from shardstats.cluster.gen import generate, write_shards
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.testing import in_process_cluster
from shardstats.worker.ops.compact_choice import usable_cpus

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

HOSTS = 4
RATE_MBIT = 5
_OK, _WHY = bench_encoding.available()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    parts = generate(HOSTS * 50_000, HOSTS, "unique-dup", seed=28)
    parts[1][7] = np.iinfo(np.int64).min            # the int64 edges travel too
    parts[2][3] = np.iinfo(np.int64).max
    out = tmp_path_factory.mktemp("encbed")
    write_shards(parts, out, "npy")
    r = reference.mode(np.concatenate(parts))
    return out, (r["value"], r["count"])


def _auto(addrs, token: bytes, path):
    return asyncio.run(run_job(addrs, token, job_spec("mode", str(path), {"encoding": "auto"}, timeout=60.0),
                               absolute_paths=True))


@pytest.mark.skipif(not _OK, reason=f"network namespaces unavailable: {_WHY}")
def test_auto_picks_compact_on_a_slow_link_and_measures_it(dataset):
    path, want = dataset
    bed = bench_encoding.EncodingBed(HOSTS, testbed.LinkShape(rate=f"{RATE_MBIT}mbit", delay_ms=0.0),
                                     job_timeout=60.0)
    try:
        bed.start()
        assert bed.prefix.startswith("sse28_") and all(a.startswith("10.228.") for a in bed.addrs)
        rep = _auto(bed.addrs, bed.token.encode(), path)
    finally:
        bed.stop()
    assert bed.leftovers() == {"namespaces": [], "links": [], "pids": []}
    assert (rep.result["value"], rep.result["count"]) == want
    assert {w["encoding"] for w in rep.workers} == {"compact"}
    choice = rep.workers[0]["encoding_choice"]
    assert choice["link"] == "probed" and "slow" in choice["why"]
    assert 0.5 * RATE_MBIT <= choice["link_mbit"] <= 1.3 * RATE_MBIT      # the probe measured the shaping
    assert choice["load_per_cpu"] >= round(HOSTS / usable_cpus(), 2)         # four hosts on one machine, at least
    assert choice["predicted_compact_s"] < choice["predicted_plain_s"]


def test_auto_stays_plain_on_loopback(dataset):
    path, want = dataset

    async def main():
        async with in_process_cluster(HOSTS) as c:
            return await run_job(c.addrs, c.token, job_spec("mode", str(path), {"encoding": "auto"}, timeout=60.0),
                                 absolute_paths=True)
    rep = asyncio.run(main())
    assert (rep.result["value"], rep.result["count"]) == want
    assert {w["encoding"] for w in rep.workers} == {"plain"}
    assert rep.workers[0]["encoding_choice"]["link"] == "loopback"
