"""Adaptive counting: every strategy counts exactly like collections.Counter, and mode is exact under each."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardstats.worker.ops.counting import choose_counting, count_values, repeat_share, sum_counts
from shardstats.worker.ops.mode import mode
from tests.conftest import I64_MAX, I64_MIN, nasty_datasets, ref_mode, run_op

NASTY = nasty_datasets()
STRATEGIES = ["auto", "sort", "dense", "hash"]
I64 = st.integers(I64_MIN, I64_MAX)


def _ref(values) -> tuple[list[int], list[int]]:
    c = Counter(np.asarray(values).tolist())
    keys = sorted(c)
    return keys, [c[k] for k in keys]


@pytest.mark.parametrize("counting", STRATEGIES)
@pytest.mark.parametrize("name", sorted(NASTY))
def test_count_values_equals_counter(name, counting):
    values = np.concatenate(NASTY[name])
    v, c, used = count_values(values.copy(), counting)
    assert (v.tolist(), c.tolist()) == _ref(values)
    assert v.dtype == np.int64 and c.dtype == np.int64
    assert used in ("sort", "dense", "hash")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(I64, st.integers(-40, 40)), max_size=300), st.sampled_from(STRATEGIES), st.booleans())
def test_count_and_sum_any_data(values, counting, readonly):
    a = np.array(values, dtype=np.int64)
    if readonly:
        a.flags.writeable = False      # a zero-copy view of the .txt fast path's buffer
    v, c, _ = count_values(a, counting)
    assert (v.tolist(), c.tolist()) == _ref(values)
    weights = np.arange(1, len(a) + 1, dtype=np.int64)
    sv, sc, _ = sum_counts(np.array(values, dtype=np.int64), weights, counting)
    ref = Counter()
    for x, w in zip(values, weights.tolist()):
        ref[x] += w
    assert sv.tolist() == sorted(ref) and sc.tolist() == [ref[k] for k in sorted(ref)]


def _exact_choice(values: np.ndarray) -> str:
    if len(values) < 2:
        return "sort"
    span = int(values.max()) - int(values.min())
    return "dense" if span < max(4096, len(values) // 8) else "sort"


@settings(max_examples=200, deadline=None)
@given(st.integers(4097, 60_000), st.integers(0, 20_000), st.lists(st.tuples(st.integers(0, 10 ** 9), I64),
                                                                     max_size=3))
def test_the_span_probe_never_changes_the_choice(n, width, outliers):
    """The evenly spaced probe only ever answers ``sort`` when the exact passes would: outliers anywhere,
    on a probed position or between them, still decide ``dense`` vs ``sort`` exactly as min/max do."""
    a = np.random.default_rng(n).integers(0, width + 1, n)
    for pos, v in outliers:
        a[pos % n] = v
    assert choose_counting(a) == _exact_choice(a)


def test_the_choice_follows_the_span():
    rng = np.random.default_rng(2)
    assert choose_counting(rng.integers(0, 1000, 100_000)) == "dense"            # span n/100
    assert choose_counting(rng.integers(0, 10 ** 6, 100_000)) == "sort"          # span 10n
    assert choose_counting(np.array([I64_MIN, I64_MAX] * 10_000)) == "sort"      # two values, the widest span
    assert choose_counting(rng.zipf(1.3, 100_000)) == "sort"                     # a long tail
    # forced dense on a span no bins could hold counts by sorting, and says so
    assert count_values(np.array([I64_MIN, I64_MAX, I64_MAX]), "dense")[2] == "sort"


@pytest.mark.parametrize("counting", STRATEGIES)
@pytest.mark.parametrize("name", sorted(NASTY))
@pytest.mark.parametrize("workers", [1, 3, 12])
def test_mode_is_exact_under_every_counting(name, counting, workers):
    shards = NASTY[name]
    allv = np.concatenate(shards)
    value, count, ties = ref_mode(allv)
    res, stats, _ = run_op(mode, shards, workers, {"counting": counting, "chunk_bytes": 256, "ties": "all"})
    assert (res["value"], res["count"], res["ties"], res["tie_count"]) == (value, count, ties, len(ties))
    assert sum(s["distinct_keys"] for s in stats) == len(set(allv.tolist()))
    for s in stats:
        assert s["counting"]["local"] in ("sort", "dense", "hash", "none")
        assert s["counting"]["merge"] in ("sort", "dense")


@settings(max_examples=120, deadline=None)
@given(st.lists(st.lists(st.one_of(I64, st.integers(-5, 5)), max_size=40), min_size=1, max_size=6).filter(any),
       st.integers(1, 8), st.sampled_from(STRATEGIES))
def test_mode_property_every_counting(shards, workers, counting):
    arrays = [np.array(s, dtype=np.int64) for s in shards]
    value, count, ties = ref_mode(np.concatenate(arrays))
    res, _, _ = run_op(mode, arrays, workers, {"counting": counting, "chunk_bytes": 128, "ties": "all"})
    assert (res["value"], res["count"], res["ties"]) == (value, count, ties)


def test_dense_data_is_counted_dense_on_both_sides_and_reported():
    rng = np.random.default_rng(5)
    shards = [rng.integers(-300, 300, 20_000) for _ in range(4)]
    res, stats, _ = run_op(mode, shards, 3, {"chunk_bytes": 1 << 14})
    value, count, _ = ref_mode(np.concatenate(shards))
    assert (res["value"], res["count"]) == (value, count)
    assert all(s["counting"] == {"local": "dense", "merge": "dense"} for s in stats)


def test_bad_counting_is_refused_naming_the_option():
    from shardstats.errors import UsageError
    with pytest.raises(UsageError, match="--counting"):
        run_op(mode, [np.arange(5)], 2, {"counting": "magic"})


def test_the_repeat_share_is_estimated_from_every_copy_of_the_picked_values():
    """Against the exact share (1 - distinct / n) on data a random sample of positions misjudges
    (each value 10 times, spread out), on structured data (multiples of 64, a run of integers)
    where a hash of poor bits would pick all or nothing, and on the usual shapes."""
    rng = np.random.default_rng(5)
    n = 640_000
    tenfold = rng.integers(-2 ** 62, 2 ** 62, n // 10).repeat(10)
    rng.shuffle(tenfold)
    cases = {
        "ten copies each": tenfold,
        "all distinct": rng.permutation(np.arange(n, dtype=np.int64) * 7919 - 10 ** 9),
        "multiples of 64": rng.integers(0, n, n) * 64,
        "a run of integers": np.arange(n, dtype=np.int64),
        "zipf": rng.zipf(1.3, n).astype(np.int64),
        "int64 extremes": rng.choice(np.array([I64_MIN, I64_MAX, 0, -1]), n),
        "unique-dup": rng.integers(0, 4 * n, n),
    }
    for name, values in cases.items():
        exact = 1 - len(np.unique(values)) / len(values)
        got = repeat_share(values)
        assert (got >= 0.1) == (exact >= 0.1), name          # the decision it serves: dedup at 10% repeats
        if name not in ("zipf", "int64 extremes"):           # a few heavy values: picked or not, all or nothing
            assert got == pytest.approx(exact, abs=0.05), name
    assert repeat_share(np.zeros(0, dtype=np.int64)) == 0.0
