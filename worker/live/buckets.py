"""An owner's counts of its keys in time buckets at several levels: pure, driven by explicit times.

Why levels: "the last 5 minutes" wants minute resolution, "the last day" does not, and
keeping every minute of a day would cost 1,440 buckets.  As in the seeds' design an
owner keeps 6 one-minute buckets, 13 five-minute buckets and 25 one-hour buckets
(``LEVELS``); every count goes into its bucket at every level, and a bucket that falls
out of its level's retention is dropped whole (roll-over).  A query for the last N
is answered by the finest level that can hold it, as a merge of that level's N most
recent aligned buckets, the current (partial) one included; the answer names the
window it covers, ``[start, end)`` in epoch milliseconds, bucket-aligned.

Nothing here reads a clock: ``advance(now_ms)`` moves time, so tests drive it.

An owner adds what it receives on the worker's event loop, where a query waits behind it: a
batch is split by minute (numpy), and each minute's keys go into a bucket's dict by C loops
(``map(dict.get)``, ``dict.update``), not a Python loop per key.

Exact buckets hold a dict key -> count each.  Approximate buckets (``approx=True``)
hold a DataSketches count-min sketch and a frequent-items sketch (the heavy hitters):
memory per bucket is fixed whatever the keys, and an answer gives each key's
guaranteed bounds (the frequent-items sketch's) and the count-min estimate.
"""
from __future__ import annotations

import collections
import heapq
import operator
import re
from dataclasses import dataclass
from itertools import compress, repeat

import numpy as np

MINUTE_MS = 60_000
# (bucket width in ms, buckets kept): 6 x 1 min, 13 x 5 min, 25 x 1 h -- the seeds' schedule.
LEVELS: tuple[tuple[int, int], ...] = ((MINUTE_MS, 6), (5 * MINUTE_MS, 13), (60 * MINUTE_MS, 25))
ENTRY_BYTES = 120          # what one key's count costs in a dict bucket beyond the key's text (CPython, measured)
_LAST = re.compile(r"^\s*(\d{1,6})\s*(s|m|min|h)\s*$")


@dataclass(frozen=True)
class Window:
    """Which buckets answer a query: ``count`` buckets of level ``level`` (width ``width_ms``)."""
    level: int
    width_ms: int
    count: int

    def span(self, now_ms: int) -> tuple[int, int]:
        """``[start, end)`` in ms: the ``count`` aligned buckets ending with the one holding ``now_ms``."""
        cur = now_ms // self.width_ms
        return (cur - self.count + 1) * self.width_ms, (cur + 1) * self.width_ms


def add_counts(counts: dict[str, int], keys: list[str], ns: list[int]) -> int:
    """``counts[key] += n`` for each pair (``keys`` distinct), in C loops; returns the bytes of the new keys."""
    old = list(map(counts.get, keys, repeat(0)))
    new_bytes = sum(map(len, compress(keys, map(operator.not_, old)))) if 0 in old else 0
    counts.update(zip(keys, map(operator.add, old, ns)))
    return new_bytes


def subtract_counts(counts: dict[str, int], keys: list[str], ns: list[int]) -> None:
    """``counts[key] -= n`` for each pair (``keys`` distinct and all present); a key left at 0 is removed."""
    left = list(map(operator.sub, map(counts.__getitem__, keys), ns))
    counts.update(zip(keys, left))
    if 0 in left:
        collections.deque(map(counts.__delitem__, compress(keys, map(operator.not_, left))), maxlen=0)


def distinct(keys: list[str], ns: list[int]) -> tuple[list[str], list[int]]:
    """The pairs with each key once, its counts summed (a batch from a peer has each (key, minute) once, so
    this is the rare path: Arrow's hash group-by)."""
    if len(set(keys)) == len(keys):
        return keys, ns
    import pyarrow as pa
    got = pa.table({"k": pa.array(keys, pa.large_string()), "n": pa.array(ns, pa.int64())}) \
        .group_by("k", use_threads=False).aggregate([("n", "sum")])
    return got["k"].to_pylist(), got["n_sum"].to_pylist()


