"""The mode's compact shuffle: fingerprints first, full values only for the candidate repeats.

Round 1 sends each owner its values' fingerprints, sorted and Rice-coded
(``worker/data/encoding.py``, ~2.2 bytes a value), plus the locally repeated
values as plain (value, count) pairs.  A fingerprint the owner sees once (and
not among the pairs) is exactly one occurrence of one value: count 1, nothing
more to know.  Every other fingerprint is a candidate: round 2 asks the senders
that sent it, and round 3 brings those values and their counts in full, with
each sender's ``tie_limit`` smallest non-candidate values (the answer when no
value repeats).  A collision of two values' fingerprints makes both candidates:
it costs bytes, never exactness.  All three rounds are the credit shuffle, so
its fan-in and buffer bounds hold for each.
"""
from __future__ import annotations

import asyncio

from shardstats.lazy import numpy as np

from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.data.encoding import decode, encode_chunks, fingerprints, is_fingerprint_piece
from shardstats.worker.comm.shuffle import ShuffleConfig, ShuffleStats, chunk_pieces, shuffle
from shardstats.worker.memory import concat_releasing
from shardstats.worker.ops.counting import repeated_runs, sum_by_value


def pack_fingerprints(s_chunks: list, m_chunks: list, bits: int, chunk_bytes: int) -> tuple[list, list]:
    """Per owner: the outgoing chunks (coded fingerprints, then plain pairs) and the values kept for round 2.

    ``s_chunks``/``m_chunks`` are the partitioned values and pairs per owner (pieces
    "s" and "v"/"c"); each owner's values are joined and let go one owner at a time.
    The kept values are ordered by fingerprint, so round 2 finds a candidate's
    values with a binary search; the fingerprints themselves are recomputed then,
    not kept (that would be another 8 bytes a value while the shuffle runs).
    """
    outgoing, kept = [], []
    for r in range(len(s_chunks)):
        pieces, s_chunks[r] = [p["s"] for p in s_chunks[r]], []
        sv = concat_releasing(pieces)
        fp = fingerprints(sv, bits)
        order = np.argsort(fp)
        fp = fp[order]                  # each reordered copy replaces its original: four arrays at once, not five
        kept.append(sv[order])
        del sv, order
        chunks = encode_chunks(fp, chunk_bytes)
        del fp
        outgoing.append(chunks + m_chunks[r])
        m_chunks[r] = []
    return outgoing, kept


def _candidates(per_src: dict[int, list[np.ndarray]], mvals: list[np.ndarray], bits: int):
    """(the requests per source, the number of fingerprints seen exactly once and not among the pairs).

    Memory: the received fingerprints are held per source and once more sorted
    together; nothing else of their size (the count of single fingerprints comes
    from the runs, not from a lookup of every fingerprint among the candidates).
    """
    runs = {src: concat_releasing(a) for src, a in per_src.items() if a}
    per_src.clear()
    allfp = np.concatenate(list(runs.values())) if runs else np.zeros(0, dtype=np.uint64)
    allfp.sort()                                   # in place: a stable sort would borrow half the array again
    rep, _, distinct = repeated_runs(allfp)
    pair_fp = fingerprints(np.concatenate(mvals), bits) if mvals else np.zeros(0, dtype=np.uint64)
    hit = np.unique(pair_fp[np.searchsorted(allfp, pair_fp, "right") > np.searchsorted(allfp, pair_fp, "left")])
    del allfp
    cand = np.union1d(rep, hit)
    # fingerprints seen exactly once, less those a pair also has (those are candidates too)
    once = (distinct - len(rep)) - (len(cand) - len(rep))
    wants = {}
    for src, fp in runs.items():
        present = np.searchsorted(fp, cand, "right") > np.searchsorted(fp, cand, "left")
        wants[src] = cand[present]
    return wants, once


