"""Mutual HMAC challenge-response over the cluster token; the token never crosses the wire.

The server speaks first with a random nonce.  The client answers with its role,
id, its own nonce and HMAC(token, "hello" | server nonce | client nonce | role | id).
The server checks it and answers with HMAC(token, "welcome" | client nonce | server
nonce | id), which proves to the client that the server knows the token too.
Both sides are plain objects: the I/O layer moves their messages.

TLS (optional, both ends or neither) comes first, STARTTLS-style: a server that
requires it sends ``starttls`` in the clear instead of the challenge, both ends
upgrade the connection, and the challenge-response above then runs inside TLS.
Why not TLS from the first byte: a client that does not use TLS waits for the
challenge and a TLS server waits for a ClientHello, so the mismatch would only
show as a timeout.  With the announcement both mismatches are named at once, and
a downgrade buys an attacker nothing: an end that wants TLS refuses to go on
without it.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from shardstats.protocol.errors import BadMessage, HandshakeFailed, TLSMismatch
from shardstats.protocol.messages import PROTOCOL_VERSION, make, validate

NONCE_BYTES = 16
ROLES = ("peer", "coord")
MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_hex(32))'"


def weak_token(token: bytes | str, min_chars: int) -> str | None:
    """Why ``token`` is too weak to guard a cluster, or None.

    The rule: at least ``min_chars`` characters (32 by default: 128 bits when they are
    hex digits, as ``cluster up`` and the command in the message make them) and more than
    a few distinct characters, so "aaaa..." or "12121212..." is refused too.  Anyone
    holding the token may run jobs, so it is what stands between the network and the data.
    """
    text = token.decode("utf-8", "replace") if isinstance(token, bytes) else token
    if len(text) < min_chars:
        return f"the cluster token has {len(text)} characters; use at least {min_chars} (make one with: {MAKE_TOKEN})"
    if len(set(text)) < 8:
        return f"the cluster token repeats {len(set(text))} distinct characters; make a random one with: {MAKE_TOKEN}"
    return None


def _mac(token: bytes, *parts: bytes) -> bytes:
    return hmac.new(token, b"\x00".join(parts), hashlib.sha256).digest()


def _check(msg: object, want: str, who: str) -> dict:
    """``msg`` as a well-formed ``want`` message, or HandshakeFailed: garbage from the other side never
    escapes as a KeyError or TypeError (a PeerLink catches protocol errors, not those)."""
    t = msg.get("t") if isinstance(msg, dict) else type(msg).__name__
    if not isinstance(t, str) or t != want:          # (an ndarray's != is not a bool)
        raise HandshakeFailed(f"expected {want}, got {t!r}")
    assert isinstance(msg, dict)
    v = msg.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise HandshakeFailed(f"{who} speaks protocol version {v!r}, we speak {PROTOCOL_VERSION}")
    try:
        return validate(msg)
    except BadMessage as exc:
        raise HandshakeFailed(str(exc)) from None


def check_tls(msg: object, server: str, client_tls: bool) -> bool:
    """The server's first message against the client's TLS setting: True when both ends use TLS (upgrade now),
    False when neither does (``msg`` is the challenge); TLSMismatch naming ``server`` otherwise."""
    server_tls = isinstance(msg, dict) and msg.get("t") == "starttls"
    if server_tls and not client_tls:
        raise TLSMismatch(f"worker at {server} requires TLS, but this client does not use TLS (give it a "
                          f"certificate: CLUSTER_TLS_CERT, CLUSTER_TLS_KEY, CLUSTER_TLS_CA, or --tls-*)")
    if client_tls and not server_tls:
        raise TLSMismatch(f"worker at {server} does not use TLS, but this client expects TLS "
                          f"(start the worker with --tls-cert/--tls-key/--tls-ca, or drop them on this side)")
    if server_tls:
        _check(msg, "starttls", "server")
    return server_tls


class ServerHandshake:
    def __init__(self, token: bytes, server_id: int) -> None:
        self.token = token
        self.server_id = server_id
        self.nonce = os.urandom(NONCE_BYTES)
        self.peer_role: str | None = None
        self.peer_id: int | None = None

    def challenge(self) -> dict:
        return make("challenge", nonce=self.nonce)

    @staticmethod
    def starttls() -> dict:
        """Sent in the clear, first, by a server that requires TLS; the challenge follows inside TLS."""
        return make("starttls")

    def receive_hello(self, msg: dict) -> dict:
        """Checks the hello; returns the welcome to send, or raises HandshakeFailed."""
        _check(msg, "hello", "peer")
        role, pid, cnonce = msg["role"], msg["id"], msg["nonce"]
        if role not in ROLES:
            raise HandshakeFailed(f"unknown role {role!r}")
        expect = _mac(self.token, b"hello", self.nonce, cnonce, role.encode(), str(pid).encode())
        if not hmac.compare_digest(expect, msg["mac"]):
            raise HandshakeFailed(f"bad token proof from {role} {pid}")
        self.peer_role, self.peer_id = role, pid
        return make("welcome", id=self.server_id,
                    mac=_mac(self.token, b"welcome", cnonce, self.nonce, str(self.server_id).encode()))


class ClientHandshake:
    def __init__(self, token: bytes, role: str, client_id: int) -> None:
        if role not in ROLES:
            raise ValueError(role)
        self.token = token
        self.role = role
        self.client_id = client_id
        self.nonce = os.urandom(NONCE_BYTES)
        self._server_nonce: bytes | None = None

    def receive_challenge(self, msg: dict) -> dict:
        _check(msg, "challenge", "server")
        self._server_nonce = msg["nonce"]
        mac = _mac(self.token, b"hello", self._server_nonce, self.nonce, self.role.encode(),
                   str(self.client_id).encode())
        return make("hello", role=self.role, id=self.client_id, nonce=self.nonce, mac=mac)

    def receive_welcome(self, msg: dict) -> int:
        """Checks the server's proof; returns the server's worker id."""
        if self._server_nonce is None:
            raise HandshakeFailed("welcome before the challenge was answered")
        _check(msg, "welcome", "server")
        expect = _mac(self.token, b"welcome", self.nonce, self._server_nonce, str(msg["id"]).encode())
        if not hmac.compare_digest(expect, msg["mac"]):
            raise HandshakeFailed("server could not prove the cluster token")
        return msg["id"]
