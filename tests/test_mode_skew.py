"""The mode's heavy-hitter pruning (``--prune``): exact on every shape, against ``collections.Counter``.

Pruning settles the mode from sampled candidates and never shuffles what it can rule
out.  Four ways, each forced here in turn (``PATHS``) over the nasty datasets, with
the load facts combined as the coordinator does (``known_total``) and by the op's own
allreduce: the heaviest few candidates counted exactly when they beat everything else
together ("top"; forced on with no margin it often does not settle and falls back);
every value counted when all lie within ``DIRECT_SPAN`` ("direct"); candidates and
per-slot bounds ("slots").  The bounds are made to fail on purpose (a value that is
nobody's candidate ties the best one; candidates that share a slot; the candidate list
cut to a few), the direct count is tried at the edges of its span and of int64, and
``auto`` runs on heavy-tailed Zipf data over value ranges from 10^3 to all of int64.
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
    """Candidates and slot bounds even where every value would fit the direct count or a few top counts."""
    use_path(monkeypatch, "slots")


PATHS = ("top", "top-forced", "direct", "slots")


def use_path(monkeypatch, path: str) -> None:
    """Pruning's ways narrowed to ``path`` (top falls back to the slots when it cannot settle the job)."""
    if path == "top-forced":                   # the heaviest candidate alone, whatever the estimates say
        monkeypatch.setattr(mode_mod, "TOP_MARGIN", 0.0)
    if path in ("direct", "slots"):
        monkeypatch.setattr(mode_mod, "TOP_MAX", 0)
    if path != "direct":                       # a small span is counted directly before anything else
        monkeypatch.setattr(mode_mod, "DIRECT_SPAN", 0)


@pytest.mark.parametrize("coordinated", [True, False])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(NASTY))
@pytest.mark.parametrize("workers", [1, 3, 12])
def test_pruning_is_exact_on_the_nasty_datasets(monkeypatch, name, workers, path, coordinated):
    use_path(monkeypatch, path)
    stats = check(NASTY[name], workers, {"prune": "always", "chunk_bytes": 256}, known_total=coordinated)
    allv = np.concatenate(NASTY[name])
    if path == "direct" and int(allv.max()) - int(allv.min()) < mode_mod.DIRECT_SPAN:
        assert all(s["heavy"]["direct"] for s in stats)
        assert sum(s["distinct_keys"] for s in stats) == len(set(allv.tolist()))
    if path == "top" and name == "all equal":
        assert all(s["heavy"].get("top") == 1 for s in stats) and all(s["shuffle"] == "none" for s in stats)
    depth = (workers - 1).bit_length()
    if stats[0]["shuffle"] == "none":          # settled: only tree passes (the facts' allreduce, counts, verdicts)
        assert stats[0]["rounds"] % depth == 0 if depth else stats[0]["rounds"] == 0
    if coordinated and stats[0]["heavy"].get("direct") and "top" not in stats[0]["phases"]:
        assert stats[0]["rounds"] == depth     # no round for the facts, none for a verdict


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
    assert all(s["heavy"]["pruned"] and s["heavy"]["direct"] == (span == 10 ** 3 and not s["heavy"].get("top"))
               for s in stats)
    assert all(s["heavy"].get("top") for s in stats) == (exponent >= 1.5 and span != 10 ** 3)


def test_auto_leaves_nearly_unique_and_small_jobs_alone(monkeypatch):
    rng = np.random.default_rng(1)
    uniq = list(np.array_split(rng.permutation(60_000).astype(np.int64), 6))
    monkeypatch.setattr(mode_mod, "PRUNE_MIN_VALUES", 1000)
    stats = check(uniq, 4, {"chunk_bytes": 4096}, known_total=True)   # no candidates: straight to the shuffle
    never = check(uniq, 4, {"chunk_bytes": 4096, "prune": "never"}, known_total=True)
    assert all(s["heavy"]["pruned"] is False for s in stats) and stats[0]["rounds"] == never[0]["rounds"]
    monkeypatch.setattr(mode_mod, "PRUNE_MIN_VALUES", 10 ** 9)
    stats = check(heavy_zipf(20_000, 1.3, 10 ** 12), 4, {"chunk_bytes": 4096}, known_total=True)   # too small a job
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


