"""A job's life on one worker: load its files, run the op over a TcpComm, report, forget.

Each job is owned by the worker's task group; an abort (or the coordinator going
away) cancels it and drops its data, so nothing outlives the job.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shardstats import logs
from shardstats.worker import memory
from shardstats.errors import InputError, JobError, WorkerUnhealthy
from shardstats.worker.io.listing import ShardRef, is_object_url
from shardstats.worker.io.shards import read_shard
from shardstats.worker.io.source import confine, mib
from shardstats.worker.ops.contract import Op, Params
from shardstats.worker.net.links import PeerLink
from shardstats.worker.comm.tcp import TcpComm
from shardstats.worker.comm.progress import Progress, reporting
from shardstats.worker.comm.timeline import Timeline


def resolve(path: str, root: str, confined: bool = False) -> str:
    """Where the worker opens ``path``: under ``root`` (links resolved, escapes refused) when ``confined``."""
    if confined:
        return confine(path, root)
    return path if os.path.isabs(path) else os.path.join(root, path)


@dataclass(frozen=True)
class Access:
    """What a worker lets a job read: paths under ``root`` (``confined``) and at most ``budget`` bytes."""
    root: str = "."
    confined: bool = False
    budget: int | None = None
    cache: object = None          # the worker's DatasetCache (worker/cache.py): keyed jobs' warm inputs
    spill_dir: str | None = None  # where jobs' spill folders go (worker/spill.py); None: the system's temp folder
    reserved: int = 0             # what the links may hold beside a job's values: frames queued to every peer
    keyed_overhead: int = 0       # what a keyed job takes beside its rows (Settings.keyed_overhead)


MIN_IN_MEMORY = 4 << 20      # a pass holds at least this much: below it, passes cost more than memory saves


def in_memory_limit(budget: int | None, reserved: int = 0) -> int | None:
    """The bytes of int64 values a job may hold in memory on this worker: what the budget leaves beside the
    process as it is now and the links' queues (``reserved``), over the copies an op makes of what it holds
    (``ondisk.WORKING_COPIES``).  Measured: a mode pass over 62 MB in a 300 MiB cgroup reached 344 MB of
    anonymous memory with 4 copies and no reserve (10 workers: 9 peers x 8 queued 1 MiB frames)."""
    if budget is None:
        return None
    from shardstats.worker.io.ondisk import WORKING_COPIES
    # A quarter of the budget is left to the page cache a job reads and writes through (a cgroup charges it).
    return max(MIN_IN_MEMORY, (budget * 3 // 4 - memory.rss_bytes() - reserved) // WORKING_COPIES)


def load_files(files: list[ShardRef | str], root: str | Access, column: str | int | None = None,
               progress: Progress | None = None, header: bool | None = None, spill=None) -> np.ndarray:
    """The job's int64 values on this worker: in memory, or, with a ``spill`` folder and more values than
    ``in_memory_limit`` allows (local files), as a read-only map on disk (``worker/io/ondisk.py``)."""
    access = root if isinstance(root, Access) else Access(root)
    if spill is not None and files and access.budget is not None:
        refs = [f if isinstance(f, ShardRef) else ShardRef(str(f), -1, None) for f in files]
        from shardstats.worker.io import ondisk
        # an object's size is the listing's (its bytes: 8 a value in a .npy, about as many as text or Parquet)
        where = [_where(r, access) for r in refs]
        counts = [None if is_object_url(r.path) else ondisk.npy_values(r, w) for r, w in zip(refs, where)]
        guess = sum(8 * c if c is not None else max(r.size, 0) if is_object_url(r.path) else _size(w)
                    for c, r, w in zip(counts, refs, where))
        if guess > in_memory_limit(access.budget, access.reserved):
            return ondisk.load(refs, where, column, header, spill, progress, access.budget)
    arrays = []
    held = 0
    objects = None                   # one object-store client per load, made only when an s3:// shard comes
    for f in files:
        ref = f if isinstance(f, ShardRef) else ShardRef(str(f), -1, None)
        budget = None if access.budget is None else access.budget - held
        if budget is not None and budget <= 0:
            raise InputError(f"{ref.path}: the job's files on this worker already take {mib(held)}, the worker's "
                             f"memory budget (--memory-limit); add workers or split the shards")
        if is_object_url(ref.path):
            if objects is None:
                from shardstats.worker.io.objects import ObjectReader
                objects = ObjectReader()
            a = objects.read(ref, column, header, budget)
        else:
            a = read_shard(ref, column, real_path=resolve(ref.path, access.root, access.confined), budget=budget,
                           header=header)
        held += a.nbytes
        arrays.append(a)
        if progress is not None:
            progress.done = len(arrays)      # read by the ticker on the event loop's thread
    if not arrays:
        return np.zeros(0, dtype=np.int64)
    # Readers return arrays we own; joining them while letting each go keeps the peak near one share.
    return memory.concat_releasing(arrays) if len(arrays) > 1 else arrays[0]


def _where(ref: ShardRef, access: Access) -> str:
    """Where a worker opens a shard: an ``s3://`` object by its URL, a file under the worker's root."""
    return ref.path if is_object_url(ref.path) else resolve(ref.path, access.root, access.confined)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0          # the read names the problem


