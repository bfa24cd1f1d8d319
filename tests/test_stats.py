"""The stats op (count, sum, min, max, mean, variance, std) against exact sequential references.

The reference is plain Python: ``sum`` of ints and ``Fraction`` arithmetic, then
one rounding -- and ``statistics``/numpy where floats can represent the data.
"""
from __future__ import annotations

import json
import math
import statistics
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardstats.worker.ops.stats import power_sums, stats
from tests.conftest import I64_MAX, I64_MIN, cli, nasty_datasets, run_op

NASTY = nasty_datasets()
WORKER_COUNTS = [1, 2, 3, 5, 10, 12]


def reference(values: list[int], ddof: int) -> dict:
    n = len(values)
    s1 = sum(values)
    mean = Fraction(s1, n)
    m2 = sum((Fraction(v) - mean) ** 2 for v in values)
    var = m2 / (n - ddof) if n > ddof else None
    return {"count": n, "sum": s1, "min": min(values), "max": max(values), "mean": float(mean),
            "mean_exact": f"{mean.numerator}/{mean.denominator}", "variance": None if var is None else float(var)}


def check(shards: list[np.ndarray], workers: int, ddof: int = 0) -> dict:
    allv = np.concatenate(shards).tolist()
    res, st_, _ = run_op(stats, shards, workers, {"ddof": ddof})
    ref = reference(allv, ddof)
    for key in ("count", "sum", "min", "max", "mean", "mean_exact"):
        assert res[key] == ref[key], key
    if ref["variance"] is None:
        assert res["variance"] is None and res["std"] is None
    else:
        assert res["variance"] == pytest.approx(ref["variance"], rel=1e-12, abs=0)
        assert res["std"] == pytest.approx(math.sqrt(ref["variance"]), rel=1e-12, abs=0)
    assert all(s["rounds"] == max(0, (workers - 1).bit_length()) for s in st_)
    return res


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("name", sorted(NASTY))
def test_stats_on_nasty_datasets(name, workers, ddof):
    check(NASTY[name], workers, ddof)


def test_matches_statistics_and_numpy_where_floats_are_exact():
    rng = np.random.default_rng(3)
    shards = [rng.integers(-10**6, 10**6, n) for n in (1000, 0, 17, 5000)]
    allv = np.concatenate(shards)
    for ddof, ref_var in ((0, statistics.pvariance), (1, statistics.variance)):
        res = check(shards, 4, ddof)
        assert res["variance"] == pytest.approx(float(ref_var(allv.tolist())), rel=1e-12)
        assert res["variance"] == pytest.approx(float(np.var(allv, ddof=ddof)), rel=1e-12)
        assert res["mean"] == pytest.approx(float(np.mean(allv)), rel=1e-15)


def test_values_near_2_62_keep_their_spread():
    # float64 cannot tell 2**62 from 2**62 + 1: a float recurrence would say variance 0
    base = 2 ** 62
    res = check([np.array([base, base + 1], np.int64), np.array([base + 2], np.int64)], 2)
    assert res["variance"] == pytest.approx(2 / 3, rel=1e-12)


def test_a_sum_beyond_int64_is_exact():
    near = np.full(1000, 2 ** 62 + 12345, np.int64)
    res = check([near, near, near[:1]], 3)
    assert res["sum"] == 2001 * (2 ** 62 + 12345) and res["sum"] > I64_MAX


def test_extremes_only():
    res = check([np.array([I64_MIN, I64_MAX], np.int64), np.array([I64_MIN], np.int64)], 2)
    assert res["sum"] == 2 * I64_MIN + I64_MAX


def test_one_value_sample_variance_is_undefined_not_zero():
    res = check([np.array([7], np.int64)], 1, ddof=1)
    assert res["variance"] is None and res["count"] == 1


def test_power_sums_are_exact_across_blocks(monkeypatch):
    import shardstats.worker.ops.stats as mod
    monkeypatch.setattr(mod, "BLOCK", 7)          # many blocks, some partial
    v = np.array([I64_MIN, -1, 0, 1, I64_MAX, 2 ** 40 + 3, -(2 ** 50)] * 5, np.int64)
    got = power_sums(v)
    assert got["s1"] == sum(v.tolist()) and got["s2"] == sum(x * x for x in v.tolist())


shard_lists = st.lists(st.lists(st.integers(I64_MIN, I64_MAX), max_size=40), min_size=1, max_size=8).filter(
    lambda s: any(s))


@settings(max_examples=120, deadline=None)
@given(shard_lists, st.integers(1, 12), st.sampled_from([0, 1]))
def test_stats_property(shards, workers, ddof):
    check([np.array(s, dtype=np.int64) for s in shards], workers, ddof)


def test_stats_through_the_cli_and_the_api(tmp_path):
    rng = np.random.default_rng(5)
    parts = [rng.integers(-(2 ** 62), 2 ** 62, 3000) for _ in range(4)] + [np.zeros(0, np.int64)]
    for i, p in enumerate(parts):
        np.save(tmp_path / f"s{i}.npy", p)
    (tmp_path / "t.txt").write_text("5\n-3\n")
    allv = np.concatenate(parts).tolist() + [5, -3]
    r = cli("submit", "stats", "--local", "3", "--input", str(tmp_path), "--ddof", "1", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    ref = reference(allv, 1)
    assert doc["op"] == "stats"
    for key in ("count", "sum", "min", "max", "mean", "mean_exact"):
        assert doc["result"][key] == ref[key]
    assert doc["result"]["variance"] == pytest.approx(ref["variance"], rel=1e-12)
    assert doc["stats"]["rounds"] == 2 and doc["stats"]["workers"] == 3
    human = cli("submit", "stats", "--local", "2", "--input", str(tmp_path))
    assert human.returncode == 0 and f"count {len(allv):,}" in human.stdout and "sample" not in human.stdout
    bad = cli("submit", "stats", "--local", "2", "--input", str(tmp_path), "--ddof", "2")
    assert bad.returncode == 2 and "--ddof" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    from shardstats import Cluster
    with Cluster.local(2) as c:
        s = c.stats(tmp_path)
        assert (s.count, s.sum, s.min, s.max) == (ref["count"], ref["sum"], ref["min"], ref["max"])
        assert s.variance == pytest.approx(float(statistics.pvariance(allv)), rel=1e-12)
        assert c.submit("stats", tmp_path, ddof=1).variance == pytest.approx(ref["variance"], rel=1e-12)
