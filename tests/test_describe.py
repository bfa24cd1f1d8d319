"""describe against the separate references (Counter, len(set()), exact Fractions, numpy quantiles) and the separate ops."""
from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import I64_MAX, I64_MIN, cli, nasty_datasets, ref_mode, run_op
from tests.test_stats import reference as ref_stats
from tests.test_topk import reference as ref_topk

NASTY = nasty_datasets()
WORKER_COUNTS = [1, 2, 3, 5, 10, 12]


def ref_quantile(sorted_values: list[int], q: str) -> Fraction:
    pos = Fraction(q) * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def check(shards, workers, quantiles=("0.25", "0.5", "0.75"), k=5, ddof=0):
    allv = np.concatenate(shards)
    py = sorted(allv.tolist())
    res, stats, net = run_op("describe", shards, workers, {"quantiles": list(quantiles), "k": k, "ddof": ddof})
    s = ref_stats(py, ddof)
    for key in ("count", "sum", "min", "max", "mean", "mean_exact"):
        assert res["stats"][key] == s[key], key
    if s["variance"] is None:
        assert res["stats"]["std"] is None
    else:
        assert res["stats"]["variance"] == pytest.approx(s["variance"], rel=1e-12)
    assert res["distinct"] == {"value": len(set(py)), "exact": True}
    value, count, ties = ref_mode(allv)
    assert res["mode"] == {"value": value, "count": count, "ties": ties[:10], "tie_count": len(ties)}
    n = len(py)
    lo, hi = py[(n - 1) // 2], py[n // 2]
    assert (res["median"]["lower"], res["median"]["upper"], res["median"]["n"]) == (lo, hi, n)
    assert res["median"]["value"] == Fraction(lo + hi, 2)
    for q in quantiles:
        assert res["median"]["quantiles"][q]["value"] == ref_quantile(py, q), q
        if abs(py[0]) < 2 ** 52 and abs(py[-1]) < 2 ** 52:
            assert float(res["median"]["quantiles"][q]["value"]) == pytest.approx(float(np.quantile(allv, float(q))))
    assert res["topk"] == ref_topk(allv, k)
    depth = max(0, (workers - 1).bit_length())
    assert all(c.stats.tree_messages_received <= depth and c.stats.max_inbound_streams <= 1 for c in net.comms)
    return res, stats, net


@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("name", sorted(NASTY))
def test_describe_on_nasty_datasets(name, workers):
    check(NASTY[name], workers)


def test_describe_answers_exactly_what_each_op_answers_alone():
    rng = np.random.default_rng(2)
    shards = [rng.zipf(1.4, 3000).astype(np.int64) for _ in range(5)] + [np.array([I64_MIN, I64_MAX], np.int64)]
    res, _, _ = check(shards, 4, quantiles=("0.1", "0.9"), k=12, ddof=1)
    assert res["stats"] == run_op("stats", shards, 4, {"ddof": 1})[0]
    assert res["distinct"] == run_op("distinct", shards, 4, {})[0]
    assert res["mode"] == run_op("mode", shards, 4, {})[0]
    assert res["median"] == run_op("median", shards, 4, {"quantiles": ["0.1", "0.9"]})[0]
    assert res["topk"] == run_op("topk", shards, 4, {"k": 12})[0]


def test_mode_ties_beyond_the_list_are_counted():
    # 30 values tie for the mode, spread over every owner; k = 2 lists 2 of them, the mode lists 10
    tied = np.arange(30, dtype=np.int64) * 1_000_003
    res, _, _ = check([tied, tied[::-1], np.array([5], np.int64)], 6, k=2)
    assert res["mode"]["tie_count"] == 30 and res["topk"]["boundary_ties"] == 30


def test_describe_moves_less_than_the_separate_jobs():
    from shardstats.cluster.gen import generate
    parts = generate(300_000, 8, "zipf", seed=4)

    def moved(op, params):
        return sum(sum(c.stats.bytes_sent) for c in run_op(op, parts, 5, params)[2].comms)

    one = moved("describe", {})
    separate = (moved("stats", {}) + moved("distinct", {}) + moved("mode", {})
                + moved("median", {"quantiles": ["0.25", "0.5", "0.75"]}) + moved("topk", {"k": 5, "strategy": "shuffle"}))
    assert one < 0.5 * separate, (one, separate)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-4, 4) | st.integers(I64_MIN, I64_MAX), max_size=30), min_size=1,
                max_size=7).filter(any), st.integers(1, 12), st.integers(1, 6))
def test_describe_property(shards, workers, k):
    check([np.array(s, dtype=np.int64) for s in shards], workers, quantiles=("0", "0.3", "1"), k=k)


def test_describe_through_the_cli(tmp_path):
    rng = np.random.default_rng(6)
    parts = [rng.integers(-40, 40, 2000) for _ in range(3)] + [np.zeros(0, np.int64)]
    for i, p in enumerate(parts):
        np.save(tmp_path / f"s{i}.npy", p)
    allv = np.concatenate(parts)
    r = cli("submit", "describe", "--local", "3", "--input", str(tmp_path), "--k", "3", "--quantiles", "0.1,0.9",
            "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["result"]) == {"stats", "distinct", "mode", "median", "topk"}
    assert doc["result"]["topk"] == ref_topk(allv, 3)
    assert doc["result"]["distinct"] == {"value": len(set(allv.tolist())), "exact": True}
    assert doc["result"]["mode"]["count"] == Counter(allv.tolist()).most_common(1)[0][1]
    assert set(doc["result"]["median"]["quantiles"]) == {"0.1", "0.9"}
    assert doc["result"]["median"]["quantiles"]["0.9"]["value"] == pytest.approx(float(np.quantile(allv, 0.9)))
    human = cli("submit", "describe", "--local", "2", "--input", str(tmp_path))
    assert human.returncode == 0, human.stderr
    table = human.stdout.splitlines()
    for label in ("count", "sum", "min", "max", "mean", "std", "distinct", "mode", "median", "q0.25", "top 5"):
        assert any(line.split("  ")[0].strip() == label for line in table), (label, human.stdout)
    from shardstats import Cluster
    with Cluster.local(2) as c:
        r = c.describe(tmp_path, k=3)
        assert (r.count, r.distinct, r.items) == (len(allv), len(set(allv.tolist())), ref_topk(allv, 3)["items"])
        assert r.median == Fraction(sorted(allv.tolist())[(len(allv) - 1) // 2] + sorted(allv.tolist())[len(allv) // 2], 2)
        assert r.result["median"]["quantiles"]["0.75"]["value"] == ref_quantile(sorted(allv.tolist()), "0.75")
    for bad in (["--k", "0"], ["--quantiles", "1.5"], ["--ddof", "3"]):
        r = cli("submit", "describe", "--local", "2", "--input", str(tmp_path), *bad)
        assert r.returncode == 2 and bad[0] in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
