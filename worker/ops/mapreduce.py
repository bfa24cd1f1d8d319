"""mapreduce: the user's own map, combine, partition and reduce functions, on the cluster's one engine.

A job is a Python file (``--job FILE.py``) defining ``mapper(record)`` -- yielding
``(key, value)`` pairs -- and optionally ``combiner(key, values)`` and
``reducer(key, values)`` (both yielding pairs), ``partitioner(key, n) -> int`` and
``sort_values(value)`` (each reducer call sees its values in that order); or the
batch forms ``map_batch(table)``, ``combine_batch(table)``, ``reduce_batch(table)``
over Arrow tables with ``key`` and ``value`` columns. From Python the same functions
are given as arguments and shipped with cloudpickle. A record is a dict of a row's
columns, or for text files ``{"doc", "line", "text"}``; ``sides[NAME]`` holds each
``--side NAME=PATH`` table's rows on every mapper.

The semantics: every key's values reach exactly one reducer call, keys in sorted order
on each reducer; the combiner may run zero, one or many times (here: once per mapper,
and on a hot key's salted parts), so a job is right only if its combiner is --
``--check-combiner`` tries random groupings on each worker's records first. The
functions run in a child process per worker (``worker.usercode``): a raise fails the
job naming the user's file:line, a hang ends at the job's deadline, a memory hog hits
the child's limit, and the worker serves the next job.
"""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass, replace

from shardstats.lazy import numpy as np

from shardstats.errors import UsageError
from shardstats.worker.comm.collectives import allreduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.comm.shuffle import ShuffleConfig
from shardstats.worker.engine import counter
from shardstats.worker.ops.contract import KeyedParams, Op, option

FUNCTIONS = ("mapper", "combiner", "reducer", "partitioner", "sort_values", "map_batch", "combine_batch",
             "reduce_batch")
CHECK_SAMPLE = 2_000
# The most a job's code (its source, or its functions pickled, base64) may weigh: it travels inside the job's
# messages, whose frames stop at 4 MiB (settings.max_frame); the rest of a message is its other fields.
MAX_CODE = 3 << 20


def _sides(items) -> tuple:
    out, seen = [], set()
    for item in items or ():
        name, sep, path = str(item).partition("=")
        if not sep or not name.strip().isidentifier() or not path.strip():
            raise ValueError(f"{item!r} is not NAME=PATH (e.g. users=users.csv)")
        if name.strip() in seen:         # the last one silently won
            raise ValueError(f"{name.strip()!r} names two tables: give each its own NAME")
        seen.add(name.strip())
        out.append(f"{name.strip()}={path.strip()}")
    return tuple(out)


@dataclass(frozen=True)
class MapreduceParams(KeyedParams):
    job: str | None = option(None, "The job's Python file: mapper(record) and optionally combiner, reducer, "
                             "partitioner, sort_values (or map_batch/combine_batch/reduce_batch).", metavar="FILE.py")
    reducers: int | None = option(None, "Reducers (default: every worker). At most one per worker: a larger N "
                                  "runs on the workers there are (a warning, and reducers_asked in the stats), and "
                                  "a partitioner's n is their count.",
                                  min=1, max=65_536)
    side: tuple = option((), "A small table every mapper sees as sides[NAME] (a list of rows): NAME=PATH. "
                         "Repeat it for more.", metavar="NAME=PATH", multiple=True, parse=_sides)
    check_combiner: bool = option(False, "Before the job, run each worker's first records with the combiner in "
                                  "random groupings and without it; fail when the answers differ.")
    combine: bool = option(True, "Run the combiner on the mappers (--no-combine to compare the counter).",
                           advanced=True)
    salt: str = option("auto", "A hot key of a job with a combiner: auto (spread over the reducers, merged by "
                       "the combiner, then reduced) or off.", choices=("auto", "off"))
    # filled in where the job is asked for (``prepare``): what the workers run
    code: str | None = option(None, "The job's code as it travels (set from --job or the API's functions).",
                              advanced=True)
    code_kind: str = option("none", "source or pickle.", choices=("none", "source", "pickle"), advanced=True)
    code_name: str = option("job.py", "The file name tracebacks name.", advanced=True)
    mapper: object | None = option(None, "API: the mapper function.", advanced=True)
    combiner: object | None = option(None, "API: the combiner function.", advanced=True)
    reducer: object | None = option(None, "API: the reducer function.", advanced=True)
    partitioner: object | None = option(None, "API: the partitioner function.", advanced=True)
    sort_values: object | None = option(None, "API: the secondary-sort key function.", advanced=True)
    map_batch: object | None = option(None, "API: the batch mapper.", advanced=True)
    combine_batch: object | None = option(None, "API: the batch combiner.", advanced=True)
    reduce_batch: object | None = option(None, "API: the batch reducer.", advanced=True)

    def check(self) -> None:
        super().check()
        given = [f for f in FUNCTIONS if getattr(self, f) is not None]
        for f in given:
            if not callable(getattr(self, f)):
                raise UsageError(f"{f}: pass a function (from the CLI, name them in --job FILE.py)")
        if not (self.job or self.code or given):
            raise UsageError("--job: name the job's Python file (defining mapper(record)), e.g. --job wc.py")
        if self.job and given:
            raise UsageError("--job: give a job file or functions, not both")

    def to_wire(self) -> dict:
        return {k: v for k, v in super().to_wire().items() if k not in FUNCTIONS}


