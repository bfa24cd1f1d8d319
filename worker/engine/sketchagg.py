"""groupby's approximate aggregates: a sketch per group as the combiner's state, merged by union, finished with its bound.

``approx_median(c)``, ``approx_quantile(c, q)``, ``approx_distinct(c)``, ``approx_top(c, k)``
are mergeable aggregates (``worker.engine.aggregate``) whose state is one serialized sketch
per key, a binary column: the combiner's SQL gathers each key's values (DuckDB's ``list`` /
``histogram``, vectorised), ``states`` turns them into sketches, the shuffle moves one small
binary per key and rank, the reducer's SQL lists each key's states and ``finish`` merges them
and answers. Each answer comes with an ``<name>_err`` column: the stated bound.

* quantiles: DataSketches KLL (k = ``KLL_K``) per group, values as float64; a group of at most
  ``RAW_MAX`` values on a rank sends them instead (exact, in the column's own type, and as
  small). ``_err``: the normalized rank error bound at 99% confidence (0 when every value was
  kept). One library call per group (its values updated as one array): groups are iterated in
  Python, values never are. Integer columns: the sketch holds ``value - offset``, the job's one
  offset per column (``sketches.kll_offset`` of the column's min/max over every rank, agreed
  before any state is built), exact as doubles when the column's values lie within 2**53 of one
  another; answers are values of the column, in its own type (DuckDB's ``approx_quantile`` of a
  BIGINT is a BIGINT). A column spread wider than that and beyond +-2**53 is sketched rounded:
  a group whose values lie out there gets an ``_err`` widened by the share of its values the
  rounding made ties of the answer (``_kll_answer``), and the job's stats say so.
* distinct: HyperLogLog registers of the values' stable 64-bit hashes (``worker.data.hashing``),
  kept *sparse* -- only the registers a group touched, as uint32 ``register << 8 | rho`` --
  so a group of 3 values costs 12 bytes and 10**5 groups stay small; built and merged for all
  groups at once with numpy (a sort and a maximum per run). ``_err``: the relative standard
  error 1.04 / sqrt(2**``HLL_P``).
* top: DataSketches frequent items per group (ints as int64, floats, strings), fed each
  group's (value, count) pairs from DuckDB's ``histogram``: one call per distinct value of a
  group. NaN is skipped, as nulls are, as ``topk --approx`` and the quantile aggregates do (and
  the sketch could not count it: NaN != NaN, so each rank's NaN would be an item of its own).
  ``_err``: the group's maximum count error (every listed count is within it).
"""
from __future__ import annotations

import math

from shardstats.lazy import numpy as np
from shardstats.sketches import EXACT_SPAN

