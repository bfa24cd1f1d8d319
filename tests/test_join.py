"""join against DuckDB on the same files: every kind of join, broadcast and shuffle, many-to-many keys, NULL
keys, empty sides, int32 with int64 keys, a hot key salted over the reducers; the planner's choice and why."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import UsageError
from shardstats.testing import in_process_cluster
from tests.keyed_ref import assert_rows_equal, duck

HOWS = {"inner": "INNER JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "full": "FULL OUTER JOIN",
        "semi": "SEMI JOIN", "anti": "ANTI JOIN"}


def sides(tmp_path, rng, nl=3000, nr=400, keys=300, hot=None, empty_right=False):
    def key(n, dtype, hot=None):
        k = rng.integers(0, keys, n).astype(object)
        k[rng.random(n) < 0.05] = None
        if hot is not None:
            k[rng.random(n) < hot] = 7
        return pa.array(k, dtype)
    L = tmp_path / "L"
    R = tmp_path / "R"
    L.mkdir()
    R.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"k": key(nl // 3, pa.int64(), hot), "v": rng.integers(0, 100, nl // 3),
                                 "name": [f"l{x}" for x in range(nl // 3)]}), L / f"l{i}.parquet")
    for i in range(2):
        n = 0 if empty_right else nr // 2
        pq.write_table(pa.table({"k": key(n, pa.int32()), "v": pa.array(rng.random(n)),
                                 "label": [f"r{x}" for x in range(n)]}), R / f"r{i}.parquet")
    return L, R


def reference(L, R, how):
    l, r = f"read_parquet('{L}/*.parquet')", f"read_parquet('{R}/*.parquet')"
    if how in ("semi", "anti"):
        return duck(f"SELECT l.* FROM {l} l {HOWS[how]} {r} r ON l.k = r.k")[1]
    key = "coalesce(l.k, r.k) AS k" if how in ("right", "full") else "l.k"
    return duck(f"SELECT {key}, l.v, l.name, r.v AS v_right, r.label FROM {l} l {HOWS[how]} {r} r "
                f"ON l.k = r.k")[1]


async def job(c, L, R, **params):
    return await run_job(c.addrs, c.token, job_spec("join", str(L), {"right": str(R), "on": "k", "limit": 0,
                                                                   **params}))


@pytest.mark.parametrize("how", list(HOWS))
async def test_every_join_equals_duckdb_broadcast_and_shuffle(tmp_path, how):
    rng = np.random.default_rng(3)
    L, R = sides(tmp_path, rng)
    want = reference(L, R, how)
    async with in_process_cluster(4, root=str(tmp_path)) as c:
        for strategy in ("auto", "shuffle"):
            if how == "full" and strategy == "auto":
                pass
            rep = await job(c, L, R, how=how, strategy=strategy)
            assert rep.result["rows"] == len(want)
            assert_rows_equal(rep.result["data"], want, len(rep.result["columns"]), f"{how} {strategy}")
            st = {k: sum(w.get(k, 0) for w in rep.workers) for k in ("shuffled_left_rows", "shuffled_right_rows")}
            if strategy == "auto" and how == "right":
                # the side a right join may broadcast is the left, 3000 rows against 400: sent to 3 other
                # workers it would move more than shuffling both sides, so auto shuffles and says why
                assert rep.result["strategy"] == "shuffle" and "would move more" in rep.result["why"]
            elif strategy == "auto" and how != "full":
                assert rep.result["strategy"] == "broadcast" and "limit" in rep.result["why"]
                big = "left" if rep.workers[0]["broadcast_side"] == "right" else "right"
                assert st[f"shuffled_{big}_rows"] == 0           # no row of the big side moved
            else:
                assert rep.result["strategy"] == "shuffle"
    assert rep.result["columns"][:3] == ["k", "v", "name"]


async def test_empty_side_and_mismatched_key_types(tmp_path):
    rng = np.random.default_rng(4)
    L, R = sides(tmp_path, rng, empty_right=True)
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        for how in ("inner", "left", "anti"):
            rep = await job(c, L, R, how=how, strategy="shuffle")
            assert_rows_equal(rep.result["data"], reference(L, R, how), 5 if how != "anti" else 3, how)
        pq.write_table(pa.table({"k": ["a", "b"], "w": [1, 2]}), tmp_path / "S.parquet")
        with pytest.raises(UsageError, match=r"incompatible types: left 'k' is int64, right 'k' is"):
            await run_job(c.addrs, c.token, job_spec("join", str(L), {"right": str(tmp_path / "S.parquet"),
                                                                      "on": "k"}))
        with pytest.raises(UsageError, match=r"the right side has no column 'k2'"):
            await run_job(c.addrs, c.token, job_spec("join", str(L), {"right": str(R), "left_on": "k",
                                                                      "right_on": "k2"}))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
async def test_a_file_lacking_a_key_column_is_named_not_read_as_nulls(tmp_path, fmt):
    """One file of several lacks the key: its rows were read as NULL keys (the files' schemas are united by
    name), which a sort placed with the NULLs and an inner join matched to nothing -- rows lost, exit 0. Now the
    job is refused naming the file (and the file that has the key), as group-by refuses it; the next job runs.
    Where no file has the key, the op says so in its own words (--by: no column ...)."""
    from shardstats.errors import InputError
    d = tmp_path / "in"
    d.mkdir()
    a, b = pa.table({"k": [1, 2, 2], "v": [1, 2, 3]}), pa.table({"v": [10, 20]})
    if fmt == "parquet":
        pq.write_table(a, d / "a.parquet")
        pq.write_table(b, d / "b.parquet")
    else:
        import pyarrow.csv as pcsv
        pcsv.write_csv(a, d / "a.csv")
        pcsv.write_csv(b, d / "b.csv")
    other = tmp_path / "r.parquet"
    pq.write_table(pa.table({"k": [1, 2], "w": [5, 6]}), other)
    import re
    lacking = re.escape(f"{d / ('b.' + fmt)}: no column 'k'")
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        for spec in (job_spec("sort", str(d), {"by": "k", "out": str(tmp_path / "o")}),
                     job_spec("join", str(d), {"right": str(other), "on": "k"}),
                     job_spec("join", str(other), {"right": str(d), "on": "k"}),
                     job_spec("groupby", str(d), {"by": "k", "agg": ["sum(v)"]})):
            with pytest.raises(InputError, match=lacking):
                await run_job(c.addrs, c.token, spec)
        rep = await run_job(c.addrs, c.token, job_spec("join", str(d / f"a.{fmt}"), {"right": str(other), "on": "k"}))
        assert rep.result["rows"] == 3


async def test_a_hot_key_is_salted_and_the_rows_stay_the_same(tmp_path):
    """Half the big side holds one key: salted, no reducer above 1.5x the mean; unsalted, one takes it."""
    rng = np.random.default_rng(9)
    L, R = sides(tmp_path, rng, nl=30_000, nr=3000, keys=3000, hot=0.5)
    want = reference(L, R, "inner")
    async with in_process_cluster(5, root=str(tmp_path)) as c:
        salted = await job(c, L, R, strategy="shuffle", limit=100)
        off = await job(c, L, R, strategy="shuffle", salt="off", limit=100)
        out = await job(c, L, R, strategy="shuffle", out=str(tmp_path / "o"))
    assert salted.result["rows"] == off.result["rows"] == len(want)
    _, got = duck(f"SELECT k, v, name, v_right, label FROM read_parquet('{tmp_path}/o/*.parquet')")
    assert_rows_equal([list(r) for r in got], want, 5)
    share = lambda rep: max(w["reducer_pairs"] for w in rep.workers) / (
        sum(w["reducer_pairs"] for w in rep.workers) / len(rep.workers))
    assert share(salted) <= 1.5 and share(off) > 2, (share(salted), share(off))
    assert salted.workers[0]["hot_keys"][0][0] == 7 and salted.workers[0]["busiest_reducer_share_unsalted"] > 2
    assert out.result["strategy"] == "shuffle"


def test_join_usage_errors():
    for params, why in [({"on": "k"}, "--right"), ({"right": "r"}, "--on: name the key columns"),
                        ({"right": "r", "left_on": "a,b", "right_on": "c"}, "--left-on names 2 columns"),
                        ({"right": "r", "on": "k", "how": "cross"}, "--how")]:
        with pytest.raises(UsageError, match=why):
            job_spec("join", "l", params)


async def test_a_bloom_filter_drops_rows_without_partners_before_the_shuffle(tmp_path):
    rng = np.random.default_rng(12)
    L, R = sides(tmp_path, rng, nl=30_000, nr=600, keys=20_000)   # most left keys have no partner
    async with in_process_cluster(4, root=str(tmp_path)) as c:
        for how in ("inner", "semi", "left", "right"):
            on = await job(c, L, R, how=how, strategy="shuffle")
            off = await job(c, L, R, how=how, strategy="shuffle", bloom=False)
            want = reference(L, R, how)
            for rep in (on, off):
                assert_rows_equal(rep.result["data"], want, len(rep.result["columns"]), how)
            w0 = on.workers[0]
            if how in ("inner", "semi", "right"):     # the left side's rows without a partner may go
                assert w0["bloom_pruned_side"] == "left" and w0["bloom_pruned_rows"] > 20_000
                assert sum(w["shuffled_left_rows"] for w in on.workers) < \
                    sum(w["shuffled_left_rows"] for w in off.workers) / 3
                assert w0["bloom_false_positive_rate"] < 0.05
            else:                                       # a left join keeps them: no filter
                assert "bloom_pruned_rows" not in w0
            assert "bloom_pruned_rows" not in off.workers[0]


def test_the_bloom_filter_never_outgrows_a_shuffle_chunk():
    """The filter goes up and down the tree whole: it is capped at one chunk (fewer bits a key, more false
    positives), and refused when a side has too many keys for the cap to pay."""
    from shardstats.worker.comm.shuffle import DEFAULT_CHUNK_BYTES
    from shardstats.worker.engine import bloom
    assert bloom.size_for(600) == 1024 and bloom.size_for(10**6) == DEFAULT_CHUNK_BYTES
    assert bloom.size_for(3 * 10**6) == 0
    assert all(bloom.size_for(n) <= DEFAULT_CHUNK_BYTES for n in (1, 10**3, 10**5, 10**6, 10**7))


async def test_text_keys_held_as_a_dictionary_on_one_side_and_plain_on_the_other(tmp_path):
    """db-benchmark's q4 joins on a text column: the reader holds x's as an Arrow dictionary, which the broadcast
    join keeps as it is while the small side arrives plain (string and large_string files here); the rows equal
    DuckDB's, broadcast and shuffled, and the planner weighs the small side as it travels (decoded)."""
    from shardstats.worker.engine.exchange import plain
    from shardstats.worker.ops.join import _plain_bytes
    rng = np.random.default_rng(21)
    L, R = tmp_path / "L", tmp_path / "R"
    L.mkdir()
    R.mkdir()
    for i in range(3):
        k = np.array([f"id{v}" for v in rng.integers(0, 50, 2000)], dtype=object)
        k[rng.random(2000) < 0.05] = None
        pq.write_table(pa.table({"k": pa.array(k, pa.string()), "v": rng.integers(0, 100, 2000)}),
                       L / f"l{i}.parquet")                   # dictionary-stored: read as a dictionary
    for i, typ in enumerate((pa.string(), pa.large_string())):
        k = [f"id{v}" for v in rng.integers(0, 60, 40)]
        pq.write_table(pa.table({"k": pa.array(k, typ), "w": rng.random(40),
                                 "tag": pa.array([f"t{v % 3}" for v in range(40)])}),
                       R / f"r{i}.parquet", use_dictionary=["tag"])      # the key plain, the tag a dictionary
    l, r = f"read_parquet('{L}/*.parquet')", f"read_parquet('{R}/*.parquet')"
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        for how in ("inner", "left", "semi"):
            cols = "l.*" if how == "semi" else "l.k, l.v, r.w, r.tag"
            want = duck(f"SELECT {cols} FROM {l} l {HOWS[how]} {r} r ON l.k = r.k")[1]
            for strategy in ("auto", "shuffle"):
                rep = await job(c, L, R, how=how, strategy=strategy)
                assert rep.result["strategy"] == ("broadcast" if strategy == "auto" else "shuffle")
                assert_rows_equal(rep.result["data"], want, len(rep.result["columns"]), f"{how} {strategy}")
    t = pa.table({"a": pa.array(["xx", "yyyy", None, "z"] * 500).dictionary_encode(),
                  "b": pa.array([1, 2, 3, 1] * 500).dictionary_encode(), "c": np.arange(2000)})
    assert abs(_plain_bytes(t) - plain(t).nbytes) <= 0.05 * plain(t).nbytes      # an estimate: bitmaps aside


