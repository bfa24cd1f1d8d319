"""A job of at most one chunk goes up the binomial tree instead of the all-to-all (``--shuffle auto``).

Exactness on the nasty datasets for every op that shuffles by key (against Counter
and set, not against our own shuffle), the rule auto follows, and what the tree
saves: messages and the credit protocol's W^2 exchange, counted, not timed.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import UsageError
from shardstats.worker.ops.contract import INT64_BYTES
from tests.conftest import nasty_datasets, ref_mode, run_op
from tests.test_topk import reference as ref_topk

NASTY = nasty_datasets()
WORKERS = [1, 2, 3, 5, 10, 12]


def _depth(w: int) -> int:
    return max(0, (w - 1).bit_length())


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("name", sorted(NASTY))
def test_the_tree_is_exact_for_every_keyed_op(name, workers):
    shards = NASTY[name]
    allv = np.concatenate(shards)
    counts = Counter(allv.tolist())
    tree = {"shuffle": "tree"}

    res, stats, net = run_op("mode", shards, workers, {**tree, "ties": "all"})
    value, count, ties = ref_mode(allv)
    assert (res["value"], res["count"], res["ties"], res["tie_count"]) == (value, count, ties, len(ties))
    assert {s["shuffle"] for s in stats} == {"tree"}
    assert sum(s["distinct_keys"] for s in stats) == len(counts)
    for c in net.comms:                      # a tree: no rank hears from more than log2(W) others
        assert c.stats.tree_messages_received <= _depth(workers)
        assert c.stats.max_inbound_streams == 0

    for k in (1, 3, 10):
        res, stats, _ = run_op("topk", shards, workers, {**tree, "k": k, "strategy": "shuffle"})
        assert res == ref_topk(allv, k)

    res, _, _ = run_op("distinct", shards, workers, tree)
    assert res == {"value": len(counts), "exact": True}

    res, _, _ = run_op("describe", shards, workers, {**tree, "k": 3})
    assert res["distinct"]["value"] == len(counts)
    assert (res["mode"]["value"], res["mode"]["count"]) == (value, count)
    assert res["topk"] == ref_topk(allv, 3)
    assert (res["stats"]["count"], res["stats"]["sum"]) == (len(allv), sum(allv.tolist()))


@pytest.mark.parametrize("op", ["mode", "topk", "distinct", "describe"])
def test_auto_takes_the_tree_exactly_when_the_job_fits_one_chunk(op):
    values = np.arange(100, dtype=np.int64) % 37           # 100 values: 800 bytes
    shards = list(np.array_split(values, 4))
    fits = 100 * INT64_BYTES
    for chunk, want in ((fits, "tree"), (fits - 8, "credit")):
        res, stats, _ = run_op(op, shards, 5, {"chunk_bytes": chunk}, known_total=True)
        assert {s["shuffle"] for s in stats} == {want}, (op, chunk)
        assert res == run_op(op, shards, 5, {"chunk_bytes": chunk, "shuffle": "credit"})[0]
    # not knowing the total (no coordinator), auto shuffles
    _, stats, _ = run_op(op, shards, 5, {"chunk_bytes": fits})
    assert {s["shuffle"] for s in stats} == {"credit"}


def test_a_one_value_mode_on_ten_workers_takes_two_trees_of_messages():
    shards = [np.array([7], np.int64)]
    res, stats, net = run_op("mode", shards, 10, {}, known_total=True)
    assert (res["value"], res["count"]) == (7, 1)
    tree_msgs = sum(c.stats.messages_sent for c in net.comms)
    assert tree_msgs == 2 * (10 - 1)                      # the pieces up, the bests up: nothing else
    assert max(s["rounds"] for s in stats) == 2 * _depth(10)
    _, _, shuffled = run_op("mode", shards, 10, {"shuffle": "credit"}, known_total=True)
    assert sum(c.stats.messages_sent for c in shuffled.comms) >= 10 * 9   # every pair talks at least once


async def test_asking_for_the_tree_on_a_job_over_one_chunk_is_a_usage_error(inproc, tmp_path):
    np.save(tmp_path / "v.npy", np.arange(1000, dtype=np.int64))
    with pytest.raises(UsageError, match=r"--shuffle tree: only for a job of at most one chunk \(4,096 bytes\); this one's pieces hold up to 8,000 bytes") as err:
        await run_job(inproc.addrs, inproc.token, job_spec("mode", str(tmp_path), {"shuffle": "tree",
                                                                                  "chunk_bytes": 4096}))
    assert err.value.exit_code == 2
    # the cluster still serves the next job, and a tiny one over real TCP takes the tree
    rep = await run_job(inproc.addrs, inproc.token, job_spec("mode", str(tmp_path), {"chunk_bytes": 8192}))
    assert (rep.result["value"], rep.result["count"], rep.result["tie_count"]) == (0, 1, 1000)
    assert {w["shuffle"] for w in rep.workers} == {"tree"}


def test_compact_fingerprints_asked_for_are_shuffled_even_for_a_tiny_job():
    shards = [np.array([5, 5, 9], np.int64), np.array([9, 9, -1], np.int64)]
    res, stats, _ = run_op("mode", shards, 4, {"encoding": "compact"}, known_total=True)
    assert (res["value"], res["count"]) == (9, 3)
    assert {s["shuffle"] for s in stats} == {"credit"} and {s["encoding"] for s in stats} == {"compact"}
    # the tree asked for by name wins, and carries the values plainly
    res, stats, _ = run_op("mode", shards, 4, {"encoding": "compact", "shuffle": "tree"}, known_total=True)
    assert (res["value"], res["count"]) == (9, 3)
    assert {s["shuffle"] for s in stats} == {"tree"} and {s["encoding"] for s in stats} == {"plain"}
