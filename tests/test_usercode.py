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


def failure(fn, *args) -> str:
    """The one-line error the child would reply with for ``fn(*args)`` (file:line, exception, the call)."""
    with pytest.raises(Exception) as info:
        fn(*args)
    return str(info.value) if isinstance(info.value, uc._UserError) else uc._where(info.value, "job.py")


def test_an_error_names_the_call_the_record_or_key_and_the_line():
    """A raise in the mapper names the record it failed on, in the combiner, partitioner, sort_values or
    reducer the key, with the line of the user's function shipped by cloudpickle (whose file name is
    "<dynamic-code>": the line was lost, "job.py: KeyError"); a mapper yielding no pair, a partitioner
    returning True, a batch function returning a list or a table without key: a clear _UserError, not the
    engine's own TypeError, ArrowTypeError or KeyError."""
    import cloudpickle

    def mapper(rec):
        if rec["v"] == 3:
            raise ValueError("three")
        yield rec["k"], rec["v"]

    def bad(k, vs):
        if k == "b":
            raise KeyError("bee")
        yield k, sum(vs)

    def shipped(**fns):
        return uc._Job(None, "job.py", cloudpickle.dumps(fns))
    line = mapper.__code__.co_firstlineno
    table = pa.table({"k": ["a", "b", "a", "b"], "v": [1, 2, 3, 4]})
    assert failure(uc._map, shipped(mapper=mapper), table, False, None) == \
        f"job.py:{line + 2} in mapper: ValueError: three (mapper on record {{'k': 'a', 'v': 3}})"
    good = pa.table({"k": ["a", "b"], "v": [1, 2]})
    assert failure(uc._map, shipped(mapper=mapper, combiner=bad), good, True, None).endswith(
        "KeyError: 'bee' (combiner on key 'b')")
    pairs, _ = uc._map(shipped(mapper=mapper), good, False, None)
    assert failure(uc._reduce, shipped(mapper=mapper, reducer=bad), pairs).endswith("(reducer on key 'b')")
    assert failure(uc._reduce, shipped(mapper=mapper, sort_values=lambda v: 1 / 0), pairs).endswith(
        "ZeroDivisionError: division by zero (sort_values on key 'a')")
    assert failure(uc._dest, shipped(mapper=mapper, partitioner=lambda k, n: {}[k]), [uc._pack("a")], 2).endswith(
        "(partitioner on key 'a')")
    assert failure(uc._dest, shipped(mapper=mapper, partitioner=lambda k, n: True), [uc._pack("a")], 2) == \
        "job.py: partitioner('a', 2) returned True, not a reducer from 0 to 1"
    import numpy as np
    dest = uc._dest(shipped(mapper=mapper, partitioner=lambda k, n: np.int64(ord(k) % n)), [uc._pack("a")] * 2, 2)
    assert dest.to_pylist() == [1, 1]                    # numpy's ints are ints
    assert failure(uc._map, shipped(mapper=lambda r: [r["k"]]), good, False, None) == \
        "job.py: the mapper yielded 'a' on record {'k': 'a', 'v': 1}, not a (key, value) pair"
    assert failure(uc._map, shipped(mapper=lambda r: (r["k"], r["v"])), good, False, None) == \
        "job.py: the mapper yielded 'a' on record {'k': 'a', 'v': 1}, not a (key, value) pair (it returned one " \
        "pair, ('a', 1): yield it, or return a list of pairs)"
    assert "the key {1, 2} cannot travel between workers" in \
        failure(uc._map, shipped(mapper=lambda r: [({1, 2}, 1)]), good, False, None)
    assert "the key 1180591620717411303424 cannot travel" in \
        failure(uc._map, shipped(mapper=lambda r: [(2 ** 70, 1)]), good, False, None)
    # the combiner's value is said (key and value) only when it cannot travel: the message is made then, not
    # for every key (it cost ~5 us a key, 10% of a word count's map)
    assert "the combiner's value for key 'a' {1} cannot travel between workers" in \
        failure(uc._map, shipped(mapper=mapper, combiner=lambda k, vs: [(k, {sum(vs)})]), good, True, None)
    pairs, _ = uc._map(shipped(mapper=mapper, combiner=lambda k, vs: [(k, sum(vs))]), good, True, None)
    assert sorted(unpacked(pairs)) == [("a", 1), ("b", 2)]
    assert failure(uc._map, shipped(map_batch=lambda t: [1]), good, False, None) == \
        "job.py: map_batch returned list, not an Arrow table with key and value columns " \
        "(pyarrow.table({'key': ..., 'value': ...}))"
    assert failure(uc._map, shipped(map_batch=lambda t: t), good, False, None) == \
        "job.py: map_batch returned a table of columns ['k', 'v']; it must have key and value columns"


