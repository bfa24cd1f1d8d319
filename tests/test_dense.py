"""The combiner's numpy path (worker/engine/dense.py) against DuckDB's combiner SQL on the same Arrow tables.

Each case builds a table, runs ``aggregate.combine_sql`` in DuckDB (the reference: the
path every rank took before) and ``dense.combine``, and asserts the dense path either
declines (None, where it must: wide spans, large dictionaries, NaN under min/max, an
integer sum float64 cannot hold) or returns the same schema and, as a multiset of rows,
the same values: integers and counts exactly, floats within 1e-9 relative.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from shardstats.worker.engine import aggregate as agg
from shardstats.worker.engine import dense

I64 = np.iinfo(np.int64)


@pytest.fixture(autouse=True)
def any_group_count(monkeypatch, request):
    """The small tables here have a few groups, which the dense path leaves to DuckDB by default (speed, not
    answers); these tests want its answers, except the one that checks the default."""
    if "min_groups" not in request.node.name:
        monkeypatch.setattr(dense, "MIN_GROUPS", 1)


def _dict_chunks(words: list[list[str | None]]) -> pa.ChunkedArray:
    """A text column of several chunks, each dictionary-encoded on its own (as Parquet row groups read)."""
    return pa.chunked_array([pa.array(w, pa.string()).dictionary_encode() for w in words])


def _both(table: pa.Table, keys: list[str], exprs: list[str]):
    aggs = agg.parse_all(exprs, keys)
    sql = agg.combine_sql(keys, aggs)
    ref = agg.run_sql(sql, table)
    got = dense.combine(keys, aggs, table, lambda: agg.run_sql(sql, table.slice(0, 0)))
    return ref, got, aggs


def _rows(t: pa.Table) -> list[tuple]:
    def norm(v):
        if isinstance(v, float):
            return ("nan",) if math.isnan(v) else round(v, 6)
        return v
    return sorted((tuple(norm(v) for v in r.values()) for r in t.to_pylist()), key=repr)


def _same(ref: pa.Table, got: pa.Table) -> None:
    assert got is not None
    assert got.schema == ref.schema
    assert got.num_rows == ref.num_rows
    # floats within 1e-9 relative: compare by key, column by column
    keyed = lambda t: {repr(tuple(r[c] for c in t.column_names if not c.startswith("__"))): r  # noqa: E731
                       for r in t.to_pylist()}
    a, b = keyed(ref), keyed(got)
    assert a.keys() == b.keys()
    for k, ra in a.items():
        rb = b[k]
        for c, va in ra.items():
            vb = rb[c]
            if isinstance(va, float) and isinstance(vb, float):
                assert (math.isnan(va) and math.isnan(vb)) or vb == pytest.approx(va, rel=1e-9, abs=1e-9), (k, c)
            else:
                assert va == vb, (k, c, va, vb)


ALL = ["count()", "n=count(v)", "s=sum(v)", "m=mean(v)", "lo=min(v)", "hi=max(v)", "va=var(v)", "sd=std(v)"]


def _cases():
    rng = np.random.default_rng(7)
    n = 5000
    ints = rng.integers(-50, 50, n)
    yield "dict key, several chunks with their own dictionaries", pa.table({
        "k": _dict_chunks([[f"id{x:03d}" for x in rng.integers(0, 40, 2000)],
                           [f"id{x:03d}" for x in rng.integers(20, 60, 3000)]]),
        "v": pa.array(ints, pa.int32())}), ["k"], ALL
    yield "null keys form one group, null values skipped", pa.table({
        "k": _dict_chunks([["a", None, "b", "a", None], ["b", None, "c"]]),
        "v": pa.array([1.5, None, 2.0, None, 4.0, -1.0, None, 3.25], pa.float64())}), ["k"], ALL
    yield "a group whose values are all NULL", pa.table({
        "k": pa.array([1, 1, 2, 3, 3], pa.int64()), "v": pa.array([None, None, 5, 7, None], pa.int64())}), ["k"], ALL
    yield "int key near the int64 top", pa.table({
        "k": pa.array([I64.max, I64.max - 3, I64.max, I64.max - 1], pa.int64()),
        "v": pa.array([1, 2, 3, 4], pa.int64())}), ["k"], ALL
    yield "int key near the int64 bottom, negative values", pa.table({
        "k": pa.array([I64.min, I64.min + 2, I64.min, None], pa.int64()),
        "v": pa.array([-5, -6, -7, -8], pa.int32())}), ["k"], ALL
    yield "composite: two dictionaries and an int", pa.table({
        "a": _dict_chunks([[f"x{x}" for x in rng.integers(0, 7, n)]]),
        "b": _dict_chunks([[f"y{x}" for x in rng.integers(0, 5, n // 2)], [f"y{x}" for x in rng.integers(0, 9, n // 2)]]),
        "c": pa.array(rng.integers(1, 12, n), pa.int32()),
        "v": pa.array(rng.random(n) * 100, pa.float64())}), ["a", "b", "c"], ALL
    yield "bool key and bool values summed", pa.table({
        "k": pa.array([True, False, None, True, True]), "v": pa.array([True, True, False, None, True])}), ["k"], \
        ["count()", "s=sum(v)", "n=count(v)"]
    yield "a single row", pa.table({"k": pa.array(["only"]).dictionary_encode(),
                                    "v": pa.array([42], pa.int64())}), ["k"], ALL
    yield "every value equal, ties everywhere", pa.table({
        "k": pa.array(np.zeros(n, dtype=np.int16)), "v": pa.array(np.full(n, 9, dtype=np.int64))}), ["k"], ALL
    yield "counts of a text column", pa.table({
        "k": pa.array([3, 3, 4], pa.int8()), "t": pa.array(["a", None, "c"])}), ["k"], ["count()", "n=count(t)"]
    yield "db-benchmark q2/q5 shapes", pa.table({
        "id1": _dict_chunks([[f"id{x:03d}" for x in rng.integers(1, 101, n)]]),
        "id6": pa.array(rng.integers(1, 50, n), pa.int32()),
        "v1": pa.array(rng.integers(1, 6, n), pa.int32()), "v3": pa.array(rng.random(n) * 100)}), ["id1", "id6"], \
        ["v1=sum(v1)", "v3=mean(v3)", "mx=max(v1)", "mn=min(v3)", "count()"]


    yield "corr: pairs with a NULL on either side skipped, a group with no pair, a constant side", pa.table({
        "k": pa.array([1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4], pa.int32()),
        "a": pa.array([1.0, 2.0, None, 4.0, None, 5.0, 7.0, 7.0, 7.0, -1e300, 1e300], pa.float64()),
        "b": pa.array([2, 4, 6, None, 3, None, 1, 2, 3, 1, 2], pa.int64())}), ["k"], \
        ["r=corr(a, b)", "r2=corr(b, a)", "count()"]
    yield "corr: db-benchmark q9's shape (a text and an int key)", pa.table({
        "id2": _dict_chunks([[f"id{x:03d}" for x in rng.integers(1, 30, n // 2)],
                             [f"id{x:03d}" for x in rng.integers(1, 30, n // 2)]]),
        "id4": pa.array(rng.integers(1, 20, n), pa.int32()),
        "v1": pa.array(rng.integers(1, 6, n), pa.int32()), "v2": pa.array(rng.integers(1, 16, n), pa.int32())}), \
        ["id2", "id4"], ["r=corr(v1, v2)"]


@pytest.mark.parametrize("name,table,keys,exprs", list(_cases()), ids=[c[0] for c in _cases()])
def test_dense_combine_equals_duckdbs(name, table, keys, exprs):
    ref, got, _ = _both(table, keys, exprs)
    _same(ref, got)


@pytest.mark.parametrize("name,table,keys,exprs", list(_cases()), ids=[c[0] for c in _cases()])
def test_dense_combine_in_chunks_equals_duckdbs(name, table, keys, exprs, monkeypatch):
    """The same answers when the rows are aggregated a few at a time (chunks that cut the tables' own chunks,
    the second pass of var/std/corr around means gathered over every chunk)."""
    monkeypatch.setattr(dense, "CHUNK", 97)
    ref, got, _ = _both(table, keys, exprs)
    _same(ref, got)


def _declines(table, keys, exprs):
    ref, got, _ = _both(table, keys, exprs)
    assert got is None
    return ref


def test_declines_where_it_would_not_be_exact_or_fast():
    # a span wider than a few codes a row
    _declines(pa.table({"k": pa.array([0, 10**12], pa.int64()), "v": pa.array([1, 2])}), ["k"], ["s=sum(v)"])
    # an integer sum float64 could round: max|v| * rows >= 2**53
    _declines(pa.table({"k": pa.array([1, 1, 2], pa.int64()), "v": pa.array([I64.max, I64.max, 1], pa.int64())}),
              ["k"], ["s=sum(v)"])
    # NaN under min/max (SQL puts NaN above every number)
    _declines(pa.table({"k": pa.array([1, 1]), "v": pa.array([float("nan"), 1.0])}), ["k"], ["lo=min(v)"])
    # a plain text key, a float key
    _declines(pa.table({"k": pa.array(["a", "b"]), "v": pa.array([1, 2])}), ["k"], ["s=sum(v)"])
    _declines(pa.table({"k": pa.array([0.5, 1.5]), "v": pa.array([1, 2])}), ["k"], ["s=sum(v)"])
    # a large dictionary (as many entries as rows): unifying it costs what DuckDB's hash does
    words = [f"w{i}" for i in range(70_000)]
    _declines(pa.table({"k": pa.array(words).dictionary_encode(), "v": pa.array(np.ones(70_000, np.int64))}),
              ["k"], ["s=sum(v)"])
    # a uint64 key beyond int64
    _declines(pa.table({"k": pa.array([2**64 - 1, 2**64 - 2], pa.uint64()), "v": pa.array([1, 2])}), ["k"],
              ["s=sum(v)"])


def test_integer_sums_stay_exact_at_the_edge_of_float64():
    """|v| * rows just under 2**53: every partial sum is an integer float64 holds exactly."""
    v = np.full(4, (1 << 53) // 4 - 1, dtype=np.int64)
    v[1] = -v[1]
    table = pa.table({"k": pa.array([1, 1, 1, 2], pa.int8()), "v": pa.array(v)})
    ref, got, _ = _both(table, ["k"], ["s=sum(v)", "m=mean(v)"])
    _same(ref, got)


def test_few_groups_are_left_to_duckdb_by_default_min_groups():
    assert dense.MIN_GROUPS > 100
    ints = pa.table({"k": pa.array(np.arange(1000) % 100, pa.int32()), "v": pa.array(np.ones(1000, np.int64))})
    _declines(ints, ["k"], ["s=sum(v)"])                       # 100 groups
    wide = pa.table({"k": pa.array(np.arange(5000), pa.int32()), "v": pa.array(np.ones(5000, np.int64))})
    ref, got, _ = _both(wide, ["k"], ["s=sum(v)"])              # 5,000 groups: dense
    _same(ref, got)
