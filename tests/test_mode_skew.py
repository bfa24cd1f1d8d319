"""The mode's heavy-hitter pruning (``--prune``): exact on every shape, against ``collections.Counter``.

Pruning settles the mode from sampled candidates' exact counts and per-slot bounds
for every other value; whatever the bounds cannot rule out goes through the
shuffle.  When every value lies within ``DIRECT_SPAN`` it counts them all directly
instead.  These tests force it on (``always``) over the nasty datasets, both ways
(``DIRECT_SPAN`` 0 turns the direct count off), make its bounds fail on purpose (a
value that is nobody's candidate ties the best one; candidates that share a slot;
the candidate list cut to a few), and run ``auto`` on heavy-tailed Zipf data over
value ranges from 10^3 to the whole int64 range.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import I64_MAX, I64_MIN, nasty_datasets, ref_mode, run_op
from shardstats.worker.ops import counting, mode as mode_mod

NASTY = nasty_datasets()
I64 = st.integers(I64_MIN, I64_MAX)


def heavy_zipf(n: int, exponent: float, span: int | None, seed: int = 0, shards: int = 10) -> list[np.ndarray]:
    """zipf ranks mapped to scattered values in [0, span) (None: all of int64), as scripts/bench.py makes them."""
    rng = np.random.default_rng(seed)
    x = rng.zipf(exponent, n).astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(31)
    vals = x.view(np.int64) if span is None else (x % np.uint64(span)).astype(np.int64)
    return list(np.array_split(vals, shards))


def check(shards: list[np.ndarray], workers: int, params: dict, known_total: bool = False) -> list[dict]:
    allv = np.concatenate(shards)
    value, count, ties = ref_mode(allv)
    res, stats, _ = run_op("mode", shards, workers, {"ties": "all", **params}, known_total=known_total)
    assert (res["value"], res["count"], res["ties"], res["tie_count"]) == (value, count, ties, len(ties))
    keys = [s["distinct_keys"] for s in stats]
    if None not in keys:                        # counted by the owners: exact
        assert sum(keys) == len(set(allv.tolist()))
    else:                                       # pruned: no rank knows it, and every rank says so
        assert keys == [None] * workers and all(s["heavy"]["pruned"] for s in stats)
    return stats


@pytest.fixture
def no_direct(monkeypatch):
    """Candidates and slot bounds even where every value would fit the direct count."""
    monkeypatch.setattr(mode_mod, "DIRECT_SPAN", 0)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("name", sorted(NASTY))
@pytest.mark.parametrize("workers", [1, 3, 12])
def test_pruning_is_exact_on_the_nasty_datasets(monkeypatch, name, workers, direct):
    if not direct:
        monkeypatch.setattr(mode_mod, "DIRECT_SPAN", 0)
    stats = check(NASTY[name], workers, {"prune": "always", "chunk_bytes": 256})
    allv = np.concatenate(NASTY[name])
    if direct and int(allv.max()) - int(allv.min()) < mode_mod.DIRECT_SPAN:
        assert all(s["heavy"]["direct"] for s in stats)
        assert sum(s["distinct_keys"] for s in stats) == len(set(allv.tolist()))


@pytest.mark.parametrize("name", sorted(NASTY))
def test_never_is_the_plain_shuffle(name):
    stats = check(NASTY[name], 3, {"prune": "never", "chunk_bytes": 256})
    assert all("heavy" not in s for s in stats)


def test_a_value_nobody_sampled_ties_the_best_candidate(no_direct):
    """9 occurs once on each of 12 ranks (never twice in any sample: no candidate); 5 occurs 12 times on one
    rank (a candidate).  9's slot bound reaches 12, so its slot is counted exactly and both tie."""
    shards = [np.array([9, 100 + i], dtype=np.int64) for i in range(12)]
    shards[0] = np.concatenate((shards[0], np.full(12, 5, np.int64)))
    stats = check(shards, 12, {"prune": "always", "chunk_bytes": 256})
    assert stats[0]["heavy"]["open_slots"] >= 1 and stats[0]["heavy"]["best_candidate_count"] == 12


