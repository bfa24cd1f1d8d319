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
  Python, values never are. Integer columns: a group's sketch holds ``value - offset``, the
  group's own offset (``sketches.kll_offset`` of its min/max, as ``median --approx`` takes the
  job's; on a grid of 2**52, so most ranks of a group choose the same one), exact as doubles
  when the group's values lie within 2**53 of one another; the state carries it, and states of
  other offsets are moved to one before they merge (``_rebase``: no communication before the
  states are built). Answers are values of the column, in its own type (DuckDB's
  ``approx_quantile`` of a BIGINT is a BIGINT). A group spread wider than 2**53 and beyond
  +-2**53 is sketched rounded: its ``_err`` is widened by the share of its values the rounding
  made ties of the answer (``_kll_answer``), and the job's stats count such groups.
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
# a sketch's state: ``K`` + the KLL sketch (floats), or ``J`` + the group's offset (8 bytes, the kind's own
# integer) + the KLL sketch of its integers less the offset
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


def _offsets(flat, off, kind: str):
    """Each group's offset (``sketches.kll_offset`` of its min and max: 0 for a group of floats, of few values,
    or exact as doubles already), one per group, and the values less their group's offset as float64 -- exact
    but for a group spread wider than 2**53 and beyond it (rounded)."""
    from shardstats.sketches import kll_offset
    groups = len(off) - 1
    if kind == "float64" or not len(flat):
        return [0] * groups, flat.astype(np.float64)
    counts = np.diff(off)
    offs = [0] * groups
    if counts.max() > RAW_MAX:
        held = np.flatnonzero(counts)               # the non-empty groups' starts cut ``flat`` into their runs
        lo, hi = np.minimum.reduceat(flat, off[held]), np.maximum.reduceat(flat, off[held])
        for j, a, b in zip(held.tolist(), lo.tolist(), hi.tolist()):       # one call per group, not per value
            if counts[j] > RAW_MAX:
                offs[j] = kll_offset(a, b)
    if not any(offs):
        return offs, flat.astype(np.float64)
    # the offset is at or below every value of its group and within 2**53 of them: no overflow, no rounding
    return offs, (flat - np.repeat(np.asarray(offs, flat.dtype), counts)).astype(np.float64)


def _kll(values, held, offset: int, kind: str) -> bytes:
    """A group's quantile state: its values themselves (a tag of their kind + the values) while they are few --
    exact, as small as a sketch of them, and no library call -- else the KLL sketch of ``held`` (the values
    less ``offset``, as float64): ``K`` + it (floats) or ``J`` + the offset + it (integers)."""
    if len(values) <= RAW_MAX:
        return _RAW[kind] + values.tobytes()
    import datasketches as ds
    s = ds.kll_doubles_sketch(KLL_K)
    s.update(held)
    if kind == "float64":
        return b"K" + s.serialize()
    return b"J" + np.array([offset], kind).tobytes() + s.serialize()


def _rebase(data: bytes, offset: int, to: int, kind: str):
    """A serialized KLL sketch of integers less ``offset`` as one of them less ``to``: every item it holds (and
    its min and max) moved by ``offset - to``, in integer arithmetic, then back to float64 -- exact when the
    group lies within 2**53 of ``to``, else each rounded once, as a sketch of the rounded values would hold
    them (the order is kept: the sketch stays valid).  The library has no shift, and its format keeps the
    items as the last doubles of the blob: min, max and the retained items (one item alone when n == 1)."""
    import datasketches as ds
    s = ds.kll_doubles_sketch.deserialize(data)
    if s.is_empty() or offset == to:
        return s
    tail = s.num_retained + (2 if s.n > 1 else 0)
    buf = bytearray(data)
    at = len(buf) - 8 * tail
    items = np.frombuffer(bytes(buf[at:]), np.float64).astype(kind) + np.array(offset, kind)   # the values
    buf[at:] = (items - np.array(to, kind)).astype(np.float64).tobytes()
    out = ds.kll_doubles_sketch.deserialize(bytes(buf))
    if out.n != s.n or out.get_min_value() != float(int(s.get_min_value()) + offset - to):
        raise AssertionError("the KLL sketch's serialized layout is not the one _rebase knows")
    return out


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