def prepare(p: MapreduceParams) -> MapreduceParams:
    """The client's side: the job file's source, or the functions pickled (cloudpickle), in ``code``."""
    if p.code is not None:
        return p
    if p.job:
        import os
        try:
            with open(p.job, encoding="utf-8") as f:
                source = f.read()
        except OSError as exc:
            raise UsageError(f"--job {p.job}: cannot read it ({exc.strerror or exc})") from None
        try:
            compile(source, p.job, "exec")
        except SyntaxError as exc:
            raise UsageError(f"--job {p.job}:{exc.lineno}: {exc.msg}") from None
        if len(source.encode("utf-8")) > MAX_CODE:
            raise UsageError(f"--job {p.job}: {len(source.encode('utf-8')) / 2**20:.2f} MiB of code; a job file may "
                             f"be at most {MAX_CODE >> 20} MiB: keep data in a file (--side NAME=PATH, or read "
                             f"inside the function)")
        return replace(p, code=source, code_kind="source", code_name=os.path.abspath(p.job))
    import cloudpickle
    fns = {f: getattr(p, f) for f in FUNCTIONS if getattr(p, f) is not None}
    try:
        pickled = cloudpickle.dumps(fns)
    except Exception as exc:  # noqa: BLE001 - what a function captured (a lock, a socket, an open file...)
        # cloudpickle's own TypeError ("cannot pickle '_thread.lock' object") named neither the function nor
        # that it is the user's to fix: the first function that does not pickle, and why
        bad = next((f for f, fn in fns.items() if not _pickles(cloudpickle, fn)), "a function")
        raise UsageError(f"{bad}: cannot be shipped to the workers ({type(exc).__name__}: {exc}); a function "
                         f"may use only what pickles (no locks, sockets, open files or connections: make them "
                         f"inside it)") from None
    blob = base64.b64encode(pickled).decode("ascii")
    if len(blob) > MAX_CODE:
        # what a function captures travels with it: a 12 MB dict failed as the protocol's "FrameTooLarge
        # refusing to send a 15055563-byte frame", naming neither the function nor what to do
        sizes = {f: len(cloudpickle.dumps(fn)) for f, fn in fns.items()}
        big = max(sizes, key=sizes.get)
        raise UsageError(f"{big}: pickles to {sizes[big] / 2**20:.2f} MiB with what it captures; a job's "
                         f"functions may be at most {MAX_CODE >> 20} MiB in all (base64): keep data in a file "
                         f"(side=[\"NAME=PATH\"] gives every mapper a table as sides[NAME]), or read it inside the "
                         f"function")
    name = getattr(next(iter(fns.values())), "__code__", None)
    return replace(p, code=blob, code_kind="pickle", code_name=name.co_filename if name else "<functions>",
                   **{f: None for f in FUNCTIONS})


