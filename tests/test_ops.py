"""mode and median over the in-memory transport, against sequential references, on nasty and random data."""
from __future__ import annotations

import statistics
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import nasty_datasets, ref_mode, run_op, split_for
from shardstats.worker.ops.median import median
from shardstats.worker.ops.mode import mode
from shardstats.worker.comm.shuffle import STRATEGIES

NASTY = nasty_datasets()
WORKER_COUNTS = [1, 2, 3, 5, 10, 12]


def _check_mode(shards, workers, strategy="credit", ties="smallest", chunk_bytes=256, combine="auto"):
    allv = np.concatenate(shards)
    value, count, ties_ref = ref_mode(allv)
    limit = 100_000 if ties == "all" else 10
    res, stats, net = run_op(mode, shards, workers, {"shuffle": strategy, "ties": ties, "chunk_bytes": chunk_bytes,
                                                 "combine": combine})
    assert res["value"] == value
    assert res["count"] == count
    assert res["tie_count"] == len(ties_ref)
    assert res["ties"] == ties_ref[:limit]
    assert sum(s["distinct_keys"] for s in stats) == len(set(allv.tolist()))
    return res, stats, net


def _check_median(shards, workers, params=None):
    allv = np.concatenate(shards)
    py = sorted(allv.tolist())
    res, stats, net = run_op(median, shards, workers, params)
    n = len(py)
    lo, hi = py[(n - 1) // 2], py[n // 2]
    assert (res["lower"], res["upper"]) == (lo, hi)
    assert res["value"] == Fraction(lo + hi, 2)            # exact, even at the int64 edges
    assert Fraction(statistics.median(py)) == res["value"] or abs(lo) > 2 ** 52 or abs(hi) > 2 ** 52
    return res, stats


@pytest.mark.parametrize("combine", ["auto", "never"])
@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("name", sorted(NASTY))
def test_mode_on_nasty_datasets(name, workers, combine):
    _check_mode(NASTY[name], workers, combine=combine)


@pytest.mark.parametrize("gather_limit", [None, 2], ids=["gathered at once", "narrowing rounds"])
@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("name", sorted(NASTY))
def test_median_on_nasty_datasets(name, workers, gather_limit):
    res, stats = _check_median(NASTY[name], workers, {"gather_limit": gather_limit} if gather_limit else None)
    if gather_limit is None:           # every nasty dataset is under the default limit: one round, one window
        assert max(s["rounds"] for s in stats) == 1
        assert stats[0]["windows"] == [sum(map(len, NASTY[name]))]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["dup split across shards", "skewed", "int64 extremes", "ties"])
def test_every_shuffle_strategy_gives_the_same_mode(strategy, name):
    _check_mode(NASTY[name], 5, strategy)


def test_ties_all_lists_every_tied_value():
    shards = [np.array([5, 1, 9, 1, 5, 9, 3], np.int64), np.array([-2, -2, 3], np.int64)]
    res, _, _ = _check_mode(shards, 3, ties="all")
    assert res["ties"] == [-2, 1, 3, 5, 9] and res["value"] == -2 and res["count"] == 2


def test_unique_dup_mode_finds_the_one_duplicate_and_moves_singles_as_8_bytes():
    from shardstats.cluster.gen import generate
    shards = generate(20_000, 10, "unique-dup", seed=3)
    res, stats, net = _check_mode(shards, 10, chunk_bytes=1 << 20)
    assert res["count"] == 2 and res["tie_count"] == 1
    # every value is a local single: the shuffle carries 8 bytes per value plus framing, no counts
    moved = sum(sum(c.stats.bytes_sent) for c in net.comms)
    remote = 20_000 * 8 * 9 / 10          # a tenth of the values stay on their own worker
    messages = sum(c.stats.messages_sent for c in net.comms)
    assert moved < remote + 200 * messages   # (value, count) pairs would cost 2 * remote


@pytest.mark.parametrize("even", ["mean", "lower", "upper"])
def test_even_rules(even):
    shards = [np.array([1, 4], np.int64), np.array([2, 10], np.int64)]
    res, _, _ = run_op(median, shards, 2, {"even": even})
    assert res["value"] == {"mean": Fraction(3), "lower": 2, "upper": 4}[even]


def test_mean_of_the_two_middle_values_is_exact_beyond_2_53():
    shards = [np.array([2 ** 62 + 1], np.int64), np.array([2 ** 62 + 2], np.int64)]
    res, _, _ = run_op(median, shards, 2)
    assert res["value"] == Fraction(2 ** 63 + 3, 2)