def load_table(files: list[ShardRef], root: str | Access, read: dict, progress: Progress | None = None,
               keep=None):
    """The job's records on this worker as one Arrow table, and its schema described per file
    (``worker.data.schema``): a keyed op's share of the input.  ``keep(table, side)``: the rows of each
    file to keep, applied as the file is read (a slice of a job taken in passes: worker/engine/slices.py)."""
    import pyarrow as pa
    from shardstats.worker.data import readers, schema
    access = root if isinstance(root, Access) else Access(root)
    tables, described = [], []
    held = 0
    for i, ref in enumerate(files):
        budget = None if access.budget is None else access.budget - held
        where = _where(ref, access)
        side = (read.get("side_of") or ["main"] * len(files))[i]
        kind = read.get("kind")
        if kind == "auto":            # a mapreduce job's records: a table's rows, or a text file's lines
            kind = "table" if side != "main" or Path(ref.path).suffix.lower() in readers.TABLE_SUFFIXES \
                else "documents"
        values_lacking = []
        if kind == "documents":         # beyond memory, a batch or a block of lines at a time
            # blocks of lines only for a share no other op will see (a cached dataset keeps its lines)
            t = readers.read_documents(ref, where, read.get("text"), read.get("id"), budget,
                                       None if keep is None else (lambda piece, side=side: keep(piece, side)),
                                       blocks=bool(read.get("blocks")) and not read.get("cache"))
        else:
            piece_keep = None
            if keep is not None and read.get("ordinals") is not None:
                piece_keep = _numbered(keep, read["ordinals"][i], side)
            elif keep is not None:
                piece_keep = lambda piece, side=side: keep(piece, side)      # noqa: E731
            # a value column a file lacks is read as NULLs (DuckDB's union_by_name), a key refused (a misnamed
            # or foreign file's rows would form a NULL group): keys as a sort and a join read them (ABSENT)
            info = {"required": list((read.get("slice_on") or {}).get(side) or ())}
            t = readers.read_table(ref, where, read.get("columns"), budget, piece_keep,
                                   lacking=info if read.get("columns") is not None else None)
            values_lacking = [[c, schema.LACKING, ref.path, info["has"]] for c in info.get("columns", ())]
        lacking = [] if kind == "documents" or read.get("premap") or not t.num_columns else \
            [k for k in (read.get("slice_on") or {}).get(side) or () if k not in t.column_names]
        if read.get("ordinals") is not None and "__sort_row" not in t.column_names:    # read whole, or none kept
            t = _with_ordinals(t, read["ordinals"][i], 0)
        described.append([[f.name, str(f.type), ref.path] for f in t.schema]       # the hidden columns too
                         + [[k, schema.ABSENT, ref.path] for k in lacking]        # refused if a file has it
                         + values_lacking)      # read as NULLs; refused where no file has it (schema.unify)
        held += t.nbytes
        tables.append(t)
        if progress is not None:
            progress.done = i + 1
    side_of = read.get("side_of")
    if side_of is not None:       # a job of named inputs (a join): one table and one schema per side
        out, agreed_by = {}, {}
        for name in read.get("side_names") or sorted(set(side_of)):
            mine = [i for i, s in enumerate(side_of) if s == name]
            agreed_by[name] = schema.unify([described[i] for i in mine])
            target = arrow_schema(agreed_by[name])
            out[name] = _concat([conform(tables[i], target) for i in mine]) if mine else None
        return Sides(out), agreed_by
    agreed = schema.unify(described)
    if not tables:
        return pa.table({}), agreed
    target = arrow_schema(agreed)
    return _concat([conform(t, target) for t in tables]), agreed