def parse_last(text: str, levels: tuple[tuple[int, int], ...] = LEVELS) -> Window:
    """``5m``, ``1h``, ``24h``, ``90s`` -> the finest level and bucket count that cover at least that long.

    A duration that is not a whole number of a level's buckets is rounded up to one
    (``7m`` is two five-minute buckets); longer than the coarsest level keeps is a
    ``ValueError`` naming the longest possible.
    """
    m = _LAST.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration such as 5m, 1h or 24h")
    ms = int(m.group(1)) * {"s": 1000, "m": MINUTE_MS, "min": MINUTE_MS, "h": 60 * MINUTE_MS}[m.group(2)]
    if ms <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    for i, (width, keep) in enumerate(levels):
        n = -(-ms // width)
        # The finest level's last bucket stays for late events: "last 6m" of six kept minute buckets
        # would read a bucket that is about to roll over, so it goes to the next level.
        if n <= keep - 1 or i == len(levels) - 1 and n <= keep:
            return Window(i, width, n)
    width, keep = levels[-1]
    raise ValueError(f"{text!r} is longer than the {keep * width // (60 * MINUTE_MS)}h kept")


class _Exact:
    """One exact bucket: key -> count."""
    __slots__ = ("counts", "key_bytes")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.key_bytes = 0

    def add_many(self, keys: list[str], ns: list[int]) -> None:
        """``keys`` distinct."""
        self.key_bytes += add_counts(self.counts, keys, ns)

    def memory(self) -> int:
        return self.key_bytes + ENTRY_BYTES * len(self.counts)

    def dump(self):
        return dict(self.counts)      # a copy (C speed): the checkpoint encodes it on a thread while counts go on

    @classmethod
    def load(cls, data, _params) -> "_Exact":
        b = cls()
        b.counts = {str(k): int(v) for k, v in data.items()}
        b.key_bytes = sum(len(k) for k in b.counts)
        return b


@dataclass(frozen=True)
class ApproxParams:
    """The sketches of an approximate bucket (settings: live_cm_hashes, live_cm_buckets, live_hh_lg_k)."""
    cm_hashes: int = 3
    cm_buckets: int = 2048
    hh_lg_k: int = 10


class _Approx:
    """One approximate bucket: a count-min sketch and a frequent-items sketch of the same counts."""
    __slots__ = ("cm", "hh")

    def __init__(self, p: ApproxParams, cm=None, hh=None) -> None:
        import datasketches as ds
        self.cm = cm if cm is not None else ds.count_min_sketch(p.cm_hashes, p.cm_buckets)
        self.hh = hh if hh is not None else ds.frequent_strings_sketch(p.hh_lg_k)

    def add_many(self, keys: list[str], ns: list[int]) -> None:
        for key, n in zip(keys, ns):          # the sketches take one key at a time
            self.cm.update(key, n)
            self.hh.update(key, n)

    def memory(self) -> int:
        return self.cm.get_serialized_size_bytes() + self.hh.get_serialized_size_bytes()

    def dump(self):
        return {"cm": self.cm.serialize(), "hh": self.hh.serialize()}

    @classmethod
    def load(cls, data, p: ApproxParams) -> "_Approx":
        import datasketches as ds
        return cls(p, ds.count_min_sketch.deserialize(bytes(data["cm"])),
                   ds.frequent_strings_sketch.deserialize(bytes(data["hh"])))


MAX_SUMS = 4           # windows kept summed per owner (5m, 1h, 24h and one more)


class _WindowSum:
    """The summed counts of buckets ``end - count + 1 .. end`` of one level (exact buckets)."""
    __slots__ = ("level", "count", "end", "counts", "total", "included")

    def __init__(self, level: int, count: int, end: int) -> None:
        self.level, self.count, self.end = level, count, end
        self.counts: dict[str, int] = {}
        self.total = 0
        self.included: set[int] = set()      # bucket indices whose counts are in the sum

    def add_many(self, idx: int, keys: list[str], ns: list[int], total: int) -> None:
        """``keys`` distinct; ``total``: the sum of ``ns``."""
        add_counts(self.counts, keys, ns)
        self.total += total
        self.included.add(idx)

    def slide(self, entering, e: int, leaving, lv: int | None) -> None:
        if entering is not None:
            add_counts(self.counts, list(entering.counts), list(entering.counts.values()))
            self.total += sum(entering.counts.values())
            self.included.add(e)
        if leaving is not None:
            subtract_counts(self.counts, list(leaving.counts), list(leaving.counts.values()))
            self.total -= sum(leaving.counts.values())
        self.included.discard(lv)
        self.end = max(self.end, e)


def top_items(counts: dict[str, int], k: int) -> list[tuple[str, int]]:
    """The ``k`` largest (key, count) by count descending then key ascending: numpy finds the k-th count, only
    the keys at or above it are sorted (ties at the k-th count: the smallest keys, by a bounded heap)."""
    n = len(counts)
    if n <= k:
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    import numpy as np
    vals = np.fromiter(counts.values(), dtype=np.int64, count=n)
    kth = int(np.partition(vals, n - k)[n - k])
    keys = list(counts)
    above = [(keys[i], int(vals[i])) for i in np.nonzero(vals > kth)[0].tolist()]
    at = heapq.nsmallest(k - len(above), (keys[i] for i in np.nonzero(vals == kth)[0].tolist()))
    return sorted(above, key=lambda kv: (-kv[1], kv[0])) + [(key, kth) for key in at]


class TimeBuckets:
    """Every level's buckets of one owner; ``add`` counts (key, minute, n) triples, ``top`` answers."""

    def __init__(self, levels: tuple[tuple[int, int], ...] = LEVELS, approx: ApproxParams | None = None) -> None:
        if any(w % MINUTE_MS for w, _ in levels):
            raise ValueError("every level's bucket width must be a whole number of minutes")
        self.levels = levels
        self.approx = approx
        self.buckets: list[dict[int, _Exact | _Approx]] = [{} for _ in levels]
        self.now_ms = 0
        self.late = [0] * len(levels)      # counts that arrived after their bucket rolled over, per level
        self.added = 0
        self._sums: dict[tuple[int, int], _WindowSum] = {}      # the windows asked for lately, kept summed

    def _new(self):
        return _Approx(self.approx) if self.approx is not None else _Exact()

    def _oldest(self, level: int) -> int:
        width, keep = self.levels[level]
        return self.now_ms // width - keep + 1

    def advance(self, now_ms: int) -> int:
        """Moves time forward (never back) and drops the buckets that rolled over; returns how many."""
        if now_ms <= self.now_ms:
            return 0
        self.now_ms = now_ms
        dropped = 0
        for level, per in enumerate(self.buckets):
            oldest = self._oldest(level)
            for idx in [i for i in per if i < oldest]:
                del per[idx]
                dropped += 1
        for key, ws in list(self._sums.items()):
            if ws.included and min(ws.included) < self._oldest(ws.level):
                del self._sums[key]          # holds a bucket that rolled over: the next query builds it anew
        return dropped

    def add(self, keys, minutes, counts) -> int:
        """Counts ``counts[i]`` for ``keys[i]`` in the minute ``minutes[i]`` (epoch minutes) at every level.

        A count whose bucket has already rolled over at a level is not kept there: it is
        added to ``late[level]`` (so the finer levels may miss what the coarser ones hold;
        the ingest side's allowance keeps this to links stalled for minutes).  Returns the
        counts that no level kept.
        """
        per_minute = [w // MINUTE_MS for w, _ in self.levels]
        oldest = [self._oldest(lv) for lv in range(len(self.levels))]
        sums = [[s for s in self._sums.values() if s.level == lv] for lv in range(len(self.levels))]
        m = np.asarray(minutes, dtype=np.int64)
        if not len(m):
            return 0
        n = np.asarray(counts, dtype=np.int64)
        # One group per minute (a flush holds a few): its keys go into one bucket per level.
        order = np.argsort(m, kind="stable")
        m, n = m[order], n[order]
        karr = np.empty(len(keys), dtype=object)
        karr[:] = keys
        karr = karr[order]
        uniq, starts = np.unique(m, return_index=True)
        ends = np.append(starts[1:], len(m))
        lost = 0
        for minute, a, b in zip(uniq.tolist(), starts.tolist(), ends.tolist()):
            ks, ns = distinct(karr[a:b].tolist(), n[a:b].tolist())
            total = int(n[a:b].sum())
            self.added += total
            kept = False
            for lv, per in enumerate(self.buckets):
                idx = minute // per_minute[lv]
                if idx < oldest[lv]:
                    self.late[lv] += total
                    continue
                bucket = per.get(idx)
                if bucket is None:
                    bucket = per[idx] = self._new()
                bucket.add_many(ks, ns)
                kept = True
                for s in sums[lv]:
                    if s.end - s.count < idx <= s.end:
                        s.add_many(idx, ks, ns, total)
            if not kept:
                lost += total
        return lost

    def memory(self) -> int:
        """Bytes the buckets (and the kept window sums) hold (an estimate for exact buckets: key text plus a
        per-entry price)."""
        return sum(b.memory() for per in self.buckets for b in per.values()) + \
            sum(ENTRY_BYTES * len(s.counts) for s in self._sums.values())

    def entries(self) -> int:
        return sum(len(b.counts) for per in self.buckets for b in per.values() if isinstance(b, _Exact))

    def window_buckets(self, w: Window, at_ms: int | None = None):
        cur = (self.now_ms if at_ms is None else at_ms) // w.width_ms
        per = self.buckets[w.level]
        return [per[i] for i in range(cur - w.count + 1, cur + 1) if i in per]

    def top(self, k: int, w: Window, at_ms: int | None = None) -> dict:
        """The ``k`` largest keys of window ``w`` at ``at_ms`` (default: now), by count then key (ascending).

        ``at_ms`` lets every owner answer for the same window: the client's time of asking.

        Exact: ``{"items": [[key, count], ...], "total": events in the window, "keys": distinct keys}``.
        Approximate: items are ``[key, estimate, lower, upper]`` (lower <= true count <= upper, the
        frequent-items sketch's guarantee), with ``max_error`` the sketch's bound for any key it
        does not list, and ``cm_error`` the count-min's relative error (times the total).
        """
        start, end = w.span(self.now_ms if at_ms is None else at_ms)
        got = self.window_buckets(w, at_ms)
        out = {"from_ms": start, "to_ms": end, "level": w.level, "buckets": w.count}
        if self.approx is None:
            s = self._window_sum(w, (self.now_ms if at_ms is None else at_ms) // w.width_ms)
            out.update(items=[[key, n] for key, n in top_items(s.counts, k)], total=s.total, keys=len(s.counts))
            return out
        return self._approx_top(k, got, out)

    def _window_sum(self, w: Window, end: int) -> "_WindowSum":
        """The window's counts: kept summed for the windows asked lately (``MAX_SUMS``), slid forward a bucket at
        a time (add the bucket entering, subtract the one leaving) instead of merging every bucket per query."""
        per = self.buckets[w.level]
        s = self._sums.pop((w.level, w.count), None)
        if s is not None and s.end < end and end - s.end < w.count:
            for e in range(s.end + 1, end + 1):
                leaving = e - w.count
                if leaving in s.included and leaving not in per:
                    s = None                 # rolled over before we slid past it: its counts are unknown now
                    break
                s.slide(per.get(e), e, per.get(leaving), leaving)
        elif s is not None and s.end != end:
            s = None
        if s is None:
            s = _WindowSum(w.level, w.count, end)
            for i in range(end - w.count + 1, end + 1):
                if i in per:
                    s.slide(per[i], i, None, None)
        if s.end == end:
            self._sums[(w.level, w.count)] = s          # most recently used last
            while len(self._sums) > MAX_SUMS:
                self._sums.pop(next(iter(self._sums)))
        return s

    def _approx_top(self, k: int, got: list, out: dict) -> dict:
        import datasketches as ds
        hh = ds.frequent_strings_sketch(self.approx.hh_lg_k)
        cm = ds.count_min_sketch(self.approx.cm_hashes, self.approx.cm_buckets)
        for b in got:
            hh.merge(b.hh)
            cm.merge(b.cm)
        rows = hh.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES, 0) if not hh.is_empty() else []
        rows.sort(key=lambda r: (-r[1], r[0]))
        total = hh.total_weight
        items = []
        for key, est, lo, hi in rows[:k]:
            # count-min never counts a key low (positive updates only): a second upper bound, often tighter
            hi = min(int(hi), int(cm.get_estimate(key)))
            items.append([key, min(int(est), hi), int(lo), hi])
        out.update(items=items,
                   total=int(total), keys=None,
                   # upper - lower is the same offset for every key, listed or not: the bound for any key
                   max_error=int(hh.get_upper_bound("") - hh.get_lower_bound("")) if not hh.is_empty() else 0,
                   cm_error=float(cm.get_relative_error()))
        return out

    # -- checkpoints (worker/live/store.py writes them) ----------------------------------------
    def dump(self) -> dict:
        return {"levels": [list(lv) for lv in self.levels], "approx": self.approx is not None, "now_ms": self.now_ms,
                "late": list(self.late), "added": self.added,
                "buckets": [{idx: b.dump() for idx, b in per.items()} for per in self.buckets]}

    @classmethod
    def load(cls, data: dict, approx: ApproxParams | None) -> "TimeBuckets":
        levels = tuple((int(w), int(k)) for w, k in data["levels"])
        if bool(data["approx"]) != (approx is not None):
            raise ValueError("the checkpoint was written by " + ("approximate" if data["approx"] else "exact")
                             + " buckets")
        tb = cls(levels, approx)
        tb.now_ms = int(data["now_ms"])
        tb.late = [int(x) for x in data["late"]]
        tb.added = int(data["added"])
        kind = _Approx if approx is not None else _Exact
        tb.buckets = [{int(idx): kind.load(b, approx) for idx, b in per.items()} for per in data["buckets"]]
        return tb
