"""The exact mode: local count, shuffle by a stable hash, aggregate per owner, tree-reduce the winners.

After the shuffle every value's occurrences, from every shard, sit on exactly one
rank, so each rank's local best is final for the values it owns and only one small
candidate per rank has to travel, up a binomial tree.  A value seen once locally
travels as its 8 bytes ("singles"); only values seen more than once pay for a count.
Ties: the smallest value wins; ``ties`` lists up to ``tie_limit`` smallest tied
values and ``tie_count`` says how many there are.
"""
from __future__ import annotations

import dataclasses
import os
import ipaddress
import time
from dataclasses import dataclass

from shardstats.lazy import numpy as np

from shardstats.worker import memory
from shardstats.worker.steps import numpy_step
from shardstats.worker.memory import concat_releasing
from shardstats.worker.comm.collectives import allreduce, sum_ints, tree_depth, tree_reduce
from shardstats.worker.comm.encoding import fingerprint_bits
from shardstats.worker.ops.compact import compact_exchange, pack_fingerprints
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.ops.counting import (COUNTINGS, choose_counting, count_values, dense_bins, dense_fits,
                                            merge_repeats, run_lengths)
from shardstats.worker.comm.partition import partition_chunks
from shardstats.worker.comm.shuffle import ShuffleConfig, chunk_pieces, shuffle
from shardstats.worker.ops.contract import Op, ShuffleParams, option

COMBINE_SAMPLE = 65536     # values sampled to decide whether local counting pays
COMBINE_BELOW = 0.9        # combine when fewer than this share of sampled values are distinct
DEFAULT_TIE_LIMIT = 10
TIES = ("smallest", "all")
ENCODINGS = ("auto", "compact", "plain")
MAX_TIE_LIMIT = 100_000   # ties travel in one small message; more than this are counted, not listed


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


def should_combine(values: np.ndarray) -> bool:
    """Local counting costs a sort; it pays only when values repeat.  A random sample tells.

    Without it every value travels as 8 bytes, duplicates included, and the owner
    counts them: for nearly-unique data that is the same traffic and half the work.
    """
    if len(values) <= COMBINE_SAMPLE:
        return True
    rng = np.random.default_rng(len(values))
    sample = values[rng.choice(len(values), COMBINE_SAMPLE, replace=False)]
    distinct = len(run_lengths(np.sort(sample))[0])
    return distinct < COMBINE_BELOW * len(sample)


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


def _count_and_pack(w: int, rank: int, box: list[np.ndarray], combine: str, counting: str, cfg: ShuffleConfig,
                    fp_bits: int | None) -> tuple[list, list | None, bool, str, int]:
    """The outgoing chunks per rank, the values kept for the compact rounds (``fp_bits`` set), whether values
    were counted locally first ("combined"), how, and how many (value or pair) rows leave this rank."""
    values = box.pop()
    if counting == "auto":
        counting = choose_counting(values)
    # a dense count is one cheap pass and only chosen where values repeat a lot: it always pays
    combined = combine == "always" or (combine == "auto" and (counting == "dense" or should_combine(values)))
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
    if fp_bits is not None:
        outgoing, kept = pack_fingerprints(s_chunks, m_chunks, fp_bits, cfg.chunk_bytes)
        return outgoing, kept, combined, counting, leaving
    return [s + m for s, m in zip(s_chunks, m_chunks)], None, combined, counting, leaving


# Compact saves ~5.7 of 8 bytes a value on the wire and costs ~0.12 CPU-seconds per million
# values (fingerprints, argsort, Rice coding and decoding; measured on the netns bed, where
# plain won at 1 Gbit/s and 100 Mbit/s with five workers per core, and compact at 20 Mbit/s).
COMPACT_SAVED_BITS = 5.7 * 8
COMPACT_CPU_SECONDS = 0.12e-6


def compact_pays(link_mbit: float, workers_per_cpu: float) -> bool:
    """Whether the link time compact saves per value exceeds its coding time on this worker's share of a CPU."""
    if link_mbit <= 0:
        return False
    return COMPACT_SAVED_BITS / (link_mbit * 1e6) > COMPACT_CPU_SECONDS * max(1.0, workers_per_cpu)


def _workers_per_cpu(comm: Communicator) -> float:
    """How many of this job's workers share this host's CPUs (from the job's address list)."""
    addrs = getattr(comm, "addrs", None)
    if not addrs:
        return 1.0
    mine = str(addrs[comm.rank]).rsplit(":", 1)[0]
    here = sum(1 for a in addrs if str(a).rsplit(":", 1)[0] == mine)
    return here / (os.cpu_count() or 1)


async def choose_encoding(comm: Communicator, encoding: str, values: np.ndarray,
                          link_mbit: float = 0.0) -> tuple[str, int | None]:
    """(the encoding every rank uses, the fingerprint bits when compact); one small allreduce unless ``plain``.

    ``auto`` picks compact only when it pays: workers off one host, a link rate the
    user declared (``--link-mbit``) slow enough that the bytes saved outweigh the
    coding's CPU on each worker's share of its host's cores (``compact_pays``), and
    no rank's sample showing repeats (then most fingerprints become candidates and
    travel twice).  On loopback, or with no declared rate, every rank settles on
    plain from the same facts without a vote; otherwise one allreduce makes every
    rank agree.  (A bed of network namespaces on one machine hides that its "hosts"
    share two cores, so the estimate is optimistic there.)
    """
    auto = encoding == "auto"
    if encoding == "plain" or (auto and (link_mbit <= 0 or _all_loopback(comm))):
        return "plain", None
    repeats = int(auto and should_combine(values))
    slow = int(auto and not compact_pays(link_mbit, _workers_per_cpu(comm)))
    total = await allreduce(comm, {"n": len(values), "repeats": repeats, "slow": slow}, sum_ints, "mode.plan")
    if auto and (total["repeats"] > 0 or total["slow"] > 0):
        return "plain", None
    return "compact", fingerprint_bits(total["n"], comm.size)