def _with_ordinals(t, file_ordinal: int, first_row: int):
    """Where each row stands in the input (the file's place in the listing, the row's in the file): a sort's
    hidden last key, so equal keys keep the input's order."""
    import pyarrow as pa
    t = t.append_column("__sort_file", pa.array(np.full(t.num_rows, file_ordinal, np.int64)))
    return t.append_column("__sort_row", pa.array(np.arange(first_row, first_row + t.num_rows, dtype=np.int64)))


def _numbered(keep, file_ordinal: int, side: str):
    """``keep`` for a file read piece by piece (in order), each piece numbered first: a sort beyond memory reads
    its files in batches like any keyed job (read whole, a 240 MB Parquet file took ~1 GB of a worker)."""
    seen = 0

    def numbered(piece):
        nonlocal seen
        piece = _with_ordinals(piece, file_ordinal, seen)
        seen += piece.num_rows
        return keep(piece, side)
    return numbered


def _concat(tables: list):
    """One table of a worker's files; a column that some files hold as a dictionary and others plain is
    decoded in all (``worker.engine.exchange.plain``)."""
    import pyarrow as pa
    if len({t.schema for t in tables}) > 1:
        from shardstats.worker.engine.exchange import plain
        tables = [plain(t) for t in tables]
    return pa.concat_tables(tables)


class Sides(dict):
    """A join's inputs on this worker, by side name ("main" is --left/--input); None: no file of that side here
    (the agreed schema gives it its columns at run time). ``len`` is the rows of every side."""

    def __len__(self) -> int:
        return sum(t.num_rows for t in self.values() if t is not None)

    def conform(self, schemas: dict) -> "Sides":
        import pyarrow as pa
        out = Sides()
        for name, described in schemas.items():
            target = arrow_schema(described)
            t = self.get(name)
            out[name] = conform(t, target) if t is not None else pa.Table.from_batches([], schema=target)
        return out


def arrow_schema(described: list[list]):
    """The Arrow schema of a described one (``worker.data.schema``)."""
    import pyarrow as pa
    from shardstats.worker.data.schema import ABSENT, LACKING
    fields = []
    for name, typ, where, *_ in described:
        if typ in (ABSENT, LACKING):
            continue
        try:
            fields.append(pa.field(name, _arrow_type(typ)))
        except InputError as exc:     # which column of which file: a sort or a join reads every column
            raise InputError(f"{where}: column {name!r}: {exc}") from None
    return pa.schema(fields)


def _arrow_type(typ: str):
    import pyarrow as pa
    if typ.startswith("timestamp["):
        inner = typ[10:-1]
        unit, _, tz = inner.partition(", tz=")
        return pa.timestamp(unit, tz or None)
    if typ in ("date32[day]", "date32"):
        return pa.date32()
    if typ.startswith("decimal128("):       # Parquet's DECIMAL(p, s) (DuckDB's, Spark's): exact, as read
        p, s = (int(x) for x in typ[len("decimal128("):-1].split(","))
        return pa.decimal128(p, s)
    if typ.startswith("list<") or typ.startswith("struct<") or typ.startswith("decimal"):
        raise InputError(f"columns of type {typ} cannot be read by keyed jobs yet")
    try:
        return pa.type_for_alias(typ)
    except (ValueError, KeyError):
        raise InputError(f"columns of type {typ} cannot be read by keyed jobs yet") from None


def conform(table, target):
    """``table`` with ``target``'s columns and types: missing columns as nulls, promotions the schema agreed."""
    import pyarrow as pa
    if table.schema.equals(target):
        return table
    cols = []
    for f in target:
        if f.name in table.column_names:
            col = table.column(f.name)
            if pa.types.is_dictionary(col.type) and col.type.value_type in (f.type, pa.string()) and \
                    pa.types.is_large_string(f.type):
                cols.append(col)        # a dictionary of strings stays encoded (worker.data.schema.canonical)
                continue
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, names=target.names)