def test_hot_keys_of_a_large_share_are_found_from_a_sample():
    """A rank holding more than hot.SAMPLE_ROWS rows counts candidates on every k-th row: the hot key is still
    found (its count within 3% of the exact), salted, and the join's rows are DuckDB's."""
    import duckdb

    from shardstats.testing import run_on_ranks
    from shardstats.worker.engine import hot
    from shardstats.worker.jobs import Sides
    rng = np.random.default_rng(31)
    n = hot.SAMPLE_ROWS + 12_345          # every 2nd row counted
    lefts, rights = [], []
    for _ in range(5):                     # hot: half the left side, over half a reducer's load
        k = rng.integers(0, 50_000, n)
        k[rng.random(n) < 0.5] = 7
        lefts.append(pa.table({"k": k, "v": rng.random(n)}))
        rights.append(pa.table({"k": np.arange(r := 10_000) + _ * r, "w": rng.random(r)}))
    out, _ = run_on_ranks("join", [Sides({"main": lo, "right": ro}) for lo, ro in zip(lefts, rights)],
                          {"right": "r", "on": "k", "strategy": "shuffle", "limit": 5})
    stats = [s for _, s in out]
    L, R = pa.concat_tables(lefts), pa.concat_tables(rights)
    exact = int(np.sum(L.column("k").to_numpy() == 7))
    key, count = stats[0]["hot_keys"][0]
    assert key == 7 and abs(count - exact) <= 0.03 * exact and stats[0]["salted_side"] == "left"
    want = duckdb.sql("SELECT count(*) FROM L JOIN R USING (k)").fetchall()[0]
    assert sum(s["output_rows"] for s in stats) == want[0]
    rows = [s["reducer_pairs"] for s in stats]
    assert max(rows) <= 1.5 * sum(rows) / len(rows)


