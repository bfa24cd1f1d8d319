"""A pandas ``describe()`` for sharded data: stats, distinct, mode, median, quantiles and top-k in one job.

One load, and the work shared the way the answers allow:

1. one local pass: the exact power sums (worker/ops/stats.py), one sort, one run-length count;
2. one shuffle of those counts by key (worker/ops/keyed.py): every owner then holds exact
   counts, which answer the distinct count, the mode and the top k at once;
3. one tree reduction carrying the stats monoid, the owners' distinct counts and one
   top-list partial of max(k, 10) items -- the mode is its first item, its ties are the
   items sharing the first count (worker/ops/topk.py's monoid counts the ones it cut);
4. one selection (``worker.engine.select.select_ranks``) for the median and every
   quantile together, on the values already sorted in step 1.

The JSON result nests each answer under its op's name in exactly that op's shape.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from shardstats.lazy import numpy as np

from shardstats.errors import EmptyDataset
from shardstats.exact import exact_text
from shardstats.worker.comm.collectives import broadcast, tree_depth, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.comm.shuffle import ShuffleConfig
from shardstats.worker.ops import stats as stats_op
from shardstats.worker.steps import numpy_step
from shardstats.worker.ops.contract import Op, ShuffleParams, int64_bytes, option
from shardstats.worker.ops.counting import run_lengths
from shardstats.worker.ops.keyed import owned_counts, sort_owned
from shardstats.worker.engine.select import median_ranks, select_ranks
from shardstats.worker.ops.median import _interpolate, _parse_quantiles, _q_ranks, exact_mean
from shardstats.worker.ops.mode import DEFAULT_TIE_LIMIT
from shardstats.worker.ops.topk import MAX_K, merger, owned_partial, result_of, tied_with

DEFAULT_QUANTILES = ("0.25", "0.5", "0.75")


@dataclass(frozen=True)
class DescribeParams(ShuffleParams):
    quantiles: tuple = option(DEFAULT_QUANTILES, "Quantiles to report besides the median (numpy's linear "
                              "definition, exact).", parse=_parse_quantiles, metavar="Q,Q,...")
    k: int = option(5, f"How many of the most frequent values to list (1 to {MAX_K:,}).", min=1, max=MAX_K)
    ddof: int = option(0, "Delta degrees of freedom of the variance and std.", choices=(0, 1))


def _local(box: list) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    values = box.pop()
    sums = stats_op.power_sums(values)
    values = sort_owned(values)   # the selection below reads it sorted
    uv, uc = run_lengths(values)
    return sums, values, uv, uc


def _combine(k: int):
    top = merger(k)

    def combine(a: dict, b: dict) -> dict:
        return {"sums": stats_op.combine(a["sums"], b["sums"]), "top": top(a["top"], b["top"]),
                "distinct": a["distinct"] + b["distinct"]}
    return combine


def _mode_of(p: dict) -> dict:
    """The mode op's result from the merged top list: the first count, and the values sharing it."""
    c = p["c"]
    if not len(c):
        return {"value": None, "count": 0, "ties": [], "tie_count": 0}
    top = int(c[0])
    ties = p["v"][c == top][:DEFAULT_TIE_LIMIT].tolist()
    return {"value": ties[0], "count": top, "ties": ties, "tie_count": tied_with(p, top)}


async def _counts_once(comm: Communicator, part: np.ndarray, cfg: ShuffleConfig, kk: int) -> tuple[dict | None, dict]:
    """One hash slice's distinct count and top list (at rank 0), for values kept on disk."""
    t = time.perf_counter()
    uv, uc = await numpy_step(len(part), lambda: run_lengths(sort_owned(part)))
    owned = await owned_counts(comm, cfg, counted=(uv, uc))
    del uv, uc
    top = await numpy_step(owned.size, owned_partial, owned, kk)
    got = await tree_reduce(comm, {"top": top, "distinct": owned.distinct},
                            lambda a, b: {"top": merger(kk)(a["top"], b["top"]), "distinct": a["distinct"] + b["distinct"]},
                            "describe.slice")
    return got, {"phases": {"shuffle": time.perf_counter() - t}, "distinct_keys": owned.distinct,
                 "rounds": cfg.rounds(comm.size) + tree_depth(comm.size)}


async def _on_disk(comm: Communicator, values: np.ndarray, params: DescribeParams) -> tuple[dict | None, dict]:
    """Values kept on disk (worker/io/ondisk.py): the power sums block by block over the map, the counts
    one hash slice a pass (worker/ops/passes.py), the selection's counting rounds over the map."""
    from shardstats.worker.ops.passes import over_slices
    t = time.perf_counter()
    cfg = ShuffleConfig.from_params(params, int64_bytes(comm.total))
    kk = max(params.k, DEFAULT_TIE_LIMIT)
    sums = await numpy_step(len(values), stats_op.power_sums, values)
    summed = time.perf_counter() - t
    total, stats = await over_slices(comm, values, lambda c, part: _counts_once(c, part, cfg, kk),
                                     lambda a, b: {"top": merger(kk)(a["top"], b["top"]),
                                                   "distinct": a["distinct"] + b["distinct"]})
    sums = await tree_reduce(comm, sums, stats_op.combine, "describe.sums")
    n = comm.total
    t = time.perf_counter()
    targets, lo_k, hi_k = _targets(n, params.quantiles)
    found, select_rounds = await select_ranks(comm, values, targets, n)
    stats["phases"].update(count=summed, select=time.perf_counter() - t)
    stats.update(combined=True, shuffle=cfg.strategy)
    stats["rounds"] += tree_depth(comm.size) + select_rounds
    if found is None or total is None:
        return None, stats
    return _answer(params, n, found, lo_k, hi_k, sums, total), stats


