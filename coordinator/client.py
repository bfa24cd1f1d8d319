"""The coordinator's connection to one worker: handshake, then request/response messages."""
from __future__ import annotations

import asyncio
import ssl

from shardstats.protocol.frames import DEFAULT_MAX_FRAME, encode_frame
from shardstats.protocol.messages import validate
from shardstats.settings import DEFAULTS
from shardstats.worker.net.dial import FrameReader, client_connect

COORDINATOR_ID = -1


class WorkerClient:
    def __init__(self, addr: str, frames: FrameReader, writer: asyncio.StreamWriter, worker_id: int) -> None:
        self.addr = addr
        self.frames = frames
        self.writer = writer
        self.worker_id = worker_id

    @classmethod
    async def connect(cls, addr: str, token: bytes, timeout: float = DEFAULTS.connect_timeout,
                      tls: ssl.SSLContext | None = None) -> "WorkerClient":
        frames, writer, wid = await client_connect(addr, token, "coord", COORDINATOR_ID, timeout,
                                                   max_frame=DEFAULT_MAX_FRAME, tls=tls)
        return cls(addr, frames, writer, wid)

    async def send(self, msg: dict) -> None:
        self.writer.write(encode_frame(msg))
        await asyncio.wait_for(self.writer.drain(), DEFAULTS.send_timeout)

    async def recv(self, timeout: float) -> dict:
        return validate(await self.frames.next(timeout))

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
        except (OSError, TimeoutError, ConnectionError):
            pass
