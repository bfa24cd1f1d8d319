"""What a keyed job hands back: a bounded, ordered head of its rows at rank 0, or Parquet part files under --out.

Printing: each reducer sorts its own rows and sends at most ``limit`` of them up the
binomial tree; every rank merges what reaches it and keeps ``limit``. The head of the
whole result is exact (each key lives on one reducer), and no rank receives more than
``limit`` rows from any child, whatever the result's size.

Writing: each reducer writes ``part-NNNNN.parquet`` (its rank), row group by row group,
under a hidden folder of the job inside ``--out`` -- or, for ``--out s3://bucket/prefix/``,
as a multipart upload left open; after every rank has written (every pass, for a job
taken in passes), each renames its own parts into place or completes its uploads. A job
that fails anywhere leaves no part files of its own behind (a full disk names the worker
and the part), and ``--out`` must hold no part files before (a new job never mixes with an
old one's) unless ``--overwrite``.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shardstats.errors import InputError, ShardstatsError
from shardstats.worker.comm.collectives import allreduce, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.data import codec


def sort_keys(columns: list[str], order: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return order or [(c, "ascending") for c in columns]


def _head(table, order, limit: int):
    """The first ``limit`` rows of ``table`` in ``order`` (all of them, sorted, when ``limit`` is 0); nulls
    last, equal keys in the table's order (a stable sort)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if table.num_rows == 0:
        return table
    table = table.combine_chunks()
    if limit and table.num_rows > limit and _selectable(table, order):
        table = table.take(_select(table, order, limit))
    try:                        # pyarrow >= 25 places nulls per key; older ones take one placement for all
        idx = pc.sort_indices(table, sort_keys=[(c, o, "at_end") for c, o in order])
    except (TypeError, ValueError, pa.ArrowInvalid):
        idx = pc.sort_indices(table, sort_keys=order, null_placement="at_end")
    if limit:
        idx = idx[:limit]
    return table.take(idx)


def _selectable(table, order) -> bool:
    """Whether Arrow's top-k selection takes these keys: it crashes on dictionary columns (pyarrow 26), which
    the full sort refuses anyway."""
    import pyarrow as pa
    t = pa.types
    ok = (t.is_integer, t.is_floating, t.is_boolean, t.is_string, t.is_large_string, t.is_binary,
          t.is_large_binary, t.is_temporal)
    return all(any(f(table.schema.field(c).type) for f in ok) for c, _ in order)


