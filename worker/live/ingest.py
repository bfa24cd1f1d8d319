"""A worker's local pre-aggregation of the events it receives, drained to their owners on each flush.

Why: a hot key written 25,000 times a second must not become 25,000 messages a second
to its owner.  Each worker counts (key, event minute) pairs locally and hands the
owners one count per pair per flush, so what an owner receives per interval is
bounded by the distinct pairs its senders saw, not by the events (``received`` vs
``pairs_flushed`` in the stats: the hot-key saving).

Lateness is decided here, where the arrival time is known: an event more than
``allowance_ms`` older than its arrival is late (counted, not kept); one more than
``allowance_ms`` in the future is early (counted, not kept).  Pure: times are given.

All of it runs on the worker's event loop, where a query waits behind it: no Python loop per
event or pair -- a batch's times are checked by numpy, counted by ``Counter.update`` (a C
loop), and a drain splits the pairs by owner with one sort.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import chain, compress, repeat

import numpy as np

from shardstats.worker.live.buckets import MINUTE_MS
from shardstats.worker.live.events import ARRIVAL


@dataclass
class Accepted:
    accepted: int = 0
    late: int = 0
    early: int = 0


def owners(keys: list[str], workers: int):
    """The owner of each key: the keyed engine's string hash (worker.data.hashing), so a key's owner here is
    its reducer in a group-by over the same keys."""
    import pyarrow as pa
    from shardstats.worker.data.hashing import hash_array, owners_of
    return owners_of(hash_array(pa.array(keys, pa.large_string())), workers)


class LocalCounters:
    def __init__(self, workers: int, allowance_ms: int) -> None:
        self.workers = workers
        self.allowance_ms = allowance_ms
        self.pending: Counter = Counter()      # (key, epoch minute) -> count since the last drain
        self.pending_since: int | None = None  # arrival (ms) of the oldest event not yet drained
        self.received = 0                      # events accepted, ever
        self.late = 0
        self.early = 0
        self.pairs_flushed = 0

    def add(self, keys: list[str], times_ms, arrival_ms: int) -> Accepted:
        """Counts a batch (``times_ms``: epoch ms or ``ARRIVAL`` each, a list or an int64 array; None: every
        event arrives now); returns what it kept."""
        got = Accepted()
        if not keys:
            return got
        minute_now = arrival_ms // MINUTE_MS
        if times_ms is None:
            self.pending.update(zip(keys, repeat(minute_now, len(keys))))
            got.accepted = len(keys)
        else:
            t = np.asarray(times_ms, dtype=np.int64)
            now = t == ARRIVAL
            late = ~now & (t < arrival_ms - self.allowance_ms)
            early = ~now & (t > arrival_ms + self.allowance_ms)
            minutes = np.where(now, minute_now, t // MINUTE_MS)
            got.late, got.early = int(late.sum()), int(early.sum())
            if got.late or got.early:
                keep = ~(late | early)
                keys, minutes = list(compress(keys, keep.tolist())), minutes[keep]
            self.pending.update(zip(keys, minutes.tolist()))
            got.accepted = len(keys)
        if got.accepted and self.pending_since is None:
            self.pending_since = arrival_ms
        self.received += got.accepted
        self.late += got.late
        self.early += got.early
        return got

    def drain(self) -> dict[int, tuple[list[str], np.ndarray, np.ndarray]]:
        """Everything counted since the last drain, split by owner: owner -> (keys, minutes, counts), the
        minutes and counts int64 arrays."""
        pending, self.pending, self.pending_since = self.pending, Counter(), None
        if not pending:
            return {}
        n = len(pending)
        self.pairs_flushed += n
        keys, minutes = zip(*pending)
        counts = np.fromiter(pending.values(), dtype=np.int64, count=n)
        return split_by_owner(list(keys), np.fromiter(minutes, dtype=np.int64, count=n), counts,
                              owners(keys, self.workers))


def split_by_owner(keys: list[str], minutes: np.ndarray, counts: np.ndarray, own: np.ndarray
                   ) -> dict[int, tuple[list[str], np.ndarray, np.ndarray]]:
    """(key, minute, count) pairs grouped by their owner (``own[i]``), one sort for all."""
    order = np.argsort(own, kind="stable")
    ranked = own[order]
    present = np.unique(ranked)
    starts = np.searchsorted(ranked, present, side="left")
    ends = np.searchsorted(ranked, present, side="right")
    karr = np.empty(len(keys), dtype=object)
    karr[:] = keys
    karr, minutes, counts = karr[order], minutes[order], counts[order]
    return {int(o): (karr[a:b].tolist(), minutes[a:b], counts[a:b])
            for o, a, b in zip(present.tolist(), starts.tolist(), ends.tolist())}


def merge_pairs(parts: list[tuple[list[str], np.ndarray, np.ndarray]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Several (keys, minutes, counts) of the same owner as one, each (key, minute) once with its summed count:
    what waits for a slow owner stays bounded by the distinct pairs, not by the flushes (Arrow's hash group-by)."""
    if len(parts) == 1:
        return parts[0]
    import pyarrow as pa
    table = pa.table({"k": pa.array(list(chain.from_iterable(p[0] for p in parts)), pa.large_string()),
                      "m": np.concatenate([p[1] for p in parts]), "n": np.concatenate([p[2] for p in parts])})
    got = table.group_by(["k", "m"], use_threads=False).aggregate([("n", "sum")])
    return (got["k"].to_pylist(), got["m"].to_numpy().astype(np.int64, copy=False),
            got["n_sum"].to_numpy().astype(np.int64, copy=False))