def _answer(kept: list[np.ndarray], requests: dict[int, list[np.ndarray]], bits: int, tie_limit: int,
            chunk_bytes: int) -> list[list[dict]]:
    """Per owner that asked: the candidates' full values with this rank's counts, and its smallest other values."""
    out: list[list[dict]] = [[] for _ in kept]
    for d, pieces in requests.items():
        want = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint64)
        sv = kept[d]
        fp = fingerprints(sv, bits)                       # ascending: kept is ordered by fingerprint
        lo, hi = np.searchsorted(fp, want, "left"), np.searchsorted(fp, want, "right")
        mask = np.zeros(len(sv) + 1, dtype=np.int64)
        np.add.at(mask, lo, 1)
        np.add.at(mask, hi, -1)
        is_cand = np.cumsum(mask[:-1]) > 0
        uv, uc = sum_by_value(sv[is_cand], np.ones(int(np.count_nonzero(is_cand)), dtype=np.int64))
        rest = sv[~is_cand]
        low = np.sort(np.partition(rest, tie_limit - 1)[:tie_limit]) if len(rest) > tie_limit else np.sort(rest)
        out[d] = chunk_pieces({"v": uv, "c": uc}, chunk_bytes) + [{"lo": low}]
        kept[d] = sv[:0]
    return out


def best_of_compact(once: int, cand_v: list[np.ndarray], cand_c: list[np.ndarray], lows: list[np.ndarray],
                    tie_limit: int) -> dict:
    """The owner's best, exact: ``once`` values of count 1 stand behind single fingerprints, the rest were counted."""
    empty = np.zeros(0, dtype=np.int64)
    pv, pc = sum_by_value(np.concatenate(cand_v) if cand_v else empty, np.concatenate(cand_c) if cand_c else empty)
    distinct = once + len(pv)
    if distinct == 0:
        return {"count": 0, "ties": [], "tie_count": 0, "distinct": 0}
    top = max(int(pc.max()) if len(pc) else 0, 1 if once else 0)
    if top == 1:
        ones = pv[pc == 1]
        pool = np.sort(np.concatenate(lows + [ones]) if lows else ones)
        return {"count": 1, "ties": pool[:tie_limit].tolist(), "tie_count": once + len(ones), "distinct": distinct}
    tied = pv[pc == top]                                   # ascending (sum_by_value sorts)
    return {"count": top, "ties": tied[:tie_limit].tolist(), "tie_count": int(len(tied)), "distinct": distinct}


async def compact_exchange(comm: Communicator, outgoing: list, kept: list[np.ndarray], bits: int, tie_limit: int,
                           cfg: ShuffleConfig) -> tuple[dict, list[ShuffleStats]]:
    """The three rounds; returns this rank's best among the values it owns (with "distinct") and each round's stats."""
    per_src: dict[int, list[np.ndarray]] = {}
    mvals: list[np.ndarray] = []
    mcounts: list[np.ndarray] = []

    def take_fingerprints(src: int, piece: dict) -> None:
        if is_fingerprint_piece(piece):
            per_src.setdefault(src, []).append(decode(piece))
        else:
            mvals.append(piece["v"])
            mcounts.append(piece["c"])

    st1 = await shuffle(comm, outgoing, take_fingerprints, cfg)
    wants, once = await asyncio.to_thread(_candidates, per_src, mvals, bits)

    requests: dict[int, list[np.ndarray]] = {}
    asks = [[{"w": wants[r]}] if r in wants else [] for r in range(comm.size)]
    st2 = await shuffle(comm, asks, lambda src, piece: requests.setdefault(src, []).append(piece["w"]), cfg)
    replies = await asyncio.to_thread(_answer, kept, requests, bits, tie_limit, cfg.chunk_bytes)

    cand_v, cand_c, lows = mvals, mcounts, []

    def take_reply(src: int, piece: dict) -> None:
        if "lo" in piece:
            lows.append(piece["lo"])
        else:
            cand_v.append(piece["v"])
            cand_c.append(piece["c"])

    st3 = await shuffle(comm, replies, take_reply, cfg)
    best = await asyncio.to_thread(best_of_compact, once, cand_v, cand_c, lows, tie_limit)
    return best, [st1, st2, st3]
