"""The exact top K: the K most frequent values with their exact counts, by two strategies.

Order: count descending, then value ascending, so at the boundary the smallest
values win (the mode's rule); ``boundary_ties`` is how many values, listed or not,
have the count of the last listed item (the K-th count when there are K items).

``shuffle``   the mode's scheme (worker/ops/keyed.py): every value goes to its owner
              by a stable hash, owners hold exact counts, and per-owner top-K lists
              merge up a binomial tree.  The merge is a monoid that also carries how
              many values it cut at its last count, so ``boundary_ties`` is exact
              without a second pass.  Right for nearly-unique data, where nothing
              smaller than the data can prove the answer.
``threshold`` TPUT (Cao & Wang, "Efficient top-K query calculation in distributed
              networks", PODC 2004), three round trips over trees:
              1. local top-K lists summed up the tree (cut to K at every node: any K
                 values' partial sums still bound the K-th count from below) give
                 tau1 <= the true K-th count;
              2. every rank sends the values whose local count is >= ceil(tau1 / W)
                 (a value of total count >= tau1 has such a count somewhere), summed
                 up the tree with how many ranks reported each; rank 0 gets a second
                 lower bound tau2 and an upper bound per candidate (unreported ranks
                 hold < ceil(tau1 / W) each) and keeps those whose upper bound
                 reaches max(tau1, tau2);
              3. the survivors' exact counts are summed up the tree.
              Every value whose count reaches the true K-th count survives step 2,
              so the top K *and* every value tied with the K-th count have exact
              counts at rank 0: ``boundary_ties`` is proven, not guessed.  On skewed
              data the candidates are a few hundred values where the shuffle moves
              every distinct one.
``auto``      a sample per rank (how many of 65,536 sampled values are distinct,
              summed over the ranks) picks threshold for data that repeats and
              shuffle for nearly-unique data; threshold itself falls back to the
              shuffle (reusing its local counts) when step 2's candidates would be
              more than 5% of the distinct values the shuffle would send (auto) or
              more than fit in a frame (threshold), so it can never pour
              the dataset into rank 0.  ``stats.strategy`` says what ran and why.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from shardstats.lazy import numpy as np

from shardstats.worker.comm.collectives import allreduce, broadcast, sum_ints, tree_depth, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.comm.shuffle import ShuffleConfig
from shardstats.worker.steps import numpy_step
from shardstats.worker.ops.contract import Op, ShuffleParams, int64_bytes, approx_only, column_reads, option
from shardstats.worker.ops.keyed import Owned, empty, local_counts, owned_counts
from shardstats.worker.ops.counting import COMBINE_SAMPLE
from shardstats.worker.ops.counting import run_lengths
from shardstats.settings import DEFAULTS

MAX_K = 100_000
STRATEGIES = ("auto", "shuffle", "threshold")
AUTO_DISTINCT_SHARE = 0.5      # auto: sampled values more distinct than this -> shuffle
AUTO_CANDIDATE_SHARE = 0.05    # auto: threshold's candidates above this share of local distinct values -> shuffle
# Candidates travel in one tree message as (value, count, reporters): 24 bytes each, in 3/4 of a frame.
CANDIDATE_LIMIT = DEFAULTS.max_frame * 3 // 4 // 24


# ---- the top-K monoid (exact counts, disjoint value sets) ------------------------------------------

def top_items(vals: np.ndarray, cnts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k of (vals, cnts) by count descending, value ascending; vals must be distinct.

    Linear time for large inputs: a partition finds the k-th count, and only the
    values above it plus the smallest of those equal to it are sorted.
    """
    n = len(vals)
    if n > 4 * k:
        kth = np.partition(cnts, n - k)[n - k]
        above = np.flatnonzero(cnts > kth)
        at = np.flatnonzero(cnts == kth)
        at = at[np.argpartition(vals[at], k - len(above) - 1)[:k - len(above)]] if len(at) > k - len(above) else at
        idx = np.concatenate((above, at))
        vals, cnts = vals[idx], cnts[idx]
    order = np.lexsort((vals, -cnts))[:k]
    return vals[order], cnts[order].astype(np.int64)


