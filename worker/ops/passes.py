"""An int64 op over values kept on disk, one hash slice at a time (worker/io/ondisk.py).

Why it is exact: slice ``p`` holds every copy of each value whose hash falls in it, on every
rank, so an op whose answer is a function of each value's count (the mode, the distinct count,
the top k) sees in pass ``p`` a dataset of its own, disjoint in values from every other pass,
and the passes' answers combine like the owners' answers of one shuffle do.

A rank whose values are on disk walks them once and writes each slice to its own spill file
(grace partitioning), then reads back one slice per pass; a rank whose share fit in memory
takes its slice of the in-memory values (every rank takes the same passes: each pass is a
collective job of its own).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shardstats.lazy import numpy as np

from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.engine import counter

Once = Callable[[Communicator, "np.ndarray"], Awaitable[tuple[Any, dict]]]


async def over_slices(comm: Communicator, values: np.ndarray, once: Once,
                      combine: Callable[[Any, Any], Any]) -> tuple[Any, dict]:
    """``once`` on every slice, in ``comm.passes`` passes; (the combined answer at rank 0 else None, stats)."""
    from shardstats.worker.io import ondisk      # not at import: `cluster --help` lists the op modules
    passes = comm.passes
    t = time.perf_counter()
    comm.progress.set("slice")
    slices = None
    if ondisk.on_disk(values) and comm.spill is not None:     # grace: each slice to its own file, in one walk
        slices = await asyncio.to_thread(ondisk.partition, values, passes, comm.spill)
        del values
    sliced = time.perf_counter() - t
    answer, stats = None, {}
    for p in range(passes):
        t = time.perf_counter()
        if slices is not None:
            part = await asyncio.to_thread(ondisk.read_slice, slices[p], comm.spill)
        else:
            part = await asyncio.to_thread(ondisk.pass_slice, values, p, passes)
        sliced += time.perf_counter() - t
        comm.progress.set("pass", p + 1, passes)
        got, st = await once(comm, part)
        del part
        stats = add_stats(stats, st)
        if got is not None:
            answer = got if answer is None else combine(answer, got)
    stats.setdefault("phases", {})["slice"] = sliced
    stats["passes"] = passes
    return answer, stats


ELEMENTWISE = ("unsalted_reducer_pairs",)     # counts per rank: a pass's are added rank by rank
KEPT = ("salt",)                              # a setting (reducers per hot key), the same in every pass that has it
HOT = ("hot_keys",)                           # [*key, rows] of a pass: the passes' keys are disjoint (key slices)
HOT_SHOWN = 10
COUNTED = ("approx_rounded_groups",)           # {name: groups} of a pass: the passes' groups are disjoint, added
EACH_PASS = ("pass_part_rows", "pass_part_bytes")   # one entry a pass (a sort's part of each pass): the passes' in order
SHARES = {"busiest_reducer_share_unsalted": "unsalted_reducer_pairs"}    # a share: taken again of the summed counts


def add_stats(a: dict, b: dict) -> dict:
    """Two passes' stats as one job's: numbers and per-phase seconds add, peaks take the larger, counts per rank
    add rank by rank, counts by name (``COUNTED``) name by name, hot keys of both passes are listed (heaviest
    first), the rest (choices made) is the last pass's, or the earlier one's where the last has none; an unknown
    count (None) stays unknown. A share
    (``SHARES``) is taken again of the summed counts: two passes' shares of 1.0 once added up to 2.0."""
    if not a:
        return b
    out = {**a, **b}
    for k, v in b.items():
        w = a.get(k)
        if k == "peak_rss_after":
            out[k] = {p: max(v.get(p, 0), w.get(p, 0)) for p in {*v, *w}} if w else v
        elif k in ("phases", "phase_cpu"):        # seconds (a sort's CPU seconds) per phase: every pass's
            out[k] = {p: v.get(p, 0.0) + w.get(p, 0.0) for p in {*v, *(w or {})}}
        elif k in ELEMENTWISE and isinstance(w, list) and len(w) == len(v):
            out[k] = [x + y for x, y in zip(w, v)]
        elif k in EACH_PASS and isinstance(w, list):
            out[k] = w + v
        elif k in HOT and isinstance(w, list):
            out[k] = sorted(w + v, key=lambda h: -h[-1])[:HOT_SHOWN]
        elif k in KEPT:
            out[k] = v
        elif k in COUNTED and isinstance(w, dict) and isinstance(v, dict):
            out[k] = {n: w.get(n, 0) + v.get(n, 0) for n in {*w, *v}}
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(w, (int, float)):
            out[k] = v + w
        elif k == "distinct_keys":
            out[k] = None
    for k, counts in SHARES.items():
        if k in out and counts in out:
            out[k] = counter.share(out[counts])
    if out.get("shuffled_values"):
        out["shuffle_bytes_per_value"] = round(out["shuffle_bytes"] / out["shuffled_values"], 3)
    return out
