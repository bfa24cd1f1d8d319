"""numpy arrays on the wire: msgpack ``bin`` of raw little-endian bytes plus a dtype tag.

Encoding hands msgpack a memoryview of the array (no intermediate list); decoding
uses ``np.frombuffer`` over the received bytes, so the data is not copied again.
"""
from __future__ import annotations

import re
from fractions import Fraction

from shardstats.lazy import numpy as np

# Only plain numeric dtypes may cross the wire: an object or structured dtype from
# a hostile peer must never reach np.frombuffer.
_ALLOWED = {"<i8", "<u8", "<i4", "<u4", "<i2", "<u2", "|i1", "|u1", "<f8"}
ARRAY_KEY = "__nd__"
FRACTION_KEY = "__frac__"   # exact rationals (a median of two middle values) as "num/den" text
_FRACTION_TEXT = re.compile(r"-?[0-9]+/[0-9]+")
BIGINT_KEY = "__int__"      # integers beyond 64 bits (exact sums of squares) as decimal text
_BIGINT_TEXT = re.compile(r"-?[0-9]{1,200}")


def encode_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    tag = a.dtype.str
    if tag not in _ALLOWED:
        raise TypeError(f"dtype {a.dtype} cannot travel on the wire")
    return {ARRAY_KEY: tag, "b": memoryview(a).cast("B")}


def decode_array(obj: dict) -> np.ndarray:
    tag = obj.get(ARRAY_KEY)
    data = obj.get("b")
    if tag not in _ALLOWED or not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"bad array encoding (dtype tag {tag!r})")
    dt = np.dtype(tag)
    if len(data) % dt.itemsize:
        raise ValueError(f"array byte length {len(data)} is not a multiple of {dt.itemsize}")
    return np.frombuffer(data, dtype=dt)


def default(obj):
    """msgpack ``default`` hook: arrays, numpy scalars, exact rationals and integers beyond 64 bits.

    The plain Python types are tried first: a client encoding a Fraction or a big
    integer must not import numpy (``np`` is lazy, shardstats/lazy.py) to learn it
    is not an array."""
    if isinstance(obj, Fraction):
        return {FRACTION_KEY: f"{obj.numerator}/{obj.denominator}"}
    if isinstance(obj, int) and not isinstance(obj, bool):     # msgpack calls us only when it is beyond 64 bits
        return {BIGINT_KEY: str(obj)}
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def object_hook(obj: dict):
    """msgpack ``object_hook``: turn encoded arrays back into ndarrays."""
    if ARRAY_KEY in obj:
        return decode_array(obj)
    if BIGINT_KEY in obj and isinstance(obj[BIGINT_KEY], str):
        # Bounded text: int() of a few hundred digits is cheap; of millions it is not.
        if not _BIGINT_TEXT.fullmatch(obj[BIGINT_KEY]):
            raise ValueError("bad big integer encoding")
        return int(obj[BIGINT_KEY])
    if FRACTION_KEY in obj and isinstance(obj[FRACTION_KEY], str) and len(obj[FRACTION_KEY]) < 100:
        # Only the "num/den" form ``default`` writes: Fraction() itself also reads "1e999999999",
        # which would make us compute a 10**999999999 (one small frame, even before the handshake).
        if not _FRACTION_TEXT.fullmatch(obj[FRACTION_KEY]):
            raise ValueError("bad fraction encoding")
        try:
            return Fraction(obj[FRACTION_KEY])
        except (ValueError, ZeroDivisionError):
            raise ValueError("bad fraction encoding") from None
    return obj
