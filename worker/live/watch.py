"""Where a worker's event loop time goes: how late the loop runs, and what held it.

Why: a top query is answered in well under a millisecond of work, yet under load its
latency had a tail of over 100 ms.  A request waits when the loop is busy with something
else (an ingest batch, a flush, a checkpoint, a garbage collection) or when the process
is not on a core at all.  This tells them apart:

* ``lag``: a sampler sleeps ``interval`` seconds and records how much later than asked it
  woke -- the time any request arriving then would have waited (loop held, or no core);
* ``steps``: the service's own pieces of work on the loop, timed (``with watch.step(name)``), in wall
  time and in the CPU time the thread got meanwhile (their gap: the process waited for a core);
* ``gc``: every garbage collection's pause, by generation (``gc.callbacks``);
* ``slow``: the last few events of either kind over ``slow_ms``, with their wall time, so a
  slow answer can be matched with what its worker was doing then.

Cheap enough to stay on: a sampler wake-up every ``interval`` (50 ms: a wake-up every 10 ms cost ten
workers ~5% of a core) and four clock reads per step; percentiles are computed only when asked.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import gc
import time
from contextlib import contextmanager

# Upper edges (ms) of the lag histogram's bins; the last bin holds everything beyond.
LAG_BINS_MS = (1, 2, 5, 10, 20, 50, 100, 200)


class Timings:
    """Durations of one kind of work: count, total, max and the recent ones (for percentiles)."""
    __slots__ = ("count", "total", "cpu", "max", "recent")

    def __init__(self, keep: int = 1024) -> None:
        self.count = 0
        self.total = 0.0
        self.cpu = 0.0
        self.max = 0.0
        self.recent: collections.deque = collections.deque(maxlen=keep)

    def add(self, seconds: float, cpu: float = 0.0) -> None:
        self.count += 1
        self.total += seconds
        self.cpu += cpu
        self.max = max(self.max, seconds)
        self.recent.append(seconds)

    def summary(self, percentiles: bool = True) -> dict:
        out = {"n": self.count, "total_ms": round(self.total * 1000, 1), "cpu_ms": round(self.cpu * 1000, 1),
               "max_ms": round(self.max * 1000, 2)}
        if percentiles:        # sorted(), not np.percentile: ~0.1 ms, not 1-3 ms, for 1,024 floats here
            s = sorted(self.recent) or [0.0]
            out.update(p50_ms=round(s[len(s) // 2] * 1000, 2), p99_ms=round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 2))
        return out


class LoopWatch:
    def __init__(self, interval: float = 0.05, slow_ms: float = 5.0, keep_slow: int = 1024) -> None:
        self.interval = interval
        self.slow_s = slow_ms / 1000
        self.lag_bins = [0] * (len(LAG_BINS_MS) + 1)
        self.lag = Timings()
        self.steps: dict[str, Timings] = {}
        self.gc = [Timings() for _ in range(3)]
        self.slow: collections.deque = collections.deque(maxlen=keep_slow)   # (wall time s, what, ms)
        self._gc_start = self._gc_cpu = 0.0

    # -- what the loop did -------------------------------------------------------------------
    @contextmanager
    def step(self, name: str):
        t, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - t, time.thread_time() - cpu)

    def record(self, name: str, seconds: float, cpu: float = 0.0) -> None:
        got = self.steps.get(name)
        if got is None:
            got = self.steps[name] = Timings()
        got.add(seconds, cpu)
        if seconds >= self.slow_s:
            self.slow.append((round(time.time() - seconds, 4), name, round(seconds * 1000, 2)))

    # -- garbage collections ----------------------------------------------------------------------
    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start, self._gc_cpu = time.perf_counter(), time.thread_time()
            return
        took = time.perf_counter() - self._gc_start
        gen = info.get("generation", 2)
        self.gc[gen].add(took, time.thread_time() - self._gc_cpu)
        if took >= self.slow_s:
            self.slow.append((round(time.time() - took, 4), f"gc{gen}", round(took * 1000, 2)))

    # -- how late the loop runs -------------------------------------------------------------------
    async def run(self) -> None:
        """Samples the loop's lag until cancelled; also listens to the garbage collector meanwhile."""
        loop = asyncio.get_running_loop()
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                t = loop.time()
                await asyncio.sleep(self.interval)
                lag = max(0.0, loop.time() - t - self.interval)
                self.lag.add(lag)
                ms = lag * 1000
                self.lag_bins[bisect.bisect_right(LAG_BINS_MS, ms)] += 1
                if lag >= self.slow_s:
                    self.slow.append((round(time.time() - lag, 4), "lag", round(ms, 2)))
        finally:
            gc.callbacks.remove(self._on_gc)

    def summary(self, slow: bool = False) -> dict:
        """The lag (with percentiles), every step's and collection's totals; ``slow``: also every step's
        percentiles and the recent slow events (a few ms of work: for a benchmark's report, not a scrape)."""
        out = {"lag": self.lag.summary(),
               "lag_bins_ms": dict(zip([f"<{e}" for e in LAG_BINS_MS] + [f">={LAG_BINS_MS[-1]}"], self.lag_bins)),
               "steps": {name: t.summary(slow) for name, t in sorted(self.steps.items())},
               "gc": {f"gen{g}": t.summary(slow) for g, t in enumerate(self.gc)},
               "gc_frozen": gc.get_freeze_count()}      # objects no collection walks (cluster.cli froze them)
        if slow:
            out["slow"] = list(self.slow)
        return out
