"""The exact mode: local count, shuffle by a stable hash, aggregate per owner, tree-reduce the winners.

After the shuffle every value's occurrences, from every shard, sit on exactly one
rank, so each rank's local best is final for the values it owns and only one small
candidate per rank has to travel, up a binomial tree.  A value seen once locally
travels as its 8 bytes ("singles"); only values seen more than once pay for a count.
Ties: the smallest value wins; ``ties`` lists up to ``tie_limit`` smallest tied
values and ``tie_count`` says how many there are.

Heavy hitters (``--prune``, ``auto`` on jobs of at least ``PRUNE_MIN_VALUES``): on
skewed data (Zipf) a few values hold most of the data, and counting every value
(a sort, ~30 ns a value) is what the job costs.  Instead:

1. every rank samples its values while it loads (``load_facts``: its count, min,
   max, and the values seen more than once in the sample); the coordinator, which
   waits for every load anyway, combines them (``merge_facts``) and hands the
   result to every rank with the run -- no round between the workers (without a
   coordinator, one allreduce).  The candidates are the heaviest sampled repeats;
   the same numbers tell every rank which way below is likely to settle the job,
   or that none is (nearly unique data: straight to the shuffle, no round spent);
2. steep data over a wider span: when the heaviest estimate beats everything
   else's estimated total, a few heaviest candidates are counted exactly
   (``candidate_counts``, one comparison a value each) and summed up the tree; if
   the best of them beats the count of every other value together, that is the
   answer (ties exact);
3. all values within ``DIRECT_SPAN`` of the smallest (known from the facts): every
   value was counted at the load (``span_counts``, one ``bincount``, instead of the
   sample), the counts are summed up the tree; final at rank 0, no verdict back;
4. otherwise each candidate takes a slot of 16,384 (a multiplicative hash of the
   value); one pass over the data counts, per slot, the occurrences of its
   candidate (exact) and of everything else in it (``counting.slot_counts``, ~4 ns
   a value), summed up the tree; rank 0 takes the best candidate count B.  Any
   other value's total is at most its slot's "everything else" sum, so only slots
   whose sum reaches B can hide a value that ties or beats it.  When there are
   none (the usual case on skewed data: the slot sums are the long tail spread
   16,384 ways) the answer is final, exact ties and tie count included, and
   nothing was shuffled.  Otherwise the values of those slots (candidates
   excepted) go through the shuffle below and their best meets B at the final
   reduce: exact either way.

A job settled by candidates does not learn how many distinct values there are
(``distinct_keys`` is None); the direct count does.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

from shardstats.lazy import numpy as np

from shardstats.worker import memory
from shardstats.worker.steps import numpy_step
from shardstats.worker.memory import concat_releasing
from shardstats.worker.comm.collectives import allreduce, broadcast, tree_depth, tree_reduce
from shardstats.worker.ops import compact_choice
from shardstats.worker.ops.compact import compact_exchange, pack_fingerprints
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.ops.counting import (COMBINE_BELOW, COMBINE_SAMPLE, COUNTINGS, SLOTS, SPAN_PROBE,
                                            candidate_counts, choose_counting, choose_local, count_values, dense_bins,
                                            dense_fits, heavy_table, in_slots, merge_repeats, run_lengths, sample,
                                            sample_share, slot_counts, slot_of, span_counts)
from shardstats.worker.data.partition import partition_chunks
from shardstats.worker.comm.shuffle import ShuffleConfig, chunk_pieces, shuffle
from shardstats.worker.ops.contract import Op, ShuffleParams, int64_bytes, option

HEAVY_SAMPLE = 16384       # values sampled at the load for heavy hitters (0.5 ms of a 3M share; 65,536: 2.8)
DEFAULT_TIE_LIMIT = 10
TIES = ("smallest", "all")
ENCODINGS = ("auto", "compact", "plain")
MAX_TIE_LIMIT = 100_000   # ties travel in one small message; more than this are counted, not listed
PRUNES = ("auto", "never", "always")
PRUNE_MIN_VALUES = 1 << 20     # auto prunes a job of at least this many values (known from the coordinator)
PRUNE_CANDIDATES = 2048        # candidates per rank and in the union: the heaviest sampled repeats
PRUNE_MARGIN = 8               # auto: the heaviest candidate's estimate must be this many average slot sums
DIRECT_SPAN = SLOTS            # all values within this span: every value is its own slot, counted exactly
# Steep data (a few values hold most of it): the heaviest candidates' exact counts alone settle the job when
# the best of them beats everything else put together, and counting a few values (``candidate_counts``,
# ~0.3 ns a value each) is cheaper than the slot pass (~3.5).  (A small span is counted at the load already.)
TOP_MAX = 8                    # at most this many candidates counted so
TOP_MARGIN = 1.25              # the heaviest estimate must beat the estimated rest by this factor


def _split(w: int, sv: np.ndarray, mv: np.ndarray, mc: np.ndarray, cfg: ShuffleConfig, sv_owned: bool):
    """Per rank, the chunks of bare values ("s") and of (value, count) pairs ("v", "c") it owns.

    Each array's memory is given back as it is partitioned, so input and chunks never
    coexist whole: always for the pairs (the caller counted them into new arrays), for
    ``sv`` only when ``sv_owned`` (counted too, or the job handed its values over).
    """
    if cfg.to_one:
        return ([chunk_pieces({"s": sv}, cfg.chunk_bytes) if r == 0 else [] for r in range(w)],
                [chunk_pieces({"v": mv, "c": mc}, cfg.chunk_bytes) if r == 0 else [] for r in range(w)])
    s_free = memory.Releaser(sv).upto if sv_owned else None
    s_chunks = partition_chunks(w, ("s",), (sv,), cfg.chunk_bytes, s_free)
    mv_free, mc_free = memory.Releaser(mv), memory.Releaser(mc)
    m_chunks = partition_chunks(w, ("v", "c"), (mv, mc), cfg.chunk_bytes,
                                lambda row: (mv_free.upto(row), mc_free.upto(row)))
    return s_chunks, m_chunks


def best_of(singles: np.ndarray, mvals: np.ndarray, mcounts: np.ndarray, tie_limit: int,
            counting: str = "sort") -> dict:
    """The top count among the owned values, its smallest tied values, and how many distinct values there are.

    ``singles`` are bare values (each occurrence counts 1, repeats allowed: the same
    value may come from several shards); ``mvals``/``mcounts`` are (value, count) pairs.
    ``counting`` is ``dense`` (one ``bincount`` over the owned span) or anything else (a sort).
    """
    if counting == "dense" and len(singles) + len(mvals):
        lo = min(int(a.min()) for a in (singles, mvals) if len(a))
        hi = max(int(a.max()) for a in (singles, mvals) if len(a))
        bins = dense_bins(lo, hi - lo + 1, (singles, None), (mvals, mcounts))
        top = int(bins.max())
        tied = np.flatnonzero(bins == top) + np.int64(lo)
        return {"count": top, "ties": tied[:tie_limit].tolist(), "tie_count": int(len(tied)),
                "distinct": int(np.count_nonzero(bins))}
    s = singles
    if s.flags.writeable:
        s.sort()               # in place: the caller's concatenation is ours to reorder
    else:
        s = np.sort(s)
    vals, cnts, distinct = merge_repeats(s, mvals, mcounts)
    if distinct == 0:
        return {"count": 0, "ties": [], "tie_count": 0, "distinct": 0}
    if len(cnts) == 0:                 # nothing repeats: every value ties at count 1
        return {"count": 1, "ties": s[:tie_limit].tolist(), "tie_count": distinct, "distinct": distinct}
    top = int(cnts.max())
    tied = vals[cnts == top]           # ascending already
    return {"count": top, "ties": tied[:tie_limit].tolist(), "tie_count": int(len(tied)), "distinct": distinct}


def merge_counting(counting: str, singles: list[np.ndarray], mvals: list[np.ndarray], mcounts: list[np.ndarray]) -> str:
    """The owner's merge counts the way ``counting`` says; ``auto`` decides by the same rule as the local count."""
    if not any(len(a) for a in singles + mvals):
        return "sort"
    keys = np.concatenate([np.array([a.min(), a.max()]) for a in singles + mvals if len(a)])
    if counting != "auto":
        fits = dense_fits(int(keys.max()) - int(keys.min()) + 1, sum(len(a) for a in singles + mvals))
        return "dense" if counting == "dense" and fits else "sort"
    weight = sum(len(a) for a in singles) + sum(int(c.sum()) for c in mcounts)
    return choose_counting(keys, weight)


