"""Key columns as small codes: an integer column of a small span (its value less the smallest) or a dictionary
(its unified indices), the last code standing for NULL -- so a row's group or owner is a number, no hashing.

The group-by's numpy combiner (``worker.engine.dense``) aggregates by these codes, and the exchange
(``worker.data.hashing.owners_by_key``) hashes each combination of them once instead of every row.
"""
from __future__ import annotations

from shardstats.lazy import numpy as np


def to_numpy(x) -> "np.ndarray":
    """An Arrow array or chunked array without NULLs as one numpy array."""
    import pyarrow as pa
    if isinstance(x, pa.ChunkedArray):
        return x.to_numpy() if x.num_chunks else np.empty(0)
    return x.to_numpy(zero_copy_only=False)


def validity(col) -> "np.ndarray | None":
    """Which rows hold a value (None: all of them)."""
    import pyarrow.compute as pc
    return to_numpy(pc.is_valid(col)) if col.null_count else None


def key_plan(col, limit: int, rows: int):
    """What coding one key column takes, cheaply (no pass over its rows but a min/max): (plan, the most codes
    it can need), or None when it is no small code."""
    import pyarrow as pa
    import pyarrow.compute as pc
    t = col.type
    nulls = col.null_count > 0
    if pa.types.is_dictionary(t):
        most = sum(len(c.dictionary) for c in col.chunks)
        if col.num_chunks == 0 or most > max(rows // 8, 4096):
            return None            # large dictionaries: unifying them hashes about as much as DuckDB would
        return ("dict",), most + nulls
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        if len(col) == 0 or col.null_count == len(col):
            return None
        mm = pc.min_max(col)
        lo, hi = int(mm["min"].as_py()), int(mm["max"].as_py())
        span = hi - lo + 1
        if span > limit or hi >= 1 << 63:      # (a uint64 beyond int64: DuckDB's)
            return None
        return ("int", mm["min"], lo, span), span + nulls
    return None


def key_codes(col, plan):
    """One key column as (codes, cardinality, how to turn codes back into values) -- the last code stands for
    NULL when the column has any."""
    import pyarrow.compute as pc
    if plan[0] == "dict":
        arr = col.unify_dictionaries().combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        card = len(arr.dictionary)
        idx = pc.fill_null(arr.indices, card) if arr.null_count else arr.indices
        return to_numpy(idx), card + (arr.null_count > 0), ("dict", arr.dictionary, card)
    _, smallest, lo, span = plan
    raw = to_numpy(pc.fill_null(col, smallest) if col.null_count else col)
    # the codes in int32 when the column's values are (a small span: x - lo then fits too)
    codes = raw - np.int32(lo) if raw.dtype == np.int32 else raw.astype(np.int64) - lo
    valid = validity(col)
    if valid is not None:
        codes[~valid] = span
    return codes, span + (valid is not None), ("int", lo, span, col.type)


def key_values(kind, codes: "np.ndarray"):
    """The key values ``codes`` stand for (``kind`` from ``key_codes``), the NULL code as NULL."""
    import pyarrow as pa
    if kind[0] == "dict":
        _, dictionary, card = kind
        nulls = codes == card
        idx = pa.array(np.where(nulls, 0, codes), mask=nulls if nulls.any() else None, type=pa.int64())
        return dictionary.take(idx) if len(dictionary) else pa.nulls(len(codes), dictionary.type)
    _, lo, span, t = kind
    nulls = codes == span
    vals = codes + lo
    if pa.types.is_boolean(t):
        return pa.array(vals.astype(bool), mask=nulls if nulls.any() else None)
    return pa.array(vals, mask=nulls if nulls.any() else None, type=pa.int64())
