"""The progress line of ``cluster submit``: one self-overwriting line on stderr, built from workers' messages.

Workers send ``progress`` messages (``shardstats.worker.comm.progress``) a few times per second;
``coordinator.job.run_job`` hands each to ``ProgressLine.update``.  The line shows
the newest phase any worker has reached, summed over the workers that reported
it, e.g.::

    mode 2.4s | shuffle 34/80 chunks | 35.2 MiB sent | 7/10 workers
    median 0.9s | select round 2 of ~3 | 1.1 MiB sent | 10/10 workers
    mode 0.3s | load 7/10 files, 1.2 GiB of 8.0 GiB read | 4 of 10 workers at load
    mode 95.1s | pass 2 of 4 | 3.1 GiB sent

It is drawn with ``\\r`` (no terminal escapes), padded to cover the previous
text, cut to the terminal's width so it never wraps, redrawn at most
``1/min_interval`` times a second, and erased by ``close()`` so the result or
an error line starts on a clean line.  Whether to draw at all is
``progress_enabled``: only on a terminal, never with ``--quiet``;
``CLUSTER_PROGRESS=always|never`` overrides the terminal test (tests use it).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TextIO, TypeVar

T = TypeVar("T")

UNITS = ("load", "files"), ("shuffle", "chunks")


def progress_enabled(stream: TextIO, quiet: bool, env: dict[str, str] | None = None) -> bool:
    """Draw progress on ``stream``?  ``--quiet`` always wins; then $CLUSTER_PROGRESS; then "is it a terminal"."""
    if quiet:
        return False
    mode = (os.environ if env is None else env).get("CLUSTER_PROGRESS", "auto").strip().lower()
    if mode == "always":
        return True
    if mode == "never":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):      # a closed or exotic stream: no terminal
        return False


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class ProgressLine:
    """Aggregates per-worker progress messages and draws them as one line."""

    def __init__(self, stream: TextIO, op: str, *, min_interval: float = 0.1, width: int | None = None,
                 clock: Callable[[], float] = time.monotonic, workers: int | None = None) -> None:
        self.stream = stream
        self.op = op
        self.workers = workers                                   # how many the job asked (None: as reported)
        self.min_interval = min_interval
        self.width = width
        self.clock = clock
        self.started = clock()
        self.job: str | None = None
        self.attempt = 1
        self.phases: list[str] = []                              # in the order first seen
        self.latest: dict[int, str] = {}                         # worker -> its newest phase
        self.record: dict[int, dict[str, tuple[int, int]]] = {}  # worker -> phase -> (done, total)
        self.sent: dict[int, int] = {}                           # worker -> bytes sent in this job
        self.read: dict[int, tuple[int, int]] = {}               # worker -> input bytes read, of its total
        self._shown = 0                                          # length of the text on screen
        self._drawn_at: float | None = None

    # -- input ------------------------------------------------------------------------------
    def update(self, worker: int, msg: dict) -> None:
        """Takes one ``progress`` message from ``worker`` (the ``on_progress`` callback of run_job)."""
        job = str(msg.get("job", ""))
        if self.job is not None and job != self.job:       # a retry runs under a new job id: start over
            self.attempt += 1
            self.phases.clear()
            self.latest.clear()
            self.record.clear()
            self.sent.clear()
            self.read.clear()
        self.job = job
        phase = str(msg.get("phase", "?"))
        if phase not in self.phases:
            self.phases.append(phase)
        self.latest[worker] = phase
        self.record.setdefault(worker, {})[phase] = (int(msg.get("done", 0)), int(msg.get("total", 0)))
        self.sent[worker] = int(msg.get("bytes", 0))
        if msg.get("read_total"):             # the load: bytes of the worker's files read (by the listing's sizes)
            self.read[worker] = (int(msg.get("read", 0)), int(msg["read_total"]))
        now = self.clock()
        if self._drawn_at is None or now - self._drawn_at >= self.min_interval:
            self.draw(now)

    __call__ = update

    # -- output -----------------------------------------------------------------------------
    def text(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.started
        head = f"{self.op} {elapsed:.1f}s" + (f" (attempt {self.attempt})" if self.attempt > 1 else "")
        if not self.phases:
            return f"{head} | starting"
        phase = self.phases[-1]
        n = max(len(self.latest), self.workers or 0)
        parts = [head, self._describe(phase, n)]
        sent = sum(self.sent.values())
        if sent:
            parts.append(f"{human_bytes(sent)} sent")
        here = sum(1 for p in self.latest.values() if p == phase)
        if here < n:                           # say who is where; when all are in the phase, nothing to say
            parts.append(f"{here} of {n} workers {'starting' if phase == self.op else 'at ' + phase}")
        return " | ".join(parts)

    def _describe(self, phase: str, n: int) -> str:
        if phase == self.op:                   # the op's own name: entered the run, no phase named yet
            return "starting"
        recs = [r[phase] for r in self.record.values() if phase in r]
        if phase == "select":                  # the median's rounds: n of ~m (rank 0 estimates m)
            n = max(d for d, _ in recs)
            m = max(t for _, t in recs)
            return f"select round {n}" + (f" of ~{m}" if m >= n else "")
        if phase == "pass" and recs:           # values kept on disk, walked in passes: every rank takes as many
            return f"pass {min(d for d, _ in recs)} of {max(t for _, t in recs)}"
        unit = dict(UNITS).get(phase)
        total = sum(t for _, t in recs)
        if unit is None or total == 0 or len(recs) < n:    # a total over some workers only would mislead
            return phase
        text = f"{phase} {sum(d for d, _ in recs)}/{total} {unit}"
        if phase == "load" and len(self.read) >= n:
            read, of = (sum(r[i] for r in self.read.values()) for i in (0, 1))
            text += f", {human_bytes(read)} of {human_bytes(of)} read"
        return text

    def _columns(self) -> int:
        if self.width is not None:
            return self.width
        import shutil       # here: a piped submit draws nothing, and shutil brings bz2, lzma and zlib
        return shutil.get_terminal_size((80, 24)).columns

    def draw(self, now: float | None = None) -> None:
        text = self.text(now)[: max(10, self._columns() - 1)]   # never wrap: \r only rewinds one row
        self.stream.write("\r" + text + " " * max(0, self._shown - len(text)))
        self.stream.flush()
        self._shown = len(text)
        self._drawn_at = self.clock() if now is None else now

    async def ticking(self, coro: Awaitable[T], interval: float = 0.25) -> T:
        """Awaits ``coro`` while redrawing every ``interval`` s, so the clock moves even when no worker
        has news (a long load, a quiet phase).  The ticker task is ours: cancelled when ``coro`` ends."""
        async def tick() -> None:
            while True:
                await asyncio.sleep(interval)
                self.draw()
        task = asyncio.create_task(tick(), name="progress-line")
        try:
            return await coro
        finally:
            task.cancel()

    def log_handler(self) -> logging.Handler:
        """A handler for the coordinator's log records (a lost worker, a retry) that erases the line first,
        so a record never lands in the middle of it; the next update draws the line again below."""
        line = self

        class Erasing(logging.StreamHandler):
            def emit(self, record: logging.LogRecord) -> None:
                line.close()
                super().emit(record)
        return Erasing(self.stream)

    def close(self) -> None:
        """Erases the line (if one was drawn), leaving the cursor at the start of an empty row."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0
