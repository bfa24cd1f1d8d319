"""Exact rank selection over every rank's values: the k-th smallest values by a few rounds of counting, no shuffle.

The engine's one selection (the median and quantiles of the ``median`` and ``describe`` ops, the
exact per-key quantiles of a salted ``groupby``); how it works:

Rank 0 keeps, for each target rank k, a window
(lo, hi] of values that must contain the k-th smallest value, and ``below``, the
global count of values <= lo.  A round:

1. rank 0 broadcasts the open windows;
2. every rank sends a regular sample of its values inside each window, and how many
   it has there, up the tree;
3. rank 0 broadcasts the sorted union of the samples as pivots (or, when a window
   holds at most ``gather_limit`` values, asks for those values instead);
4. every rank counts its values < and <= each pivot (two searchsorted calls), and
   the sums come up the tree.

Round 1 runs on the unsorted values: pivots are two values of a random sample that
bracket the target's estimated position (Floyd-Rivest style), counted with a few
comparison passes, so no rank ever sorts all its data; the window keeps a few
percent of the values.  Each rank then sorts only what lies in the window, and
later rounds use every sample as a pivot: between two neighbouring pivots lie at
most (window size / samples per rank) values, whatever the range of the values, so
the window shrinks by a factor of about W * samples per round.  With 100M values:
bracket, one many-pivot round, one small gather.  Counting "< p" as well as "<= p" finishes at once when the answer is a
value repeated many times.  All arithmetic on values is in Python ints, so the
mean of two middle values is exact at the int64 edges.
"""
from __future__ import annotations

import asyncio
import time

from shardstats.lazy import numpy as np

from shardstats.worker.comm.collectives import broadcast, tree_reduce
from shardstats.worker.comm.communicator import Communicator


DEFAULT_SAMPLES = 128          # regular samples per rank per window in the later rounds
FIRST_SAMPLES = 1024           # random samples per rank in the first (bracketing) round
DEFAULT_GATHER_LIMIT = 8192
TIE_PIVOTS = 4             # targets of a window up to which the bracketing round adds a pivot on a tied value
BRACKET_SIGMAS = 3             # half-width of the first round's bracket, in sqrt(sample size)
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
EVEN_RULES = ("mean", "lower", "upper")


def _in_window(data: np.ndarray, is_sorted: bool, lo: int | None, hi: int | None) -> np.ndarray:
    if is_sorted:
        a = 0 if lo is None else int(np.searchsorted(data, lo, "right"))
        b = len(data) if hi is None else int(np.searchsorted(data, hi, "right"))
        return data[a:b]
    if lo is None and hi is None:
        return data
    # Block by block: the masks stay small, and values kept on disk (a memory map) are read a block at a time.
    return _concat([_mask_window(b, lo, hi) for b in _blocks(data)])


def _mask_window(data: np.ndarray, lo: int | None, hi: int | None) -> np.ndarray:
    mask = np.ones(len(data), dtype=bool) if lo is None else data > lo
    if hi is not None:
        mask &= data <= hi
    return data[mask]


BLOCK = 1 << 22        # values per step of a pass over unsorted values


def _blocks(data: np.ndarray):
    for i in range(0, max(len(data), 1), BLOCK):
        yield data[i:i + BLOCK]


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _regular_sample(window: np.ndarray, k: int) -> np.ndarray:
    m = len(window)
    if m <= k:
        return window
    idx = ((np.arange(k) * 2 + 1) * m) // (2 * k)
    return window[idx]