def _select(table, order, limit: int):
    """The rows a stable sort would put first, by Arrow's top-k selection (O(n log k)) instead of sorting every
    row: a join's head of 900k rows per worker took 200 ms to sort by all its columns, 16 ms this way. The
    row's position is the last key, so ties go as the stable sort sends them; nulls and NaNs go last, as in
    the sort (tests/test_answer_head.py)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    pos = "__head_row"
    while pos in table.column_names:
        pos += "_"
    keyed = table.append_column(pos, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    return pc.select_k_unstable(keyed, limit, sort_keys=[*order, (pos, "ascending")])


def _fit(table):
    """At most ``ANSWER_ROWS`` rows of ``table``, fewer when they would not fit one frame (``ANSWER_BYTES``)."""
    t = table.slice(0, ANSWER_ROWS)
    if t.num_rows and t.nbytes > ANSWER_BYTES:
        t = t.slice(0, max(1, int(t.num_rows * ANSWER_BYTES / t.nbytes)))
    return t


def _merge(a: dict, b: dict) -> dict:
    return {"p": a["p"] + b["p"], "rows": a["rows"] + b["rows"]}


async def gather_head(comm: Communicator, table, order: list[tuple[str, str]], limit: int):
    """(rank 0: the first ``limit`` rows of every rank's rows in ``order``, and the total row count; else None)."""
    import pyarrow as pa
    from shardstats.worker.steps import numpy_step
    # every row (limit 0) is at most an answer's ANSWER_ROWS: a top-k selection of that many, not a sort of all
    # (q10's 1e6 groups a rank: 1e6 rows sorted by three text keys, 40% of the job, to send 50k of them)
    limit = limit or ANSWER_ROWS
    local = await numpy_step(table.num_rows, _head, table, order, limit)     # off the loop: heartbeats go on
    body = {"p": [codec.encode(_fit(local))], "rows": table.num_rows}
    schema = table.schema

    def combine(a: dict, b: dict) -> dict:
        both = _merge(a, b)
        t = pa.concat_tables([codec.decode(p, schema) for p in both["p"]])
        return {"p": [codec.encode(_fit(_head(t, order, limit)))], "rows": both["rows"]}
    got = await tree_reduce(comm, body, combine, "answer.head")
    if got is None:
        return None
    return codec.decode(got["p"][0], schema), got["rows"]


async def count_rows(comm: Communicator, table) -> int | None:
    """Every rank's rows summed (at rank 0; None elsewhere): a job that wrote its rows needs no head of them."""
    total = await tree_reduce(comm, {"n": table.num_rows}, lambda a, b: {"n": a["n"] + b["n"]}, "answer.count")
    return None if total is None else total["n"]


async def rows_answer(comm: Communicator, table, order, params, stats: dict) -> dict | None:
    """A keyed job's answer when it is rows: with ``params.out`` every rank's part file written (its entries added
    to ``stats``) and the rows counted; else a bounded head in ``order``. At rank 0 the result
    (``rows``, ``columns``, ``data``[, ``out``]); None elsewhere."""
    if params.out:
        stats.update(await write_parts(comm, table, params.out, comm.job, params.overwrite))
        rows = await count_rows(comm, table)
        if rows is None:
            return None
        return {"rows": rows, "columns": table.column_names, "data": [], "out": params.out,
                "_schema": schema_of(table)}
    head = await gather_head(comm, table, order, params.limit)
    if head is None:
        return None
    t, rows = head
    return {"rows": rows, "columns": t.column_names, "data": rows_of(t), "_order": order, "_schema": schema_of(t)}


def schema_of(table) -> bytes:
    """A rows answer's Arrow schema, as it travels beside its plain rows (``_schema``; the coordinator keeps it
    on the ``JobReport``, out of the --json document): the rows hold a decimal or a time as text, and the API's
    ``Result.to_arrow`` needs the type to give the column back as it was, not as that text."""
    schema = table.schema if hasattr(table, "schema") else table
    return schema.remove_metadata().serialize().to_pybytes()


def plain(value):
    """An Arrow value as JSON and msgpack carry it: decimals of integers as ints, other decimals as their exact
    text ("7693150.00", as DuckDB prints DECIMAL(38,2): a float would round it), times as ISO text."""
    import datetime
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent >= 0 else str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


# What one answer may hold on its way to the coordinator: a frame is at most 4 MiB and 65,536 maps and arrays
# (shardstats.settings); rows past these budgets are left out (the rows count says how many there are).
ANSWER_CONTAINERS = 50_000
ANSWER_BYTES = 3 << 20
ANSWER_ROWS = 50_000


def _containers(v) -> int:
    if isinstance(v, list):
        return 1 + sum(_containers(x) for x in v)
    if isinstance(v, dict):
        return 1 + sum(_containers(x) for x in v.values())
    return 0


def _plain_type(t) -> bool:
    """Whether Arrow gives this type's values as JSON and msgpack carry them already (``plain`` is the identity)."""
    import pyarrow as pa
    return any(f(t) for f in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
                              pa.types.is_large_string, pa.types.is_null))


def _flat_type(t) -> bool:
    """Whether this type's values are scalars (no lists, structs or maps: no containers of their own)."""
    import pyarrow as pa
    if pa.types.is_dictionary(t):
        t = t.value_type
    return not (pa.types.is_nested(t))


def rows_of(table) -> list[list]:
    """The rows as plain lists, as many as fit one answer frame (``ANSWER_CONTAINERS``, ``ANSWER_BYTES``).
    Column by column: a value of a number or text column is already plain (10k groups of q2 took 0.15 s of
    per-value calls at rank 0 before, most of a small job)."""
    cols = []
    for col in table.columns:
        values = col.to_pylist()
        cols.append(values if _plain_type(col.type) else [plain(v) for v in values])
    rows = [list(r) for r in zip(*cols)] if cols else [[] for _ in range(table.num_rows)]
    return fit(rows, flat=all(_flat_type(f.type) for f in table.schema))


