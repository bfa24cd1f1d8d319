"""Dialing a worker: address parsing, the client side of the handshake, and whole frames read with a deadline.

Both a peer link and the coordinator's client dial the same way, so this is the
one place that knows how.
"""
from __future__ import annotations

import asyncio
from collections import deque

from shardstats.protocol.errors import HandshakeFailed
from shardstats.protocol.frames import FrameDecoder, encode_frame
from shardstats.protocol.handshake import ClientHandshake
from shardstats.settings import DEFAULTS



def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad address {addr!r} (expected HOST:PORT)")
    return host.strip("[]"), int(port)


class FrameReader:
    """Whole messages from a StreamReader, with a deadline on each (handshakes, the coordinator's client)."""

    def __init__(self, reader: asyncio.StreamReader, max_frame: int) -> None:
        self.reader = reader
        self.decoder = FrameDecoder(max_frame=max_frame)
        self._pending: deque[dict] = deque()

    async def next(self, timeout: float) -> dict:
        async with asyncio.timeout(timeout):
            while not self._pending:
                data = await self.reader.read(1 << 16)
                if not data:
                    raise ConnectionError("connection closed by peer")
                self._pending.extend(self.decoder.feed(data))
        return self._pending.popleft()


async def client_connect(addr: str, token: bytes, role: str, my_id: int, timeout: float = DEFAULTS.connect_timeout,
                         max_frame: int = 64 * 1024):
    """Dials ``addr`` and runs the client side of the handshake; returns (FrameReader, writer, server id)."""
    host, port = parse_addr(addr)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        frames = FrameReader(reader, max_frame)
        hs = ClientHandshake(token, role, my_id)
        writer.write(encode_frame(hs.receive_challenge(await frames.next(timeout))))
        try:
            welcome = await frames.next(timeout)
        except ConnectionError:
            # Workers close without a word on a bad proof: the likeliest cause is the token.
            raise HandshakeFailed(f"{addr} closed the connection after our hello "
                                  f"(wrong cluster token or protocol version?)") from None
        server_id = hs.receive_welcome(welcome)
    except BaseException:
        writer.close()
        raise
    return frames, writer, server_id


