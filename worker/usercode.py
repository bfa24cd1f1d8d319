"""User code -- a MapReduce job's own functions -- run in a child process of the worker, never in the worker itself.

Why a process: the worker must outlive whatever a job's functions do. A function that
raises fails its job with the file:line in the user's file; one that loops forever is
killed at the job's deadline (a thread could not be); one that exhausts memory hits
the child's own limit (``RLIMIT_AS``) or the kernel's OOM killer, and only the child
dies. In every case the worker goes on serving the next job. The child runs as the
worker's user, with its files and network: user code is as trusted as the client that
holds the cluster's token (a worker started with ``--no-user-code`` refuses such jobs).

The parent (``UserCode``) and the child (``main``) speak length-prefixed msgpack frames
over the child's stdin/stdout; a frame's table (``ipc``: Arrow IPC bytes) follows it raw,
its size in the frame -- packed inside it, a 107 MB share cost three more copies. Keys and
values of the record form travel as msgpack bytes in binary columns, so any key msgpack
carries (str, int, float, bool, None, bytes, tuples) hashes stably and sorts in Python.
"""
from __future__ import annotations

import itertools
import os
import struct
import sys
import traceback

import msgpack

HEADER = struct.Struct(">Q")
FUNCTIONS = ("mapper", "combiner", "reducer", "partitioner", "sort_values", "map_batch", "combine_batch",
             "reduce_batch")
BATCH_ROWS = 65_536
# Arrow's own allocator reserves address space in large arenas, which a child under RLIMIT_AS cannot get (a
# 64 MiB budget failed its first 16k-record map): the C heap, so the limit measures what the job's code uses.
CHILD_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system",
             # One str hash on every worker, as PySpark sets it: a partitioner of hash(key) % n, each worker's child
             # hashing with its own random seed, sent one key to several reducers.
             "PYTHONHASHSEED": "0"}


# -- the child --------------------------------------------------------------------------------------------
class _Job:
    def __init__(self, source: str | None, filename: str, pickled: bytes | None) -> None:
        self.filename = filename
        self.ns: dict = {"__name__": "shardstats_user_job", "__file__": filename, "sides": {}}
        if source is not None:
            exec(compile(source, filename, "exec"), self.ns)
        if pickled is not None:
            import cloudpickle
            self.ns.update(cloudpickle.loads(pickled))
        # A chained job lists its stages (``stages = [dict(mapper=..., reducer=...), ...]``): each stage's
        # records are the previous stage's output pairs, as {"key": ..., "value": ...}.
        raw = self.ns.get("stages")
        stages = list(raw) if isinstance(raw, (list, tuple)) and raw else [self.ns]
        self.stages = []
        for i, st in enumerate(stages):
            get = st.get if isinstance(st, dict) else (lambda k, st=st: getattr(st, k, None))
            fn = {k: get(k) for k in FUNCTIONS}
            fn = {k: v for k, v in fn.items() if callable(v)}
            if "mapper" not in fn and "map_batch" not in fn:
                where = f"stage {i + 1} of " if raw else ""
                raise _UserError(f"{filename}: {where}the job defines no mapper(record) (or map_batch(table))")
            self.stages.append(fn)
        self.fn = self.stages[0]


class _UserError(Exception):
    pass


# cloudpickle (3.x) ships a notebook function's code with this file name, its line numbers kept
PICKLED_FILE = "<dynamic-code>"


def _where(exc: BaseException, filename: str) -> str:
    """The innermost frame of the user's file, as file:line in function, then the exception, then which call
    of which of the job's functions raised it (``_blame``: the record or the key), so the user can find the
    input that breaks their code. A notebook's functions arrive with cloudpickle's file name: their frames are
    shown under the file the client named."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in (filename, PICKLED_FILE)]
    at = f"{filename}:{frames[-1].lineno} in {frames[-1].name}: " if frames else f"{filename}: "
    call = getattr(exc, "shardstats_call", None)
    return f"{at}{type(exc).__name__}: {exc}{f' ({call})' if call else ''}"


def _show_value(x) -> str:
    """A record, key or value in an error message: bounded (a record may hold a whole line of text)."""
    import reprlib
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxdict, r.maxlist, r.maxtuple = 80, 80, 8, 8, 8
    return r.repr(x)


def _blame(exc: BaseException, call: str) -> BaseException:
    """``exc`` marked with the call of the user's code that raised it (the innermost mark wins)."""
    if getattr(exc, "shardstats_call", None) is None:
        try:
            exc.shardstats_call = call
        except AttributeError:        # an exception type with __slots__: no mark
            pass
    return exc


def _carried(x, what: str) -> bytes:
    """``x`` packed, or a _UserError saying which key or value msgpack cannot carry (a set, an object, an int
    beyond 64 bits), instead of the packer's bare TypeError."""
    try:
        return _pack_small(x)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _UserError(f"{what} {_show_value(x)} cannot travel between workers ({exc}): keys and values are "
                         f"str, int (64 bits), float, bool, None, bytes, or lists/tuples/dicts of those") from None


def _key_bytes(k) -> bytes:
    """A key packed as it travels: a float key's zero and NaN in one form each, as Python's dict and the keyed
    ops take them (-0.0 == 0.0; every NaN one key) -- packed as they came, -0.0 and 0.0 reached two reducer
    calls, and so did NaNs of either sign (a mapper's groups already held -0.0 with 0.0: the answer depended on
    which came first where). Only a key that is a float itself: a float inside a tuple packs as it is."""
    if type(k) is float and (k == 0.0 or k != k):
        k = 0.0 if k == 0.0 else float("nan")
    return _carried(k, "the key")


def _map_failure(exc: BaseException, filename: str, mapper, batch) -> BaseException:
    """Why ``mapper`` failed on ``batch`` (a table of BATCH_ROWS rows at most): its records mapped again one
    at a time to find the first that raises -- nothing is spent on this on the way that works -- naming that
    record; a call whose output is not (key, value) pairs is a _UserError saying what it yielded."""
    for rec in _records(batch):
        try:
            res = mapper(rec)
            out = list(res or ())
        except Exception as again:  # noqa: BLE001 - the user's code: the first record that raises
            return _blame(again, f"mapper on record {_show_value(rec)}")
        for item in out:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                one = isinstance(res, tuple) and len(res) == 2      # `return key, value`: its parts were iterated
                return _UserError(f"{filename}: the mapper yielded {_show_value(item)} on record "
                                  f"{_show_value(rec)}, not a (key, value) pair" +
                                  (f" (it returned one pair, {_show_value(res)}: yield it, or return a list "
                                   f"of pairs)" if one else ""))
    return exc          # not raised again record by record (the code depends on state): as it was