def fit(rows, flat: bool = False) -> list[list]:
    """The first of ``rows`` (plain lists) that fit one answer frame. Also for answers put together from
    several (a job's passes: each pass's rows fit, their union need not -- a group-by of collect_set over six
    passes lost its only worker to a frame of more than 65,536 containers).  ``flat``: every value is a scalar,
    so each row is one container and the whole list's size is measured at once when it fits (the usual case)."""
    import msgpack
    if flat and isinstance(rows, list) and 1 + len(rows) <= ANSWER_CONTAINERS \
            and 5 + len(msgpack.packb(rows, default=str)) <= ANSWER_BYTES:
        return rows
    out, used, size = [], 1, 5
    for row in rows:
        used += _containers(row)
        size += len(msgpack.packb(row, default=str))
        if used > ANSWER_CONTAINERS or size > ANSWER_BYTES:
            break
        out.append(row)
    return out


def out_dir(comm: Communicator, out: str) -> str:
    """Where this worker writes ``--out``: as given when absolute, else under its data root (confined there)."""
    access = getattr(comm, "access", None)
    if access is None or os.path.isabs(out) and not access.confined:
        return out
    from shardstats.worker.io.source import confine
    return confine(out, access.root) if access.confined else os.path.join(access.root, out)


def part_name(rank: int, pass_index: int | None = None) -> str:
    """A reducer's part file; a job taken in slices (worker/engine/slices.py) writes one a pass, named pass
    first, so a sort's parts in name order are still its rows in order (pass by pass, reducer by reducer)."""
    return f"part-{rank:05d}.parquet" if pass_index is None else f"part-{pass_index:04d}-{rank:05d}.parquet"


ROW_GROUP_ROWS = 1 << 17        # rows a Parquet row group holds (DuckDB writes 122,880)
_OBJECT_BLOCK = 16 << 20        # an s3:// part goes up in multipart pieces of this size (S3's least is 5 MiB)


@dataclass
class Pieces:
    """A part's rows made as they are written: ``make()`` yields tables of ``schema`` (``num_rows`` in all),
    called on the writing thread, so a sorted part is taken from its unsorted rows one row group at a time
    instead of materialised whole beside them."""
    schema: Any
    num_rows: int
    make: Callable[[], Iterable[Any]]


def pieces_of(table) -> Pieces:
    """A table's rows in slices of ``ROW_GROUP_ROWS`` (views: nothing is copied)."""
    return Pieces(table.schema, table.num_rows,
                  lambda: (table.slice(i, ROW_GROUP_ROWS) for i in range(0, table.num_rows, ROW_GROUP_ROWS)))


