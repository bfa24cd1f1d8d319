"""One shard file into an int64 array, by its suffix: ``.txt``, ``.npy``, ``.csv`` or ``.parquet``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from shardstats.errors import InputError
from shardstats.worker.io.listing import EXPECTED, ShardRef
from shardstats.worker.io.source import mib, opened, read_exactly
from shardstats.worker.io.text import INT64_MAX, parse_text, short_error


def read_shard(path: str | os.PathLike | ShardRef, column: str | int | None = None, *,
               real_path: str | None = None, budget: int | None = None, header: bool | None = None) -> np.ndarray:
    """One shard as int64; ``column`` picks the column of a .csv/.parquet file, ``header`` says whether a
    CSV's first row is a header (None: only when ``column`` is a name; see worker/io/columns.py).

    ``path`` may be a ``ShardRef`` (the job's listing: the read checks its size and version);
    ``real_path`` is where to open it (the path resolved under the worker's root);
    ``budget``: the memory the values may take, checked before reading.
    """
    ref = path if isinstance(path, ShardRef) else ShardRef(str(path), -1, None)
    name = ref.path
    suffix = Path(name).suffix.lower()
    if suffix not in (".txt", ".npy", ".csv", ".parquet"):
        raise InputError(f"{name}: unsupported file type {suffix or '(none)'!r} ({EXPECTED})")
    with opened(ref, real_path or name, budget) as (f, size):
        if suffix == ".txt":
            return parse_text(read_exactly(f, size, name), name)
        if suffix == ".csv":
            from shardstats.worker.io.columns import parse_csv
            return parse_csv(read_exactly(f, size, name), column, name, header)
        if suffix == ".parquet":
            from shardstats.worker.io.columns import read_parquet
            return read_parquet(f, column, name)
        return read_npy(f, name, budget)


def load_npy(source: Path | BinaryIO, name: str) -> np.ndarray:
    """A .npy file (a path, or the bytes of an object) as int64, refusing anything but integers."""
    return read_npy(source, name)


def read_npy(f: BinaryIO | str | os.PathLike, name: str | None = None, budget: int | None = None) -> np.ndarray:
    """A .npy file as int64; with a ``budget`` (an open file), its header is checked against the file's
    size and the budget before the values are read."""
    name = name or str(f)
    if budget is not None and not isinstance(f, (str, os.PathLike)):
        try:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)(f)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{name}: not a readable .npy file ({short_error(exc)})") from None
        count = int(np.prod(shape, dtype=object))
        left = os.fstat(f.fileno()).st_size - f.tell()
        if count * dtype.itemsize > left:
            raise InputError(f"{name}: not a readable .npy file (its header claims {count:,} values, "
                             f"the file holds {left:,} bytes of data)")
        need = count * max(8, dtype.itemsize)
        if need > budget:
            raise InputError(f"{name}: its values take {mib(need)} as int64, more than the worker's memory "
                             f"budget of {mib(budget)} (--memory-limit); split the shard into smaller files")
        f.seek(0)
    try:
        a = np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        # MemoryError: a truncated or forged header that claims far more values than the file holds.
        raise InputError(f"{name}: not a readable .npy file ({short_error(exc)})") from None
    if a.dtype.kind not in "iu":
        raise InputError(f"{name}: .npy holds {a.dtype} values, expected an integer dtype")
    a = a.reshape(-1)
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and len(a) and a.max() > INT64_MAX:
        bad = int(np.argmax(a > INT64_MAX))
        raise InputError(f"{name}: element {bad} is beyond the int64 range")
    return a.astype(np.int64, copy=False)
