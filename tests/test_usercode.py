"""The user-code child's data path, function by function, against straightforward references: records equal
Arrow's own to_pylist, the mapper's pairs grouped and folded by the combiner give Counter's answer, keys that
Python calls equal (1, True, 1.0) stay apart to their reducers, packed values decode as one by one, and the
batch form taken in pieces answers as over the whole table."""
from __future__ import annotations

import datetime
import random
import re
from collections import Counter, defaultdict

import msgpack
import pyarrow as pa
import pytest

from shardstats.worker import usercode as uc


def job(**fns) -> uc._Job:
    """A job of these functions, loaded as the child loads a notebook's (cloudpickle), then given the functions
    themselves (so that a test sees what they saw)."""
    import cloudpickle
    j = uc._Job(None, "job.py", cloudpickle.dumps(fns))
    j.stages = [dict(fns)]
    j.fn = j.stages[0]
    return j


def unpacked(pairs) -> list:
    return [(uc._unpack(k), uc._unpack(v)) for k, v in zip(pairs.column("key").to_pylist(),
                                                         pairs.column("value").to_pylist())]


def test_records_equal_arrows_to_pylist():
    n = 1000
    rng = random.Random(1)
    words = pa.array([rng.choice(["a", "bb", None, "ü"]) for _ in range(n)])
    table = pa.table({
        "doc": pa.array([f"d{i % 7}" for i in range(n)]).dictionary_encode(),
        "docn": words.dictionary_encode(),                                   # a dictionary with nulls
        "line": pa.array(range(n), pa.int64()),
        "u8": pa.array([i % 256 for i in range(n)], pa.uint8()),
        "maybe": pa.array([None if i % 3 else i for i in range(n)], pa.int32()),
        "f": pa.array([i / 3 for i in range(n)], pa.float64()),
        "f32": pa.array([i / 4 for i in range(n)], pa.float32()),
        "b": pa.array([i % 2 == 0 for i in range(n)]),
        "text": words,
        "ts": pa.array([datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=i) for i in range(n)]),
        "l": pa.array([[i, i + 1] for i in range(n)]),
        "weird name": pa.array([i for i in range(n)], pa.int16()),
    })
    got = list(uc._records(table.slice(3)))       # an offset into every buffer
    want = table.slice(3).to_pylist()
    assert got == want
    assert [type(v) for v in got[1].values()] == [type(v) for v in want[1].values()]
    assert list(uc._records(pa.table({}).append_column("x", pa.array([], pa.int64())))) == []
    assert list(uc._records(pa.Table.from_batches([pa.RecordBatch.from_pydict({})]))) == []


def test_a_mapper_may_keep_its_records():
    seen = []

    def mapper(rec):
        seen.append(rec)
        yield rec["k"], rec
    table = pa.table({"k": ["a", "b", "a"], "v": [1, 2, 3]})
    pairs, _ = uc._map(job(mapper=mapper), table, False, None)
    assert seen == table.to_pylist()                        # each record its own dict
    assert sorted(v["v"] for _, v in unpacked(pairs)) == [1, 2, 3]


@pytest.mark.parametrize("fold", [3, 1 << 20])
def test_grouped_and_folded_pairs_give_counters_answer(monkeypatch, fold):
    """The combiner folds every ``fold`` pairs (any number of times) and a combiner's pair under another key
    joins that key: the answer is Counter's; combined pairs are the distinct keys."""
    monkeypatch.setattr(uc, "FOLD_PAIRS", fold)
    monkeypatch.setattr(uc, "BATCH_ROWS", 2)
    rng = random.Random(2)
    lines = [" ".join(rng.choice(["a", "b", "c", "dd", "Ü"]) for _ in range(rng.randint(0, 6))) for _ in range(60)]
    table = pa.table({"text": lines})
    calls = []

    def mapper(rec):
        for w in re.findall(r"\w+", rec["text"].lower()):
            yield w, 1
        if not rec["text"]:
            return None

    def combiner(k, vs):
        calls.append(k)
        total = sum(vs)
        if k == "dd":                                 # moved to "d" (the combiner may rename a key's pairs)
            yield "d", total
        else:
            yield k, total
    pairs, counts = uc._map(job(mapper=mapper, combiner=combiner), table, True, None)
    want = Counter(w for line in lines for w in re.findall(r"\w+", line.lower()))
    got: Counter = Counter()
    for k, v in unpacked(pairs):
        got[k] += v
    want["d"] += want.pop("dd")
    assert got == want
    assert counts["map_pairs"] == sum(len(re.findall(r"\w+", x)) for x in lines)
    assert counts["combined_pairs"] == len(pairs) <= len(want) + 1
    if fold == 3:
        assert len(calls) > len(want) + 1              # it did fold before the end


