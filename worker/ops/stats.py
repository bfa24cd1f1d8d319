"""count, sum, min, max, mean, variance and std: one mergeable monoid, one tree reduction, no shuffle.

Each rank reduces its values to (n, Σx, Σx², min, max) with Σx and Σx² as exact
Python integers; partial results add up the binomial tree and rank 0 derives the
rest.  Why exact power sums and not the (n, mean, M2) float recurrence: values near
2**62 that differ by 1 are the same float64, so a float recurrence returns a
variance of 0 for [2**62, 2**62 + 1, 2**62 + 2]; exact sums give 2/3, and the mean
and the variance are then rounded once, correctly (Python's int/int division).

The sums are vectorised: |x| is split into four 16-bit limbs held as float64, so
every limb product is below 2**32 and a dot product over a block of 2**20 values
stays below 2**53 -- exact in float64, and computed by BLAS, not by a Python loop.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from fractions import Fraction

from shardstats.lazy import numpy as np

from shardstats.worker.comm.collectives import tree_depth, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.ops.contract import Op, Params, option
from shardstats.worker.steps import numpy_step

LIMB_BITS = 16
LIMBS = 4                      # 4 x 16 bits hold |x| <= 2**63
BLOCK = 1 << 20                # limb products summed over a block stay below 2**53


def power_sums(values: np.ndarray) -> dict:
    """This rank's part of the monoid: count, exact Σx and Σx², min and max (None when it holds no values)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "s1": 0, "s2": 0, "min": None, "max": None}
    s1 = s2 = 0
    for start in range(0, n, BLOCK):
        block = values[start:start + BLOCK]
        neg = block < 0
        mag = block.astype(np.uint64)                       # two's complement bits
        mag[neg] = np.uint64(0) - mag[neg]                  # |x|, exact even for -2**63
        limbs = [((mag >> np.uint64(LIMB_BITS * i)) & np.uint64(0xFFFF)).astype(np.float64) for i in range(LIMBS)]
        sign = np.where(neg, -1.0, 1.0)
        for i, li in enumerate(limbs):
            s1 += int(np.dot(sign, li)) << (LIMB_BITS * i)
            for j in range(i, LIMBS):
                d = int(np.dot(li, limbs[j])) << (LIMB_BITS * (i + j))
                s2 += d if i == j else 2 * d
    return {"n": n, "s1": s1, "s2": s2, "min": int(values.min()), "max": int(values.max())}


def combine(a: dict, b: dict) -> dict:
    """The monoid's operation: associative and commutative, so any tree order gives the same answer."""
    def pick(f, x, y):
        return y if x is None else x if y is None else f(x, y)
    return {"n": a["n"] + b["n"], "s1": a["s1"] + b["s1"], "s2": a["s2"] + b["s2"],
            "min": pick(min, a["min"], b["min"]), "max": pick(max, a["max"], b["max"])}


def finish(m: dict, ddof: int) -> dict:
    """The statistics from the reduced monoid, each rounded once from its exact value."""
    n, s1, s2 = m["n"], m["s1"], m["s2"]
    if n == 0:
        return {"count": 0, "sum": 0, "min": None, "max": None, "mean": None, "mean_exact": None,
                "variance": None, "std": None, "ddof": ddof}
    mean = Fraction(s1, n)
    m2 = Fraction(n * s2 - s1 * s1, n)                   # Σ(x - mean)², exact
    variance = m2 / (n - ddof) if n > ddof else None
    var_f = float(variance) if variance is not None else None
    return {"count": n, "sum": s1, "min": m["min"], "max": m["max"],
            "mean": s1 / n, "mean_exact": f"{mean.numerator}/{mean.denominator}",
            "variance": var_f, "std": math.sqrt(var_f) if var_f is not None else None, "ddof": ddof}


@dataclass(frozen=True)
class StatsParams(Params):
    ddof: int = option(0, "Delta degrees of freedom: 0 for the population variance, 1 for the sample variance.",
                       choices=(0, 1))


async def stats(comm: Communicator, values: np.ndarray, params: StatsParams) -> tuple[dict | None, dict]:
    t = time.perf_counter()
    comm.progress.set("sum")
    box = [values]          # the thread gets the only reference to the data
    del values
    local = await numpy_step(len(box[0]), lambda: power_sums(box.pop()))
    summed = time.perf_counter()
    comm.progress.set("reduce")
    total = await tree_reduce(comm, local, combine, "stats.sums")
    phases = {"sum": summed - t, "reduce": time.perf_counter() - summed}
    out = {"phases": phases, "rounds": tree_depth(comm.size)}
    return (finish(total, params.ddof) if total is not None else None), out


def _num(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.17g}"


def render(r: dict) -> list[str]:
    var = "variance" if r["ddof"] == 0 else "sample variance"
    return [f"count {r['count']:,}  sum {r['sum']}  min {r['min']}  max {r['max']}",
            f"mean {_num(r['mean'])} (exactly {r['mean_exact']})",
            f"{var} {_num(r['variance'])}  std {_num(r['std'])}"]


OP = Op(
    name="stats",
    summary="count, sum (exact), min, max, mean, variance and std in one tree reduction.",
    params=StatsParams,
    run=stats,
    render=render,
    phases=("load", "sum", "reduce"),
    examples=("cluster submit stats --input shards/", "cluster submit stats --input shards/ --ddof 1 --json"),
    out_of_core=True,     # values kept on disk: power sums block by block
)
