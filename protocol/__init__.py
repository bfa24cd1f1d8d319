"""Sans-IO wire protocol: frames, message schema, array encoding, handshake.

Nothing in this package touches a socket or an event loop: it turns bytes into
messages and messages into bytes, so every rule of the wire can be tested with
plain byte strings.
"""
from shardstats.protocol.errors import ProtocolError, FrameTooLarge, BadMessage, HandshakeFailed
from shardstats.protocol.frames import FrameDecoder, encode_frame, DEFAULT_MAX_FRAME
from shardstats.protocol.messages import PROTOCOL_VERSION, make, validate

__all__ = [
    "ProtocolError", "FrameTooLarge", "BadMessage", "HandshakeFailed",
    "FrameDecoder", "encode_frame", "DEFAULT_MAX_FRAME",
    "PROTOCOL_VERSION", "make", "validate",
]
