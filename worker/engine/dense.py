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

from shardstats.worker.data.codes import key_codes, key_plan, key_values, to_numpy, validity

MIN_GROUPS = 2048          # fewer possible groups: DuckDB's hash table sits in cache and is as fast (q1, q4: 8-12 ms)
EXACT = float(1 << 53)     # integers below this in magnitude are exact in float64, and so are their partial sums
DENSE_FUNCS = frozenset({"count", "sum", "mean", "min", "max", "var", "std", "corr"})


def max_groups(rows: int) -> int:
    """The most group codes the bincount arrays may span: one per row (each array of codes then costs 8 bytes a
    row, about what a key and a value of the rows do, and a combine makes a handful of them: a pass planned for
    a worker's budget stays within it), never above 4M (32 MiB an array)."""
    return min(max(rows, 1 << 16), 1 << 22)


def _numbers(col) -> "np.ndarray":
    """A value column's numbers (NULLs as 0: callers take the valid rows), bools as 0/1."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    v = to_numpy(pc.fill_null(col, 0) if col.null_count else col)
    return v


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
        plan = key_plan(table.column(k), limit, n)
        if plan is None:
            return None
        plans.append(plan[0])
        most *= plan[1]
    if most < MIN_GROUPS:
        return None
    parts = []
    size = 1
    for k, plan in zip(keys, plans):
        parts.append(key_codes(table.column(k), plan))
        size *= parts[-1][1]
        if size > limit:
            return None
    from shardstats.worker import memory
    with memory.reusing_heap():
        out = _aggregate(keys, aggs, table, parts, size)
    if out is None:
        return None
    expected = expected()
    if len(out) != len(expected.schema):
        return None
    arrays = [pa.array(x) if not isinstance(x, (pa.Array, pa.ChunkedArray)) else x for x in out]
    try:
        arrays = [x.cast(f.type) if x.type != f.type else x for x, f in zip(arrays, expected.schema)]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return pa.Table.from_arrays(arrays, schema=expected.schema)


CHUNK = 1 << 20    # rows aggregated at a time: each temporary is ~8 MB, taken again from the heap chunk after chunk


def _both(xa, xb):
    """The rows where both columns hold a value (a correlation's pairs), from each one's validity (None: all)."""
    return xb if xa is None else xa if xb is None else xa & xb


def _aggregate(keys, aggs, table, parts, size):
    """The combine's columns (keys, then each aggregate's states), a chunk of rows at a time, or None.

    Whole-column temporaries (the codes, every value as float64, deviations, their squares: a dozen arrays of
    80 MB a worker at 1e8 rows) were each a fresh mmap, faulted in and zeroed by the kernel: db-benchmark's q9
    spent more CPU in the kernel than in numpy.  Chunks of ``CHUNK`` rows (at least as many as the groups, so
    a chunk's per-group arrays are no larger than its rows) reuse the same heap blocks under
    ``memory.reusing_heap``.  var/std/corr take a second pass over the chunks around the groups' means."""
    import pyarrow as pa
    n = table.num_rows
    step = max(CHUNK, size)
    spans = [(lo, min(lo + step, n)) for lo in range(0, n, step)]

    def code_of(lo, hi):
        code = None
        for codes, card, _ in parts:
            c = codes[lo:hi]
            code = c.astype(np.intp) if code is None else code * card + c
        return code

    numeric = {c for a in aggs if a.func != "count" for c in a.cols}

    def column(c, lo, hi):
        """(numbers or None for a column only counted, validity or None) of column ``c`` for rows lo..hi."""
        col = table.column(c).slice(lo, hi - lo)
        return (_numbers(col) if c in numeric else None), validity(col)

    def bins(code, valid, w=None):
        """Per-group counts (``w`` None) or float64 sums of ``w`` over the valid rows."""
        idx = code if valid is None else code[valid]
        if w is None:
            return np.bincount(idx, minlength=size)
        return np.bincount(idx, weights=(w if valid is None else w[valid]).astype(np.float64), minlength=size)

    value_cols = sorted({c for a in aggs for c in a.cols})
    for c in {a.cols[0] for a in aggs if a.func in ("sum", "mean")}:   # an integer sum float64 could round
        if pa.types.is_integer(table.schema.field(c).type):           # (max|v| * rows >= 2**53): DuckDB's HUGEINT
            import pyarrow.compute as pc
            mm = pc.min_max(table.column(c))
            lo_, hi_ = mm["min"].as_py(), mm["max"].as_py()
            if lo_ is not None and max(abs(float(lo_)), abs(float(hi_))) * n >= EXACT:
                return None
    rows = np.zeros(size, np.int64)
    cnt = {c: np.zeros(size, np.int64) for c in value_cols}
    pairs = {i: [np.zeros(size, np.int64), np.zeros(size), np.zeros(size)] for i, a in enumerate(aggs)
             if a.func == "corr"}                                     # n, sum a, sum b
    sums = {i: np.zeros(size) for i, a in enumerate(aggs) if a.func in ("sum", "mean", "var", "std")}
    extreme = {}
    for i, a in enumerate(aggs):
        if a.func in ("min", "max"):
            t = table.schema.field(a.cols[0]).type
            dt = np.dtype(np.int8) if pa.types.is_boolean(t) else np.dtype(t.to_pandas_dtype())
            fill = (np.inf if a.func == "min" else -np.inf) if dt.kind == "f" else \
                (np.iinfo(dt).max if a.func == "min" else np.iinfo(dt).min)
            extreme[i] = np.full(size, fill, dtype=dt)
    for lo, hi in spans:                                   # pass 1: counts, sums, extremes
        code = code_of(lo, hi)
        here = np.bincount(code, minlength=size)
        rows += here
        got = {c: column(c, lo, hi) for c in value_cols}
        for c, (v, valid) in got.items():
            cnt[c] += here if valid is None else bins(code, valid)
        for i, a in enumerate(aggs):
            if i in sums:
                v, valid = got[a.cols[0]]
                sums[i] += bins(code, valid, v)
            elif i in extreme:
                v, valid = got[a.cols[0]]
                vv = v if valid is None else v[valid]
                if v.dtype.kind == "f" and np.isnan(vv).any():
                    return None            # SQL orders NaN above every number; numpy's minimum propagates it
                (np.minimum if a.func == "min" else np.maximum).at(extreme[i], code if valid is None else
                                                                   code[valid], vv)
            elif i in pairs:
                (va, xa), (vb, xb) = got[a.cols[0]], got[a.cols[1]]
                valid = _both(xa, xb)
                pairs[i][0] += here if valid is None else bins(code, valid)
                pairs[i][1] += bins(code, valid, va)
                pairs[i][2] += bins(code, valid, vb)
    second = {i: a for i, a in enumerate(aggs) if a.func in ("var", "std", "corr")}
    m2: dict = {i: [np.zeros(size) for _ in range(3 if a.func == "corr" else 1)] for i, a in second.items()}
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):     # inf - inf: NaN, as DuckDB
        means = {i: (sums[i] / cnt[a.cols[0]],) if a.func != "corr" else
                 (pairs[i][1] / pairs[i][0], pairs[i][2] / pairs[i][0]) for i, a in second.items()}
        for lo, hi in spans if second else ():             # pass 2: squared deviations around the means
            code = code_of(lo, hi)
            for i, a in second.items():
                if a.func == "corr":
                    (va, xa), (vb, xb) = column(a.cols[0], lo, hi), column(a.cols[1], lo, hi)
                    valid = _both(xa, xb)
                    da = va.astype(np.float64) - means[i][0][code]
                    db = vb.astype(np.float64) - means[i][1][code]
                    m2[i][0] += bins(code, valid, da * da)
                    m2[i][1] += bins(code, valid, db * db)
                    m2[i][2] += bins(code, valid, da * db)
                else:
                    v, valid = column(a.cols[0], lo, hi)
                    d = v.astype(np.float64) - means[i][0][code]
                    m2[i][0] += bins(code, valid, d * d)
    used = np.flatnonzero(rows)
    cols: dict = {}
    rest = used
    for k, (_, card, kind) in reversed(list(zip(keys, parts))):
        rest, mine = np.divmod(rest, card)
        cols[k] = key_values(kind, mine)
    out = [cols[k] for k in keys]
    for i, a in enumerate(aggs):
        c = a.cols[0] if a.cols else None
        if a.func == "count":
            out.append(rows[used] if c is None else cnt[c][used])
            continue
        n_ = pairs[i][0] if a.func == "corr" else cnt[c]
        none = n_[used] == 0
        mask = none if none.any() else None
        if a.func in ("sum", "mean"):
            integral = table.schema.field(c).type
            s_ = sums[i][used]
            if pa.types.is_integer(integral) or pa.types.is_boolean(integral):
                s_ = np.rint(s_).astype(np.int64)
            out.append(pa.array(s_, mask=mask))
            if a.func == "mean":
                out.append(cnt[c][used])
        elif a.func in ("min", "max"):
            out.append(pa.array(extreme[i][used], mask=mask))
        elif a.func == "corr":
            out += [n_[used], pa.array(means[i][0][used], mask=mask), pa.array(means[i][1][used], mask=mask),
                    m2[i][0][used], m2[i][1][used], m2[i][2][used]]
        else:                  # var, std: (n, mean, M2)
            out += [cnt[c][used], pa.array(means[i][0][used], mask=mask), m2[i][0][used]]
    return out
