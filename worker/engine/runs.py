"""A keyed share beyond memory, partitioned once: every row read once and written, beside the rows of its
slice, to Arrow IPC runs in the job's spill folder; pass ``p`` then reads slice ``p`` of each run and nothing else.

Why runs rather than reading the input again each pass: a share of ten times the budget takes tens of
passes, and re-reading (and re-parsing, re-hashing) the whole input once a pass made the work grow with
data x passes (db-benchmark q3 at 1e7 rows in 200 MiB workers: 41 passes, 92 s against 9 s in memory).
Here the input is read and parsed once, written once and read back once: the grace hash partitioning of
DuckDB's and Spark's out-of-core aggregates and joins, with Arrow's own file format as the run format.

A run is what the reader gave, buffered up to ``flush_bytes`` and written in one go as one record batch
sorted by slot (stably: rows keep their input order within a slot) with the slots' row offsets beside it,
so a slice is one contiguous range of each run -- read through a memory map, a view until the pass
copies it.  One file a flush: Arrow's file format keeps one dictionary per column, and each flush unifies
its own.  With ``compression`` (a sort's runs: whole rows, every column) a run holds one batch a slot, its
buffers compressed (Arrow IPC's LZ4 frames), so a pass decompresses its own slots and no other: the spill
is written through to the disk (``SpillFile``), and TeraSort's rows took a quarter of the bytes.  Rows of
different types (an int32 file and an int64 one) go to different runs; the pass conforms each piece to the
job's agreed schema.

``slots(table, side, passes)`` gives each row's slice.  A job taken in another number of passes than the runs
were cut in (another worker needed more, or the runs held more than the load guessed) reads the runs' slices
covering pass ``p``'s range of the hash and keeps the rows ``slots`` puts in ``p``: the hash slices of any
count are ranges of the same 32 bits.

``premap(table, side)`` turns what was read into the rows the passes need before they are buffered (word
count: text into (word, count) pairs, combined again over each flush by its ``merge``), so text of any size
becomes runs of pairs keyed by the word.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shardstats.lazy import numpy as np


@dataclass
class Run:
    side: str
    path: Path
    offsets: np.ndarray          # offsets[s] .. offsets[s + 1]: slot s's rows
    sizes: np.ndarray | None = None     # compressed: slot s is batch s, of sizes[s] bytes in the file


@dataclass
class Runs:
    spill: object                # the job's SpillDir (worker/spill.py)
    passes: int                  # the slices the runs were cut in
    slots: object                # (table, side, passes) -> np.ndarray of slot numbers
    flush_bytes: int
    premap: object = None        # (table, side) -> table: what a run holds of what was read; its ``merge``
                                 # combines a flush's premapped rows (word count's sum)
    compression: str | None = None   # "lz4": a batch a slot, its buffers compressed (see above)
    groups: object = None        # a sort's RangePlan: its slots are buckets between candidate boundaries, and
                                 # pass p reads the buckets ``groups.first_last(p)`` (chosen once the runs are
                                 # counted: ``bucket_rows``), not a range of the hash
    runs: list = field(default_factory=list)
    rows: int = 0
    bytes: int = 0               # the runs' size: Arrow's buffers, so the rows' size in memory
    disk_bytes: int = 0          # what the files hold (less than ``bytes`` when compressed)
    _buffer: dict = field(default_factory=dict)
    _buffered: int = 0

    def keep(self, table, side: str):
        """A read's ``keep``: the piece goes to the buffer (and to disk when it is full); nothing is kept --
        an empty table of its own (a zero-row slice would hold the piece's buffers, and the reader keeps
        what it is given until the file ends: a whole 240 MB Parquet file's batches, killing 200 MiB workers)."""
        empty = table.schema.empty_table()
        if self.premap is not None:
            table = self.premap(table, side)
        if table.num_rows:
            self._buffer.setdefault((side, table.schema), []).append(table)
            self._buffered += table.nbytes
            if self._buffered >= self.flush_bytes:
                self.flush()
        return empty

    def flush(self) -> None:
        import pyarrow as pa
        buffer, self._buffer, self._buffered = self._buffer, {}, 0
        for key in list(buffer):              # in the order the pieces came
            side, pieces = key[0], buffer.pop(key)
            t = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
            del pieces
            if self.premap is not None:
                t = self.premap.merge(t)
            self._write(side, t)
            del t

    def _write(self, side: str, t) -> None:
        import pyarrow as pa
        from shardstats.worker.spill import SpillFile
        slots = self.slots(t, side, self.passes)
        order = np.argsort(slots, kind="stable")
        t = t.take(pa.array(order)).combine_chunks()
        offsets = np.zeros(self.passes + 1, np.int64)
        np.cumsum(np.bincount(slots, minlength=self.passes), out=offsets[1:])
        del slots, order
        sink = pa.BufferOutputStream()
        sizes = None
        if self.compression:
            whole = t.to_batches()[0] if t.num_rows else pa.RecordBatch.from_pylist([], schema=t.schema)
            sizes = np.zeros(self.passes, np.int64)        # each slot's bytes in the file, for the read counter
            # an empty slot is written as a batch of its own, not a zero-row slice: Arrow's IPC writer wrote a
            # zero-row slice with the whole batch's buffers (TeraSort-like rows cut at 833 candidates: 1 GB of runs
            # for 27 MB of rows, most slots empty in a flush on skewed keys)
            empty = whole.take(pa.array([], pa.int64()))     # a dictionary column keeps its one dictionary
            with pa.ipc.new_file(sink, t.schema, options=pa.ipc.IpcWriteOptions(compression=self.compression)) as w:
                for s in range(self.passes):         # batch s is slot s (empty ones too: zero rows, a few bytes)
                    at = sink.tell()
                    n = int(offsets[s + 1] - offsets[s])
                    w.write_batch(whole.slice(int(offsets[s]), n) if n else empty)
                    sizes[s] = sink.tell() - at
            del whole
            self.bytes += t.nbytes
        else:
            with pa.ipc.new_file(sink, t.schema) as w:
                w.write_table(t)
        self.rows += t.num_rows
        del t
        buf = sink.getvalue()
        path = self.spill.new_file(f"run-{len(self.runs):05d}.arrow")
        try:
            f = SpillFile(path)
            try:
                f.write(np.frombuffer(buf, np.uint8))
            finally:
                f.close()
        except OSError as exc:
            raise self.spill.failure(exc) from None
        self.spill.count_written(buf.size)
        self.disk_bytes += buf.size
        if sizes is None:
            self.bytes += buf.size
        self.runs.append(Run(side, path, offsets, sizes))

    def finish(self) -> "Runs":
        self.flush()
        return self

    def bucket_rows(self) -> "np.ndarray":
        """The rows of each slot, over every run."""
        out = np.zeros(self.passes, np.int64)
        for run in self.runs:
            out += np.diff(run.offsets)
        return out

    def read(self, p: int, passes: int, conform) -> dict:
        """Pass ``p`` of ``passes``: each side's rows, conformed piece by piece (``conform(piece, side)``),
        as {side: [pieces]}."""
        import pyarrow as pa
        lo, hi = self.groups.first_last(p) if self.groups is not None else covering(p, passes, self.passes)
        out: dict = {}
        read = 0
        for run in self.runs:
            a, b = int(run.offsets[lo]), int(run.offsets[hi + 1])
            if a == b:
                continue
            reader = pa.ipc.open_file(pa.memory_map(str(run.path)))
            if run.sizes is not None:       # this pass's slots only, decompressed
                piece = pa.Table.from_batches([reader.get_batch(s) for s in range(lo, hi + 1)
                                               if run.offsets[s + 1] > run.offsets[s]], reader.schema)
                read += int(run.sizes[lo:hi + 1].sum())
            else:
                # a view of the map (the map lives as long as the view): the pass's own work copies what it keeps
                piece = pa.Table.from_batches([reader.get_batch(0).slice(a, b - a)])
            if passes != self.passes and self.groups is None:
                piece = piece.filter(pa.array(self.slots(piece, run.side, passes) == p))
            if run.sizes is None:
                read += piece.nbytes
            out.setdefault(run.side, []).append(conform(piece, run.side))
        self.spill.count_read(read)
        return out


def covering(p: int, passes: int, cut: int) -> tuple[int, int]:
    """The slices (first, last) of runs cut in ``cut`` slices that hold pass ``p`` of ``passes`` (more or fewer
    than ``cut``): slice s of n holds the low 32 hash bits h with floor(h * n / 2**32) == s."""
    if passes == cut:
        return p, p
    first = -(-p * (1 << 32) // passes)                 # the least h of pass p
    last = -(-(p + 1) * (1 << 32) // passes) - 1        # its greatest
    return (first * cut) >> 32, (last * cut) >> 32