def test_quantiles_match_numpys_linear_definition_exactly():
    rng = np.random.default_rng(2)
    shards = list(np.array_split(rng.integers(-1000, 1000, 5001), 4))
    allv = np.sort(np.concatenate(shards))
    res, _, _ = run_op(median, shards, 4, {"quantiles": ["0.9", "0.99", "0", "1", "0.333"]})
    for q, got in res["quantiles"].items():
        pos = Fraction(q) * (len(allv) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(allv) - 1)
        want = allv[lo] + (int(allv[hi]) - int(allv[lo])) * (pos - lo)
        assert got["value"] == want
        assert float(got["value"]) == pytest.approx(np.quantile(allv, float(q)))


def test_median_rounds_do_not_grow_with_the_value_range():
    rng = np.random.default_rng(5)
    narrow = list(np.array_split(rng.integers(0, 1000, 200_000), 10))
    wide = list(np.array_split(rng.integers(-(2 ** 62), 2 ** 62, 200_000), 10))
    _, s_narrow = _check_median(narrow, 10)
    _, s_wide = _check_median(wide, 10)
    assert max(s["rounds"] for s in s_wide) <= 3
    assert max(s["rounds"] for s in s_narrow) <= 3


def test_median_moves_little_data():
    rng = np.random.default_rng(6)
    shards = list(np.array_split(rng.integers(-(2 ** 63), 2 ** 63 - 1, 300_000, dtype=np.int64), 10))
    res, stats, net = run_op(median, shards, 10)
    moved = sum(sum(c.stats.bytes_sent) for c in net.comms)
    assert moved < 1_000_000           # vs 2.4 MB of raw data


values = st.integers(-(2 ** 63), 2 ** 63 - 1)
small_values = st.integers(-20, 20)
shard_lists = st.lists(st.lists(st.one_of(values, small_values), max_size=30), min_size=1, max_size=8).filter(
    lambda ss: any(ss))


@settings(max_examples=150, deadline=None)
@given(shard_lists, st.integers(1, 12), st.sampled_from(["always", "never"]))
def test_mode_property(shards, workers, combine):
    _check_mode([np.array(s, dtype=np.int64) for s in shards], workers, combine=combine)


def test_local_counting_is_skipped_for_nearly_unique_data_and_kept_for_repeats():
    from shardstats.cluster.gen import generate
    from shardstats.worker.ops.counting import should_combine
    uniq = generate(400_000, 2, "unique-dup", seed=1)
    zipf = generate(400_000, 2, "zipf", seed=1)
    assert not should_combine(uniq[0]) and should_combine(zipf[0])
    for shards in (uniq, zipf):
        res, stats, _ = _check_mode(shards, 3, chunk_bytes=1 << 16)
        assert [s["combined"] for s in stats] == [should_combine(p) for p in split_for(shards, 3)]


@settings(max_examples=150, deadline=None)
@given(shard_lists, st.integers(1, 12), st.sampled_from([1, 2, 64]), st.sampled_from([1, 3, 1024]))
def test_median_property(shards, workers, samples, first_samples):
    # few samples per rank and a tiny gather limit force several narrowing rounds
    _check_median([np.array(s, dtype=np.int64) for s in shards], workers,
                  {"samples": samples, "gather_limit": 2, "first_samples": first_samples})


def test_empty_dataset_is_an_error_not_none():
    from shardstats.errors import EmptyDataset
    with pytest.raises(ExceptionGroup) as ei:
        run_op(median, [np.zeros(0, np.int64)], 3)
    assert ei.group_contains(EmptyDataset)


@pytest.mark.parametrize("workers", [1, 3, 10])
def test_a_median_on_a_long_run_of_equal_values_is_settled_in_the_bracketing_round(workers):
    """Zipf-like data: the median's value is a run of 8% of the values. The bracketing round's pivots
    include the value the sample's estimate lands on when the sample repeats it, so the target is found in
    that round, not narrowed to the run and settled in a second (10M Zipf values: 2 rounds -> 1)."""
    rng = np.random.default_rng(workers)
    values = np.concatenate([rng.integers(-1000, 0, 46_000), np.full(8_000, 6), rng.integers(7, 5000, 46_000)])
    rng.shuffle(values)
    shards = list(np.array_split(values.astype(np.int64), 7))
    res, stats = _check_median(shards, workers, {"gather_limit": 64, "quantiles": ["0.47", "0.5"]})
    assert res["value"] == 6 and max(s["rounds"] for s in stats) == 1
    # nearly-unique data gets no extra pivot: the sample holds no repeated value to put one on
    uniq = [rng.permutation(100_000)[:50_000].astype(np.int64)]
    _, stats = _check_median(uniq, workers, {"gather_limit": 64})
    assert max(s["rounds"] for s in stats) >= 2