def _pack(x) -> bytes:
    return msgpack.packb(x, use_bin_type=True)


# The child's packer for keys and values (msgpack.packb makes a Packer a call, which cost more than packing a
# small value); only the child's one thread uses it -- the worker's threads call _pack.
_pack_small = msgpack.Packer(use_bin_type=True).pack


def _unpack(b: bytes):
    return msgpack.unpackb(b, raw=False, strict_map_key=False, use_list=False)


def _sort_pairs(items: list) -> list:
    """(key, ...) items in the keys' order (only the keys compared). Keys of several types (ints and strs in
    one job) go by type name, then in their own type's order (ints as numbers: by their repr, -10 came before
    -2 and 10 before 9); keys of one type that still do not compare (tuples mixing types) by their repr."""
    try:
        return sorted(items, key=lambda kv: kv[0])
    except TypeError:
        pass
    by_type: dict = {}
    for kv in items:
        by_type.setdefault(type(kv[0]).__name__, []).append(kv)
    out = []
    for name in sorted(by_type):
        group = by_type[name]
        try:
            group.sort(key=lambda kv: kv[0])
        except TypeError:
            group.sort(key=lambda kv: repr(kv[0]))
        out += group
    return out


def _unpack_all(col) -> list:
    """A binary column of packed values, decoded: its bytes are the values back to back, so one streaming
    unpacker reads them all (a call per value cost more than the decoding)."""
    import pyarrow as pa
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if col.null_count or not len(col):
        return [None if b is None else _unpack(b) for b in col.to_pylist()]
    offsets = col.buffers()[1]
    import numpy as np
    off = np.frombuffer(offsets, dtype=np.int64 if pa.types.is_large_binary(col.type) else np.int32,
                        count=len(col) + 1, offset=col.offset * (8 if pa.types.is_large_binary(col.type) else 4))
    data = col.buffers()[2][int(off[0]):int(off[-1])]
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    out = list(unpacker)
    if len(out) != len(col):
        raise ValueError(f"{len(out)} packed values decoded from {len(col)} cells")
    return out


def _pylist(col) -> list:
    """An Arrow column's values as Python objects, equal to ``col.to_pylist()``: a dictionary column by its
    values once (each row then refers to its value's one str), numbers and bools without nulls through numpy.
    Arrow's own to_pylist of the text reader's (doc, line) columns took 80% of building the records."""
    import pyarrow as pa
    t = col.type
    if pa.types.is_dictionary(t) and col.indices.null_count == 0 and col.dictionary.null_count == 0:
        return list(map(col.dictionary.to_pylist().__getitem__, col.indices.to_numpy().tolist()))
    if col.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_float32(t)
                                or pa.types.is_float64(t)):
        return col.to_numpy(zero_copy_only=False).tolist()
    return col.to_pylist()


def _row_maker(names: list[str]):
    """A function of a row's values returning its record, {name: value, ...}, written as a dict display for
    these column names (the names are bound as arguments, never spliced into the code): a third of the cost
    of dict(zip(names, row))."""
    args = ", ".join(f"a{i}" for i in range(len(names)))
    body = ", ".join(f"k{i}: a{i}" for i in range(len(names)))
    src = f"lambda {', '.join(f'k{i}' for i in range(len(names)))}: lambda {args}: {{{body}}}"
    return eval(src, {})(*names)        # noqa: S307 - the code is made here of argument names only


def _record_batches(table):
    """The rows of ``table``, BATCH_ROWS at a time, each row a new dict of its columns (a mapper may keep or
    yield its record): the columns converted whole (``_pylist``), the dicts made by ``_row_maker``."""
    names = table.column_names
    make = _row_maker(names) if names else None
    for batch in table.to_batches(BATCH_ROWS):
        yield map(make, *[_pylist(c) for c in batch.columns]) if make else ({} for _ in range(batch.num_rows))


def _records(table):
    return itertools.chain.from_iterable(_record_batches(table))


FOLD_PAIRS = 1 << 20        # the pairs a mapper's child holds before its combiner folds them (per key)
FOLD_MIN = 32               # the values a key holds before a fold combines them (see _Groups.fold)


class _Groups:
    """A mapper's pairs grouped by key as they come: str keys by themselves (the common case: one dict lookup
    and an append a pair), other keys by (type, key) so that 1, 1.0 and True stay three keys, an unhashable
    key (a list) by its packed bytes. (Inside a tuple, Python's 1 == True still groups the two together: a key
    mixing them at one position should be made a str.)

    With a combiner, ``fold`` runs it on every key holding several values once FOLD_PAIRS pairs are held and
    keeps its output as the key's values, so a child holds about its distinct keys' pairs, not every token's
    (the combiner may run any number of times, on its own output too)."""

    def __init__(self) -> None:
        import collections
        self.strs: dict = collections.defaultdict(list)
        self.others: dict = {}
        self.mapped = 0          # map output pairs counted so far, for the shuffle counter
        self.kept = 0            # the values held just after the last fold (the combiner's, not the mapper's)

    def add_all(self, outputs) -> None:
        """Every pair of every mapper call in ``outputs`` (a call's output may be None: no pairs)."""
        strs, others = self.strs, self.others
        for out in outputs:
            if out is None:
                continue
            for k, v in out:
                if type(k) is str:
                    strs[k].append(v)
                    continue
                try:
                    others.setdefault((type(k), k), []).append(v)
                except TypeError:
                    others.setdefault(("packed", _carried(k, "the key")), []).append(v)

    def held(self) -> int:
        return sum(map(len, self.strs.values())) + sum(map(len, self.others.values()))

    def count(self) -> int:
        """The map output pairs: those held beyond what the last fold kept, and those counted before it."""
        return self.mapped + self.held() - self.kept

    def items(self):
        """(key as the combiner and reducer see it, its packed bytes or None, values)."""
        yield from ((k, None, vs) for k, vs in self.strs.items())
        for (kind, k), vs in self.others.items():
            yield (_unpack(k), k, vs) if kind == "packed" else (k, None, vs)

    def fold(self, combiner) -> None:
        """The combiner over the keys holding FOLD_MIN values or more, and over every key holding several when
        the pairs held are still over FOLD_PAIRS: most of the pairs are in the frequent keys, and a fold over
        every key holding two or more made a combiner call for each of a word count's ~118k distinct words of
        a 107 MB share at every fold (6% of its map's CPU). The child holds at most max(FOLD_PAIRS, its
        distinct keys) pairs after a fold, and FOLD_PAIRS more before the next."""
        self.mapped = self.count()
        self._fold(combiner, FOLD_MIN)
        if FOLD_MIN > 2 and self.held() > FOLD_PAIRS:
            self._fold(combiner, 2)
        self.kept = self.held()

    def _fold(self, combiner, least: int) -> None:
        """The combiner over each key holding ``least`` values or more; its output replaces them (a pair it
        gives under another key joins that key's group)."""
        moved, empty = [], []
        for groups in (self.strs, self.others):
            for gk, vs in groups.items():
                if len(vs) < least:
                    continue
                key = gk if groups is self.strs else _unpack(gk[1]) if gk[0] == "packed" else gk[1]
                kept = []
                try:
                    for k2, v2 in combiner(key, vs) or ():
                        if k2 is key or (type(k2) is type(key) and k2 == key):
                            kept.append(v2)
                        else:
                            moved.append((k2, v2))
                except Exception as exc:  # noqa: BLE001 - the user's combiner: name the key
                    raise _blame(exc, f"combiner on key {_show_value(key)}")
                groups[gk] = kept                # a value replaced, the dict's size unchanged: safe mid-loop
                if not kept:
                    empty.append((groups, gk))
        for groups, gk in empty:
            del groups[gk]
        self.add_all([moved])


