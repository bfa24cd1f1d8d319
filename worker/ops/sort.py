"""sort: a total order over every row -- sampled range partitioning, a local sort per range, sorted Parquet parts.

1. Every rank draws a uniform sample of its rows' sort keys (its share of ``sample``
   rows in all, by its row count) and the samples go up the tree to rank 0.
2. Rank 0 sorts the sample and picks R - 1 split points at ranks floor(j*m/R); the
   split points reach every rank (a broadcast).
3. Each rank routes a row to the range that owns it: its rows and the split points
   are sorted together with the job's own sort keys (so descending keys, null
   placement, NaN and strings in byte order all route exactly as they will sort),
   and a row's range is the number of split points before it.
4. The credit shuffle moves each range to its reducer; the reducer sorts its indices and
   writes ``part-NNNNN.parquet`` (rank order = range order) a row group at a time, taken
   from its rows as it goes (the range is never held twice), to a folder or ``s3://``,
   committed when all have.

Ties: every row carries its place in the input (the file's position in the listing,
the row's position in the file) as a last, hidden sort key, so one value repeated in
60% of the rows spans adjacent parts instead of drowning one, and equal keys keep
the input's order in the output (a stable sort). With ``--partition-by`` the routing
uses only those columns (a prefix of ``--by``): every value's rows stay in one part,
sorted by the rest -- the secondary-sort pattern -- and the stats name the heaviest
values of the largest part.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from shardstats.lazy import numpy as np

from shardstats.errors import UsageError
from shardstats.worker.comm.collectives import allreduce, broadcast, sum_ints, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.comm.shuffle import ShuffleConfig
from shardstats.worker.ops.contract import KeyedParams, Op, column_list, option
from shardstats.worker.steps import numpy_step

FILE_COL, ROW_COL = "__sort_file", "__sort_row"
SAMPLE_BYTES = 2 << 20      # the ranks' range samples together at most: they reach rank 0 in frames of at most 4 MiB
DEFAULT_SAMPLE = 20_000
CANDIDATES = 64             # candidate split points a part, chosen among by the rows' exact counts (``_cut``)
PASS_CANDIDATES = 32        # candidate boundaries a pass beyond memory: each is a batch of every run (a pass reads
                            # its own: ~0.13 ms of CPU each), so fewer than a part's; a pass still misses its share
                            # by at most the rows between two neighbours, ~1/32 of a pass
CANDIDATE_BYTES = 1 << 20   # the candidates' rows at most: one broadcast frame


@dataclass(frozen=True)
class SortParams(KeyedParams):
    by: str | None = option(None, "Sort key columns, comma-separated, most significant first.", metavar="COLS")
    desc: str | None = option(None, "Columns of --by sorted in descending order, comma-separated.", metavar="COLS")
    nulls: str = option("last", "Where nulls go, for every key: first or last. NaN sorts after every number.",
                        choices=("first", "last"))
    partition_by: str | None = option(None, "Keep each value of these columns (a prefix of --by) in one part: "
                                      "secondary sort, e.g. --partition-by user --by user,ts.", metavar="COLS")
    compression: str = option("lz4", "Arrow IPC buffer compression of the shuffled rows. A sort moves every column "
                              "(the whole row, not a few keys), so lz4 by default: on TeraSort's rows it cut the "
                              "exchange's bytes 4x; its CPU effect was within the noise (less in 6 of 10 A/B "
                              "pairs at load 17-28).",
                              choices=("none", "lz4", "zstd"), advanced=True)
    sample: int = option(DEFAULT_SAMPLE, "Rows sampled for the split points, in all.", min=100, max=10_000_000,
                         advanced=True)

    def check(self) -> None:
        super().check()
        by = column_list(self.by)
        if not by:
            raise UsageError("--by: name the columns to sort by, e.g. --by ts or --by user,ts")
        if len(set(by)) != len(by):
            raise UsageError(f"--by: a column named twice in {self.by!r}")
        for c in column_list(self.desc):
            if c not in by:
                raise UsageError(f"--desc: {c!r} is not one of --by ({', '.join(by)})")
        part = column_list(self.partition_by)
        if part and tuple(by[:len(part)]) != part:
            raise UsageError(f"--partition-by: {', '.join(part)} must be the first columns of --by "
                             f"({', '.join(by)}), so that each value's rows are also in order")
        if not self.out:
            raise UsageError("--out: a sort writes Parquet parts; name the folder, e.g. --out sorted/")


def reads(p: SortParams) -> dict:
    # beyond memory: ranges of the sort's own order, one a pass (worker/engine/slices.py, plan_ranges below)
    return {"kind": "table", "columns": None, "cache": p.cache, "ordinals": True,
            "slice_on": {"main": column_list(p.by)}, "slice_ranges": True}


async def plan_ranges(comm: Communicator, sample, params: SortParams, passes: int) -> "RangePlan":
    """A sort taken in passes beyond memory: every rank's sample of its rows goes up the tree, rank 0 picks
    ``PASS_CANDIDATES`` candidate boundaries a pass, evenly spaced in the sorted sample (the job's own order, hidden
    input position included, as the split points), and the ranks agree on them.  The runs are cut at every
    candidate (``RangePlan.fine``), their rows between candidates counted and summed over the ranks, and the
    ``passes - 1`` boundaries chosen among the candidates by those exact counts (``RangePlan.regroup``) -- as a
    pass's split points are (``_cut``).  Each pass then sorts its range as a whole job, and parts named pass
    first concatenate into the input sorted.  Returns the plan: called as ``slots(table, side, passes)``, each
    row's range."""
    import pyarrow as pa
    from shardstats.worker.data import codec
    from shardstats.worker.engine.exchange import plain
    keys = column_list(params.by)
    part_keys = column_list(params.partition_by)
    route_order = _order(params, part_keys, False) if part_keys else _order(params, keys, True)
    cols = [c for c, _, _ in route_order]
    mine = plain(sample).select(cols)
    # Every rank thins its sample by the same stride, so the samples together stay under SAMPLE_BYTES and each
    # rank keeps its weight: 1e8 rows sampled 1 in 50 were 72 MB, a subtree's frame over the 4 MiB limit
    total = (await allreduce(comm, {"n": mine.nbytes}, sum_ints, "sort.sample"))["n"]
    if total > SAMPLE_BYTES:
        mine = mine.take(pa.array(np.arange(0, mine.num_rows, -(-total // SAMPLE_BYTES))))
    got = await tree_reduce(comm, {"p": [codec.encode(mine)]}, lambda a, b: {"p": a["p"] + b["p"]}, "sort.ranges")
    plan = None
    if got is not None:
        s = pa.concat_tables([codec.decode(x) for x in got["p"]], promote_options="permissive")
        ordered = s.take(_sort_indices(s, route_order))
        picks = _candidates(ordered, route_order, PASS_CANDIDATES * passes, whole_values=bool(part_keys))
        plan = {"b": codec.encode(ordered.take(pa.array(picks, pa.int64()))),
                "c": np.diff(np.concatenate([[0], picks, [ordered.num_rows]])).tolist()}    # the sample's counts
    plan = await broadcast(comm, plan, "sort.ranges.b")
    return RangePlan(codec.decode(plan["b"]), route_order, passes, np.asarray(plan["c"], np.int64))


class RangePlan:
    """A sort's ranges beyond memory: candidate boundaries (``buckets`` = candidates + 1 ranges between them,
    ``fine``) and the passes as runs of buckets (``cut``: the candidates chosen as the passes' boundaries) --
    first from the sample's counts, then (``regroup``) from the rows' exact counts, so a pass holds its share of
    the rows give or take the buckets at its ends (``planned``: each pass's rows)."""

    def __init__(self, candidates, order, passes: int, counts) -> None:
        self.candidates, self.order, self.passes = candidates, order, passes
        self.cols = [c for c, _, _ in order]
        self.buckets = candidates.num_rows + 1
        self.planned: list[int] | None = None
        self.cut, _ = _cut(counts, passes)

    def fine(self, t, side=None, n=None) -> "np.ndarray":
        """Each row's bucket: the candidates before it (ties: the candidate first, as the split points)."""
        from shardstats.worker.engine.exchange import plain
        if not self.candidates.num_rows or not t.num_rows:
            return np.zeros(t.num_rows, np.int64)
        return _route(plain(t).select(self.cols).cast(self.candidates.schema), self.candidates, self.order)

    def __call__(self, t, side=None, n=None) -> "np.ndarray":
        return np.searchsorted(self.cut, self.fine(t), "left")

    def regroup(self, counts) -> None:
        self.cut, self.planned = _cut(np.asarray(counts, np.int64), self.passes)

    def first_last(self, p: int) -> tuple[int, int]:
        """The buckets (first, last) of pass ``p`` (first > last: an empty pass)."""
        first = int(self.cut[p - 1]) + 1 if p > 0 else 0
        last = int(self.cut[p]) if p < self.passes - 1 else self.buckets - 1
        return first, last


def _value_starts(ordered, order) -> "np.ndarray":
    """The first rank of each value in the sorted sample ``ordered`` (equal by Arrow's dense rank: nulls equal,
    NaN equal, -0.0 = 0.0, as they sort)."""
    import pyarrow.compute as pc
    m = ordered.num_rows
    new = np.zeros(m, dtype=bool)
    new[0] = True
    for c, _, _ in order:
        rank = pc.rank(ordered.column(c).combine_chunks(), tiebreaker="dense").to_numpy()
        new[1:] |= rank[1:] != rank[:-1]
    return np.flatnonzero(new)


def _candidates(ordered, order, want: int, whole_values: bool) -> "np.ndarray":
    """Ranks in the sorted sample ``ordered`` of up to ``want`` candidate split points, evenly spaced, distinct,
    at most ``CANDIDATE_BYTES`` of rows (they travel to every rank in one frame).

    The split points are then chosen among them by the rows' exact counts between them (``_cut``), so the
    sample no longer decides a part's size to within its sampling error (a 20k-row sample over 10 parts: each
    part +-2% at one sigma, the largest of 110 parts of 11 passes 1.11x the mean at 1e8 rows), only which
    candidates exist: a part misses its share by at most the rows between two neighbouring candidates.
    With ``--partition-by`` (``whole_values``) the candidates are the first ranks of the values the picks fall in
    and of the values after them: a value is never split, and a heavy one can close a part or open one."""
    m = ordered.num_rows
    if not m or want <= 0:
        return np.zeros(0, np.int64)
    picks = np.unique(np.arange(1, want + 1, dtype=np.int64) * m // (want + 1))
    if whole_values:
        starts = np.append(_value_starts(ordered, order), m)
        k = np.searchsorted(starts, picks, "right") - 1      # the value each pick falls in: its start and end
        picks = np.unique(np.concatenate([starts[k], starts[k + 1]]))
        picks = picks[picks < m]
    row_bytes = ordered.nbytes / m
    cap = max(1, int(CANDIDATE_BYTES // max(1.0, row_bytes)))
    if picks.size > cap:
        picks = picks[np.linspace(0, picks.size - 1, cap).astype(np.int64)]
    return picks


def _add_counts(a: dict, b: dict) -> dict:
    return {"c": (np.asarray(a["c"], np.int64) + np.asarray(b["c"], np.int64)).tolist()}


def _cut(counts: "np.ndarray", r: int) -> tuple["np.ndarray", list[int]]:
    """The ``r - 1`` split points among the candidates and each part's rows, from ``counts``: the job's rows
    between neighbouring candidates (bucket b: after candidate b - 1, before candidate b; every rank's, summed).

    Split point j is the candidate whose rows before it are nearest j*n/r: it misses that by at most half the
    bucket the target falls in (the whole first or last bucket at the ends), so a part holds n/r rows give or
    take the buckets at its two ends -- never more than n/r + the largest bucket.  The parts' sizes are
    known exactly here (returned, and given in the stats), before a row moves."""
    n = int(counts.sum())
    c = counts.size - 1                      # candidates
    if c <= 0 or r <= 1:
        return np.zeros(0, np.int64), [n] + [0] * (r - 1)
    pos = np.cumsum(counts)[:-1]            # rows up to and including bucket i: before candidate i
    targets = np.arange(1, r, dtype=np.float64) * n / r
    k = np.searchsorted(pos, targets)
    lo, hi = np.clip(k - 1, 0, c - 1), np.clip(k, 0, c - 1)
    cut = np.where(np.abs(pos[lo] - targets) <= np.abs(pos[hi] - targets), lo, hi).astype(np.int64)
    edges = np.concatenate([[0], pos[cut], [n]])
    return cut, np.diff(edges).astype(np.int64).tolist()


def combine_passes(a: dict, b: dict, params=None) -> dict:
    """Two passes' answers: their parts together, the later pass's split points after the earlier's."""
    return {**a, "parts": a["parts"] + b["parts"], "splits": a["splits"] + b["splits"],
            "sample": a["sample"] + b["sample"], "candidates": a.get("candidates", 0) + b.get("candidates", 0),
            "planned_part_rows": a.get("planned_part_rows", []) + b.get("planned_part_rows", [])}


def _order(p: SortParams, keys: tuple[str, ...], tiebreak: bool) -> list[tuple[str, str, str]]:
    desc = set(column_list(p.desc))
    place = "at_start" if p.nulls == "first" else "at_end"
    out = [(k, "descending" if k in desc else "ascending", place) for k in keys]
    if tiebreak:
        out += [(FILE_COL, "ascending", "at_end"), (ROW_COL, "ascending", "at_end")]
    return out


def _sort_indices(table, order):
    """The indices of ``table`` in ``order``, NaN above every number in either direction, as SQL has it.

    Arrow places NaN with the nulls (``null_placement``): ascending with nulls first it put NaN before -1,
    descending with nulls last after it, where DuckDB, Spark and the sort's contract put NaN last ascending and
    first descending. A float key is therefore preceded by its is-NaN flag (null where the key is null, so nulls
    still go where asked), sorted in the key's direction. The sample, the routing and the reducer all sort here."""
    import pyarrow as pa
    import pyarrow.compute as pc
    flagged = []
    for i, (c, o, p) in enumerate(order):
        if pa.types.is_floating(table.schema.field(c).type):
            flag = f"__sort_nan{i}"
            table = table.append_column(flag, pc.is_nan(table.column(c)))
            flagged.append((flag, o, p))
        flagged.append((c, o, p))
    order = flagged
    try:
        return pc.sort_indices(table, sort_keys=order)
    except (TypeError, ValueError):           # pyarrow < 25: one null placement for every key
        return pc.sort_indices(table, sort_keys=[(c, o) for c, o, _ in order], null_placement=order[0][2])
    except pa.ArrowNotImplementedError as exc:
        raise UsageError(f"--by: a column of a type that cannot be sorted ({exc})") from None


def _local_order(rows, order):
    """The reducer's sort: the indices of ``rows`` in ``order``.  Keys all integers or strings go to DuckDB
    (keys and a row number only), which sorted a million 10-byte keys with the two hidden ones in 0.14 s of CPU
    against Arrow's 0.43 (0.19 against 0.20 for int64 keys); other types (floats: NaN's place differs when
    descending) stay with Arrow."""
    import pyarrow as pa
    types = [rows.schema.field(c).type for c, _, _ in order]
    if not all(_searchable(t) for t in types) or not rows.num_rows:
        return _sort_indices(rows, order)
    from shardstats.worker.engine.aggregate import q, run_sql
    keys = rows.select([c for c, _, _ in order]).append_column(
        "__sort_i", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    by = ", ".join(f"{q(c)} {'DESC' if o == 'descending' else 'ASC'} NULLS {'FIRST' if p == 'at_start' else 'LAST'}"
                   for c, o, p in order)
    return run_sql(f"SELECT __sort_i FROM t ORDER BY {by}", keys).column(0).combine_chunks()


def _sample(table, want: int, seed: int):
    n = table.num_rows
    if n <= want:
        return table
    rng = np.random.default_rng(seed)
    return table.take(np.sort(rng.choice(n, size=want, replace=False)))


def _searchable(t) -> bool:
    import pyarrow as pa
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def _route(table, splits, order) -> "np.ndarray":
    """The range of each row: the number of split points that sort before it (ties: the split point first).

    Where the first key is an integer or a string without nulls, a binary search of the split points by that
    key places every row whose key equals no split point's (numpy's searchsorted, Polars' for strings: byte
    order); only rows tied with a split point on it go through the whole order (``_route_all``). Sorting every
    row with the split points cost as much as the reducer's own sort (0.34 s of CPU a million 10-byte keys,
    against 0.05)."""
    c, direction, _ = order[0]
    col, bounds = table.column(c), splits.column(c)
    if not _searchable(col.type) or col.null_count or bounds.null_count or not splits.num_rows:
        return _route_all(table, splits, order)
    desc = direction == "descending"
    if _is_string(col.type):
        import polars as pl
        keys = pl.Series(bounds.to_pylist()[::-1] if desc else bounds.to_pylist(), dtype=pl.String)
        vals = pl.from_arrow(col.cast("large_string"))
        left = keys.search_sorted(vals, side="left").to_numpy().astype(np.int64)
        right = keys.search_sorted(vals, side="right").to_numpy().astype(np.int64)
    else:
        keys = bounds.to_numpy()[::-1] if desc else bounds.to_numpy()
        vals = col.to_numpy()
        left, right = np.searchsorted(keys, vals, "left"), np.searchsorted(keys, vals, "right")
    r = splits.num_rows
    lo, hi = (r - right, r - left) if desc else (left, right)
    out = lo.astype(np.int64)
    tied = np.flatnonzero(lo != hi)
    if tied.size:
        import pyarrow as pa
        out[tied] = _route_all(table.take(pa.array(tied)), splits, order)
    return out


def _is_string(t) -> bool:
    import pyarrow as pa
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _route_all(table, splits, order) -> "np.ndarray":
    """``_route`` by sorting the rows with the split points in the job's whole order."""
    import pyarrow as pa
    cols = [c for c, _, _ in order]
    both = pa.concat_tables([splits.select(cols), table.select(cols)])
    idx = _sort_indices(both, order).to_numpy()
    is_split = idx < splits.num_rows
    ranges = np.cumsum(is_split)                 # split points seen so far, in sorted order
    out = np.empty(table.num_rows, dtype=np.int64)
    rows = ~is_split
    out[idx[rows] - splits.num_rows] = ranges[rows]
    return out


async def sort(comm: Communicator, table, params: SortParams) -> tuple[dict | None, dict]:
    import pyarrow as pa
    from shardstats.worker.data import codec
    from shardstats.worker.engine.answer import ROW_GROUP_ROWS, Pieces, write_parts
    from shardstats.worker.engine.exchange import exchange_to
    from shardstats.worker.engine.exchange import plain
    table = plain(table)          # sorting (and the wire) wants plain columns, not dictionaries
    keys = column_list(params.by)
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise UsageError(f"--by: no column {missing[0]!r} (the input has: "
                         f"{', '.join(c for c in table.column_names if not c.startswith('__sort')) or 'none'})")
    if FILE_COL not in table.column_names:        # a cached dataset: its rows in this worker's order
        table = table.append_column(FILE_COL, pa.array(np.full(table.num_rows, comm.rank, np.int64)))
        table = table.append_column(ROW_COL, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    part_keys = column_list(params.partition_by)
    route_order = _order(params, part_keys, False) if part_keys else _order(params, keys, True)
    sort_order = _order(params, keys, True)
    t0, c0 = time.perf_counter(), _cpu()
    comm.progress.set("sample")
    total = comm.total if comm.total is not None else table.num_rows * comm.size
    want = int(np.ceil(params.sample * table.num_rows / max(1, total)))
    route_cols = [c for c, _, _ in route_order]
    mine = await numpy_step(table.num_rows, _sample, table.select(route_cols), want, comm.rank + 7)
    got = await tree_reduce(comm, {"p": [codec.encode(mine)]}, lambda a, b: {"p": a["p"] + b["p"]}, "sort.sample")
    plan = None
    if got is not None:
        sample = pa.concat_tables([codec.decode(p) for p in got["p"]])
        ordered = sample.take(_sort_indices(sample, route_order))
        picks = _candidates(ordered, route_order, CANDIDATES * comm.size, whole_values=bool(part_keys))
        plan = {"p": codec.encode(ordered.take(pa.array(picks, pa.int64()))), "m": ordered.num_rows}
    plan = await broadcast(comm, plan, "sort.splits")
    candidates = codec.decode(plan["p"])
    t1, c1 = time.perf_counter(), _cpu()
    comm.progress.set("route")
    # every row's place among the candidates, then the split points chosen from the rows' exact counts between them
    buckets = await numpy_step(table.num_rows, _route, table, candidates, route_order) if candidates.num_rows \
        else np.zeros(table.num_rows, dtype=np.int64)
    counts = await allreduce(comm, {"c": np.bincount(buckets, minlength=candidates.num_rows + 1).tolist()},
                             _add_counts, "sort.counts")
    cut, planned = _cut(np.asarray(counts["c"], np.int64), comm.size)
    ranges = np.searchsorted(cut, buckets, "left")       # the chosen split points before each row
    del buckets
    splits = candidates.take(pa.array(cut, pa.int64()))
    t2, c2 = time.perf_counter(), _cpu()
    box = [table]          # handed over: the exchange frees the rows once split (the caller holds them no more)
    del table
    rows, ex = await exchange_to(comm, box, ranges, ShuffleConfig.from_params(params, None),
                                 compression=params.compression)
    comm.progress.set("sort")
    t3, c3 = time.perf_counter(), _cpu()
    idx = await numpy_step(rows.num_rows, _local_order, rows, sort_order)
    out = rows.drop_columns([FILE_COL, ROW_COL])
    del rows
    # one chunk, not the shuffle's ~125: taking row groups from it cost 0.14 s of CPU a million rows, 0.41 from
    # the chunks (where each take also concatenated them: Arrow's pool peaked higher than with this one copy)
    out = await numpy_step(out.num_rows, out.combine_chunks)
    t4, c4 = time.perf_counter(), _cpu()
    stats = {"map_pairs": out.num_rows, "combined_pairs": 0, **ex["counters"], "rounds": 3,
             "part_rows": out.num_rows, "part_bytes": out.nbytes,
             "pass_part_rows": [out.num_rows], "pass_part_bytes": [out.nbytes],     # beyond memory: a part a pass
             "phases": {"sample": t1 - t0, "route": t2 - t1, **ex["phases"], "sort": t4 - t3},
             "phase_cpu": {"sample": c1 - c0, "route": c2 - c1, "exchange": c3 - c2, "sort": c4 - c3}}
    stats["combined_pairs"] = stats["map_pairs"]
    if part_keys and out.num_rows:
        from shardstats.worker.engine.aggregate import q, run_sql
        k = ", ".join(q(c) for c in part_keys)
        heavy = run_sql(f"SELECT {k}, count(*) AS n FROM t GROUP BY {k} ORDER BY n DESC LIMIT 3", out)
        stats["heaviest"] = [[*(_plain(v) for v in list(r.values())[:-1]), r["n"]] for r in heavy.to_pylist()]
    # Streaming output: the range is sorted once (its indices), then taken and written a row group at a time,
    # so a worker never holds its range sorted beside it unsorted -- one row group at a time instead
    pieces = Pieces(out.schema, out.num_rows, lambda: (out.take(idx.slice(i, ROW_GROUP_ROWS))
                                                       for i in range(0, out.num_rows, ROW_GROUP_ROWS)))
    t5, c5 = time.perf_counter(), _cpu()
    stats.update(await write_parts(comm, pieces, params.out, comm.job, overwrite=params.overwrite))
    stats["phases"]["write"] = time.perf_counter() - t5
    stats["phase_cpu"]["write"] = _cpu() - c5
    head = {"splits": _rows(splits.drop_columns([c for c in splits.column_names if c.startswith("__sort")])),
            "sample": plan["m"], "candidates": candidates.num_rows, "planned_part_rows": planned}
    if comm.rank != 0:
        return None, stats
    return {"out": params.out, "parts": comm.size, **head}, stats


def _cpu() -> float:
    """This worker's CPU seconds so far (every thread, user and system): a phase's CPU is the difference, which
    on a loaded machine says more than its wall time (a worker runs one job at a time)."""
    return sum(os.times()[:2])


def _plain(v):
    from shardstats.worker.engine.answer import plain
    return plain(v)


def _rows(t) -> list[list]:
    from shardstats.worker.engine.answer import rows_of
    return rows_of(t)


def summarize(workers: list[dict]) -> dict:
    from shardstats.worker.engine import counter
    out = counter.summarize(workers)
    ws = sorted(workers, key=lambda w: w.get("rank", 0))
    rows = _parts(ws, "rows")
    mean = sum(rows) / len(rows) if rows else 0
    out["part_rows"] = rows
    out["part_bytes"] = _parts(ws, "bytes")
    out["imbalance"] = round(max(rows) / mean, 4) if mean else 1.0
    big = max(ws, key=lambda w: w.get("part_rows", 0)) if ws else {}
    if "heaviest" in big:
        out["heaviest_in_largest_part"] = big["heaviest"]
    return out


def _parts(ws: list[dict], what: str) -> list[int]:
    """Rows (or bytes) of every part in name order: beyond memory each worker writes a part a pass
    (``part-PPPP-RRRRR``: pass first), and the largest part is measured against those, not against a worker's
    sum over its passes (52 parts of 13 passes once showed as 4 worker totals, imbalance 1.005 for 1.047)."""
    each = [w.get(f"pass_part_{what}") for w in ws]
    if all(isinstance(e, list) for e in each) and len({len(e) for e in each}) == 1 and len(each[0]) > 1:
        return [e[p] for p in range(len(each[0])) for e in each]
    return [w.get(f"part_{what}", 0) for w in ws]


def render(r: dict) -> list[str]:
    return [f"sorted into {r['parts']} parts under {r['out']}/ (part-00000.parquet first)",
            f"split points from a sample of {r['sample']:,} rows: " + "; ".join(
                ", ".join(map(str, s)) for s in r["splits"][:9]) + (" ..." if len(r["splits"]) > 9 else "")]


OP = Op(
    name="sort",
    summary="A total order over every row: sampled range partitioning, sorted Parquet parts whose concatenation "
            "in name order is the input sorted.",
    params=SortParams,
    run=sort,
    render=render,
    phases=("load", "sample", "route", "partition", "shuffle", "sort", "write"),
    examples=("cluster submit sort --input events/ --by ts --out sorted/",
              "cluster submit sort --input logs/ --partition-by user --by user,ts --out by-user/"),
    summarize=summarize,
    reads=reads,
    slice_ranges=plan_ranges,
    combine_passes=combine_passes,
)
