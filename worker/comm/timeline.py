"""When each part of a job ran on one worker: the raw material of the job report (cluster/report.py).

Why a separate record from ``Progress``: progress is a snapshot sent while the job
runs, the timeline is the whole story returned once in the job's stats.  It holds

* ``spans``: ``[lane, name, start, end]`` in seconds since the job reached this
  worker (its ``load`` message).  Lane ``phase`` is the op's phases in order (load,
  count, shuffle, aggregate, reduce, select ...); lanes ``send``, ``receive`` and
  ``wait`` are the shuffle's sending task, its receiving task and the sender's
  waits for a credit or grant.
* ``streams``: ``[t, n]`` samples of how many inbound streams the shuffle had open,
  taken when a stream is admitted or ends (so at most 2 per peer per shuffle).

Both are bounded (``MAX_SPANS``, ``MAX_SAMPLES``): short waits are dropped and
neighbouring ones merged, so a long shuffle costs a few kilobytes of stats, not
one entry per chunk.  Recording is a clock read and a list append -- cheap enough
for the per-chunk path of the shuffle.
"""
from __future__ import annotations

import time

MAX_SPANS = 600          # per lane kind "wait"; phases and send/receive are a handful
MAX_SAMPLES = 1000
MIN_WAIT = 0.0005        # credit waits shorter than this are noise on the chart
MERGE_GAP = 0.002        # waits closer than this merge into one span


class Timeline:
    __slots__ = ("t0", "spans", "streams", "_open", "_waits", "inbound_now")

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.perf_counter() if t0 is None else t0
        self.spans: list[list] = []
        self.streams: list[list] = []
        self._open: list | None = None        # the current phase span
        self._waits = 0
        self.inbound_now = 0                  # inbound streams open now (the metrics read it while the job runs)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def phase(self, name: str) -> None:
        """Enters phase ``name`` (closing the previous one); entering the phase we are in is a no-op."""
        t = self.now()
        if self._open is not None:
            if self._open[1] == name:
                return
            self._open[3] = t
        self._open = ["phase", name, t, t]
        self.spans.append(self._open)

    def close(self) -> None:
        """Ends the current phase (at the end of the job's run)."""
        if self._open is not None:
            self._open[3] = self.now()
            self._open = None

    def span(self, lane: str, name: str, start: float, end: float) -> None:
        """Records a span given in ``time.perf_counter()`` readings."""
        self.spans.append([lane, name, start - self.t0, end - self.t0])

    def wait(self, start: float, end: float) -> None:
        """A sender's wait for a credit, merged with the previous one when they nearly touch."""
        if end - start < MIN_WAIT:
            return
        s, e = start - self.t0, end - self.t0
        last = self.spans[-1] if self.spans else None
        if last is not None and last[0] == "wait" and s - last[3] < MERGE_GAP:
            last[3] = e
            return
        if self._waits >= MAX_SPANS:
            return
        self._waits += 1
        self.spans.append(["wait", "credit wait", s, e])

    def inbound(self, n: int) -> None:
        """Samples the number of inbound streams open now."""
        self.inbound_now = n
        if len(self.streams) < MAX_SAMPLES and (not self.streams or self.streams[-1][1] != n):
            self.streams.append([self.now(), n])

    def as_stats(self) -> dict:
        """The timeline for a job's stats, times rounded to 0.1 ms (JSON stays small)."""
        self.close()
        return {"timeline": [[lane, name, round(a, 4), round(max(a, b), 4)] for lane, name, a, b in self.spans],
                "streams": [[round(t, 4), n] for t, n in self.streams]}
