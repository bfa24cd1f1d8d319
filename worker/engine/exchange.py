"""The keyed exchange: hash-partition a table by its key columns, move the parts through the one credit shuffle,
collect what this rank owns.

Partitioning is ``worker.data.hashing`` (stable in every process and release); the
parts travel as Arrow IPC pieces (``worker.data.codec``) cut to the shuffle's chunk
size, so ``worker.comm.shuffle`` keeps its bounds -- at most ``fan_in`` inbound
streams and ``fan_in * credits`` chunks buffered per receiver -- for tables exactly as
for int64 pieces. The rank's own part never touches the wire.

The counters it returns are the shuffle counter of every keyed job: rows handed in
(after the combiner), rows and bytes sent to other ranks, rows this rank received
(its own part included: the reducer's load).
"""
from __future__ import annotations

import time

from shardstats.lazy import numpy as np

from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.comm.shuffle import ShuffleConfig, shuffle
from shardstats.worker.data import codec
from shardstats.worker.data.hashing import owners_by_key
from shardstats.worker import memory
from shardstats.worker.steps import numpy_step


def partition(table, keys, workers: int, to_one: bool = False, salt=None):
    """``table``'s rows grouped by owning rank: a list of ``workers`` tables (zero-copy slices of one take).

    ``salt`` (uint64 per row, or None): a hot key's rows carry 1..S and go to the S ranks
    after the key's owner (owner + salt mod W), so its rows spread evenly over distinct
    reducers; rows with salt 0 go to their key's owner (``worker.ops.groupby`` decides which).
    """
    if to_one or workers == 1:
        return [wire(table)] + [wire(table.slice(0, 0))] * (workers - 1)
    o = owners_by_key(table, keys, workers)        # before ``wire``: a dictionary key's codes look owners up
    if salt is not None:
        salted = salt > 0
        o[salted] = ((o[salted].astype(np.uint64) + salt[salted]) % np.uint64(workers)).astype(o.dtype)
    return split_by(wire(table), o, workers)


def plain(table):
    """``table`` with dictionary columns decoded: every rank's parts then share one schema on the wire,
    whichever encoding each rank read its files in."""
    import pyarrow as pa
    if not any(pa.types.is_dictionary(f.type) for f in table.schema):
        return table
    cols = [c.cast(c.type.value_type).cast(pa.large_string()) if pa.types.is_dictionary(c.type) and
            pa.types.is_string(c.type.value_type) else c.cast(c.type.value_type) if pa.types.is_dictionary(c.type)
            else c for c in table.columns]
    return pa.Table.from_arrays(cols, names=table.column_names)


WIRE_STRING_BELOW = 1 << 30      # bytes: a text column this small travels with 32-bit offsets (a take concatenates)


def wire(table):
    """``table`` as it travels: dictionaries decoded (``plain``: every rank's parts share one schema), and text
    columns as Arrow ``string`` where they hold under ``WIRE_STRING_BELOW`` bytes, not the engine's
    ``large_string``. Each copy on the way (the take, IPC, frames, the socket) then moves 4 offset bytes a row,
    not 8 -- db-benchmark's q10 shuffles 12 bytes a row fewer of 78 -- and DuckDB's reducer reads ``string``
    faster (q10's 1M rows a rank: 218 against 278 ms of CPU). A receiver takes a part whose offsets differ
    from its own as its own (``codec.decode``), so a rank holding a column too big for 32 bits still meets
    the others."""
    import pyarrow as pa

    def text(t) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t)

    def one(c):
        t = c.type
        if pa.types.is_dictionary(t) and text(t.value_type):
            try:
                out = c.cast(pa.string())
            except (pa.ArrowInvalid, pa.ArrowCapacityError):      # a chunk beyond 32-bit offsets
                return c.cast(pa.large_string())
            return out if out.nbytes < WIRE_STRING_BELOW else out.cast(pa.large_string())
        if pa.types.is_dictionary(t):
            return c.cast(t.value_type)
        if pa.types.is_large_string(t) and c.nbytes < WIRE_STRING_BELOW:
            return c.cast(pa.string())
        return c
    if not any(pa.types.is_dictionary(f.type) or pa.types.is_large_string(f.type) for f in table.schema):
        return table
    return pa.Table.from_arrays([one(c) for c in table.columns], names=table.column_names)


def split_by(table, dest, workers: int):
    """``table``'s rows grouped by the rank ``dest`` names for each: a list of ``workers`` slices of one take.

    The ranks are sorted as uint16 where they fit: numpy's stable sort is then a radix sort (1M rows: 4 ms of
    CPU against 29 ms as int64), the same order."""
    small = workers <= 1 << 16 and len(dest)
    order = np.argsort(dest.astype(np.uint16, copy=False) if small else dest, kind="stable")
    counts = np.bincount(dest, minlength=workers)
    ordered = table.take(order) if table.num_rows else table
    out, start = [], 0
    for c in counts.tolist():
        out.append(ordered.slice(start, c))
        start += c
    return out


