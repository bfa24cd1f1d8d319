"""topk against collections.Counter: both strategies (and auto) on the nasty datasets, hypothesis, bytes, the CLI."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardstats.cluster.gen import generate
from shardstats.worker.ops.topk import merger, partial, result_of, top_items
from tests.conftest import I64_MAX, I64_MIN, cli, nasty_datasets, run_op

NASTY = nasty_datasets()
WORKER_COUNTS = [1, 2, 3, 5, 10, 12]
STRATEGIES = ("shuffle", "threshold", "auto")


def reference(values: np.ndarray, k: int) -> dict:
    """The sequential answer: Counter, sorted by (count desc, value asc); ties = values with the last count."""
    c = Counter(values.tolist())
    items = sorted(c.items(), key=lambda x: (-x[1], x[0]))[:k]
    ties = sum(1 for n in c.values() if n == items[-1][1]) if items else 0
    return {"k": k, "items": [[v, n] for v, n in items], "boundary_ties": ties}


def check(shards, workers, k, strategy, **params):
    res, stats, net = run_op("topk", shards, workers, {"k": k, "strategy": strategy, **params})
    assert res == reference(np.concatenate(shards), k)
    ran = {s["strategy"] for s in stats}
    assert len(ran) == 1 and ran <= {"shuffle", "threshold"}          # every rank took the same branch
    if strategy != "auto" and not stats[0]["strategy_reason"].startswith("threshold fell back"):
        assert ran == {strategy}
    depth = max(0, (workers - 1).bit_length())
    for c in net.comms:                                                # no all-to-one: trees and credits
        assert c.stats.tree_messages_received <= depth
        assert c.stats.max_inbound_streams <= 1
    return res, stats, net


def _bytes(net) -> int:
    return sum(sum(c.stats.bytes_sent) for c in net.comms)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("name", sorted(NASTY))
def test_topk_on_nasty_datasets(name, workers, strategy):
    for k in (1, 3, 10):
        check(NASTY[name], workers, k, strategy)


@pytest.mark.parametrize("strategy", ("shuffle", "threshold"))
def test_a_value_in_no_local_top_list_is_still_found(strategy):
    # Each rank's local top 1 is its own A_i (3 times); X is second everywhere (2 times) but first overall
    # (6 times).  Merging local top lists -- what a per-worker top K before the shuffle does -- answers A_0.
    shards = [np.array([10 + i] * 3 + [99] * 2, np.int64) for i in range(3)]
    res, _, _ = check(shards, 3, 1, strategy)
    assert res["items"] == [[99, 6]]


@pytest.mark.parametrize("strategy", ("shuffle", "threshold"))
def test_boundary_ties_count_values_beyond_k_on_every_owner(strategy):
    # 40 values tie at count 2 (each split across two shards), 3 values are above: k = 5 cuts 38 of the ties,
    # spread over all owners; boundary_ties must count all 40 and the listed ones must be the smallest.
    tied = np.arange(-20, 20, dtype=np.int64) * 7919
    hot = np.array([5, 5, 5, 5, 6, 6, 6, 7, 7, 7], np.int64)
    shards = [np.concatenate([tied, hot[:4]]), np.concatenate([tied[::-1], hot[4:]])]
    res, _, _ = check(shards, 4, 5, strategy)
    assert res["boundary_ties"] == 40 and [v for v, _ in res["items"][3:]] == sorted(tied.tolist())[:2]


def test_fewer_distinct_values_than_k_lists_them_all():
    shards = [np.array([3, 3, 1], np.int64), np.array([2, I64_MIN, I64_MAX], np.int64)]
    for strategy in STRATEGIES:
        res, _, _ = check(shards, 3, 100, strategy)
        assert len(res["items"]) == 5 and res["boundary_ties"] == 4


def test_threshold_falls_back_to_the_shuffle_when_candidates_are_too_many():
    rng = np.random.default_rng(4)
    shards = [rng.integers(0, 10**9, 3000) for _ in range(4)]
    _, stats, _ = check(shards, 4, 10, "threshold", candidate_limit=100)
    assert stats[0]["strategy"] == "shuffle" and "fell back" in stats[0]["strategy_reason"]
    _, stats, _ = check(shards, 4, 10, "threshold")            # under the limit it runs as asked
    assert stats[0]["strategy"] == "threshold"


def test_threshold_moves_at_most_5_percent_of_the_shuffle_on_zipf_and_auto_picks_it():
    parts = generate(2_000_000, 10, "zipf", seed=3)
    allv = np.concatenate(parts)
    cost = {}
    for strategy in STRATEGIES:
        res, stats, net = run_op("topk", parts, 10, {"k": 100, "strategy": strategy})
        assert res == reference(allv, 100)
        cost[strategy] = (stats[0]["strategy"], _bytes(net))
    assert cost["threshold"][0] == "threshold" and cost["auto"][0] == "threshold"
    assert cost["threshold"][1] <= 0.05 * cost["shuffle"][1], cost
    assert cost["auto"][1] <= 0.05 * cost["shuffle"][1], cost


def test_auto_picks_the_shuffle_on_the_nearly_unique_dataset():
    parts = generate(400_000, 8, "unique-dup", seed=5)
    res, stats, net = run_op("topk", parts, 4, {"k": 10, "strategy": "auto"})
    assert res == reference(np.concatenate(parts), 10)
    assert stats[0]["strategy"] == "shuffle" and "distinct" in stats[0]["strategy_reason"]
    assert res["items"][0][1] == 2 and res["boundary_ties"] == 399_998   # the one duplicate, then the singles


def test_top_items_matches_a_full_sort_on_large_inputs():
    rng = np.random.default_rng(9)
    v = rng.permutation(50_000).astype(np.int64) - 25_000
    c = rng.integers(1, 30, 50_000)
    for k in (1, 7, 100, 12_000):
        tv, tc = top_items(v, c, k)
        order = np.lexsort((v, -c))[:k]
        assert tv.tolist() == v[order].tolist() and tc.tolist() == c[order].tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-6, 6) | st.integers(I64_MIN, I64_MAX), max_size=30), min_size=1, max_size=6),
       st.integers(1, 12), st.integers(1, 8))
def test_merged_partials_are_exact(shards, k, parts):
    # the monoid alone: random disjoint owners, merged in a random tree order
    c = Counter(v for s in shards for v in s)
    if not c:
        return
    keys = sorted(c)
    owners = [[x for i, x in enumerate(keys) if i % parts == j] for j in range(parts)]
    ps = [partial(np.array(o, np.int64), np.array([c[x] for x in o], np.int64), k) for o in owners]
    merge = merger(k)
    while len(ps) > 1:
        ps = [merge(ps[i], ps[i + 1]) if i + 1 < len(ps) else ps[i] for i in range(0, len(ps), 2)]
    assert result_of(k, ps[0]) == reference(np.array([v for s in shards for v in s], np.int64), k)


shard_lists = st.lists(st.lists(st.integers(-5, 5) | st.integers(I64_MIN, I64_MAX), max_size=40),
                       min_size=1, max_size=8).filter(any)


@settings(max_examples=80, deadline=None)
@given(shard_lists, st.integers(1, 12), st.integers(1, 12), st.sampled_from(STRATEGIES))
def test_topk_property(shards, workers, k, strategy):
    check([np.array(s, dtype=np.int64) for s in shards], workers, k, strategy)


def test_topk_through_the_cli_and_the_api(tmp_path):
    rng = np.random.default_rng(11)
    parts = [rng.zipf(1.5, 4000).astype(np.int64) for _ in range(4)] + [np.zeros(0, np.int64)]
    for i, p in enumerate(parts):
        np.save(tmp_path / f"s{i}.npy", p)
    (tmp_path / "t.txt").write_text("1\n-7\n-7\n")
    allv = np.concatenate(parts + [np.array([1, -7, -7], np.int64)])
    for strategy in ("shuffle", "threshold"):
        r = cli("submit", "topk", "--local", "3", "--input", str(tmp_path), "--k", "7", "--strategy", strategy, "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["op"] == "topk" and doc["result"] == reference(allv, 7)
        assert doc["stats"]["strategy"] == strategy and doc["stats"]["workers"] == 3
    human = cli("submit", "topk", "--local", "2", "--input", str(tmp_path), "--k", "3")
    top = reference(allv, 3)["items"][0]
    assert human.returncode == 0 and f"{top[0]}  {top[1]:,}" in human.stdout, human.stdout
    for bad in (["--k", "0"], ["--k", "100001"], ["--strategy", "guess"], ["--k", "ten"]):
        r = cli("submit", "topk", "--local", "2", "--input", str(tmp_path), *bad)
        assert r.returncode == 2 and bad[0] in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    from shardstats import Cluster
    with Cluster.local(2) as c:
        got = c.topk(tmp_path, k=4)
        assert got.items == reference(allv, 4)["items"] and got.boundary_ties == reference(allv, 4)["boundary_ties"]


@pytest.mark.parametrize("op,params", [("topk", {"k": 3, "strategy": "shuffle"}), ("topk", {"k": 3, "strategy": "threshold"}),
                                       ("distinct", {}), ("describe", {})])
def test_read_only_input_is_sorted_out_of_place(monkeypatch, op, params):
    # a reader may hand over a buffer it does not copy (read-only): the ops must not sort it in place
    import tests.conftest as conftest
    plain = conftest.split_for

    def read_only(shards, workers):
        parts = plain(shards, workers)
        for p in parts:
            p.setflags(write=False)
        return parts
    monkeypatch.setattr(conftest, "split_for", read_only)
    shards = NASTY["skewed"]
    res, _, _ = run_op(op, shards, 3, params)
    allv = np.concatenate(shards)
    if op == "topk":
        assert res == reference(allv, 3)
    elif op == "distinct":
        assert res["value"] == len(set(allv.tolist()))
    else:
        assert res["topk"] == reference(allv, 5)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(st.integers(-6, 6) | st.sampled_from([I64_MIN, I64_MAX]), max_size=12), max_size=4),
       st.dictionaries(st.integers(-6, 6) | st.sampled_from([I64_MIN, I64_MAX]), st.integers(2, 5), max_size=5),
       st.integers(1, 12))
def test_an_owners_merge_counts_only_repeats_and_fills_with_values_seen_once(bare, pairs, k):
    """What an owner receives (bare values from several senders, (value, count) pairs from others)
    gives the same top k, exact counts and boundary ties as counting everything with a Counter,
    whether the list fills from repeated values alone or needs the smallest values seen once."""
    from shardstats.worker.ops.keyed import _Inbox
    from shardstats.worker.ops.topk import owned_partial
    inbox = _Inbox()
    ref = Counter()
    for i, b in enumerate(bare):
        inbox(i, {"s": np.array(b, dtype=np.int64)})
        ref.update(b)
    if pairs:
        inbox(9, {"v": np.array(list(pairs), dtype=np.int64), "c": np.array(list(pairs.values()), dtype=np.int64)})
        for v, c in pairs.items():
            ref[v] += c
    owned = inbox.owned(False, None)
    assert owned.distinct == len(ref)
    assert owned.repeated.tolist() == sorted(v for v, c in ref.items() if c > 1)
    assert owned.counts.tolist() == [ref[v] for v in owned.repeated.tolist()]
    got = result_of(k, owned_partial(owned, k))
    want = sorted(ref.items(), key=lambda vc: (-vc[1], vc[0]))[:k]
    assert got["items"] == [[v, c] for v, c in want]
    assert got["boundary_ties"] == (sum(1 for c in ref.values() if c == want[-1][1]) if want else 0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-30, 30), max_size=200), st.lists(st.integers(-30, 30), max_size=5),
       st.integers(1, 40), st.integers(0, 60))
def test_an_owners_values_seen_once_are_found_a_block_at_a_time(bare, paired, block, m):
    """``Owned.once(m)`` reads its sorted values from the small end a block at a time (a run of equal values
    may straddle a block's edge); it must answer what Counter does over the whole array."""
    from shardstats.worker.ops import keyed
    s = np.sort(np.array(bare, np.int64))
    p = np.unique(np.array(paired, np.int64))
    owned = keyed.Owned(keyed.empty(), keyed.empty(), 0, False, None, bare=s, paired=p)
    c = Counter(bare)
    want = sorted(v for v, n in c.items() if n == 1 and v not in set(paired))[:m]
    old = keyed.ONCE_BLOCK
    keyed.ONCE_BLOCK = block
    try:
        assert owned.once(m).tolist() == want
    finally:
        keyed.ONCE_BLOCK = old
