"""A keyed job over more records than a worker's memory holds: one hash slice of the keys a pass.

Why it is exact: a group-by's groups and a join's matches are decided per key, and pass ``p``
reads, on every worker, exactly the rows whose key hash falls in slice ``p`` (both sides of a
join sliced by their own key columns), so each pass is a whole job over a dataset disjoint in
keys from every other pass; the passes' rows together are the job's rows.  Each pass reads the
files again, one at a time, keeping only its slice: a worker holds one file's rows and one
slice, never its whole share.

The slice hash must agree for keys that the run's schema agreement will make equal: a file
whose key column is int64 and another whose key column is float64 meet as float64 at the run,
after the slicing.  So numbers of any type are hashed as float64 (equal numbers, equal hash;
two large ints that round to one float merely share a slice), and the rest by
``hashing.hash_array``.  Slices take the hash's low 32 bits; the exchange's owners take its high
32 (``hashing.owners_of``), so each pass still spreads over every reducer.
"""
from __future__ import annotations

import asyncio
import time
from operator import itemgetter

from shardstats.lazy import numpy as np

from shardstats.worker.data.hashing import NULL_HASH, hash_array, hash_columns
from shardstats.worker.ops.passes import add_stats

EXPANSION = {".parquet": 4.0}    # a file's bytes in memory over its bytes on disk (a guess; others: 1.5)


def _key_hash(col) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        # unsafe: an int64 beyond 2**53 rounds (Arrow's checked cast refused it, and the read failed as "not a
        # readable Parquet file"); rounding only makes neighbours share a slice
        col = pc.cast(col, pa.float64(), safe=False)
    return hash_array(col)


def slice_hash(table, keys) -> np.ndarray:
    """One uint64 per row, equal for rows whose keys will be equal after the run's schema agreement."""
    if not keys:
        return np.full(table.num_rows, NULL_HASH, np.uint64)
    return hash_columns(table, keys, _key_hash)


def slot_of(h: np.ndarray, passes: int) -> np.ndarray:
    return (((h & np.uint64(0xFFFFFFFF)) * np.uint64(passes)) >> np.uint64(32)).astype(np.uint32)


def hash_slots(slice_on: dict):
    """``slots(table, side, passes)`` of a hash-sliced job: each row's slice of its side's key hash."""
    return lambda t, side, n: slot_of(slice_hash(t, slice_on.get(side) or slice_on["main"]), n)


def keeper(slots):
    """``keep_for(p, passes)`` from ``slots``: the rows of each piece in slice ``p`` (all rows for one pass)."""
    def keep_for(p: int, n: int):
        def keep(t, side):
            import pyarrow as pa
            if n <= 1 or t.num_rows == 0:
                return t
            return t.filter(pa.array(slots(t, side, n) == p))
        return keep
    return keep_for


def estimate_bytes(sizes_and_suffixes) -> int:
    return int(sum(size * EXPANSION.get(suffix, 1.5) for size, suffix in sizes_and_suffixes))


def read_share(path: str, columns: list[str] | None) -> float:
    """The share of a local Parquet file's bytes that the job reads: its ``columns``' chunks over all chunks,
    from the footer (1.0 when every column is read, or the footer cannot say).

    The guess of a share's size in memory is ``EXPANSION`` x the bytes a job reads, not x the file: db-benchmark's
    q4 reads 4 of G1's 9 columns, and at 1e8 rows the whole files' guess sent every worker through 4 passes and
    1.9 GiB of spill for 200 MB of rows (18.6 s against 0.7 for DuckDB). A job reading most of the columns (q10:
    7 of 9) keeps the margin that stops its many-group passes from being OOM-killed."""
    if not columns:
        return 1.0
    import pyarrow.parquet as pq
    try:
        meta = pq.read_metadata(path)
    except (OSError, ValueError):
        return 1.0                     # the read names the problem
    wanted = set(columns)
    read = total = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            total += col.total_compressed_size
            if col.path_in_schema.split(".")[0] in wanted:
                read += col.total_compressed_size
    return read / total if total else 1.0


