"""Column types as text, and one rule for when two files' types agree: what the coordinator and the workers share.

A worker reads its files, describes each column's type as Arrow's text form
(``int64``, ``double``, ``string``, ``timestamp[us]``...), and says which file gave it.
The coordinator unifies every worker's description with ``unify`` -- the same rule a
worker applies between its own files -- and sends the agreed schema back in the
``run`` message, so every rank casts to the same types before any row is hashed: an
``int64`` key and a ``double`` key holding 1 would otherwise hash apart.

Promotions are the ones SQL engines make silently and that lose nothing an answer
depends on: a column of nulls takes any type; signed integers keep their width where
every file agrees (a Parquet ``int32`` column stays 4 bytes a value in memory and on
the wire) and meet at the wider one, unsigned ones below 64 bits widen to ``int64``;
integers meet floats as ``double``; timestamps meet at the finer unit. Anything else
(a number in one file, text in another) is the user's input to fix, named with both files.
"""
from __future__ import annotations

from shardstats.errors import InputError

Described = list[list]      # [[name, type, file], ...] in column order: the wire form

_INTS = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"}
_SIGNED = {"int8": 3, "int16": 5, "int32": 10, "int64": 19}       # the decimal digits each holds
_FLOATS = {"halffloat", "float", "double"}
_STRINGS = {"string", "large_string", "string_view"}
_TS_ORDER = ["s", "ms", "us", "ns"]


def canonical(t: str) -> str:
    """The type a column is held as on every rank: a signed integer of its own width (``int64`` for unsigned
    ones below 64 bits), one float, one string type (a dictionary of strings is a string column, held encoded
    where it was read so: ``worker.jobs.conform``). Parquet's ``int32`` columns (db-benchmark's id4..id6 and
    v1, v2) were widened to int64 before: a cast of each on load, and 8 bytes a value where 4 do."""
    if t.startswith("dictionary<values="):
        return canonical(t[len("dictionary<values="):].split(",")[0])
    if t in _SIGNED:
        return t
    if t in _INTS or t == "uint64":
        return "int64" if t != "uint64" else "uint64"
    if t in _FLOATS:
        return "double"
    if t in _STRINGS:
        return "large_string"
    if t in ("binary", "large_binary", "binary_view"):
        return "large_binary"
    return t


def type_name(t) -> str:
    """A column type as a user's error names it: text, not the engine's ``large_string`` (the files hold
    strings; the engine widens their offsets), ``bytes`` likewise; every other type in Arrow's own words."""
    c = canonical(str(t))
    return {"large_string": "text (string)", "large_binary": "bytes (binary)"}.get(c, str(t))


def _meet(a: str, b: str) -> str | None:
    """The common type of two canonical types, or None when they do not meet."""
    if a == b:
        return a
    if a == "null":
        return b
    if b == "null":
        return a
    if a in _SIGNED and b in _SIGNED:
        return a if _SIGNED[a] >= _SIGNED[b] else b
    nums = {*_SIGNED, "double"}
    if a in nums and b in nums:
        return "double"
    if a.startswith("decimal128(") or b.startswith("decimal128("):
        return decimal_meet(a, b)
    if a.startswith("timestamp[") and b.startswith("timestamp["):
        ua, ub = a[10:].split(",")[0].rstrip("]"), b[10:].split(",")[0].rstrip("]")
        tza, tzb = a[10 + len(ua):], b[10 + len(ub):]
        if tza != tzb or ua not in _TS_ORDER or ub not in _TS_ORDER:
            return None
        return a if _TS_ORDER.index(ua) >= _TS_ORDER.index(ub) else b
    return None


def decimal_meet(a: str, b: str) -> str | None:
    """Two decimals (or a decimal and an integer, an int64's 19 digits) as one decimal128 holding both exactly
    (DuckDB's rule: the larger integer part and the larger scale), or None past 38 digits or with any other type
    (a float: a decimal is kept exact, never met as a double)."""
    def digits(t: str):
        if t in _SIGNED:
            return _SIGNED[t], 0
        if t.startswith("decimal128("):
            p, s = (int(x) for x in t[len("decimal128("):-1].split(","))
            return p, s
        return None
    da, db = digits(a), digits(b)
    if da is None or db is None:
        return None
    scale = max(da[1], db[1])
    precision = max(da[0] - da[1], db[0] - db[1]) + scale
    return f"decimal128({precision}, {scale})" if precision <= 38 else None


ABSENT = "absent"    # the type of a key column a file lacks (jobs.load_table): refused where another file has it
LACKING = "lacking"  # a value column a file lacks, [name, LACKING, file, [its columns]]: NULLs there, as DuckDB's
                     # union_by_name reads it; refused naming the file where no file has it (``unify(final=True)``)


def unify(parts: list[Described], final: bool = False) -> Described:
    """One schema from many files' (or workers') descriptions; an ``InputError`` naming both files when two disagree.

    Columns keep the order of their first appearance. A column missing from one file is
    not an error here: the reader already refused files that lack a key the job reads --
    except a key column of a job that reads every column (a sort, a join), which such a file
    describes as ``ABSENT``: refused, naming the file, where another file has it (read as NULLs, a sort
    placed its rows with the NULLs and an inner join matched none); kept as ``ABSENT`` where no file has
    it, for the op to name (``arrow_schema`` leaves it out). A value column a file lacks (``LACKING``) takes the
    type another file gives it, its rows NULL there; ``final`` (the coordinator's unify of every worker's): one no
    file has is refused, naming a file and its columns (on one worker it may be another worker's file that has it).
    """
    out: dict[str, list] = {}
    for part in parts:
        for name, typ, where, *has in part:
            typ = canonical(typ) if typ not in (ABSENT, LACKING) else typ
            if name in out and LACKING in (typ, out[name][1]):      # the other file's type, or still lacking
                if out[name][1] == LACKING and typ != LACKING:
                    out[name] = [name, typ, where, *has]
                continue
            if name in out and ABSENT in (typ, out[name][1]) and typ != out[name][1]:
                lacking, having = (where, out[name][2]) if typ == ABSENT else (out[name][2], where)
                raise InputError(f"{lacking}: no column {name!r}, a key of this job, which {having} has")
            if name not in out:
                out[name] = [name, typ, where, *has] if typ == LACKING else [name, typ, where]
                continue
            have = out[name]
            met = _meet(have[1], typ)
            if met is None:
                raise InputError(f"column {name!r} is {type_name(have[1])} in {have[2]} but {type_name(typ)} in "
                                 f"{where}: the files' schemas disagree (convert one, or read them in separate jobs)")
            if met != have[1]:
                out[name] = [name, met, where if met == typ else have[2]]
    if final:
        for name, typ, where, *has in out.values():
            if typ == LACKING:
                raise InputError(f"{where}: no column {name!r} (it has: {', '.join(has[0]) or 'none'})")
    return list(out.values())
