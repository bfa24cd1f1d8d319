"""groupby's approx_median / approx_quantile of int64 columns beyond +-2**53, and approx_top of floats with NaN, against
DuckDB's exact per-group ranks in int64 order.

The state SQL cast int64 values to DOUBLE: a group of ``INT64_MAX - randint(0, 5000)`` got a median whose rank error
in int64 order was 8.9% against a stated 1.3% bound.  Now each group is sketched less its own offset, exactly when its
values lie within 2**53 of one another; a group spread wider is sketched rounded and its ``_err`` widened by the ties.
Each test fails on the old code."""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from shardstats.testing import run_on_ranks

pytestmark = pytest.mark.timeout(120)
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
QS = {"approx_median_v": 0.5, "approx_quantile_v_0.9": 0.9, "approx_quantile_v_0": 0.0, "approx_quantile_v_1": 1.0}
AGGS = ["approx_median(v)", "approx_quantile(v, 0.9)", "approx_quantile(v, 0)", "approx_quantile(v, 1)", "n=count()"]


def _groups(spec: dict, seed: int):
    """A table of (k, v) from {key: int64 array}, rows shuffled so every rank holds part of every key."""
    keys = np.concatenate([np.full(len(v), k, object) for k, v in spec.items()])
    vals = np.concatenate([np.asarray(v, np.int64) for v in spec.values()])
    order = np.random.default_rng(seed).permutation(len(vals))
    return pa.table({"k": pa.array(keys[order], pa.string()), "v": pa.array(vals[order], pa.int64())})