@pytest.mark.parametrize("path", PATHS)
def test_int64_extremes_as_heavy_hitters(monkeypatch, path):
    use_path(monkeypatch, path)
    shards = [np.array([I64_MIN] * 40 + [I64_MAX] * 40 + [0, -1], dtype=np.int64),
              np.array([I64_MAX] * 3 + [I64_MIN + 1] * 43, dtype=np.int64), np.zeros(0, np.int64)]
    check(shards, 3, {"prune": "always", "chunk_bytes": 256})
    check(shards, 5, {"prune": "always", "chunk_bytes": 256, "ties": "smallest"}, known_total=True)
    steep = [np.array([I64_MIN] * 90 + [I64_MAX] * 90 + [5], dtype=np.int64), np.array([I64_MAX, I64_MIN])]
    check(steep, 4, {"prune": "always", "chunk_bytes": 256}, known_total=True)     # a tie at the two ends


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("base", [I64_MIN, -7, I64_MAX])
def test_the_direct_count_at_the_edge_of_its_span(monkeypatch, base, offset):
    """hi - lo = DIRECT_SPAN - 1 is counted directly, DIRECT_SPAN is not; at either end of int64 (lo = int64 min,
    hi = int64 max): the offsets from lo never overflow, whichever way the job goes."""
    use_path(monkeypatch, "direct")
    width = mode_mod.DIRECT_SPAN - 1 + offset     # hi - lo
    lo = base if base != I64_MAX else I64_MAX - width
    hi = lo + width
    rng = np.random.default_rng(width)
    mid = lo + rng.integers(0, width + 1, 3000)
    shards = [np.concatenate(([lo, lo], mid[:1500])), np.concatenate((mid[1500:], [hi, hi, hi])), np.zeros(0, np.int64)]
    for coordinated in (True, False):
        stats = check(shards, 4, {"prune": "always", "chunk_bytes": 4096}, known_total=coordinated)
        assert all(s["heavy"]["pruned"] and s["heavy"]["direct"] == (offset == 0) for s in stats)


def test_the_widest_span_is_never_counted_directly(monkeypatch):
    """lo = int64 min and hi = int64 max: hi - lo is 2^64 - 1 (Python ints), far beyond any direct span."""
    use_path(monkeypatch, "direct")
    shards = [np.array([I64_MIN, 3, 3], dtype=np.int64), np.array([I64_MAX, I64_MAX, I64_MAX], dtype=np.int64)]
    for coordinated in (True, False):
        stats = check(shards, 2, {"prune": "always", "chunk_bytes": 256}, known_total=coordinated)
        assert not any(s["heavy"].get("direct") for s in stats)


def test_a_top_candidate_that_only_ties_the_rest_is_not_final(monkeypatch):
    """5 is the one candidate counted (12 times); 9, nobody's candidate (once per rank), occurs 12 times too:
    the rest (12) is not below the best (12), so the top count cannot settle it -- the fallback finds the tie."""
    for path in ("top", "top-forced"):             # in this order: forcing stays set
        use_path(monkeypatch, path)
        shards = [np.array([9], dtype=np.int64) for _ in range(12)]
        shards[0] = np.concatenate((shards[0], np.full(12, 5, np.int64)))
        for coordinated in (True, False):
            stats = check(shards, 12, {"prune": "always", "chunk_bytes": 256}, known_total=coordinated)
            assert not stats[0]["heavy"].get("top")         # not final: settled another way
            assert ("top" in stats[0]["phases"]) == (path == "top-forced")   # tried only when forced


def test_the_top_counts_settle_steep_data_and_their_ties(monkeypatch):
    rng = np.random.default_rng(11)
    tail = rng.integers(-10 ** 15, 10 ** 15, 400)
    shards = [np.concatenate((np.full(300, 7), np.full(300, -7), tail[:200])).astype(np.int64),
              np.concatenate((np.full(250, 7), np.full(250, -7), tail[200:])).astype(np.int64)]
    stats = check(shards, 3, {"prune": "always", "chunk_bytes": 256}, known_total=True)
    assert stats[0]["heavy"]["top"] == 2 and stats[0]["counting"]["local"] == "top"
    assert stats[0]["rounds"] == 2 * 2             # the counts up the tree, the verdict down: nothing else


