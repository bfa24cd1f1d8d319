"""Dialing a worker: address parsing, the client side of the handshake, and whole frames read with a deadline.

Both a peer link and the coordinator's client dial the same way, so this is the
one place that knows how.
"""
from __future__ import annotations

import asyncio
import ssl
from collections import deque

from shardstats.protocol.errors import HandshakeFailed, ProtocolError, TLSError
from shardstats.protocol.frames import FrameDecoder, encode_frame
from shardstats.protocol.handshake import ClientHandshake, check_tls
from shardstats.settings import DEFAULTS
from shardstats import tls as tls_



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

    def buffered(self) -> bool:
        """Whether bytes beyond the messages returned so far have arrived."""
        return bool(self._pending) or self.decoder.buffered > 0


async def client_connect(addr: str, token: bytes, role: str, my_id: int, timeout: float = DEFAULTS.connect_timeout,
                         max_frame: int = 64 * 1024, tls: ssl.SSLContext | None = None):
    """Dials ``addr`` and runs the client side of the handshake; returns (FrameReader, writer, server id).

    With ``tls`` (a client context from shardstats/tls.py) the connection is upgraded
    when the server announces TLS, and refused with TLSMismatch when it does not.
    """
    host, port = parse_addr(addr)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        frames = FrameReader(reader, max_frame)
        hs = ClientHandshake(token, role, my_id)
        first = await frames.next(timeout)
        if check_tls(first, addr, tls is not None):
            assert tls is not None
            if frames.buffered():
                raise ProtocolError(f"{addr} sent more after announcing TLS")
            try:
                await writer.start_tls(tls, server_hostname=host, ssl_handshake_timeout=timeout)
                first = await frames.next(timeout)
            except ssl.SSLError as exc:
                raise TLSError(tls_.failure(addr, exc)) from None
            except ConnectionError:
                # TLS 1.3 checks the client's certificate after the client's side of the handshake is done,
                # and uvloop reports the server's alert as a plain close: a worker that accepted TLS sends
                # the challenge at once, so a close here is that refusal.
                raise TLSError(tls_.refused(addr, "it closed the connection instead of sending the challenge")
                               ) from None
        writer.write(encode_frame(hs.receive_challenge(first)))
        try:
            welcome = await frames.next(timeout)
        except ssl.SSLError as exc:         # TLS 1.3: a refused client certificate shows on the first read
            raise TLSError(tls_.failure(addr, exc)) from None
        except ConnectionError:
            # Workers close without a word on a bad proof: the likeliest cause is the token.
            raise HandshakeFailed(f"{addr} closed the connection after our hello "
                                  f"(wrong cluster token or protocol version?)") from None
        server_id = hs.receive_welcome(welcome)
    except BaseException:
        writer.close()
        raise
    return frames, writer, server_id