def test_a_zipf_keyed_big_side_keeps_every_reducer_within_1_5x_of_the_mean():
    """Zipf(1.2) keys on one side, unique on the other (db-benchmark's q5 with skew), 10 ranks: the top key holds
    ~18% of its side, under 2x that side's share per reducer but enough to lift its reducer to ~2x the mean load;
    it is salted, every reducer stays within 1.5x of the mean, and the rows are DuckDB's."""
    import duckdb

    from shardstats.testing import run_on_ranks
    from shardstats.worker.jobs import Sides
    rng = np.random.default_rng(41)
    W, n = 10, 4000
    keys = rng.permutation(W * n)
    lefts = [pa.table({"k": keys[r * n:(r + 1) * n], "v": rng.random(n)}) for r in range(W)]
    rights = [pa.table({"k": keys[(rng.zipf(1.2, n) - 1) % len(keys)], "w": rng.random(n)}) for _ in range(W)]
    out, _ = run_on_ranks("join", [Sides({"main": lo, "right": ro}) for lo, ro in zip(lefts, rights)],
                          {"right": "r", "on": "k", "strategy": "shuffle", "limit": 5})
    stats = [s for _, s in out]
    L, R = pa.concat_tables(lefts), pa.concat_tables(rights)
    want = duckdb.sql("SELECT count(*) FROM L JOIN R USING (k)").fetchall()[0][0]
    assert sum(s["output_rows"] for s in stats) == want
    rows = [s["reducer_pairs"] for s in stats]
    assert stats[0]["busiest_reducer_share_unsalted"] > 1.6 and stats[0]["salted_side"] == "right"
    assert max(rows) <= 1.5 * sum(rows) / len(rows), rows


