"""Exact median and quantiles by few-round selection: no shuffle, rounds independent of the value range.

The selection itself -- windows narrowed by many pivots from per-rank samples, a bracketing
first round on unsorted values, a small gather at the end -- is the engine's
(``worker.engine.select.select_ranks``, shared with ``describe`` and a salted ``groupby``);
this module is the op: which ranks a median or a quantile needs, the even-count rule, and
the exact mean of two middle values at the int64 edges.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from fractions import Fraction

from shardstats.lazy import numpy as np

from shardstats.worker.comm.collectives import broadcast, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.errors import EmptyDataset, UsageError
from shardstats.exact import exact_text
from shardstats.worker.ops.contract import Op, Params, approx_only, column_reads, option

from shardstats.worker.engine.select import (DEFAULT_GATHER_LIMIT, DEFAULT_SAMPLES, EVEN_RULES, FIRST_SAMPLES,
                                            median_ranks, select_ranks)


def exact_mean(lower: int, upper: int) -> Fraction:
    return Fraction(lower + upper, 2)


MAX_QUANTILES = 1000           # each quantile adds up to two target ranks; beyond this a job is a misuse


def _parse_quantiles(value: object) -> tuple[str, ...]:
    """"0.9,0.99" or a list of numbers -> their text, checked; kept as text so the op reads them exactly."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{value!r} is not a list of numbers between 0 and 1")
    qs = tuple(str(q).strip() for q in items if str(q).strip())
    if len(qs) > MAX_QUANTILES:
        raise ValueError(f"{len(qs):,} quantiles asked for; at most {MAX_QUANTILES:,} per job")
    for q in qs:
        try:
            parse_quantile(q)
        except UsageError:
            raise ValueError(f"{q[:40]!r} is not a number between 0 and 1") from None
    return qs


def _sample_rate(value: object) -> str:
    from shardstats.sketches import parse_sample_rate
    return parse_sample_rate(value)


@dataclass(frozen=True)
class MedianParams(Params):
    even: str = option("mean", "For an even count: the exact mean of the two middle values, or one of them.",
                       choices=EVEN_RULES)
    quantiles: tuple = option((), "Also these quantiles, e.g. 0.9,0.99 (numpy's linear definition, exact; "
                              f"at most {MAX_QUANTILES:,}).", parse=_parse_quantiles, metavar="Q,Q,...")
    samples: int = option(DEFAULT_SAMPLES, "Regular samples per rank per window in the many-pivot rounds.",
                          min=1, max=1 << 16, advanced=True)
    gather_limit: int = option(DEFAULT_GATHER_LIMIT, "Gather a window once it holds at most this many values.",
                               min=1, max=1 << 22, advanced=True)
    first_samples: int = option(FIRST_SAMPLES, "Random samples per rank in the bracketing round.",
                                min=1, max=1 << 16, advanced=True)
    approx: bool = option(False, "Estimate from KLL sketches (Apache DataSketches; one tree reduction of a few KiB "
                          "per worker) instead of the exact selection; the rank error bound is reported.")
    k: int = option(200, "With --approx: the KLL sketch's k (bigger: smaller error, bigger sketch; 200 is about "
                    "1.3% rank error, 800 about 0.35%).", min=8, max=65535)
    check: bool = option(False, "With --approx: also run the exact job on the same values and report the true "
                         "rank error against the bound.")
    save_sketch: str | None = option(None, "With --approx: rank 0 writes the merged sketch to FILE (relative to the "
                                     "worker's data root); read it with `cluster sketch show`.", metavar="FILE")
    sketch: str = option("kll", "With --approx: kll (a stated rank error bound) or tdigest (t-digest, by name: "
                         "no stated bound).", choices=("kll", "tdigest"))
    of: str | None = option(None, "With --approx: sketch column COL of table shards (.csv/.tsv/.parquet/.jsonl) "
                            "as the files type it, int64 or float64 (nulls and NaN skipped).", metavar="COL")
    sample_rate: str = option("auto", "With --approx (KLL): sketch a uniform random sample of the values at this "
                              "rate, every worker alike, and state the bound with the sample's error added (a "
                              "second term, at 1 - 1e-6 per quantile). auto: a power of two leaving at least "
                              "2**20 sampled values and the sample's term at most a quarter of the sketch's, 1 "
                              "(every value) for small inputs and with --save-sketch, so saved sketches merge "
                              "with each other; a saved sampled sketch records its rate and merges only with "
                              "sketches of the same rate.", parse=_sample_rate, metavar="auto|1|1/N")
    seed: int | None = option(None, "With --sample-rate: the sample's random seed (default: fresh entropy).",
                              min=0, max=(1 << 63) - 1, advanced=True)

    def validate(self) -> None:          # the field ``check`` is the option --check: the rules go here
        approx_only(self)
        if self.sample_rate != "auto" and (not self.approx or self.sketch != "kll"):
            raise UsageError("--sample-rate: samples the values of the KLL sketch; add --approx (and keep "
                             "--sketch kll)")
        if self.sketch == "tdigest" and (not self.approx or self.check):
            raise UsageError("--sketch tdigest: an approximate answer without a stated bound (add --approx; "
                             "--check is for the KLL sketch's bound)")


