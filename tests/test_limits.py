"""Bounds a worker enforces on what it is sent, even by callers that hold the token."""
from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np
import pytest

from shardstats.settings import Settings
from shardstats.cluster import launcher
from shardstats.errors import ShardstatsError
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec  # noqa: E402
from shardstats.protocol.errors import ProtocolError
from shardstats.protocol.messages import make
from shardstats.worker import jobs
from shardstats.worker import server
from shardstats.errors import UsageError
from shardstats.worker.ops.median import parse_quantile


@pytest.mark.parametrize("q,want", [("0.9", Fraction(9, 10)), (0.25, Fraction(1, 4)), ("1", 1), ("0", 0),
                                    ("5e-1", Fraction(1, 2)), (" .5 ", Fraction(1, 2))])
def test_quantiles_are_read_exactly(q, want):
    assert parse_quantile(q) == want


@pytest.mark.parametrize("q", ["1e-999999999", "nan", "inf", "-0.1", "1.5", "", "0x1", True, [0.5], None])
def test_quantiles_that_are_not_numbers_in_0_1_are_refused_without_computing_them(q):
    with pytest.raises(UsageError):
        parse_quantile(q)


def test_a_coordinator_that_skips_the_cli_checks_still_gets_a_usage_error(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(100, dtype=np.int64))
    info = launcher.start(2, "127.0.0.1", None, str(tmp_path / "logs"), "warning")
    try:
        with pytest.raises(ShardstatsError) as err:
            asyncio.run(run_job(info.workers, info.token.encode(),
                                job_spec("median", str(tmp_path), {"quantiles": ["1e-999999999"]}, timeout=20)))
        assert err.value.exit_code == 2 and "quantile" in str(err.value)
        rep = asyncio.run(run_job(info.workers, info.token.encode(), job_spec("median", str(tmp_path), timeout=20)))
        assert (rep.result["lower"], rep.result["upper"]) == (49, 50)
    finally:
        launcher.stop(info)


def test_peer_data_for_a_job_that_has_not_started_is_bounded(monkeypatch):
    w = server.WorkerServer(0, "127.0.0.1:1", ["127.0.0.1:1", "127.0.0.1:2"], b"t" * 32,
                            settings=Settings(early_limit_bytes=100))
    w.jobs["j"] = jobs.Job("j", [])
    msg = make("peer", job="j", tag="x", src=1, body={})
    w.deliver_peer(1, msg, 60)
    assert len(w.jobs["j"].early) == 1
    with pytest.raises(ProtocolError):
        w.deliver_peer(1, msg, 60)
