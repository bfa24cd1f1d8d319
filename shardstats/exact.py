"""Exact numbers for people and for JSON: a rational answer keeps all its digits, never passing through a float.

A median of two middle values is a ``Fraction`` (…5.5); it is written as a plain
JSON number with all its digits, so it stays exact beyond 2**53.  Ops render their
results with ``exact_text``; the CLI and the API write JSON with ``dumps_exact``.
"""
from __future__ import annotations

import json
from fractions import Fraction
from typing import Any


def exact_text(x: Fraction | int) -> str:
    """The exact decimal text of a rational whose denominator divides a power of 10 (else the float's repr)."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    den, twos, fives = x.denominator, 0, 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return repr(float(x))
    k = max(twos, fives)
    scaled = abs(x.numerator) * (10 ** k // x.denominator)
    digits = str(scaled).rjust(k + 1, "0")
    text = f"{digits[:-k]}.{digits[-k:]}".rstrip("0").rstrip(".")
    return ("-" if x < 0 else "") + text


def dumps_exact(obj: Any, **kw) -> str:
    """json.dumps where Fractions become raw exact numbers."""
    raw: list[str] = []

    def conv(o: Any) -> Any:
        if isinstance(o, Fraction):
            if o.denominator == 1:
                return o.numerator
            raw.append(exact_text(o))
            return f"\x00{len(raw) - 1}\x00"
        if isinstance(o, dict):
            return {str(k): conv(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [conv(v) for v in o]
        return o

    text = json.dumps(conv(obj), **kw)
    for i, r in enumerate(raw):
        text = text.replace(f'"\\u0000{i}\\u0000"', r)
    return text
