"""The number of distinct values: exact by the mode's shuffle, or estimated from HyperLogLog sketches.

Exact: every rank sends its distinct values (bare, 8 bytes each; no counts) to
their owners by the stable hash, each owner counts what it received, and only the
counts go up the tree.  The shuffle moves every distinct value once.

``--approx``: each rank builds m = 2**p one-byte registers from its values
(Flajolet et al. 2007): the top p bits of a value's splitmix64 hash pick a register,
the position of the first 1-bit in the rest is kept if it is the largest seen.
Registers merge by element-wise max -- a monoid -- so one tree reduction of
m bytes per rank answers for the whole dataset, with relative standard error
1.04/sqrt(m) (1.6% at the default p = 12: 4 KiB per rank).  Small cardinalities use
linear counting on the empty registers, as the paper does.  The registers are built
without a per-value Python loop: one bincount over (register, rank) pairs finds each
register's maximum.  No library does this vectorised over a numpy array (datasketch
and Apache DataSketches update one Python value at a time), so it is written here.
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from shardstats.lazy import numpy as np

from shardstats.worker.comm.collectives import tree_depth, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.data.partition import splitmix64
from shardstats.worker.comm.shuffle import ShuffleConfig
from shardstats.worker.steps import numpy_step
from shardstats.worker.ops.contract import Op, ShuffleParams, int64_bytes, approx_only, column_reads, option
from shardstats.worker.ops.keyed import owned_distinct
from shardstats.worker.ops.counting import repeat_share
from shardstats.worker.ops.counting import COMBINE_BELOW, COMBINE_SAMPLE, should_combine

DEFAULT_PRECISION = 12
HLL_BLOCK = 1 << 20            # values hashed per step: temporaries stay at block size
BINCOUNT_CELLS = 1 << 20       # register x rho cells counted at once (p <= 14); above, np.maximum.at


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Bit length of each uint64, exactly: frexp of each 32-bit half (exact in float64)."""
    hi = (x >> np.uint64(32)).astype(np.float64)
    lo = (x & np.uint64(0xFFFFFFFF)).astype(np.float64)
    return np.where(hi > 0, 32 + np.frexp(hi)[1], np.frexp(lo)[1]).astype(np.int64)


def hll_registers(values: np.ndarray, p: int) -> np.ndarray:
    """The HyperLogLog registers (uint8, 2**p of them) of ``values``."""
    m = 1 << p
    q = 64 - p
    reg = np.zeros(m, dtype=np.uint8)
    for start in range(0, len(values), HLL_BLOCK):
        h = splitmix64(values[start:start + HLL_BLOCK])
        idx = (h >> np.uint64(q)).astype(np.int64)
        rest = h & np.uint64((1 << q) - 1)
        rho = q - _bit_length(rest) + 1                 # 1-based position of the first 1-bit in q bits
        if m * (q + 2) <= BINCOUNT_CELLS:
            # one bincount over (register, rho) cells, then the highest non-empty cell per register
            seen = np.bincount(idx * (q + 2) + rho, minlength=m * (q + 2)).reshape(m, q + 2)
            top = (q + 1) - np.argmax(seen[:, ::-1] > 0, axis=1)
            top[seen[:, 1:].sum(axis=1) == 0] = 0
            np.maximum(reg, top.astype(np.uint8), out=reg)
        else:                                           # many registers: the cell table would be large
            np.maximum.at(reg, idx, rho.astype(np.uint8))
    return reg


def hll_estimate(reg: np.ndarray) -> float:
    """The cardinality estimate from merged registers (raw HLL, linear counting for small counts)."""
    m = len(reg)
    alpha = 0.7213 / (1 + 1.079 / m)
    raw = alpha * m * m / float(np.sum(np.ldexp(1.0, -reg.astype(np.int64))))
    zeros = int(np.count_nonzero(reg == 0))
    if raw <= 2.5 * m and zeros:
        return m * math.log(m / zeros)
    return raw


def relative_standard_error(p: int) -> float:
    return 1.04 / math.sqrt(1 << p)


@dataclass(frozen=True)
class DistinctParams(ShuffleParams):
    approx: bool = option(False, "Estimate from HyperLogLog sketches (a few KiB per worker) instead of the exact "
                          "shuffle; the relative standard error is reported.")
    precision: int = option(DEFAULT_PRECISION, "HyperLogLog registers: 2**precision bytes per worker, "
                            "error 1.04/sqrt(2**precision).", min=4, max=16, advanced=True)
    check: bool = option(False, "With --approx: also count exactly (the shuffle) and report the true error "
                         "against the standard error.")
    save_sketch: str | None = option(None, "With --approx: rank 0 writes the merged registers to FILE (relative to "
                                     "the worker's data root); read them with `cluster sketch show --distinct`.",
                                     metavar="FILE")
    of: str | None = option(None, "With --approx: count column COL of table shards (.csv/.tsv/.parquet/.jsonl) as "
                            "the files type it: int64, float64 or string (nulls and NaN skipped).", metavar="COL")

    def validate(self) -> None:          # the field ``check`` is the option --check: the rules go here
        approx_only(self)