class Sliced:
    """A worker's share of a keyed job, read one slice a pass.

    ``read_with(keep)`` reads the share keeping, of each file, the rows ``keep(table, side)`` returns, and
    gives (table or Sides, described).  Each row's slice is ``slots(table, side, passes)``: a hash slice of
    the keys (known at the load), or, for a sort, a range between boundaries the ranks agree on at the run
    (``ranges``: ``sample`` holds this worker's sample of the rows for that).

    Beyond memory the share is read once into ``runs`` on disk (``worker/engine/runs.py``): at the load for a
    hash job (which also gives every file's types for the schema agreement), at the first pass for a sort.
    A share that fit in memory (``in_memory``) is filtered there each pass instead.  The job's passes are the
    most any worker needs; runs cut in fewer are read by ranges of the hash."""

    def __init__(self, read_with, passes: int, slots=None, sample=None, runs=None, flush_bytes: int = 0,
                 num_rows: int = 0, premap=None) -> None:
        self.read_with = read_with
        self.premap = premap           # a text op's Premap (worker/engine/tokens.py): runs of pairs, not documents
        self.passes = passes
        self.slots = slots
        self.sample = sample           # a range-sliced job's sample of this worker's rows
        self.whole_rows = sample is not None   # a sort: its runs hold whole rows (compressed: RANGE_RUN_COMPRESSION)
                                               # cut at the candidate boundaries of its RangePlan (``slots``)
        self.runs = runs
        self.flush_bytes = flush_bytes  # > 0: partition into runs (in the job's spill folder) before the passes
        self.schema = None
        self.described = None          # every file's types, as the partitioning read them
        self.num_rows = num_rows or getattr(sample, "num_rows", 0)
        self.ranges_planned = False    # a sort whose RangePlan is in ``slots`` (its sample then dropped)

    @property
    def ranges(self) -> bool:
        return self.sample is not None or self.ranges_planned

    def bucket_rows(self) -> "np.ndarray":
        """A sort's rows between each two neighbouring candidate boundaries (``RangePlan.buckets``): counted as
        the runs were cut, or, for a share without runs, by reading it once more (a share in memory: a filter)."""
        if self.runs is not None:
            return self.runs.bucket_rows()
        counts = np.zeros(self.slots.buckets, np.int64)

        def count(t, side):
            counts[:] += np.bincount(self.slots.fine(t), minlength=self.slots.buckets)
            return t.schema.empty_table()
        self.read_with(count)
        return counts

    def conform(self, schema) -> "Sliced":
        if self.premap is None:        # pairs have the op's own types; the agreed schema is the documents'
            self.schema = schema
        return self

    def partition(self, spill, passes: int) -> None:
        """Reads the share once, each row to the runs of its slice (on a thread: it reads and writes files)."""
        from shardstats.worker.engine.runs import Runs
        # a sort's runs hold whole rows (every column), compressed; a hash job's runs stay plain (not measured)
        if self.whole_rows:      # a sort: runs cut at every candidate boundary, the passes chosen from their counts
            runs = Runs(spill, self.slots.buckets, self.slots.fine, self.flush_bytes,
                        compression=RANGE_RUN_COMPRESSION, groups=self.slots)
        else:
            runs = Runs(spill, passes, self.slots, self.flush_bytes, self.premap)
        try:
            _, self.described = self.read_with(runs.keep)
            self.runs = runs.finish()
        finally:
            if self.premap is not None:
                self.premap.close()

    def from_table(self, table, spill, passes: int) -> None:
        """Runs of a share already read into memory, a flush of its rows at a time (``partition`` writes them
        as the files are read; this is for a share loaded whole to be measured first: jobs._combining_share)."""
        from shardstats.worker.engine.runs import Runs
        runs = Runs(spill, passes, self.slots, self.flush_bytes)
        step = max(1, int(table.num_rows * self.flush_bytes / max(1, table.nbytes)))
        for start in range(0, table.num_rows, step):
            runs.keep(table.slice(start, step), "main")
        self.runs = runs.finish()

    def _target(self, side: str):
        from shardstats.worker import jobs
        described = self.schema.get(side) if isinstance(self.schema, dict) else self.schema
        return None if described is None else jobs.arrow_schema(described)

    def _from_runs(self, p: int, passes: int):
        import pyarrow as pa
        from shardstats.worker import jobs
        targets: dict = {}

        def conform(piece, side):
            if side not in targets:
                targets[side] = self._target(side)
            return piece if targets[side] is None else jobs.conform(piece, targets[side])
        got = self.runs.read(p, passes, conform)
        sides = list(self.schema) if isinstance(self.schema, dict) else ["main"]
        out = {}
        for side in sides:
            pieces, target = got.get(side), targets.get(side, self._target(side))
            if pieces:
                out[side] = jobs._concat(pieces) if target is not None else \
                    pa.concat_tables(pieces, promote_options="permissive")
            elif self.premap is not None:
                out[side] = self.premap.empty()
            else:
                out[side] = target.empty_table() if target is not None else pa.table({})
        return jobs.Sides(out) if isinstance(self.schema, dict) else out["main"]

    def _conformed(self, values):
        from shardstats.worker import jobs
        if self.schema is None:
            return values
        if isinstance(values, jobs.Sides):
            return values.conform(self.schema)
        return jobs.conform(values, jobs.arrow_schema(self.schema))

    async def read(self, p: int, passes: int):
        if self.runs is not None:
            return await asyncio.to_thread(self._from_runs, p, passes)
        values, _ = await asyncio.to_thread(self.read_with, keeper(self.slots)(p, passes))
        return self._conformed(values)

    def __len__(self) -> int:
        return self.num_rows


