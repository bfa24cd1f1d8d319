"""groupby against DuckDB's GROUP BY on the same files: every aggregate, every input format, the nasty datasets.

Over real TCP on an in-process cluster (``shardstats.testing``): the reader, the
schema agreement, the stable partitioner, the combiner, the Arrow IPC exchange and
the reducer are all the real ones; DuckDB reads the files itself as the reference.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import InputError, UsageError
from shardstats.testing import in_process_cluster
from tests.keyed_ref import assert_rows_equal, duck, duck_source, write

I64 = np.iinfo(np.int64)

MERGEABLE = ["count()", "count(f)", "sum(v)", "min(v)", "max(f)", "mean(v)", "mean(f)", "var(f)", "std(v)", "corr(v, f)",
             "min(s)", "max(s)"]
VALUES = ["median(f)", "quantile(v, 0.9)", "distinct(v)", "largest(f, 2)", "smallest(v, 3)", "collect(v)",
          "collect_set(s)", "sum(v)", "count()", "mean(f)"]
DUCK = {"count": "count({})", "sum": "sum({})", "min": "min({})", "max": "max({})", "mean": "avg({})",
        "var": "var_samp({})", "std": "stddev_samp({})", "median": "median({})", "distinct": "count(DISTINCT {})",
        "collect": "list({0} ORDER BY {0})", "collect_set": "list(DISTINCT {0} ORDER BY {0})"}


def duck_expr(e: str) -> str:
    func, inner = e.split("(", 1)
    args = [a.strip() for a in inner.rstrip(")").split(",") if a.strip()]
    if func == "count" and not args:
        return "count(*)"
    if func == "quantile":
        return f"quantile_cont({args[0]}, {args[1]})"
    if func == "largest":
        return f"max({args[0]}, {args[1]})"
    if func == "smallest":
        return f"min({args[0]}, {args[1]})"
    if func == "corr":
        return f"corr({args[0]}, {args[1]})"
    return DUCK[func].format(args[0])


def table(rng, n: int, keys: int = 5, nulls: bool = True, extremes: bool = False) -> pa.Table:
    k = rng.integers(0, keys, n)
    g = np.array([f"k{i}" for i in range(keys)], dtype=object)[k]
    if nulls:
        g[rng.random(n) < 0.1] = None
    v = rng.integers(-1000, 1000, n)
    if extremes and n:
        v[: max(1, n // 3)] = I64.max
        v[n // 3: 2 * n // 3] = I64.min
    f = rng.normal(50, 20, n)
    fm = rng.random(n) < 0.1 if nulls else np.zeros(n, bool)
    s = np.array([f"s{x}" for x in rng.integers(0, 7, n)], dtype=object)
    return pa.table({"g": pa.array(g, pa.string()), "n": pa.array(k % 2, pa.int64()), "v": pa.array(v, pa.int64()),
                     "f": pa.array(np.where(fm, np.nan, f), pa.float64(), mask=fm), "s": pa.array(s, pa.string())})


def shards(tmp_path, parts: list[pa.Table], fmt: str):
    d = tmp_path / f"in-{fmt}"
    d.mkdir(exist_ok=True)
    return d, [write(p, d / f"part{i:02d}", fmt) for i, p in enumerate(parts)]


async def check(c, d, files, keys: list[str], exprs: list[str], **params):
    rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": ",".join(keys), "agg": exprs,
                                                                      "limit": 0, **params}))
    k = ", ".join(keys)
    cols, want = duck(f"SELECT {k}, {', '.join(duck_expr(e) for e in exprs)} FROM {duck_source(files)} GROUP BY {k}")
    assert rep.result["rows"] == len(want)
    assert_rows_equal(rep.result["data"], want, len(keys), f"{keys} {exprs}")
    return rep


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl", "tsv"])
async def test_every_aggregate_equals_duckdb_in_every_format(tmp_path, fmt):
    rng = np.random.default_rng(7)
    parts = [table(rng, n) for n in (500, 0, 1, 800, 37)]
    if fmt in ("csv", "tsv", "jsonl"):
        parts = [p for p in parts if p.num_rows] + [parts[2]]   # a header-only CSV has no types to agree on
    d, files = shards(tmp_path, parts, fmt)
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        await check(c, d, files, ["g"], MERGEABLE)
        await check(c, d, files, ["g"], VALUES)
        await check(c, d, files, ["g", "n"], ["sum(v)", "count()", "median(v)"])


@pytest.mark.parametrize("name", ["single row", "all equal", "int64 extremes", "one key split over shards",
                                  "more workers than shards", "ties"])
async def test_nasty_datasets(tmp_path, name):
    rng = np.random.default_rng(11)
    workers = 3
    if name == "single row":
        parts = [table(rng, 1, nulls=False)]
    elif name == "all equal":
        t = table(rng, 300, keys=1, nulls=False)
        parts = [t.set_column(2, "v", pa.array(np.full(300, 5, np.int64))).set_column(
            3, "f", pa.array(np.full(300, 2.5)))]
    elif name == "int64 extremes":
        parts = [table(rng, 90, keys=2, nulls=False, extremes=True) for _ in range(3)]
    elif name == "one key split over shards":
        parts = [table(rng, 50, keys=1, nulls=False) for _ in range(4)]
    elif name == "more workers than shards":
        parts, workers = [table(rng, 200)], 5
    else:
        t = table(rng, 400, keys=3, nulls=False)
        parts = [t.set_column(2, "v", pa.array(rng.integers(0, 2, 400)))]
    d, files = shards(tmp_path, parts, "parquet")
    async with in_process_cluster(workers, root=str(tmp_path)) as c:
        await check(c, d, files, ["g"], ["sum(v)", "count()", "mean(v)", "var(f)", "min(v)", "max(v)", "std(f)"])
        await check(c, d, files, ["g"], ["median(v)", "quantile(f, 0.25)", "largest(v, 2)", "distinct(v)"])


async def test_integer_sums_are_exact_beyond_int64(tmp_path):
    v = np.full(1000, I64.max, np.int64)
    d, files = shards(tmp_path, [pa.table({"g": ["a"] * 1000, "v": v})] * 2, "parquet")
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await check(c, d, files, ["g"], ["sum(v)", "mean(v)"])
    assert rep.result["data"][0][1] == 2000 * int(I64.max)


async def test_combiner_bound_and_the_shuffle_bounds(tmp_path):
    """Shuffled pairs <= distinct keys per worker summed; inbound streams <= F; buffered <= F * C chunks."""
    rng = np.random.default_rng(3)
    parts = [table(rng, 20_000, keys=2_000) for _ in range(6)]
    d, files = shards(tmp_path, parts, "parquet")
    async with in_process_cluster(4, root=str(tmp_path)) as c:
        rep = await check(c, d, files, ["g"], ["sum(v)", "mean(f)", "count()"], chunk_bytes=4096, credits=2)
        ws = rep.workers
        distinct_per_worker = sum(w["combined_pairs"] for w in ws)
        assert sum(w["map_pairs"] for w in ws) == 120_000
        assert distinct_per_worker <= 4 * 2_001          # each worker's combiner: one row per key it saw
        assert sum(w["shuffled_pairs"] for w in ws) <= distinct_per_worker
        assert max(w["max_inbound_streams"] for w in ws) <= 1
        assert max(w["peak_buffered_bytes"] for w in ws) <= 1 * 2 * (4096 + 2048)
        # value-needing: the rows travel (no combiner), still within the bounds
        rep = await check(c, d, files, ["g"], ["median(f)"], chunk_bytes=8192, credits=3, fan_in=2)
        ws = rep.workers
        assert max(w["max_inbound_streams"] for w in ws) <= 2
        assert max(w["peak_buffered_bytes"] for w in ws) <= 2 * 3 * (8192 + 4096)
        assert sum(w["reducer_pairs"] for w in ws) == 120_000


async def test_bad_input_names_file_and_columns(tmp_path):
    rng = np.random.default_rng(5)
    d, files = shards(tmp_path, [table(rng, 10), table(rng, 10)], "csv")
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        with pytest.raises(InputError, match=r"part0[01]\.csv: no column 'nope' \(it has: g, n, v, f, s\)"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "nope", "agg": ["count()"]}))
        with pytest.raises(UsageError, match=r"sum\(s\): column 's' holds"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "g", "agg": ["sum(s)"]}))
        (d / "part02.csv").write_text("g,n,v,f,s\nx,1,notanumber,2.0,a\n")
        with pytest.raises(InputError, match=r"column 'v' is int64 in .*part0[01]\.csv but text \(string\) in "
                                             r".*part02\.csv|column 'v' is text \(string\) in .*part02\.csv but int64"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "g", "agg": ["sum(v)"]}))
        (d / "part02.csv").write_text("g,n,v,f,s\nx,1,2,2.0,a\ny,1,2\n")
        with pytest.raises(InputError, match=r"part02\.csv:3: a row of 3 fields where the header has 5"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "g", "agg": ["sum(v)"]}))
        (d / "part02.csv").write_bytes(b"g,n,v,f,s\nx,1,2,2.0,a\n\xff\xfe,1,2,2.0,a\n")
        with pytest.raises(InputError, match=r"part02\.csv:3: invalid UTF-8 at byte offset 22"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "g", "agg": ["sum(v)"]}))
        (d / "part02.csv").unlink()
        # and the cluster serves the next job
        await check(c, d, files, ["g"], ["sum(v)"])


async def test_empty_input_is_zero_rows(tmp_path):
    d = tmp_path / "e"
    d.mkdir()
    (d / "a.csv").write_text("g,v\n")
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "g", "agg": ["sum(v)"]}))
    assert rep.result["rows"] == 0 and rep.result["data"] == []


def test_agg_parsing_names_and_errors():
    from shardstats.worker.engine.aggregate import parse, parse_all
    assert parse("sum(v1)").name == "sum_v1" and parse("count()").name == "count"
    assert parse("corr(v1, v2)").name == "corr_v1_v2" and parse("x=quantile(v, 0.5)").arg == 0.5
    for bad, why in [("sum()", "takes 1 argument"), ("nope(v)", "unknown function"), ("sum(v", "expected FUNC"),
                     ("quantile(v, 2)", "between 0 and 1"), ("largest(v, 0)", "k must be")]:
        with pytest.raises(UsageError, match=why):
            parse(bad)
    with pytest.raises(UsageError, match="named 'sum_v'"):
        parse_all(["sum(v)", "sum(v)"], ["g"])


@pytest.mark.parametrize("exprs", [["median(v)"], ["median(f)", "quantile(v, 0.9)", "count()", "largest(f, 3)"],
                                   ["collect_set(s)", "sum(v)", "min(f)"]])
async def test_a_hot_key_is_salted_over_the_reducers_and_stays_exact(tmp_path, exprs):
    """One key holds 80% of the rows: with --salt auto no reducer takes more than 1.5x the mean; off, one
    reducer takes it all. Both answers equal DuckDB's."""
    rng = np.random.default_rng(21)
    n = 20_000
    parts = []
    for i in range(4):
        t = table(rng, n, keys=50, nulls=True)
        g = np.array(t.column("g").to_pylist(), dtype=object)
        g[rng.random(n) < 0.8] = "hot"
        parts.append(t.set_column(0, "g", pa.array(g, pa.string())))
    d, files = shards(tmp_path, parts, "parquet")
    async with in_process_cluster(5, root=str(tmp_path)) as c:
        auto = await check(c, d, files, ["g"], exprs)
        off = await check(c, d, files, ["g"], exprs, salt="off")
    share = lambda rep: max(w["reducer_pairs"] for w in rep.workers) / (sum(w["reducer_pairs"] for w in rep.workers)
                                                                        / len(rep.workers))
    assert share(auto) <= 1.5, [w["reducer_pairs"] for w in auto.workers]
    assert share(off) >= 3.5, [w["reducer_pairs"] for w in off.workers]
    assert auto.workers[0]["hot_keys"][0][0] == "hot" and auto.workers[0]["salt"] == 5


