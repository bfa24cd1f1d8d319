"""A stable mixing hash for partitioning: the splitmix64 finaliser in numpy uint64 arithmetic.

Not ``value % W`` (multiples of W would all land on one worker) and not Python's
``hash()`` (salted per process).  The owner of a value is the high bits of the
hash scaled to W (Lemire's multiply-shift), the same on every machine.
``partition_chunks`` groups rows by owner straight into the shuffle's chunks.
"""
from __future__ import annotations

from collections.abc import Callable

from shardstats.lazy import numpy as np

_C0 = 0x9E3779B97F4A7C15     # Python ints (no numpy at import, shardstats/lazy.py): uint64 arithmetic casts them
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB


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


PARTITION_BLOCK = 1 << 15     # 256 KiB of int64: hash temporaries and the sort index stay in cache


def partition_chunks(workers: int, names: tuple[str, ...], arrays: tuple[np.ndarray, ...], chunk_bytes: int,
                     consumed: Callable[[int], None] | None = None,
                     block: int = PARTITION_BLOCK) -> list[list[dict[str, np.ndarray]]]:
    """Per rank, the shuffle's chunks of the rows it owns (by hash of the first array), built in one pass.

    Each block of input rows is grouped by owner and copied straight into the
    owners' chunk buffers (``chunk_bytes`` each, filled in order), so the data
    exists once as partitions, not as blocks and again as chunks.  After each
    block ``consumed(rows done)`` is called: a caller that owns the input gives
    those rows' memory back there (``memory.Releaser``), so the input shrinks
    while the chunks grow.  A chunk is a dict of equal-length arrays named ``names``;
    order inside a rank's chunks is input order (sorted stays sorted).
    """
    out: list[list[dict[str, np.ndarray]]] = [[] for _ in range(workers)]
    n = len(arrays[0])
    step = max(1, chunk_bytes // sum(a.itemsize for a in arrays))
    bufs: list[list[np.ndarray] | None] = [None] * workers
    fill = [0] * workers
    block = max(block, 1024 * workers)          # a rank's slice of a block stays worth a call
    bounds = np.zeros(workers + 1, dtype=np.int64)
    for i in range(0, n, block):
        part = [a[i:i + block] for a in arrays]
        owner = owners(part[0], workers)
        order = np.argsort(owner, kind="stable")
        np.cumsum(np.bincount(owner, minlength=workers), out=bounds[1:])
        del owner
        # a new buffer holds this block's rows for the rank and its expected part of the rest, plus four
        # standard deviations (hashing spreads rows binomially): a rank that gets more starts another
        # chunk, one that gets less leaves little unused, so the chunks take the data's size, not W full ones
        expected = (n - i - len(part[0])) / workers
        later = int(expected + 4 * expected ** 0.5) + 64
        for w, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
            while lo < hi:
                if bufs[w] is None:
                    size = min(step, hi - lo + later)
                    bufs[w], fill[w] = [np.empty(size, dtype=a.dtype) for a in arrays], 0
                buf, f = bufs[w], fill[w]
                take = min(hi - lo, len(buf[0]) - f)
                idx = order[lo:lo + take]
                for a, b in zip(part, buf):
                    np.take(a, idx, out=b[f:f + take], mode="clip")   # clip: no bounds buffering; idx is valid
                fill[w], lo = f + take, lo + take
                if fill[w] == len(buf[0]):
                    out[w].append(dict(zip(names, buf)))
                    bufs[w] = None
        del part, order
        if consumed is not None:
            consumed(i + block)
    for w, buf in enumerate(bufs):
        if buf is not None and fill[w]:
            out[w].append({k: b[:fill[w]] for k, b in zip(names, buf)})
    return out
