"""Assigning shard files to workers: each file to exactly one worker, balanced by bytes."""
from __future__ import annotations

import heapq


def assign(files: list[tuple[str, int]], workers: int) -> list[list[str]]:
    """Longest-processing-time first: biggest file to the least-loaded worker.  Deterministic."""
    load = [(0, w) for w in range(workers)]
    heapq.heapify(load)
    out: list[list[str]] = [[] for _ in range(workers)]
    for name, size in sorted(files, key=lambda f: (-f[1], f[0])):
        total, w = heapq.heappop(load)
        out[w].append(name)
        heapq.heappush(load, (total + size, w))
    return out
