"""distinct against len(set()): exact on the nasty datasets and with hypothesis; HyperLogLog error and bytes; the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardstats.worker.ops.distinct import hll_estimate, hll_registers, relative_standard_error
from tests.conftest import I64_MAX, I64_MIN, cli, nasty_datasets, run_op

NASTY = nasty_datasets()
WORKER_COUNTS = [1, 2, 3, 5, 10, 12]


def _bytes(net) -> int:
    return sum(sum(c.stats.bytes_sent) for c in net.comms)


def check(shards, workers, **params):
    res, stats, net = run_op("distinct", shards, workers, params)
    assert res == {"value": len(set(np.concatenate(shards).tolist())), "exact": True}
    assert sum(s["distinct_keys"] for s in stats) == res["value"]      # owners hold disjoint sets
    depth = max(0, (workers - 1).bit_length())
    assert all(c.stats.tree_messages_received <= depth for c in net.comms)
    if params.get("shuffle", "credit") == "credit":        # naive and gather are the comparisons without admission
        assert all(c.stats.max_inbound_streams <= 1 for c in net.comms)
    return res, stats, net


@pytest.mark.parametrize("combine_chunk", [256, 1 << 20])
@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("name", sorted(NASTY))
def test_distinct_on_nasty_datasets(name, workers, combine_chunk):
    check(NASTY[name], workers, chunk_bytes=combine_chunk)


@pytest.mark.parametrize("shuffle", ["credit", "naive", "gather"])
def test_every_shuffle_strategy_counts_the_same(shuffle):
    check(NASTY["dup split across shards"], 5, shuffle=shuffle)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(-5, 5) | st.integers(I64_MIN, I64_MAX), max_size=40), min_size=1,
                max_size=8).filter(any), st.integers(1, 12))
def test_distinct_property(shards, workers):
    check([np.array(s, dtype=np.int64) for s in shards], workers)


def test_registers_match_a_per_value_reference():
    # the vectorised registers against the textbook loop, on both of the build's paths
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.integers(I64_MIN, I64_MAX, 3000), np.array([I64_MIN, I64_MAX, 0, -1], np.int64)])
    from shardstats.worker.data.partition import splitmix64
    for p in (4, 12, 16):
        q = 64 - p
        ref = [0] * (1 << p)
        for h in splitmix64(v).tolist():
            idx, rest = h >> q, h & ((1 << q) - 1)
            ref[idx] = max(ref[idx], q - rest.bit_length() + 1)
        assert hll_registers(v, p).tolist() == ref


def test_small_cardinalities_are_counted_almost_exactly():
    for n in (1, 2, 10, 100, 1000):
        est = hll_estimate(hll_registers(np.arange(n, dtype=np.int64) * 7_919, 12))
        assert abs(est - n) <= max(1, 3 * relative_standard_error(12) * n)


def test_hll_on_10m_values_with_1m_distinct_is_within_3_standard_errors_and_moves_under_1_percent():
    # The case at full size: 10M values, 1M distinct, 4 workers.  The exact job's bytes
    # are measured on the same data (every distinct value once to its owner).
    rng = np.random.default_rng(12)
    distinct = rng.choice(2 ** 40, 1_000_000, replace=False).astype(np.int64) - 2 ** 39
    values = distinct[rng.integers(0, len(distinct), 10_000_000)]
    values[:len(distinct)] = distinct                       # every one of the 1M occurs
    shards = np.array_split(values, 8)
    truth = 1_000_000
    res, stats, net = run_op("distinct", shards, 4, {"approx": True})
    e = res["relative_standard_error"]
    assert res["exact"] is False and e == pytest.approx(1.04 / 64)
    assert abs(res["value"] - truth) <= 3 * e * truth, res
    approx_bytes = _bytes(net)
    assert stats[0]["sketch_bytes"] == 4096
    ex, exstats, exnet = run_op("distinct", shards, 4, {})
    assert ex["value"] == truth
    # each value occurs ~10 times: a 65,536-value sample looks 97% distinct, the sketch sees the repeats,
    # so the exact job deduplicates before it ships (2.7x fewer bytes than raw values)
    assert all(s["combined"] for s in exstats)
    exact_bytes = _bytes(exnet)
    assert approx_bytes < 0.01 * exact_bytes, (approx_bytes, exact_bytes)
    # the estimate of what the exact job would move, reported in stats, is close to what it moved
    assert sum(s["exact_bytes_estimate"] for s in stats) == pytest.approx(exact_bytes, rel=0.1)


def test_the_sketch_is_the_same_whatever_the_worker_count():
    rng = np.random.default_rng(3)
    shards = [rng.integers(-10**6, 10**6, 5000) for _ in range(6)]
    got = {run_op("distinct", shards, w, {"approx": True})[0]["value"] for w in (1, 2, 5, 12)}
    assert len(got) == 1                    # max of registers: grouping does not matter


def test_bytes_per_worker_do_not_grow_with_the_data(monkeypatch):
    small = [np.arange(1000, dtype=np.int64)] * 4
    big = [np.arange(200_000, dtype=np.int64) * 3] * 4
    b = [_bytes(run_op("distinct", s, 4, {"approx": True})[2]) for s in (small, big)]
    assert b[0] == b[1] < 4 * (4096 + 200)


def test_distinct_through_the_cli(tmp_path):
    rng = np.random.default_rng(8)
    parts = [rng.integers(-3000, 3000, 5000) for _ in range(3)] + [np.zeros(0, np.int64)]
    for i, p in enumerate(parts):
        np.save(tmp_path / f"s{i}.npy", p)
    (tmp_path / "t.txt").write_text(f"{I64_MAX}\n{I64_MIN}\n")
    truth = len(set(np.concatenate(parts).tolist())) + 2
    r = cli("submit", "distinct", "--local", "3", "--input", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"] == {"value": truth, "exact": True} and doc["stats"]["distinct_values"] == truth
    r = cli("submit", "distinct", "--local", "3", "--input", str(tmp_path), "--approx", "--json")
    doc = json.loads(r.stdout)
    e = doc["result"]["relative_standard_error"]
    assert doc["result"]["exact"] is False and abs(doc["result"]["value"] - truth) <= 3 * e * truth
    assert doc["stats"]["exact_bytes_estimate"] > 0 and doc["stats"]["sketch_bytes"] == 4096
    human = cli("submit", "distinct", "--local", "2", "--input", str(tmp_path))
    assert human.returncode == 0 and f"distinct: {truth:,} (exact)" in human.stdout
    bad = cli("submit", "distinct", "--local", "2", "--input", str(tmp_path), "--approx", "--precision", "30")
    assert bad.returncode == 2 and "--precision" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
