"""Events as users write them (JSON lines or a JSON array of objects) -> keys and event times, checked.

One parser for every door: ``cluster ingest`` parses on the client (so a bad line is
reported with its number before anything is sent) and ``POST /events`` on the worker.

* The key is the value of the key field: a string as is, an integer or a float as its
  JSON text (``42``, ``1.5``); keys are compared as text.  A missing key, ``null``, a
  boolean, an object or an array is an error naming the line.
* The event time (optional) is epoch seconds (a number, fractions allowed) or an ISO 8601
  string with a UTC offset (``2026-12-07T14:05:00Z``).  An event without one is stamped
  with its arrival time on the worker that receives it (``ARRIVAL`` on the wire).

A body of JSON lines is read by Arrow's JSON reader first (C, the whole body at once: a
worker's ``POST /events`` runs on its event loop, where queries wait behind it; ~6x faster
than a ``json.loads`` per line); whenever that reading cannot vouch for the same answer (see
``arrow_lines``) the line-by-line parser runs, and names any bad line.
"""
from __future__ import annotations

import json
import math
from datetime import datetime

import numpy as np

ARRIVAL = -(1 << 63)          # the wire's "no event time: use the arrival time" (int64 min)
MAX_TIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z: beyond is a typo, not a time


class EventError(ValueError):
    """One malformed event: the message names the line (or array element) and the field."""


def key_text(value: object, where: str, field: str, max_bytes: int) -> str:
    if isinstance(value, str):
        key = value
    elif isinstance(value, int) and not isinstance(value, bool):
        key = str(value)
    elif isinstance(value, float) and math.isfinite(value):
        key = json.dumps(value)
    else:
        what = "missing" if value is None else f"{_a(value)}, not a string or a number"
        raise EventError(f"{where}: key field {field!r} is {what}")
    if len(key.encode("utf-8", "surrogatepass")) > max_bytes:
        raise EventError(f"{where}: key field {field!r} is longer than {max_bytes} bytes")
    return key


def time_ms(value: object, where: str, field: str) -> int:
    """Epoch milliseconds of an event time (``ARRIVAL`` when the event has none)."""
    if value is None:
        return ARRIVAL
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or not 0 <= value * 1000 <= MAX_TIME_MS:
            raise EventError(f"{where}: time field {field!r} = {value!r} is not epoch seconds between 1970 and 9999")
        return int(round(value * 1000))
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            raise EventError(f"{where}: time field {field!r} = {value[:40]!r} is not an ISO 8601 time") from None
        if t.tzinfo is None:
            raise EventError(f"{where}: time field {field!r} = {value[:40]!r} has no UTC offset (add Z or +00:00)")
        ms = int(round(t.timestamp() * 1000))
        if not 0 <= ms <= MAX_TIME_MS:
            raise EventError(f"{where}: time field {field!r} = {value[:40]!r} is before 1970")
        return ms
    raise EventError(f"{where}: time field {field!r} is {_a(value)}, not a number or an ISO 8601 string")


def _a(value: object) -> str:
    t = _json_type(value)
    return ("an " if t[0] in "aeiou" else "a ") + t


def _json_type(value: object) -> str:
    return {bool: "boolean", dict: "object", list: "array", str: "string", type(None): "null"}.get(
        type(value), type(value).__name__)


def parse_event(obj: object, where: str, key_field: str, time_field: str | None, max_key_bytes: int
                ) -> tuple[str, int]:
    if not isinstance(obj, dict):
        raise EventError(f"{where}: an event is a JSON object, not {_a(obj)}")
    key = key_text(obj.get(key_field), where, key_field, max_key_bytes)
    return key, time_ms(obj.get(time_field), where, time_field) if time_field else ARRIVAL