async def test_a_hot_timestamp_key_is_salted_and_the_rows_stay_the_same(tmp_path):
    """A hot key that msgpack cannot carry as a Python value (a timestamp) crashed the salted join ("cannot
    encode datetime"); the candidates now travel as Arrow and the stats show the key as ISO text."""
    rng = np.random.default_rng(12)
    L, R = tmp_path / "L", tmp_path / "R"
    L.mkdir()
    R.mkdir()
    for i in range(3):
        k = np.where(rng.random(4000) < 0.5, 7, rng.integers(0, 500, 4000)) * 1_000_000
        pq.write_table(pa.table({"k": pa.array(k, pa.timestamp("us")), "v": rng.integers(0, 100, 4000)}),
                       L / f"l{i}.parquet")
    k = rng.integers(0, 500, 600) * 1_000_000
    pq.write_table(pa.table({"k": pa.array(k, pa.timestamp("us")), "w": rng.random(600)}), R / "r.parquet")
    _, want = duck(f"SELECT count(*), sum(l.v), sum(r.w) FROM read_parquet('{L}/*.parquet') l "
                   f"JOIN read_parquet('{R}/*.parquet') r ON l.k = r.k")
    async with in_process_cluster(4, root=str(tmp_path)) as c:
        rep = await job(c, L, R, strategy="shuffle", out=str(tmp_path / "o"))
    _, got = duck(f"SELECT count(*), sum(v), sum(w) FROM read_parquet('{tmp_path}/o/*.parquet')")
    assert got[0][:2] == want[0][:2] and abs(got[0][2] - want[0][2]) <= 1e-9 * abs(want[0][2])
    assert rep.workers[0]["hot_keys"][0][0] == "1970-01-01T00:00:07"