async def test_a_salted_collect_set_keeps_the_null_a_hot_key_collected(tmp_path):
    """``collect_set`` keeps one NULL (last, as DuckDB's ``list(DISTINCT c ORDER BY c)`` does); salted over the
    reducers, the second stage merged the parts with ``list_distinct``, which drops it (found by the sweep)."""
    rng = np.random.default_rng(22)
    parts = []
    for i in range(3):
        n = 6_000
        g = np.where(rng.random(n) < 0.8, "hot", np.array([f"k{x}" for x in rng.integers(0, 30, n)], dtype=object))
        s = np.array([f"s{x}" for x in rng.integers(0, 9, n)], dtype=object)
        s[rng.random(n) < 0.05] = None
        parts.append(pa.table({"g": pa.array(g, pa.string()), "s": pa.array(s, pa.string()),
                               "v": pa.array(rng.integers(0, 9, n))}))
    d, files = shards(tmp_path, parts, "parquet")
    async with in_process_cluster(4, root=str(tmp_path)) as c:
        rep = await check(c, d, files, ["g"], ["collect_set(s)", "collect(v)", "count()"])
    assert rep.workers[0]["salted_keys"] == 1
    hot = next(r for r in rep.result["data"] if r[0] == "hot")
    assert hot[1][-1] is None and None not in hot[1][:-1]


