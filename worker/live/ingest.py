"""A worker's local pre-aggregation of the events it receives, drained to their owners on each flush.

Why: a hot key written 25,000 times a second must not become 25,000 messages a second
to its owner.  Each worker counts (key, event minute) pairs locally and hands the
owners one count per pair per flush, so what an owner receives per interval is
bounded by the distinct pairs its senders saw, not by the events (``received`` vs
``pairs_flushed`` in the stats: the hot-key saving).

Lateness is decided here, where the arrival time is known: an event more than
``allowance_ms`` older than its arrival is late (counted, not kept); one more than
``allowance_ms`` in the future is early (counted, not kept).  Pure: times are given.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

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
        """Counts a batch (``times_ms[i]`` is ``ARRIVAL`` or None for arrival time); returns what it kept."""
        got = Accepted()
        if not keys:
            return got
        minute_now = arrival_ms // MINUTE_MS
        if times_ms is None:
            self.pending.update(zip(keys, [minute_now] * len(keys)))
            got.accepted = len(keys)
        else:
            lo, hi = arrival_ms - self.allowance_ms, arrival_ms + self.allowance_ms
            minutes = []
            kept = []
            for k, t in zip(keys, times_ms):
                if t == ARRIVAL:
                    minutes.append(minute_now)
                elif t < lo:
                    got.late += 1
                    continue
                elif t > hi:
                    got.early += 1
                    continue
                else:
                    minutes.append(t // MINUTE_MS)
                kept.append(k)
            self.pending.update(zip(kept, minutes))
            got.accepted = len(kept)
        if got.accepted and self.pending_since is None:
            self.pending_since = arrival_ms
        self.received += got.accepted
        self.late += got.late
        self.early += got.early
        return got

    def drain(self) -> dict[int, tuple[list[str], list[int], list[int]]]:
        """Everything counted since the last drain, split by owner: owner -> (keys, minutes, counts)."""
        pending, self.pending, self.pending_since = self.pending, Counter(), None
        if not pending:
            return {}
        pairs = list(pending.items())
        self.pairs_flushed += len(pairs)
        keys = [k for (k, _), _ in pairs]
        own = owners(keys, self.workers).tolist()
        out: dict[int, tuple[list[str], list[int], list[int]]] = {}
        for o, ((k, m), n) in zip(own, pairs):
            ks, ms, ns = out.get(o) or out.setdefault(o, ([], [], []))
            ks.append(k)
            ms.append(m)
            ns.append(n)
        return out
