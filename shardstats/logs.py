"""Structured logs: one line per event, ``key=value`` pairs, always with the worker id (and job id when there is one)."""
from __future__ import annotations

import json
import logging
import sys
import time

_fields: dict[str, object] = {}


def setup(level: str = "info", **fields: object) -> None:
    _fields.update(fields)
    # The logging HOWTO's "Optimization": our lines carry no caller, thread or process fields, so the
    # record need not look them up (the caller's stack walk was most of a worker's two lines per job).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
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
    # The event and its fields ride along, so a handler for people (cluster/notices.py) can word them.
    log.log(level, " ".join(parts), extra={"event": name, "fields": dict(kv)})


def _fmt(v: object) -> str:
    """A bare word, or a JSON string when the text could break the line or the key=value split."""
    s = str(v)
    if not s or any(c.isspace() or c in "\"'=" for c in s):
        return json.dumps(s)
    return s