APPROX = frozenset({"approx_median", "approx_quantile", "approx_distinct", "approx_top"})
KLL_K = 200
RAW_MAX = 64                    # a group's values kept as themselves up to this many (8 B each)
HLL_P = 12
QUANTILES = ("approx_median", "approx_quantile")
_RAW = {"int64": b"I", "uint64": b"U", "float64": b"R"}          # a kept-values state's tag, by value kind
_TAG_DTYPE = {b"I": "int64", b"U": "uint64", b"R": "float64"}
_LIMITS = {"int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1)}


def state_sql(i: int, a, q, s) -> list[str]:
    """The combiner's select items gathering key ``a``'s values (``q`` quotes a name, ``s(i, part)`` names state)."""
    c = q(a.cols[0])
    if a.func in QUANTILES:         # the column's own type: an int64 cast to DOUBLE rounds beyond 2**53 (``build``)
        return [f"list({c}) FILTER (WHERE {c} IS NOT NULL AND NOT isnan({c}::DOUBLE)) AS {s(i, 'raw')}"]
    if a.func == "approx_distinct":
        return [f"list(DISTINCT {c}) FILTER (WHERE {c} IS NOT NULL) AS {s(i, 'raw')}"]
    return [f"histogram({c}) FILTER (WHERE {c} IS NOT NULL) AS {s(i, 'raw')}"]


def direct_sql(a, q) -> str:
    """The reducer's item for a job whose rows travel: the same gathered values, finished by ``finish``."""
    return state_sql(0, a, q, lambda i, p: "__x")[0].rsplit(" AS ", 1)[0]


# ---- states: gathered values -> one serialized sketch per key ----------------------------------------------

def quantile_kind(t) -> str:
    """How a quantile aggregate holds a column of type ``t``: ``int64`` (signed integers and the unsigned ones
    int64 holds), ``uint64``, else ``float64`` (floats, decimals: as doubles)."""
    import pyarrow as pa
    if pa.types.is_uint64(t):
        return "uint64"
    return "int64" if pa.types.is_integer(t) else "float64"


def _shifted(values, kind: str, offset: int):
    """Values as the sketch holds them: float64, less the job's offset for integers (``sketches.kll_offset``:
    every value lies within 2**53 above or below it then, so the difference neither overflows nor rounds)."""
    if kind == "int64" and offset:
        values = values - np.int64(offset)
    elif kind == "uint64" and offset:
        values = values - np.uint64(offset)            # the offset is at or below the job's minimum: no wrap
    return values.astype(np.float64)


def _kll(values, shifted) -> bytes:
    """A group's quantile state: its values themselves (a tag of their kind + the values) while they are few --
    exact, as small as a sketch of them, and no library call -- else ``K`` + the KLL sketch of ``shifted``."""
    if len(values) <= RAW_MAX:
        return _RAW[values.dtype.name if values.dtype.name in _RAW else "float64"] + values.tobytes()
    import datasketches as ds
    s = ds.kll_doubles_sketch(KLL_K)
    s.update(shifted)
    return b"K" + s.serialize()


def _hll_sparse(flat_hash, offsets) -> list[bytes]:
    """Per group (``offsets`` into ``flat_hash``): its touched registers as sorted uint32 ``register << 8 | rho``."""
    from shardstats.worker.ops.distinct import _bit_length
    groups = len(offsets) - 1
    if not len(flat_hash):
        return [b""] * groups
    q = 64 - HLL_P
    h = flat_hash.view(np.uint64)
    reg = (h >> np.uint64(q)).astype(np.int64)
    rho = q - _bit_length(h & np.uint64((1 << q) - 1)) + 1
    g = np.repeat(np.arange(groups, dtype=np.int64), np.diff(offsets))
    return _pack(g, reg, rho, groups)


def _pack(g, reg, rho, groups: int) -> list[bytes]:
    """The highest rho per (group, register), packed per group (one sort for all groups)."""
    key = g * (1 << HLL_P) + reg
    order = np.lexsort((rho, key))                    # by key, then rho ascending: a run's last is its maximum
    key, rho = key[order], rho[order]
    last = np.r_[key[1:] != key[:-1], True] if len(key) else np.zeros(0, bool)
    key, rho = key[last], rho[last]
    words = ((key & ((1 << HLL_P) - 1)) << 8 | rho).astype(np.uint32)
    bounds = np.searchsorted(key >> HLL_P, np.arange(groups + 1))
    return [words[bounds[j]:bounds[j + 1]].tobytes() for j in range(groups)]


def _frequent(entries, lg: int, kind: str) -> bytes:
    import datasketches as ds
    if kind == "float64":           # NaN is skipped, as topk --approx does (and NaN != NaN: one item per rank)
        entries = [(v, c) for v, c in entries if v == v]
    if kind == "string":
        s = ds.frequent_strings_sketch(lg)
        for v, c in entries:
            s.update(v, c)
        return s.serialize()
    s = ds.frequent_items_sketch(lg)
    for v, c in entries:
        s.update(v, c)
    return s.serialize(ds.PyLongsSerDe() if kind == "int64" else ds.PyDoublesSerDe())


def _value_kind(t) -> str:
    import pyarrow as pa
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "int64"
    if pa.types.is_floating(t):
        return "float64"
    return "string"


def _lg(k: int) -> int:
    from shardstats.sketches import default_lg_max_k
    return default_lg_max_k(k)


def build(a, col, kind: str = "float64", offset: int = 0) -> "object":
    """A column of gathered values (lists, or histogram maps) as a binary column of one sketch per row.
    Quantiles: ``kind`` (``quantile_kind``) and ``offset`` (the job's, for the column) say how values are held."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if a.func in QUANTILES:
        col = pc.fill_null(col, pa.scalar([], col.type))
        flat = col.flatten().cast(pa.float64() if kind == "float64" else pa.from_numpy_dtype(np.dtype(kind)))
        flat = flat.to_numpy(zero_copy_only=False)
        held = _shifted(flat, kind, offset)             # one array op for every group (a new, writable array)
        off = col.offsets.to_numpy() - col.offsets[0].as_py()
        out = [_kll(flat[off[j]:off[j + 1]], held[off[j]:off[j + 1]]) for j in range(n)]
    elif a.func == "approx_distinct":
        from shardstats.worker.data.hashing import hash_array
        col = pc.fill_null(col, pa.scalar([], col.type))
        off = col.offsets.to_numpy() - col.offsets[0].as_py()
        out = _hll_sparse(hash_array(col.flatten()).view(np.int64), off)
    else:
        kind = _value_kind(col.type.key_type)
        lg = _lg(a.arg)
        out = []
        for entries in col.to_pylist():
            out.append(_frequent(entries or [], lg, kind))
    return pa.array(out, pa.binary())


def states(table, aggs, s, kinds: dict | None = None, offsets: dict | None = None):
    """The combiner's output with each approximate aggregate's gathered values replaced by its sketches
    (``kinds``/``offsets``: each quantile aggregate's ``quantile_kind`` and the job's offset, by its name)."""
    kinds, offsets = kinds or {}, offsets or {}
    for i, a in enumerate(aggs):
        if a.func in APPROX:
            name = s(i, "raw").strip('"')
            table = table.set_column(table.column_names.index(name), s(i, "s").strip('"'),
                                     build(a, table.column(name), kinds.get(a.name, "float64"),
                                           offsets.get(a.name, 0)))
    return table


# ---- finish: each key's states merged, answered with the bound ---------------------------------------------

def _kll_answer(blobs, a, kind: str = "float64", offset: int = 0) -> tuple[int | float | None, float]:
    """A key's quantile from its ranks' states: exact from the values when every state holds its values, else
    from the KLL sketches merged (the values of the others added to them).  Integer columns (``kind``): the
    sketch holds values less ``offset``, and the answer is the column's value, clamped into its type.

    A sketch of integers beyond +-2**53 with no offset to make them exact (the column spread wider than 2**53)
    holds them rounded: the answer's double x stands for every value that rounded to it, ranked as ties.  The
    answer's true rank interval in the integers' order lies inside x's among the doubles, which lies within
    ``eps`` of the rank asked; so the bound is ``eps`` plus the share of values at x (read from the sketch,
    itself within ``eps`` at each end: ``3 eps + mass``; the exact mass when the sketch kept every value)."""
    import datasketches as ds
    raw = [np.frombuffer(b, _TAG_DTYPE[b[:1]], offset=1) for b in blobs if b is not None and b[:1] in _TAG_DTYPE]
    kll = [b for b in blobs if b is not None and b[:1] == b"K"]
    r = 0.5 if a.func == "approx_median" else float(a.arg)
    if not kll:
        v = np.sort(np.concatenate(raw)) if raw else np.zeros(0)
        if not len(v):
            return None, 0.0
        # KLL's inclusive quantile of an exact sketch: the smallest value whose rank reaches r (r = 0: the minimum)
        return v[max(0, math.ceil(r * len(v)) - 1)].item(), 0.0
    acc = ds.kll_doubles_sketch.deserialize(kll[0][1:])
    for b in kll[1:]:
        acc.merge(ds.kll_doubles_sketch.deserialize(b[1:]))
    for v in raw:
        if len(v):
            acc.update(_shifted(v, kind, offset))
    x = acc.get_min_value() if r <= 0 else acc.get_max_value() if r >= 1 else acc.get_quantile(r, True)
    eps = acc.normalized_rank_error(False) if acc.is_estimation_mode() else 0.0
    if kind == "float64":
        return x, eps
    if max(abs(acc.get_min_value()), abs(acc.get_max_value())) > EXACT_SPAN:     # rounded: ties widen the bound
        eps = min(1.0, 3 * eps + acc.get_rank(x, True) - acc.get_rank(x, False))
    lo, hi = _LIMITS[kind]
    return min(max(offset + int(x), lo), hi), eps


def _hll_answers(lists: list) -> "np.ndarray":
    """Every group's estimate from its sparse states (one list of them per group), for all groups at once: the
    highest rho per (group, register), then the raw estimate alpha m**2 / sum 2**-rho (an untouched register
    adds 2**0) and linear counting m log(m / zeros) for small counts, as ``distinct.hll_estimate`` does."""
    m = 1 << HLL_P
    groups = len(lists)
    blobs, owner = [], []
    for j, states in enumerate(lists):
        for b in states or ():
            if b:
                blobs.append(b)
                owner.append(j)
    if not blobs:
        return np.zeros(groups, np.int64)
    words = np.frombuffer(b"".join(blobs), np.uint32)
    g = np.repeat(np.asarray(owner, np.int64), [len(b) // 4 for b in blobs])
    key = g * m + (words >> 8).astype(np.int64)
    rho = (words & 0xFF).astype(np.int64)
    order = np.lexsort((rho, key))
    key, rho = key[order], rho[order]
    last = np.r_[key[1:] != key[:-1], True]
    key, rho = key[last], rho[last]
    gid = key >> HLL_P
    touched = np.bincount(gid, minlength=groups)
    total = np.bincount(gid, weights=np.ldexp(1.0, -rho), minlength=groups) + (m - touched)
    alpha = 0.7213 / (1 + 1.079 / m)
    raw = alpha * m * m / total
    zeros = m - touched
    with np.errstate(divide="ignore"):
        linear = m * np.log(m / np.maximum(zeros, 1))
    est = np.where((raw <= 2.5 * m) & (zeros > 0), linear, raw)
    return np.where(touched == 0, 0, np.round(est)).astype(np.int64)


def _top_answer(blobs, a, kind: str) -> tuple[list, int]:
    import datasketches as ds
    acc = None
    for b in blobs:
        if b is None:
            continue
        s = ds.frequent_strings_sketch.deserialize(b) if kind == "string" else ds.frequent_items_sketch.deserialize(
            b, ds.PyLongsSerDe() if kind == "int64" else ds.PyDoublesSerDe())
        if acc is None:
            acc = s
        else:
            acc.merge(s)
    if acc is None or acc.is_empty():
        return [], 0
    rows = acc.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
    rows.sort(key=lambda r: (-r[1], r[0]))
    held = {r[0] for r in rows}
    absent = "" if kind == "string" else -math.inf if kind == "float64" else -(1 << 63)
    while absent in held:
        absent = absent + "\x00" if kind == "string" else absent + 1
    return [{"value": v, "count": int(e)} for v, e, _, _ in rows[:a.arg]], int(acc.get_upper_bound(absent))


def finish(table, aggs, s, value_types: dict, offsets: dict | None = None):
    """The reducer's output with each approximate aggregate answered: ``<name>`` and ``<name>_err``.

    ``value_types``: each approximate aggregate's column type (what its sketches hold); ``offsets``: each
    quantile aggregate's offset, the job's (``states``).  A column of merged states is
    named by ``s(i, 's')`` (a list of one state per rank); a job whose rows travelled has the gathered values
    under the aggregate's own name, sketched here first."""
    import pyarrow as pa
    for i, a in enumerate(aggs):
        if a.func not in APPROX:
            continue
        merged = s(i, "s").strip('"')
        if merged in table.column_names:
            lists = table.column(merged).to_pylist()
            at = table.column_names.index(merged)
        else:
            at = table.column_names.index(a.name)
            lists = [[b] for b in build(a, table.column(a.name), quantile_kind(value_types[a.name]) if a.func in
                                        QUANTILES else "float64", (offsets or {}).get(a.name, 0)).to_pylist()]
        if a.func in QUANTILES:
            t = value_types[a.name]
            kind = quantile_kind(t)
            got = [_kll_answer(b or [], a, kind, (offsets or {}).get(a.name, 0)) for b in lists]
            # the column's own integer type, as DuckDB's approx_quantile answers; floats and decimals as DOUBLE
            value = pa.array([v for v, _ in got], pa.float64() if kind == "float64" else pa.from_numpy_dtype(
                np.dtype(kind)))
            value = value.cast(t) if kind != "float64" else value
            err = pa.array([e for _, e in got], pa.float64())
        elif a.func == "approx_distinct":
            from shardstats.worker.ops.distinct import relative_standard_error
            value = pa.array(_hll_answers(lists), pa.int64())
            err = pa.array([relative_standard_error(HLL_P)] * len(lists), pa.float64())
        else:
            kind = _value_kind(value_types[a.name])
            got = [_top_answer(b or [], a, kind) for b in lists]
            vt = {"int64": pa.int64(), "float64": pa.float64()}.get(kind, pa.string())
            value = pa.array([v for v, _ in got], pa.list_(pa.struct([("value", vt), ("count", pa.int64())])))
            err = pa.array([e for _, e in got], pa.int64())
        table = table.set_column(at, a.name, value)
        table = table.add_column(at + 1, f"{a.name}_err", err)
    return table
