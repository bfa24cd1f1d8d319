"""Where an op's numpy steps run: on a thread, so the event loop keeps answering peers, unless the step is tiny.

A numpy step over a worker's share can take seconds; numpy lets go of the GIL, so on
a thread it leaves the loop free for heartbeats, credits and the peers' chunks. The
hop itself costs a future, a thread's wake-up and a callback into the loop: about as
much CPU as a small job's whole step, paid several times a job by each of ten workers
sharing two cores (13% of a worker's CPU in a one-value mode). A step over fewer than
``INLINE_BELOW`` values (well under a millisecond) therefore runs in place.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, TypeVar

T = TypeVar("T")

INLINE_BELOW = 1 << 14      # values: a sort of 16K int64 takes ~0.5 ms


async def numpy_step(n: int, fn: Callable[..., T], /, *args: Any) -> T:
    """``fn(*args)``, on a thread when it works on ``n`` >= ``INLINE_BELOW`` values."""
    if n < INLINE_BELOW:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)
