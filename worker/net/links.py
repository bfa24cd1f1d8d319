"""Outbound links to peer workers: one connection per peer, a bounded send queue, one sender task.

A full queue makes ``send`` wait: backpressure reaches the op instead of memory
growing.  A link dials lazily, authenticates with the handshake, and redials once
on a broken connection; if the peer stays unreachable the waiting jobs are failed
rather than left hanging.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Callable

from shardstats.protocol.errors import ProtocolError
from shardstats import logs
from shardstats.worker.net.dial import client_connect
from shardstats.errors import PeerFailure
from shardstats.settings import DEFAULTS, Settings


class PeerLink:
    """The outbound link to one peer: a bounded queue of (job, frame) and one sender task.

    A watcher task reads the connection while it is open: a peer never sends
    anything on a link after the handshake, so end-of-file means the peer went
    away.  The link then closes its side at once (so the next frame redials
    instead of vanishing into a dead socket, which is what makes a restarted
    worker rejoin) and reports the failure, so jobs using the peer fail promptly.
    Frames of jobs that failed on this worker are skipped, not sent.

    Its queue length and its deadlines come from the worker's ``settings`` (not the global defaults), so a
    daemon started with other values sends by them, and the memory it reserves for the queues
    (``send_queue_frames``) is the memory they take.
    """

    def __init__(self, my_id: int, peer_id: int, addr: str, token: bytes,
                 on_failure: Callable[[int, BaseException], None],
                 job_failed: Callable[[str], bool] | None = None,
                 settings: Settings = DEFAULTS, tls: ssl.SSLContext | None = None) -> None:
        self.my_id = my_id
        self.peer_id = peer_id
        self.addr = addr
        self.token = token
        self.on_failure = on_failure
        self.job_failed = job_failed or (lambda job: False)
        self.connect_timeout = settings.connect_timeout
        self.send_timeout = settings.send_timeout
        self.tls = tls
        self.queue: asyncio.Queue[tuple[str | None, bytes]] = asyncio.Queue(maxsize=settings.send_queue_frames)
        self.queued_bytes = 0
        self.peak_queued_bytes = 0
        self.bytes_written = 0
        self._writer: asyncio.StreamWriter | None = None
        self._watcher: asyncio.Task | None = None
        self._tg: asyncio.TaskGroup | None = None
        self.stopping = False      # the worker is shutting down: a peer hanging up then is no failure

    async def send(self, frame: bytes, job: str | None = None) -> None:
        # Counted from hand-over until written out: the bytes this link holds in user space.
        self.queued_bytes += len(frame)
        self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that comes as the
            # put completes, and the caller (a live sender at shutdown) then waited forever
            async with asyncio.timeout(self.send_timeout):
                await self.queue.put((job, frame))
        except TimeoutError:
            self.queued_bytes -= len(frame)
            raise PeerFailure(f"worker {self.peer_id} at {self.addr} accepted nothing for {self.send_timeout:g}s") from None
        except asyncio.CancelledError:
            self.queued_bytes -= len(frame)
            raise

    async def run(self) -> None:
        """The sender task; owned by the worker's task group, cancelled at shutdown."""
        try:
            async with asyncio.TaskGroup() as tg:      # owns the connection watcher
                self._tg = tg
                while True:
                    job, frame = await self.queue.get()
                    try:
                        if job is not None and self.job_failed(job):
                            continue             # its job is gone here: nobody waits for it
                        await self._write(frame)
                    finally:
                        self.queued_bytes -= len(frame)
        finally:
            self._tg = None
            self._close()

    async def _write(self, frame: bytes) -> None:
        for attempt in (1, 2):
            try:
                if self._writer is None or self._writer.is_closing():
                    await self._connect()
                assert self._writer is not None
                self._writer.write(frame)
                async with asyncio.timeout(self.send_timeout):     # not wait_for: see send
                    await self._writer.drain()
                self.bytes_written += len(frame)
                return
            except (OSError, TimeoutError, ProtocolError, ConnectionError) as exc:
                self._close()
                if attempt == 2:
                    logs.event("peer_unreachable", peer=self.peer_id, addr=self.addr, error=exc)
                    self.on_failure(self.peer_id, exc)

    async def _connect(self) -> None:
        frames, writer, server_id = await client_connect(self.addr, self.token, "peer", self.my_id,
                                                         self.connect_timeout, tls=self.tls)
        if server_id != self.peer_id:
            writer.close()
            raise ProtocolError(f"{self.addr} answered as worker {server_id}, expected worker {self.peer_id}")
        self._writer = writer
        if self._tg is not None:
            self._watcher = self._tg.create_task(self._watch(frames.reader, writer))

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Waits for the peer to close the link (it never sends on it); no deadline: this is the detector."""
        why: BaseException
        try:
            data = await reader.read(1)
            why = ConnectionError("connection closed by peer") if not data else \
                ProtocolError("peer sent data on an outbound link")
        except (OSError, ConnectionError) as exc:
            why = exc
        if self._writer is writer:
            self._watcher = None
            self._close()
            if self.stopping:      # peers stopping beside us close their ends: expected, not a lost peer
                return
            logs.event("peer_link_lost", peer=self.peer_id, addr=self.addr, error=why)
            self.on_failure(self.peer_id, why)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        w, self._watcher = self._watcher, None
        if w is not None and w is not asyncio.current_task():
            w.cancel()