def _dictionary_columns(t) -> list[str] | bool:
    """The columns worth a Parquet dictionary, judged on the first row group's first 16k rows: those with fewer
    distinct values than half their rows (DuckDB decides alike).  pyarrow's default tries a dictionary on every
    column and gives up only once its page passes 1 MiB: on near-unique 10-byte keys and 90-byte payloads that
    doubled the write's CPU (0.27 s against 0.14 a million rows) for a larger file (25.8 MB against 22.7)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    head = t.slice(0, 1 << 14)
    if not head.num_rows or any(pa.types.is_nested(f.type) for f in t.schema):
        return True               # nested columns are named by their leaves' paths: pyarrow's default for all
    keep = []
    for name, col in zip(head.column_names, head.columns):
        try:
            few = pc.count_distinct(col, mode="all").as_py() < head.num_rows // 2
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            few = True            # a type count_distinct does not take: pyarrow's default
        if few:
            keep.append(name)
    return keep


class _Parts:
    """This rank's parts of one ``--out``, written but not yet in place: local files in the job's hidden folder
    (renamed into ``--out`` at the commit), or ``s3://`` multipart uploads (completed at the commit; until then
    the store shows nothing under the part's key).  A job taken in passes keeps them until its last pass, so a
    job that fails at any pass leaves none of its parts, not the earlier passes' ones.

    ``discard`` may come from the event loop while ``write`` runs on its thread (a job aborted mid-write): the
    writer checks ``dead`` under the lock before each row group and drops its own part once it sees it."""

    def __init__(self, out: str, where: str, job: str, stale: list[str]) -> None:
        self.out, self.where, self.stale = out, where, stale
        self.remote = where.startswith("s3://")
        self.tmp = None if self.remote else os.path.join(where, f".job-{job}")
        self.written: list[tuple[str, Any]] = []        # (part name, its open upload or None)
        self.dead = False
        self._lock = threading.Lock()

    def final(self, name: str) -> str:
        return f"{self.where.rstrip('/')}/{name}" if self.remote else os.path.join(self.where, name)

    def _store(self, name: str):
        """The store's errors as one line naming the part (not the rows' own errors: those stay as they are)."""
        from shardstats.worker.io.objects import explained
        return explained(self.final(name), on_worker=True) if self.remote else contextlib.nullcontext()

    def write(self, name: str, pieces: Pieces) -> None:
        """On a thread: the rows to the part, one row group at a time."""
        import pyarrow.parquet as pq
        with self._lock:
            if self.dead:
                return
            if self.remote:
                from shardstats.worker.io.objects import shared_store
                with self._store(name):
                    sink = shared_store().open(self.final(name), "wb", autocommit=False, block_size=_OBJECT_BLOCK)
                self.written.append((name, sink))
            else:
                os.makedirs(self.tmp, exist_ok=True)
                sink = os.path.join(self.tmp, name)
                self.written.append((name, None))
        w = None
        try:
            for t in pieces.make():
                if self.dead:
                    break
                with self._store(name):
                    if w is None:
                        w = pq.ParquetWriter(sink, pieces.schema, use_dictionary=_dictionary_columns(t))
                    w.write_table(t, row_group_size=ROW_GROUP_ROWS)
        finally:
            with self._store(name):
                if w is None:
                    w = pq.ParquetWriter(sink, pieces.schema)
                w.close()
                if self.remote and not self.dead:
                    sink.close()       # the last piece goes up; the upload stays open until commit()
        if self.dead:
            self.discard()

    def remove_stale(self, keep: set[str]) -> None:
        """``--overwrite``: the part files ``--out`` held before the job, but those it is about to replace."""
        gone = [f for f in self.stale if f not in keep]
        if self.remote and gone:
            from shardstats.worker.io.objects import explained, shared_store
            with explained(self.where, on_worker=True):
                shared_store().rm([self.final(f) for f in gone])
            return
        for f in gone:
            try:
                os.unlink(os.path.join(self.where, f))
            except OSError:
                pass

    def commit(self) -> None:
        for name, sink in self.written:
            if sink is not None:
                with self._store(name):
                    sink.commit()
            else:
                os.replace(os.path.join(self.tmp, name), self.final(name))
        self.written = []

    def discard(self) -> None:
        """Every part of this rank not committed: deleted, or its upload aborted (best effort: the job is failing
        already, and an upload left open is invisible)."""
        with self._lock:
            self.dead = True
            written, self.written = self.written, []
        for _, sink in written:
            if sink is not None:
                try:
                    sink.discard()
                except Exception:       # noqa: BLE001 -- the failure being reported is the job's, not this one
                    pass
                sink.closed = True      # else closing it (at garbage collection) would start a new upload
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _list_stale(out: str, where: str) -> list[str]:
    if where.startswith("s3://"):
        from shardstats.worker.io.objects import explained, shared_store
        with explained(where, on_worker=True):
            try:
                names = shared_store().ls(where.rstrip("/") + "/", detail=False)
            except FileNotFoundError:
                names = []
        return sorted(n.rsplit("/", 1)[-1] for n in names
                      if n.rsplit("/", 1)[-1].startswith("part-") and n.endswith(".parquet"))
    try:
        os.makedirs(where, exist_ok=True)
        return sorted(f for f in os.listdir(where) if f.startswith("part-") and f.endswith(".parquet"))
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create or list it ({exc.strerror or exc})") from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        from shardstats.worker.spill import write_failure
        return write_failure(exc)
    return str(exc).split(": ", 1)[-1]         # a store's error (ShardstatsError): its words after the name


def discard_parts(comm: Communicator) -> None:
    """A job that failed between passes: this rank's parts of the earlier passes go (see ``_Parts``)."""
    parts = getattr(comm, "out_parts", None)
    if parts is not None:
        parts.discard()
        comm.out_parts = None