def test_keys_of_several_types_reach_the_reducer_each_type_in_its_order():
    """Ints and strs in one job: by type, then each type in its own order (the ints by their repr had -10
    before -2 and 10 before 9)."""
    keys = [10, "b", 9, -2, "a", -10, 0, "10"]
    table = pa.table({"k": pa.array([msgpack.packb(k) for k in keys])})
    seen = []

    def reducer(k, vs):
        seen.append(k)
        yield k, len(vs)
    j = job(mapper=lambda r: [(uc._unpack(r["k"]), 1)], reducer=reducer)
    pairs, _ = uc._map(j, table, False, None)
    uc._reduce(j, pairs)
    assert seen == sorted(k for k in keys if isinstance(k, int)) + sorted(k for k in keys if isinstance(k, str))


def test_check_combiner_says_a_combiner_changes_the_key():
    """A combiner yielding pairs under another key than it was given: said as it is (it showed as the key's
    answer turning into [(key, 0)])."""
    j = job(mapper=lambda r: [(r["k"], 1)], combiner=lambda k, vs: [(k.upper(), sum(vs))],
            reducer=lambda k, vs: [(k, sum(vs))])
    assert uc._check(j, pa.table({"k": ["a", "a", "b"]}), 0) == \
        "--check-combiner: the combiner, given key 'a', yields key 'A': a combiner must yield each pair under the " \
        "key it was given"
    raising = job(mapper=lambda r: [(r["nope"], 1)], combiner=lambda k, vs: [(k, sum(vs))])
    assert failure(uc._check, raising, pa.table({"k": ["a"]}), 0).endswith(
        "KeyError: 'nope' (mapper on record {'k': 'a'})")          # the check's mapper names its record too


def test_float_keys_zero_and_nan_are_one_key_each_across_mappers():
    """-0.0 and 0.0 (equal in Python, one key in the keyed ops) and NaNs of either sign reach one reducer call
    each, as Counter counts them (NaN: one key); packed as they came, two mappers' -0.0 and 0.0 were two
    keys."""
    import math
    nan, neg_nan = float("nan"), math.copysign(float("nan"), -1)
    j = job(mapper=lambda r: [(r["k"], 1)], reducer=lambda k, vs: [(k, sum(vs))])
    first, _ = uc._map(j, pa.table({"k": [-0.0, neg_nan, 1.5]}), False, None)
    second, _ = uc._map(j, pa.table({"k": [0.0, nan, 0.0]}), False, None)
    out = uc._reduce(j, pa.concat_tables([first, second])).to_pylist()
    assert len(out) == 3 and {r["key"]: r["value"] for r in out if r["key"] == r["key"]} == {0.0: 3, 1.5: 1}
    assert [r["value"] for r in out if r["key"] != r["key"]] == [2]


