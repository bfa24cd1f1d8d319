"""Hot keys: the keys that would overload their reducer, found before the shuffle, and the rows that hold them.

A key is hot when its rows over every rank exceed ``HOT_SHARE`` x a reducer's mean share.
Each rank counts its own 64 commonest keys (DuckDB; of a sample of ``SAMPLE_ROWS`` rows when it holds more,
the counts scaled), the counts are summed up the tree
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
# Rows of a rank's share counted for its candidates: a larger share is sampled (every k-th row) and its counts
# scaled, so a hot key's count is an estimate there (~1% off for a key of a fifth of the rows). Counting every
# row of a 1M-row share by its 1M distinct keys (db-benchmark's q5) took 64 ms of CPU a side, the sample ~5 ms.
SAMPLE_ROWS = 1 << 16
COUNT = "__hot_rows"     # the candidates' row count column (not a name a user's key can take: dunder)


async def find_hot(comm: Communicator, table, keys, skip_nulls: bool = False,
                   above: float | None = None) -> list[list]:
    """[[key tuple as a list, rows], ...] of every hot key, heaviest first; the same list on every rank.
    ``above``: the rows that make a key hot (default ``HOT_SHARE`` x the table's rows over the ranks)."""
    import pyarrow as pa
    from shardstats.worker.data import codec
    from shardstats.worker.engine.aggregate import q, run_sql
    from shardstats.worker.engine.exchange import plain
    k = ", ".join(q(x) for x in keys)
    where = (" WHERE " + " AND ".join(f"{q(x)} IS NOT NULL" for x in keys)) if skip_nulls else ""
    rows = table.num_rows
    step = -(-rows // SAMPLE_ROWS)
    seen = plain(table.select(list(keys)))
    if step > 1:        # every step-th row: a key over HOT_SHARE x a reducer's share is far above the noise
        seen = seen.take(np.arange(0, rows, step, dtype=np.int64))
    scale = rows / seen.num_rows if seen.num_rows else 0
    top = await numpy_step(seen.num_rows, run_sql, f"SELECT {k}, CAST(round(count(*) * {scale!r}) AS BIGINT) AS "
                           f"{COUNT} FROM t{where} GROUP BY {k} ORDER BY {COUNT} DESC LIMIT {CANDIDATES}", seen)
    # The candidates travel as Arrow, not as Python values: a key may be a timestamp, a date or a decimal,
    # which msgpack cannot carry (a hot timestamp key crashed the job with "cannot encode datetime")
    local = {"rows": rows, "cand": codec.encode(top)}

    def merge(a, b):
        both = pa.concat_tables([codec.decode(a["cand"]), codec.decode(b["cand"])], promote_options="permissive")
        summed = both.group_by(list(keys), use_threads=False).aggregate([(COUNT, "sum")])
        summed = pa.table([*(summed.column(x) for x in keys), summed.column(COUNT + "_sum")], names=[*keys, COUNT])
        return {"rows": a["rows"] + b["rows"], "cand": codec.encode(summed)}
    total = await allreduce(comm, local, merge, "hot.keys")
    limit = HOT_SHARE * total["rows"] / comm.size if above is None else above
    cand = codec.decode(total["cand"]).to_pylist()
    return sorted(([[r[x] for x in keys], r[COUNT]] for r in cand if r[COUNT] > limit and comm.size > 1),
                  key=lambda x: -x[1])


def shown(hot: list, most: int = 10) -> list[list]:
    """The heaviest ``most`` hot keys as the stats carry them: [*key values, rows], each value as JSON and
    msgpack carry it (a timestamp as ISO text)."""
    from shardstats.worker.engine.answer import plain
    return [[*(plain(v) for v in key), n] for key, n in hot[:most]]


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