async def distinct(comm: Communicator, values: np.ndarray, params: DistinctParams) -> tuple[dict | None, dict]:
    t = time.perf_counter()
    vtype = "int64"
    if params.of:               # a table's column: its values (int64) or their 64-bit hashes (floats, strings)
        from shardstats.worker.ops.approx import distinct_values, skipped_total
        vtype, values, skipped = await asyncio.to_thread(distinct_values, values, params.of)
        skipped = await skipped_total(comm, skipped, "distinct")
    box = [values]
    del values
    if params.approx:
        comm.progress.set("sketch")
        p = params.precision
        keep = box[0] if (params.check or params.save_sketch) else None
        reg, local_est = await asyncio.to_thread(lambda: _sketch(box.pop(), p))
        sketched = time.perf_counter()
        comm.progress.set("reduce")
        got = await tree_reduce(comm, {"r": reg}, lambda a, b: {"r": np.maximum(a["r"], b["r"])}, "distinct.hll")
        # What the exact job would have sent from here: each local distinct value, 8 bytes, to its owner
        # unless that is this rank (1/W of them).
        exact_bytes = int(local_est * 8 * (comm.size - 1) / comm.size)
        stats = {"phases": {"sketch": sketched - t, "reduce": time.perf_counter() - sketched},
                 "rounds": tree_depth(comm.size), "exact_bytes_estimate": exact_bytes,
                 "sketch_bytes": len(reg)}
        result = None
        if got is not None:
            e = relative_standard_error(p)
            result = {"value": round(hll_estimate(got["r"])), "exact": False, "relative_standard_error": e,
                      "registers": len(reg)}
            if params.of:
                result.update(column=params.of, values=vtype, skipped=skipped)
        if params.save_sketch or params.check:
            from shardstats.worker.ops import approx
            await approx.distinct_extras(comm, keep, params, result, got["r"].tobytes() if got else None, stats,
                                         vtype)
        return result, stats
    if comm.passes > 1:         # values kept on disk: one hash slice a pass (worker/ops/passes.py)
        from shardstats.worker.ops.passes import over_slices
        return await over_slices(comm, box.pop(), lambda c, part: _exact(c, part, params),
                                 lambda a, b: {"value": a["value"] + b["value"], "exact": True})
    return await _exact(comm, box.pop(), params)


async def _exact(comm: Communicator, values: np.ndarray, params: DistinctParams) -> tuple[dict | None, dict]:
    t = time.perf_counter()
    cfg = ShuffleConfig.from_params(params, int64_bytes(comm.total))
    comm.progress.set("shuffle")
    combine = await numpy_step(len(values), _dedup_pays, values)
    owned, combined, st = await owned_distinct(comm, cfg, values, combine)
    del values
    shuffled = time.perf_counter()
    comm.progress.set("reduce")
    got = await tree_reduce(comm, {"n": owned}, lambda a, b: {"n": a["n"] + b["n"]}, "distinct.n")
    stats = {"phases": {"shuffle": shuffled - t, "reduce": time.perf_counter() - shuffled},
             "rounds": cfg.rounds(comm.size) + tree_depth(comm.size), "combined": combined,
             "shuffle": cfg.strategy,
             "distinct_keys": owned, "chunks_sent": st.chunks_sent}
    return ({"value": got["n"], "exact": True} if got is not None else None), stats


def _dedup_pays(values: np.ndarray) -> str:
    """Whether to deduplicate locally (a sort) before the shuffle: "always" when at least 10% of the
    values are repeats.

    The mode's random sample (2 ms on 10M values) settles skewed data. When it looks
    nearly unique, that may be the birthday problem at the wrong scale (each value
    ~10 times among millions looks 97% distinct in 65,536 random positions, and
    shipping raw values then moves 2.7x the bytes), so every copy of a hash-picked
    1/64 of the values decides (``repeat_share``, ~25 ms; the HyperLogLog pass this
    replaces took ~240 ms a share, which made distinct 3.5x slower than the mode on Zipf data).
    """
    if len(values) <= COMBINE_SAMPLE or should_combine(values):
        return "always"
    return "always" if repeat_share(values) >= 1 - COMBINE_BELOW else "never"


def _sketch(values: np.ndarray, p: int) -> tuple[np.ndarray, float]:
    reg = hll_registers(values, p)
    return reg, (hll_estimate(reg) if len(values) else 0.0)


def render(r: dict) -> list[str]:
    if r["exact"]:
        return [f"distinct: {r['value']:,} (exact)"]
    e = r["relative_standard_error"]
    lines = [f"distinct: ~{r['value']:,} (HyperLogLog estimate, relative standard error {e:.2%}: "
             f"within ±{3 * e * r['value']:,.0f} at 3 standard errors)"]
    if "check" in r:
        c = r["check"]
        lines.append(f"check against the exact job: exact {c['exact']:,}, relative error {c['relative_error']:+.3%} "
                     f"= {c['standard_errors']:.2f} standard errors")
    if "saved" in r:
        lines.append(f"sketch saved to {r['saved']}")
    return lines


def summarize(workers: list[dict]) -> dict:
    if "exact_bytes_estimate" in workers[0]:
        return {"exact_bytes_estimate": sum(w["exact_bytes_estimate"] for w in workers),
                "sketch_bytes": workers[0]["sketch_bytes"]}
    return {"distinct_values": sum(w["distinct_keys"] for w in workers)}


OP = Op(
    name="distinct",
    summary="The number of distinct values: exact (shuffle), or --approx from HyperLogLog sketches.",
    params=DistinctParams,
    run=distinct,
    render=render,
    phases=("load", "shuffle", "sketch", "reduce"),
    examples=("cluster submit distinct --input shards/", "cluster submit distinct --input shards/ --approx --json"),
    summarize=summarize,
    reads_column=column_reads,
    out_of_core=True,     # values kept on disk: one hash slice a pass (worker/ops/passes.py)
)
