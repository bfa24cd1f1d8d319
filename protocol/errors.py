"""Errors raised by the sans-IO protocol layer; the I/O layer closes the connection on any of them."""
from shardstats.errors import ClusterError


class ProtocolError(ClusterError):
    """The peer broke the wire protocol; the connection cannot be trusted any more."""
    kind = "protocol"


class FrameTooLarge(ProtocolError):
    """A frame header announced more bytes than the limit; its body is never read."""


class BadMessage(ProtocolError):
    """A frame decoded, but not into a message of a known, well-formed shape."""


class HandshakeFailed(ProtocolError):
    """The peer did not prove knowledge of the cluster token, or spoke another version."""


class TLSError(ProtocolError):
    """The TLS layer under the handshake failed (an untrusted certificate, a name that does not match)."""


class TLSMismatch(TLSError, HandshakeFailed):
    """One end requires TLS and the other does not use it; the message names the address and which end wants it."""