def _concat(tables: list):
    """Tables of the job's making as one: types promoted where pieces differ (a piece's null column, string
    beside large_string)."""
    import pyarrow as pa
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


def _batch_out(got, name: str, filename: str, pairs: bool = True):
    """A batch function's output as an Arrow table -- a record batch is taken as one -- or a _UserError saying
    what it returned instead: a list, a DataFrame, or (``pairs``: what the shuffle hashes and the next stage
    reads) a table without ``key`` and ``value`` columns. The shuffle's own KeyError said neither the function
    nor the file, and failed as the cluster's fault (exit 1)."""
    import pyarrow as pa
    if isinstance(got, pa.RecordBatch):
        got = pa.Table.from_batches([got])
    if not isinstance(got, pa.Table):
        raise _UserError(f"{filename}: {name} returned {type(got).__name__}, not an Arrow table"
                         f"{' with key and value columns' if pairs else ''} (pyarrow.table({{'key': ..., "
                         f"'value': ...}}))")
    if pairs and not {"key", "value"} <= set(got.column_names):
        raise _UserError(f"{filename}: {name} returned a table of columns {got.column_names}; it must have key "
                         f"and value columns")
    return got


def _map_batches(f: dict, table, combine: bool, filename: str = "the job") -> tuple[object, dict]:
    """The batch form a BATCH_ROWS piece at a time -- ``map_batch``, then ``combine_batch`` when declared --
    with the combined pieces combined again once they hold FOLD_PAIRS rows and at the end. Mapping a whole
    share at once held every token's row: a word count's child took ~1 GB for a 107 MB share."""
    f = {k: (lambda fn, k: lambda t: _batch_out(fn(t), k, filename))(fn, k) for k, fn in f.items()
         if k in ("map_batch", "combine_batch")}
    combiner = f.get("combine_batch") if combine else None
    done, held, n = [], 0, 0
    for start in range(0, max(1, table.num_rows), BATCH_ROWS):
        pairs = f["map_batch"](table.slice(start, BATCH_ROWS))
        n += pairs.num_rows
        if combiner is not None:
            pairs = combiner(pairs)
        done.append(pairs)
        held += pairs.num_rows
        if combiner is not None and held >= FOLD_PAIRS and len(done) > 1:
            done = [combiner(_concat(done))]
            held = done[0].num_rows
    pairs = _concat(done)
    if combiner is not None and len(done) > 1:
        pairs = combiner(pairs)
    return pairs, {"map_pairs": n, "combined_pairs": pairs.num_rows, "batch": True}


def _map(job: _Job, table, combine: bool, reducers: int | None) -> tuple[object, dict]:
    """The mapper over every record, the combiner per key (when declared and asked), and each key's reducer
    when a partitioner is declared: a pairs table (key, value[, dest]) and the counts."""
    import pyarrow as pa
    f = job.fn
    if "map_batch" in f:
        return _map_batches(f, table, combine, job.filename)
    mapper = f["mapper"]
    combiner = f.get("combiner") if combine else None
    groups = _Groups()
    for batch in table.to_batches(BATCH_ROWS):   # a batch at a time: the combiner may fold between them
        piece = pa.Table.from_batches([batch])
        try:
            for records in _record_batches(piece):
                groups.add_all(map(mapper, records))
        except (_UserError, MemoryError):        # a memory hog is not mapped again to find its record
            raise
        except Exception as exc:  # noqa: BLE001 - the user's mapper: which record, found again (_map_failure)
            raise _map_failure(exc, job.filename, mapper, piece) from None
        if combiner is not None and groups.held() - groups.kept >= FOLD_PAIRS:
            groups.fold(combiner)
    keys, values = [], []
    for key, kb, vs in groups.items():
        kb = kb if kb is not None else _key_bytes(key)
        if combiner is None:
            try:
                values += map(_pack_small, vs)          # the packer's own method: no Python call a value
            except (TypeError, ValueError, OverflowError):
                [_carried(v, f"a value of key {_show_value(key)}") for v in vs]   # raises, naming the value
                raise
            keys += [kb] * len(vs)
            continue
        try:
            for k2, v2 in combiner(key, vs) or ():
                keys.append(kb if k2 is key or (type(k2) is type(key) and k2 == key) else _key_bytes(k2))
                try:
                    values.append(_pack_small(v2))
                except (TypeError, ValueError, OverflowError):     # say which (the message made only now: it
                    # cost 5 us a key, 10% of a word count's map, as an argument made for every key)
                    _carried(v2, f"the combiner's value for key {_show_value(k2)}")
                    raise
        except _UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's combiner: name the key
            raise _blame(exc, f"combiner on key {_show_value(key)}")
    cols = {"key": pa.array(keys, pa.binary()), "value": pa.array(values, pa.binary())}
    if "partitioner" in f and reducers:
        cols["dest"] = _dest(job, keys, reducers)
    return pa.table(cols), {"map_pairs": groups.count(), "combined_pairs": len(keys), "batch": False}