def test_a_value_nobody_sampled_beats_the_candidates(no_direct):
    shards = [np.array([9, 9 if i % 2 else 100 + i], dtype=np.int64) for i in range(12)]   # 9: 18 times
    shards[0] = np.concatenate((shards[0], np.full(5, 5, np.int64)))                       # 5: a candidate, 5
    res, stats, _ = run_op("mode", shards, 12, {"prune": "always", "chunk_bytes": 256})
    assert (res["value"], res["count"], res["tie_count"]) == (9, 18, 1)


def _same_slot(count: int) -> list[int]:
    """``count`` small values that share one slot (so only one of them can be that slot's candidate)."""
    vals = np.arange(1, 200_000, dtype=np.int64)
    slots = counting.slot_of(vals)
    top = np.bincount(slots).argmax()
    return vals[slots == top][:count].tolist()


def test_candidates_sharing_a_slot_are_still_exact(no_direct):
    a, b, c = _same_slot(3)
    for counts in ((50, 50, 3), (50, 49, 60), (7, 50, 50)):   # ties, the unplaced one wins, the placed one loses
        shards = [np.repeat(np.array([a, b, c], dtype=np.int64), counts), np.arange(1000, 1400, dtype=np.int64)]
        check(shards, 3, {"prune": "always", "chunk_bytes": 256})


def test_a_cut_candidate_list_is_still_exact(monkeypatch, no_direct):
    monkeypatch.setattr(mode_mod, "PRUNE_CANDIDATES", 3)
    rng = np.random.default_rng(4)
    shards = [rng.integers(0, 40, 3000) for _ in range(5)]
    check(shards, 4, {"prune": "always", "chunk_bytes": 256})


@pytest.mark.parametrize("exponent", [1.1, 1.3, 1.5, 2.0])
@pytest.mark.parametrize("span", [10 ** 3, 10 ** 6, 10 ** 12, None])
def test_auto_prunes_heavy_tailed_zipf_exactly(monkeypatch, exponent, span):
    monkeypatch.setattr(mode_mod, "PRUNE_MIN_VALUES", 1000)
    stats = check(heavy_zipf(60_000, exponent, span, seed=int(exponent * 10)), 5, {"chunk_bytes": 4096},
                  known_total=True)            # chunks smaller than the job: not the tree
    assert all(s["heavy"]["pruned"] and s["heavy"]["direct"] == (span == 10 ** 3) for s in stats)


def test_auto_leaves_nearly_unique_and_small_jobs_alone(monkeypatch):
    rng = np.random.default_rng(1)
    uniq = list(np.array_split(rng.permutation(60_000).astype(np.int64), 6))
    monkeypatch.setattr(mode_mod, "PRUNE_MIN_VALUES", 1000)
    stats = check(uniq, 4, {"chunk_bytes": 4096}, known_total=True)             # no candidates: one allreduce, then the shuffle
    assert all(s["heavy"]["pruned"] is False for s in stats)
    monkeypatch.setattr(mode_mod, "PRUNE_MIN_VALUES", 10 ** 9)
    stats = check(heavy_zipf(20_000, 1.3, 10 ** 12), 4, {"chunk_bytes": 4096}, known_total=True)   # too small a job: not tried
    assert all("heavy" not in s for s in stats)


@pytest.mark.parametrize("direct", [True, False])
def test_small_spans_near_the_int64_ends(monkeypatch, direct):
    """The direct count's offsets from the smallest value, at either end of the int64 range."""
    if not direct:
        monkeypatch.setattr(mode_mod, "DIRECT_SPAN", 0)
    for base in (I64_MIN, I64_MAX - 300):
        rng = np.random.default_rng(5)
        shards = [base + rng.integers(0, 301, 500) for _ in range(3)] + [np.zeros(0, np.int64)]
        check(shards, 4, {"prune": "always", "chunk_bytes": 256})


def test_int64_extremes_as_heavy_hitters():
    shards = [np.array([I64_MIN] * 40 + [I64_MAX] * 40 + [0, -1], dtype=np.int64),
              np.array([I64_MAX] * 3 + [I64_MIN + 1] * 43, dtype=np.int64), np.zeros(0, np.int64)]
    check(shards, 3, {"prune": "always", "chunk_bytes": 256})
    check(shards, 5, {"prune": "always", "chunk_bytes": 256, "ties": "smallest"})