def test_a_salted_quantile_interpolates_infinities_as_duckdb():
    """A hot key's median from its salted parts interpolates between two order statistics; one value of -inf
    gave -inf + (-inf - -inf) * 0 = NaN where DuckDB says -inf (found by the sweep)."""
    import itertools
    import math
    from shardstats.worker.ops.groupby import _interpolate
    inf = float("inf")
    for lo, hi in itertools.combinations_with_replacement([-inf, -5.0, 0.0, 2.5, inf, float("nan")], 2):
        for q in (0.0, 0.25, 0.5, 0.9):
            want = duck(f"SELECT quantile_cont(x, {q}) FROM (SELECT unnest(['{lo}'::DOUBLE, '{hi}'::DOUBLE]) x)")[1][0][0]
            a, b = sorted([lo, hi], key=lambda v: (math.isnan(v), v))         # DuckDB orders NaN last
            got = _interpolate(a, b, q) if a != b or q == 0 else a
            assert (math.isnan(got) and math.isnan(want)) or got == want, (lo, hi, q, got, want)


async def test_a_hot_key_of_one_infinite_value_has_duckdbs_median(tmp_path):
    parts = [pa.table({"g": pa.array(["h"] * 3000 + ["x", "y"]), "f": pa.array([-np.inf] * 3000 + [1.0, 2.0])}),
             pa.table({"g": pa.array(["h"] * 2000 + ["z"]), "f": pa.array([np.inf] * 1000 + [-np.inf] * 1000 + [3.0])})]
    d, files = shards(tmp_path, parts, "parquet")
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await check(c, d, files, ["g"], ["median(f)", "quantile(f, 0.9)", "quantile(f, 0.0)", "count()"])
    assert rep.workers[0].get("salted_keys") == 1