def _dest(job: _Job, keys: list, reducers: int):
    """Each packed key's reducer, by the job's partitioner (called once per distinct key)."""
    import pyarrow as pa
    part, dest = job.fn["partitioner"], {}
    import operator
    for kb in set(keys):
        key = _unpack(kb)
        try:
            got = part(key, reducers)
        except Exception as exc:  # noqa: BLE001 - the user's partitioner: name the key
            raise _blame(exc, f"partitioner on key {_show_value(key)}")
        try:           # any int (numpy's too, e.g. from a hash of numpy's), but not a bool, a float or a str
            d = None if isinstance(got, bool) else operator.index(got)
        except TypeError:
            d = None
        if d is None or not 0 <= d < reducers:
            raise _UserError(f"{job.filename}: partitioner({_show_value(key)}, {reducers}) returned "
                             f"{_show_value(got)}, not a reducer from 0 to {reducers - 1}")
        dest[kb] = d
    return pa.array([dest[k] for k in keys], pa.int32())


# The field metadata of an output column written as JSON text (its values of several types): the ranks' outputs
# then agree to write that column as JSON text everywhere (ops/mapreduce._agree), and no rank encodes it twice.
JSON_FIELD = {b"shardstats.json": b"1"}


def _output(keys: list, values: list):
    """Output pairs as a (key, value) table in Arrow types where they are uniform, else (that column only) as
    JSON text, marked JSON_FIELD."""
    import json
    import pyarrow as pa

    def column(name, xs):
        # tuples as lists (Arrow takes a list for a list column); a column holding no tuple goes as it is (the
        # common case: a list comprehension over every value was a third of a word count's reduce)
        if any(issubclass(t, tuple) for t in set(map(type, xs))):
            xs = [list(x) if isinstance(x, tuple) else x for x in xs]
        try:
            return pa.field(name, (a := pa.array(xs)).type), a
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return (pa.field(name, pa.large_string(), metadata=JSON_FIELD),
                    pa.array([json.dumps(x, default=repr) for x in xs], pa.large_string()))
    (kf, k), (vf, v) = column("key", keys), column("value", values)
    return pa.Table.from_arrays([k, v], schema=pa.schema([kf, vf]))


def _reduce(job: _Job, pairs, stage: str = "reducer") -> object:
    """Every key's values (sorted by ``sort_values`` when declared) through the reducer (or, for a salted
    job's first stage, the combiner), keys in sorted order."""
    f = job.fn
    if "map_batch" in f:
        name = "reduce_batch" if stage == "reducer" else "combine_batch"
        fn = f.get(name)
        return _batch_out(fn(pairs), name, job.filename, pairs=stage != "reducer") if fn is not None else pairs
    import collections
    groups: dict[bytes, list] = collections.defaultdict(list)
    for kb, v in zip(pairs.column("key").to_pylist(), _unpack_all(pairs.column("value"))):
        groups[kb].append(v)
    # by the packed key: 1 and True (or 1.0) are different keys here as on the map side, though equal in Python;
    # the distinct keys decoded by one streaming unpacker (a msgpack call a key was 1-2 us, half the reduce)
    import pyarrow as pa
    decoded = _sort_pairs(list(zip(_unpack_all(pa.array(list(groups), pa.large_binary())), groups.values())))
    fn = f.get(stage)
    keys_out, values_out = [], []
    sv = f.get("sort_values")
    doing = "sort_values"
    try:
        for k, vs in decoded:
            if sv is not None:
                doing = "sort_values"
                vs = sorted(vs, key=sv)
            if fn is None:                    # map-only (or no reducer): the pairs as they are
                keys_out += [k] * len(vs)
                values_out += vs
                continue
            doing = stage
            for k2, v2 in fn(k, vs) or ():
                keys_out.append(k2)
                values_out.append(v2)
    except Exception as exc:  # noqa: BLE001 - the user's reducer, combiner or sort_values: name the key
        raise _blame(exc, f"{doing} on key {_show_value(k)}")
    if stage == "combiner":               # a salted first stage's output travels again: keep it packed
        import pyarrow as pa
        return pa.table({"key": pa.array(list(map(_pack_small, keys_out)), pa.binary()),
                         "value": pa.array(list(map(_pack_small, values_out)), pa.binary())})
    return _output(keys_out, values_out)


def _rounded(x):
    """``x`` with its floats to 9 significant digits (lists, tuples and dicts within too): a sort key that a sum
    taken in another order does not move."""
    if type(x) is float:
        return float(f"{x:.9g}")
    if isinstance(x, (list, tuple)):
        return [_rounded(y) for y in x]
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


def _close(a, b) -> bool:
    """Whether two answers are the same up to float rounding (relative 1e-9): a float sum combined in other
    groupings differs in its last bits, and --check-combiner refused the most common right combiner there is
    (sum of floats); an average of averages is off by far more."""
    import math
    if type(a) is float or type(b) is float:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and \
                not isinstance(b, bool):
            return (a != a and b != b) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _check_batch(job: _Job, table, seed: int) -> str | None:
    """The batch form's check: ``reduce_batch`` of the mapped sample against ``reduce_batch`` of its rows
    split at random into 2 to 4 parts, each through ``combine_batch`` (and the parts' output once more, half the
    time). --check-combiner said nothing of a batch job's combiner: an average of averages passed."""
    import random
    import numpy as np
    import pyarrow as pa
    f, name = job.fn, job.filename
    rng = random.Random(seed)
    pairs = _batch_out(f["map_batch"](table), "map_batch", name)
    if pairs.num_rows < 2:
        return None
    reduce = f.get("reduce_batch")

    def answer(t):
        out = _batch_out(reduce(t), "reduce_batch", name, pairs=False) if reduce is not None else t
        return sorted(out.to_pylist(), key=lambda row: _pack(_rounded(list(row.values()))))
    plain = answer(pairs)
    for _ in range(3):
        order = np.random.default_rng(rng.randrange(1 << 32)).permutation(pairs.num_rows)
        cuts = sorted(rng.sample(range(1, pairs.num_rows), min(pairs.num_rows - 1, rng.randint(1, 3))))
        parts = [pairs.take(order[a:b]) for a, b in zip([0, *cuts], [*cuts, pairs.num_rows])]
        combined = _concat([_batch_out(f["combine_batch"](p), "combine_batch", name) for p in parts])
        if rng.random() < 0.5:
            combined = _batch_out(f["combine_batch"](combined), "combine_batch", name)
        got = answer(combined)
        if not _close(got, plain):
            return (f"--check-combiner: combine_batch changes the answer: {_show_value(plain[:3])} without it, "
                    f"{_show_value(got[:3])} with the rows combined in {len(parts)} groups (a combiner must be "
                    f"associative and commutative, e.g. (sum, count) rather than an average)")
    return None


