"""A stable mixing hash for partitioning: the splitmix64 finaliser in numpy uint64 arithmetic.

Not ``value % W`` (multiples of W would all land on one worker) and not Python's
``hash()`` (salted per process).  The owner of a value is the high bits of the
hash scaled to W (Lemire's multiply-shift), the same on every machine.
"""
from __future__ import annotations

import numpy as np

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


def splitmix64(values: np.ndarray) -> np.ndarray:
    z = values.astype(np.int64, copy=False).view(np.uint64) + _C0
    z ^= z >> np.uint64(30)
    z *= _C1
    z ^= z >> np.uint64(27)
    z *= _C2
    z ^= z >> np.uint64(31)
    return z


def owners(values: np.ndarray, workers: int) -> np.ndarray:
    """The rank that owns each value; a small unsigned dtype so a stable argsort is a radix sort."""
    dtype = np.uint8 if workers <= 256 else np.uint16 if workers <= 65536 else np.uint32
    if workers == 1:
        return np.zeros(len(values), dtype=dtype)
    h = splitmix64(values) >> np.uint64(32)
    h *= np.uint64(workers)
    h >>= np.uint64(32)
    return h.astype(dtype)


def partition(owner: np.ndarray, workers: int, *arrays: np.ndarray) -> list[list[np.ndarray]]:
    """Groups each array by owner in one stable pass; order inside a group is kept (sorted stays sorted)."""
    order = np.argsort(owner, kind="stable")
    bounds = np.zeros(workers + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=workers), out=bounds[1:])
    grouped = [a[order] for a in arrays]
    return [[g[bounds[w]:bounds[w + 1]] for g in grouped] for w in range(workers)]


PARTITION_BLOCK = 1 << 15     # 256 KiB of int64: hash temporaries and the sort index stay in cache


def partition_blocks(workers: int, *arrays: np.ndarray, block: int = PARTITION_BLOCK) -> list[list[list[np.ndarray]]]:
    """``partition`` by hash of the first array, one block of rows at a time.

    Working per block keeps the hash temporaries and the argsort index at block size
    instead of data size, so partitioning costs about one extra copy of the data.
    Result: for each rank, a list of blocks, each a list of the arrays' slices.
    """
    out: list[list[list[np.ndarray]]] = [[] for _ in range(workers)]
    n = len(arrays[0])
    for i in range(0, n, block):
        part = [a[i:i + block] for a in arrays]
        for w, group in enumerate(partition(owners(part[0], workers), workers, *part)):
            if len(group[0]):
                out[w].append(group)
    return out