async def test_a_result_bigger_than_one_answer_is_cut_and_counted(tmp_path):
    """limit 0 asks for every row: as many as one answer frame holds come back, the count is exact, and the
    job does not fail on the frame limits (--out writes them all)."""
    n = 120_000
    t = pa.table({"g": [f"key-{i:08d}" for i in range(n)], "v": list(range(n))})
    d, files = shards(tmp_path, [t.slice(0, n // 2), t.slice(n // 2)], "parquet")
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "g", "agg": ["sum(v)",
                                                                                          "collect(v)"], "limit": 0}))
        assert rep.result["rows"] == n and 0 < len(rep.result["data"]) < n
        assert rep.result["data"][:3] == [["key-00000000", 0, [0]], ["key-00000001", 1, [1]],
                                          ["key-00000002", 2, [2]]]
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "g", "agg": ["sum(v)"],
                                                                         "out": str(tmp_path / "o")}))
    _, got = duck(f"SELECT count(*), sum(sum_v) FROM read_parquet('{tmp_path}/o/*.parquet')")
    assert got == [(n, n * (n - 1) // 2)]


@pytest.mark.parametrize("expr", ["largest(f, 2)", "smallest(f, 3)", "max(f)", "distinct(f)", "collect_set(f)"])
async def test_a_key_whose_values_are_all_null_keeps_its_row(tmp_path, expr):
    rng = np.random.default_rng(2)
    t = table(rng, 400, keys=4, nulls=False)
    f = np.array(t.column("f").to_pylist(), dtype=object)
    g = t.column("g").to_pylist()
    f[[i for i, k in enumerate(g) if k == "k0"]] = None          # every value of k0 is NULL
    t = t.set_column(3, "f", pa.array(list(f), pa.float64()))
    d, files = shards(tmp_path, [t.slice(0, 200), t.slice(200)], "parquet")
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await check(c, d, files, ["g"], [expr])
    assert any(r[0] == "k0" for r in rep.result["data"])


async def test_files_storing_a_text_column_differently_on_one_worker(tmp_path):
    """One file stores the key as a Parquet dictionary (few values), another plainly (many): one worker reads
    both, as a dictionary and as plain strings, and the job still equals DuckDB's."""
    few = pa.table({"g": ["a", "b"] * 500, "v": list(range(1000))})
    many = pa.table({"g": [f"key-{i:06d}" for i in range(1000)], "v": list(range(1000))})
    d, files = shards(tmp_path, [few, many], "parquet")
    async with in_process_cluster(1, root=str(tmp_path)) as c:
        await check(c, d, files, ["g"], ["sum(v)", "median(v)"])


async def test_a_combiner_that_cannot_shrink_is_skipped_and_the_answer_stays(tmp_path):
    """Every key unique (db-benchmark's q10): the mappers skip combining and the reducers aggregate rows."""
    n = 250_000
    rng = np.random.default_rng(4)
    t = pa.table({"g": np.arange(n), "h": rng.integers(0, 3, n), "v": rng.integers(-9, 9, n),
                  "f": rng.random(n)})
    d, files = shards(tmp_path, [t.slice(0, n // 2), t.slice(n // 2)], "parquet")
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {
            "by": "g,h", "agg": ["sum(v)", "count()", "mean(f)"], "out": str(tmp_path / "o")}))
        assert rep.workers[0]["combiner"].startswith("skipped") and \
            sum(w["combined_pairs"] for w in rep.workers) == n
        _, diff = duck(f"SELECT count(*) FROM ((SELECT g, h, sum(v)::BIGINT, count(*), avg(f) FROM "
                       f"{duck_source(files)} GROUP BY g, h) EXCEPT (SELECT g, h, sum_v, count, mean_f FROM "
                       f"read_parquet('{tmp_path}/o/*.parquet')))")
        assert diff == [(0,)] and rep.result["rows"] == n
        few = await check(c, d, files, ["h"], ["sum(v)", "count()", "mean(f)", "std(f)"])
        assert "combiner" not in few.workers[0] and sum(w["combined_pairs"] for w in few.workers) <= 6


async def test_invalid_utf8_in_a_json_string_names_file_line_and_offset(tmp_path):
    """pyarrow's JSON reader accepts this byte; the job must still refuse it in one line (not fail inside)."""
    (tmp_path / "c.jsonl").write_bytes(b'{"g":"a","v":1}\n{"g":"\xff","v":2}\n')
    async with in_process_cluster(1, root=str(tmp_path)) as c:
        with pytest.raises(InputError, match=r"c\.jsonl:2: invalid UTF-8 at byte offset 22"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(tmp_path / "c.jsonl"),
                                                     {"by": "g", "agg": ["count()"]}))


async def test_keys_that_are_small_codes_combine_in_numpy_and_equal_duckdb(tmp_path):
    """An integer key of a few thousand values with NULLs, and a dictionary-encoded text key with a small int: the
    combiner takes the dense path (engine/dense.py) on every worker, and the answers still equal DuckDB's,
    NULL keys, NULL values and negative sums included."""
    rng = np.random.default_rng(23)
    parts = []
    for n in (6000, 4000, 1, 7000):
        b = rng.integers(-1500, 1500, n)
        bm = rng.random(n) < 0.05
        v = rng.integers(-10**6, 10**6, n)
        vm = rng.random(n) < 0.05
        a = np.array([f"a{x:02d}" for x in rng.integers(0, 60, n)], dtype=object)
        a[rng.random(n) < 0.03] = None
        parts.append(pa.table({"a": pa.array(a, pa.string()).dictionary_encode(),
                               "b": pa.array(b, pa.int32(), mask=bm), "c": pa.array(rng.integers(0, 100, n), pa.int8()),
                               "v": pa.array(v, pa.int64(), mask=vm),
                               "f": pa.array(rng.normal(0, 1e3, n))}))
    d, files = shards(tmp_path, parts, "parquet")
    exprs = ["count()", "count(v)", "sum(v)", "mean(v)", "min(v)", "max(f)", "var(f)", "std(v)"]
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        for keys in (["b"], ["a", "c"]):
            rep = await check(c, d, files, keys, exprs)
            assert {w.get("combine_kernel") for w in rep.workers} == {"dense"}, keys
        rep = await check(c, d, files, ["a"], exprs)                 # 61 groups: DuckDB's
        assert {w.get("combine_kernel") for w in rep.workers} == {"duckdb"}


def test_the_process_duckdb_follows_the_latest_workers_budget(tmp_path):
    """A process that starts workers one after another (the in-process clusters) gets the latest one's DuckDB
    limit: before, the first worker's stuck, and a 64 MiB cluster left every later cluster of the process a
    64 MiB DuckDB (db-benchmark's joins at 1e6 then failed with DuckDB's out-of-memory error)."""
    from shardstats.worker.engine import aggregate as agg
    agg.configure(64 << 20, str(tmp_path))
    con = agg._database()

    def limit() -> str:
        return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    small = limit()
    agg.configure(8 << 30, str(tmp_path))
    assert limit() != small and agg._limits["memory_limit"] == "4096MiB"
    assert agg.run_sql("SELECT count(*) AS n FROM range(10)").column("n").to_pylist() == [10]


async def test_a_hot_timestamp_key_is_salted_and_named_in_the_stats(tmp_path):
    """Hot keys travel between ranks and into the stats: a timestamp (or date) key, which msgpack cannot carry
    as a Python value, crashed the job ("cannot encode datetime") whenever it was hot and salting was on."""
    rng = np.random.default_rng(5)
    parts = []
    for _ in range(3):
        k = np.where(rng.random(3000) < 0.8, 5, rng.integers(0, 1000, 3000)) * 1_000_003
        parts.append(pa.table({"t": pa.array(k, pa.timestamp("us")), "d": pa.array((k // 86_400_000_000).astype(np.int32), pa.date32()),
                               "v": rng.integers(-50, 50, 3000)}))
    d, files = shards(tmp_path, parts, "parquet")
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        for keys in (["t"], ["d", "t"]):
            rep = await check(c, d, files, keys, ["median(v)", "sum(v)", "count()"])
            assert rep.workers[0]["salted_keys"] >= 1
            assert rep.workers[0]["hot_keys"][0][keys.index("t")] == "1970-01-01T00:00:05.000015"


def test_the_distinct_keys_of_a_share_are_estimated_from_its_first_rows():
    """The probe's first 100k rows of a share drawn from D keys show about D(1 - e^(-100k/D)) of them; the
    estimate inverts that (within a few percent for uniform keys), and every row distinct means no repeats."""
    import math
    from shardstats.worker.ops.groupby import distinct_estimate
    rng = np.random.default_rng(2)
    for keys in (2_000, 100_000, 1_000_000, 10_000_000):
        seen = len(np.unique(rng.integers(0, keys, 100_000)))
        assert distinct_estimate(seen, 100_000) == pytest.approx(keys, rel=0.1 if keys < 5_000_000 else 0.35)
    assert distinct_estimate(100_000, 100_000) == math.inf and distinct_estimate(0, 100_000) == 0


async def test_a_combiner_is_kept_where_the_share_repeats_keys_its_probe_barely_sees_twice(tmp_path):
    """500k keys over 1M rows a worker: the first 100k rows hold ~91% distinct keys (over the 90% bar, so the
    combiner was skipped and every row shuffled), yet the share combines 2x. db-benchmark's id3 at 1e8 rows."""
    rng = np.random.default_rng(6)
    n = 1_000_000
    parts = [pa.table({"g": rng.integers(0, 500_000, n), "v": rng.integers(-9, 9, n)}) for _ in range(2)]
    d, files = shards(tmp_path, parts, "parquet")
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {
            "by": "g", "agg": ["sum(v)", "count()"], "out": str(tmp_path / "o")}))
    assert "combiner" not in rep.workers[0]
    assert sum(w["combined_pairs"] for w in rep.workers) < 0.5 * 2 * n
    _, diff = duck(f"SELECT count(*) FROM ((SELECT g, sum(v)::BIGINT, count(*) FROM {duck_source(files)} GROUP BY g) "
                   f"EXCEPT (SELECT g, sum_v, count FROM read_parquet('{tmp_path}/o/*.parquet')))")
    assert diff == [(0,)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
async def test_a_value_column_some_files_lack_reads_as_nulls(tmp_path, fmt):
    """A folder whose older files lack a column the newer ones have (the aggregated ``s``, not a key): refused
    before (``no column 's'``), now read as DuckDB's ``union_by_name`` reads it -- NULLs, which sum/mean skip and
    count() still counts -- read from the files and from a cache. A value column no file
    has is still refused naming a file and its columns; a key a file lacks still is (never a NULL group)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(8)
    parts = [pa.table({"k": pa.array(rng.choice(["x", "y", None], 50)), "t": rng.integers(0, 9, 50),
                       **({"s": rng.integers(-5, 5, 50), "f": rng.random(50)} if i % 2 else {})}) for i in range(4)]
    files = []
    for i, t in enumerate(parts):
        f = d / f"p{i}.{fmt}"
        if fmt == "parquet":
            pq.write_table(t, f)
        elif fmt == "csv":
            pcsv.write_csv(t, f)
        else:
            f.write_text("".join(__import__("json").dumps(r) + "\n" for r in t.to_pylist()))
        files.append(f)
    src = {"parquet": "read_parquet", "csv": "read_csv", "jsonl": "read_json"}[fmt]
    want = duck(f"SELECT k, sum(s), count(*), avg(f), max(t) FROM {src}('{d}/*.{fmt}', union_by_name=true) "
                f"GROUP BY k")[1]
    aggs = ["sum(s)", "count()", "mean(f)", "max(t)"]
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": aggs, "limit": 0}))
        assert_rows_equal(rep.result["data"], want, 5, fmt)
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": aggs, "limit": 0,
                                                                           "cache": "h1"}))
        rep = await run_job(c.addrs, c.token, job_spec("groupby", "cache:h1", {"by": "k", "agg": aggs, "limit": 0}))
        assert_rows_equal(rep.result["data"], want, 5, f"{fmt} cached")
        with pytest.raises(InputError, match=r"p\d\.\w+: no column 'nope' \(it has: k, t"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["sum(nope)"]}))
        with pytest.raises(InputError, match=r"p[02]\.\w+: no column 's' \(it has: k, t\)"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "s", "agg": ["count()"]}))
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": aggs, "limit": 0}))
        assert_rows_equal(rep.result["data"], want, 5, f"{fmt} after refusals")


async def test_median_and_quantile_of_times_and_dates_equal_duckdb(tmp_path):
    """``median(ts)`` of a timestamp (or date) column was refused ("median needs numbers") where DuckDB answers:
    the reducer's DuckDB takes them as it takes numbers, salted or not (a hot key holds 80% of the rows)."""
    import datetime as dt
    import pyarrow.parquet as pq
    rng = np.random.default_rng(12)
    d = tmp_path / "ts"
    d.mkdir()
    for i in range(3):
        n = 4000
        k = np.where(rng.random(n) < 0.8, "hot", pa.array(rng.integers(0, 30, n)).cast(pa.string()).to_numpy(
            zero_copy_only=False)).astype(object)
        k[rng.random(n) < 0.02] = None
        us = rng.integers(0, 10**15, n)
        ts = pa.array(us, pa.timestamp("us")).to_pylist()
        ts[3] = None
        pq.write_table(pa.table({"k": pa.array(k, pa.string()), "ts": pa.array(ts, pa.timestamp("us")),
                                 "day": pa.array([dt.date(2000, 1, 1) + dt.timedelta(days=int(x))
                                                  for x in rng.integers(0, 9000, n)], pa.date32())}),
                         d / f"p{i}.parquet")
    aggs = ["median(ts)", "quantile(ts, 0.3)", "median(day)", "count()"]
    got_want = duck(f"SELECT k, median(ts), quantile_cont(ts, 0.3), median(day), count(*) FROM '{d}/*.parquet' "
                    f"GROUP BY k")[1]
    want = [tuple(v.isoformat() if isinstance(v, dt.datetime) else v for v in r) for r in got_want]
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        for salt in ("auto", "off"):
            rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": aggs, "limit": 0,
                                                                               "salt": salt}))
            assert_rows_equal(rep.result["data"], want, 5, salt)
        with pytest.raises(UsageError, match=r"mean\(ts\): column 'ts' holds timestamp\[us\], and mean needs numbers"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["mean(ts)"]}))