def _check(job: _Job, table, seed: int) -> str | None:
    """Why the combiner changes the answer on this sample (None: it does not): the reducer's answer with no
    combiner, against the combiner applied to random groupings of each key's values, twice over."""
    import random
    f = job.fn
    if "combine_batch" in f and "map_batch" in f:
        return _check_batch(job, table, seed)
    if "combiner" not in f or "mapper" not in f:
        return None
    rng = random.Random(seed)
    groups: dict = {}
    for rec in _records(table):
        try:
            for k, v in f["mapper"](rec) or ():
                groups.setdefault(_pack(k), []).append(v)
        except Exception as exc:  # noqa: BLE001 - the user's mapper on the check's sample: name the record
            raise _blame(exc, f"mapper on record {_show_value(rec)}")
    reducer = f.get("reducer") or (lambda k, vs: [(k, v) for v in vs])

    def answer(key, vs):       # the reducer's output pairs, in an order float rounding does not change
        return [_pack(x) for x in sorted((_unpack(_pack(x)) for x in (reducer(key, vs) or ())),
                                         key=lambda x: _pack(_rounded(x)))]
    for kb, vs in groups.items():
        key = _unpack(kb)
        plain = answer(key, list(vs))
        for _ in range(3):
            shuffled = list(vs)
            rng.shuffle(shuffled)
            cuts = sorted(rng.sample(range(1, len(shuffled)), min(len(shuffled) - 1, rng.randint(1, 3)))) \
                if len(shuffled) > 1 else []
            parts = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)])]
            out = [kv for p in parts for kv in (f["combiner"](key, p) or ())]
            moved = next((k2 for k2, _ in out if _pack(k2) != kb), kb)
            if moved is not kb:     # said as it is: the answer for key it only showed as ``[(key, 0)]``
                return (f"--check-combiner: the combiner, given key {_show_value(key)}, yields key "
                        f"{_show_value(moved)}: a combiner must yield each pair under the key it was given")
            combined = [v for _, v in out]
            if len(combined) > 1 and rng.random() < 0.5:      # and a combiner over combined values
                combined = [v for k2, v in (f["combiner"](key, combined) or ()) if _pack(k2) == kb]
            got = answer(key, combined)
            if not _close([_unpack(x) for x in got], [_unpack(x) for x in plain]):
                show = lambda a: [_unpack(x) for x in a][:3]
                return (f"--check-combiner: the combiner changes the answer for key {key!r}: "
                        f"{show(plain)} without it, {show(got)} with the values combined in "
                        f"{len(parts)} groups (a combiner must be associative and commutative, e.g. "
                        f"(sum, count) rather than an average)")
    return None


