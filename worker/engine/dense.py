"""The combiner's fast path: mergeable aggregates by dense group codes, in numpy.

Where every key of a group-by is a small code already -- a dictionary-encoded text
column (Parquet stores db-benchmark's ``id1``/``id2`` so) or an integer column of a
small span (``id4``..``id6``) -- a row's group is a number, the keys' codes mixed in
radix order, and the aggregates are ``np.bincount`` passes over it: no hashing of
the rows at all.  Measured at 1M rows, one thread (combine CPU, ms)::

    question     DuckDB   Arrow   dense
    q2 id1,id2     51.4    12.1     ~5     two text keys of 100 values each
    q5 id6         64.7    88.2    20.9    an int key of span 1e5
    q1 id1          8.2     7.5    16.3    100 groups: DuckDB's table sits in cache (``MIN_GROUPS``)
    q4 id4         12.3    10.4    17.3    the same
    q3 id3        101.7    74.4    79.9    1e5 values a row group: the dictionaries' unification
                                           hashes as much as DuckDB does, so they go to DuckDB

It returns exactly the table DuckDB's ``combine_sql`` would (the same columns, names
and Arrow types -- taken from DuckDB's answer on no rows -- and the same NULLs), so a
rank on this path and a rank on DuckDB's send one schema and the reducer cannot tell
them apart; the rows' order differs (any order is allowed).  Anything else returns
None and DuckDB combines: a key of another type or a wide span, more groups than
``max_groups`` or fewer than ``MIN_GROUPS``, an aggregate outside count/sum/mean/min/max/var/std/corr, a float NaN
under min/max (SQL orders NaN above every number; numpy's minimum propagates it),
and an integer sum that float64 could not hold exactly (``max|v| * rows >= 2**53``).
"""
from __future__ import annotations

from shardstats.lazy import numpy as np

MIN_GROUPS = 2048          # fewer possible groups: DuckDB's hash table sits in cache and is as fast (q1, q4: 8-12 ms)
EXACT = float(1 << 53)     # integers below this in magnitude are exact in float64, and so are their partial sums
DENSE_FUNCS = frozenset({"count", "sum", "mean", "min", "max", "var", "std", "corr"})


def max_groups(rows: int) -> int:
    """The most group codes the bincount arrays may span: one per row (each array of codes then costs 8 bytes a
    row, about what a key and a value of the rows do, and a combine makes a handful of them: a pass planned for
    a worker's budget stays within it), never above 4M (32 MiB an array)."""
    return min(max(rows, 1 << 16), 1 << 22)


def _np(x) -> "np.ndarray":
    """An Arrow array or chunked array without NULLs as one numpy array."""
    import pyarrow as pa
    if isinstance(x, pa.ChunkedArray):
        return x.to_numpy() if x.num_chunks else np.empty(0)
    return x.to_numpy(zero_copy_only=False)


def _valid(col) -> "np.ndarray | None":
    """Which rows hold a value (None: all of them)."""
    import pyarrow.compute as pc
    return _np(pc.is_valid(col)) if col.null_count else None


def _key_plan(col, limit: int, rows: int):
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


def _key_codes(col, plan):
    """One key column as (codes, cardinality, how to turn codes back into values) -- the last code stands for
    NULL when the column has any."""
    import pyarrow.compute as pc
    if plan[0] == "dict":
        arr = col.unify_dictionaries().combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        card = len(arr.dictionary)
        idx = pc.fill_null(arr.indices, card) if arr.null_count else arr.indices
        return _np(idx), card + (arr.null_count > 0), ("dict", arr.dictionary, card)
    _, smallest, lo, span = plan
    raw = _np(pc.fill_null(col, smallest) if col.null_count else col)
    # the codes in int32 when the column's values are (span <= max_groups): x - lo then fits too
    codes = raw - np.int32(lo) if raw.dtype == np.int32 else raw.astype(np.int64) - lo
    valid = _valid(col)
    if valid is not None:
        codes[~valid] = span
    return codes, span + (valid is not None), ("int", lo, span, col.type)


def _both_valid(a, b) -> "np.ndarray | None":
    """The rows where both columns hold a value (a correlation's pairs); None: all of them."""
    va, vb = _valid(a), _valid(b)
    if va is None or vb is None:
        return vb if va is None else va
    return va & vb


