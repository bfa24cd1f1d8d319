"""The in-memory transport: W communicators in one event loop, frames through the real codec.

Ops run unchanged over it, so algorithm tests need no sockets and run in milliseconds.
"""
from __future__ import annotations

import asyncio

from shardstats.protocol.frames import HEADER, decode_body
from shardstats.protocol.messages import validate
from shardstats.worker.comm.communicator import Communicator


class InMemoryComm(Communicator):
    """Frames go through the real codec, then straight into the destination's mailbox."""

    def __init__(self, net: "InMemoryNetwork", rank: int) -> None:
        super().__init__(net.job, rank, net.size, net.timeout)
        self.net = net

    async def _transmit(self, dest: int, frame: bytes) -> None:
        await asyncio.sleep(0)  # let other ranks run, as a socket write would
        delay = self.net.delays.get(dest)
        if delay:
            await asyncio.sleep(delay)
        msg = validate(decode_body(memoryview(frame)[HEADER.size:]))
        self.net.comms[dest].deliver(msg["src"], msg["tag"], msg["body"], len(frame))


class InMemoryNetwork:
    """W communicators in one event loop; ``delays`` slows delivery to chosen ranks."""

    def __init__(self, size: int, job: str = "test", timeout: float = 30.0) -> None:
        self.job = job
        self.size = size
        self.timeout = timeout
        self.delays: dict[int, float] = {}
        self.comms = [InMemoryComm(self, r) for r in range(size)]