def _pickles(cloudpickle, fn) -> bool:
    try:
        cloudpickle.dumps(fn)
    except Exception:  # noqa: BLE001 - any failure of the pickler: this function is the one
        return False
    return True


def reads(p: MapreduceParams) -> dict:
    sides = {f"side:{s.partition('=')[0]}": [s.partition("=")[2]] for s in p.side}
    out = {"kind": "auto", "columns": None, "cache": p.cache}
    if sides:
        out["sides"] = sides
    else:       # beyond memory: records mapped (and combined) as they are read, pairs kept in runs by key slice
        out["slice_on"] = {"main": ["key"]}
        out["premap"] = {"op": "mapreduce", "code": p.code, "code_kind": p.code_kind, "code_name": p.code_name,
                         "combine": p.combine, "check_combiner": p.check_combiner}
    return out


async def mapreduce(comm: Communicator, inputs, params: MapreduceParams) -> tuple[dict | None, dict]:
    from shardstats.worker.engine.answer import rows_answer
    from shardstats.worker.engine.exchange import broadcast_table
    from shardstats.worker.usercode import UserCode, load_request
    if not getattr(comm, "user_code", True):
        raise UsageError("this cluster's workers run no user code (started with --no-user-code)")
    from shardstats.worker.jobs import Sides
    sides = inputs if isinstance(inputs, Sides) else {"main": inputs}
    table = sides["main"]
    cfg = ShuffleConfig.from_params(params, None)
    # one reducer a worker: a larger --reducers runs on the workers there are, said in the stats and on stderr
    # (a partitioner's n is then their count: a silent cap changed the user's routing unseen)
    reducers = min(params.reducers or comm.size, comm.size)
    access = getattr(comm, "access", None)
    limit = access.budget if access is not None and access.budget else None
    async with UserCode(limit) as code:
        loaded = await code.call(load_request(params.code, params.code_kind, params.code_name))
        for name in sorted(k for k in sides if k != "main"):
            whole, _ = await broadcast_table(comm, sides[name], cfg, compression=params.compression)
            await code.call({"op": "side", "name": name.split(":", 1)[1], "ipc": _ipc(whole)})
        per_stage = []
        result = table
        del table
        for index, names in enumerate(loaded["stages"]):
            if index:
                comm.progress.set(f"stage {index + 1}")
                result = await _agree(comm, result)   # the next stage's records: one schema on every rank
            result, st = await _stage(comm, code, result, params, index, set(names), cfg, reducers)
            per_stage.append(st)
    first = per_stage[0]
    stats = {"map_pairs": first["map_pairs"], "combined_pairs": first["combined_pairs"],
             **{k: sum(st[k] for st in per_stage) for k in ("shuffled_pairs", "shuffled_bytes")},
             "reducer_pairs": first["reducer_pairs"],
             **{k: v for st in per_stage for k, v in st.items() if k in ("hot_keys", "salt")},
             "rounds": sum(st["rounds"] for st in per_stage), "phases": counter.sum_phases(st["phases"] for st in per_stage),
             "output_rows": result.num_rows, "reducers": reducers}
    if params.reducers and params.reducers > comm.size:
        stats["reducers_asked"] = params.reducers
    if len(per_stage) > 1:
        stats["stages"] = [{k: st[k] for k in ("map_pairs", "combined_pairs", "shuffled_pairs", "shuffled_bytes",
                                               "reducer_pairs")} for st in per_stage]
    # every rank's output must share one schema for the part files: the types every rank agrees on
    result = await _agree(comm, result)
    order = [(c, "ascending") for c in result.column_names if c in ("key",)] or \
        [(result.column_names[0], "ascending")]
    answer = await rows_answer(comm, result, order, params, stats)
    if answer is not None and "reducers_asked" in stats:
        answer["warnings"] = [f"--reducers {params.reducers}: ran {reducers}, one a worker on the {comm.size} workers "
                              f"there are (a partitioner's n was {reducers})"]
    return answer, stats