def partial(vals: np.ndarray, cnts: np.ndarray, k: int) -> dict:
    """One owner's part: its top k, and how many of its values it cut at the k-th count ("e")."""
    v, c = top_items(vals, cnts, k)
    e = int(np.count_nonzero(cnts == c[-1])) - int(np.count_nonzero(c == c[-1])) if len(v) == k else 0
    return {"v": v, "c": c, "e": e}


def owned_partial(owned: Owned, k: int) -> dict:
    """``partial`` of what a rank owns after the shuffle: the repeated values first (a count of 1
    cannot beat them), then, only when fewer than k repeat, the smallest values seen once."""
    if len(owned.repeated) >= k:
        return partial(owned.repeated, owned.counts, k)
    fill = owned.once(k - len(owned.repeated))
    p = partial(np.concatenate((owned.repeated, fill)),
                np.concatenate((owned.counts, np.ones(len(fill), dtype=np.int64))), k)
    if len(p["v"]) == k and p["c"][-1] == 1:
        p["e"] += owned.once_count - len(fill)      # the values seen once that did not make the list
    return p


def merger(k: int):
    """Merges two partials over disjoint values: the top k of the union and the cut count at its last count.

    A full partial's cut values all have its last count, which cannot be above the
    merged list's last count (the full partial alone has k values at least that
    frequent), so only those of a partial whose last count equals the merged one
    are still tied at the boundary.
    """
    def merge(a: dict, b: dict) -> dict:
        v = np.concatenate((a["v"], b["v"]))
        c = np.concatenate((a["c"], b["c"]))
        order = np.lexsort((v, -c))
        mv, mc = v[order[:k]], c[order[:k]]
        e = 0
        if len(mv) == k:
            last = mc[-1]
            e = int(np.count_nonzero(c == last)) - int(np.count_nonzero(mc == last))
            for x in (a, b):
                if len(x["v"]) == k and x["c"][-1] == last:
                    e += x["e"]
        return {"v": mv, "c": mc, "e": e}
    return merge


def tied_with(p: dict, count: int) -> int:
    """How many values of the whole dataset have ``count``, for a count the merged partial reaches."""
    c = p["c"]
    return int(np.count_nonzero(c == count)) + (p["e"] if len(c) and c[-1] == count else 0)


def result_of(k: int, p: dict) -> dict:
    """The op's result from a merged partial of at least k items (a longer one answers a smaller k too)."""
    v, c = p["v"][:k].tolist(), p["c"][:k].tolist()
    return {"k": k, "items": [[a, b] for a, b in zip(v, c)], "boundary_ties": tied_with(p, c[-1]) if c else 0}


# ---- strategies --------------------------------------------------------------------------------------

def compact(counts: np.ndarray) -> np.ndarray:
    """Non-negative counts in the narrowest unsigned dtype that holds them: most counts in a tree
    message are small, and the threshold strategy's bytes are mostly counts."""
    top = int(counts.max()) if len(counts) else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return counts.astype(dt)
    return counts.astype(np.int64)


def wide(counts: np.ndarray) -> np.ndarray:
    return counts.astype(np.int64)


async def by_shuffle(comm: Communicator, k: int, cfg: ShuffleConfig, values: np.ndarray | None = None,
                     counted: tuple | None = None) -> tuple[dict | None, dict]:
    """Shuffle by key, per-owner top k, merged up the tree; (the merged partial at rank 0, stats)."""
    t = time.perf_counter()
    comm.progress.set("shuffle")
    owned = await owned_counts(comm, cfg, values=values, counted=counted)
    comm.progress.set("reduce")
    local = await numpy_step(owned.size, owned_partial, owned, k)
    top = await tree_reduce(comm, local, merger(k), "topk.merge")
    return top, {"combined": owned.combined, "distinct_keys": owned.distinct,
                 "chunks_sent": owned.shuffle.chunks_sent, "rounds": cfg.rounds(comm.size) + tree_depth(comm.size),
                 "shuffle": cfg.strategy,
                 "shuffle_seconds": time.perf_counter() - t}


