"""Exact median and quantiles by few-round selection: no shuffle, rounds independent of the value range.

Every rank sorts its values once.  Rank 0 keeps, for each target rank k, a window
(lo, hi] of values that must contain the k-th smallest value, and ``below``, the
global count of values <= lo.  A round:

1. rank 0 broadcasts the open windows;
2. every rank sends a regular sample of its values inside each window, and how many
   it has there, up the tree;
3. rank 0 broadcasts the sorted union of the samples as pivots (or, when a window
   holds at most ``gather_limit`` values, asks for those values instead);
4. every rank counts its values < and <= each pivot (two searchsorted calls), and
   the sums come up the tree.

Between two neighbouring pivots lie at most (window size / samples per rank)
values, whatever the range of the values, so the window shrinks by a factor of
about W * samples per round; with 100M values that is two rounds, then one small
gather.  Counting "< p" as well as "<= p" finishes at once when the answer is a
value repeated many times.  All arithmetic on values is in Python ints, so the
mean of two middle values is exact at the int64 edges.
"""
from __future__ import annotations

import time
from fractions import Fraction

import numpy as np

from worker.collectives import broadcast, tree_reduce
from worker.comm import Communicator
from worker.errors import EmptyDataset

DEFAULT_SAMPLES = 64
DEFAULT_GATHER_LIMIT = 4096
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
EVEN_RULES = ("mean", "lower", "upper")


def _bounds(sorted_values: np.ndarray, lo: int | None, hi: int | None) -> tuple[int, int]:
    a = 0 if lo is None else int(np.searchsorted(sorted_values, lo, "right"))
    b = len(sorted_values) if hi is None else int(np.searchsorted(sorted_values, hi, "right"))
    return a, b


def _regular_sample(window: np.ndarray, k: int) -> np.ndarray:
    m = len(window)
    if m <= k:
        return window
    idx = ((np.arange(k) * 2 + 1) * m) // (2 * k)
    return window[idx]


def _cat(a: dict, b: dict) -> dict:
    """Combine for per-window lists: arrays concatenate, counts add."""
    out = {}
    for key in a:
        x, y = a[key], b[key]
        out[key] = [np.concatenate((p, q)) if isinstance(p, np.ndarray) else p + q for p, q in zip(x, y)]
    return out


async def select_ranks(comm: Communicator, sorted_values: np.ndarray, ranks: list[int], total: int,
                       samples: int = DEFAULT_SAMPLES, gather_limit: int = DEFAULT_GATHER_LIMIT
                       ) -> tuple[dict[int, int] | None, int]:
    """The values at the given 0-based global ranks (at rank 0), and the number of rounds it took."""
    state = {k: [None, None, 0] for k in ranks}   # k -> [lo, hi, below]; window is (lo, hi]
    found: dict[int, int] = {}
    rounds = 0
    while True:
        # 1. open windows (rank 0 decides; everyone learns them)
        if comm.rank == 0:
            windows = sorted({(s[0], s[1]) for k, s in state.items() if k not in found},
                             key=lambda w: (w[0] is not None, w[0] or 0, w[1] is not None, w[1] or 0))
            msg = {"w": [[lo, hi] for lo, hi in windows]}
        else:
            msg = None
        msg = await broadcast(comm, msg, "median.windows")
        windows = [tuple(w) for w in msg["w"]]
        if not windows:
            return (found if comm.rank == 0 else None), rounds
        rounds += 1
        spans = [_bounds(sorted_values, lo, hi) for lo, hi in windows]
        # 2. samples and sizes up the tree
        mine = {"s": [_regular_sample(sorted_values[a:b], samples) for a, b in spans],
                "m": [b - a for a, b in spans]}
        got = await tree_reduce(comm, mine, _cat, "median.samples")
        # 3. pivots, or a request to gather small windows
        if comm.rank == 0:
            plan = {"p": [], "g": []}
            for smp, m in zip(got["s"], got["m"]):
                gather = m <= gather_limit
                plan["g"].append(gather)
                plan["p"].append(np.zeros(0, np.int64) if gather else np.unique(smp))
        else:
            plan = None
        plan = await broadcast(comm, plan, "median.pivots")
        # 4. counts (or the values themselves) up the tree
        reply = {"lt": [], "le": [], "x": []}
        for (a, b), piv, gather in zip(spans, plan["p"], plan["g"]):
            part = sorted_values[a:b]
            if gather:
                reply["lt"].append(np.zeros(0, np.int64))
                reply["le"].append(np.zeros(0, np.int64))
                reply["x"].append(part)
            else:
                reply["lt"].append(np.searchsorted(part, piv, "left").astype(np.int64))
                reply["le"].append(np.searchsorted(part, piv, "right").astype(np.int64))
                reply["x"].append(part[:0])
        summed = await tree_reduce(comm, reply, _sum_counts, "median.counts")
        if comm.rank == 0:
            _narrow(state, found, windows, plan, summed)


