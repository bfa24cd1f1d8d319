"""The compact shuffle encoding: exact under every encoding and counting, and at most 2.5 bytes a value."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardstats.cluster.gen import generate
from shardstats.worker.data import encoding as enc
from shardstats.worker.ops import compact_choice
from tests.conftest import I64_MAX, I64_MIN, nasty_datasets, ref_mode, run_op

NASTY = nasty_datasets()
ENCODINGS = ["plain", "compact", "auto"]
COUNTINGS = ["auto", "sort", "dense", "hash"]
I64 = st.integers(I64_MIN, I64_MAX)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2 ** 64 - 1), max_size=400), st.sampled_from([64, 100, 1 << 12, 1 << 20]))
def test_rice_code_round_trips_any_ascending_run(xs, chunk_bytes):
    fps = np.sort(np.array(xs, dtype=np.uint64))
    pieces = enc.encode_chunks(fps, chunk_bytes)
    back = np.concatenate([enc.decode(p) for p in pieces]) if pieces else np.zeros(0, np.uint64)
    assert back.dtype == np.uint64 and back.tolist() == fps.tolist()


def test_chunks_stay_near_the_chunk_size_and_code_short():
    rng = np.random.default_rng(1)
    bits = enc.fingerprint_bits(10_000_000, 10)
    fps = np.sort(enc.fingerprints(rng.integers(I64_MIN, I64_MAX, 100_000, dtype=np.int64), bits))
    pieces = enc.encode_chunks(fps, 1 << 14)
    sizes = [len(p["fq"]) + len(p["fr"]) + 8 for p in pieces]
    assert max(sizes) <= (1 << 14) * 1.1
    assert sum(sizes) / len(fps) < 2.5


def test_a_malformed_chunk_is_an_error_not_a_wrong_run():
    p = enc.encode(np.arange(0, 10_000, 7, dtype=np.uint64))
    with pytest.raises(ValueError):
        enc.decode({**p, "fq": p["fq"][:3]})
    with pytest.raises(ValueError):
        enc.decode({**p, "fk": 99})


def _check(shards, workers, params):
    allv = np.concatenate(shards)
    value, count, ties = ref_mode(allv)
    res, stats, _ = run_op("mode", shards, workers, {"ties": "all", "chunk_bytes": 256, **params})
    assert (res["value"], res["count"], res["ties"], res["tie_count"]) == (value, count, ties, len(ties))
    assert sum(s["distinct_keys"] for s in stats) == len(set(allv.tolist()))
    return stats


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("counting", COUNTINGS)
@pytest.mark.parametrize("name", sorted(NASTY))
def test_mode_is_exact_under_every_encoding_and_counting(name, encoding, counting):
    for workers in (1, 3, 12):
        stats = _check(NASTY[name], workers, {"encoding": encoding, "counting": counting})
        assert {s["encoding"] for s in stats} == {"plain" if encoding == "auto" else encoding}


@pytest.mark.parametrize("combine", ["auto", "always", "never"])
def test_compact_is_exact_when_fingerprints_collide_all_the_time(monkeypatch, combine):
    """4-bit fingerprints: almost every value is a candidate.  Collisions cost bytes, never exactness."""
    monkeypatch.setattr(compact_choice, "fingerprint_bits", lambda n, w: 4)
    rng = np.random.default_rng(3)
    for shards in (generate(3000, 3, "unique-dup", 2), [rng.integers(-50, 50, 700) for _ in range(3)],
                   [rng.integers(I64_MIN, I64_MAX, 500, dtype=np.int64) for _ in range(3)]):
        _check(shards, 4, {"encoding": "compact", "combine": combine})


shard_lists = st.lists(st.lists(st.one_of(I64, st.integers(-6, 6), st.sampled_from([I64_MIN, I64_MAX])),
                                max_size=40), min_size=1, max_size=6).filter(any)


@settings(max_examples=200, deadline=None)
@given(shard_lists, st.integers(1, 9), st.sampled_from(["plain", "compact"]), st.sampled_from(COUNTINGS),
       st.sampled_from(["auto", "always", "never"]))
def test_mode_property_every_encoding(shards, workers, encoding, counting, combine):
    _check([np.array(s, dtype=np.int64) for s in shards], workers,
           {"encoding": encoding, "counting": counting, "combine": combine})


@pytest.mark.parametrize("dataset", ["unique-dup", "full-range"])
def test_compact_moves_at_most_2_5_bytes_a_value_plain_8(dataset):
    rng = np.random.default_rng(4)
    shards = (generate(1_000_000, 10, "unique-dup", 5) if dataset == "unique-dup"
              else [rng.integers(I64_MIN, I64_MAX, 100_000, dtype=np.int64) for _ in range(10)])
    allv = np.concatenate(shards)
    value, count, _ = ref_mode(allv)
    res, stats, _ = run_op("mode", shards, 10, {"encoding": "compact", "chunk_bytes": 1 << 16})
    assert (res["value"], res["count"]) == (value, count)
    compact = sum(s["shuffle_bytes"] for s in stats) / sum(s["shuffled_values"] for s in stats)
    res, stats, _ = run_op("mode", shards, 10, {"encoding": "plain", "chunk_bytes": 1 << 16})
    assert (res["value"], res["count"]) == (value, count)
    plain = sum(s["shuffle_bytes"] for s in stats) / sum(s["shuffled_values"] for s in stats)
    assert compact <= 2.5 and 7.9 <= plain <= 8.2
    assert all(s["shuffle_bytes_per_value"] <= 2.6 for s in stats if s["encoding"] == "compact")


def test_auto_keeps_plain_on_one_host_and_for_repeating_data():
    """In-process (one host) auto stays plain: the link outruns the coding there."""
    stats = run_op("mode", generate(20_000, 4, "unique-dup", 1), 4, {})[1]
    assert {s["encoding"] for s in stats} == {"plain"}