@dataclass
class Job:
    id: str
    files: list[ShardRef]
    values: np.ndarray | None = None
    comm: TcpComm | None = None
    task: asyncio.Task | None = None
    load_seconds: float = 0.0
    early: list = field(default_factory=list)   # peer messages that beat our own "run"
    early_bytes: int = 0
    column: str | int | None = None             # the column of .csv/.parquet shards (load message)
    read: dict | None = None                    # a keyed op's reader options (load message); None: int64 values
    schema: list | None = None                  # a keyed job's columns as this worker read them (loaded message)
    header: bool | None = None                  # whether a .csv's first row is a header (load message)
    report: Callable[[dict], None] | None = None  # sends a message to the coordinator (progress)
    op: str | None = None                       # the op's name (the run message's; the load message's if it says)
    progress_interval: float | None = None      # seconds between progress messages; None: send none
    timeline: Timeline = field(default_factory=Timeline)   # starts when the load message arrives
    spill: object = None                        # the job's SpillDir (worker/spill.py): values kept on disk
    passes: int = 1                             # passes over values kept on disk, for what fits in memory
    facts: tuple | None = None                  # what the op learned of this share at the load (Op.load_facts)

    def take_values(self) -> np.ndarray:
        values, self.values = self.values, None
        assert values is not None
        return values


class StuckReads:
    """Load threads that passed their read deadline and have not returned (a FIFO, a hung mount).

    A thread cannot be cancelled; while any is stuck the worker reports itself unhealthy (in its pong)
    and refuses new loads, so coordinators leave it out instead of handing it more files.
    """

    def __init__(self) -> None:
        self.tasks: set[asyncio.Future] = set()

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def add(self, task: asyncio.Future) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def load(job: Job, root: str | Access, read_timeout: float | None = None,
               stuck: StuckReads | None = None) -> int:
    """Reads the job's files in a thread; a file that takes longer than ``read_timeout`` to read marks
    the worker unhealthy (``WorkerUnhealthy``: the job runs again without it)."""
    memory.release()
    memory.reset_peak()        # the job's peak starts here (loading included)
    t = time.perf_counter()
    progress = Progress("load", job.timeline)
    progress.set("load", 0, len(job.files))
    progress.sizes = [max(0, f.size) for f in job.files]     # the listing's sizes: bytes read of total
    if job.spill is not None:
        job.spill.phase_of = lambda: progress.phase
    async with reporting(job.id, progress, job.report, job.progress_interval):
        if job.read is not None:
            job.values, job.schema = await _read_table(job, root, progress)
        elif job.files:
            job.values = await _read_in_thread(job, root, progress, read_timeout, stuck)
        else:                   # nothing to read (a small job's other workers): no thread to hop to
            job.values = load_files([], root)
    job.timeline.close()       # the wait for the other workers' loads is no phase of ours
    if job.read is None and isinstance(job.values, np.memmap):
        from shardstats.worker.io.ondisk import passes_for
        budget = root.budget if isinstance(root, Access) else None
        job.passes = passes_for(job.values.nbytes, in_memory_limit(budget, root.reserved if isinstance(root, Access)
                                                                   else 0) or job.values.nbytes)
    job.load_seconds = time.perf_counter() - t
    logs.event("job_loaded", job=job.id, files=len(job.files), values=len(job.values),
               seconds=round(job.load_seconds, 3))
    return len(job.values)


async def _read_table(job: Job, root: str | Access, progress: Progress):
    """A keyed job's share: from the worker's cache (``input cache:NAME``), or read on a thread (and cached)."""
    read = job.read or {}
    cache = root.cache if isinstance(root, Access) else None
    if read.get("from_cache"):
        if cache is None:
            raise InputError(f"cache:{read['from_cache']}: this worker keeps no datasets")
        table, described = cache.get(read["from_cache"])
        if read.get("kind") == "documents" and table.column_names[:3] != ["doc", "line", "text"]:
            # a table job's rows are no documents: the text ops' tokenizer failed on them (KeyError 'text', exit 1)
            raise InputError(f"cache:{read['from_cache']}: a table's rows (columns: "
                             f"{', '.join(table.column_names) or 'none'}), not text documents: word count and the "
                             f"index read the documents a text job cached (wordcount --cache NAME), or a table's "
                             f"text column from its files (--text COL)")
        return table, described
    # on a thread: beyond memory this reads the whole share once into runs (the event loop answers meanwhile)
    sliced = await asyncio.to_thread(_plan_slices, job, root, read, progress)
    if sliced is not None:
        return sliced
    table, described = await asyncio.to_thread(load_table, job.files, root, read, progress)
    if read.get("cache") and cache is not None:
        cache.put(read["cache"], table, described)
    return table, described