def _mapped_bytes() -> int:
    """The child's data now (VmData: its heap and private writable mappings), in bytes."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def main(limit: int = 0, inp=None, out=None) -> None:
    """The child: load the job, then answer requests until its input closes (stdin and stdout, or the frames'
    socket of a child forked by the template)."""
    import pyarrow as pa  # noqa: F401 - loaded before the limit is set: its mappings are not the job's budget
    if limit:
        # The budget on top of what the child's interpreter and libraries already map: a bare RLIMIT_AS of the
        # worker's budget left no room to load them (a 300 MiB budget failed every MapReduce job at its load).
        import resource
        cap = _mapped_bytes() + limit
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    inp, out = inp or sys.stdin.buffer, out or sys.stdout.buffer
    sys.stdout = sys.stderr                    # a user's print() must not corrupt the frames
    # A young collection every 50,000 allocations, not 700: grouping holds a list a key and a tuple a pair, and
    # the default's collections over them were 30% of a word count's reduce (0.19 -> 0.13 s CPU for 80k keys)
    # and 4% of its map. Cycles are still collected, a little later.
    import gc
    gc.set_threshold(50_000, 20, 20)
    job = None

    def reply(obj: dict) -> None:
        for part in _frame(obj):
            out.write(part)
        out.flush()

    table, ipc = _table, _ipc
    while True:
        head = inp.read(HEADER.size)
        if len(head) < HEADER.size:
            return
        req = _unpack(inp.read(HEADER.unpack(head)[0]))
        if "ipc_bytes" in req:
            req["ipc"] = inp.read(req.pop("ipc_bytes"))
        op = req["op"]
        failed = None
        try:
            if job is not None and "stage_index" in req:
                job.fn = job.stages[req["stage_index"]]
            if op == "load":
                job = _Job(req.get("source"), req["filename"], req.get("pickled"))
                reply({"ok": True, "has": sorted(job.fn), "stages": [sorted(f) for f in job.stages]})
            elif op == "side":
                job.ns["sides"][req["name"]] = table(req["ipc"]).to_pylist()
                reply({"ok": True})
            elif op == "map":
                pairs, counts = _map(job, table(req["ipc"]), req["combine"], req.get("reducers"))
                reply({"ok": True, "ipc": ipc(pairs), **counts})
            elif op == "dest":         # pairs mapped earlier (a share beyond memory): their reducers now
                pairs = table(req["ipc"])
                dest = _dest(job, pairs.column("key").to_pylist(), req["reducers"])
                reply({"ok": True, "ipc": ipc(pairs.append_column("dest", dest))})
            elif op == "reduce":
                reply({"ok": True, "ipc": ipc(_reduce(job, table(req["ipc"]), req.get("stage", "reducer")))})
            elif op == "check":
                reply({"ok": True, "problem": _check(job, table(req["ipc"]), req.get("seed", 0))})
        except _UserError as exc:
            failed = str(exc)
        except MemoryError:
            failed = MemoryError        # said below, once the frames holding the memory are gone with the error
        except Exception as exc:  # noqa: BLE001 - the user's code raised: report where, in their file
            failed = _where(exc, job.filename if job else req.get("filename", "the job"))
        if failed is not None:
            if failed is MemoryError:    # replying inside the handler, a hog's mapper still held its pairs: the
                # reply's own allocations raised MemoryError again and the child died with a garbled stderr
                failed = (f"{job.filename if job else req.get('filename', 'the job')}: ran out of memory in its "
                          f"{op} (the job's code may use {limit >> 20:,} MiB on each worker)")
            reply({"ok": False, "error": failed, "user": True})


# -- the template: a warm process that forks each job's child ---------------------------------------------
# A job's child started as its own interpreter paid Python's and the libraries' start-up on every worker, for
# every job: ~0.2 s of CPU a worker (0.35 s when the job imports Polars), ~3.4 s of a 10-worker job's CPU. Each
# worker keeps one template process instead, started by its first mapreduce job with these imported (not at the
# worker's start: most clusters run no user code, and ten templates' imports slowed every `cluster up` of a
# 2-core machine by ~2 s), single-threaded in its own code; a job's child is a fork of it (multiprocessing's
# forkserver pattern), so a job pays a fork. The fork is a fresh process for every job: no job's globals,
# imports or monkeypatches reach the next (one child reused across jobs would carry them).
PRELOAD = ("numpy", "pyarrow", "pyarrow.ipc", "msgpack", "cloudpickle", "polars")
STATUS = struct.Struct(">i")      # the template's word on a child's status socket: its pid, then its exit code


def template_main(ctl_fd: int) -> None:
    """The template: import the libraries a job uses, then fork a child for each request on ``ctl_fd`` (a
    SOCK_SEQPACKET socket to its worker) until the worker closes it -- or dies: its end closes with it, and the
    template kills its children and exits (they would otherwise outlive their worker).

    A request is the child's memory limit, with three descriptors: the child's frames socket (its stdin and
    stdout), its stderr file, and a status socket on which the template answers the child's pid, then its exit
    code once reaped; the worker writing on the status socket, or closing it, has the child killed. Only the
    template signals a child, and only until it reaps it: a pid is never killed after it could be reused."""
    import gc
    import importlib
    import importlib.util
    import selectors
    import signal
    import socket
    for name in PRELOAD:       # polars when installed: its import is ~0.13 s of a job that uses it
        try:
            if importlib.util.find_spec(name.partition(".")[0]) is not None:
                importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a library that cannot load is not preloaded: a job importing it is told
            pass
    import ctypes              # the child's prctl
    gc.freeze()                # the libraries' objects out of the collector's reach: a child's collections do
    # not write to (and so copy) the pages they share with the template
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # a Ctrl-C at the terminal is the worker's to handle
    ctl = socket.socket(fileno=ctl_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)     # a handler, so the wakeup fd hears of every exit
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "ctl")
    sel.register(wake_r, selectors.EVENT_READ, "chld")
    children: dict[int, socket.socket | None] = {}     # pid -> its status socket (None: the worker closed it)

    def kill(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:
        for key, _ in sel.select():
            if key.data == "ctl":
                try:
                    msg, fds, _, _ = socket.recv_fds(ctl, 64, 3)
                except OSError:
                    msg, fds = b"", []
                if not msg:           # the worker closed its end, or died: so do its children
                    for pid in children:
                        kill(pid)
                    return
                if len(fds) != 3:
                    for fd in fds:
                        os.close(fd)
                    continue
                data_fd, err_fd, status_fd = fds
                status = socket.socket(fileno=status_fd)
                sys.stderr.flush()
                template = os.getpid()
                pid = os.fork()
                if pid == 0:
                    # what the template holds is not the child's: closed before any user code runs
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    for s in (ctl, status, sel, *(c for c in children.values() if c is not None)):
                        s.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(int(msg), data_fd, err_fd, ctypes, template)        # never returns
                os.close(data_fd)
                os.close(err_fd)
                children[pid] = status
                try:
                    status.send(STATUS.pack(pid))
                except OSError:       # the worker gave up on it already: the status socket reads EOF below
                    pass
                sel.register(status, selectors.EVENT_READ, pid)
            elif key.data == "chld":
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                while children:
                    try:
                        pid, st = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    status = children.pop(pid, None)
                    if status is not None:
                        sel.unregister(status)
                        try:
                            status.send(STATUS.pack(os.waitstatus_to_exitcode(st)))
                        except OSError:
                            pass
                        status.close()
            else:                     # a child's status socket: kill asked, or the worker closed it
                pid, status = key.data, key.fileobj
                try:
                    asked = status.recv(16)
                except OSError:
                    asked = b""
                kill(pid)
                if not asked:
                    sel.unregister(status)
                    status.close()
                    children[pid] = None


def _child(limit: int, data_fd: int, err_fd: int, ctypes, template: int) -> None:
    """A job's child, just forked from the template: it dies with the template (and so with the worker), its
    frames on ``data_fd`` (its stdin and stdout too, as a child of its own interpreter had them), its stderr the
    worker's file; then ``main``. It leaves by os._exit: the template's atexit handlers and finalizers are the
    template's, not the child's."""
    code = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)      # PR_SET_PDEATHSIG: SIGKILL when the template dies
        if os.getppid() != template:    # it died before the prctl (the orphan's new parent: init, or a
            os._exit(1)                 # subreaper, which need not be pid 1)
        os.dup2(data_fd, 0)
        os.dup2(data_fd, 1)
        os.dup2(err_fd, 2)
        os.close(data_fd)
        os.close(err_fd)
        np = sys.modules.get("numpy")
        if np is not None:   # numpy's global generator is not reseeded at a fork as random's is: every job's
            np.random.seed()  # child drew the template's numbers
        inp, out = open(0, "rb", closefd=False), open(1, "wb", closefd=False)
        sys.stdin = open(os.devnull)
        main(limit, inp, out)
        code = 0
    except SystemExit as exc:        # the user's code called sys.exit
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child's last word, then its exit (never back into the template)
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
            sys.__stderr__.flush()
        finally:
            os._exit(code)


class _Template:
    """The worker's handle on its template process: one a worker process, started by its first mapreduce job
    and kept; a dead one is replaced by the next job. Used from the event loop and from load threads
    (``SyncUserCode``), hence the lock."""

    def __init__(self) -> None:
        import threading
        self.lock = threading.Lock()
        self.proc = None
        self.ctl = None
        self.started = 0          # templates started by this process (a replaced one counts again)

    def start(self) -> None:
        with self.lock:
            self._ensure()

    def stop(self) -> None:
        with self.lock:
            self._close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def _ensure(self) -> None:
        import socket
        import subprocess
        if self.proc is not None and self.proc.poll() is None:
            return
        self._close()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shardstats.worker.usercode", "--template", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=_child_env())
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.ctl = mine
        self.started += 1

    def _close(self) -> None:
        import subprocess
        if self.ctl is not None:
            self.ctl.close()          # the template kills its children and exits
            self.ctl = None
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def request(self, limit: int, data_fd: int, err_fd: int, status_fd: int) -> None:
        """Asks the template for a child (a new template if it is gone)."""
        import socket
        with self.lock:
            for attempt in range(2):
                self._ensure()
                try:
                    socket.send_fds(self.ctl, [b"%d" % limit], [data_fd, err_fd, status_fd])
                    return
                except OSError:
                    if attempt:
                        raise
                    self._close()      # it died: a fresh one


TEMPLATE = _Template()


def _child_env() -> dict:
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **CHILD_ENV}


def _spawn(limit: int, err):
    """A child forked by the template: its frames socket and its status socket (``_Child``), the pid read."""
    import socket
    data, data_child = socket.socketpair()
    status, status_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        TEMPLATE.request(limit, data_child.fileno(), err.fileno(), status_child.fileno())
    except BaseException:
        data.close()
        status.close()
        raise
    finally:
        data_child.close()
        status_child.close()
    return data, status


def _template_lost():
    from shardstats.errors import JobError
    return JobError("the worker's user-code template process died twice before starting the job's child (its "
                    "stderr is in the worker's log)")


class _Child:
    """A forked child's pid and exit code, from its status socket: ``kill`` asks the template to kill it (closing
    the socket would too, after a ``wait`` that gets its code)."""

    def __init__(self, status) -> None:
        self.status = status
        self.pid: int | None = None
        self.returncode: int | None = None
        self.orphaned = False     # its template died (and so, killed, the child)

    def got(self, msg: bytes) -> bool:
        """One word from the template: the pid, then the exit code; EOF (b""): the template is gone (and with
        it, by PR_SET_PDEATHSIG, the child: killed)."""
        if len(msg) != STATUS.size:
            if self.pid is None:
                return False
            if self.returncode is None:
                self.returncode, self.orphaned = -9, True
            return True
        if self.pid is None:
            self.pid = STATUS.unpack(msg)[0]
        else:
            self.returncode = STATUS.unpack(msg)[0]
        return True

    def kill(self) -> None:
        if self.returncode is None:
            try:
                self.status.send(b"k")
            except OSError:
                pass

    def close(self) -> None:
        self.status.close()


# -- the parent -------------------------------------------------------------------------------------------
class UserCode:
    """The worker's handle on one job's child process (forked by the worker's template): requests with replies,
    the child killed on exit."""

    def __init__(self, memory_limit: int | None = None) -> None:
        self.limit = memory_limit or 0
        self.proc: _Child | None = None      # the child once entered
        self.reader = self.writer = None
        self.err = _stderr()

    async def __aenter__(self) -> "UserCode":
        try:
            return await self._enter()
        except BaseException:
            self.err.close()
            raise

    async def _enter(self) -> "UserCode":
        import asyncio        # here, not at the top: the child imports this module and needs no event loop
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            data, status = _spawn(self.limit, self.err)
            status.setblocking(False)
            child = _Child(status)
            try:
                # the template's first job waits for its imports; a loaded machine's start-up took seconds
                got = await asyncio.wait_for(loop.sock_recv(status, 16), SPAWN_TIMEOUT)
            except BaseException:
                data.close()
                status.close()        # the template kills the child, if it forked it
                raise
            if child.got(got):
                break
            data.close()
            status.close()
            if attempt:
                raise _template_lost()
        self.proc = child
        self.reader, self.writer = await asyncio.open_unix_connection(sock=data, limit=1 << 20)
        return self

    async def _wait(self, timeout: float) -> int | None:
        import asyncio
        proc = self.proc
        while proc.returncode is None:
            try:
                got = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(proc.status, 16), timeout)
            except (TimeoutError, OSError):
                return None
            proc.got(got or b"")
        return proc.returncode

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        try:
            if proc is not None:
                proc.kill()
                await self._wait(5)
        finally:
            if self.writer is not None:        # the frames' socket closed now, not by the collector later
                self.writer.close()
            if proc is not None:
                proc.close()
            self.err.close()

    async def call(self, req: dict) -> dict:
        import asyncio
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        try:
            for part in _frame(req):
                writer.write(part)
            await writer.drain()
            head = await reader.readexactly(HEADER.size)
            rep = _unpack(await reader.readexactly(HEADER.unpack(head)[0]))
            if "ipc_bytes" in rep:
                rep["ipc"] = await reader.readexactly(rep.pop("ipc_bytes"))
        except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError):
            code = await self._wait(5)
            raise _died(req["op"], -9 if code is None else code, _tail(self.err), self.proc.orphaned) from None
        return _answer(rep)


SPAWN_TIMEOUT = 120.0     # seconds a job waits for its child's pid (a new template imports its libraries first)


def load_request(code: str, kind: str, filename: str) -> dict:
    """The child's request to load a job: its source, or its functions pickled (base64 on the wire)."""
    if kind == "pickle":
        import base64
        return {"op": "load", "filename": filename, "pickled": base64.b64decode(code)}
    return {"op": "load", "filename": filename, "source": code}


def _stderr():
    """Where the child's stderr (and the user's prints) go: a file, not a pipe -- nobody reads a pipe until the
    child dies, and a child that wrote 64 KiB into one (a chatty job, an allocator's warnings) blocked forever."""
    import tempfile
    return tempfile.TemporaryFile()


def _tail(f, size: int = 4096) -> bytes:
    """The end of what the child wrote to stderr."""
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - size))
    return f.read()


