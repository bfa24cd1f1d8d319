"""Exact counts by owner: the mode's shuffle as a building block for topk, distinct and describe.

After ``owned_counts`` every distinct value of the dataset sits on exactly one rank
(the one the stable hash picks) with its exact total count, so any statistic of the
counts (the top K, the number of distinct values, the mode) is final per rank and
only a small partial result has to travel, up a tree.

This is the mode's scheme (worker/ops/mode.py) written against the shuffle's
public interface only: values seen once locally travel as their bare 8 bytes
("s"), repeated ones as (value, count) pairs ("v", "c"); local counting is skipped
when a sample says the data is nearly unique (``counting.should_combine``).  ``dedup``
ships distinct values only (no counts), which is all the exact distinct count needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shardstats.lazy import numpy as np

from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.data.partition import partition_chunks
from shardstats.worker.comm.shuffle import ShuffleConfig, ShuffleStats, chunk_pieces, shuffle
from shardstats.worker import memory
from shardstats.worker.memory import Releaser, concat_releasing
from shardstats.worker.ops.counting import merge_repeats, run_lengths
from shardstats.worker.ops.counting import should_combine
from shardstats.worker.steps import numpy_step


def empty() -> np.ndarray:
    """A new empty int64 array (made when needed: the client imports this module without numpy, shardstats/lazy.py)."""
    return np.zeros(0, dtype=np.int64)


@dataclass
class Owned:
    """What this rank owns after the shuffle, with exact total counts.

    The values seen more than once come with their counts (``repeated``, ascending,
    and ``counts``); those seen exactly once are only counted (``distinct``) and found
    when asked (``once``). On nearly-unique data they are almost all the data, and a
    count per value (what this held before) doubled the owner's memory and made topk
    2.5x slower than the mode on the same shuffle; this is the mode's own merge.
    """
    repeated: np.ndarray
    counts: np.ndarray
    distinct: int
    combined: bool                  # whether this rank counted locally before sending
    shuffle: ShuffleStats
    bare: np.ndarray = field(default_factory=empty)     # the bare values received, sorted
    paired: np.ndarray = field(default_factory=empty)   # values that arrived with a count (repeated)

    @property
    def size(self) -> int:
        """Rows this rank holds (its sorted bare values and its repeated ones): what a step over them scans."""
        return len(self.bare) + len(self.repeated)

    @property
    def once_count(self) -> int:
        return self.distinct - len(self.repeated)

    def once(self, m: int) -> np.ndarray:
        """The ``m`` smallest values seen exactly once (ascending).

        The sorted bare values are read a block at a time from the small end until
        ``m`` are found: a topk of 100 over nearly-unique data looks at one block, where
        flags and a copy of the whole owned array (10 bytes a value) used to be made.
        """
        s, found, have = self.bare, [], 0
        start = 0
        while have < m and start < len(s):
            stop = min(len(s), start + max(ONCE_BLOCK, 2 * (m - have)))
            v = _alone(s, start, stop)
            if len(self.paired):
                v = v[~np.isin(v, self.paired)]
            found.append(v[:m - have])
            have += len(found[-1])
            start = stop
        return np.concatenate(found) if found else empty()


ONCE_BLOCK = 1 << 16     # sorted values ``Owned.once`` examines at a time


def _alone(s: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The values of sorted ``s[start:stop]`` that occur exactly once in all of ``s`` (their neighbours
    just outside the slice count)."""
    lo, hi = max(0, start - 1), min(len(s), stop + 1)
    w = s[lo:hi]
    alone = np.ones(len(w), dtype=bool)
    eq = w[1:] == w[:-1]
    alone[1:] &= ~eq
    alone[:-1] &= ~eq
    a, b = start - lo, stop - lo
    return w[a:b][alone[a:b]]


def sort_owned(values: np.ndarray) -> np.ndarray:
    """``values`` sorted: in place when the op may write to it (the data is the op's), else a sorted copy
    (a reader may hand over a read-only buffer it does not copy)."""
    if values.flags.writeable:
        values.sort()
        return values
    return np.sort(values)


def local_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and counts of this rank's data (sorting ``values`` in place when writeable)."""
    return run_lengths(sort_owned(values))


