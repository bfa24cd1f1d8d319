"""A keyed job's printed head taken by top-k selection equals the first rows of a full stable sort: nulls and NaNs
last, ascending and descending keys, ties (rows equal on every key) in the table's order, text keys."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shardstats.worker.engine.answer import _head


def table(rng, n):
    a = rng.integers(0, 5, n).astype(float)
    a[rng.random(n) < 0.1] = np.nan
    s = np.array([f"s{v}" for v in rng.integers(0, 3, n)], dtype=object)
    s[rng.random(n) < 0.1] = None
    return pa.table({
        "a": pa.array(a, mask=rng.random(n) < 0.1),
        "b": pa.array(rng.integers(0, 4, n), mask=rng.random(n) < 0.2),
        "s": pa.array(s, pa.large_string()),
        "row": np.arange(n)})       # not a key: says which row came out where


ORDERS = [[("a", "ascending"), ("b", "descending"), ("s", "ascending")],
          [("s", "descending"), ("a", "descending")],
          [("b", "ascending")]]


@pytest.mark.parametrize("order", ORDERS)
def test_head_by_selection_equals_the_stable_sorts_first_rows(order):
    rng = np.random.default_rng(11)
    for _ in range(60):
        n, k = int(rng.integers(2, 400)), int(rng.integers(1, 40))
        t = table(rng, n)
        t = pa.concat_tables([t.slice(0, n // 2), t.slice(n // 2)])        # chunked, as a join's output is
        want = pc.sort_indices(t, sort_keys=[(c, o, "at_end") for c, o in order])[:k]
        got = _head(t, order, k)
        assert got.column("row").to_pylist() == t.take(want).column("row").to_pylist()
        assert got.column_names == t.column_names


def test_head_of_dictionary_keys_is_not_selected():
    """Arrow's selection crashes on a dictionary column: such a head keeps the sort's own error."""
    t = pa.table({"d": pa.array(["b", "a", "c"] * 50).dictionary_encode(), "v": np.arange(150)})
    with pytest.raises((pa.ArrowNotImplementedError, pa.ArrowTypeError)):
        _head(t, [("d", "ascending")], 10)


def test_answers_of_several_passes_together_still_fit_one_frame():
    """Each pass's rows fit an answer frame; their union did not always (a group-by of collect_set over six
    passes sent more than 65,536 containers, and the coordinator lost its only worker). The union is cut to
    what fits, the row count kept."""
    from shardstats.worker.engine.answer import ANSWER_CONTAINERS, _containers
    from shardstats.worker.engine.slices import combine_rows
    from shardstats.worker.ops.index import IndexParams, combine_passes
    one = {"rows": 20_000, "columns": ["k", "set"], "data": [[i, ["a", "b"]] for i in range(20_000)]}
    two = {"rows": 20_000, "columns": ["k", "set"], "data": [[-i, ["c"]] for i in range(20_000)]}
    got = combine_rows(one, two, 0)
    assert got["rows"] == 40_000 and 0 < len(got["data"]) < 40_000
    assert 1 + sum(_containers(r) for r in got["data"]) <= ANSWER_CONTAINERS
    assert got["data"] == (one["data"] + two["data"])[:len(got["data"])]
    idx = {"words": 20_000, "postings": 1, "tokens": 1, "rows": 20_000, "columns": ["word", "docs"]}
    a = {**idx, "data": [[f"a{i:05d}", ["d1", "d2"]] for i in range(20_000)]}
    b = {**idx, "data": [[f"b{i:05d}", ["d3"]] for i in range(20_000)]}
    got = combine_passes(a, b, IndexParams(limit=0))
    assert got["words"] == 40_000 and 1 + sum(_containers(r) for r in got["data"]) <= ANSWER_CONTAINERS
    assert got["data"] == (a["data"] + b["data"])[:len(got["data"])]


def _rows_reference(t: pa.Table) -> list[list]:
    """The answer's rows the plain way: every value through ``plain``, then ``fit``'s row-by-row cut (not its
    measure-the-whole-list path, which rows_of takes for flat answers)."""
    from shardstats.worker.engine.answer import fit, plain
    return fit([[plain(v) for v in r.values()] for r in t.to_pylist()], flat=False)


def test_rows_of_equals_the_per_value_rows_and_cuts_where_they_stop_fitting():
    """rows_of takes number and text columns as they are and measures a flat answer at once; its rows equal
    the per-value reference's: decimals, times, bytes, lists, nulls, and answers cut by bytes or containers."""
    import datetime
    import decimal
    from shardstats.worker.engine.answer import rows_of
    rng = np.random.default_rng(3)
    n = 1000
    mixed = pa.table({
        "i": pa.array(rng.integers(-5, 5, n), mask=rng.random(n) < 0.1),
        "f": pa.array(rng.random(n)), "s": pa.array([f"ß{i}" for i in range(n)]).dictionary_encode(),
        "b": pa.array([i % 3 == 0 for i in range(n)]),
        "d": pa.array([decimal.Decimal(i) / 4 for i in range(n)], pa.decimal128(12, 2)),
        "t": pa.array([datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=i) for i in range(n)]),
        "y": pa.array([bytes([i % 256]) for i in range(n)]),
        "l": pa.array([[i, None] for i in range(n)])})
    assert rows_of(mixed) == _rows_reference(mixed)
    flat = mixed.drop_columns(["l"])
    assert rows_of(flat) == _rows_reference(flat)
    wide = pa.table({"s": ["x" * 200] * 40_000})                  # 8 MB: cut by bytes
    got = rows_of(wide)
    assert got == _rows_reference(wide) and 0 < len(got) < 40_000
    many = pa.table({"k": np.arange(60_000)})                       # cut by containers (a row is one)
    got = rows_of(many)
    assert got == _rows_reference(many) and len(got) == 49_999
    assert rows_of(pa.table({"k": pa.array([], pa.int64())})) == []