async def exchange(comm: Communicator, table, keys, cfg: ShuffleConfig, *, compression: str = "none",
                   salt=None) -> tuple[object, dict]:
    """Moves every row of ``table`` to the rank owning its key; returns (the rows this rank owns, counters)."""
    t0 = time.perf_counter()
    comm.progress.set("partition")
    with memory.reusing_heap():
        parts = await numpy_step(table.num_rows, lambda t=table: partition(t, list(keys), comm.size,
                                                                           cfg.to_one, salt))
        del table
        return await _move(comm, parts, cfg, compression, t0)


async def exchange_to(comm: Communicator, table, dest, cfg: ShuffleConfig, *,
                      compression: str = "none") -> tuple[object, dict]:
    """Moves row i of ``table`` to rank ``dest[i]`` (a range partitioner's choice); as ``exchange``.

    ``table`` may be a one-item list, emptied here: the caller then holds no reference to its rows, and they are
    freed once split rather than after the whole shuffle (a sort's pass: its rows, their split copy and the
    rows received were all alive at the end of the exchange).  This rank's own part is copied out of the split
    (a slice would keep the whole split's buffers alive while the other parts travel, encoded)."""
    t0 = time.perf_counter()
    comm.progress.set("partition")
    if isinstance(table, list):
        table = table.pop()
    with memory.reusing_heap():
        n = table.num_rows
        parts = await numpy_step(n, lambda t=table: split_by(wire(t), dest, comm.size))
        del table
        own = parts[comm.rank]
        parts[comm.rank] = await numpy_step(own.num_rows, own.take, np.arange(own.num_rows)) \
            if own.num_rows < n else own
        del own
        box = [parts]       # _move alone holds the parts, and drops them once encoded
        del parts
        return await _move(comm, box.pop(), cfg, compression, t0)


async def broadcast_table(comm: Communicator, table, cfg: ShuffleConfig, *,
                          compression: str = "none") -> tuple[object, dict]:
    """Every rank's ``table`` on every rank (an all-gather), through the credit shuffle: each rank streams
    its own part to the others one receiver at a time, so no rank fans out to all at once and no rank takes
    more than ``fan_in`` streams; the pieces are encoded once and sent W - 1 times."""
    t0 = time.perf_counter()
    comm.progress.set("broadcast")
    cfg = cfg if not cfg.to_one else ShuffleConfig(fan_in=cfg.fan_in, credits=cfg.credits,
                                                   chunk_bytes=cfg.chunk_bytes)
    with memory.reusing_heap():      # its frames and decoded pieces are freed and taken again a chunk at a time
        table = wire(table)
        schema = table.schema
        pieces = await numpy_step(table.num_rows, lambda: [codec.encode(s, compression)
                                                           for s in codec.cut(table, cfg.chunk_bytes)])
        outgoing = [[] if d == comm.rank else list(pieces) for d in range(comm.size)]
        sent_bytes = sum(int(x[codec.KEY].nbytes) for x in pieces) * (comm.size - 1)
        got: list = [table]
        await shuffle(comm, outgoing, lambda src, piece: got.append(codec.decode(piece, schema)), cfg)
        import pyarrow as pa
        whole = pa.concat_tables(got) if len(got) > 1 else table
    counters = {"shuffled_pairs": table.num_rows * (comm.size - 1), "shuffled_bytes": sent_bytes,
                "reducer_pairs": whole.num_rows}
    return whole, {"counters": counters, "phases": {"broadcast": time.perf_counter() - t0}}


async def _move(comm: Communicator, parts: list, cfg: ShuffleConfig, compression: str, t0: float):
    import pyarrow as pa
    own = parts[comm.rank]
    schema = own.schema
    sent_rows = sum(p.num_rows for d, p in enumerate(parts) if d != comm.rank)

    def encode_all():
        return [[] if d == comm.rank else [codec.encode(s, compression) for s in codec.cut(p, cfg.chunk_bytes)]
                for d, p in enumerate(parts)]
    outgoing = await numpy_step(sent_rows, encode_all)
    sent_bytes = sum(int(x[codec.KEY].nbytes) for d in outgoing for x in d)
    parts = None
    t1 = time.perf_counter()
    got: list = [own]

    def consume(src: int, piece: dict) -> None:
        got.append(codec.decode(piece, schema))
    st = await shuffle(comm, outgoing, consume, cfg)
    mine = pa.concat_tables(got) if len(got) > 1 else got[0]
    t2 = time.perf_counter()
    counters = {"shuffled_pairs": sent_rows, "shuffled_bytes": sent_bytes, "reducer_pairs": mine.num_rows,
                "shuffle_chunks": st.chunks_sent}
    phases = {"partition": t1 - t0, "shuffle": t2 - t1}
    return mine, {"counters": counters, "phases": phases}