def _died(op: str, code: int, err: bytes, orphaned: bool = False):
    from shardstats.errors import JobError, UsageError
    if orphaned:       # not the job's doing: the worker's (a template killed by hand or by the OOM killer): exit 1
        return JobError(f"the job's code was killed in its {op}: the worker's user-code template process "
                               f"died (the next job starts a new one)")
    lines = err.decode("utf-8", "replace").strip().splitlines()
    why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    if b"MemoryError" in err:       # it could not even say so: its last lines are the interpreter's own
        return UsageError(f"the job's code ran out of memory in its {op} and died ({why})")
    return UsageError(f"the job's code died in its {op} ({why}{'; out of memory?' if code == -9 else ''})"
                      f"{': ' + lines[-1] if lines else ''}")


def _answer(rep: dict) -> dict:
    from shardstats.errors import UsageError
    if not rep.get("ok"):
        raise UsageError(rep.get("error", "the job's code failed"))
    return rep


def _frame(obj: dict) -> list:
    """A message as the parts written for it: the length-prefixed msgpack frame, then its table's IPC bytes
    raw (``ipc_bytes`` in the frame says how many follow)."""
    ipc = obj.get("ipc")
    if ipc is None:
        body = _pack(obj)
        return [HEADER.pack(len(body)) + body]
    ipc = memoryview(ipc)          # an Arrow buffer or bytes: what a pipe's write takes, without a copy
    body = _pack({**{k: v for k, v in obj.items() if k != "ipc"}, "ipc_bytes": ipc.nbytes})
    return [HEADER.pack(len(body)) + body, ipc]