@pytest.mark.parametrize("least", [2, 4])
def test_a_fold_over_the_frequent_keys_keeps_the_answer_and_the_bound(monkeypatch, least):
    """A fold combines the keys holding FOLD_MIN values or more, and every key holding several only when the
    pairs held are still over FOLD_PAIRS: the answer is Counter's either way, and after every fold the child
    holds at most max(FOLD_PAIRS, its distinct keys) pairs."""
    monkeypatch.setattr(uc, "FOLD_PAIRS", 40)
    monkeypatch.setattr(uc, "FOLD_MIN", least)
    monkeypatch.setattr(uc, "BATCH_ROWS", 5)
    rng = random.Random(4)
    words = [f"w{int(rng.paretovariate(1.2))}" for _ in range(3000)]      # a few frequent keys, many rare ones
    table = pa.table({"text": [" ".join(words[i:i + 6]) for i in range(0, len(words), 6)]})
    after = []
    fold = uc._Groups.fold

    def watched(self, combiner):
        fold(self, combiner)
        after.append((self.held(), len(self.strs)))
    monkeypatch.setattr(uc._Groups, "fold", watched)

    def combiner(k, vs):
        yield k, sum(vs)
    pairs, counts = uc._map(job(mapper=lambda rec: ((w, 1) for w in rec["text"].split()), combiner=combiner),
                            table, True, None)
    assert dict(unpacked(pairs)) == Counter(words)
    assert counts == {"map_pairs": len(words), "combined_pairs": len(Counter(words)), "batch": False}
    assert len(after) > 5 and all(held <= max(40, keys) for held, keys in after)
    if least == 2:      # every fold a full one: one value a key after it
        assert all(held == keys for held, keys in after)
    else:               # some folds left the rare keys' few values for later
        assert any(held > keys for held, keys in after)


def test_keys_python_calls_equal_stay_apart():
    """1, True and 1.0 are three keys on the map side and on the reduce side (the reducer once merged 1 and
    True, keeping one's values only); a list key travels packed."""
    def mapper(rec):
        yield rec["k"], rec["v"]

    def mapper_packed(rec):
        yield uc._unpack(rec["k"]), rec["v"]

    def reducer(k, vs):
        yield k, sorted(vs)
    keys = [1, True, 1.0, 1, True, "1"]
    table = pa.table({"k": pa.array([msgpack.packb(k) for k in keys]), "v": list(range(6))})
    j = job(mapper=mapper_packed, reducer=reducer, combiner=lambda k, vs: [(k, v) for v in vs])
    pairs, counts = uc._map(j, table, True, None)
    assert counts["combined_pairs"] == 6
    out = uc._reduce(j, pairs)           # mixed key types: the output's keys are JSON text
    assert out.to_pylist() == [{"key": "true", "value": [1, 4]}, {"key": "1.0", "value": [2]},
                               {"key": "1", "value": [0, 3]}, {"key": '"1"', "value": [5]}]
    lists = pa.table({"k": [[1, 2], [1, 2], [3]], "v": [1, 2, 3]})
    pairs, counts = uc._map(job(mapper=mapper, combiner=lambda k, vs: [(k, sum(vs))]), lists, True, None)
    assert sorted(unpacked(pairs)) == [((1, 2), 3), ((3,), 3)]


def test_packed_values_decode_as_one_by_one():
    values = [1, "ü", None, [1, (2, "x")], {"a": 1}, 2.5, b"\x00", True, "x" * 300]
    col = pa.array([msgpack.packb(v, use_bin_type=True) for v in values * 3], pa.binary())
    want = [uc._unpack(b) for b in col.to_pylist()]
    assert uc._unpack_all(col) == want
    assert uc._unpack_all(col.slice(4, 10)) == want[4:14]
    assert uc._unpack_all(pa.chunked_array([col.slice(0, 5), col.slice(5)])) == want
    assert uc._unpack_all(col.cast(pa.large_binary()).slice(2)) == want[2:]
    assert uc._unpack_all(col.slice(0, 0)) == []


def test_the_batch_form_in_pieces_answers_as_over_the_whole_table(monkeypatch):
    import polars as pl
    rng = random.Random(3)
    lines = [" ".join(rng.choice(["a", "b", "c", "dd"]) for _ in range(rng.randint(0, 5))) for _ in range(50)]
    table = pa.table({"text": lines})

    def map_batch(t):
        return (pl.from_arrow(t).select(pl.col("text").str.extract_all(r"\w+").alias("key")).explode("key")
                .drop_nulls().with_columns(pl.lit(1, pl.Int64).alias("value")).to_arrow())

    def combine_batch(t):
        return pl.from_arrow(t).group_by("key").agg(pl.col("value").sum()).to_arrow()
    want = Counter(w for line in lines for w in line.split())
    for rows, fold in ((1 << 16, 1 << 20), (7, 5)):
        monkeypatch.setattr(uc, "BATCH_ROWS", rows)
        monkeypatch.setattr(uc, "FOLD_PAIRS", fold)
        pairs, counts = uc._map(job(map_batch=map_batch, combine_batch=combine_batch), table, True, None)
        assert dict(zip(pairs.column("key").to_pylist(), pairs.column("value").to_pylist())) == want
        assert counts == {"map_pairs": sum(want.values()), "combined_pairs": len(want), "batch": True}
        pairs, counts = uc._map(job(map_batch=map_batch, combine_batch=combine_batch), table, False, None)
        got: dict = defaultdict(int)
        for k, v in zip(pairs.column("key").to_pylist(), pairs.column("value").to_pylist()):
            got[k] += v
        assert got == want and counts["combined_pairs"] == sum(want.values())