async def test_a_join_taken_in_key_slice_passes_reports_the_unsalted_share_of_the_summed_counts(tmp_path):
    """A shuffle join over the budget runs in key-slice passes; its passes' counts add, and the busiest reducer
    unsalted is their sum's share (~1.0 on uniform keys), not the passes' shares added (it read 2.00)."""
    from tests.test_beyond_memory import _settings
    rng = np.random.default_rng(17)
    L, R = tmp_path / "L", tmp_path / "R"
    L.mkdir()
    R.mkdir()
    for i in range(3):
        n = 150_000
        pq.write_table(pa.table({"k": rng.integers(0, 10**6, n), "v": rng.random(n)}), L / f"l{i}.parquet")
        pq.write_table(pa.table({"k": rng.integers(0, 10**6, n), "w": rng.random(n)}), R / f"r{i}.parquet")
    async with in_process_cluster(3, root=str(tmp_path), settings=_settings(tmp_path)) as c:
        rep = await job(c, L, R, strategy="shuffle", salt="off", limit=5)
    assert max(w.get("passes", 1) for w in rep.workers) > 1
    w0 = min(rep.workers, key=lambda w: w["rank"])
    assert w0["busiest_reducer_share_unsalted"] < 1.1
    per = w0["unsalted_reducer_pairs"]
    assert per == [w["reducer_pairs"] for w in sorted(rep.workers, key=lambda w: w["rank"])]   # salt off: the load
    assert w0["busiest_reducer_share_unsalted"] == round(max(per) / (sum(per) / 3), 4)


def test_passes_add_counts_and_take_shares_of_the_sums():
    from shardstats.worker.ops.passes import add_stats
    a = {"unsalted_reducer_pairs": [10, 30], "busiest_reducer_share_unsalted": 1.5, "salt": 2,
         "hot_keys": [["a", 7]], "shuffled_pairs": 5}
    b = {"unsalted_reducer_pairs": [30, 10], "busiest_reducer_share_unsalted": 1.5, "salt": 2,
         "hot_keys": [["b", 9]], "shuffled_pairs": 6}
    out = add_stats(a, b)
    assert out["unsalted_reducer_pairs"] == [40, 40] and out["busiest_reducer_share_unsalted"] == 1.0
    assert out["salt"] == 2 and out["hot_keys"] == [["b", 9], ["a", 7]] and out["shuffled_pairs"] == 11
    assert add_stats(a, {"shuffled_pairs": 1})["hot_keys"] == [["a", 7]]     # a pass without hot keys keeps them
    # groups whose approximate quantiles were rounded, counted per aggregate in each pass: added, not the last's
    got = add_stats({"approx_rounded_groups": {"m": 2, "p": 1}}, {"approx_rounded_groups": {"m": 3}})
    assert got["approx_rounded_groups"] == {"m": 5, "p": 1}
    # a sort's CPU seconds per phase add over its passes like its wall seconds (they were the last pass's)
    got = add_stats({"phases": {"sort": 1.0}, "phase_cpu": {"sort": 0.5, "write": 0.25}},
                    {"phases": {"sort": 2.0}, "phase_cpu": {"sort": 0.75}})
    assert got["phases"] == {"sort": 3.0} and got["phase_cpu"] == {"sort": 1.25, "write": 0.25}


