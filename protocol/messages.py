"""The message schema: every message is a map with a type ``t`` and version ``v``.

``validate`` is the single gate between decoded bytes and the rest of the
program: a message of an unknown type, a missing field or a field of the wrong
type raises ``BadMessage`` and never reaches worker code.
"""
from __future__ import annotations

from typing import Any

from shardstats.protocol.errors import BadMessage

PROTOCOL_VERSION = 2

_INT = (int,)
_STR = (str,)
_MAP = (dict,)
_LIST = (list,)
_BYTES = (bytes,)
_ANY: tuple = ()

# type -> {field: allowed python types}; fields not listed are allowed and ignored.
SCHEMA: dict[str, dict[str, tuple]] = {
    # handshake ("starttls": a server that requires TLS says so in the clear, then the challenge goes inside TLS)
    "starttls": {},
    "challenge": {"nonce": _BYTES},
    "hello": {"role": _STR, "id": _INT, "nonce": _BYTES, "mac": _BYTES},
    "welcome": {"id": _INT, "mac": _BYTES},
    # coordinator -> worker
    "ping": {"seq": _INT},
    "load": {"job": _STR, "files": _LIST},
    "run": {"job": _STR, "op": _STR, "params": _MAP, "ranks": _LIST, "total": _INT, "timeout": (int, float)},
    "abort": {"job": _STR},
    # worker -> coordinator
    "pong": {"seq": _INT, "id": _INT, "info": _MAP},
    "loaded": {"job": _STR, "values": _INT, "seconds": (int, float)},
    "done": {"job": _STR, "stats": _MAP},
    "error": {"job": _STR, "kind": _STR, "message": _STR},
    "aborted": {"job": _STR},
    # optional, only when the load message asked for it (``worker.comm.progress``); at most a few per second
    "progress": {"job": _STR, "phase": _STR, "done": _INT, "total": _INT, "bytes": _INT},
    # worker <-> worker: everything inside a job travels as a tagged peer message
    "peer": {"job": _STR, "tag": _STR, "src": _INT, "body": _MAP},
    # live top-K (worker/live/): a worker's flush of its local counts to a key's owner, on its peer link ...
    "live": {"kind": _STR, "src": _INT},
    # ... and a client's events, queries and stats requests, answered inline (``error`` when refused)
    "live_events": {"seq": _INT, "keys": _LIST},
    "live_top": {"seq": _INT, "k": _INT, "last": _STR},
    "live_stats": {"seq": _INT},
    "live_ack": {"seq": _INT},
    "live_answer": {"seq": _INT},
}

LIVE_REQUESTS = ("live_events", "live_top", "live_stats")


def make(type_: str, **fields: Any) -> dict:
    msg = {"t": type_, "v": PROTOCOL_VERSION}
    msg.update(fields)
    return msg


def validate(msg: dict) -> dict:
    if not isinstance(msg, dict):
        raise BadMessage(f"message is a {type(msg).__name__}, not a map")
    t = msg.get("t")
    if not isinstance(t, str) or t not in SCHEMA:
        raise BadMessage(f"unknown message type {t!r}")
    v = msg.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:      # not True, not 1.0: the version is an int
        raise BadMessage(f"protocol version {v!r} is not {PROTOCOL_VERSION}")
    for field, types in SCHEMA[t].items():
        if field not in msg:
            raise BadMessage(f"{t} message lacks field {field!r}")
        if types and (not isinstance(msg[field], types) or isinstance(msg[field], bool) and bool not in types):
            raise BadMessage(f"{t}.{field} has type {type(msg[field]).__name__}")
    return msg
