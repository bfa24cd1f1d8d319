"""groupby's approximate aggregates (approx_median, approx_quantile, approx_distinct, approx_top) against pandas-free
references per group: each estimate within the bound its ``_err`` column states; nulls, empty groups, keys split
across ranks, the combiner's path and the rows' path (a combiner skipped, a job mixing exact medians)."""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pytest

from tests.test_sketch_kinds import run_tables

pytestmark = pytest.mark.timeout(120)
AGGS = ["approx_median(v)", "approx_quantile(v, 0.9)", "approx_distinct(s)", "approx_top(s, 3)", "approx_top(i, 2)",
        "n=count()"]


def _table(seed: int, n: int, groups: int):
    rng = np.random.default_rng(seed)
    k = rng.integers(0, groups, n)
    v = rng.normal(0, 1e3, n)
    v[rng.random(n) < 0.05] = np.nan
    vv = pa.array(v, mask=rng.random(n) < 0.05)
    s = pa.array([f"w{x}" for x in np.minimum(rng.zipf(1.4, n), 10 ** 6)], mask=rng.random(n) < 0.03)
    i = rng.integers(-(1 << 62), 1 << 62, n)
    i[: n // 2] = rng.integers(0, 20, n // 2)
    keys = pa.array([f"g{x}" for x in k], mask=k == 0)            # group 0 is the NULL key
    return pa.table({"k": keys, "v": vv, "s": s, "i": i})


def _reference(t) -> dict:
    per: dict = defaultdict(lambda: {"v": [], "s": [], "i": []})
    for k, v, s, i in zip(*(t.column(c).to_pylist() for c in ("k", "v", "s", "i"))):
        g = per[k]
        if v is not None and v == v:
            g["v"].append(v)
        if s is not None:
            g["s"].append(s)
        g["i"].append(i)
    return per


def _rank_error(values: list, rank: float, answer: float) -> float:
    s = np.sort(np.asarray(values, np.float64))
    lo, hi = np.searchsorted(s, answer, "left") / len(s), np.searchsorted(s, answer, "right") / len(s)
    return 0.0 if lo <= rank <= hi else min(abs(rank - lo), abs(rank - hi))


def _check(res: dict, t) -> None:
    ref = _reference(t)
    cols = res["columns"]
    rows = [dict(zip(cols, r)) for r in res["data"]]
    assert len(rows) == len(ref)
    for row in rows:
        g = ref[row["k"]]
        assert row["n"] == len(g["i"])
        if g["v"]:
            assert _rank_error(g["v"], 0.5, row["approx_median_v"]) <= row["approx_median_v_err"] + 1e-12
            assert _rank_error(g["v"], 0.9, row["approx_quantile_v_0.9"]) <= row["approx_quantile_v_0.9_err"] + 1e-12
        else:
            assert row["approx_median_v"] is None
        d = len(set(g["s"]))
        assert abs(row["approx_distinct_s"] - d) <= 4 * row["approx_distinct_s_err"] * d + 1
        for col, vals in (("approx_top_s", g["s"]), ("approx_top_i", g["i"])):
            counts, err = Counter(vals), row[f"{col}_err"]
            for item in row[col]:
                assert item["count"] - err <= counts[item["value"]] <= item["count"], (col, item, err)
            big = [x for x, c in counts.items() if c > err]
            if len(big) <= len(row[col]):
                assert set(big) <= {item["value"] for item in row[col]}


@pytest.mark.parametrize("seed,n,groups,workers", [(1, 20_000, 7, 3), (2, 3_000, 300, 1), (2, 3_000, 300, 3),
                                                   (3, 50, 60, 2)])
def test_approx_aggregates_within_their_bounds(seed, n, groups, workers):
    t = _table(seed, n, groups)
    cuts = np.linspace(0, n, workers + 1).astype(int)
    parts = [t.slice(a, b - a) for a, b in zip(cuts, cuts[1:])]
    res = run_tables("groupby", parts, {"by": "k", "agg": AGGS, "limit": 0})
    _check(res, t)


def test_rows_path_when_a_job_mixes_exact_medians():
    t = _table(4, 5_000, 20)
    parts = [t.slice(0, 2000), t.slice(2000)]
    res = run_tables("groupby", parts, {"by": "k", "agg": AGGS + ["median(v)"], "limit": 0})
    _check(res, t)
    cols = res["columns"]
    for r in res["data"]:
        row = dict(zip(cols, r))
        assert (row["median_v"] is None) == (row["approx_median_v"] is None)


def test_rows_path_when_the_combiner_is_skipped(monkeypatch):
    from shardstats.worker.ops import groupby
    monkeypatch.setattr(groupby, "PROBE_ROWS", 100)          # every key nearly unique in the first rows: skip
    t = _table(5, 4_000, 3_500)
    res = run_tables("groupby", [t.slice(0, 1500), t.slice(1500)], {"by": "k", "agg": AGGS, "limit": 0})
    _check(res, t)


def test_bad_approx_aggregates_are_usage_errors():
    from shardstats.errors import UsageError
    from shardstats.worker.ops import registry
    params = registry.get("groupby").params
    with pytest.raises(UsageError, match="between 0 and 1"):
        params.build(by="k", agg=("approx_quantile(v, 1.5)",))
    with pytest.raises(UsageError, match="k must be"):
        params.build(by="k", agg=("approx_top(s, 0)",))
    t = pa.table({"k": ["a"], "s": ["x"], "d": pa.array([1], pa.date32())})
    with pytest.raises(ExceptionGroup) as got:
        run_tables("groupby", [t], {"by": "k", "agg": ["approx_median(s)"]})
    assert "needs numbers" in str(got.value.exceptions[0])
    with pytest.raises(ExceptionGroup) as got:
        run_tables("groupby", [t], {"by": "k", "agg": ["approx_top(d, 2)"]})
    assert "approx_top takes" in str(got.value.exceptions[0])


def test_a_key_sketched_on_one_rank_and_kept_whole_on_another():
    """A group's states of both forms (a KLL sketch where the rank had many values, the values where it had few)
    merge into one answer within the sketch's bound."""
    rng = np.random.default_rng(9)
    big = pa.table({"k": ["a"] * 5000 + ["b"] * 3, "v": rng.normal(size=5003), "s": ["x"] * 5003,
                    "i": np.arange(5003)})
    small = pa.table({"k": ["a"] * 10 + ["b"] * 2, "v": rng.normal(50, 1, 12), "s": ["y"] * 12, "i": np.arange(12)})
    res = run_tables("groupby", [big, small, small.slice(0, 0)], {"by": "k", "agg": AGGS, "limit": 0})
    _check(res, pa.concat_tables([big, small]))
    row = dict(zip(res["columns"], res["data"][0]))
    assert row["k"] == "a" and row["approx_median_v_err"] > 0
    assert dict(zip(res["columns"], res["data"][1]))["approx_median_v_err"] == 0


def test_approx_top_of_a_dictionary_encoded_text_column():
    """Parquet's text columns are read dictionary-encoded: approx_top refused them ("holds text (string);
    approx_top takes integers, floats or strings")."""
    words = ["", "é", "日本", "x", "x", "x", "é"] * 300
    keys = ["a", "b", "c"] * 700
    t = pa.table({"k": keys, "s": pa.array(words).dictionary_encode()})
    res = run_tables("groupby", [t.slice(0, 1000), t.slice(1000)], {"by": "k", "agg": ["approx_top(s, 2)"],
                                                                    "limit": 0})
    cols = res["columns"]
    for r in res["data"]:
        row = dict(zip(cols, r))
        counts = Counter(w for w, k in zip(words, keys) if k == row["k"])
        err = row["approx_top_s_err"]
        assert [it["value"] for it in row["approx_top_s"]] == [w for w, _ in counts.most_common(2)]
        for it in row["approx_top_s"]:
            assert it["count"] - err <= counts[it["value"]] <= it["count"]
