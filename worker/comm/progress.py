"""A worker's progress for the coordinator: cheap to update, sent at a low rate by a ticker.

Why a ticker instead of a message per event: the code doing the work (the file
reader, the shuffle, the median's rounds) only writes a few attributes of a
``Progress`` object -- no I/O, no clock, nothing on the per-chunk path that costs
throughput -- and one small task per job samples it every ``interval`` seconds
and sends a ``progress`` message when something changed.  So a worker sends at
most 1/interval messages per second per job (plus one on entering and one on
leaving a phase), whatever the data size, and none at all unless the
coordinator asked for them (the ``progress`` field of its ``load`` message).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager

from shardstats.protocol.messages import make
from shardstats.worker.comm.timeline import Timeline

MIN_INTERVAL = 0.05          # a coordinator cannot ask for more than 20 messages per second per worker
MAX_INTERVAL = 60.0


class Progress:
    """What one worker is doing in one job: a phase name and ``done`` of ``total`` steps (0 = unknown).

    Entering a phase also marks it on the job's ``timeline`` (worker/comm/timeline.py),
    so the report can draw when each phase ran without the ops timing themselves twice.
    """

    __slots__ = ("phase", "done", "total", "timeline", "sizes")

    def __init__(self, phase: str = "start", timeline: Timeline | None = None) -> None:
        self.phase = phase
        self.done = 0
        self.total = 0
        self.timeline = timeline if timeline is not None else Timeline()
        # The load's files' sizes in reading order (from the listing): ``done`` files read is ``read()`` bytes
        # of ``sizes`` in all, so the progress line can say bytes read of total without the readers counting.
        self.sizes: list[int] | None = None

    def read(self) -> tuple[int, int]:
        """Bytes of input read and to read (0, 0 when the sizes are not known)."""
        if not self.sizes:
            return 0, 0
        done = max(0, min(int(self.done), len(self.sizes)))
        return sum(self.sizes[:done]), sum(self.sizes)

    def set(self, phase: str, done: int = 0, total: int = 0) -> None:
        self.phase, self.done, self.total = phase, done, total
        self.timeline.phase(phase)


def interval_from(value: object) -> float | None:
    """The load message's ``progress`` field as a sending interval in seconds; None: send nothing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return min(max(float(value), MIN_INTERVAL), MAX_INTERVAL)


@asynccontextmanager
async def reporting(job: str, progress: Progress, send: Callable[[dict], None] | None, interval: float | None,
                    bytes_sent: Callable[[], int] = lambda: 0):
    """Sends ``progress`` snapshots while the body runs: at entry, every ``interval`` s if changed, and at exit.

    ``send`` must not block (the worker's reply writes to its transport).  The
    ticker task is owned here: cancelled when the body ends, however it ends.
    """
    if send is None or interval is None:
        yield progress
        return
    last: tuple | None = None

    def tick() -> None:
        nonlocal last
        snap = (progress.phase, int(progress.done), int(progress.total), int(bytes_sent()))
        if snap != last:
            last = snap
            read, to_read = progress.read() if progress.phase == "load" else (0, 0)
            extra = {"read": read, "read_total": to_read} if to_read else {}
            send(make("progress", job=job, phase=snap[0], done=snap[1], total=snap[2], bytes=snap[3], **extra))

    async def ticker() -> None:
        while True:
            await asyncio.sleep(interval)
            tick()

    tick()
    task = asyncio.create_task(ticker(), name=f"progress-{job}")
    try:
        yield progress
    finally:
        task.cancel()          # it only sleeps and sends: nothing to wait for
    tick()                     # the phase's final state (not after a failure: the error says it all)