def _numbers(col) -> "np.ndarray":
    """A value column's numbers (NULLs as 0: callers take the valid rows), bools as 0/1."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    v = _np(pc.fill_null(col, 0) if col.null_count else col)
    return v


def _key_values(kind, codes: "np.ndarray"):
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


def combine(keys, aggs, table, expected):
    """The combiner's table, or None when this path does not apply (see the module docstring).  ``expected()``
    gives DuckDB's answer on no rows, for its columns and types (asked only once the path applies)."""
    import pyarrow as pa
    n = table.num_rows
    if n == 0 or any(a.func not in DENSE_FUNCS for a in aggs):
        return None
    for a in aggs:             # numbers only: text, decimals and times go to DuckDB
        for c in a.cols if a.func != "count" else ():
            t = table.schema.field(c).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                return None
    limit = max_groups(n)
    plans = []
    most = 1
    for k in keys:
        plan = _key_plan(table.column(k), limit, n)
        if plan is None:
            return None
        plans.append(plan[0])
        most *= plan[1]
    if most < MIN_GROUPS:
        return None
    parts = []
    size = 1
    for k, plan in zip(keys, plans):
        parts.append(_key_codes(table.column(k), plan))
        size *= parts[-1][1]
        if size > limit:
            return None
    # the keys' codes mixed in int32 (size <= max_groups < 2**31: half the bytes of int64), then made int64
    # once: np.bincount casts any other index type to intp on every call, and a combine makes several
    code = parts[0][0].astype(np.int32 if len(parts) > 1 else np.intp)
    for codes, card, _ in parts[1:]:
        code *= np.int32(card)
        code += codes
    code = code.astype(np.intp, copy=False)
    rows = np.bincount(code, minlength=size)
    used = np.flatnonzero(rows)
    cols: dict = {}
    rest = used
    for k, (_, card, kind) in reversed(list(zip(keys, parts))):
        rest, mine = np.divmod(rest, card)
        cols[k] = _key_values(kind, mine)
    out = [cols[k] for k in keys]
    cache: dict = {}

    def counted(c):
        """(validity, values per group) of column ``c``."""
        if c not in cache:
            valid = _valid(table.column(c))
            cache[c] = (valid, rows if valid is None else np.bincount(code[valid], minlength=size))
        return cache[c]

    def numbers(c):
        valid, cnt = counted(c)
        return _numbers(table.column(c)), valid, cnt

    def per_group(v, valid, weights=None):
        w = v if weights is None else weights
        return np.bincount(code if valid is None else code[valid],
                           weights=(w if valid is None else w[valid]).astype(np.float64), minlength=size)

    def total(v, valid):
        if v.dtype.kind in "iu":
            if len(v) and max(abs(float(v.min())), abs(float(v.max()))) * len(v) >= EXACT:
                return None            # float64 would round it: DuckDB's HUGEINT sum
            return np.rint(per_group(v, valid)).astype(np.int64)
        return per_group(v, valid)

    for a in aggs:
        c = a.cols[0] if a.cols else None
        if a.func == "count":
            out.append(rows[used] if c is None else counted(c)[1][used])
            continue
        v, valid, cnt = numbers(c)
        none = cnt[used] == 0
        if a.func in ("sum", "mean"):
            got = total(v, valid)
            if got is None:
                return None
            s = got[used]
            out.append(pa.array(s, mask=none if none.any() else None))
            if a.func == "mean":
                out.append(cnt[used])
        elif a.func in ("min", "max"):
            if v.dtype.kind == "f" and np.isnan(v if valid is None else v[valid]).any():
                return None
            if v.dtype.kind == "f":
                fill = np.inf if a.func == "min" else -np.inf
            else:
                fill = np.iinfo(v.dtype).max if a.func == "min" else np.iinfo(v.dtype).min
            acc = np.full(size, fill, dtype=v.dtype)
            (np.minimum if a.func == "min" else np.maximum).at(acc, code if valid is None else code[valid],
                                                               v if valid is None else v[valid])
            out.append(pa.array(acc[used], mask=none if none.any() else None))
        elif a.func == "corr":     # (n, mean a, mean b, M2 a, M2 b, co-moment) over rows holding both
            va, vb = _numbers(table.column(a.cols[0])), _numbers(table.column(a.cols[1]))
            valid = _both_valid(table.column(a.cols[0]), table.column(a.cols[1]))
            cnt = rows if valid is None else np.bincount(code[valid], minlength=size)
            none = cnt[used] == 0
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):   # as DuckDB: inf, NaN
                ma, mb = per_group(va, valid) / cnt, per_group(vb, valid) / cnt
                da = va.astype(np.float64) - ma[code]
                db = vb.astype(np.float64) - mb[code]
                m2a, m2b = per_group(da, valid, da * da), per_group(db, valid, db * db)
                co = per_group(da, valid, da * db)
            mask = none if none.any() else None
            out += [cnt[used], pa.array(ma[used], mask=mask), pa.array(mb[used], mask=mask), m2a[used], m2b[used],
                    co[used]]
        else:                  # var, std: (n, mean, M2), M2 by a second pass around each group's mean
            s = per_group(v, valid)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):     # inf - inf: NaN, as DuckDB
                mean = s / cnt
                d = v.astype(np.float64) - mean[code]
                m2 = per_group(d, valid, d * d)
            out += [cnt[used], pa.array(mean[used], mask=none if none.any() else None), m2[used]]
    expected = expected()
    if len(out) != len(expected.schema):
        return None
    arrays = [pa.array(x) if not isinstance(x, (pa.Array, pa.ChunkedArray)) else x for x in out]
    try:
        arrays = [x.cast(f.type) if x.type != f.type else x for x, f in zip(arrays, expected.schema)]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return pa.Table.from_arrays(arrays, schema=expected.schema)
