"""One shard file into an int64 array, by its suffix: ``.txt``, ``.npy``, ``.csv`` or ``.parquet``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from shardstats.errors import InputError
from shardstats.worker.io.listing import EXPECTED
from shardstats.worker.io.text import INT64_MAX, read_txt, short_error


def read_shard(path: str | os.PathLike, column: str | int | None = None) -> np.ndarray:
    """One shard as int64; ``column`` picks the column of a .csv/.parquet file (see worker.formats)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".csv", ".parquet"):
        from shardstats.worker.io.columns import read_csv, read_parquet
        return (read_csv if suffix == ".csv" else read_parquet)(p, column)
    if suffix == ".npy":
        return read_npy(p)
    if suffix == ".txt":
        return read_txt(p)
    raise InputError(f"{p}: unsupported file type {suffix or '(none)'!r} ({EXPECTED})")


def read_npy(path: Path) -> np.ndarray:
    return load_npy(path, str(path))


def load_npy(source: Path | BinaryIO, name: str) -> np.ndarray:
    """A .npy file (a path, or the bytes of an object) as int64, refusing anything but integers."""
    try:
        a = np.load(source, allow_pickle=False)
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
        raise InputError(f"{name}: element {bad} ({int(a[bad])}) is beyond the int64 range")
    return a.astype(np.int64, copy=False)
