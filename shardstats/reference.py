"""The straightforward sequential answers every job is checked against: numpy on one array, one sort.

One copy for the tests, the benchmarks and the netns runners (it used to be
written five times, each slightly differently).  It favours the obvious over the
fast: a full sort, ``np.unique``, Python ``Fraction``s for exact halves.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np


def mode(values: np.ndarray, tie_limit: int = 10) -> dict:
    """The mode as ``cluster submit mode --json`` reports it: the smallest of the top-count values, its count,
    up to ``tie_limit`` smallest tied values and how many values tie."""
    u, c = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    if len(u) == 0:
        return {"value": None, "count": 0, "ties": [], "tie_count": 0}
    top = int(c.max())
    tied = u[c == top]
    return {"value": int(tied[0]), "count": top, "ties": [int(v) for v in tied[:tie_limit]], "tie_count": len(tied)}


def median(values: np.ndarray, quantiles: tuple[str, ...] | list = ()) -> dict:
    """The exact median (the mean of the two middle values as a Fraction) and numpy's linear quantiles, exactly."""
    s = np.sort(np.asarray(values, dtype=np.int64))
    n = len(s)
    if n == 0:
        raise ValueError("no values")
    lo, hi = int(s[(n - 1) // 2]), int(s[n // 2])
    out: dict = {"value": Fraction(lo + hi, 2), "lower": lo, "upper": hi, "n": n}
    if quantiles:
        out["quantiles"] = {}
        for q in quantiles:
            pos = Fraction(str(q)) * (n - 1)
            a, b = int(s[int(pos)]), int(s[min(int(pos) + 1, n - 1)])
            frac = pos - int(pos)
            out["quantiles"][str(q)] = {"value": a + (b - a) * frac, "lower": a, "upper": b if frac else a}
    return out


def mode_and_median(values: np.ndarray, tie_limit: int = 1000, is_sorted: bool = False) -> dict:
    """Both answers from one sort (the benchmark's reference at 100M values, where a second sort costs seconds)."""
    s = values if is_sorted else np.sort(np.asarray(values, dtype=np.int64))
    n = len(s)
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    counts = np.diff(np.append(starts, n))
    top = int(counts.max())
    tied = np.flatnonzero(counts == top)
    lo, hi = int(s[(n - 1) // 2]), int(s[n // 2])
    return {"rows": n, "mode": int(s[starts[tied[0]]]), "mode_count": top, "tie_count": int(len(tied)),
            "ties": [int(v) for v in s[starts[tied[:tie_limit]]]],
            "median": Fraction(lo + hi, 2), "median_lower": lo, "median_upper": hi}
