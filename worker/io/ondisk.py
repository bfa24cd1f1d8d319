"""A worker's int64 values when they do not fit its memory: one read-only memory map, and passes over it.

Why a memory map: its pages belong to a file, so the kernel reads them in as an op walks
the values and drops them again under pressure (a memory cgroup reclaims them instead of
killing the worker), where an array read into the heap must fit whole.  A single local
``.npy`` shard of int64 is mapped where it lies (nothing written); anything else (several
shards, text, CSV, Parquet) is read one file at a time and appended to one raw int64 file in
the job's spill folder (``worker/spill.py``), which is then mapped.

Ops that work from such values walk them in blocks (``blocks``) and, when they must hold
what they work on (the mode's shuffle and counting), take them in ``passes``: pass ``p`` of
``P`` holds only the values whose hash falls in slice ``p`` (``pass_slice``).  A value lies
in exactly one slice on every worker, so an answer per value (a count) is exact per pass and
the passes combine like disjoint datasets.  The slice uses the hash's low 32 bits; the
shuffle's owner uses its high 32 (``worker/data/partition.py``), so each pass still spreads
over every owner.
"""
from __future__ import annotations

import math
from pathlib import Path

from shardstats.lazy import numpy as np

from shardstats.errors import InputError
from shardstats.worker.data.partition import splitmix64
from shardstats.worker.io.listing import ShardRef, is_object_url
from shardstats.worker.io.shards import read_shard
from shardstats.worker.io.source import opened
from shardstats.worker.io.text import INT64_MAX

BLOCK = 1 << 18                # values per step when walking a map: 2 MiB of int64 (a partition step's temporaries
                               # are ~6 of those: small beside what a cgroup of ~100 MiB leaves a worker)
WORKING_COPIES = 6             # what an op holding values in memory may take, in copies of them (partitions,
                               # received pieces, a sort): the load keeps values in memory only within budget / this


def blocks(values: np.ndarray, size: int = BLOCK):
    """``values`` in consecutive slices of at most ``size`` (views: a map's pages are read as each is used)."""
    for i in range(0, len(values), size):
        yield values[i:i + size]


def on_disk(values: np.ndarray) -> bool:
    return isinstance(values, np.memmap)


def passes_for(nbytes: int, limit: int) -> int:
    """How many passes hold at most ``limit`` bytes of values each."""
    return max(1, math.ceil(nbytes / max(1, limit)))


def pass_slice(values: np.ndarray, p: int, passes: int) -> np.ndarray:
    """The values whose hash falls in slice ``p`` of ``passes`` (a copy), walked block by block: for values
    in memory on a rank whose peers keep theirs on disk (every rank takes the same passes)."""
    if passes <= 1:
        return np.array(values, dtype=np.int64)
    out = [b[_slots(b, passes) == p] for b in blocks(values)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _slots(b: np.ndarray, passes: int) -> np.ndarray:
    h = splitmix64(b) & np.uint64(0xFFFFFFFF)
    return ((h * np.uint64(passes)) >> np.uint64(32)).astype(np.uint16)


def partition(values: np.ndarray, passes: int, spill) -> list:
    """Grace partitioning: one walk over ``values`` writes each hash slice to its own spill file, so pass
    ``p`` reads back only its slice (the input is read once, not once per pass).  Returns the files."""
    from shardstats.worker.spill import SpillFile
    paths = [spill.new_file(f"slice-{p:04d}.i64") for p in range(passes)]
    files = []
    try:
        files = [SpillFile(path) for path in paths]
        for b in blocks(values):
            slot = _slots(b, passes)
            order = np.argsort(slot, kind="stable")          # a radix sort for 16-bit keys: linear
            ends = np.cumsum(np.bincount(slot, minlength=passes))
            grouped = b[order]
            start = 0
            for p, end in enumerate(ends.tolist()):
                if end > start:
                    files[p].write(grouped[start:end])
                start = end
        for f in files:
            f.close()
    except OSError as exc:
        raise spill.failure(exc) from None
    finally:
        for f in files:
            try:
                f.close()
            except OSError:
                pass
    spill.count_written(len(values) * 8)
    return paths


def read_slice(path, spill) -> np.ndarray:
    """One slice written by ``partition``, in memory; its file is removed (the disk it took is free again)."""
    try:
        a = np.fromfile(path, dtype=np.int64)
    except OSError as exc:
        raise spill.failure(exc) from None
    spill.count_read(a.nbytes)
    try:
        path.unlink()
    except OSError:
        pass
    return a


def _npy_header(f) -> tuple[tuple, np.dtype, bool, int]:
    version = np.lib.format.read_magic(f)
    shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                             else np.lib.format.read_array_header_2_0)(f)
    return shape, dtype, fortran, f.tell()