def _sum_counts(a: dict, b: dict) -> dict:
    return {"lt": [p + q for p, q in zip(a["lt"], b["lt"])],
            "le": [p + q for p, q in zip(a["le"], b["le"])],
            "x": [np.concatenate((p, q)) for p, q in zip(a["x"], b["x"])]}


def _narrow(state: dict, found: dict, windows: list, plan: dict, summed: dict) -> None:
    """Rank 0: moves each open target's window to the pivot interval holding it."""
    index = {w: i for i, w in enumerate(windows)}
    for k, s in state.items():
        if k in found:
            continue
        i = index[(s[0], s[1])]
        r = k - s[2]                       # rank of the target inside its window
        if plan["g"][i]:
            found[k] = int(np.sort(summed["x"][i])[r])
            continue
        piv, lt, le = plan["p"][i], summed["lt"][i], summed["le"][i]
        j = int(np.searchsorted(le, r, "right"))   # first pivot with le > r
        if j < len(piv) and lt[j] <= r:
            found[k] = int(piv[j])             # the target equals pivot j
            continue
        if j > 0:                              # values <= piv[j-1] are all below the target
            s[0], s[2] = int(piv[j - 1]), s[2] + int(le[j - 1])
        if j < len(piv):                       # the target is < piv[j]
            s[1] = int(piv[j]) - 1


def median_ranks(n: int) -> tuple[int, int]:
    return (n - 1) // 2, n // 2


def exact_mean(lower: int, upper: int) -> Fraction:
    return Fraction(lower + upper, 2)


async def median(comm: Communicator, values: np.ndarray, params: dict | None = None) -> tuple[dict | None, dict]:
    params = params or {}
    phases: dict[str, float] = {}
    t = time.perf_counter()
    values.sort()
    phases["sort"] = time.perf_counter() - t
    t = time.perf_counter()
    total = params.get("total")
    if total is None:
        got = await tree_reduce(comm, {"n": len(values)}, lambda a, b: {"n": a["n"] + b["n"]}, "median.n")
        total = (await broadcast(comm, got, "median.nb"))["n"]
    if total == 0:
        raise EmptyDataset("the dataset holds no values")
    quantiles = params.get("quantiles") or []
    lo_k, hi_k = median_ranks(total)
    targets = sorted({lo_k, hi_k, *(k for q in quantiles for k in _q_ranks(q, total)[:2])})
    found, rounds = await select_ranks(comm, values, targets, total,
                                       int(params.get("samples") or DEFAULT_SAMPLES),
                                       int(params.get("gather_limit") or DEFAULT_GATHER_LIMIT))
    phases["select"] = time.perf_counter() - t
    stats = {"phases": phases, "rounds": rounds}
    if found is None:
        return None, stats
    lower, upper = found[lo_k], found[hi_k]
    rule = params.get("even") or "mean"
    value = {"mean": exact_mean(lower, upper), "lower": Fraction(lower), "upper": Fraction(upper)}[rule]
    result = {"value": value, "lower": lower, "upper": upper, "n": total}
    if quantiles:
        result["quantiles"] = {str(q): _interpolate(q, total, found) for q in quantiles}
    return result, stats


def _q_ranks(q: float | str, n: int) -> tuple[int, int, Fraction]:
    """numpy's default (linear) quantile: position q * (n - 1), between ranks floor and ceil."""
    pos = Fraction(str(q)) * (n - 1)
    lo = int(pos)
    return lo, min(lo + 1, n - 1) if pos != lo else lo, pos - lo


def _interpolate(q: float | str, n: int, found: dict[int, int]) -> dict:
    lo, hi, frac = _q_ranks(q, n)
    a, b = found[lo], found[hi]
    return {"value": a + (b - a) * frac, "lower": a, "upper": b}