def _plan_slices(job: Job, root: str | Access, read: dict, progress: Progress | None = None):
    """A keyed share too large for this worker's memory, for an op that can take it in key slices
    (``read["slice_on"]``: the key columns of each side): (Sliced, pass 0's schema) to read in passes; else None."""
    from pathlib import PurePath
    from shardstats.worker.engine import slices
    access = root if isinstance(root, Access) else Access(root)
    slice_on = read.get("slice_on")
    if access.budget is None or not job.files:
        return None
    # an object's size is the listing's (read in batches and blocks from the store like a file from disk)
    def on_disk(r: ShardRef) -> float:     # the bytes of a file the job reads (an object's: all, by its listing)
        if is_object_url(r.path):
            return max(r.size, 0)
        where = _where(r, access)
        share = slices.read_share(where, read.get("columns")) if where.lower().endswith(".parquet") else 1.0
        return _size(where) * share
    guess = slices.estimate_bytes((on_disk(r), PurePath(r.path).suffix.lower()) for r in job.files)
    limit = in_memory_limit(access.budget, access.reserved + access.keyed_overhead)
    if guess <= limit:
        return None
    from shardstats.worker.io.ondisk import WORKING_COPIES
    from shardstats.worker.io.source import mib
    need = access.reserved + access.keyed_overhead + WORKING_COPIES * MIN_IN_MEMORY
    if access.budget * 3 // 4 < need:
        # Slices as thin as we allow would still not fit beside the engine: refused, not started and killed.
        raise InputError(f"this worker's memory budget ({mib(access.budget)}, --memory-limit) is too small for "
                         f"this share of a keyed job (~{mib(guess)} in memory): a keyed job needs about "
                         f"{mib(need * 4 // 3)} on a worker even in its thinnest slices; raise the limit or add workers")
    if not slice_on or read.get("cache") or (read.get("premap") and job.spill is None):
        # An op that holds its whole share (word count, the index, MapReduce, a cached dataset): refused
        # at twice what a pass may hold, rather than killed by the kernel halfway through the job.
        if guess > 2 * limit:
            from shardstats.worker.io.source import mib
            raise InputError(f"this worker's share of the input (~{mib(guess)} in memory) is more than its memory "
                             f"budget ({mib(access.budget)}, --memory-limit) holds for a job that loads it whole"
                             f"{' (--cache keeps it in memory)' if read.get('cache') else ''}; group-by, join, "
                             f"sort, word count and the index go beyond memory, this does not: add workers or "
                             f"raise the limit")
        return None
    from shardstats.worker.io.ondisk import passes_for
    passes = passes_for(guess, limit)

    def read_with(keep):
        return load_table(job.files, access, read, None, keep)
    if read.get("combines") and limit > MIN_IN_MEMORY and guess <= COMBINING_FIT * limit:
        loaded = _combining_share(job, access, read, limit, passes, progress)
        if loaded is not None:
            return loaded
    job.passes = max(job.passes, passes)       # a combining share measured over its guess keeps its passes
    # Runs are written a flush at a time: what a pass may hold, at least a megabyte (fewer, larger runs).
    flush = max(1 << 20, limit) if job.spill is not None else 0
    if read.get("slice_ranges"):       # a sort: ranges of its order, agreed from samples at the run
        sample, described = read_with(slices.sample_rows)
        return slices.Sliced(read_with, passes, sample=sample, flush_bytes=flush), described
    premap = None
    if read.get("premap"):           # text into (word, ...) pairs, a MapReduce job's records into (key, value)
        premap = slices.premap_for(read["premap"], access.budget)
    sliced = slices.Sliced(read_with, passes, slots=slices.hash_slots(slice_on), flush_bytes=flush, premap=premap)
    if job.spill is None:               # no spill folder (an embedded worker): each pass reads the files again
        _, described = read_with(slices.keeper(sliced.slots)(0, passes))
        return sliced, described
    sliced.partition(job.spill, passes)
    sliced.num_rows = sliced.runs.rows
    # The runs' bytes (Arrow's buffers) are the rows' size in memory: more passes if the load's guess was short
    # of them, never fewer.  What a pass takes beside its rows depends on the op: db-benchmark at 1e8 took ~2x
    # its runs' bytes for q3 but ~14x for q10 (near-unique groups on six keys), whose workers in 792 MiB were
    # OOM-killed when the passes were cut to what the runs need (13 -> ~6); the guess (4x a Parquet file,
    # ~3.6x G1's runs) is what covers it today
    job.passes = max(passes, passes_for(sliced.runs.bytes, limit))
    return sliced, sliced.described