def map_npy(ref: ShardRef, real_path: str) -> np.ndarray:
    """A .npy shard as a read-only map of int64 (any integer dtype that is not native int64 is refused here;
    ``load`` converts it into the spill file instead)."""
    with opened(ref, real_path) as (f, size):
        try:
            shape, dtype, fortran, offset = _npy_header(f)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{ref.path}: not a readable .npy file ({exc})") from None
        count = int(np.prod(shape, dtype=object))
        if count * dtype.itemsize > size - offset:
            raise InputError(f"{ref.path}: not a readable .npy file (its header claims {count:,} values, "
                             f"the file holds {size - offset:,} bytes of data)")
        if dtype.kind not in "iu":
            raise InputError(f"{ref.path}: .npy holds {dtype} values, expected an integer dtype")
        if count == 0:
            return np.zeros(0, np.int64)
        return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=(count,))


def _as_int64(a: np.ndarray, name: str, at: int) -> np.ndarray:
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and len(a) and a.max() > INT64_MAX:
        bad = at + int(np.argmax(a > INT64_MAX))
        raise InputError(f"{name}: element {bad} is beyond the int64 range")
    return a.astype(np.int64, copy=False)


def npy_values(ref: ShardRef, real_path: str) -> int | None:
    """The value count a .npy shard's header claims (None for other files or an unreadable header)."""
    if Path(ref.path).suffix.lower() != ".npy":
        return None
    try:
        with opened(ref, real_path) as (f, _):
            shape, _, _, _ = _npy_header(f)
        return int(np.prod(shape, dtype=object))
    except (InputError, ValueError, OSError, EOFError):
        return None


def load(refs: list[ShardRef], where: list[str], column, header, spill, progress=None,
         budget: int | None = None) -> np.ndarray:
    """Every shard's values as one read-only int64 map: a lone native-int64 .npy where it lies, else one
    spill file the shards are appended to, one at a time (a file other than .npy, and an ``s3://`` object, is
    read whole, so each must fit ``budget``: a larger one is refused before it is read, as in memory)."""
    if len(refs) == 1 and Path(refs[0].path).suffix.lower() == ".npy" and not is_object_url(refs[0].path):
        m = map_npy(refs[0], where[0])
        if m.dtype == np.dtype("<i8") or len(m) == 0:
            if progress is not None:
                progress.done = 1
            return m
    from shardstats.worker.spill import SpillFile
    path = spill.new_file("values.i64")
    n = 0
    out = None
    try:
        out = SpillFile(path)
        objects = None
        for i, (ref, real) in enumerate(zip(refs, where)):
            if is_object_url(ref.path):           # an object: fetched whole (it must fit the budget), appended
                if objects is None:
                    from shardstats.worker.io.objects import ObjectReader
                    objects = ObjectReader()
                b = objects.read(ref, column, header, budget)
                out.write(b)
                n += len(b)
                del b
            elif Path(ref.path).suffix.lower() == ".npy":
                m = map_npy(ref, real)
                for at in range(0, len(m), BLOCK):
                    b = _as_int64(np.asarray(m[at:at + BLOCK]), ref.path, at)
                    out.write(b)
                    n += len(b)
                del m
            else:
                b = read_shard(ref, column, real_path=real, header=header, budget=budget)
                out.write(b)
                n += len(b)
                del b
            if progress is not None:
                progress.done = i + 1
        out.close()
    except OSError as exc:
        raise spill.failure(exc) from None
    finally:
        if out is not None:
            try:
                out.close()
            except OSError:
                pass
    spill.count_written(n * 8)
    if n == 0:
        return np.zeros(0, np.int64)
    return np.memmap(path, dtype=np.int64, mode="r", shape=(n,))