async def _stage(comm: Communicator, code, table, params: MapreduceParams, index: int, has: set,
                 cfg: ShuffleConfig, reducers: int):
    """One map -> combine -> partition -> shuffle -> reduce stage of the job on this rank: its output table and
    its counters."""
    from shardstats.worker.engine.exchange import exchange, exchange_to
    from shardstats.worker.engine.hot import find_hot, hot_rows
    t0 = time.perf_counter()
    at = {"stage_index": index}
    combine = params.combine and bool(has & {"combiner", "combine_batch"})
    premapped = getattr(comm, "premapped", None)
    if premapped is not None:     # mapped as the share was read beyond memory (usercode.MapPremap): one slice
        mapped, pairs = premapped, table
        if "partitioner" in has:
            pairs = _table((await code.call({"op": "dest", "ipc": _ipc(pairs), "reducers": reducers, **at}))["ipc"])
    else:
        if params.check_combiner:
            got = await code.call({"op": "check", "ipc": _ipc(table.slice(0, CHECK_SAMPLE)), "seed": comm.rank,
                                   **at})
            problems = await allreduce(comm, {"p": [got["problem"]] if got["problem"] else []},
                                       lambda a, b: {"p": a["p"] + b["p"]}, "mapreduce.check")
            if problems["p"]:
                raise UsageError(problems["p"][0])
        comm.progress.set("map")
        mapped = await code.call({"op": "map", "ipc": _ipc(table), "combine": combine,
                                  "reducers": reducers if "partitioner" in has else None, **at})
        pairs = _table(mapped["ipc"])
    del table
    phases = {"map": time.perf_counter() - t0}
    batch = mapped["batch"]
    extra: dict = {}
    if not has & {"reducer", "reduce_batch"} and not combine:    # no reduce: the mapper's output is the stage's
        out = await code.call({"op": "reduce", "ipc": _ipc(pairs), "stage": "none", **at}) if not batch else None
        result = _table(out["ipc"]) if out else pairs
        ex = {"counters": {"shuffled_pairs": 0, "shuffled_bytes": 0, "reducer_pairs": pairs.num_rows},
              "phases": {}}
    else:
        salt = None
        if params.salt == "auto" and combine and "dest" not in pairs.column_names and comm.size > 1:
            hot = await find_hot(comm, pairs, ["key"])
            if hot:
                flags = hot_rows(pairs, ["key"], hot)
                salt = np.where(flags, (np.arange(pairs.num_rows) % comm.size) + 1, 0).astype(np.uint64)
                extra = {"hot_keys": [[_show(k[0]), n] for k, n in hot[:10]], "salt": comm.size}
        if "dest" in pairs.column_names:       # the user's partitioner chose each key's reducer
            dest = pairs.column("dest").to_numpy().astype(np.int64)
            mine, ex = await exchange_to(comm, pairs.drop_columns(["dest"]), dest, cfg,
                                         compression=params.compression)
        elif reducers < comm.size:
            from shardstats.worker.data.hashing import hash_columns, owners_of
            dest = owners_of(hash_columns(pairs, ["key"]), reducers).astype(np.int64)
            mine, ex = await exchange_to(comm, pairs, dest, cfg, compression=params.compression)
        else:
            mine, ex = await exchange(comm, pairs, ["key"], cfg, compression=params.compression, salt=salt)
        del pairs
        if salt is not None:          # a hot key's salted parts: merged by the combiner, then to its reducer
            part = _table((await code.call({"op": "reduce", "ipc": _ipc(mine), "stage": "combiner", **at}))["ipc"])
            mine, ex2 = await exchange(comm, part, ["key"], cfg, compression=params.compression)
            for k in ("shuffled_pairs", "shuffled_bytes"):
                ex["counters"][k] += ex2["counters"][k]
        comm.progress.set("reduce")
        t2 = time.perf_counter()
        result = _table((await code.call({"op": "reduce", "ipc": _ipc(mine), "stage": "reducer", **at}))["ipc"])
        phases["reduce"] = time.perf_counter() - t2
    phases.update(ex["phases"])
    return result, {"map_pairs": mapped["map_pairs"], "combined_pairs": mapped["combined_pairs"], **ex["counters"],
                    **extra, "rounds": 1 + bool(extra), "phases": phases}