async def write_parts(comm: Communicator, table, out: str, job: str, overwrite: bool = False) -> dict:
    """Writes this rank's rows (a table, or ``Pieces`` made as they are written) as one part file under ``out``
    -- a folder, or an ``s3://bucket/prefix/`` -- in row groups of ``ROW_GROUP_ROWS``, committed once every
    rank has written its own (and, in a job taken in passes, every pass).

    ``overwrite``: part files already there are removed at the commit (but those the job writes), instead of
    refusing the job before it writes anything."""
    pieces = table if isinstance(table, Pieces) else pieces_of(table)
    pass_index = getattr(comm, "pass_index", None)
    passes = getattr(comm, "passes", None) or 1
    parts = getattr(comm, "out_parts", None) if pass_index else None     # a later pass: the first pass's parts
    if parts is None:
        where = out if out.startswith("s3://") else out_dir(comm, out)
        stale = _list_stale(out, where)
        if stale and not overwrite:
            raise InputError(f"--out {out}: already holds {stale[0]}{' and more' if len(stale) > 1 else ''}; "
                             f"remove the old part files, choose another folder, or add --overwrite")
        parts = comm.out_parts = _Parts(out, where, job, stale)
    try:
        return await _write_and_commit(comm, parts, pieces, out, overwrite, pass_index, passes)
    except BaseException:
        discard_parts(comm)           # a job aborted mid-write (or failing anywhere here) leaves no part of its own
        raise


async def _write_and_commit(comm: Communicator, parts: _Parts, pieces: Pieces, out: str, overwrite: bool,
                            pass_index: int | None, passes: int) -> dict:
    name = part_name(comm.rank, pass_index)
    why = ""
    try:        # on a thread: a part of 100 MB takes seconds to write, and heartbeats must go on meanwhile
        await asyncio.to_thread(parts.write, name, pieces)
    except (OSError, ShardstatsError) as exc:
        worker = getattr(comm.spill, "worker", comm.rank)
        why = f"worker {worker}: --out {out}: cannot write {parts.final(name)} ({_why(exc)}); nothing was committed"
    # every rank learns the first failure, so the job fails with the line naming the worker and its part
    failed = (await allreduce(comm, {"why": why}, lambda a, b: {"why": a["why"] or b["why"]}, "answer.written"))["why"]
    if failed:
        discard_parts(comm)
        raise InputError(failed)
    if pass_index is not None and pass_index < passes - 1:
        return {"part": name, "part_rows": pieces.num_rows}       # committed with the last pass's
    if overwrite and comm.rank == 0:
        mine = {part_name(r, p) for r in range(comm.size) for p in ([None] if pass_index is None else range(passes))}
        await asyncio.to_thread(parts.remove_stale, mine)
    await asyncio.to_thread(parts.commit)
    comm.out_parts = None
    await allreduce(comm, {"n": 1}, lambda a, b: {"n": a["n"] + b["n"]}, "answer.committed")
    if parts.tmp is not None:
        try:
            os.rmdir(parts.tmp)       # the last rank out removes it (workers on other hosts each have their own)
        except OSError:
            pass
    return {"part": name, "part_rows": pieces.num_rows}


def _cell(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.10g}"
    if isinstance(v, list):
        text = "[" + ", ".join(_cell(x) for x in v[:8]) + (", ..." if len(v) > 8 else "") + "]"
        return text
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_cell(x)}" for k, x in v.items()) + "}"
    return str(v)


def text_table(columns: list[str], rows: list[list], width: int = 40) -> list[str]:
    """Rows as aligned text columns for people (cells cut at ``width`` characters)."""
    cells = [[_cell(v)[:width] for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return out


def render_rows(r: dict, noun: str = "row") -> list[str]:
    """A keyed job's answer for people: its rows as a table and how many there are in all, or where they went."""
    if r.get("out"):
        return [f"{r['rows']:,} {noun}{'s' * (r['rows'] != 1)} written to {r['out']}/part-*.parquet"]
    lines = text_table(r["columns"], r["data"])
    shown = len(r["data"])
    lines.append(f"{r['rows']:,} {noun}{'s' * (r['rows'] != 1)}" + (
        f" (first {shown:,} shown; --limit, or --out DIR for all)" if shown < r["rows"] else ""))
    return lines