@pytest.mark.parametrize("how", list(HOWS))
@pytest.mark.parametrize("using", [True, False])
def test_the_local_join_of_pairs_and_takes_equals_duckdb_on_whole_rows(how, using):
    """The local join pairs row numbers by the keys in DuckDB and takes every column in Arrow: against DuckDB
    joining the whole rows, on two keys (an int and dictionary-encoded text, NULLs in both, many-to-many),
    dictionary and chunked columns on both sides, names that clash twice, and empty sides; the answer's names,
    its types (text as ``string``, as DuckDB returns it) and its rows as a multiset."""
    from shardstats.worker.ops.join import _local_join
    rng = np.random.default_rng(11)

    def side(n, prefix, extra):
        k1 = rng.integers(0, 6, n).astype(object)
        k1[rng.random(n) < 0.1] = None
        k2 = np.array([f"t{x}" for x in rng.integers(0, 3, n)], dtype=object)
        k2[rng.random(n) < 0.1] = None
        cols = {"a": pa.array(k1, pa.int64()), "b": pa.array(k2, pa.string()).dictionary_encode(),
                "v": pa.array(rng.random(n)),
                "name": pa.array([f"{prefix}{x % 7}" for x in range(n)]).dictionary_encode()}
        cols.update(extra(n))
        t = pa.table(cols)
        return pa.concat_tables([t.slice(0, n // 2), t.slice(n // 2)])      # two chunks
    left = side(300, "l", lambda n: {"v_right": pa.array(rng.integers(0, 9, n))})
    right = side(80, "r", lambda n: {"label": pa.array([f"x{x}" for x in range(n)], pa.large_string())})
    if not using:
        right = right.rename_columns(["ra", "rb", "v", "name", "label"])
    lk, rk = ("a", "b"), (("a", "b") if using else ("ra", "rb"))
    for L, R, what in ((left, right, "both"), (left.slice(0, 0), right, "empty left"),
                       (left, right.slice(0, 0), "empty right")):
        got = _local_join(how, lk, rk, L, R)
        cond = " AND ".join(f"l.{a} = r.{b}" for a, b in zip(lk, rk))
        if how in ("semi", "anti"):
            sql = f"SELECT l.* FROM L l {HOWS[how]} R r ON {cond}"
        else:
            keys = [f"coalesce(l.{c}, r.{d}) AS {c}" if how in ("right", "full") else f"l.{c}"
                    for c, d in zip(lk, rk)]
            sql = (f"SELECT {', '.join(keys)}, l.v, l.name, l.v_right, r.v AS v_right_right, r.name AS name_right, "
                   f"r.label FROM L l {HOWS[how]} R r ON {cond}")
        want = _duck_tables(sql, L, R)
        assert got.column_names == want.column_names, (what, got.column_names)
        assert got.schema.types == want.schema.types, (what, got.schema, want.schema)
        assert_rows_equal([list(r.values()) for r in got.to_pylist()],
                          [tuple(r.values()) for r in want.to_pylist()], want.num_columns, f"{how} {what}")


def _duck_tables(sql, L, R):
    import duckdb
    con = duckdb.connect()
    con.register("L", L)
    con.register("R", R)
    return con.sql(sql).to_arrow_table()


@pytest.mark.parametrize("strategy", ["broadcast", "shuffle"])
async def test_nan_keys_match_each_other_and_zero_matches_minus_zero(tmp_path, strategy):
    """Float keys as DuckDB's own tables join them: NaN = NaN and -0.0 = 0.0, NULL matching nothing, whichever
    rank a key's rows start on (the stable hash sends every NaN and both zeros to one owner). DuckDB over the
    same Parquet files can disagree with itself here: its scan's pushed-down join filter (a min/max range) drops
    NaN rows, so a semi join of NaN keys gave no row from the files and one from the same rows as tables."""
    L, R = tmp_path / "L", tmp_path / "R"
    L.mkdir()
    R.mkdir()
    for i, keys in enumerate(([0.0, np.nan, 1.5, None, -0.0], [np.nan, 2.5, 7.0, -0.0, None], [3.0])):
        pq.write_table(pa.table({"k": pa.array(keys, pa.float64()), "v": np.arange(len(keys)) + 10 * i}),
                       L / f"l{i}.parquet")
    pq.write_table(pa.table({"k": pa.array([np.nan, -0.0, 7.0, None, np.nan], pa.float64()),
                             "w": ["a", "b", "c", "d", "e"]}), R / "r.parquet")
    import duckdb
    con = duckdb.connect()
    con.execute(f"CREATE TABLE l AS SELECT * FROM read_parquet('{L}/*.parquet'); "
                f"CREATE TABLE r AS SELECT * FROM read_parquet('{R}/*.parquet')")
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        for how, sql in (("inner", "SELECT l.k, l.v, r.w FROM l JOIN r ON l.k = r.k"),
                         ("left", "SELECT l.k, l.v, r.w FROM l LEFT JOIN r ON l.k = r.k"),
                         ("semi", "SELECT l.k, l.v FROM l SEMI JOIN r ON l.k = r.k"),
                         ("anti", "SELECT l.k, l.v FROM l ANTI JOIN r ON l.k = r.k")):
            want = con.sql(sql).fetchall()
            rep = await job(c, L, R, how=how, strategy=strategy, salt="off")
            cols = rep.result["columns"]
            got = [[r[cols.index(x)] for x in ("k", "v", "w")[:len(want[0]) if want else 2]]
                   for r in rep.result["data"]]
            assert rep.result["rows"] == len(want), (how, got, want)
            assert_rows_equal(got, want, len(want[0]) if want else 2, f"{how} {strategy}")
            if how == "inner":       # 2 NaN rows on the left x 2 on the right, 3 zeros of either sign x 1
                assert sum(1 for r in got if r[0] != r[0]) == 4 and sum(1 for r in got if r[0] == 0) == 3


def test_a_many_to_many_join_over_2_gib_of_text_on_one_worker_is_taken_in_64_bit_offsets():
    """One left row of 1 MiB of text meeting 2,100 right rows: 2.1 GB in one answer column. The received sides
    hold text as ``string`` (32-bit offsets), whose take Arrow refuses past 2 GiB ("overflowed binary array
    capacity"): the join failed. It now takes such a column as ``large_string``; every row is there."""
    import pyarrow.compute as pc
    from shardstats.worker.ops.join import _local_join
    payload = "x" * (1 << 20)
    left = pa.table({"k": pa.array([1, 2], pa.int64()), "text": pa.array([payload, "y"], pa.string())})
    right = pa.table({"k": pa.array(np.ones(2100, np.int64)), "w": pa.array(np.arange(2100))})
    got = _local_join("inner", ("k",), ("k",), left, right)
    assert got.num_rows == 2100 and got.column_names == ["k", "text", "w"]
    assert pa.types.is_large_string(got.schema.field("text").type)
    assert pc.sum(pc.binary_length(got.column("text"))).as_py() == 2100 << 20
    assert pc.all(pc.equal(got.column("text"), payload)).as_py()
    assert sorted(got.column("w").to_pylist()) == list(range(2100))


@pytest.mark.parametrize("how", ["right", "full"])
async def test_left_on_right_on_keeps_a_right_only_rows_key(tmp_path, how):
    """``--left-on a --right-on b``: the answer keeps the left key column and not the right's, so a right-only
    row's key was NULL -- lost. It is now the left key's COALESCE with the right's (``USING``, as ``--on``), for
    broadcast and shuffle alike; DuckDB's ``ON`` gives the same rows as ``COALESCE(l.a, r.b)``."""
    pq.write_table(pa.table({"a": pa.array([1, 2, None, 2], pa.int64()), "lv": ["x", "y", "n", "z"]}),
                   tmp_path / "L.parquet")
    pq.write_table(pa.table({"b": pa.array([2, 3, None, 4], pa.int32()), "rv": ["p", "q", "m", "s"]}),
                   tmp_path / "R.parquet")
    want = duck(f"SELECT coalesce(l.a, r.b) AS a, l.lv, r.rv FROM '{tmp_path}/L.parquet' l {HOWS[how]} "
                f"'{tmp_path}/R.parquet' r ON l.a = r.b")[1]
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        for strategy in ("auto", "shuffle"):
            rep = await run_job(c.addrs, c.token, job_spec("join", str(tmp_path / "L.parquet"), {
                "right": str(tmp_path / "R.parquet"), "left_on": "a", "right_on": "b", "how": how,
                "strategy": strategy, "limit": 0}))
            assert rep.result["columns"] == ["a", "lv", "rv"]
            assert_rows_equal(rep.result["data"], want, 3, f"{how} {strategy}")


@pytest.mark.parametrize("how", ["right", "full", "left"])
async def test_an_outer_join_salts_a_hot_key_on_either_side(tmp_path, how):
    """A key hot on the side whose partner's unmatched rows the join keeps (right and full joins, hot on the left;
    a left join, hot on the right) stayed whole: the busiest reducer 2.03x the mean. Now it is split and the
    other side's rows copied; a copy that finds none of the split rows on its reducer is dropped, not emitted as
    unmatched. Sparse hot rows (every third, --salt 3) leave reducers with copies and no split rows."""
    rng = np.random.default_rng(21)
    L, R = sides(tmp_path, rng, nl=30_000, nr=3000, keys=3000, hot=0.5)
    if how == "left":            # the hot side (30,000 rows) on the right
        L, R = R, L
        want = duck(f"SELECT l.k, l.v, l.label, r.v AS v_right, r.name FROM read_parquet('{L}/*.parquet') l "
                    f"LEFT JOIN read_parquet('{R}/*.parquet') r ON l.k = r.k")[1]
    else:
        want = reference(L, R, how)
    async with in_process_cluster(5, root=str(tmp_path)) as c:
        salted = await job(c, L, R, how=how, strategy="shuffle", limit=0)
        assert_rows_equal(salted.result["data"], want, 5, how)
        share = lambda rep: max(w["reducer_pairs"] for w in rep.workers) / (     # noqa: E731
            sum(w["reducer_pairs"] for w in rep.workers) / len(rep.workers))
        assert share(salted) <= 1.5 and salted.workers[0]["busiest_reducer_share_unsalted"] > 2
        assert salted.workers[0]["salted_side"] == ("left" if how != "left" else "right")
    d = tmp_path / "sparse"
    d.mkdir()
    n = 6000
    k = 100 + np.arange(n) % 50
    k[::3] = 7                     # the hot rows 3 apart: one salt offset of 3 for all of them
    pq.write_table(pa.table({"k": k, "v": np.arange(n)}), d / "l.parquet")
    pq.write_table(pa.table({"k": np.array([7, 7, 108, 99]), "w": np.arange(4)}), d / "r.parquet")
    l_, r_ = ("l", "r") if how != "left" else ("r", "l")
    want = duck(f"SELECT {'coalesce(a.k, b.k)' if how != 'left' else 'a.k'}, a.* EXCLUDE (k), b.* EXCLUDE (k) "
                f"FROM '{d}/{l_}.parquet' a {HOWS[how]} '{d}/{r_}.parquet' b ON a.k = b.k")[1]
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("join", str(d / f"{l_}.parquet"), {
            "right": str(d / f"{r_}.parquet"), "on": "k", "how": how, "strategy": "shuffle", "salt": "3",
            "bloom": False, "limit": 0}))      # (the Bloom filter would drop the rows between the hot ones)
        assert rep.workers[0].get("salt") == 3
        assert_rows_equal(rep.result["data"], want, 3, f"sparse {how}")


def test_auto_broadcasts_a_side_only_where_it_moves_less_than_a_shuffle():
    """Broadcasting S to W workers moves S x (W - 1), a shuffle (S + O) x (W - 1) / W: auto broadcasts a side under
    the limit only while S x (W - 1) <= O (the old planner broadcast any side under the limit: two equal sides
    of 58 MiB on 4 workers, db-benchmark's q5 at 1e6 rows, went by broadcast, 3x the bytes of the shuffle)."""
    from shardstats.worker.ops.join import JoinParams, _plan
    p = JoinParams(how="inner", right="R", on="k")
    mib = 1 << 20
    assert _plan(p, {"left": 58 * mib, "right": 58 * mib}, 4)[0] == "shuffle"
    assert _plan(p, {"left": 300 * mib, "right": 58 * mib}, 4)[:2] == ("broadcast", "right")
    assert _plan(p, {"left": 174 * mib, "right": 58 * mib}, 4)[:2] == ("broadcast", "right")     # equal: broadcast
    assert _plan(p, {"left": 173 * mib, "right": 58 * mib}, 4)[0] == "shuffle"
    assert _plan(p, {"left": 58 * mib, "right": 58 * mib}, 1)[:2] == ("broadcast", "right")     # nothing moves
    assert _plan(p, {"left": 10 * mib, "right": 0}, 10)[:2] == ("broadcast", "right")
    assert _plan(p, {"left": 10**12, "right": 65 * mib}, 10)[0] == "shuffle"                    # over the limit
    assert _plan(JoinParams(how="right", right="R", on="k"), {"left": 3 * mib, "right": 1 * mib}, 4)[0] == "shuffle"
    assert _plan(JoinParams(how="right", right="R", on="k"), {"left": 1 * mib, "right": 30 * mib}, 4)[:2] == ("broadcast", "left")
    assert _plan(JoinParams(how="full", right="R", on="k"), {"left": 1, "right": 1}, 4)[0] == "shuffle"
