"""The frame codec: a 4-byte big-endian length, then a msgpack map.

``FrameDecoder`` is fed whatever the socket produced and yields whole messages;
any split of the byte stream gives the same messages.  The length is checked
against the limit as soon as the 4 header bytes are in, before any body byte is
buffered, so a hostile peer cannot make us allocate a huge frame.

What a frame may *decode into* is bounded too: a 4 MiB frame of empty msgpack
maps would otherwise become four million dicts (~350 MB).  The decoder counts
the containers (maps and arrays) a frame builds and refuses the frame past
``max_containers``; msgpack's own limits cap any one container's length, and its
C stack caps nesting.  ``decoded_cost`` is what a decoded frame may cost in
memory (wire bytes plus a fixed price per container), the figure the worker
counts against its bound on data held for jobs that have not started yet.
"""
from __future__ import annotations

import struct
from typing import Any, Iterator

import msgpack

from shardstats.protocol.arrays import default, object_hook
from shardstats.protocol.errors import BadMessage, FrameTooLarge
from shardstats.settings import DEFAULTS

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = DEFAULTS.max_frame    # the one default, in shardstats/settings.py
DEFAULT_MAX_CONTAINERS = DEFAULTS.max_containers   # maps + arrays one frame may decode into (data travels as bins)
DEFAULT_MAX_ARRAY = 1 << 20        # elements of any one msgpack array (a mode's tie list is <= 100,000)
CONTAINER_COST = 256               # bytes a decoded dict or list costs at most, beyond its wire bytes


def encode_frame(msg: dict, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    body = msgpack.packb(msg, default=default, use_bin_type=True)
    if len(body) > max_frame:
        raise FrameTooLarge(f"refusing to send a {len(body)}-byte frame (limit {max_frame})")
    return HEADER.pack(len(body)) + body


class _TooMany(Exception):
    """Raised from a msgpack hook: the frame builds more containers than it may."""


def decode_counted(body: bytes | memoryview, max_containers: int = DEFAULT_MAX_CONTAINERS,
                   max_array: int = DEFAULT_MAX_ARRAY) -> tuple[dict, int]:
    """The message a frame body holds and the number of containers it built.

    The hooks run as each container is finished, so a bomb stops after
    ``max_containers`` objects, not after the whole frame was built.
    """
    count = 0

    def counted_map(obj: dict):
        nonlocal count
        count += 1
        if count > max_containers:
            raise _TooMany
        return object_hook(obj)

    def counted_list(obj: list):
        nonlocal count
        count += 1
        if count > max_containers:
            raise _TooMany
        return obj

    n = len(body)
    try:
        msg = msgpack.unpackb(body, object_hook=counted_map, list_hook=counted_list, raw=False,
                              strict_map_key=True, max_str_len=n, max_bin_len=n,
                              max_ext_len=0, max_array_len=min(n, max_array), max_map_len=min(n, max_array))
    except _TooMany:
        raise BadMessage(f"frame decodes into more than {max_containers} maps and arrays") from None
    except Exception as exc:  # msgpack raises many types for garbage; all mean the same here
        raise BadMessage(f"undecodable frame body: {exc}") from None
    if not isinstance(msg, dict):
        raise BadMessage(f"frame body is a {type(msg).__name__}, not a map")
    return msg, count


def decode_body(body: bytes | memoryview, max_containers: int = DEFAULT_MAX_CONTAINERS) -> dict:
    return decode_counted(body, max_containers)[0]


def decoded_cost(nbytes: int, containers: int) -> int:
    """An upper estimate of the memory a decoded frame holds: its bytes plus a price per container."""
    return nbytes + containers * CONTAINER_COST


class FrameDecoder:
    """Accumulates bytes; ``feed`` returns the complete messages they finish."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, max_containers: int = DEFAULT_MAX_CONTAINERS) -> None:
        self.max_frame = max_frame
        self.max_containers = max_containers
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being read, once known

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
        return [m for m, _ in self.feed_sized(data)]

    def feed_sized(self, data: bytes | bytearray | memoryview) -> list[tuple[dict[str, Any], int]]:
        """Like ``feed``, with each message's frame size in bytes (header included)."""
        return [(m, n) for m, n, _ in self.feed_costed(data)]

    def feed_costed(self, data: bytes | bytearray | memoryview) -> list[tuple[dict[str, Any], int, int]]:
        """Like ``feed_sized``, with each message's decoded cost (``decoded_cost``) as a third item."""
        self._buf += data
        return list(self._drain())

    def _drain(self) -> Iterator[tuple[dict, int, int]]:
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
                    msg, containers = decode_counted(body, self.max_containers)  # bins are copied out
                size = end - pos + HEADER.size
                yield msg, size, decoded_cost(size, containers)
                pos = end
        finally:
            if pos:
                del buf[:pos]
