"""Flow-control bounds over real TCP between real worker processes (12 workers, skewed partitions)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shardstats.cluster import launcher
from shardstats.cluster.gen import write_shards
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec  # noqa: E402
from tests.conftest import ref_mode

W = 12


@pytest.fixture(scope="module")
def twelve():
    info = launcher.start(W, "127.0.0.1", None, None, "warning")
    yield info
    launcher.stop(info)
    assert not any(launcher.alive(p) for p in info.pids)


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """Most rows are copies of a few hot values, so one owner receives far more than the rest."""
    rng = np.random.default_rng(3)
    hot = np.full(300_000, 1_234_567, np.int64)
    rest = rng.integers(-(2 ** 62), 2 ** 62, 120_000)
    parts = [np.concatenate([h, r]) for h, r in zip(np.array_split(hot, 8), np.array_split(rest, 8))]
    d = tmp_path_factory.mktemp("skewed")
    write_shards(parts, d, "npy")
    return d, np.concatenate(parts)


@pytest.mark.parametrize("fan_in,credits,chunk", [(1, 2, 16384), (2, 3, 8192)])
def test_credit_bounds_hold_over_tcp(twelve, skewed, fan_in, credits, chunk):
    d, allv = skewed
    params = {"shuffle": "credit", "fan_in": fan_in, "credits": credits, "chunk_bytes": chunk,
              "combine": "never"}          # ship every value: the hot owner gets ~70% of all bytes
    rep = asyncio.run(run_job(twelve.workers, twelve.token.encode(), job_spec("mode", str(d), params)))
    assert rep.result["value"] == ref_mode(allv)[0] and rep.result["count"] == 300_000
    frame_overhead = 256
    for w in rep.workers:
        assert w["max_inbound_streams"] <= fan_in
        assert w["peak_buffered_bytes"] <= fan_in * credits * chunk
        # a sender never has more than `requests` streams x `credits` chunks outstanding
        assert w["peak_send_queue_bytes"] <= 2 * credits * (chunk + frame_overhead)
    recv = np.array([sum(w["bytes_received"]) for w in rep.workers])
    assert recv.max() > 0.5 * recv.sum()            # the skew is real: one receiver takes most


def test_naive_and_gather_agree_with_credit(twelve, skewed):
    d, allv = skewed
    answers = set()
    for strategy in ("credit", "naive", "gather"):
        rep = asyncio.run(run_job(twelve.workers, twelve.token.encode(),
                                  job_spec("mode", str(d), {"shuffle": strategy, "chunk_bytes": 32768})))
        answers.add((rep.result["value"], rep.result["count"]))
    assert answers == {(1_234_567, 300_000)}