def _all_loopback(comm: Communicator) -> bool:
    """Whether every worker of this job listens on a loopback address (the same answer on every rank)."""
    addrs = getattr(comm, "addrs", None)
    if addrs is None:              # the in-memory transport: one process
        return True
    for addr in addrs:
        host = str(addr).rsplit(":", 1)[0].strip("[]")
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            if host != "localhost":
                return False
    return True


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
                           "full values only for candidate repeats), plain (8 bytes a value), auto (compact only "
                           "where it pays: workers on several hosts, --link-mbit given and slow enough for the "
                           "coding's CPU cost, values that do not repeat).", choices=ENCODINGS)
    link_mbit: float = option(0.0, "Each worker's link rate in Mbit/s, for --encoding auto (0: unknown, so plain).",
                              min=0, max=1e6)

    @property
    def tie_limit(self) -> int:
        return MAX_TIE_LIMIT if self.ties == "all" else DEFAULT_TIE_LIMIT


async def mode(comm: Communicator, values: np.ndarray, params: ModeParams) -> tuple[dict | None, dict]:
    """Runs on every rank; returns (result at rank 0 else None, this rank's phase stats)."""
    cfg = ShuffleConfig.from_params(params, comm.total)       # a job of one chunk goes up the tree...
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
    asked = "plain" if cfg.strategy == "tree" else params.encoding     # one chunk, one message: nothing to code
    encoding, fp_bits = await choose_encoding(comm, asked, box[0], params.link_mbit)
    planned = not (asked == "plain" or (asked == "auto" and (params.link_mbit <= 0 or _all_loopback(comm))))
    outgoing, kept, combined, local_counting, leaving = await numpy_step(
        len(box[0]), _count_and_pack, comm.size, comm.rank, box, combine, params.counting, cfg, fp_bits)
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
            "shuffle": cfg.strategy, "planned": True, "fingerprint_bits": fp_bits, "shuffled_values": leaving, "shuffle_bytes": sum(comm.stats.bytes_sent) - sent0,
            "chunks_sent": sum(r.chunks_sent for r in rounds), "chunks_received": sum(r.chunks_received for r in rounds),
            "shuffle_send_seconds": sum(r.send_seconds for r in rounds),
            "shuffle_receive_seconds": sum(r.receive_seconds for r in rounds)}, peaks)
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
        "shuffle": cfg.strategy, "planned": planned, "shuffled_values": leaving, "shuffle_bytes": shuffle_bytes,
        "chunks_sent": sst.chunks_sent, "chunks_received": sst.chunks_received,
        "shuffle_send_seconds": sst.send_seconds, "shuffle_receive_seconds": sst.receive_seconds}, peaks)


async def _finish(comm: Communicator, cfg: ShuffleConfig, local: dict, phases: dict, more_peaks: dict, tie_limit: int,
                  extra: dict, peaks: dict) -> tuple[dict | None, dict]:
    """Tree-reduce the owners' bests; this rank's stats (bytes per value that left it, over the wire)."""
    peaks.update(more_peaks)
    owned = local.pop("distinct")
    t = time.perf_counter()
    comm.progress.set("reduce")
    best = await tree_reduce(comm, local, _combine_limit(tie_limit), "mode.best")
    phases["reduce"] = time.perf_counter() - t
    extra["shuffle_bytes_per_value"] = round(extra["shuffle_bytes"] / extra["shuffled_values"], 3) \
        if extra["shuffled_values"] else None
    stats = {"phases": phases, "peak_rss_after": peaks, "distinct_keys": owned, **extra,
             "rounds": cfg.rounds(comm.size) + tree_depth(comm.size)
             + (2 if extra["encoding"] == "compact" else 0)
             + (2 * tree_depth(comm.size) if extra.pop("planned") else 0)}
    if best is None:
        return None, stats
    if best["count"] == 0:
        return {"value": None, "count": 0, "ties": [], "tie_count": 0}, stats
    return {"value": best["ties"][0], "count": best["count"], "ties": best["ties"],
            "tie_count": best["tie_count"]}, stats


def render(r: dict) -> list[str]:
    if r["value"] is None:
        return ["mode: none (no values)"]
    more = ""
    if r["tie_count"] > 1:
        shown = ", ".join(map(str, r["ties"][:10]))
        more = f"  ({r['tie_count']:,} values tie: {shown}{', ...' if r['tie_count'] > min(10, len(r['ties'])) else ''})"
    return [f"mode: {r['value']}  (count {r['count']:,}){more}"]


def summarize(workers: list[dict]) -> dict:
    return {"distinct_values": sum(w["distinct_keys"] for w in workers)}


OP = Op(
    name="mode",
    summary="The exact mode (most frequent value) and its count.",
    params=ModeParams,
    run=mode,
    render=render,
    phases=("load", "count", "shuffle", "aggregate", "reduce"),
    examples=("cluster submit mode --input shards/", "cluster submit mode --input 'shards/*.npy' --ties all --json"),
    summarize=summarize,
)