def _sum_lists(k: int):
    """Round 1's combine: partial sums by value, cut to the k largest (still a valid lower bound)."""
    def combine(a: dict, b: dict) -> dict:
        v, c = _sum_by(np.concatenate((a["v"], b["v"])), np.concatenate((wide(a["c"]), wide(b["c"]))))
        v, c = top_items(v, c, k)
        return {"v": v, "c": compact(c)}
    return combine


def _sum_by(v: np.ndarray, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
    if len(v) == 0:
        return (v, *cols)
    order = np.argsort(v, kind="stable")
    v = v[order]
    starts = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
    return (v[starts], *(np.add.reduceat(c[order], starts) for c in cols))


def _candidates(cap_share: float | None, limit: int):
    """Round 2's combine: union with summed counts and reporters, or "over" once too many to be worth it."""
    def combine(a: dict, b: dict) -> dict:
        n, d = a["n"] + b["n"], a["d"] + b["d"]
        if a["over"] or b["over"] or n > limit or (cap_share is not None and n > cap_share * d + 64):
            return {"over": True, "n": n, "d": d, "v": empty(), "c": empty(), "r": empty()}
        v, c, r = _sum_by(np.concatenate((a["v"], b["v"])), np.concatenate((wide(a["c"]), wide(b["c"]))),
                          np.concatenate((wide(a["r"]), wide(b["r"]))))
        return {"over": False, "n": n, "d": d, "v": v, "c": compact(c), "r": compact(r)}
    return combine


def _kth(c: np.ndarray, k: int) -> int:
    return int(np.partition(c, len(c) - k)[len(c) - k]) if len(c) >= k else 0


async def by_threshold(comm: Communicator, k: int, uv: np.ndarray, uc: np.ndarray, cap_share: float | None,
                       limit: int) -> tuple[dict | None, dict | None, dict]:
    """TPUT on local counts (uv ascending).  Returns (merged partial at rank 0, None, stats), or
    (None, {"fallback": reason}, stats) on every rank when the candidates are too many."""
    w, depth = comm.size, tree_depth(comm.size)
    comm.progress.set("threshold", 1, 3)
    lv, lc = await asyncio.to_thread(top_items, uv, uc, k)
    r1 = await tree_reduce(comm, {"v": lv, "c": compact(lc)}, _sum_lists(k), "topk.r1")
    tau1 = {"t": _kth(wide(r1["c"]), k)} if r1 is not None else None
    tau1 = (await broadcast(comm, tau1, "topk.tau1"))["t"]
    floor = -(-tau1 // w)                       # ceil(tau1 / W): a value of count >= tau1 reaches it on some rank
    comm.progress.set("threshold", 2, 3)
    mine = await asyncio.to_thread(np.greater_equal, uc, floor)
    cand = {"over": False, "n": int(np.count_nonzero(mine)), "d": len(uv), "v": uv[mine], "c": compact(uc[mine]),
            "r": np.ones(int(np.count_nonzero(mine)), np.uint8)}
    if cand["n"] > limit or (cap_share is not None and cand["n"] > cap_share * cand["d"] + 64):
        cand.update(over=True, v=empty(), c=empty(), r=empty())
    r2 = await tree_reduce(comm, cand, _candidates(cap_share, limit), "topk.r2")
    plan = None
    if r2 is not None:
        if r2["over"]:
            plan = {"fallback": f"{r2['n']:,} candidates of {r2['d']:,} local distinct values"}
        else:
            c2 = wide(r2["c"])
            tau2 = _kth(c2, k)
            upper = c2 + (w - wide(r2["r"])) * max(floor - 1, 0)
            plan = {"R": r2["v"][upper >= max(tau1, tau2)], "tau2": tau2, "n": r2["n"]}
    plan = await broadcast(comm, plan, "topk.plan")
    stats = {"tau1": tau1, "local_floor": floor, "local_candidates": cand["n"]}
    if "fallback" in plan:
        stats["rounds"] = 4 * depth
        return None, plan, stats
    comm.progress.set("threshold", 3, 3)
    refined = plan["R"]
    exact = await asyncio.to_thread(_lookup, uv, uc, refined)
    got = await tree_reduce(comm, {"c": compact(exact)}, lambda a, b: {"c": compact(wide(a["c"]) + wide(b["c"]))},
                            "topk.r3")
    stats.update(tau2=plan["tau2"], candidates=plan["n"], refined=len(refined), rounds=5 * depth)
    if got is None:
        return None, None, stats
    counts = wide(got["c"])
    return partial(refined, counts, k) if len(refined) else {"v": empty(), "c": empty(), "e": 0}, None, stats


def _lookup(uv: np.ndarray, uc: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """This rank's counts of ``wanted`` values (0 where absent); uv ascending."""
    exact = np.zeros(len(wanted), np.int64)
    if len(uv):
        pos = np.minimum(np.searchsorted(uv, wanted), len(uv) - 1)
        hit = uv[pos] == wanted
        exact[hit] = uc[pos[hit]]
    return exact


async def sample_vote(comm: Communicator, values: np.ndarray | None, counted: tuple | None = None) -> tuple[bool, str]:
    """auto's first step, the same on every rank: do values repeat enough for threshold to pay?

    Each rank counts the distinct values in a random sample of its data (or, when it
    has counted everything already, in all of it); the sums decide, so every rank
    takes the same branch.
    """
    if counted is not None:
        d, s = len(counted[0]), int(counted[1].sum())
    else:
        assert values is not None
        n = len(values)
        smp = values[np.random.default_rng(n).choice(n, COMBINE_SAMPLE, replace=False)] if n > COMBINE_SAMPLE \
            else values.copy()
        smp.sort()
        d, s = len(run_lengths(smp)[0]), len(smp)
    tot = await allreduce(comm, {"d": d, "s": s}, sum_ints, "topk.vote")
    share = tot["d"] / tot["s"] if tot["s"] else 1.0
    return share < AUTO_DISTINCT_SHARE, f"{share:.1%} of {tot['s']:,} sampled values distinct"


async def run_topk(comm: Communicator, values: np.ndarray, k: int, strategy: str, cfg: ShuffleConfig,
                   limit: int, counted: tuple | None = None) -> tuple[dict | None, dict]:
    """The top-k partial at rank 0 by the chosen strategy, and stats (``strategy``, ``strategy_reason``, costs).

    ``counted`` (distinct values, counts), when the caller has them, saves the local count.
    """
    t = time.perf_counter()
    stats: dict = {"strategy_asked": strategy}
    rounds = 0
    reason = "asked for"
    if strategy == "auto" and cfg.strategy == "tree":       # a job of one chunk: no vote, no candidates
        strategy, reason = "shuffle", "a job of one chunk goes up the tree"
    if strategy == "auto":
        repeats, reason = await sample_vote(comm, values, counted)
        rounds += 2 * tree_depth(comm.size)
        strategy = "threshold" if repeats else "shuffle"
    if strategy == "threshold":
        if counted is None:
            box = [values]
            del values
            counted = await asyncio.to_thread(lambda: local_counts(box.pop()))
        share = AUTO_CANDIDATE_SHARE if stats["strategy_asked"] == "auto" else None
        top, fell, st = await by_threshold(comm, k, *counted, share, limit)
        stats.update(st)
        rounds += st.pop("rounds")
        if fell is None:
            stats.update(strategy="threshold", strategy_reason=reason, rounds=rounds,
                         phases={"topk": time.perf_counter() - t})
            return top, stats
        strategy, reason = "shuffle", "threshold fell back: " + fell["fallback"]
        values = None
    top, st = await by_shuffle(comm, k, cfg, values=values if counted is None else None, counted=counted)
    rounds += st.pop("rounds")
    stats.update(st, strategy="shuffle", strategy_reason=reason, rounds=rounds, phases={"topk": time.perf_counter() - t})
    return top, stats


# ---- the op ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TopkParams(ShuffleParams):
    k: int = option(10, f"How many of the most frequent values (1 to {MAX_K:,}).", min=1, max=MAX_K)
    strategy: str = option("auto", "shuffle: by key to owners (nearly-unique data); threshold: TPUT pruning "
                           "(skewed data); auto: from a sample.", choices=STRATEGIES)
    candidate_limit: int = option(CANDIDATE_LIMIT, "Threshold: fall back to the shuffle above this many "
                                  "candidates in one tree message.", min=1, max=CANDIDATE_LIMIT, advanced=True)
    approx: bool = option(False, "Estimate from frequent-items sketches (Apache DataSketches; one tree reduction, "
                          "no shuffle): each count with guaranteed lower and upper bounds.")
    lg_max_k: int | None = option(None, "With --approx: the sketch's map holds 3/4 of 2**LG items (default: about "
                                  "8 K, at least 2**10); the maximum error is about 3.5/2**LG of the values.",
                                  min=3, max=26, metavar="LG")
    check: bool = option(False, "With --approx: also run the exact job on the same values and report each "
                         "listed count's true error against its bounds.")
    save_sketch: str | None = option(None, "With --approx: rank 0 writes the merged sketch to FILE (relative to the "
                                     "worker's data root); read it with `cluster sketch show`.", metavar="FILE")
    of: str | None = option(None, "With --approx: the top values of column COL of table shards "
                            "(.csv/.tsv/.parquet/.jsonl) as the files type it: int64, float64 or string (nulls and "
                            "NaN skipped).", metavar="COL")

    def validate(self) -> None:          # the field ``check`` is the option --check: the rules go here
        approx_only(self)


async def topk(comm: Communicator, values: np.ndarray, params: TopkParams) -> tuple[dict | None, dict]:
    if params.approx:
        from shardstats.worker.ops import approx
        return await approx.topk(comm, values, params)
    cfg = ShuffleConfig.from_params(params, int64_bytes(comm.total))
    if comm.passes > 1:         # values kept on disk: one hash slice a pass (worker/ops/passes.py)
        from shardstats.worker.ops.passes import over_slices
        top, stats = await over_slices(comm, values, lambda c, part: run_topk(c, part, params.k, params.strategy, cfg,
                                                                               params.candidate_limit),
                                       merger(params.k))
    else:
        top, stats = await run_topk(comm, values, params.k, params.strategy, cfg, params.candidate_limit)
    return (result_of(params.k, top) if top is not None else None), stats


def render(r: dict) -> list[str]:
    if r.get("approx"):
        from shardstats.worker.ops.approx import render_topk
        return render_topk(r)
    items = r["items"]
    if not items:
        return ["topk: no values"]
    width = max(len(str(v)) for v, _ in items)
    lines = [f"top {len(items)} of k={r['k']} (count desc, then value asc); "
             f"{r['boundary_ties']:,} value(s) share the last count {items[-1][1]:,}"]
    lines += [f"  {i:>4}. {v:>{width}}  {c:,}" for i, (v, c) in enumerate(items, 1)]
    return lines


def summarize(workers: list[dict]) -> dict:
    first = workers[0]
    out = {"strategy": first.get("strategy"), "strategy_reason": first.get("strategy_reason")}
    for key in ("tau1", "tau2", "candidates", "refined"):
        if key in first:
            out[key] = first[key]
    return out


OP = Op(
    name="topk",
    summary="The K most frequent values with exact counts (ties: smallest values win).",
    params=TopkParams,
    run=topk,
    render=render,
    phases=("load", "topk", "shuffle", "threshold", "reduce", "sketch", "check"),
    examples=("cluster submit topk --input shards/ --k 100", "cluster submit topk --input shards/ --k 10 --approx --check",
              "cluster submit topk --input shards/ --k 10 --strategy threshold --json"),
    summarize=summarize,
    reads_column=column_reads,
    out_of_core=True,     # values kept on disk: one hash slice a pass (worker/ops/passes.py)
)
