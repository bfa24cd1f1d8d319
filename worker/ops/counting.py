"""Vectorised counting: the local combiner of the mode and its merge step, by a sort or a dense ``bincount``.

Which way to count is chosen per array from its range (``choose_counting``):

``dense``  ``np.bincount`` over [min, max] when that span is at most ``n / 8``:
           one pass, no comparisons; 2-2.5x faster than the sort at n/16-n/64.
``sort``   ``np.sort`` (an AVX-512 sort in numpy 2 here, ~200 M values/s) and
           run lengths: the fallback for any range.
``hash``   a hash count (Polars' ``value_counts``, when Polars is installed).
           Its cost follows the distinct values (the table), the sort's the
           values: with ten workers on two cores, per 10M values, 0.24 CPU-s
           against the sort's 0.55 at 10^4 distinct values, even at 10^5, and
           twice the sort's at 10^6.  ``auto`` (``choose_local``) takes it where
           the range is too wide for ``dense`` and a sample is mostly repeats
           (``HASH_BELOW``).

Every strategy returns the distinct values ascending with their counts, so the
callers (and the shuffle's sorted partitions) do not care which one ran.
"""
from __future__ import annotations

from shardstats.lazy import numpy as np

COUNTINGS = ("auto", "sort", "dense", "hash")
DENSE_SPAN_DIVISOR = 8      # dense when max - min < n / 8 (measured break-even between n/8 and n/4)
DENSE_MIN_SPAN = 4096       # small arrays: a few KiB of bins are always cheap


SPAN_PROBE = 4096           # values looked at (evenly spaced) before the exact min/max passes
COMBINE_SAMPLE = 65536      # values sampled to decide whether local counting pays (``should_combine``)
COMBINE_BELOW = 0.9         # combine when fewer than this share of sampled values are distinct
HASH_BELOW = 0.4            # auto hashes where fewer than this share of sampled values are distinct


def hash_ready() -> bool:
    """Whether the hash count can run here (Polars, the ``fast`` extra, is installed)."""
    global _HASH_READY
    if _HASH_READY is None:
        import importlib.util
        _HASH_READY = importlib.util.find_spec("polars") is not None
    return _HASH_READY


_HASH_READY: bool | None = None


def sample(values: np.ndarray, size: int) -> np.ndarray:
    """A copy of ``size`` values (all of them when fewer): one at a random position in each of ``size`` equal
    strides, so no position twice and no order of the data (sorted, round-robin) can bias it.  O(size):
    ``Generator.choice(replace=False)`` took 7-25 ms of a 3M-value share here."""
    n = len(values)
    if n <= size:
        return np.array(values, dtype=np.int64)
    step = n // size
    pos = np.arange(size, dtype=np.int64) * step + np.random.default_rng(n).integers(0, step, size)
    return values[pos]


def sample_share(values: np.ndarray, size: int) -> float:
    """The share of distinct values among ``size`` sampled at random (all of them when fewer)."""
    if len(values) == 0:
        return 1.0
    smp = sample(values, size)
    smp.sort()
    return len(run_lengths(smp)[0]) / len(smp)


def should_combine(values: np.ndarray) -> bool:
    """Whether to count locally before a shuffle (the mode, distinct and the keyed combiner ask).  Local
    counting costs a sort; it pays only when values repeat.  A random sample tells.

    Without it every value travels as 8 bytes, duplicates included, and the owner
    counts them: for nearly-unique data that is the same traffic and half the work.
    """
    return len(values) <= COMBINE_SAMPLE or sample_share(values, COMBINE_SAMPLE) < COMBINE_BELOW


def choose_local(values: np.ndarray, share: float) -> str:
    """``auto``'s local count: ``dense`` by the span (``choose_counting``), else ``hash`` where the sampled
    ``share`` of distinct values is below ``HASH_BELOW`` and Polars is installed, else ``sort``."""
    how = choose_counting(values)
    if how == "sort" and share < HASH_BELOW and hash_ready():
        return "hash"
    return how


