"""Arrow tables as shuffle pieces: Arrow IPC stream bytes in a uint8 array, so the one shuffle carries them unchanged.

The credit shuffle (``worker.comm.shuffle``) moves pieces -- dicts of numpy arrays
that msgpack carries as ``bin`` -- and knows nothing of what they hold. A table
travels as ``{"ipc": uint8[...]}``: the IPC stream format (schema, then record
batches), optionally with LZ4 or ZSTD buffer compression. ``protocol/`` stays free of
pyarrow: to it these are bytes. Decoding is zero-copy over the received frame and
validated (Arrow's structural checks, and the schema the job agreed) before an op sees it.
"""
from __future__ import annotations

from shardstats.lazy import numpy as np

from shardstats.protocol.errors import ProtocolError

KEY = "ipc"
COMPRESSIONS = ("none", "lz4", "zstd")


def is_table_piece(piece: dict) -> bool:
    return KEY in piece


def encode(table, compression: str = "none") -> dict:
    """One piece holding ``table`` (all of it: cut first with ``cut``)."""
    import pyarrow as pa
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as w:
        w.write_table(table)
    return {KEY: np.frombuffer(sink.getvalue(), dtype=np.uint8)}


def decode(piece: dict, schema=None):
    """The table in a piece, checked: well-formed Arrow, and ``schema`` when given (a peer's mistake, never data)."""
    import pyarrow as pa
    raw = piece.get(KEY)
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise ProtocolError("a table piece without its Arrow IPC bytes")
    try:
        table = pa.ipc.open_stream(pa.py_buffer(raw)).read_all()
        table.validate()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise ProtocolError(f"a table piece that is not valid Arrow IPC: {exc}") from None
    if schema is not None and not table.schema.equals(schema):
        if not _offsets_differ(table.schema, schema):
            raise ProtocolError(f"a table piece with schema {table.schema} where the job agreed {schema}")
        table = table.cast(schema)      # text with 32- and 64-bit offsets (worker.engine.exchange.wire): one type
    return table


def _offsets_differ(a, b) -> bool:
    """Whether two schemas differ only in text columns held as ``string`` on one side, ``large_string`` on the other."""
    import pyarrow as pa
    text = lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)     # noqa: E731
    return a.names == b.names and all(x.type.equals(y.type) or (text(x.type) and text(y.type))
                                      for x, y in zip(a, b))


def cut(table, chunk_bytes: int) -> list:
    """``table`` as slices of about ``chunk_bytes`` each (zero-copy views), at least one row each."""
    n = table.num_rows
    if n == 0:
        return []
    per_row = max(1, table.nbytes // n)
    step = max(1, chunk_bytes // per_row)
    return [table.slice(i, step) for i in range(0, n, step)]