COMBINING_FIT = 3        # a combining job's share is loaded whole to measure it when its guess is within this
                         # many times a pass's limit: half of what the budget leaves (WORKING_COPIES = 6); never
                         # when the budget is spent (the limit at its floor, MIN_IN_MEMORY)
COMBINED_HOLDS = (2.0, 19.0)    # what a combining group-by holds, in copies of its rows: a + b x (distinct keys /
                                # rows); 2x for 100 keys, 21x when every key is unique (the combiner skipped)


def _combining_share(job: Job, access: Access, read: dict, limit: int, passes: int, progress: Progress | None):
    """A combining group-by's share whose guess is over the limit but whose rows may fit: loaded, and its working
    set measured rather than guessed: its rows' bytes x ``COMBINED_HOLDS`` at the share's distinct keys (estimated
    from a strided sample of the keys).  Fits: (table, described), one pass.  Else (Sliced, described), in passes
    from runs written from memory (the files are read once either way), or None (no spill folder: the passes read
    the files again).

    Why: the guess (4x the bytes a Parquet file gives the job) stacked with the limit's six working copies is
    sized for near-unique keys (db-benchmark's q10 needed ~14x its runs), and sent db-benchmark's q4 at 1e8 rows
    (100 groups, 200 MB of rows a worker in a 2.4 GB budget) through 2 passes and 1.9 GiB of spill."""
    from shardstats.worker.engine import slices
    from shardstats.worker.engine.keycount import distinct_share
    from shardstats.worker.io.ondisk import WORKING_COPIES, passes_for
    table, described = load_table(job.files, access, read, progress)
    share = distinct_share(table, read["combines"])
    a, b = COMBINED_HOLDS
    need = int(table.nbytes * (a + b * share))
    usable = limit * WORKING_COPIES
    if need <= usable:
        return table, described
    # as many passes as the guess gave, or more if the rows hold more than it guessed
    job.passes = max(passes, passes_for(need, usable))
    if job.spill is None:
        return None
    sliced = slices.Sliced(None, job.passes, slots=slices.hash_slots(read["slice_on"]),
                           flush_bytes=max(1 << 20, limit))
    sliced.from_table(table, job.spill, job.passes)
    del table
    sliced.described = described
    sliced.num_rows = sliced.runs.rows
    return sliced, described


async def _read_in_thread(job: Job, root: str | Access, progress: Progress, read_timeout: float | None,
                          stuck: StuckReads | None) -> np.ndarray:
    """``load_files`` on a thread, given up (the worker marked unhealthy) when no file finishes in ``read_timeout``."""
    task = asyncio.ensure_future(asyncio.to_thread(load_files, job.files, root, job.column, progress, job.header,
                                                   job.spill))
    done_before = progress.done
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(task), read_timeout)
        except TimeoutError:
            if progress.done != done_before:          # a file finished within the deadline: go on
                done_before = progress.done
                continue
            if stuck is not None:
                stuck.add(task)
            task.add_done_callback(_discard_result)
            raise WorkerUnhealthy(f"a read of job {job.id} made no progress for {read_timeout:g}s "
                                  f"(file {progress.done + 1} of {len(job.files)}: a FIFO, a device or a "
                                  f"hung mount?); the worker reports itself unhealthy") from None
        except asyncio.CancelledError:
            task.add_done_callback(_discard_result)
            raise