def test_load_facts_and_their_merge_match_numpy():
    rng = np.random.default_rng(12)
    parts = [rng.zipf(1.3, 100_000).astype(np.int64) * -3, np.zeros(0, np.int64), np.array([I64_MIN, I64_MAX]),
             rng.integers(0, 5, 70_000)]
    own = [mode_mod.load_facts(p)[0] for p in parts]
    for f, p in zip(own, parts):       # the exact span where it is small, else one within it and still too wide
        assert f["n"] == len(p) and (f["lo"], f["hi"]) == ((int(p.min()), int(p.max())) if len(p) else (None, None)) \
            or int(p.min()) <= f["lo"] and f["hi"] <= int(p.max()) and f["hi"] - f["lo"] >= mode_mod.DIRECT_SPAN
    total = own[0]
    for f in own[1:]:
        total = mode_mod.merge_facts(total, f)
    allv = np.concatenate(parts)
    assert (total["n"], total["lo"], total["hi"]) == (len(allv), int(allv.min()), int(allv.max()))   # ends in part 2
    assert total["v"] == sorted(total["v"]) and len(total["v"]) <= mode_mod.PRUNE_CANDIDATES
    truth = Counter(allv.tolist())
    heaviest = sorted(zip(total["e"], total["v"]), reverse=True)[:5]
    assert {v for _, v in heaviest} == {v for v, _ in truth.most_common(5)}
    assert all(abs(e - truth[v]) <= 0.1 * truth[v] for e, v in heaviest)
    hidden = np.arange(1_000_000, dtype=np.int64) % 100
    hidden[12_345] = 10 ** 15                          # between the probe's strides: min/max find it
    probed = np.arange(1_000_000, dtype=np.int64) % 100
    probed[::1_000_000 // 4096][7] = -(10 ** 15)         # the probe sees it; no sample position may
    for p, want in ((hidden, (0, 10 ** 15)), (probed, None)):
        f, k = mode_mod.load_facts(p)
        assert k is None and f["hi"] - f["lo"] >= mode_mod.DIRECT_SPAN and (want is None or (f["lo"], f["hi"]) == want)
        assert f["lo"] >= int(p.min()) and f["hi"] <= int(p.max())
        check([p[:500_000], p[500_000:]], 3, {"prune": "always"}, known_total=True)
    facts, kept = mode_mod.load_facts(parts[3])          # a small span: counted outright, exact, and kept
    assert dict(zip(facts["v"], facts["e"])) == Counter(parts[3].tolist()) and facts["share"] == 5 / 70_000
    assert kept[0] == 0 and kept[1].tolist() == np.bincount(parts[3]).tolist()
    assert mode_mod.load_facts(parts[0])[1] is None and mode_mod.load_facts(parts[1])[1] is None


def test_candidate_counts_match_counter():
    rng = np.random.default_rng(13)
    v = np.concatenate((rng.integers(-3, 3, 700_000), [I64_MIN, I64_MAX, I64_MAX])).astype(np.int64)
    truth = Counter(v.tolist())
    cands = np.array([2, I64_MAX, -3, 99, I64_MIN], dtype=np.int64)
    assert counting.candidate_counts(v, cands).tolist() == [truth[c] for c in cands.tolist()]
    assert counting.candidate_counts(v[:0], cands).tolist() == [0] * 5


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
    for path in PATHS:
        with pytest.MonkeyPatch.context() as mp:
            use_path(mp, path)
            res, _, _ = run_op("mode", arrays, workers, {"prune": "always", "ties": ties, "chunk_bytes": 256},
                               known_total=path != "slots")
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


async def test_the_coordinator_hands_every_rank_the_load_facts(inproc, tmp_path, monkeypatch):
    """Through real workers and the coordinator: nearly unique data spends no round on the heavy-hitter check
    (the facts came with the run: the plain shuffle's rounds only), a small span is counted directly in one
    pass up the tree, steep wide data by its few heaviest values; every answer exact."""
    from shardstats.coordinator.job import run_job
    from shardstats.coordinator.spec import job_spec
    monkeypatch.setattr(mode_mod, "PRUNE_MIN_VALUES", 1000)
    rng = np.random.default_rng(14)
    tail = rng.integers(I64_MIN, I64_MAX, 3000, dtype=np.int64)
    datasets = {"unique": [rng.permutation(90_000)[i::3].astype(np.int64) for i in range(3)],
                "small span": [I64_MAX - rng.integers(0, 900, 30_000) for _ in range(3)],
                "steep": [np.concatenate((np.full(20_000, I64_MIN), np.full(9_000, 4), tail[i::3])) for i in range(3)]}
    for name, shards in datasets.items():
        d = tmp_path / name.replace(" ", "-")
        d.mkdir()
        for i, s in enumerate(shards):
            np.save(d / f"s{i}.npy", s)
        small = {"chunk_bytes": 4096}              # more than one chunk: the shuffle, not the tree
        never = await run_job(inproc.addrs, inproc.token, job_spec("mode", str(d), {**small, "prune": "never"}))
        rep = await run_job(inproc.addrs, inproc.token, job_spec("mode", str(d), {**small, "ties": "all"}))
        value, count, ties = ref_mode(np.concatenate(shards))
        assert (rep.result["value"], rep.result["count"], rep.result["ties"]) == (value, count, ties)
        w = rep.workers[0]
        depth = 2                                  # three workers
        if name == "unique":
            assert w["heavy"]["pruned"] is False and w["rounds"] == never.workers[0]["rounds"]
        elif name == "small span":
            assert w["heavy"]["direct"] and w["rounds"] == depth and w["distinct_keys"] == 900
        else:
            assert w["heavy"]["top"] == 1 and w["rounds"] == 2 * depth and w["shuffle"] == "none"


@pytest.mark.parametrize("lo", [0, 5, 700, -3, I64_MIN, I64_MAX - 999])
def test_span_counts_match_counter(lo):
    """Values at their own offsets (0 <= lo <= span) or shifted by lo (any other lo), the same counts."""
    rng = np.random.default_rng(15)
    span = 1000
    v = (lo + rng.integers(0, span, 5000)).astype(np.int64)
    truth = Counter(v.tolist())
    got = counting.span_counts(v, lo, span)
    assert len(got) == span and {lo + i: int(c) for i, c in enumerate(got.tolist()) if c} == dict(truth)