async def test_a_mapper_filling_memory_with_pairs_is_said_to_run_out():
    """A mapper yielding pairs until the child's limit: one line saying so, and the next call answers. The
    reply was made inside the MemoryError's handler while the mapper's pairs were still held: it raised again,
    and the child died saying "exit status 1: Exception ignored in sys.unraisablehook"."""
    from shardstats.errors import UsageError
    src = "def mapper(r):\n    for i in range(10**8):\n        yield (r['k'], i), 'x' * 100\n"
    async with uc.UserCode(100 << 20) as code:
        await code.call(uc.load_request(src, "source", "hog.py"))
        with pytest.raises(UsageError, match=r"^hog\.py: ran out of memory in its map \(the job's code may use 100"):
            await code.call({"op": "map", "ipc": uc._ipc(pa.table({"k": ["a"], "v": [1], "u": [2]})),
                             "combine": False, "reducers": None})
        rep = await code.call({"op": "check", "ipc": uc._ipc(pa.table({"k": ["a"]})), "seed": 0})
        assert rep["problem"] is None


def test_check_combiner_takes_a_float_sum_and_still_catches_an_average_of_averages():
    """A float sum combined in other groupings differs in its last bits: not a wrong combiner (it was refused,
    '144.50005220000003 without it, 144.5000522 with'); the average of averages still is."""
    rnd = random.Random(5)
    table = pa.table({"k": [f"k{i % 3}" for i in range(600)], "v": [rnd.random() * 100 for _ in range(600)]})
    mapper = lambda r: [(r["k"], r["v"])]
    add = lambda k, vs: [(k, sum(vs))]
    assert all(uc._check(job(mapper=mapper, combiner=add, reducer=add), table, seed) is None for seed in range(5))
    naive = lambda k, vs: [(k, sum(vs) / len(vs))]
    assert uc._check(job(mapper=mapper, combiner=naive, reducer=naive), table, 0).startswith(
        "--check-combiner: the combiner changes the answer for key")


def test_check_combiner_checks_a_batch_combiner():
    """combine_batch in random groupings against none: the batch average of averages is caught (it passed
    unchecked), a batch float sum is not."""
    import pyarrow.compute as pc
    rnd = random.Random(6)
    table = pa.table({"k": [f"k{i % 3}" for i in range(600)], "v": [rnd.random() * 100 for _ in range(600)]})

    def by_key(how):
        def fn(t):
            g = t.group_by("key").aggregate([("value", how)])
            return pa.table({"key": g["key"], "value": g[f"value_{how}"]})
        return fn
    map_batch = lambda t: pa.table({"key": t["k"], "value": pc.multiply(t["v"], 1.0)})
    assert uc._check(job(map_batch=map_batch, combine_batch=by_key("mean"), reduce_batch=by_key("mean")),
                     table, 0).startswith("--check-combiner: combine_batch changes the answer")
    assert all(uc._check(job(map_batch=map_batch, combine_batch=by_key("sum"), reduce_batch=by_key("sum")),
                         table, seed) is None for seed in range(5))


def test_output_columns_equal_arrows_own_of_the_values_tuples_as_lists():
    """The reducer's output pairs as Arrow columns: a column with no tuple goes to Arrow as it is, tuples (a
    namedtuple too) become lists, a column of mixed types becomes JSON text -- as the per-value conversion made
    them before it was skipped for columns holding no tuple."""
    import collections
    import json
    Pair = collections.namedtuple("Pair", "a b")
    keys, values = ["a", "b", "c"], [(1, 2), Pair(3, 4), [5, 6]]
    t = uc._output(keys, values)
    assert t.column("key").to_pylist() == keys and t.column("value").to_pylist() == [[1, 2], [3, 4], [5, 6]]
    t = uc._output([("x", 1), ("y", 2)], [1.5, None])       # a tuple of mixed types is no Arrow list: JSON
    assert t.column("key").to_pylist() == ['["x", 1]', '["y", 2]'] and t.column("value").to_pylist() == [1.5, None]
    t = uc._output(["a", "b"], [(1, "x"), 2])
    assert t.column("value").to_pylist() == [json.dumps([1, "x"]), "2"]
    assert t.schema.field("value").metadata == uc.JSON_FIELD
    assert uc._output([], []).num_rows == 0