def choose_counting(values: np.ndarray, weight: int | None = None) -> str:
    """``dense`` when the values' span is small next to their number (``weight``, default ``len``), else ``sort``.

    Two passes (min, max) decide ``dense`` exactly: no sample can miss an outlier
    that would blow up the bins.  A few thousand evenly spaced values go first:
    their span is a lower bound of the whole span, so when it is already too wide
    the answer is ``sort`` without the passes (5.7 ms of a 10M-value share's ~65 ms
    count on Zipf data, where the span is the whole int64 range).
    """
    n = len(values) if weight is None else weight
    if len(values) < 2:
        return "sort"
    limit = max(DENSE_MIN_SPAN, n // DENSE_SPAN_DIVISOR)
    if len(values) > SPAN_PROBE:
        probe = values[:: len(values) // SPAN_PROBE]
        if int(probe.max()) - int(probe.min()) >= limit:
            return "sort"
    span = int(values.max()) - int(values.min())
    return "dense" if span < limit else "sort"


DENSE_MAX_FACTOR = 4         # a forced ``dense`` over more than max(4 n, 64 Ki) bins sorts instead


def dense_fits(span: int, n: int) -> bool:
    """Whether bins for ``span`` values stay within a small multiple of the data (also when forced)."""
    return span <= max(1 << 16, DENSE_MAX_FACTOR * n)


def _span(values: np.ndarray) -> int:
    return int(values.max()) - int(values.min()) + 1 if len(values) else 0


def dense_bins(lo: int, span: int, *pairs: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
    """Counts per value lo .. lo+span-1 summed over (values, counts or None for ones) pairs, as int64.

    The callers keep ``span`` within ``dense_fits``: the bins are never much bigger than the data.
    """
    bins = np.zeros(span, dtype=np.int64)
    for values, counts in pairs:
        if len(values):
            # float64 weights are exact: every sum is a count of values, far below 2**53
            b = np.bincount(values - np.int64(lo), weights=counts, minlength=span)
            bins += b if counts is None else b.astype(np.int64)
    return bins


def dense_counts(values: np.ndarray, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    lo = int(values.min())
    bins = dense_bins(lo, int(values.max()) - lo + 1, (values, counts))
    keys = np.flatnonzero(bins)
    return keys + np.int64(lo), bins[keys]


def count_values(values: np.ndarray, counting: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """(distinct values ascending, their counts, the strategy used).  May reorder ``values`` in place if writable."""
    if counting == "auto":
        counting = choose_counting(values)
    if len(values) == 0:
        return values[:0].astype(np.int64), np.zeros(0, dtype=np.int64), counting
    if counting == "dense" and dense_fits(_span(values), len(values)):
        return (*dense_counts(values), counting)
    if counting == "dense":           # asked for on a range too wide for bins: the sort does it
        counting = "sort"
    if counting == "hash":
        import polars as pl          # the `fast` extra
        vc = pl.Series("v", values).value_counts(sort=False)
        keys = vc["v"].to_numpy()
        order = np.argsort(keys)
        return keys[order], vc["count"].to_numpy()[order].astype(np.int64), counting
    if counting != "sort":
        raise ValueError(f"unknown counting {counting!r} (choose from {', '.join(COUNTINGS)})")
    if values.flags.writeable:
        values.sort()
    else:                           # a zero-copy view of a reader's buffer (the .txt fast path)
        values = np.sort(values)
    v, c = run_lengths(values)
    return v, c, counting


def sum_counts(values: np.ndarray, counts: np.ndarray, counting: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """Adds up the counts of equal values, by the same choice as ``count_values``: (values ascending, sums, strategy)."""
    if counting == "auto":
        counting = choose_counting(values, int(counts.sum()) if len(counts) else 0)
    if counting == "dense" and len(values) and dense_fits(_span(values), len(values)):
        return (*dense_counts(values, counts), counting)
    if counting != "hash":
        counting = "sort"
    v, c = sum_by_value(values, counts)
    return v, c, counting


def run_lengths(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how often each occurs (np.unique without its overhead)."""
    n = len(sorted_values)
    if n == 0:
        return sorted_values[:0], np.zeros(0, dtype=np.int64)
    changes = neighbour_steps(sorted_values)
    starts = np.empty(len(changes) + 1, dtype=np.int64)      # no n-long concatenation: 23% less time
    starts[0] = 0
    np.add(changes, 1, out=starts[1:])
    counts = np.diff(starts, append=n)
    return sorted_values[starts], counts


RUN_BLOCK = 1 << 20     # comparisons per pass: 1 MiB of booleans, not one per value of the whole array


def neighbour_steps(sorted_values: np.ndarray, equal: bool = False) -> np.ndarray:
    """The indices i where ``sorted_values[i + 1]`` differs from (``equal``: repeats) ``sorted_values[i]``.

    Where they are few (a merge's repeats, a count's runs of much-repeated values)
    the comparison goes a block at a time: the whole-array one would hold a boolean
    per value (an eighth of the data) next to the data at the count's and the merge's
    peak.  Where the first block finds many, the result outweighs those booleans and
    joining per-block pieces would copy it: then the whole array at once.
    """
    cmp = np.equal if equal else np.not_equal
    n = len(sorted_values)
    found = []
    for i in range(0, n - 1, RUN_BLOCK):
        j = min(n - 1, i + RUN_BLOCK)
        idx = np.flatnonzero(cmp(sorted_values[i + 1:j + 1], sorted_values[i:j]))
        if i == 0 and j < n - 1 and len(idx) > RUN_BLOCK // 16:
            return np.flatnonzero(cmp(sorted_values[1:], sorted_values[:-1]))
        idx += i
        found.append(idx)
    if len(found) == 1:
        return found[0]
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def sum_by_value(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adds up the counts of equal values: (distinct values ascending, summed counts)."""
    if len(values) == 0:
        return values[:0], counts[:0].astype(np.int64)
    order = np.argsort(values, kind="stable")
    v = values[order]
    starts = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
    return v[starts], np.add.reduceat(counts[order].astype(np.int64), starts)


def repeated_runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Only the values that occur more than once (with their counts), and the number of distinct values.

    One comparison pass; the index work is proportional to the repeats, which is
    what makes the owner's merge cheap when almost every value is unique.
    """
    n = len(sorted_values)
    if n < 2:
        return sorted_values[:0], np.zeros(0, dtype=np.int64), n
    eq = neighbour_steps(sorted_values, equal=True)                 # i: value i+1 repeats value i
    if len(eq) == 0:
        return sorted_values[:0], np.zeros(0, dtype=np.int64), n
    first = np.concatenate(([True], eq[1:] != eq[:-1] + 1))        # start of each run of repeats
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(eq))) + 1
    return sorted_values[eq[starts]], counts.astype(np.int64), n - len(eq)



def merge_repeats(bare: np.ndarray, pvals: np.ndarray, pcounts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """An owner's merge: (values seen more than once, ascending; their exact totals; the number of distinct values).

    ``bare`` are sorted values that count 1 each (the same value may come from several
    senders); ``pvals``/``pcounts`` are (value, count) pairs. Only the repeats are
    counted (``repeated_runs``), and each pair's occurrences among the bare values
    are folded into its total, so nearly-unique data costs its sort and little more.
    Both the mode's owner and topk/describe/distinct's (worker/ops/keyed.py) merge this way.
    """
    rv, rc, distinct = repeated_runs(bare)
    if len(pvals) == 0:
        return rv, rc, distinct
    pv, pc = sum_by_value(pvals, pcounts)
    lo, hi = np.searchsorted(bare, pv, "left"), np.searchsorted(bare, pv, "right")
    distinct += int(np.count_nonzero(hi == lo))
    keep = ~np.isin(rv, pv)
    v = np.concatenate((rv[keep], pv))
    c = np.concatenate((rc[keep], pc + (hi - lo)))
    order = np.argsort(v)
    return v[order], c[order].astype(np.int64), distinct

REPEAT_SAMPLE_SHIFT = 58          # a value is sampled when the top 6 bits of its hash are 0: 1/64 of them
_FIBONACCI = 0x9E3779B97F4A7C15   # 2**64 / golden ratio, multiplicative hashing's (an int: no numpy at import)
_PROBE_BLOCK = 1 << 16            # values hashed per step: the temporaries stay in cache


def repeat_share(values: np.ndarray) -> float:
    """The share of ``values`` that repeat another one, estimated from every copy of ~1/64 of the distinct values.

    A random sample of positions cannot see repeats spread thinly: with each value
    occurring ~10 times among 10M, 65,536 random positions look 97% distinct. Picking
    values by a hash of the value keeps all the copies of the picked ones, so the
    sample's repeat share estimates the whole's. One multiply and shift a value, in
    cache-sized blocks: 24-28 ms on a 10M-value share (a HyperLogLog pass took 240).
    """
    if len(values) == 0:
        return 0.0
    u = values.view(np.uint64)
    h = np.empty(min(_PROBE_BLOCK, len(values)), dtype=np.uint64)
    picked = []
    for start in range(0, len(values), _PROBE_BLOCK):
        hh = h[:len(u[start:start + _PROBE_BLOCK])]
        np.multiply(u[start:start + _PROBE_BLOCK], _FIBONACCI, out=hh)
        np.right_shift(hh, np.uint64(REPEAT_SAMPLE_SHIFT), out=hh)
        picked.append(values[start:start + _PROBE_BLOCK][hh == 0])
    sample = np.concatenate(picked)
    if len(sample) == 0:
        return 0.0
    sample.sort()
    return 1.0 - len(run_lengths(sample)[0]) / len(sample)


# ---- heavy hitters: exact counts of a few known values, and per-slot bounds for all the others ----------

SLOT_BITS = 14                    # 16,384 slots: per-slot bounds stay far below a heavy hitter's count
SLOTS = 1 << SLOT_BITS
_SLOT_BLOCK = 1 << 18             # values per step of the slot pass: its temporaries stay in cache


def slot_of(values: np.ndarray) -> np.ndarray:
    """Each value's slot (int64 in [0, SLOTS)): the top bits of a multiplicative (Fibonacci) hash."""
    h = values.view(np.uint64) * np.uint64(_FIBONACCI)
    return (h >> np.uint64(64 - SLOT_BITS)).view(np.int64)


def heavy_table(candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the value each slot checks for, the candidates given a slot), from candidates heaviest first.

    A candidate whose slot a heavier one holds gets none: it is counted with the
    slot's other values, which only loosens that slot's bound.  A slot without a
    candidate checks for a value whose own slot is another one (0, or 1 in slot 0),
    so no value can ever match it.
    """
    table = np.zeros(SLOTS, dtype=np.int64)
    table[0] = 1                      # slot_of(1) = 0x9E37: 1 never lands in slot 0, 0 lands only there
    if len(candidates) == 0:
        return table, candidates[:0]
    _, first = np.unique(slot_of(candidates), return_index=True)
    placed = candidates[np.sort(first)]
    table[slot_of(placed)] = placed
    return table, placed


def slot_counts(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per slot s: ``[2 s]`` values in s other than ``table[s]``, ``[2 s + 1]`` occurrences of ``table[s]``.

    One pass a block at a time (multiply, shift, look up, compare, one ``bincount``):
    ~4 ns a value here, where a sort-based count of heavy-tailed data took ~30 and a
    hash count (Polars) ~16.  No value is ever compared with another slot's candidate.
    """
    bins = np.zeros(2 * SLOTS, dtype=np.int64)
    if len(values) == 0:
        return bins
    u = values.view(np.uint64)
    m = min(_SLOT_BLOCK, len(values))
    hb, tb, eq = np.empty(m, dtype=np.uint64), np.empty(m, dtype=np.int64), np.empty(m, dtype=bool)
    for start in range(0, len(values), _SLOT_BLOCK):
        x = u[start:start + _SLOT_BLOCK]
        k = len(x)
        h, t, e = hb[:k], tb[:k], eq[:k]
        np.multiply(x, np.uint64(_FIBONACCI), out=h)
        np.right_shift(h, np.uint64(64 - SLOT_BITS), out=h)
        s = h.view(np.int64)
        table.take(s, out=t, mode="clip")       # every slot is in range; "raise" would buffer a copy
        np.equal(t, values[start:start + _SLOT_BLOCK], out=e)
        np.left_shift(s, 1, out=s)
        np.bitwise_or(s, e, out=s)
        bins += np.bincount(s, minlength=2 * SLOTS)
    return bins


def candidate_counts(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Occurrences of each of a few ``candidates``: one comparison a value per candidate, a block at a time
    (in cache), ~0.3 ns a value each here -- a dozen of them cost what one ``slot_counts`` pass does."""
    out = np.zeros(len(candidates), dtype=np.int64)
    if len(values) == 0 or len(candidates) == 0:
        return out
    eq = np.empty(min(_SLOT_BLOCK, len(values)), dtype=bool)
    for start in range(0, len(values), _SLOT_BLOCK):
        x = values[start:start + _SLOT_BLOCK]
        e = eq[:len(x)]
        for i, c in enumerate(candidates.tolist()):     # a few candidates, not the values
            np.equal(x, c, out=e)
            out[i] += np.count_nonzero(e)
    return out


def in_slots(values: np.ndarray, table: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """The values that fall in ``slots`` and are not their slot's candidate (in order), a block at a time."""
    wanted = np.zeros(SLOTS, dtype=bool)
    wanted[slots] = True
    out = []
    for start in range(0, len(values), _SLOT_BLOCK):
        x = values[start:start + _SLOT_BLOCK]
        s = slot_of(x)
        keep = wanted.take(s)
        keep &= table.take(s) != x
        out.append(x[keep])
    return np.concatenate(out) if out else values[:0].astype(np.int64)


def span_counts(values: np.ndarray, lo: int, span: int) -> np.ndarray:
    """Occurrences of each value lo .. lo+span-1 (every value must lie there), a block at a time: one
    subtraction and one ``bincount`` a value, no n-long temporary."""
    if len(values) and 0 <= lo <= span:      # small non-negative values (ranks, codes): their own offsets,
        return np.bincount(values, minlength=lo + span)[lo:]    # no subtraction (1.2 ns a value, not 1.4)
    bins = np.zeros(span, dtype=np.int64)
    if len(values) == 0:
        return bins
    buf = np.empty(min(_SLOT_BLOCK, len(values)), dtype=np.int64)
    for start in range(0, len(values), _SLOT_BLOCK):
        x = values[start:start + _SLOT_BLOCK]
        b = buf[:len(x)]
        np.subtract(x, np.int64(lo), out=b)      # wraps only where the true difference would not fit: never here
        bins += np.bincount(b, minlength=span)
    return bins
