"""Every op over real TCP and the real codec, on a cluster inside the test's event loop (shardstats.testing).

No processes: these tests are about the op contract end to end (typed params on the
wire, the workers' own validation, the job's deadline on a worker), not about death.
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from shardstats import reference
from shardstats.coordinator.client import WorkerClient
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import EmptyDataset, UsageError
from shardstats.protocol.messages import make
from shardstats.worker.ops import registry
from tests.conftest import nasty_datasets

DATASETS = ["int64 extremes", "dup split across shards", "ties", "many empty shards", "single value"]


def _write(tmp_path, name: str) -> np.ndarray:
    shards = nasty_datasets()[name]
    d = tmp_path / name.replace(" ", "-").replace(",", "")
    d.mkdir()
    for i, s in enumerate(shards):
        np.save(d / f"s{i:02d}.npy", s)
    return d, np.concatenate(shards)


@pytest.mark.parametrize("name", DATASETS)
async def test_mode_median_stats_exact_over_tcp(inproc, tmp_path, name):
    d, allv = _write(tmp_path, name)
    rep = await run_job(inproc.addrs, inproc.token, job_spec("mode", str(d), {"ties": "all"}))
    want = reference.mode(allv, tie_limit=100_000)
    assert {k: rep.result[k] for k in want} == want
    rep = await run_job(inproc.addrs, inproc.token, job_spec("median", str(d), {"quantiles": "0,0.25,0.9,1"}))
    want = reference.median(allv, ["0", "0.25", "0.9", "1"])
    assert (rep.result["value"], rep.result["lower"], rep.result["upper"]) == \
        (want["value"], want["lower"], want["upper"])
    assert rep.result["quantiles"] == want["quantiles"]
    rep = await run_job(inproc.addrs, inproc.token, job_spec("stats", str(d)))
    py = allv.tolist()
    assert (rep.result["count"], rep.result["sum"], rep.result["min"], rep.result["max"]) == \
        (len(py), sum(py), min(py), max(py))


async def test_empty_input_is_a_user_error(inproc, tmp_path):
    np.save(tmp_path / "e.npy", np.zeros(0, np.int64))
    with pytest.raises(EmptyDataset) as err:
        await run_job(inproc.addrs, inproc.token, job_spec("stats", str(tmp_path)))
    assert err.value.exit_code == 2


async def _raw_job(inproc, tmp_path, op: str, params: dict) -> dict:
    """A coordinator that skips the client-side checks: what the workers themselves answer."""
    np.save(tmp_path / "v.npy", np.arange(100, dtype=np.int64))
    job = uuid.uuid4().hex
    c = await WorkerClient.connect(inproc.addrs[0], inproc.token)
    try:
        await c.send(make("load", job=job, files=[str(tmp_path / "v.npy")]))
        assert (await c.recv(10))["t"] == "loaded"
        await c.send(make("run", job=job, op=op, params=params, ranks=[0], total=100, timeout=10))
        while True:
            msg = await c.recv(10)
            if msg["t"] in ("done", "error"):
                return msg
    finally:
        await c.close()


@pytest.mark.parametrize("op,params,option", [
    ("median", {"samples": -1}, "--samples"),              # once looped forever on both cores
    ("median", {"quantiles": ["1e-999999999"]}, "--quantiles"),
    ("median", {"quantiles": [str(i / 2000) for i in range(1001)]}, "--quantiles"),
    ("mode", {"chunk_bytes": 10}, "--chunk-bytes"),
    ("mode", {"fan_in": 0}, "--fan-in"),
    ("mode", {"ties": "some"}, "--ties"),
    ("stats", {"ddof": True}, "--ddof"),
    ("stats", {"nonsense": 1}, "--nonsense"),
])
async def test_workers_validate_parameters_with_the_cli_rules(inproc, tmp_path, op, params, option):
    msg = await _raw_job(inproc, tmp_path, op, params)
    assert (msg["t"], msg["kind"]) == ("error", "usage") and option in msg["message"].split(":")[0]
    with pytest.raises(UsageError) as err:                  # the same rule, the same words, on the client
        registry.get(op).params.from_wire(params)
    assert str(err.value) == msg["message"]
    ok = await _raw_job(inproc, tmp_path, "stats", {})   # the worker still serves
    assert ok["t"] == "done" and ok["result"]["count"] == 100


async def test_an_unknown_op_is_a_usage_error_from_the_worker(inproc, tmp_path):
    msg = await _raw_job(inproc, tmp_path, "no_such_op", {})
    assert (msg["t"], msg["kind"]) == ("error", "usage") and "unknown op 'no_such_op'" in msg["message"]