def _discard_result(task: asyncio.Future) -> None:
    """Retrieves the outcome of a load thread nobody waits for any more (its error is of no use now)."""
    if not task.cancelled():
        task.exception()


def make_comm(job: Job, my_id: int, ranks: list[int], links: dict[int, PeerLink], timeout: float) -> TcpComm:
    if my_id not in ranks or len(set(ranks)) != len(ranks):
        raise JobError(f"worker {my_id} is not in the job's worker list {ranks}")
    missing = [r for r in ranks if r != my_id and r not in links]
    if missing:
        raise JobError(f"job {job.id} names workers {missing} this worker does not know")
    if job.values is None:
        raise JobError(f"job {job.id} was not loaded on worker {my_id}")
    return TcpComm(job.id, ranks, my_id, links, timeout)


async def run(job: Job, comm: TcpComm, op: Op, params: Params) -> dict:
    """Runs the op; returns the stats (and the result, at rank 0) for the coordinator."""
    my_id, ranks, links = comm.ranks[comm.rank], comm.ranks, comm.links
    assert job.values is not None
    n = len(job.values)
    for p in ranks:            # queue peaks are per job (jobs running side by side share them)
        if p != my_id:
            links[p].peak_queued_bytes = links[p].queued_bytes
    t = time.perf_counter()
    cs = comm.stats
    comm.progress.timeline = job.timeline
    comm.progress.set(op.name)  # the op names its phases as it goes (count, shuffle, select, ...)
    if job.spill is not None:
        job.spill.phase_of = lambda: comm.progress.phase
    async with reporting(job.id, comm.progress, job.report, job.progress_interval, lambda: sum(cs.bytes_sent)):
        # The op gets the only reference to the data (no local name here), handed over so it may give
        # the memory back as it consumes the values (``memory.hand_over``).
        box = [job.take_values()]           # popped into the call: no name here keeps the values alive
        from shardstats.worker.engine import slices
        if comm.passes > 1 and job.read is not None:     # a keyed job some worker takes in key slices
            slice_on = (job.read or {}).get("slice_on")
            if not slice_on:
                raise JobError(f"{op.name}: a worker's share was planned in slices the op does not take")
            sliced = box.pop()
            if not isinstance(sliced, slices.Sliced):
                sliced = slices.in_memory(sliced, job.read)
            result, opstats = await slices.run_in_slices(comm, sliced, op, params)
            del sliced
        elif isinstance(box[0], np.memmap) and not op.out_of_core:
            from shardstats.worker.io.source import mib
            from shardstats.worker.ops import registry
            beyond = ", ".join(sorted(n for n, o in registry.ops().items() if o.out_of_core))
            raise InputError(f"{op.name}: this worker's values take {mib(box[0].nbytes)}, more than its memory "
                             f"budget holds (--memory-limit); {op.name} works in memory only (beyond memory: "
                             f"{beyond}); add workers or raise the limit")
        else:
            result, opstats = await op.run(comm, memory.hand_over(box.pop()), params)
    stats = {
        "id": my_id, "rank": comm.rank, "values": n, "files": len(job.files),
        "seconds": time.perf_counter() - t, "load_seconds": job.load_seconds,
        "bytes_sent": cs.bytes_sent, "bytes_received": cs.bytes_received,
        "messages_sent": cs.messages_sent, "messages_received": cs.messages_received,
        "tree_messages_received": cs.tree_messages_received,
        "max_inbound_streams": cs.max_inbound_streams,
        "peak_buffered_bytes": comm.mailbox.peak_buffered,
        "peak_send_queue_bytes": max((links[p].peak_queued_bytes for p in ranks if p != my_id), default=0),
        "send_wait_seconds": cs.send_wait_seconds, "credit_wait_seconds": cs.credit_wait_seconds,
        "peak_rss_bytes": memory.peak_rss_bytes(),
        **(job.spill.stats() if job.spill is not None and job.spill.written else {}),
        **opstats,
        **job.timeline.as_stats(),
    }
    out = {"stats": stats}
    if isinstance(result, dict):
        result.pop("_order", None)          # how a rows answer's head is ordered: for merging passes only
    if result is not None:
        out["result"] = result
    return out