def load_facts(values: np.ndarray) -> tuple[dict, tuple[int, np.ndarray] | None]:
    """This rank's facts, taken while it loads (``Op.load_facts``): its count, smallest and largest value, and
    its repeated values with their (estimated) local counts -- heavy-hitter candidates, the heaviest
    ``PRUNE_CANDIDATES`` -- as plain numbers and lists: the coordinator combines every rank's (``merge_facts``)
    without numpy.

    Values within ``DIRECT_SPAN`` of their smallest are counted outright (one ``bincount``, about what the
    sample costs): the candidates are exact, so is the share of distinct values (whether counting locally
    pays, else None: a larger sample decides it if the job shuffles), and the counts are kept, (lo, bins), so
    a job whose whole span is that small settles without another pass.  Others are sampled (``HEAVY_SAMPLE``:
    enough for values that hold a share of the data worth pruning on; 65,536 cost 2.3 ms more a rank).  The
    span decides only that direct count, so where a few thousand evenly spaced values already span more,
    ``lo``/``hi`` are the sample's smallest and largest (a narrower span, still too wide: two passes saved)."""
    n = len(values)
    lo = hi = None
    probe = values[::max(1, n // SPAN_PROBE)]
    wide = bool(n) and int(probe.max()) - int(probe.min()) >= DIRECT_SPAN
    if n and not wide:
        lo, hi = int(values.min()), int(values.max())
    kept = None
    if lo is not None and hi - lo < DIRECT_SPAN:
        bins = span_counts(values, lo, hi - lo + 1)
        kept = (lo, bins)
        v = np.flatnonzero(bins)
        share, c = len(v) / n, bins[v]
        v = v + np.int64(lo)
        rep = c >= 2
        v, est = v[rep], c[rep]
    else:
        smp = sample(values, HEAVY_SAMPLE)
        smp.sort()
        if wide:                       # the probe's span is already too wide; the sample's may be narrower
            lo, hi = min(int(probe.min()), int(smp[0])), max(int(probe.max()), int(smp[-1]))
        v, c = run_lengths(smp)
        share = None
        rep = c >= 2
        v, est = v[rep], (c[rep] * (n / max(len(smp), 1))).astype(np.int64)
    if len(v) > PRUNE_CANDIDATES:
        keep = np.sort(np.argpartition(-est, PRUNE_CANDIDATES - 1)[:PRUNE_CANDIDATES])
        v, est = v[keep], est[keep]
    return {"n": n, "lo": lo, "hi": hi, "v": v.tolist(), "e": est.tolist(), "share": share}, kept


def merge_facts(a: dict, b: dict) -> dict:
    """Two ranks' facts (or two merged groups') as one: counts summed, the span widened, the candidates'
    estimates summed by value and cut to the heaviest ``PRUNE_CANDIDATES`` (ties: the smaller value; a cut
    only loosens the slot bounds, the answer stays exact).  Plain Python over at most twice that many
    candidates, not the data: the coordinator runs it for every rank's load, without numpy."""
    est = dict(zip(a["v"], a["e"]))
    for v, e in zip(b["v"], b["e"]):
        est[v] = est.get(v, 0) + e
    top = sorted(sorted(est.items(), key=lambda ve: (-ve[1], ve[0]))[:PRUNE_CANDIDATES])
    los = [x["lo"] for x in (a, b) if x["lo"] is not None]
    his = [x["hi"] for x in (a, b) if x["hi"] is not None]
    return {"n": a["n"] + b["n"], "lo": min(los, default=None), "hi": max(his, default=None),
            "v": [v for v, _ in top], "e": [e for _, e in top]}


def prune_candidates(total: dict, prune: str) -> np.ndarray | None:
    """The candidates heaviest first, or None when pruning is off or unlikely to settle the job (the same
    answer on every rank: it reads only the allreduced samples)."""
    n, v, e = total["n"], np.asarray(total["v"], dtype=np.int64), np.asarray(total["e"], dtype=np.int64)
    if prune == "never" or n == 0:
        return None
    order = np.lexsort((v, -e))
    if prune == "auto":
        rest = max(n - int(e.sum()), 0) / SLOTS          # the average slot's sum of everything else
        if n < PRUNE_MIN_VALUES or len(v) == 0 or int(e.max()) < PRUNE_MARGIN * max(rest, 1.0):
            return None
    return v[order]


def top_cut(total: dict, cands: np.ndarray, limit: int) -> int:
    """How many of the heaviest candidates (at most ``limit``; 0: none) are likely to settle the job by their
    counts alone: the fewest whose heaviest estimate beats ``TOP_MARGIN`` times the estimated count of every
    other value together.  Read from the combined facts only: the same on every rank."""
    if limit < 1 or cands is None or not len(cands):
        return 0
    est = dict(zip(total["v"], total["e"]))
    e = np.array([est[v] for v in cands[:limit].tolist()], dtype=np.float64)     # heaviest first
    ok = np.flatnonzero(e[0] >= TOP_MARGIN * (total["n"] - np.cumsum(e)))
    return int(ok[0]) + 1 if len(ok) else 0


def _sum_counts(a: dict, b: dict) -> dict:
    return {"c": a["c"] + b["c"]}


async def _top(comm: Communicator, values: np.ndarray, cands: np.ndarray, n: int, tie_limit: int,
               phases: dict) -> dict:
    """The exact counts of a few heaviest candidates, summed up the tree; rank 0's verdict, broadcast: settled
    when the best count beats all other values together (none of them can reach it), else not."""
    t = time.perf_counter()
    counts = await numpy_step(len(values), candidate_counts, values, cands)
    phases["top"] = time.perf_counter() - t
    t = time.perf_counter()
    summed = await tree_reduce(comm, {"c": counts}, _sum_counts, "mode.top")
    verdict = None
    if summed is not None:
        c = summed["c"]
        best = int(c.max())
        tied = np.sort(cands[c == best])
        verdict = {"settled": n - int(c.sum()) < best, "count": best, "ties": tied[:tie_limit].tolist(),
                   "tie_count": int(len(tied)), "distinct": None}
    verdict = await broadcast(comm, verdict, "mode.top.verdict")
    phases["settle"] = time.perf_counter() - t
    return verdict


def _narrow(a: np.ndarray) -> np.ndarray:
    """Non-negative counts in uint32 when they fit (half the bytes up the tree), else int64."""
    return a.astype(np.uint32) if not len(a) or int(a.max()) < 2 ** 32 else a.astype(np.int64)


def _sum_slots(a: dict, b: dict) -> dict:
    return {k: _narrow(a[k].astype(np.int64) + b[k].astype(np.int64)) for k in ("h", "r")}


def settle(placed: np.ndarray, hits: np.ndarray, rest: np.ndarray, tie_limit: int) -> dict:
    """Rank 0's verdict from the summed slots: the candidates' best (count, smallest ties, tie count) and
    the slots whose other values could still reach that count (to be counted exactly)."""
    top = int(hits.max()) if len(hits) else 0
    tied = np.sort(placed[hits == top]) if top else placed[:0]
    open_slots = np.flatnonzero(rest >= max(top, 1))
    return {"count": top, "ties": tied[:tie_limit].tolist(), "tie_count": int(len(tied)),
            "open": open_slots.astype(np.int32), "distinct": None}


def _rebase(kept: tuple[int, np.ndarray], lo: int, span: int) -> np.ndarray:
    """This rank's counts kept at its load (from its own smallest value) placed in the job's span from ``lo``."""
    mine, counts = kept
    bins = np.zeros(span, dtype=np.int64)
    bins[mine - lo:mine - lo + len(counts)] = counts
    return bins


async def _direct(comm: Communicator, values: np.ndarray, lo: int, hi: int, tie_limit: int, phases: dict,
                  rounds: int, kept: tuple[int, np.ndarray] | None) -> tuple[dict | None, None, dict]:
    """Every value within ``DIRECT_SPAN`` of the smallest: exact counts of all of them, summed up the tree --
    counted at the load already when this rank's own span was that small (``kept``), else now.

    The answer is final at rank 0 and every rank knows nothing is left to shuffle (they all read the same
    span), so no verdict comes back down: the other ranks return None."""
    t = time.perf_counter()
    if kept is not None:
        bins = _rebase(kept, lo, hi - lo + 1)
    else:
        bins = await numpy_step(len(values), span_counts, values, lo, hi - lo + 1)
    phases["slots"] = time.perf_counter() - t
    t = time.perf_counter()
    summed = await tree_reduce(comm, {"h": _narrow(bins), "r": _narrow(bins[:0])}, _sum_slots, "mode.slots")
    verdict = None
    if summed is not None:
        counts = summed["h"].astype(np.int64)
        verdict = settle(np.arange(len(counts), dtype=np.int64) + np.int64(lo), counts, counts[:0], tie_limit)
        verdict["distinct"] = int(np.count_nonzero(counts))
    phases["settle"] = time.perf_counter() - t
    return verdict, None, {"rounds": rounds + tree_depth(comm.size), "settled": True, "heavy": {
        "pruned": True, "direct": True, "candidates": hi - lo + 1, "open_slots": 0,
        "best_candidate_count": None if verdict is None else verdict["count"]}}


async def prune_heavy(comm: Communicator, box: list[np.ndarray], prune: str, tie_limit: int,
                      phases: dict) -> tuple[dict | None, np.ndarray | None, dict]:
    """Steps 1-3 of the heavy-hitter pruning (module docstring).

    Returns (the candidates' verdict, the values left to count exactly or None when
    none are, stats, whose ``settled`` says nothing is left to shuffle); (None, None,
    stats) when pruning does not run, the values untouched in ``box``.  Every rank
    takes the same branch: each decision reads only numbers every rank holds alike --
    the facts of every rank's load, combined by the coordinator (``comm.facts``, no
    round) or here by an allreduce -- or broadcast ones.
    """
    t = time.perf_counter()
    comm.progress.set("prune")
    values = box[0]
    depth = tree_depth(comm.size)
    if comm.facts is not None:         # every rank's sample was taken at its load and combined at the coordinator
        total, rounds, kept = comm.facts, 0, comm.kept
    else:
        mine, kept = await numpy_step(len(values), load_facts, values)
        phases["sample"] = time.perf_counter() - t
        total = await allreduce(comm, mine, merge_facts, "mode.heavy")
        rounds = 2 * depth
        phases["candidates"] = time.perf_counter() - t - phases["sample"]
    direct = prune != "never" and total["n"] and total["hi"] - total["lo"] < DIRECT_SPAN and (
        prune == "always" or total["n"] >= PRUNE_MIN_VALUES)
    cands = prune_candidates(total, prune)
    k = 0 if direct else top_cut(total, cands, TOP_MAX)     # direct: every rank counted its values at its load
    if k:
        top = await _top(comm, values, cands[:k], total["n"], tie_limit, phases)
        rounds += 2 * depth
        if top["settled"]:
            return top, None, {"rounds": rounds, "settled": True, "heavy": {
                "pruned": True, "direct": False, "top": k, "candidates": k, "open_slots": 0,
                "best_candidate_count": top["count"]}}
    if direct:
        return await _direct(comm, values, total["lo"], total["hi"], tie_limit, phases, rounds, kept)
    if cands is None:
        return None, None, {"rounds": rounds, "settled": False,
                            "heavy": {"pruned": False, "candidates": len(total["v"])}}
    t = time.perf_counter()
    table, placed = heavy_table(cands)
    bins = await numpy_step(len(values), slot_counts, values, table)
    phases["slots"] = time.perf_counter() - t
    t = time.perf_counter()
    summed = await tree_reduce(comm, {"h": _narrow(bins[2 * slot_of(placed) + 1]), "r": _narrow(bins[0::2])},
                               _sum_slots, "mode.slots")
    del bins
    verdict = None
    if summed is not None:
        verdict = settle(placed, summed["h"].astype(np.int64), summed["r"].astype(np.int64), tie_limit)
    verdict = await broadcast(comm, verdict, "mode.verdict")
    open_slots = np.asarray(verdict["open"], dtype=np.int64)
    phases["settle"] = time.perf_counter() - t
    left = None
    if len(open_slots):
        t = time.perf_counter()
        left = await numpy_step(len(values), in_slots, values, table, open_slots)
        phases["open"] = time.perf_counter() - t
    return verdict, left, {"rounds": rounds + 2 * depth, "settled": left is None, "heavy": {
        "pruned": True, "direct": False, "candidates": int(len(placed)), "open_slots": int(len(open_slots)),
        "best_candidate_count": verdict["count"]}}


def _count_and_split(w: int, rank: int, box: list[np.ndarray], combine: str, counting: str,
                     cfg: ShuffleConfig, known_share: float | None = None) -> tuple[list, list, bool, str, int]:
    """Per owner the chunks of bare values and of (value, count) pairs, whether values were counted locally
    first ("combined"), how, and how many (value or pair) rows leave this rank."""
    values = box.pop()
    if len(values) <= COMBINE_SAMPLE:
        share = None                   # small: count
    elif known_share is None:
        share = sample_share(values, COMBINE_SAMPLE)
    else:
        share = known_share            # these very values' exact share, counted at the load (load_facts)
    if counting == "auto":
        counting = choose_local(values, 1.0 if share is None else share)
    # a dense count is one cheap pass and only chosen where values repeat a lot: it always pays
    combined = combine == "always" or (combine == "auto" and (counting == "dense" or share is None
                                                              or share < COMBINE_BELOW))
    if combined:
        uv, uc, counting = count_values(values, counting)
        del values
        single = uc == 1
        s_chunks, m_chunks = _split(w, uv[single], uv[~single], uc[~single], cfg, True)
        del uv, uc, single
    else:                      # ship raw values as "singles"; owners count repeats when they merge
        none = np.zeros(0, dtype=np.int64)
        s_chunks, m_chunks = _split(w, values, none, none, cfg, memory.owned(values))
        del values             # the chunks replace it
        counting = "none"
    leaving = sum(len(next(iter(c.values()))) for r in range(w) if r != rank for c in s_chunks[r] + m_chunks[r])
    return s_chunks, m_chunks, combined, counting, leaving


def _pack(s_chunks: list, m_chunks: list, fp_bits: int | None, chunk_bytes: int) -> tuple[list, list | None]:
    """The outgoing chunks per owner, and the values kept for the compact rounds (``fp_bits`` set)."""
    if fp_bits is not None:
        return pack_fingerprints(s_chunks, m_chunks, fp_bits, chunk_bytes)
    return [s + m for s, m in zip(s_chunks, m_chunks)], None


def _aggregate(singles: list[np.ndarray], mvals: list[np.ndarray], mcounts: list[np.ndarray], tie_limit: int,
               counting: str) -> tuple[dict, str]:
    """This rank's best among the values it owns, from everything the shuffle delivered, and how it counted."""
    empty = np.zeros(0, dtype=np.int64)
    how = merge_counting(counting, singles, mvals, mcounts)
    return best_of(concat_releasing(singles),
                   np.concatenate(mvals) if mvals else empty,
                   np.concatenate(mcounts) if mcounts else empty, tie_limit, how), how


def _combine_limit(tie_limit: int):
    def combine(a: dict, b: dict) -> dict:
        if a["count"] != b["count"]:
            return a if a["count"] > b["count"] else b
        ties = sorted(a["ties"] + b["ties"])[:tie_limit]
        return {"count": a["count"], "ties": ties, "tie_count": a["tie_count"] + b["tie_count"]}
    return combine


@dataclass(frozen=True)
class ModeParams(ShuffleParams):
    ties: str = option("smallest", "smallest: the smallest tied value wins; all: list every tied value "
                       f"(up to {MAX_TIE_LIMIT:,}).", choices=TIES)
    combine: str = option("auto", "Count locally before the shuffle: auto (from a sample), always, never.",
                          choices=("auto", "always", "never"), advanced=True)
    counting: str = option("auto", "How to count: auto (a dense bincount when the value span is small, else a sort), "
                           "sort, dense, hash (Polars' value_counts).", choices=COUNTINGS, advanced=True)
    encoding: str = option("auto", "Shuffle encoding: compact (hash fingerprints, Rice-coded, ~2.3 bytes a value; "
                           "full values only for candidate repeats), plain (8 bytes a value), auto (measures the "
                           "links and the coding's speed before the shuffle and picks compact where the links are "
                           "slow for the bytes and values do not repeat; plain on loopback).", choices=ENCODINGS)
    link_mbit: float = option(0.0, "Each worker's link rate in Mbit/s, for --encoding auto instead of measuring it "
                              "(0: measure).",
                              min=0, max=1e6)
    prune: str = option("auto", "Settle the mode from sampled heavy hitters (exact counts) and per-slot bounds for "
                        "every other value, shuffling only what the bounds cannot rule out: auto (jobs of at least "
                        f"{PRUNE_MIN_VALUES:,} values whose sample shows heavy hitters), always, never.",
                        choices=PRUNES, advanced=True)

    @property
    def tie_limit(self) -> int:
        return MAX_TIE_LIMIT if self.ties == "all" else DEFAULT_TIE_LIMIT


async def mode(comm: Communicator, values: np.ndarray, params: ModeParams) -> tuple[dict | None, dict]:
    """Runs on every rank; returns (result at rank 0 else None, this rank's phase stats).

    Values kept on disk (``comm.passes`` > 1, worker/io/ondisk.py) are counted in passes: each pass
    holds the values of one hash slice, a dataset of its own whose values no other pass has, so the
    passes' bests combine exactly as the owners' do."""
    box = [values]              # no name in this frame may keep the values alive while the count frees them
    del values
    if comm.passes > 1:
        return await _in_passes(comm, box.pop(), params)
    return await _mode_once(comm, box.pop(), params)


async def _in_passes(comm: Communicator, values: np.ndarray, params: ModeParams) -> tuple[dict | None, dict]:
    from shardstats.worker.ops.passes import over_slices
    # Heavy-hitter pruning samples the whole input for one shuffle; a pass is one slice of it.
    once = dataclasses.replace(params, prune="never")
    pick = _combine_limit(params.tie_limit)

    def combine(a: dict, b: dict) -> dict:
        if not b["count"]:
            return a
        if not a["count"]:
            return b
        best = pick(a, b)
        return {**best, "value": best["ties"][0]}

    return await over_slices(comm, values, lambda c, part: _mode_once(c, part, once), combine)


async def _mode_once(comm: Communicator, values: np.ndarray, params: ModeParams) -> tuple[dict | None, dict]:
    cfg = ShuffleConfig.from_params(params, int64_bytes(comm.total))       # a job of one chunk goes up the tree...
    if cfg.strategy == "tree" and params.shuffle == "auto" and params.encoding == "compact":
        cfg = dataclasses.replace(cfg, strategy="credit")      # ...unless compact fingerprints were asked for
    tie_limit = params.tie_limit
    phases: dict[str, float] = {}
    t = time.perf_counter()
    comm.progress.set("count")
    combine = params.combine
    # The heavy numpy steps run on a thread (numpy lets go of the GIL; worker/steps.py), so
    # the event loop keeps answering heartbeats and credits while this worker computes.
    # The list hands the step the only reference to the data, so it can free it early.
    box = [values]
    del values
    prior, heavy = None, None
    if params.prune == "always" or (params.prune == "auto" and cfg.strategy != "tree" and comm.total is not None
                                    and comm.total >= PRUNE_MIN_VALUES):
        prior, left, heavy = await prune_heavy(comm, box, params.prune, tie_limit, phases)
        if heavy["settled"]:                             # settled by the candidates: nothing to shuffle
            return _settled(comm, prior, phases, heavy)
        if prior is not None:
            box[0] = left                                # only the open slots' values are counted below
            del left
        t = time.perf_counter()
        comm.progress.set("count")
    # The encoding is chosen while the values are counted and split (on a thread): its probe and allgather
    # wait on the network, not on the slowest rank's count, from a sample taken now, while they are whole.
    n = len(box[0])
    smp = compact_choice.sample_of(box[0]) if params.encoding == "auto" else None
    share = comm.own_facts["share"] if comm.own_facts is not None and prior is None else None   # exact, or None
    async with asyncio.TaskGroup() as tg:
        split = tg.create_task(numpy_step(n, _count_and_split, comm.size, comm.rank, box, combine, params.counting,
                                          cfg, share))
        chosen = tg.create_task(compact_choice.choose(
            comm, params.encoding, n, n * (comm.size - 1) // comm.size, smp, params.link_mbit, cfg.chunk_bytes,
            COMBINE_BELOW, tree=cfg.strategy == "tree"))    # one chunk: nothing to code
    s_chunks, m_chunks, combined, local_counting, leaving = split.result()
    choice = chosen.result()
    del split, chosen          # a done task keeps its result: the chunks would outlive their sending
    encoding, fp_bits = choice.encoding, choice.bits
    outgoing, kept = await numpy_step(n if fp_bits else 0, _pack, s_chunks, m_chunks, fp_bits, cfg.chunk_bytes)
    del s_chunks, m_chunks
    phases["count"] = time.perf_counter() - t
    peaks = {"count": memory.peak_rss_bytes()}

    t = time.perf_counter()
    sent0 = sum(comm.stats.bytes_sent)
    if kept is not None:
        local, rounds = await compact_exchange(comm, outgoing, kept, fp_bits, tie_limit, cfg)
        del outgoing, kept
        phases["shuffle"] = time.perf_counter() - t
        return await _finish(comm, cfg, local, phases, {"shuffle": memory.peak_rss_bytes()}, tie_limit, {
            "combined": combined, "counting": {"local": local_counting, "merge": "sort"}, "encoding": encoding,
            "shuffle": cfg.strategy, "plan_rounds": choice.rounds, "encoding_choice": choice.stats,
            "fingerprint_bits": fp_bits, "shuffled_values": leaving, "shuffle_bytes": sum(comm.stats.bytes_sent) - sent0,
            "chunks_sent": sum(r.chunks_sent for r in rounds), "chunks_received": sum(r.chunks_received for r in rounds),
            "shuffle_send_seconds": sum(r.send_seconds for r in rounds),
            "shuffle_receive_seconds": sum(r.receive_seconds for r in rounds)}, peaks, prior, heavy)
    singles: list[np.ndarray] = []
    mvals: list[np.ndarray] = []
    mcounts: list[np.ndarray] = []

    def consume(src: int, piece: dict) -> None:
        if "s" in piece:
            singles.append(piece["s"])
        else:
            mvals.append(piece["v"])
            mcounts.append(piece["c"])

    sst = await shuffle(comm, outgoing, consume, cfg)
    del outgoing
    phases["shuffle"] = time.perf_counter() - t
    peaks["shuffle"] = memory.peak_rss_bytes()
    shuffle_bytes = sum(comm.stats.bytes_sent) - sent0

    t = time.perf_counter()
    comm.progress.set("aggregate")
    local, merge_how = await numpy_step(sum(map(len, singles)) + sum(map(len, mvals)), _aggregate, singles, mvals,
                                        mcounts, tie_limit, params.counting)
    phases["aggregate"] = time.perf_counter() - t
    return await _finish(comm, cfg, local, phases, {"aggregate": memory.peak_rss_bytes()}, tie_limit, {
        "combined": combined, "counting": {"local": local_counting, "merge": merge_how}, "encoding": encoding,
        "shuffle": cfg.strategy, "plan_rounds": choice.rounds, "encoding_choice": choice.stats,
        "shuffled_values": leaving, "shuffle_bytes": shuffle_bytes,
        "chunks_sent": sst.chunks_sent, "chunks_received": sst.chunks_received,
        "shuffle_send_seconds": sst.send_seconds, "shuffle_receive_seconds": sst.receive_seconds}, peaks,
        prior, heavy)


async def _finish(comm: Communicator, cfg: ShuffleConfig, local: dict, phases: dict, more_peaks: dict, tie_limit: int,
                  extra: dict, peaks: dict, prior: dict | None = None, heavy: dict | None = None
                  ) -> tuple[dict | None, dict]:
    """Tree-reduce the owners' bests (at rank 0 with the heavy candidates' ``prior``, over disjoint values);
    this rank's stats (bytes per value that left it, over the wire)."""
    peaks.update(more_peaks)
    owned = local.pop("distinct")
    t = time.perf_counter()
    comm.progress.set("reduce")
    best = await tree_reduce(comm, local, _combine_limit(tie_limit), "mode.best")
    if best is not None and prior is not None:
        best = _combine_limit(tie_limit)(best, {k: prior[k] for k in ("count", "ties", "tie_count")})
    if heavy is not None:
        extra["rounds_heavy"] = heavy["rounds"]
        extra["heavy"] = heavy["heavy"]
        if prior is not None:
            owned = None                # the candidates' values never reached an owner: not counted
    phases["reduce"] = time.perf_counter() - t
    extra["shuffle_bytes_per_value"] = round(extra["shuffle_bytes"] / extra["shuffled_values"], 3) \
        if extra["shuffled_values"] else None
    stats = {"phases": phases, "peak_rss_after": peaks, "distinct_keys": owned, **extra,
             "rounds": cfg.rounds(comm.size) + tree_depth(comm.size)
             + (2 if extra["encoding"] == "compact" else 0)
             + extra.pop("plan_rounds") + extra.pop("rounds_heavy", 0)}
    if best is None:
        return None, stats
    if best["count"] == 0:
        return {"value": None, "count": 0, "ties": [], "tie_count": 0}, stats
    return {"value": best["ties"][0], "count": best["count"], "ties": best["ties"],
            "tie_count": best["tie_count"]}, stats


def _settled(comm: Communicator, verdict: dict | None, phases: dict, heavy: dict) -> tuple[dict | None, dict]:
    """The pruned job's answer (rank 0) and stats, when no slot was left open: nothing was shuffled.
    ``verdict`` is None on the other ranks of a direct count (only rank 0 needs it)."""
    distinct = None                    # unknown: the candidates' values were counted, not the others
    if heavy["heavy"]["direct"]:       # every value counted: rank 0 holds them all
        distinct = verdict["distinct"] if comm.rank == 0 else 0
    stats = {"phases": phases, "peak_rss_after": {"prune": memory.peak_rss_bytes()}, "distinct_keys": distinct,
             "combined": False, "counting": {"local": "direct" if heavy["heavy"]["direct"] else "top"
                                             if heavy["heavy"].get("top") else "heavy", "merge": "none"},
             "encoding": "plain",
             "encoding_choice": {"encoding": "plain", "why": "nothing to shuffle: the heavy hitters settled the job"},
             "shuffle": "none", "shuffled_values": 0, "shuffle_bytes": 0, "shuffle_bytes_per_value": None,
             "chunks_sent": 0, "chunks_received": 0, "shuffle_send_seconds": 0.0, "shuffle_receive_seconds": 0.0,
             "rounds": heavy["rounds"], "heavy": heavy["heavy"]}
    if comm.rank != 0:
        return None, stats
    if verdict["count"] == 0:
        return {"value": None, "count": 0, "ties": [], "tie_count": 0}, stats
    return {"value": verdict["ties"][0], "count": verdict["count"], "ties": verdict["ties"],
            "tie_count": verdict["tie_count"]}, stats


def render(r: dict) -> list[str]:
    if r["value"] is None:
        return ["mode: none (no values)"]
    more = ""
    if r["tie_count"] > 1:
        shown = ", ".join(map(str, r["ties"][:10]))
        more = f"  ({r['tie_count']:,} values tie: {shown}{', ...' if r['tie_count'] > min(10, len(r['ties'])) else ''})"
    return [f"mode: {r['value']}  (count {r['count']:,}){more}"]


def summarize(workers: list[dict]) -> dict:
    """The job's distinct values, when the owners counted them all (a pruned job does not: None), and the
    shuffle's encoding with what chose it (the same on every rank, but for each rank's own probe)."""
    keys = [w["distinct_keys"] for w in workers]
    out = {"distinct_values": None if None in keys else sum(keys)}
    if workers and "encoding_choice" in workers[0]:
        out["encoding"] = workers[0]["encoding"]
        out["encoding_choice"] = workers[0]["encoding_choice"]
    return out


OP = Op(
    name="mode",
    summary="The exact mode (most frequent value) and its count.",
    params=ModeParams,
    run=mode,
    render=render,
    phases=("load", "slice", "sample", "candidates", "slots", "settle", "open", "count", "shuffle", "aggregate", "reduce"),
    examples=("cluster submit mode --input shards/", "cluster submit mode --input 'shards/*.npy' --ties all --json"),
    summarize=summarize,
    out_of_core=True,
    load_facts=load_facts,
    merge_facts=merge_facts,
)
