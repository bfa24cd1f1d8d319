"""Hot keys: the keys that would overload their reducer, found before the shuffle, and the rows that hold them.

A key is hot when its rows over every rank exceed ``HOT_SHARE`` x a reducer's mean share.
Each rank counts its own 64 commonest keys (DuckDB), the counts are summed up the tree
and every rank gets the same list back (an allreduce), so every rank salts the same
keys. A key that heavy is among the commonest of any rank holding a fair part of it; one
missed costs balance, never a wrong answer (salting is for balance only).
"""
from __future__ import annotations

from shardstats.lazy import numpy as np

from shardstats.worker.comm.collectives import allreduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.steps import numpy_step

HOT_SHARE = 2.0
CANDIDATES = 64


async def find_hot(comm: Communicator, table, keys, skip_nulls: bool = False) -> list[list]:
    """[[key tuple as a list, rows], ...] of every hot key, heaviest first; the same list on every rank."""
    from shardstats.worker.engine.aggregate import q, run_sql
    k = ", ".join(q(x) for x in keys)
    where = (" WHERE " + " AND ".join(f"{q(x)} IS NOT NULL" for x in keys)) if skip_nulls else ""
    top = await numpy_step(table.num_rows, run_sql, f"SELECT {k}, count(*) AS n FROM t{where} GROUP BY {k} "
                           f"ORDER BY n DESC LIMIT {CANDIDATES}", table)
    local = {"rows": table.num_rows, "cand": [[list(r.values())[:-1], r["n"]] for r in top.to_pylist()]}

    def merge(a, b):
        d: dict = {}
        for key, n in a["cand"] + b["cand"]:
            d[tuple(key)] = d.get(tuple(key), 0) + n
        return {"rows": a["rows"] + b["rows"], "cand": [[list(t), n] for t, n in d.items()]}
    total = await allreduce(comm, local, merge, "hot.keys")
    share = total["rows"] / comm.size
    return sorted(([key, n] for key, n in total["cand"] if n > HOT_SHARE * share and comm.size > 1),
                  key=lambda x: -x[1])


def key_mask(table, keys, key) -> "np.ndarray":
    """A boolean mask of the rows of ``table`` whose key columns equal ``key`` (None matching nulls)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    m = None
    for name, v in zip(keys, key):
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        e = pc.is_null(col) if v is None else pc.fill_null(pc.equal(col, pa.scalar(v, col.type)), False)
        m = e if m is None else pc.and_(m, e)
    if m is None:
        return np.zeros(table.num_rows, dtype=bool)
    return np.asarray(m.to_numpy(zero_copy_only=False), dtype=bool)


def hot_rows(table, keys, hot: list) -> "np.ndarray":
    """A boolean mask of the rows holding any of the ``hot`` keys."""
    flags = np.zeros(table.num_rows, dtype=bool)
    for key, _ in hot:
        flags |= key_mask(table, keys, key)
    return flags