def pack(w: int, cfg: ShuffleConfig, singles: np.ndarray, pvals: np.ndarray | None = None,
         pcounts: np.ndarray | None = None, owned: bool = False) -> list[list[dict]]:
    """Outgoing chunks per rank: bare values as "s" pieces, (value, count) pairs as "v"/"c" pieces.

    The rows go straight into the chunks (``partition_chunks``); with ``owned`` (the
    arrays are this call's to consume: counted copies) their memory is given back as
    they are copied, so they and the chunks never coexist whole.
    """
    pvals = empty() if pvals is None else pvals
    pcounts = empty() if pcounts is None else pcounts
    if cfg.to_one:                       # gather (the all-to-one design, for comparison) or a tiny job
        return [chunk_pieces({"s": singles}, cfg.chunk_bytes) + chunk_pieces({"v": pvals, "c": pcounts},
                                                                             cfg.chunk_bytes) if r == 0 else []
                for r in range(w)]
    freed = [Releaser(a).upto for a in (singles, pvals, pcounts)] if owned else []
    s_chunks = partition_chunks(w, ("s",), (singles,), cfg.chunk_bytes, freed[0] if owned else None)
    m_chunks = partition_chunks(w, ("v", "c"), (pvals, pcounts), cfg.chunk_bytes,
                                (lambda row: (freed[1](row), freed[2](row))) if owned else None)
    return [s + m for s, m in zip(s_chunks, m_chunks)]


def pack_counts(w: int, cfg: ShuffleConfig, uv: np.ndarray, uc: np.ndarray) -> list[list[dict]]:
    """Locally counted data: a value seen once costs its 8 bytes, a repeated one a pair."""
    one = uc == 1
    return pack(w, cfg, uv[one], uv[~one], uc[~one], owned=True)


class _Inbox:
    """Collects what the shuffle delivers to this rank."""

    def __init__(self) -> None:
        self.singles: list[np.ndarray] = []
        self.pvals: list[np.ndarray] = []
        self.pcounts: list[np.ndarray] = []

    @property
    def size(self) -> int:
        """Values and pairs received so far."""
        return sum(map(len, self.singles)) + sum(map(len, self.pvals))

    def __call__(self, src: int, piece: dict) -> None:
        if "s" in piece:
            self.singles.append(piece["s"])
        else:
            self.pvals.append(piece["v"])
            self.pcounts.append(piece["c"])

    def owned(self, combined: bool, st: ShuffleStats) -> Owned:
        """Everything received, merged as the mode's owner does (``counting.merge_repeats``)."""
        s = concat_releasing(self.singles) if self.singles else empty()
        self.singles = []
        s.sort()
        pv = np.concatenate(self.pvals) if self.pvals else empty()
        pc = np.concatenate(self.pcounts).astype(np.int64) if self.pcounts else empty()
        self.pvals, self.pcounts = [], []
        rv, rc, distinct = merge_repeats(s, pv, pc)
        return Owned(rv, rc, distinct, combined, st, bare=s, paired=pv)

    def distinct(self) -> int:
        """How many distinct values were received (a sort and one comparison pass; no index arrays)."""
        pieces = self.singles + self.pvals
        self.singles, self.pvals, self.pcounts = [], [], []     # so each piece goes as it is copied
        s = concat_releasing(pieces) if pieces else empty()
        if len(s) == 0:
            return 0
        s.sort()
        return 1 + int(np.count_nonzero(s[1:] != s[:-1]))


async def owned_counts(comm: Communicator, cfg: ShuffleConfig, values: np.ndarray | None = None,
                       counted: tuple[np.ndarray, np.ndarray] | None = None, combine: str = "auto") -> Owned:
    """Shuffles by key; returns this rank's owned values with their exact counts.

    Give either the raw ``values`` (counted locally first unless ``combine`` or a
    sample says it does not pay) or ``counted`` = (distinct values, counts) already.
    """
    def prepare() -> tuple[list, bool]:
        if counted is not None:
            return pack_counts(comm.size, cfg, *counted), True
        assert values is not None
        if combine == "always" or (combine == "auto" and should_combine(values)):
            return pack_counts(comm.size, cfg, *local_counts(values)), True
        return pack(comm.size, cfg, values, owned=memory.owned(values)), False

    outgoing, combined = await numpy_step(len(values if counted is None else counted[0]), prepare)
    inbox = _Inbox()
    st = await shuffle(comm, outgoing, inbox, cfg)
    del outgoing
    return await numpy_step(inbox.size, inbox.owned, combined, st)


async def owned_distinct(comm: Communicator, cfg: ShuffleConfig, values: np.ndarray,
                         combine: str = "auto") -> tuple[int, bool, ShuffleStats]:
    """Shuffles distinct values only (no counts); returns how many distinct values this rank owns."""
    def prepare() -> tuple[list, bool]:
        if combine == "always" or (combine == "auto" and should_combine(values)):
            return pack(comm.size, cfg, local_counts(values)[0], owned=True), True
        return pack(comm.size, cfg, values, owned=memory.owned(values)), False

    outgoing, combined = await numpy_step(len(values), prepare)
    inbox = _Inbox()
    st = await shuffle(comm, outgoing, inbox, cfg)
    del outgoing
    owned = await numpy_step(inbox.size, inbox.distinct)
    return owned, combined, st