def test_slot_counts_match_counter():
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.integers(I64_MIN, I64_MAX, 5000, dtype=np.int64, endpoint=True),
                        np.repeat(rng.integers(-50, 50, 30), 40), [I64_MIN, I64_MAX, 0, 1]]).astype(np.int64)
    truth = Counter(v.tolist())
    cands = np.array([x for x, _ in truth.most_common(200)] + [I64_MIN, I64_MAX, 0, 1], dtype=np.int64)
    table, placed = counting.heavy_table(cands)
    bins = counting.slot_counts(v, table)
    assert bins.sum() == len(v)
    assert bins[2 * counting.slot_of(placed) + 1].tolist() == [truth[x] for x in placed.tolist()]
    unplaced = np.setdiff1d(v, placed)
    assert np.bincount(counting.slot_of(v[np.isin(v, unplaced)]), minlength=counting.SLOTS).tolist() == \
        bins[0::2].tolist()
    left = counting.in_slots(v, table, np.arange(counting.SLOTS))
    assert Counter(left.tolist()) == Counter({x: truth[x] for x in unplaced.tolist()})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.one_of(I64, st.integers(-3, 3), st.sampled_from([I64_MIN, I64_MAX])), max_size=40),
                min_size=1, max_size=6).filter(any),
       st.integers(1, 8), st.sampled_from(["smallest", "all"]))
def test_pruning_property(shards, workers, ties):
    arrays = [np.array(s, dtype=np.int64) for s in shards]
    value, count, tied = ref_mode(np.concatenate(arrays))
    for span in (mode_mod.DIRECT_SPAN, 0):      # the direct count where it fits, then the candidates always
        mode_mod.DIRECT_SPAN, saved = span, mode_mod.DIRECT_SPAN
        try:
            res, _, _ = run_op("mode", arrays, workers, {"prune": "always", "ties": ties, "chunk_bytes": 256})
        finally:
            mode_mod.DIRECT_SPAN = saved
        limit = 100_000 if ties == "all" else 10
        assert (res["value"], res["count"], res["ties"], res["tie_count"]) == (value, count, tied[:limit], len(tied))


def test_the_local_count_hashes_wide_repeated_data():
    """auto: dense by the span, else a hash count (Polars, when installed) where a sample is mostly repeats,
    else the sort; the counts are the same whichever runs."""
    rng = np.random.default_rng(8)
    keys = rng.integers(I64_MIN, I64_MAX, 300, dtype=np.int64)
    repeated = keys[rng.integers(0, 300, 200_000)]
    assert counting.choose_local(rng.integers(0, 1000, 200_000), 0.01) == "dense"
    assert counting.choose_local(repeated, 0.9) == "sort"
    assert counting.choose_local(repeated, counting.sample_share(repeated, 65536)) == (
        "hash" if counting.hash_ready() else "sort")
    truth = Counter(repeated.tolist())
    for how in ("hash", "sort") if counting.hash_ready() else ("sort",):
        v, c, used = counting.count_values(repeated.copy(), how)
        assert used == how and dict(zip(v.tolist(), c.tolist())) == truth and (np.diff(v) > 0).all()


@pytest.mark.parametrize("workers", [1, 4])
def test_the_shuffle_after_a_hash_count_is_exact(workers):
    """Shares above the sample size hash (a smaller share, or none, sorts: every value is its sample)."""
    rng = np.random.default_rng(9)
    keys = np.concatenate((rng.integers(I64_MIN, I64_MAX, 200, dtype=np.int64), [I64_MIN, I64_MAX]))
    shards = [keys[rng.integers(0, len(keys), 70_000)] for _ in range(3)] + [np.zeros(0, np.int64)]
    stats = check(shards, workers, {"prune": "never", "chunk_bytes": 4096})
    ran = [s["counting"]["local"] for s in stats]
    assert ran[:3] == ["hash" if counting.hash_ready() else "sort"] * min(3, workers)


def test_samples_take_every_position_once_at_most():
    v = np.arange(1_000_003, dtype=np.int64)
    s = counting.sample(v, 65536)
    assert len(s) == 65536 and len(np.unique(s)) == 65536 and s.max() < len(v)
    assert counting.sample(v[:10], 65536).tolist() == list(range(10))
