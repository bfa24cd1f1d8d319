"""The stable partitioner: the same key hashes alike in every process, seed, type width and code path, and the
values themselves are pinned -- a change to the hash would send keys to other workers than an older release did
(a cached dataset, a mixed-version cluster), so it must be a deliberate change that edits these numbers."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import shardstats.worker.data.hashing as H
from shardstats.worker.data.hashing import NULL_HASH, hash_array, hash_columns, owners_of

STRINGS = ["", "a", "hello", "id0000000001", None, "héllo wörld, a longer value"]
PINNED_STRINGS = [16294208416658607535, 7860680498875604842, 18274932762149255883, 18323863751121816757,
                  7640891576956012808, 18254077611867640127]
PINNED_INTS = [16294208416658607535, 10451216379200822465, 16490336266968443936, 3055647633038352039,
               7640891576956012808]
PINNED_FLOATS = [7960286522194355700, 7960286522194355700, 501192881046439246, 1398617426342131683,
                 7640891576956012808]


def test_pinned_values():
    assert hash_array(pa.array(STRINGS, pa.large_string())).tolist() == PINNED_STRINGS
    assert hash_array(pa.array([0, 1, -1, 2**63 - 1, None], pa.int64())).tolist() == PINNED_INTS
    assert hash_array(pa.array([0.0, -0.0, 1.5, float("nan"), None])).tolist() == PINNED_FLOATS
    t = pa.table({"a": ["x", "y"], "b": [1, 2]})
    assert hash_columns(t, ["a", "b"]).tolist() == [10117496320514649189, 17891849776079693568]


def test_same_key_same_hash_whatever_the_type_width_or_encoding():
    s = pa.array(STRINGS * 30_000)               # long enough for the dictionary path
    want = hash_array(s.cast(pa.large_string()))
    for form in (s, s.cast(pa.string_view()), s.dictionary_encode(), s.cast(pa.large_string()).slice(0)):
        assert (hash_array(form) == want).all()
    assert (hash_array(s.cast(pa.large_string()).slice(5, 100)) == want[5:105]).all()
    assert (hash_array(s.slice(5, 100)) == want[5:105]).all()            # 32-bit offsets, hashed as they are
    fixed = pa.array([f"id{x:03d}" for x in range(500)])
    assert (hash_array(fixed.slice(3)) == hash_array(fixed.cast(pa.large_string()))[3:]).all()
    ints = [3, None, -7, 0]
    for t in (pa.int8(), pa.int16(), pa.int32(), pa.uint32()):
        got = hash_array(pa.array([3, None, 0], t))
        assert (got == hash_array(pa.array([3, None, 0], pa.int64()))).all()
    assert (hash_array(pa.chunked_array([ints[:2], ints[2:]], pa.int64())) == hash_array(pa.array(ints))).all()


def test_fixed_width_path_equals_the_general_one(monkeypatch):
    rng = np.random.default_rng(4)
    ids = pa.array([f"id{x:010d}" for x in rng.integers(0, 10**10, 5000)], pa.large_string())
    fast = hash_array(ids)
    monkeypatch.setattr(H, "FIXED_WIDTH_MAX", 0)
    assert (hash_array(ids) == fast).all()


def test_nulls_are_one_key_and_land_together():
    h = hash_array(pa.array([None, "a", None], pa.string()))
    assert h[0] == h[2] == NULL_HASH
    o = owners_of(hash_columns(pa.table({"a": [None, None, "x"], "b": [1, 1, 2]}), ["a", "b"]), 7)
    assert o[0] == o[1]


def test_owners_are_balanced_and_in_range():
    keys = pa.array([f"user{i}" for i in range(100_000)])
    o = owners_of(hash_array(keys), 10)
    counts = np.bincount(o, minlength=10)
    assert o.max() < 10 and counts.min() > 9_000 and counts.max() < 11_000


@pytest.mark.parametrize("seed", ["0", "12345"])
def test_the_hash_ignores_the_python_hash_seed(seed):
    code = ("import pyarrow as pa; from shardstats.worker.data.hashing import hash_array; "
            f"print(hash_array(pa.array({STRINGS!r}, pa.large_string())).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout) == PINNED_STRINGS


@pytest.mark.parametrize("workers", [1, 3, 10, 70_000])
def test_split_by_groups_rows_by_rank_in_their_order(workers):
    """Each rank's part holds exactly the rows sent to it, in the table's order (a stable grouping), whatever
    the rank's width: ranks that fit 16 bits are sorted as uint16 (a radix sort), wider ones as they are."""
    from shardstats.worker.engine.exchange import split_by
    rng = np.random.default_rng(workers)
    n = 5000
    dest = rng.integers(0, workers, n)
    table = pa.table({"i": np.arange(n), "d": dest})
    parts = split_by(table, dest, workers)
    assert len(parts) == workers and sum(p.num_rows for p in parts) == n
    for r in set(dest.tolist()) | {0}:
        assert parts[r].column("i").to_pylist() == np.flatnonzero(dest == r).tolist()


