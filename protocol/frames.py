"""The frame codec: a 4-byte big-endian length, then a msgpack map.

``FrameDecoder`` is fed whatever the socket produced and yields whole messages;
any split of the byte stream gives the same messages.  The length is checked
against the limit as soon as the 4 header bytes are in, before any body byte is
buffered, so a hostile peer cannot make us allocate a huge frame.
"""
from __future__ import annotations

import struct
from typing import Any, Iterator

import msgpack

from shardstats.protocol.arrays import default, object_hook
from shardstats.protocol.errors import BadMessage, FrameTooLarge

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 4 * 1024 * 1024


def encode_frame(msg: dict, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    body = msgpack.packb(msg, default=default, use_bin_type=True)
    if len(body) > max_frame:
        raise FrameTooLarge(f"refusing to send a {len(body)}-byte frame (limit {max_frame})")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes | memoryview) -> dict:
    try:
        msg = msgpack.unpackb(body, object_hook=object_hook, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types for garbage; all mean the same here
        raise BadMessage(f"undecodable frame body: {exc}") from None
    if not isinstance(msg, dict):
        raise BadMessage(f"frame body is a {type(msg).__name__}, not a map")
    return msg


class FrameDecoder:
    """Accumulates bytes; ``feed`` returns the complete messages they finish."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being read, once known

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
        return [m for m, _ in self.feed_sized(data)]

    def feed_sized(self, data: bytes | bytearray | memoryview) -> list[tuple[dict[str, Any], int]]:
        """Like ``feed``, with each message's frame size in bytes (header included)."""
        self._buf += data
        return list(self._drain())

    def _drain(self) -> Iterator[tuple[dict, int]]:
        buf = self._buf
        pos = 0
        try:
            while True:
                if self._need is None:
                    if len(buf) - pos < HEADER.size:
                        return
                    (n,) = HEADER.unpack_from(buf, pos)
                    if n > self.max_frame:
                        raise FrameTooLarge(f"frame of {n} bytes exceeds the limit of {self.max_frame}")
                    pos += HEADER.size
                    self._need = n
                if len(buf) - pos < self._need:
                    return
                end = pos + self._need
                self._need = None
                with memoryview(buf) as whole, whole[pos:end] as body:
                    msg = decode_body(body)  # bins are copied out by msgpack, so the view can go
                yield msg, end - pos + HEADER.size
                pos = end
        finally:
            if pos:
                del buf[:pos]