async def _agree(comm: Communicator, table):
    """``table`` in the types every rank's output agrees on: the non-empty ranks' common schema (an empty
    rank takes it), else column by column the readers' promotions (int with float...), else JSON text for
    that column on every rank (a column some rank already wrote as JSON text, ``usercode.JSON_FIELD``, is
    JSON text everywhere, encoded once). Every column became JSON text when one disagreed: a mixed-type key
    turned the reducers' int counts into strings, and a rank's JSON text was encoded again."""
    import pyarrow as pa
    from shardstats.worker.data.schema import unify
    from shardstats.worker.jobs import arrow_schema, conform
    from shardstats.worker.usercode import JSON_FIELD
    mine = {"n": table.num_rows, "schema": table.schema.serialize().to_pybytes(),
            "desc": [[f.name, str(f.type), f"worker {comm.rank}"] for f in table.schema]}
    every = await allreduce(comm, {"s": [mine]}, lambda a, b: {"s": a["s"] + b["s"]}, "mapreduce.schema")
    full = [x for x in every["s"] if x["n"]]
    if len({x["schema"] for x in full}) <= 1:
        if not full or table.num_rows:
            return table
        return pa.Table.from_batches([], schema=pa.ipc.read_schema(pa.py_buffer(full[0]["schema"])))
    schemas = [pa.ipc.read_schema(pa.py_buffer(x["schema"])) for x in full]
    fields: dict[str, list] = {}
    for sch in schemas:
        for f in sch:
            fields.setdefault(f.name, []).append(f)
    target = []
    for name, fs in fields.items():
        text = pa.field(name, pa.large_string(), metadata=JSON_FIELD)
        if any(f.metadata and f.metadata.get(b"shardstats.json") for f in fs):
            target.append(text)
            continue
        try:
            target.append(arrow_schema(unify([[[name, str(f.type), f"worker {i}"]] for i, f in enumerate(fs)]))[0])
        except Exception:  # noqa: BLE001 - types no reader would agree (lists, structs, or text vs numbers)
            target.append(text)
    cols = []
    for f in target:
        if f.name not in table.column_names:
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        mine_json = bool(table.schema.field(f.name).metadata and
                         table.schema.field(f.name).metadata.get(b"shardstats.json"))
        if f.metadata and f.metadata.get(b"shardstats.json"):
            if not mine_json:
                import json
                col = pa.array([json.dumps(x, default=repr) for x in col.to_pylist()], pa.large_string())
        else:
            col = conform(pa.table({f.name: col}), pa.schema([f])).column(0)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=pa.schema(target))


def _show(kb):
    from shardstats.worker.usercode import _unpack
    try:
        return _unpack(kb) if isinstance(kb, bytes) else kb
    except Exception:  # noqa: BLE001 - a batch key is already plain
        return repr(kb)


def _ipc(table) -> bytes:
    from shardstats.worker.usercode import _ipc
    return _ipc(table)


def _table(b: bytes):
    from shardstats.worker.usercode import _table
    return _table(b)


def render(r: dict) -> list[str]:
    from shardstats.worker.engine.answer import render_rows
    return render_rows(r, "output pair")


OP = Op(
    name="mapreduce",
    summary="Runs your own mapper, combiner, partitioner and reducer (a Python file) over records, on the "
            "cluster's shuffle, with the shuffle counter.",
    params=MapreduceParams,
    run=mapreduce,
    render=render,
    phases=("load", "map", "partition", "shuffle", "reduce"),
    examples=("cluster submit mapreduce --job examples/wordcount.py --input docs/",
              "cluster submit mapreduce --job examples/map_side_join.py --input orders/ --side users=users.csv"),
    summarize=counter.summarize,
    reads=reads,
    prepare=prepare,
    user_code=True,
)