def _ipc(t):
    """A table as Arrow IPC stream bytes: an Arrow buffer (written to the pipe as it is, not copied to a str
    of bytes first)."""
    import pyarrow as pa
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue()


def _table(b):
    import pyarrow as pa
    return pa.ipc.open_stream(b if isinstance(b, pa.Buffer) else pa.py_buffer(b)).read_all()


class SyncUserCode:
    """The same child, called from a worker's load thread (no event loop there): a share beyond memory is
    mapped piece by piece as it is read (``MapPremap``)."""

    def __init__(self, memory_limit: int | None = None) -> None:
        self.err = _stderr()
        for attempt in range(2):
            data, status = _spawn(memory_limit or 0, self.err)
            status.settimeout(SPAWN_TIMEOUT)
            self.proc = _Child(status)
            try:
                got = status.recv(16)
            except BaseException:
                data.close()
                status.close()
                self.err.close()
                raise
            if self.proc.got(got):
                break
            data.close()
            status.close()
            if attempt:
                self.err.close()
                raise _template_lost()
        self.data = data
        self.rf, self.wf = data.makefile("rb"), data.makefile("wb")

    def _wait(self, timeout: float) -> int | None:
        proc = self.proc
        proc.status.settimeout(timeout)
        while proc.returncode is None:
            try:
                proc.got(proc.status.recv(16))
            except OSError:          # socket.timeout included
                return None
        return proc.returncode

    def call(self, req: dict) -> dict:
        def exactly(size: int) -> bytes:
            got = self.rf.read(size)
            if len(got) < size:
                raise BrokenPipeError
            return got
        try:
            for part in _frame(req):
                self.wf.write(part)
            self.wf.flush()
            rep = _unpack(exactly(HEADER.unpack(exactly(HEADER.size))[0]))
            if "ipc_bytes" in rep:
                rep["ipc"] = exactly(rep.pop("ipc_bytes"))
        except (BrokenPipeError, ConnectionResetError):
            self.proc.kill()
            code = self._wait(5)
            raise _died(req["op"], -9 if code is None else code, _tail(self.err), self.proc.orphaned) from None
        return _answer(rep)

    def close(self) -> None:
        self.proc.kill()
        try:
            self._wait(5)
        finally:
            for f in (self.rf, self.wf):
                try:
                    f.close()
                except OSError:       # a write buffer the dead child never read: nothing to flush it to
                    pass
            self.data.close()
            self.proc.close()
            self.err.close()


MAP_ROWS = 16_384      # records a child maps at a time beyond memory (its pairs of them held at once)


class MapPremap:
    """A MapReduce job's map side (and its combiner) run as a share beyond memory is read: each piece's
    (key, value) pairs go to runs by the key's hash slice (worker/engine/runs.py), and each pass then shuffles
    and reduces one slice.  A chained job (stages) or one with --side tables is refused beyond memory: a later
    stage's input is the whole previous stage's output, and a side table is whole only after the run's
    broadcast."""

    def __init__(self, spec: dict, memory_limit: int | None = None) -> None:
        from shardstats.errors import InputError
        self.code = SyncUserCode(memory_limit)
        try:
            loaded = self.code.call(load_request(spec["code"], spec["code_kind"], spec["code_name"]))
            if len(loaded["stages"]) > 1:
                raise InputError(f"{spec['code_name']}: a chained job (stages) runs in memory only; this worker's "
                                 f"share is over its memory budget (--memory-limit): add workers or raise the limit")
            has = set(loaded["stages"][0])
            self.combine = bool(spec.get("combine", True) and has & {"combiner", "combine_batch"})
            self.check = bool(spec.get("check_combiner"))
        except BaseException:
            self.code.close()
            raise
        self.map_pairs = self.combined_pairs = 0
        self.batch = False
        self.schema = None

    def __call__(self, table, side="main"):
        from shardstats.errors import InputError
        if side != "main":
            raise InputError("--side: a job with side tables runs in memory only; this worker's share is over its "
                             "memory budget (--memory-limit): add workers or raise the limit")
        if self.check:            # --check-combiner on the first records, before any is mapped
            self.check = False
            problem = self.code.call({"op": "check", "ipc": _ipc(table.slice(0, 2_000)), "seed": 0})["problem"]
            if problem:
                from shardstats.errors import UsageError
                raise UsageError(problem)
        out = []
        for start in range(0, max(1, table.num_rows), MAP_ROWS):     # the child holds one bounded piece's pairs
            rep = self.code.call({"op": "map", "ipc": _ipc(table.slice(start, MAP_ROWS)), "combine": self.combine,
                                  "reducers": None})
            self.map_pairs += rep["map_pairs"]
            self.combined_pairs += rep["combined_pairs"]
            self.batch = rep["batch"]
            out.append(_table(rep["ipc"]))
        import pyarrow as pa
        pairs = pa.concat_tables(out) if len(out) > 1 else out[0]
        self.schema = pairs.schema
        return pairs

    def merge(self, pairs):
        """A run's pairs combined again (the combiner may run any number of times)."""
        if not self.combine:
            return pairs
        return _table(self.code.call({"op": "reduce", "ipc": _ipc(pairs), "stage": "combiner"})["ipc"])

    def counts(self, first: bool) -> dict:
        n = (lambda x: x if first else 0)
        return {"map_pairs": n(self.map_pairs), "combined_pairs": n(self.combined_pairs), "batch": self.batch}

    def empty(self):
        import pyarrow as pa
        return (self.schema or pa.schema([("key", pa.binary()), ("value", pa.binary())])).empty_table()

    def close(self) -> None:
        self.code.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--template"]:
        template_main(int(sys.argv[2]))
    else:       # a child of its own interpreter, LIMIT as its one argument
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
