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
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        col = col.cast(pa.float64())
    return hash_array(col)


def slice_hash(table, keys) -> np.ndarray:
    """One uint64 per row, equal for rows whose keys will be equal after the run's schema agreement."""
    if not keys:
        return np.full(table.num_rows, NULL_HASH, np.uint64)
    return hash_columns(table, keys, _key_hash)


def slot_of(h: np.ndarray, passes: int) -> np.ndarray:
    return (((h & np.uint64(0xFFFFFFFF)) * np.uint64(passes)) >> np.uint64(32)).astype(np.uint32)


def keep_slice(table, keys, p: int, passes: int):
    """The rows of ``table`` in slice ``p`` of ``passes`` (all rows for one pass)."""
    import pyarrow as pa
    if passes <= 1 or table.num_rows == 0:
        return table
    mask = slot_of(slice_hash(table, keys), passes) == p
    return table.filter(pa.array(mask))


def estimate_bytes(sizes_and_suffixes) -> int:
    return int(sum(size * EXPANSION.get(suffix, 1.5) for size, suffix in sizes_and_suffixes))


class Sliced:
    """A worker's share of a keyed job, read one slice a pass.

    ``read_with(keep)`` reads the share keeping, of each file, the rows ``keep(table, side)`` returns, and
    gives (table or Sides, described); ``keep_for(p, passes)`` is pass ``p``'s keep: a hash slice of the keys
    (known at the load), or, for a sort, a range between boundaries the ranks agree on at the run
    (``ranges``: ``sample`` holds this worker's sample of the rows for that).  A hash job reads pass 0 at the
    load (the schema agreement needs every file's types); the job's passes are the most any worker needs,
    so a worker that planned fewer reads its slices anew."""

    def __init__(self, read_with, passes: int, first=None, keep_for=None, sample=None) -> None:
        self.read_with = read_with
        self.passes = passes
        self.first = first
        self.keep_for = keep_for
        self.sample = sample           # a range-sliced job's sample of this worker's rows
        self.schema = None
        self.num_rows = getattr(first if first is not None else sample, "num_rows", 0)

    @property
    def ranges(self) -> bool:
        return self.sample is not None

    def conform(self, schema) -> "Sliced":
        self.schema = schema
        return self

    def _conformed(self, values):
        from shardstats.worker import jobs
        if self.schema is None:
            return values
        if isinstance(values, jobs.Sides):
            return values.conform(self.schema)
        return jobs.conform(values, jobs.arrow_schema(self.schema))

    async def read(self, p: int, passes: int):
        first, self.first = self.first, None
        if p == 0 and first is not None and passes == self.passes:
            return self._conformed(first)
        del first
        values, _ = await asyncio.to_thread(self.read_with, self.keep_for(p, passes))
        return self._conformed(values)

    def __len__(self) -> int:
        return self.num_rows


def hash_keep(slice_on: dict):
    """``keep_for`` of a hash-sliced job: slice ``p`` of each side's key hash."""
    return lambda p, n: lambda t, side: keep_slice(t, slice_on.get(side) or slice_on["main"], p, n)


SAMPLE_EVERY = 50       # a range-sliced job samples one row in this many of each file at the load


def sample_rows(t, side=None):
    """About one row in ``SAMPLE_EVERY``, spread over the table (a regular sample: no randomness to agree on)."""
    import pyarrow as pa
    if t.num_rows <= SAMPLE_EVERY:
        return t.slice(0, min(1, t.num_rows))
    return t.take(pa.array(np.arange(SAMPLE_EVERY // 2, t.num_rows, SAMPLE_EVERY)))


def in_memory(values, read: dict) -> Sliced:
    """A share that fit in memory, sliced there, for a job whose other workers take passes."""
    from shardstats.worker import jobs

    def read_with(keep):
        if isinstance(values, jobs.Sides):
            return jobs.Sides({name: None if t is None else keep(t, name) for name, t in values.items()}), None
        return keep(values, "main"), None
    if read.get("slice_ranges"):
        return Sliced(read_with, 1, sample=sample_rows(values))
    return Sliced(read_with, 1, keep_for=hash_keep(read["slice_on"]))


async def run_in_slices(comm, sliced: Sliced, op, params) -> tuple[dict | None, dict]:
    """``op`` once a slice, ``comm.passes`` times; its rows answers combined: counts added, heads merged in
    the answer's order."""
    answer, stats = None, {}
    read_s = 0.0
    passes = comm.passes
    total, comm.total = comm.total, None     # the load counted a slice or a sample, not the rows
    if sliced.ranges:      # a sort: every rank's sample gives the passes' boundaries (the op's own order)
        sliced.keep_for = await op.slice_ranges(comm, sliced.sample, params, passes)
        sliced.sample = None
    try:
        for p in range(passes):
            t = time.perf_counter()
            comm.progress.set("read", p + 1, passes)
            values = await sliced.read(p, passes)
            read_s += time.perf_counter() - t
            comm.pass_index = p
            got, st = await op.run(comm, values, params)
            del values
            _release()
            stats = add_stats(stats, st)
            if got is not None:
                combine = op.combine_passes or (lambda a, b: combine_rows(a, b, getattr(params, "limit", 0)))
                answer = got if answer is None else combine(answer, got)
    finally:
        comm.pass_index = None
        comm.total = total
    stats.setdefault("phases", {})["read"] = read_s
    stats["passes"] = passes
    return answer, stats


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
    out["data"] = rows[:limit] if limit else rows
    return out
