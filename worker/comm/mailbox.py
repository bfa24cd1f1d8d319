"""Per-job inbox of peer messages, keyed by tag, with an accounting of buffered bytes.

A message is "buffered" from the moment the transport hands it over until an op
takes it with ``recv``; the peak of that figure is what the credit protocol bounds.
"""
from __future__ import annotations

import asyncio
from collections import Counter, defaultdict, deque

from shardstats.errors import PeerFailure


def payload_bytes(body: dict) -> int:
    """Bytes of array data in a message body, one level of nesting deep (shuffle chunks nest a piece)."""
    n = 0
    for v in body.values():
        if isinstance(v, dict):
            n += sum(x.nbytes for x in v.values() if hasattr(x, "nbytes"))
        elif hasattr(v, "nbytes"):
            n += v.nbytes
    return n


class Mailbox:
    def __init__(self) -> None:
        self._queues: dict[str, deque] = defaultdict(deque)
        self._data_from: dict[str, Counter] = defaultdict(Counter)   # tag -> src -> queued data messages
        self._waiters: dict[str, asyncio.Future] = {}
        self.buffered = 0
        self.peak_buffered = 0
        self._failure: BaseException | None = None

    def put(self, tag: str, src: int, body: dict) -> None:
        n = payload_bytes(body)
        self.buffered += n
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        self._queues[tag].append((src, body, n))
        if n:
            self._data_from[tag][src] += 1
        fut = self._waiters.pop(tag, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Wakes every waiter with ``exc``: the job cannot go on (a peer died, it was aborted)."""
        self._failure = exc
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiters.clear()

    async def get(self, tag: str, timeout: float) -> tuple[int, dict]:
        q = self._queues[tag]
        while not q:
            if self._failure is not None:
                raise self._failure
            fut = asyncio.get_running_loop().create_future()
            self._waiters[tag] = fut
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise PeerFailure(f"no message {tag!r} from any peer within {timeout:g}s") from None
            finally:
                self._waiters.pop(tag, None)
        src, body, n = q.popleft()
        self.buffered -= n
        if n:
            c = self._data_from[tag]
            c[src] -= 1
            if not c[src]:
                del c[src]
        return src, body

    def data_sources(self, tag: str) -> set[int]:
        """Senders with data waiting under ``tag``: they are streaming to us right now, read or not."""
        return set(self._data_from[tag])