def _random_sample(window: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return window if len(window) <= k else window[rng.integers(0, len(window), k)]


def _count(part: np.ndarray, is_sorted: bool, piv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many values are < and <= each pivot: binary search when sorted, else one pass per pivot."""
    if is_sorted:
        return (np.searchsorted(part, piv, "left").astype(np.int64),
                np.searchsorted(part, piv, "right").astype(np.int64))
    pivots = piv.tolist()
    lt = np.zeros(len(pivots), np.int64)
    eq = np.zeros(len(pivots), np.int64)
    for b in _blocks(part):
        lt += [np.count_nonzero(b < p) for p in pivots]
        eq += [np.count_nonzero(b == p) for p in pivots]
    return lt, lt + eq


def _cat(a: dict, b: dict) -> dict:
    """Combine for per-window lists: arrays concatenate, counts add."""
    out = {}
    for key in a:
        x, y = a[key], b[key]
        out[key] = [np.concatenate((p, q)) if isinstance(p, np.ndarray) else p + q for p, q in zip(x, y)]
    return out


def _window_key(w: tuple) -> tuple:
    lo, hi = w
    return (lo is not None, lo or 0, hi is not None, hi or 0)


async def select_ranks(comm: Communicator, values: np.ndarray, ranks: list[int], total: int,
                       samples: int = DEFAULT_SAMPLES, gather_limit: int = DEFAULT_GATHER_LIMIT,
                       first_samples: int = FIRST_SAMPLES, windows_log: list[int] | None = None
                       ) -> tuple[dict[int, int] | None, int]:
    """The values at the given 0-based global ranks (at rank 0), and the number of rounds it took.

    ``windows_log`` (rank 0) gets, per round, how many values the open windows held
    when the round began: the report draws the window shrinking round by round.

    Round 1 works on the unsorted values: a random sample per rank, and per window two
    pivots that bracket the targets' estimated positions, counted with a few passes of
    comparisons (no sort).  Then each rank keeps only the values inside the open windows
    (a few percent), sorts that, and the later rounds use many pivots from regular samples.
    """
    if total <= gather_limit:
        return await _gather_all(comm, values, ranks, windows_log), 1
    state = {k: [None, None, 0] for k in ranks}   # k -> [lo, hi, below]; window is (lo, hi]
    found: dict[int, int] = {}
    rounds = 0
    t_round = time.perf_counter()
    data, is_sorted = values, False
    rng = np.random.default_rng(comm.rank + 1)
    while True:
        # 1. open windows (rank 0 decides; everyone learns them)
        msg = None
        if comm.rank == 0:
            windows = sorted({(s[0], s[1]) for k, s in state.items() if k not in found}, key=_window_key)
            msg = {"w": [[lo, hi] for lo, hi in windows]}
        msg = await broadcast(comm, msg, "median.windows")
        windows = [tuple(w) for w in msg["w"]]
        if not windows:
            if rounds:
                comm.progress.timeline.span("round", f"round {rounds}", t_round, time.perf_counter())
            return (found if comm.rank == 0 else None), rounds
        if rounds:
            comm.progress.timeline.span("round", f"round {rounds}", t_round, time.perf_counter())
        rounds += 1
        t_round = time.perf_counter()
        p = comm.progress          # "round n of ~m": rank 0 refines the estimate below
        # Every rank knows the total, so every rank can guess the rounds from the start; rank 0 refines it.
        p.set("select", rounds, p.total if p.phase == "select" else
              estimate_rounds(0, total, comm.size, samples, gather_limit, first_samples, True))
        # Every numpy step of a round runs on a thread (numpy lets go of the GIL), so the event loop
        # keeps answering heartbeats and credits however many windows and targets there are.
        data, is_sorted, parts, smp = await asyncio.to_thread(_local_round, data, is_sorted, windows, rounds,
                                                              samples, first_samples, rng)
        # 2. samples and sizes up the tree
        got = await tree_reduce(comm, {"s": smp, "m": [len(p) for p in parts]}, _cat, "median.samples")
        if comm.rank == 0:
            if windows_log is not None:
                windows_log.append(int(sum(got["m"])))
            p.total = estimate_rounds(rounds, max(got["m"]), comm.size, samples, gather_limit, first_samples,
                                      not is_sorted)
        # 3. pivots, or a request to gather small windows
        plan = None
        if comm.rank == 0:
            plan = await asyncio.to_thread(_plan, state, found, windows, got, gather_limit, is_sorted)
        plan = await broadcast(comm, plan, "median.pivots")
        # 4. counts (or the values themselves) up the tree
        reply = await asyncio.to_thread(_local_counts, parts, plan, is_sorted)
        summed = await tree_reduce(comm, reply, _sum_counts, "median.counts")
        if comm.rank == 0:
            await asyncio.to_thread(_narrow, state, found, windows, plan, summed)


async def _gather_all(comm: Communicator, values: np.ndarray, ranks: list[int],
                      windows_log: list[int] | None) -> dict[int, int] | None:
    """A job of at most ``gather_limit`` values: the gathering round the selection would end with, at once.

    Every rank knows the total, so none waits for windows, samples or pivots (four
    trees of messages) to learn that the whole dataset is one small window: the
    values go up the tree and rank 0 reads the targets off one sort.
    """
    t = time.perf_counter()
    got = await tree_reduce(comm, {"x": [values]}, _cat, "median.gather")
    comm.progress.timeline.span("round", "round 1", t, time.perf_counter())
    if got is None:
        return None
    data = np.sort(got["x"][0])
    if windows_log is not None:
        windows_log.append(len(data))
    return {k: int(data[k]) for k in ranks}


def estimate_rounds(done: int, window: int, size: int, samples: int, gather_limit: int, first_samples: int,
                    bracketing: bool) -> int:
    """A guess at the rounds the selection takes, from the largest open window: for progress display only.

    A gathering round is the last; a bracketing round keeps about 2 * 3 sigma of a
    ``size * first_samples`` sample; a many-pivot round cuts a window by about
    half the number of pivots (``size * samples``).
    """
    if window <= gather_limit:
        return done
    if bracketing:
        n = max(1, min(window, size * first_samples))
        window = int(window * 2 * (BRACKET_SIGMAS * np.sqrt(n) + 1) / n)
    else:
        window = 2 * window // max(1, size * samples)
    more = 1
    while window > gather_limit and more < 64:
        window = 2 * window // max(4, size * samples)
        more += 1
    return done + more


def _local_round(data: np.ndarray, is_sorted: bool, windows: list, rounds: int, samples: int, first_samples: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, bool, list[np.ndarray], list[np.ndarray]]:
    """This rank's share of a round: the values in each window (sorted from round 2 on) and their samples."""
    parts = [_in_window(data, is_sorted, lo, hi) for lo, hi in windows]
    if rounds > 1 and not is_sorted:          # the windows are narrow now: keep and sort just them
        data = np.sort(np.concatenate(parts))
        is_sorted = True
        parts = [_in_window(data, True, lo, hi) for lo, hi in windows]
    if is_sorted:
        smp = [_regular_sample(p, samples) for p in parts]
    else:
        smp = [_random_sample(p, first_samples, rng) for p in parts]
    return data, is_sorted, parts, smp


def _plan(state: dict, found: dict, windows: list, got: dict, gather_limit: int, is_sorted: bool) -> dict:
    """Rank 0: per window, its pivots, or whether to gather its values."""
    plan: dict[str, list] = {"p": [], "g": []}
    open_targets: dict[tuple, list[int]] = {}
    for k, s in state.items():
        if k not in found:
            open_targets.setdefault((s[0], s[1]), []).append(k - s[2])
    for w, sample, m in zip(windows, got["s"], got["m"]):
        gather = m <= gather_limit
        plan["g"].append(gather)
        if gather:
            plan["p"].append(np.zeros(0, np.int64))
        elif is_sorted:
            plan["p"].append(np.unique(sample))
        else:
            plan["p"].append(_bracket(np.sort(sample), m, open_targets[w]))
    return plan


def _local_counts(parts: list[np.ndarray], plan: dict, is_sorted: bool) -> dict[str, list]:
    reply: dict[str, list] = {"lt": [], "le": [], "x": []}
    for part, piv, gather in zip(parts, plan["p"], plan["g"]):
        lt, le = (piv, piv) if gather else _count(part, is_sorted, piv)
        reply["lt"].append(lt)
        reply["le"].append(le)
        reply["x"].append(part if gather else part[:0])
    return reply


def _bracket(sample: np.ndarray, m: int, targets: list[int]) -> np.ndarray:
    """Pivots from a sorted random sample: two that bracket the window ranks ``targets`` with high
    probability, and, for a few targets, the value a target's estimate lands on when the sample holds
    that value more than once.

    Heavily tied data (Zipf: the median's value is a run of ~250,000 of 10M) puts a target
    inside a run of equal values; a pivot at that value settles it in this round (fewer
    below it, more at or below it), where the bracket alone leaves the run as the next
    round's window. A sample without repeats (nearly-unique data) adds no pivot, so no pass.
    """
    n = len(sample)
    delta = int(BRACKET_SIGMAS * np.sqrt(n)) + 1
    lo = max(0, min(targets) * n // m - delta)
    hi = min(n - 1, -(-(max(targets) + 1) * n // m) + delta)
    picks = [sample[lo], sample[hi]]
    if len(targets) <= TIE_PIVOTS:
        for r in targets:
            v = sample[min(n - 1, r * n // m)]
            left, right = np.searchsorted(sample, v, "left"), np.searchsorted(sample, v, "right")
            if right - left > 1:
                picks.append(v)
    return np.unique(np.array(picks, dtype=sample.dtype))


def _sum_counts(a: dict, b: dict) -> dict:
    return {"lt": [p + q for p, q in zip(a["lt"], b["lt"])],
            "le": [p + q for p, q in zip(a["le"], b["le"])],
            "x": [np.concatenate((p, q)) for p, q in zip(a["x"], b["x"])]}


def _narrow(state: dict, found: dict, windows: list, plan: dict, summed: dict) -> None:
    """Rank 0: moves each open target's window to the pivot interval holding it.

    A gathered window is sorted once for all the targets inside it (it used to be sorted once per
    target: 15,000 quantiles took 8.6 s of event-loop time and got healthy workers declared lost)."""
    index = {w: i for i, w in enumerate(windows)}
    gathered: dict[int, np.ndarray] = {}
    for k, s in state.items():
        if k in found:
            continue
        i = index[(s[0], s[1])]
        r = k - s[2]                       # rank of the target inside its window
        if plan["g"][i]:
            if i not in gathered:
                gathered[i] = np.sort(summed["x"][i])
            found[k] = int(gathered[i][r])
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