def _targets(n: int, quantiles) -> tuple[list[int], int, int]:
    lo_k, hi_k = median_ranks(n)
    return sorted({lo_k, hi_k, *(r for q in quantiles for r in _q_ranks(q, n)[:2])}), lo_k, hi_k


def _answer(params: DescribeParams, n: int, found: dict, lo_k: int, hi_k: int, sums: dict, total: dict) -> dict:
    lower, upper = found[lo_k], found[hi_k]
    median = {"value": exact_mean(lower, upper), "lower": lower, "upper": upper, "n": n,
              "quantiles": {str(q): _interpolate(q, n, found) for q in params.quantiles}}
    return {"stats": stats_op.finish(sums, params.ddof),
            "distinct": {"value": total["distinct"], "exact": True},
            "mode": _mode_of(total["top"]),
            "median": median,
            "topk": result_of(params.k, total["top"])}


async def describe(comm: Communicator, values: np.ndarray, params: DescribeParams) -> tuple[dict | None, dict]:
    if comm.passes > 1:
        return await _on_disk(comm, values, params)
    phases: dict[str, float] = {}
    t = time.perf_counter()
    comm.progress.set("count")
    box = [values]
    del values
    sums, data, uv, uc = await numpy_step(len(box[0]), _local, box)
    phases["count"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg = ShuffleConfig.from_params(params, int64_bytes(comm.total))
    owned = await owned_counts(comm, cfg, counted=(uv, uc))
    del uv, uc
    phases["shuffle"] = time.perf_counter() - t

    t = time.perf_counter()
    comm.progress.set("reduce")
    kk = max(params.k, DEFAULT_TIE_LIMIT)
    top = await numpy_step(owned.size, owned_partial, owned, kk)
    local = {"sums": sums, "top": top, "distinct": owned.distinct}
    owned_keys = owned.distinct
    del owned
    total = await tree_reduce(comm, local, _combine(kk), "describe.reduce")
    n = comm.total
    if n is None:
        n = (await broadcast(comm, {"n": total["sums"]["n"]} if total is not None else None, "describe.n"))["n"]
    phases["reduce"] = time.perf_counter() - t
    if n == 0:
        raise EmptyDataset("the dataset holds no values")

    t = time.perf_counter()
    targets, lo_k, hi_k = _targets(n, params.quantiles)
    found, select_rounds = await select_ranks(comm, data, targets, n)
    phases["select"] = time.perf_counter() - t
    depth = tree_depth(comm.size)
    stats = {"phases": phases, "distinct_keys": owned_keys, "combined": True,
             "rounds": cfg.rounds(comm.size) + depth + select_rounds, "shuffle": cfg.strategy}
    if found is None or total is None:
        return None, stats
    return _answer(params, n, found, lo_k, hi_k, total["sums"], total), stats


def _num(x) -> str:
    return "undefined" if x is None else f"{x:.17g}"


def render(r: dict) -> list[str]:
    s, m, md, tk = r["stats"], r["mode"], r["median"], r["topk"]
    rows = [("count", f"{s['count']:,}"), ("sum", str(s["sum"])), ("min", str(s["min"])), ("max", str(s["max"])),
            ("mean", _num(s["mean"])), ("std" if s["ddof"] == 0 else "std (ddof 1)", _num(s["std"])),
            ("distinct", f"{r['distinct']['value']:,}"),
            ("mode", f"{m['value']} (count {m['count']:,}" + (f", {m['tie_count']:,} tied)" if m["tie_count"] > 1
                                                              else ")")),
            ("median", exact_text(md["value"]))]
    rows += [(f"q{q}", exact_text(v["value"])) for q, v in md.get("quantiles", {}).items()]
    items = tk["items"]
    rows += [(f"top {tk['k']}" if i == 0 else "", f"{v} ({c:,})") for i, (v, c) in enumerate(items)]
    if items and tk["boundary_ties"] > sum(1 for _, c in items if c == items[-1][1]):
        rows.append(("", f"... {tk['boundary_ties']:,} values share the count {items[-1][1]:,}"))
    width = max(len(a) for a, _ in rows)
    return [f"{a:<{width}}  {b}" for a, b in rows]


def view(r: dict) -> dict:
    """The API's attributes (``r.count``, ``r.median``, ``r.items``...): one flat namespace, since
    ``Result.stats`` is the job's cost; the nested answers stay in ``Result.result``."""
    s = r["stats"]
    return {**{k: s[k] for k in ("count", "sum", "min", "max", "mean", "variance", "std")},
            "distinct": r["distinct"]["value"], "mode": r["mode"]["value"], "mode_count": r["mode"]["count"],
            "median": r["median"]["value"], "items": r["topk"]["items"], "boundary_ties": r["topk"]["boundary_ties"]}


OP = Op(
    name="describe",
    summary="count, sum, min, max, mean, std, distinct, mode, median, quantiles and top k in one job.",
    params=DescribeParams,
    run=describe,
    render=render,
    phases=("load", "count", "shuffle", "reduce", "select"),
    examples=("cluster submit describe --input shards/",
              "cluster submit describe --input shards/ --quantiles 0.1,0.9,0.99 --k 10 --json"),
    view=view,
    out_of_core=True,     # values kept on disk: sums over the map, counts one hash slice a pass, rounds over the map
)