def parse_line(line: str | bytes, number: int, key_field: str, time_field: str | None, max_key_bytes: int,
               name: str = "line") -> tuple[str, int] | None:
    """One JSON line -> (key, time ms); a blank line -> None; anything else bad -> EventError."""
    if not line.strip():
        return None
    where = f"{name} {number}"
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError(f"{where}: not JSON ({str(exc).split(':')[0]})") from None
    return parse_event(obj, where, key_field, time_field, max_key_bytes)


def parse_body(body: bytes, key_field: str, time_field: str | None, max_key_bytes: int, name: str = "line"
               ) -> tuple[list[str], list[int]]:
    """A request body: a JSON array of events, or JSON lines.  All or nothing: the first bad event raises."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"body: invalid UTF-8 at byte {exc.start}") from None
    keys: list[str] = []
    times: list[int] = []
    fast = arrow_lines(body, key_field, time_field, max_key_bytes) if text.lstrip().startswith("{") else None
    if fast is not None:
        return fast
    if text.lstrip().startswith("["):
        try:
            arr = json.loads(text)
        except ValueError as exc:
            raise EventError(f"body: not a JSON array ({str(exc).split(':')[0]})") from None
        for i, obj in enumerate(arr):
            k, t = parse_event(obj, f"element {i}", key_field, time_field, max_key_bytes)
            keys.append(k)
            times.append(t)
        return keys, times
    return parse_lines(text, key_field, time_field, max_key_bytes, name)


def parse_lines(text: str, key_field: str, time_field: str | None, max_key_bytes: int, name: str = "line"
                ) -> tuple[list[str], list[int]]:
    """JSON lines one at a time (``json.loads`` each): the reference, and the parser that names a bad line."""
    keys: list[str] = []
    times: list[int] = []
    for n, line in enumerate(text.split("\n"), 1):
        got = parse_line(line, n, key_field, time_field, max_key_bytes, name)
        if got is not None:
            keys.append(got[0])
            times.append(got[1])
    return keys, times


def arrow_lines(body: bytes, key_field: str, time_field: str | None, max_key_bytes: int
                ) -> tuple[list[str], np.ndarray] | None:
    """Valid UTF-8 JSON lines read by Arrow: (keys, times: epoch ms, ``ARRIVAL`` without a time field), or None
    whenever this cannot vouch for what ``parse_lines`` answers -- then that runs: a key that is not a string
    on every line, a time that is not a number (or missing, or null) on every line, a ``\\u`` escape (a lone surrogate), a blank
    line or two objects on one (Arrow skips or takes them; ``json.loads`` does not), a key over the limit, a
    time out of range, anything Arrow refuses."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj
    if b"\\u" in body:
        return None
    try:
        table = pj.read_json(pa.py_buffer(body), read_options=pj.ReadOptions(
            use_threads=False, block_size=max(1 << 20, len(body) + 1)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != body.count(b"\n") + (not body.endswith(b"\n")) or key_field not in table.column_names:
        return None
    keys = table[key_field]
    if keys.type != pa.string() or keys.null_count or pc.max(pc.binary_length(keys)).as_py() > max_key_bytes:
        return None
    if time_field is None:
        return keys.to_pylist(), np.full(len(keys), ARRIVAL, dtype=np.int64)
    if time_field not in table.column_names:
        return None
    col = table[time_field]
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type)):
        return None
    none = col.is_null().to_numpy(zero_copy_only=False)        # missing or null: the arrival time, as time_ms
    if pa.types.is_null(col.type):
        return keys.to_pylist(), np.full(len(keys), ARRIVAL, dtype=np.int64)
    v = col.fill_null(0).to_numpy()
    if pa.types.is_floating(col.type):
        ms = v.astype(np.float64) * 1000           # as time_ms: value * 1000, rounded half to even
        if not np.isfinite(ms).all() or ((ms < 0) | (ms > MAX_TIME_MS)).any():
            return None
        times = np.round(ms).astype(np.int64)
    else:
        if ((v < 0) | (v > MAX_TIME_MS // 1000)).any():
            return None
        times = v.astype(np.int64) * 1000
    return keys.to_pylist(), np.where(none, ARRIVAL, times)