def _run(t, shards: int, workers: int, aggs=AGGS, **params):
    """The job on ``workers`` ranks of which only the first ``shards`` hold rows (one of them empty when asked by
    ``shards`` < 0: its absolute value of shards, the middle one empty)."""
    cuts = np.linspace(0, t.num_rows, abs(shards) + 1).astype(int)
    parts = [t.slice(a, b - a) for a, b in zip(cuts, cuts[1:])]
    if shards < 0:
        parts.insert(len(parts) // 2, t.slice(0, 0))
    parts += [t.slice(0, 0)] * (workers - len(parts))
    ranks, _ = run_on_ranks("groupby", parts, {"by": "k", "agg": aggs, "limit": 0, **params}, timeout=60)
    (res, _), stats = ranks[0], [s for _, s in ranks]
    return [dict(zip(res["columns"], r)) for r in res["data"]], stats


def _ranks(t, rows: list[dict], col: str) -> dict:
    """DuckDB's exact rank interval, in int64 order, of each group's answer ``col``: {key: (below, at, n, held)}."""
    ans = pa.table({"k": [r["k"] for r in rows], "x": pa.array([_int(r[col]) for r in rows], pa.int64())})
    got = duckdb.sql("SELECT t.k, count_if(v < x), count_if(v <= x), count(v), count_if(v = x) "
                     "FROM t JOIN ans USING (k) GROUP BY t.k").fetchall()
    return {k: (b, a, n, h) for k, b, a, n, h in got}


def _int(x) -> int:
    """An answer as an int64 (the old code answered doubles: 2**63 read back as INT64_MAX)."""
    return min(max(int(x), I64_MIN), I64_MAX)


def _check(t, rows: list[dict], exact_values: bool) -> None:
    """Every answer an int64 within its ``_err`` of the rank asked, in int64 order (and, when the sketch held the
    values exactly, a value of its group)."""
    assert len(rows) == len(set(t.column("k").to_pylist()))
    for col, r in QS.items():
        ranks = _ranks(t, rows, col)
        for row in rows:
            x, err = row[col], row[col + "_err"]
            below, at, n, held = ranks[row["k"]]
            lo, hi = below / n, at / n
            miss = 0.0 if lo <= r <= hi else min(abs(r - lo), abs(r - hi))
            assert miss <= err + 1e-12, (row["k"], col, x, miss, err)
            assert isinstance(x, int) and I64_MIN <= x <= I64_MAX, (row["k"], col, x)
            if exact_values:
                assert held > 0, (row["k"], col, x)


def _near(center: int, spread: int, n: int, rng) -> np.ndarray:
    """``n`` int64 values in [center - spread, center + spread] clipped into int64 (exactly, in Python ints)."""
    lo, hi = max(I64_MIN, center - spread), min(I64_MAX, center + spread)
    return rng.integers(lo, hi, n, endpoint=True, dtype=np.int64)


@pytest.mark.parametrize("center,spread", [(I64_MAX, 5000), (I64_MIN, 5000), (-(1 << 62), 1 << 40),
                                           ((1 << 62) + (1 << 52), (1 << 52) - 1)])
def test_a_cluster_beyond_2_53_is_ranked_within_the_stated_bound(center, spread):
    """One place in int64 (the column within 2**53 of itself): every group exact in int64 order within the KLL
    bound, answers values of their group; shards with an empty one and more workers than shards."""
    rng = np.random.default_rng(abs(center) % 1000 + 7)
    t = _groups({"big": _near(center, spread, 30_000, rng), "mid": _near(center, spread // 3, 9_000, rng),
                 "few": _near(center, spread, 40, rng), "one": _near(center, 0, 1, rng)}, 1)
    rows, stats = _run(t, -3, 6)
    _check(t, rows, exact_values=True)
    big = next(r for r in rows if r["k"] == "big")
    assert 0 < big["approx_median_v_err"] < 0.02
    assert not any("approx_rounded_groups" in s for s in stats)


def test_int64_min_and_max_in_one_job_each_group_exact():
    """Groups near INT64_MIN, INT64_MAX, negatives and small values in one job (the column spreads over 2**64):
    each group is sketched less its own offset, so each is exact in int64 order within the plain KLL bound,
    and its answers are its values (the extremes themselves included)."""
    rng = np.random.default_rng(5)
    t = _groups({"max": I64_MAX - rng.integers(0, 5000, 30_000), "min": I64_MIN + rng.integers(0, 5000, 30_000),
                 "neg": rng.integers(-10 ** 6, 0, 20_000), "small": rng.integers(-50, 50, 3_000),
                 "edge": np.array([I64_MIN, I64_MAX, I64_MIN, I64_MAX, 0])}, 2)
    rows, stats = _run(t, 3, 5)
    _check(t, rows, exact_values=True)
    by = {r["k"]: r for r in rows}
    assert all(by[k]["approx_median_v_err"] < 0.02 for k in ("max", "min", "neg", "small"))
    assert by["edge"]["approx_quantile_v_0"] == I64_MIN and by["edge"]["approx_quantile_v_1"] == I64_MAX
    assert not any("approx_rounded_groups" in s for s in stats)


def test_ranks_of_one_group_that_chose_other_offsets_merge_exactly():
    """Shards cut by value: one rank holds a group's values below 2**62 (offset 2**62 - 2**52 on the grid),
    another those above (offset 2**62), a third the values near INT64_MAX: the states are moved to one offset
    before they merge, exactly."""
    rng = np.random.default_rng(6)
    below, above = (1 << 62) - rng.integers(1, 10 ** 6, 20_000), (1 << 62) + rng.integers(0, 10 ** 6, 20_000)
    top = I64_MAX - rng.integers(0, 10 ** 12, 20_000)
    parts = [pa.table({"k": ["a"] * 20_000, "v": below}), pa.table({"k": ["a"] * 20_000, "v": above}),
             pa.table({"k": ["a"] * 10_000 + ["b"] * 10_000, "v": np.concatenate([above[:10_000], top[:10_000]])}),
             pa.table({"k": ["b"] * 10_000 + ["a"] * 30, "v": np.concatenate([top[10_000:], below[:30]])})]
    ranks, _ = run_on_ranks("groupby", parts, {"by": "k", "agg": AGGS, "limit": 0}, timeout=60)
    res = ranks[0][0]
    rows = [dict(zip(res["columns"], r)) for r in res["data"]]
    t = pa.concat_tables(parts)
    _check(t, rows, exact_values=True)
    assert all(r["approx_median_v_err"] < 0.02 for r in rows)


def test_a_group_spread_wider_than_2_53_beyond_it_states_a_widened_bound():
    """A group of values both near INT64_MIN and near INT64_MAX, clustered (many values round to one double): no
    offset makes it exact, so it is sketched rounded; its _err is widened by the ties and holds in int64 order,
    and the job's stats count the group.  The group near zero in the same job keeps the plain bound."""
    rng = np.random.default_rng(7)
    wide = np.concatenate([I64_MAX - rng.integers(0, 5000, 30_000), I64_MIN + rng.integers(0, 5000, 10_000)])
    t = _groups({"wide": wide, "zero": rng.integers(-1000, 1000, 20_000)}, 4)
    rows, stats = _run(t, 3, 4)
    _check(t, rows, exact_values=False)
    by = {r["k"]: r for r in rows}
    assert by["wide"]["approx_median_v_err"] > 0.05 and by["zero"]["approx_median_v_err"] < 0.02
    assert sum(s.get("approx_rounded_groups", {}).get("approx_median_v", 0) for s in stats) == 1


def test_uint64_beyond_2_63():
    """uint64 values near 2**64 (past int64): answered exactly in uint64, within the bound in their own order."""
    rng = np.random.default_rng(12)
    v = (np.uint64(2 ** 64 - 1) - rng.integers(0, 5000, 20_000).astype(np.uint64))
    t = pa.table({"k": ["u"] * len(v), "v": pa.array(v, pa.uint64())})
    ranks, _ = run_on_ranks("groupby", [t.slice(0, 7000), t.slice(7000)], {"by": "k", "agg": ["approx_median(v)"],
                                                                         "limit": 0})
    row = dict(zip(ranks[0][0]["columns"], ranks[0][0]["data"][0]))
    s = np.sort(v)
    x = np.uint64(row["approx_median_v"])
    lo, hi = np.searchsorted(s, x, "left") / len(s), np.searchsorted(s, x, "right") / len(s)
    assert x in set(v.tolist()) and (lo <= 0.5 <= hi or min(abs(0.5 - lo), abs(0.5 - hi)) <= row["approx_median_v_err"])


def test_the_rows_path_uses_the_same_offset():
    """A job mixing an exact median sends its rows; the reducer sketches each group less its offset too."""
    rng = np.random.default_rng(8)
    t = _groups({"a": I64_MAX - rng.integers(0, 5000, 20_000), "b": I64_MAX - rng.integers(0, 3, 20_000)}, 3)
    rows, _ = _run(t, 2, 3, AGGS + ["median(v)"])
    _check(t, rows, exact_values=True)


def test_answers_keep_the_columns_integer_type():
    """DuckDB's approx_quantile of a BIGINT (or INTEGER) answers in that type; so does ours (it was DOUBLE)."""
    t = pa.table({"k": ["a"] * 500 + ["b"] * 3, "v": pa.array(list(range(500)) + [7, 8, 9], pa.int32())})
    ranks, _ = run_on_ranks("groupby", [t.slice(0, 250), t.slice(250)], {"by": "k", "agg": ["approx_median(v)"],
                                                                       "limit": 0})
    res = ranks[0][0]
    got = dict(zip((r[0] for r in res["data"]), (r[1] for r in res["data"])))
    assert got["b"] == 8 and isinstance(got["a"], int) and isinstance(got["b"], int)
    want = duckdb.sql("SELECT typeof(approx_quantile(v, 0.5)) FROM t").fetchall()[0][0]
    assert want == "INTEGER"
    from shardstats.worker.engine import sketchagg
    from shardstats.worker.engine.aggregate import parse_all
    aggs = parse_all(("approx_median(v)",), ["k"])
    out = sketchagg.finish(pa.table({"k": ["a"], "approx_median_v": pa.array([[1, 2, 3]], pa.list_(pa.int32()))}),
                           aggs, lambda i, p: f'"__{i}_{p}"', {"approx_median_v": pa.int32()}, {})
    assert out.schema.field("approx_median_v").type == pa.int32()


def test_approx_top_skips_nan_as_topk_approx_does():
    """approx_top counted NaN as a value (and, NaN != NaN, once per rank that held it) while topk --approx and the
    other approximate aggregates skip it: now it is skipped, and the group's top agrees with topk --approx."""
    rng = np.random.default_rng(11)
    f = rng.choice([1.5, 2.5, -0.5, np.nan], 12_000, p=[0.2, 0.15, 0.05, 0.6])
    t = pa.table({"k": ["g"] * len(f), "f": f})
    parts = [t.slice(0, 4000), t.slice(4000, 4000), t.slice(8000), t.slice(0, 0)]
    ranks, _ = run_on_ranks("groupby", parts, {"by": "k", "agg": ["approx_top(f, 3)"], "limit": 0})
    row = dict(zip(ranks[0][0]["columns"], ranks[0][0]["data"][0]))
    want = duckdb.sql("SELECT f, count(*) AS n FROM t WHERE NOT isnan(f) GROUP BY f ORDER BY n DESC, f").fetchall()
    assert [(i["value"], i["count"]) for i in row["approx_top_f"]] == want
    top, _ = run_on_ranks("topk", [p.select(["f"]) for p in parts], {"approx": True, "of": "f", "k": 3})
    assert [tuple(x) for x in top[0][0]["items"]] == want
