"""Outbound links to peer workers: one connection per peer, a bounded send queue, one sender task.

A full queue makes ``send`` wait: backpressure reaches the op instead of memory
growing.  A link dials lazily, authenticates with the handshake, and redials once
on a broken connection; if the peer stays unreachable the waiting jobs are failed
rather than left hanging.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

from protocol.errors import ProtocolError
from protocol.frames import FrameDecoder, encode_frame
from protocol.handshake import ClientHandshake
from worker import logs
from worker.comm import Communicator
from worker.errors import PeerFailure

SEND_QUEUE_FRAMES = 8
CONNECT_TIMEOUT = 5.0
SEND_TIMEOUT = 30.0


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


async def client_connect(addr: str, token: bytes, role: str, my_id: int, timeout: float = CONNECT_TIMEOUT,
                         max_frame: int = 64 * 1024):
    """Dials ``addr`` and runs the client side of the handshake; returns (FrameReader, writer, server id)."""
    host, port = parse_addr(addr)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        frames = FrameReader(reader, max_frame)
        hs = ClientHandshake(token, role, my_id)
        writer.write(encode_frame(hs.receive_challenge(await frames.next(timeout))))
        server_id = hs.receive_welcome(await frames.next(timeout))
    except BaseException:
        writer.close()
        raise
    return frames, writer, server_id


class PeerLink:
    def __init__(self, my_id: int, peer_id: int, addr: str, token: bytes,
                 on_failure: Callable[[int, BaseException], None]) -> None:
        self.my_id = my_id
        self.peer_id = peer_id
        self.addr = addr
        self.token = token
        self.on_failure = on_failure
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=SEND_QUEUE_FRAMES)
        self.queued_bytes = 0
        self.peak_queued_bytes = 0
        self.bytes_written = 0
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, frame: bytes) -> None:
        # Counted from hand-over until written out: the bytes this link holds in user space.
        self.queued_bytes += len(frame)
        self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)
        try:
            await asyncio.wait_for(self.queue.put(frame), SEND_TIMEOUT)
        except TimeoutError:
            self.queued_bytes -= len(frame)
            raise PeerFailure(f"worker {self.peer_id} at {self.addr} accepted nothing for {SEND_TIMEOUT:g}s") from None

    async def run(self) -> None:
        """The sender task; owned by the worker's task group, cancelled at shutdown."""
        try:
            while True:
                frame = await self.queue.get()
                try:
                    await self._write(frame)
                finally:
                    self.queued_bytes -= len(frame)
        finally:
            self._close()

    async def _write(self, frame: bytes) -> None:
        for attempt in (1, 2):
            try:
                if self._writer is None or self._writer.is_closing():
                    _, self._writer, _ = await client_connect(self.addr, self.token, "peer", self.my_id)
                self._writer.write(frame)
                await asyncio.wait_for(self._writer.drain(), SEND_TIMEOUT)
                self.bytes_written += len(frame)
                return
            except (OSError, TimeoutError, ProtocolError, ConnectionError) as exc:
                self._close()
                if attempt == 2:
                    logs.event("peer_unreachable", peer=self.peer_id, addr=self.addr, error=exc)
                    self.on_failure(self.peer_id, exc)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class TcpComm(Communicator):
    """A job's communicator on a worker: rank r is worker ``ranks[r]``; frames go out on that peer's link."""

    def __init__(self, job: str, ranks: list[int], my_id: int, links: dict[int, PeerLink], timeout: float) -> None:
        super().__init__(job, ranks.index(my_id), len(ranks), timeout)
        self.ranks = ranks
        self.links = links

    async def _transmit(self, dest: int, frame: bytes) -> None:
        await self.links[self.ranks[dest]].send(frame)