RANGE_RUN_COMPRESSION = "lz4"    # a sort's runs (Runs.compression): TeraSort at 1e7 rows in 900 MiB workers,
                                 # 1.32 GB spilled (written through to the disk) became ~0.35 GB
SAMPLE_EVERY = 50       # a range-sliced job samples one row in this many of each file at the load


def sample_rows(t, side=None):
    """About one row in ``SAMPLE_EVERY``, spread over the table (a regular sample: no randomness to agree on)."""
    import pyarrow as pa
    if t.num_rows <= SAMPLE_EVERY:
        return t.slice(0, min(1, t.num_rows))
    return t.take(pa.array(np.arange(SAMPLE_EVERY // 2, t.num_rows, SAMPLE_EVERY)))


def premap_for(spec: dict, memory_limit: int | None = None):
    """What a share's records become as they are read, for an op whose keys exist only after its map: a text
    op's tokens (worker/engine/tokens.py), a MapReduce job's mapper in its child process (worker/usercode.py).
    Each has ``__call__(table, side)``, ``merge``, ``counts(first)``, ``empty()`` and ``close()``."""
    if spec["op"] == "mapreduce":
        from shardstats.worker.usercode import MapPremap
        return MapPremap(spec, memory_limit)
    from shardstats.worker.engine.tokens import Premap
    return Premap(spec)


def in_memory(values, read: dict) -> Sliced:
    """A share that fit in memory, sliced there, for a job whose other workers take passes (a text op's
    documents tokenized first: its slices are of the words)."""
    from shardstats.worker import jobs
    premap = None
    if read.get("premap"):
        premap = premap_for(read["premap"])
        try:
            values = premap(values)
        finally:
            premap.close()

    def read_with(keep):
        if isinstance(values, jobs.Sides):
            return jobs.Sides({name: None if t is None else keep(t, name) for name, t in values.items()}), None
        return keep(values, "main"), None
    if read.get("slice_ranges"):
        return Sliced(read_with, 1, sample=sample_rows(values))
    return Sliced(read_with, 1, slots=hash_slots(read["slice_on"]), premap=premap)


async def run_in_slices(comm, sliced: Sliced, op, params) -> tuple[dict | None, dict]:
    """``op`` once a slice, ``comm.passes`` times; its rows answers combined: counts added, heads merged in
    the answer's order."""
    answer, stats = None, {}
    read_s = 0.0
    passes = comm.passes
    total, comm.total = comm.total, None     # the load counted a slice or a sample, not the rows
    if sliced.ranges:      # a sort: every rank's sample gives the passes' boundaries (the op's own order)
        sliced.slots = await op.slice_ranges(comm, sliced.sample, params, passes)
        sliced.sample = None
        sliced.ranges_planned = True
    if sliced.runs is None and sliced.flush_bytes and comm.spill is not None:
        t = time.perf_counter()
        comm.progress.set("partition")
        await asyncio.to_thread(sliced.partition, comm.spill, passes)
        read_s += time.perf_counter() - t
    if sliced.ranges:      # the passes' boundaries from the rows' exact counts between the candidates
        counts = await asyncio.to_thread(sliced.bucket_rows)
        from shardstats.worker.comm.collectives import allreduce
        summed = await allreduce(comm, {"c": counts.tolist()}, _add_lists, "sort.ranges.counts")
        sliced.slots.regroup(summed["c"])
    try:
        for p in range(passes):
            t = time.perf_counter()
            comm.progress.set("read", p + 1, passes)
            values = await sliced.read(p, passes)
            read_s += time.perf_counter() - t
            comm.pass_index = p
            if sliced.premap is not None:
                comm.premapped = sliced.premap.counts(p == 0)
            box = [values]        # the op holds the pass's rows alone (a sort frees them once split)
            del values
            got, st = await op.run(comm, box.pop(), params)
            _release()
            stats = add_stats(stats, st)
            if got is not None:
                combine = op.combine_passes or (lambda a, b, params: combine_rows(a, b, getattr(params, "limit", 0)))
                answer = got if answer is None else combine(answer, got, params)
    except BaseException:
        from shardstats.worker.engine.answer import discard_parts
        discard_parts(comm)          # the parts of earlier passes, written but never committed
        raise
    finally:
        comm.pass_index = None
        comm.premapped = None
        comm.total = total
    stats.setdefault("phases", {})["read"] = read_s
    stats["passes"] = passes
    if answer is not None and getattr(sliced.slots, "planned", None) is not None:
        answer["pass_rows"] = sliced.slots.planned      # a sort's rows a pass, counted before the first
    return answer, stats


def _add_lists(a: dict, b: dict) -> dict:
    return {"c": (np.asarray(a["c"], np.int64) + np.asarray(b["c"], np.int64)).tolist()}


def _release() -> None:
    """A pass's memory back to the OS before the next: Arrow's pool (mimalloc) and the C heap keep freed
    pages otherwise, and a worker taking forty passes would hold forty passes' worth."""
    import pyarrow as pa
    from shardstats.worker import memory
    pa.default_memory_pool().release_unused()
    memory.release()


def combine_rows(a: dict, b: dict, limit: int) -> dict:
    """Two passes' rows answers (``answer.rows_answer``) as one: disjoint keys, so rows add and the head of
    the union is the first ``limit`` of both heads in the answer's order (nulls last, as each head has them)."""
    out = dict(a)
    out["rows"] = a["rows"] + b["rows"]
    if a.get("out"):
        return out
    rows = a["data"] + b["data"]
    cols = a["columns"]
    for name, direction in reversed(a.get("_order") or []):
        i = cols.index(name)
        present = [r for r in rows if r[i] is not None]
        present.sort(key=itemgetter(i), reverse=direction == "descending")     # stable either way
        rows = present + [r for r in rows if r[i] is None]
    from shardstats.worker.engine.answer import fit
    out["data"] = fit(rows[:limit] if limit else rows)
    return out
