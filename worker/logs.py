"""Structured logs: one line per event, ``key=value`` pairs, always with the worker id (and job id when there is one)."""
from __future__ import annotations

import logging
import sys
import time

_fields: dict[str, object] = {}


def setup(level: str = "info", **fields: object) -> None:
    _fields.update(fields)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("cluster")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(name: str, level: int = logging.INFO, **kv: object) -> None:
    log = logging.getLogger("cluster")
    if not log.isEnabledFor(level):
        return
    parts = [time.strftime("%Y-%m-%dT%H:%M:%S"), logging.getLevelName(level).lower(), f"event={name}"]
    parts += [f"{k}={_fmt(v)}" for k, v in {**_fields, **kv}.items()]
    log.log(level, " ".join(parts))


def _fmt(v: object) -> str:
    s = str(v)
    return repr(s) if (" " in s or not s) else s
