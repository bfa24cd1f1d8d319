"""Assigning shard files to workers: each file to exactly one worker, balanced by bytes."""
from __future__ import annotations

import heapq

from shardstats.worker.io.listing import ShardRef


def assign(files: list[ShardRef], workers: int) -> list[list[ShardRef]]:
    """Longest-processing-time first: biggest file to the least-loaded worker.  Deterministic."""
    load = [(0, w) for w in range(workers)]
    heapq.heapify(load)
    out: list[list[ShardRef]] = [[] for _ in range(workers)]
    for ref in sorted(files, key=lambda f: (-f.size, f.path)):
        total, w = heapq.heappop(load)
        out[w].append(ref)
        heapq.heappush(load, (total + ref.size, w))
    return out
