"""A link probe: every rank streams a few frames to the next rank of a ring and times what arrives from the last.

Why: whether a cheaper wire format pays (the mode's compact shuffle) depends on how
fast the links are, and only the job can tell -- loopback, a LAN and a shaped or
shared link differ by orders of magnitude, and neither the addresses nor a setting
say which.  All ranks probe at once, rank i to rank i + 1, so every host's link
carries one stream each way, as in a round of the staggered shuffle.

The receiver times the frames between the first and the last arrival, so the
connection's set-up, the first frame's latency and a token bucket's burst do not
count: what is left is the rate the link sustains.  A probe whose frames all land
at once (loopback, or a receiver that was busy) reads as ``FAST`` rather than as
a division by a tiny interval.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from shardstats.worker.comm.communicator import Communicator

FRAME_BYTES = 1 << 14      # small enough that even a small probe is several frames, each timed on arrival
FAST = 1e12                # bytes/s reported when the frames arrived too close together to time
MIN_SPAN = 1e-4            # seconds between first and last arrival below which the span cannot be timed


@dataclass(frozen=True)
class Probe:
    """What this rank measured: the rate of the link from its ring predecessor (bytes/s), and the probe's cost."""
    rate: float
    received: int          # payload bytes that arrived
    seconds: float         # this rank's wall time in the probe


def rate_of(arrivals: list[float], sizes: list[int]) -> float:
    """Bytes/s from frames' arrival times and sizes: the bytes after the first frame over the span they took."""
    if len(arrivals) < 2:
        return FAST
    span = arrivals[-1] - arrivals[0]
    return FAST if span < MIN_SPAN else min(FAST, sum(sizes[1:]) / span)


def frames_for(nbytes: int, frame_bytes: int = FRAME_BYTES) -> int:
    """Frames for a probe of about ``nbytes``: at least 3, so two intervals are timed."""
    return max(3, -(-nbytes // frame_bytes))


async def probe_ring(comm: Communicator, nbytes: int, frame_bytes: int = FRAME_BYTES) -> Probe:
    """Sends ``nbytes`` (in ``frame_bytes`` frames) to rank + 1 while timing the frames from rank - 1.

    One round; every rank must call it at the same point.  Ranks may ask for
    different sizes: each frame says how many follow.  A job of one rank has no
    link: its probe reads ``FAST`` at no cost.
    """
    if comm.size < 2:
        return Probe(FAST, 0, 0.0)
    tag = comm.new_tag("probe")
    dest = (comm.rank + 1) % comm.size
    n = frames_for(nbytes, frame_bytes)
    payload = bytes(frame_bytes)
    t0 = time.perf_counter()

    async def send() -> None:
        for i in range(n):
            await comm.send(dest, tag, {"i": i, "n": n, "p": payload})

    async def receive() -> tuple[list[float], list[int]]:
        arrivals: list[float] = []
        sizes: list[int] = []
        want = 1
        while len(arrivals) < want:
            _, body = await comm.recv(tag)
            arrivals.append(time.perf_counter())
            want = int(body["n"])
            sizes.append(len(body["p"]))
        return arrivals, sizes

    async with asyncio.TaskGroup() as tg:
        tg.create_task(send())
        received = tg.create_task(receive())
    arrivals, sizes = received.result()
    return Probe(rate_of(arrivals, sizes), sum(sizes), time.perf_counter() - t0)
