"""A job's CPU never makes a live worker look dead; every job parameter is checked on the worker (issue 11).

Real worker processes.  A median with the maximum number of quantiles runs while
the coordinator declares a worker lost after 1 s of silence: it must finish in
one attempt with every quantile exact (ranks checked against a sorted copy).
Parameters a token holder can send straight to a worker that the CLI would refuse
(``samples=-1``, ``chunk_bytes=10``, 5,000 quantiles) come back as usage errors.
"""
from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from shardstats.cluster import launcher
from shardstats.cluster.config import ClusterInfo
from shardstats.cluster.gen import generate, write_shards
from shardstats.coordinator.client import WorkerClient
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.protocol.messages import make
from shardstats.worker.ops.median import MAX_QUANTILES
from tests.conftest import cli


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[tuple[ClusterInfo, Path, np.ndarray]]:
    base = tmp_path_factory.mktemp("heavy")
    parts = generate(400_000, 6, "uniform", seed=8)
    write_shards(parts, base / "data", "npy")
    info = launcher.start(3, "127.0.0.1", None, str(base / "logs"), "warning")
    try:
        yield info, base / "data", np.sort(np.concatenate(parts))
    finally:
        launcher.stop(info)


@pytest.mark.parametrize("extra", [{}, {"gather_limit": 1 << 20}], ids=["default", "one gathered window"])
def test_the_maximum_number_of_quantiles_keeps_every_worker_alive_and_exact(env, extra):
    """With ``gather_limit`` above the data size the whole dataset is one gathered window at rank 0:
    the selection used to sort it once per target on the event loop (2,000 sorts of 400,000 values)."""
    info, data, s = env
    rng = np.random.default_rng(2)
    qs = [f"{q:.6f}" for q in rng.random(MAX_QUANTILES)]
    spec = job_spec("median", str(data), {"quantiles": qs, **extra}, timeout=120, max_retries=0,
                    heartbeat=0.1, dead_after=1.0)
    rep = asyncio.run(run_job(info.workers, info.token.encode(), spec))
    assert rep.attempts == 1 and rep.lost_workers == []
    n = len(s)
    for q in qs:
        pos = Fraction(q) * (n - 1)
        lo = int(pos)
        got = rep.result["quantiles"][q]
        assert (got["lower"], got["upper"]) == (int(s[lo]), int(s[min(lo + 1, n - 1)] if pos != lo else s[lo]))
        assert Fraction(got["value"]) == got["lower"] + (got["upper"] - got["lower"]) * (pos - lo)


def test_more_quantiles_than_the_cap_is_a_usage_error(env):
    info, data, _ = env
    cf = Path(info.log_dir) / "cluster.json"
    info.save(cf)
    many = ",".join(["0.5"] * (MAX_QUANTILES + 1))
    r = cli("submit", "median", "--input", str(data), "--quantiles", many, "--cluster-file", str(cf), timeout=60)
    assert r.returncode == 2 and f"at most {MAX_QUANTILES:,}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("op,params,option", [
    ("median", {"samples": -1}, "samples"),
    ("median", {"samples": 0}, "samples"),
    ("median", {"gather_limit": -5}, "gather-limit"),
    ("median", {"quantiles": ["0.5"] * 5000}, "quantiles"),
    ("median", {"quantiles": ["2"]}, "quantile"),
    ("median", {"even": "middle"}, "even"),
    ("mode", {"chunk_bytes": 10}, "chunk-bytes"),
    ("mode", {"chunk_bytes": 1 << 30}, "chunk-bytes"),
    ("mode", {"fan_in": 0}, "fan-in"),
    ("mode", {"credits": "many"}, "credits"),
    ("mode", {"shuffle": "nope"}, "shuffle"),
])
def test_the_workers_refuse_bad_parameters_as_usage_errors(env, op, params, option):
    """Sent straight to a worker (as any token holder can), past the CLI's and the API's checks."""
    info, data, s = env

    job = f"bad-{op}-{option}-{abs(hash(str(params)))}"

    async def main():
        c = await WorkerClient.connect(info.workers[0], info.token.encode())
        try:
            await c.send(make("load", job=job, files=[str(f) for f in sorted(data.iterdir())]))
            while (m := await c.recv(30))["t"] not in ("loaded", "error"):
                pass
            assert m["t"] == "loaded", m
            await c.send(make("run", job=job, op=op, params=params, ranks=[0], total=m["values"], timeout=30))
            while (m := await c.recv(30))["t"] not in ("error", "done"):
                pass
            return m
        finally:
            await c.close()

    reply = asyncio.run(main())
    assert reply["t"] == "error" and reply["kind"] == "usage" and option in reply["message"], reply
    rep = asyncio.run(run_job(info.workers, info.token.encode(), job_spec("median", str(data), {}, timeout=60)))
    assert rep.result["n"] == len(s)


def test_the_cli_refuses_what_the_workers_refuse():
    r = cli("submit", "mode", "--input", ".", "--local", "1", "--chunk-bytes", "10")
    assert r.returncode == 2 and "--chunk-bytes" in r.stderr and len(r.stderr.strip().splitlines()) == 1