async def median(comm: Communicator, values: np.ndarray, params: MedianParams) -> tuple[dict | None, dict]:
    if params.approx:
        from shardstats.worker.ops import approx
        return await approx.median(comm, values, params)
    phases: dict[str, float] = {}
    t = time.perf_counter()
    total = comm.total
    if total is None:
        got = await tree_reduce(comm, {"n": len(values)}, lambda a, b: {"n": a["n"] + b["n"]}, "median.n")
        total = (await broadcast(comm, got, "median.nb"))["n"]
    if total == 0:
        raise EmptyDataset("the dataset holds no values")
    quantiles = params.quantiles
    lo_k, hi_k = median_ranks(total)
    targets = sorted({lo_k, hi_k, *(k for q in quantiles for k in _q_ranks(q, total)[:2])})
    windows: list[int] = []
    # Values kept on disk (every rank agrees: comm.passes): a sample 16x larger brackets a window 4x narrower,
    # which is what round 2 holds in memory (1e8 values a rank: ~1.5% instead of ~6%).
    first = params.first_samples * (16 if comm.passes > 1 else 1)
    found, rounds = await select_ranks(comm, values, targets, total, params.samples, params.gather_limit,
                                       first, windows)
    phases["select"] = time.perf_counter() - t
    stats = {"phases": phases, "rounds": rounds}
    if comm.rank == 0:
        stats["windows"] = windows     # values in the open windows at the start of each round
    if found is None:
        return None, stats
    lower, upper = found[lo_k], found[hi_k]
    value = {"mean": exact_mean(lower, upper), "lower": Fraction(lower), "upper": Fraction(upper)}[params.even]
    result = {"value": value, "lower": lower, "upper": upper, "n": total}
    if quantiles:
        result["quantiles"] = {str(q): _interpolate(q, total, found) for q in quantiles}
    return result, stats


# A plain decimal, optionally with a small exponent.  Checked before Fraction() reads it:
# Fraction("1e-999999999") would spend hours building 10**999999999.
_QUANTILE = re.compile(r"[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")


def parse_quantile(q: object) -> Fraction:
    """A quantile as an exact fraction in [0, 1]; anything else is a UsageError (exit 2 at the CLI)."""
    text = str(q).strip()
    if isinstance(q, (str, int, float)) and not isinstance(q, bool) and len(text) <= 40 \
            and _QUANTILE.fullmatch(text):
        f = Fraction(text)
        if 0 <= f <= 1:
            return f
    raise UsageError(f"quantile {text[:40]!r} is not a number between 0 and 1")


def _q_ranks(q: float | str, n: int) -> tuple[int, int, Fraction]:
    """numpy's default (linear) quantile: position q * (n - 1), between ranks floor and ceil."""
    pos = parse_quantile(q) * (n - 1)
    lo = int(pos)
    return lo, min(lo + 1, n - 1) if pos != lo else lo, pos - lo


def _interpolate(q: float | str, n: int, found: dict[int, int]) -> dict:
    lo, hi, frac = _q_ranks(q, n)
    a, b = found[lo], found[hi]
    return {"value": a + (b - a) * frac, "lower": a, "upper": b}


def render(r: dict) -> list[str]:
    if r.get("approx"):
        from shardstats.worker.ops.approx import render_median
        return render_median(r)
    lines = [f"median: {exact_text(r['value'])}  (lower {r['lower']}, upper {r['upper']})"]
    for q, v in (r.get("quantiles") or {}).items():
        lines.append(f"  q{q}: {exact_text(v['value'])}")
    return lines


OP = Op(
    name="median",
    summary="The exact median (and optional quantiles).",
    params=MedianParams,
    run=median,
    render=render,
    phases=("load", "select", "sketch", "reduce", "check"),
    reads_column=column_reads,
    examples=("cluster submit median --input shards/", "cluster submit median --input shards/ --quantiles 0.9,0.99",
              "cluster submit median --input shards/ --approx --quantiles 0.99 --check --save-sketch day1.sketch"),
    out_of_core=True,     # counting rounds walk the values block by block; only the narrowed windows are held
)