def build(a, col, kind: str = "float64") -> "object":
    """A column of gathered values (lists, or histogram maps) as a binary column of one sketch per row.
    Quantiles: ``kind`` (``quantile_kind``) says how the values are held."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if a.func in QUANTILES:
        col = pc.fill_null(col, pa.scalar([], col.type))
        flat = col.flatten().cast(pa.float64() if kind == "float64" else pa.from_numpy_dtype(np.dtype(kind)))
        flat = flat.to_numpy(zero_copy_only=False)
        off = col.offsets.to_numpy() - col.offsets[0].as_py()
        offs, held = _offsets(flat, off, kind)          # array ops for every group (``held``: new and writable)
        out = [_kll(flat[off[j]:off[j + 1]], held[off[j]:off[j + 1]], offs[j], kind) for j in range(n)]
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


def states(table, aggs, s, kinds: dict | None = None):
    """The combiner's output with each approximate aggregate's gathered values replaced by its sketches
    (``kinds``: each quantile aggregate's ``quantile_kind``, by its name)."""
    kinds = kinds or {}
    for i, a in enumerate(aggs):
        if a.func in APPROX:
            name = s(i, "raw").strip('"')
            table = table.set_column(table.column_names.index(name), s(i, "s").strip('"'),
                                     build(a, table.column(name), kinds.get(a.name, "float64")))
    return table


# ---- finish: each key's states merged, answered with the bound ---------------------------------------------

def _kll_answer(blobs, a, kind: str = "float64") -> tuple[int | float | None, float, bool]:
    """A key's quantile from its ranks' states, its bound, and whether the sketch rounded: exact from the values
    when every state holds its values, else from the KLL sketches merged (the values of the others added to
    them).  Integer columns (``kind``): the sketches hold values less their offsets, moved to one offset for
    the whole group first (``_rebase``), and the answer is the column's value.

    A sketch of integers beyond +-2**53 that lie wider apart than 2**53 holds them rounded: the answer's
    double x stands for every value that rounded to it, ranked as ties.  The answer's true rank interval in
    the integers' order lies inside x's among the doubles, which lies within ``eps`` of the rank asked; so the
    bound is ``eps`` plus the share of values at x (read from the sketch, itself within ``eps`` at each end:
    ``3 eps + mass``; the exact mass when the sketch kept every value)."""
    import datasketches as ds
    from shardstats.sketches import kll_offset
    blobs = [b for b in blobs if b is not None]
    raw = [np.frombuffer(b, _TAG_DTYPE[b[:1]], offset=1) for b in blobs if b[:1] in _TAG_DTYPE]
    r = 0.5 if a.func == "approx_median" else float(a.arg)
    if not any(b[:1] in b"KJ" for b in blobs):
        v = np.sort(np.concatenate(raw)) if raw else np.zeros(0)
        if not len(v):
            return None, 0.0, False
        # KLL's inclusive quantile of an exact sketch: the smallest value whose rank reaches r (r = 0: the minimum)
        return v[max(0, math.ceil(r * len(v)) - 1)].item(), 0.0, False
    if kind == "float64":
        sketches, to = [ds.kll_doubles_sketch.deserialize(b[1:]) for b in blobs if b[:1] == b"K"], 0
    else:
        held = [(int(np.frombuffer(b, kind, 1, 1)[0]), b[9:]) for b in blobs if b[:1] == b"J"]
        to = held[0][0]
        if any(o != to for o, _ in held):           # ranks chose other offsets: one for the whole group
            ends = [int(x) for v in raw if len(v) for x in (v.min(), v.max())]
            for o, b in held:
                s = ds.kll_doubles_sketch.deserialize(b)
                if not s.is_empty():
                    ends += [o + int(s.get_min_value()), o + int(s.get_max_value())]
            to = kll_offset(min(ends), max(ends))
        sketches = [_rebase(b, o, to, kind) for o, b in held]
    acc = sketches[0]
    for s in sketches[1:]:
        acc.merge(s)
    for v in raw:
        if len(v):
            acc.update(v.astype(np.float64) if kind == "float64" else (v - np.array(to, kind)).astype(np.float64))
    x = acc.get_min_value() if r <= 0 else acc.get_max_value() if r >= 1 else acc.get_quantile(r, True)
    eps = acc.normalized_rank_error(False) if acc.is_estimation_mode() else 0.0
    if kind == "float64":
        return x, eps, False
    rounded = max(abs(acc.get_min_value()), abs(acc.get_max_value())) > EXACT_SPAN
    if rounded:                                     # ties in the doubles widen the bound in the integers' order
        eps = min(1.0, 3 * eps + acc.get_rank(x, True) - acc.get_rank(x, False))
    lo, hi = _LIMITS[kind]
    return min(max(to + int(x), lo), hi), eps, rounded


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


def finish(table, aggs, s, value_types: dict, rounded: dict | None = None):
    """The reducer's output with each approximate aggregate answered: ``<name>`` and ``<name>_err``.

    ``value_types``: each approximate aggregate's column type (what its sketches hold); ``rounded``, when
    given, gets each quantile aggregate's count of groups sketched rounded (``_kll_answer``).  A column of
    merged states is
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
                                        QUANTILES else "float64").to_pylist()]
        if a.func in QUANTILES:
            t = value_types[a.name]
            kind = quantile_kind(t)
            got = [_kll_answer(b or [], a, kind) for b in lists]
            # the column's own integer type, as DuckDB's approx_quantile answers; floats and decimals as DOUBLE
            value = pa.array([v for v, _, _ in got], pa.float64() if kind == "float64" else pa.from_numpy_dtype(
                np.dtype(kind)))
            value = value.cast(t) if kind != "float64" else value
            err = pa.array([e for _, e, _ in got], pa.float64())
            if rounded is not None and any(w for _, _, w in got):
                rounded[a.name] = rounded.get(a.name, 0) + sum(w for _, _, w in got)
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