def test_text_travels_with_32_bit_offsets_and_a_receiver_takes_either_width(monkeypatch):
    """``wire``: dictionaries decoded and large_string cast to string (a column too big for 32-bit offsets stays
    large); a piece whose text offsets differ from the receiver's schema is taken as the receiver's type, and a
    piece of another shape is still refused."""
    import pytest
    from shardstats.protocol.errors import ProtocolError
    from shardstats.worker.data import codec
    from shardstats.worker.engine import exchange
    t = pa.table({"d": pa.array(["a", "bb", None, "a"]).dictionary_encode(),
                  "s": pa.array(["x", None, "zz", ""], pa.large_string()), "n": [1, 2, 3, 4]})
    w = exchange.wire(t)
    assert w.schema.types == [pa.string(), pa.string(), pa.int64()]
    assert w.to_pylist() == exchange.plain(t).to_pylist()
    monkeypatch.setattr(exchange, "WIRE_STRING_BELOW", 8)
    assert exchange.wire(t).schema.types == [pa.large_string(), pa.large_string(), pa.int64()]
    got = codec.decode(codec.encode(w), exchange.plain(t).schema)         # string pieces, a large_string rank
    assert got.schema == exchange.plain(t).schema and got.to_pylist() == w.to_pylist()
    with pytest.raises(ProtocolError):
        codec.decode(codec.encode(w), pa.schema([("d", pa.string()), ("s", pa.string()), ("n", pa.float64())]))


def _owner_cases():
    rng = np.random.default_rng(11)
    n = 4000
    ints = rng.integers(-3, 40, n)
    mask = rng.random(n) < 0.1

    def chunked_dict(values):
        half = len(values) // 2          # two row groups, each with its own dictionary (as Parquet reads them)
        return pa.chunked_array([pa.array(values[:half]).dictionary_encode(),
                                 pa.array(values[half:]).dictionary_encode()])
    words = [None if m else f"w{x % 17}" for x, m in zip(ints, mask)]
    yield "int32 span 43 with negatives", pa.table({"k": pa.array(ints, pa.int32())}), ["k"]
    yield "int8 with nulls", pa.table({"k": pa.array(ints, pa.int8(), mask=mask)}), ["k"]
    yield "uint16", pa.table({"k": pa.array(ints + 3, pa.uint16())}), ["k"]
    yield "int64 at its top", pa.table({"k": pa.array(2**63 - 1 - (ints + 3), pa.int64())}), ["k"]
    yield "int64 at its bottom, nulls", pa.table({"k": pa.array(-2**63 + ints + 3, pa.int64(), mask=mask)}), ["k"]
    yield "dictionary, two chunks, nulls", pa.table({"k": chunked_dict(words)}), ["k"]
    yield "composite: dictionary and two ints", pa.table({
        "a": chunked_dict(words), "b": pa.array(ints % 7, pa.int32(), mask=~mask & (ints > 30)),
        "c": pa.array(ints % 3 - 5, pa.int64())}), ["b", "a", "c"]
    yield "composite with a plain text key (no grid)", pa.table({
        "a": pa.array(words), "b": pa.array(ints, pa.int32())}), ["b", "a"]
    yield "a wide span (no grid)", pa.table({"k": pa.array(rng.integers(-10**15, 10**15, n))}), ["k"]
    yield "bool and float keys (no grid)", pa.table({"b": pa.array(ints > 5), "f": pa.array(ints / 2)}), ["b", "f"]
    yield "all one value", pa.table({"k": pa.array(np.full(n, 7), pa.int64())}), ["k"]
    yield "one row", pa.table({"k": pa.array([5], pa.int32())}), ["k"]
    yield "no rows", pa.table({"k": pa.array([], pa.int32())}), ["k"]
    yield "only nulls", pa.table({"k": pa.nulls(10, pa.int32())}), ["k"]
    yield "a key named twice", pa.table({"k": pa.array(ints, pa.int32())}), ["k", "k"]


@pytest.mark.parametrize("workers", [1, 3, 10, 300])
@pytest.mark.parametrize("name,table,keys", list(_owner_cases()), ids=[c[0] for c in _owner_cases()])
def test_owners_by_key_equals_owners_of_every_rows_hash(name, table, keys, workers):
    """The grid of the keys' values hashed once and looked up gives every row the owner its own hash gives."""
    want = owners_of(hash_columns(table, keys), workers)
    got = H.owners_by_key(table, keys, workers)
    assert got.dtype == want.dtype and got.tolist() == want.tolist()


def test_owners_by_key_hashes_each_combination_once_where_keys_are_small_codes(monkeypatch):
    hashed = []
    real = H.hash_columns
    monkeypatch.setattr(H, "hash_columns", lambda t, keys, *a: hashed.append(t.num_rows) or real(t, keys, *a))
    cases = {name: (table, keys) for name, table, keys in _owner_cases()}
    H.owners_by_key(*cases["composite: dictionary and two ints"], 10)
    table, _ = cases["composite: dictionary and two ints"]
    a = table.column("a").unify_dictionaries().combine_chunks()
    assert hashed == [8 * (len(a.dictionary) + 1) * 3]       # b: 0..6, NULL; a: its words, NULL; c: -5..-3
    hashed.clear()
    H.owners_by_key(*cases["a wide span (no grid)"], 10)
    assert hashed == [4000]
