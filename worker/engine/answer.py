"""What a keyed job hands back: a bounded, ordered head of its rows at rank 0, or Parquet part files under --out.

Printing: each reducer sorts its own rows and sends at most ``limit`` of them up the
binomial tree; every rank merges what reaches it and keeps ``limit``. The head of the
whole result is exact (each key lives on one reducer), and no rank receives more than
``limit`` rows from any child, whatever the result's size.

Writing: each reducer writes ``part-NNNNN.parquet`` (its rank) under a hidden folder
of the job inside ``--out``; after every rank has written, each renames its own part
into place. A job that fails anywhere leaves no part files of its own behind, and
``--out`` must hold no part files before (a new job never mixes with an old one's).
"""
from __future__ import annotations

import asyncio
import os
import shutil
from decimal import Decimal

from shardstats.errors import InputError
from shardstats.worker.comm.collectives import allreduce, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.data import codec


def sort_keys(columns: list[str], order: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return order or [(c, "ascending") for c in columns]


def _head(table, order, limit: int):
    import pyarrow as pa
    import pyarrow.compute as pc
    if table.num_rows == 0:
        return table
    table = table.combine_chunks()
    try:                        # pyarrow >= 25 places nulls per key; older ones take one placement for all
        idx = pc.sort_indices(table, sort_keys=[(c, o, "at_end") for c, o in order])
    except (TypeError, ValueError, pa.ArrowInvalid):
        idx = pc.sort_indices(table, sort_keys=order, null_placement="at_end")
    if limit:
        idx = idx[:limit]
    return table.take(idx)


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
        return {"rows": rows, "columns": table.column_names, "data": [], "out": params.out}
    head = await gather_head(comm, table, order, params.limit)
    if head is None:
        return None
    t, rows = head
    return {"rows": rows, "columns": t.column_names, "data": rows_of(t), "_order": order}


def plain(value):
    """An Arrow value as JSON and msgpack carry it: decimals of integers as ints, times as ISO text."""
    import datetime
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
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


def rows_of(table) -> list[list]:
    """The rows as plain lists, as many as fit one answer frame (``ANSWER_CONTAINERS``, ``ANSWER_BYTES``)."""
    import msgpack
    cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
    rows, used = [], 1
    for i in range(table.num_rows):
        row = [plain(c[i]) for c in cols]
        used += _containers(row)
        if used > ANSWER_CONTAINERS:
            break
        rows.append(row)
    while rows and len(msgpack.packb(rows, default=str)) > ANSWER_BYTES:
        rows = rows[: len(rows) // 2]
    return rows


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


async def write_parts(comm: Communicator, table, out: str, job: str, overwrite: bool = False) -> dict:
    """Writes this rank's rows as one part file under ``out``, committed once every rank has written its own.

    ``overwrite``: part files already there are removed at the commit (each rank its own, and rank 0 any
    numbered beyond the job's ranks), instead of refusing the job before it writes anything."""
    import pyarrow.parquet as pq
    where = out_dir(comm, out)
    try:
        os.makedirs(where, exist_ok=True)
        stale = sorted(f for f in os.listdir(where) if f.startswith("part-") and f.endswith(".parquet"))
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create or list it ({exc.strerror or exc})") from None
    later_pass = bool(getattr(comm, "pass_index", None))       # the job's own parts of earlier passes are there
    if later_pass:
        stale = []
    if stale and not overwrite:
        raise InputError(f"--out {out}: already holds {stale[0]}{' and more' if len(stale) > 1 else ''}; "
                         f"remove the old part files, choose another folder, or add --overwrite")
    tmp = os.path.join(where, f".job-{job}")
    os.makedirs(tmp, exist_ok=True)
    name = part_name(comm.rank, getattr(comm, "pass_index", None))
    ok = 1
    try:        # on a thread: a part of 100 MB takes seconds to write, and heartbeats must go on meanwhile
        await asyncio.to_thread(pq.write_table, table, os.path.join(tmp, name), row_group_size=1 << 17)
    except OSError as exc:
        ok = 0
        why = exc.strerror or str(exc)
    total = await allreduce(comm, {"ok": ok, "n": 1}, lambda a, b: {"ok": a["ok"] + b["ok"], "n": a["n"] + b["n"]},
                            "answer.written")
    if total["ok"] != total["n"]:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok:
            raise InputError(f"--out {out}: cannot write {name} ({why})")
        raise InputError(f"--out {out}: another worker could not write its part; nothing was committed")
    if overwrite and comm.rank == 0:
        for f in stale:
            if f != name and not any(f == part_name(r, getattr(comm, "pass_index", None)) for r in range(comm.size)):
                try:
                    os.unlink(os.path.join(where, f))
                except OSError:
                    pass
    os.replace(os.path.join(tmp, name), os.path.join(where, name))
    await allreduce(comm, {"n": 1}, lambda a, b: {"n": a["n"] + b["n"]}, "answer.committed")
    try:
        os.rmdir(tmp)             # the last rank out removes it (workers on other hosts each have their own)
    except OSError:
        pass
    return {"part": name, "part_rows": table.num_rows}


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
