"""Keyed ops over inputs as users write them (a BOM, mixed formats, junk beside the data), each answer against
DuckDB reading the same files: cases a QA pass found wrong, kept so they stay right."""
from __future__ import annotations

import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.testing import in_process_cluster
from tests.keyed_ref import assert_rows_equal, duck


async def test_a_csv_with_a_byte_order_mark_names_its_first_column_as_written(tmp_path):
    # Excel's "CSV UTF-8" starts with a BOM; the header check read it as part of the first name and refused
    # 'k' ("it has: \ufeffk, v"), where pyarrow and DuckDB both read the column as k.
    d = tmp_path / "bom"
    d.mkdir()
    (d / "a.csv").write_bytes("\ufeffk,v\nx,1\ny,2\nx,3\n".encode())
    (d / "b.tsv").write_bytes("\ufeffk\tv\nx\t10\n".encode())
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["sum(v)"]}))
    _, want = duck(f"select k, sum(v) from (select * from read_csv('{d}/a.csv') union all "
                   f"select * from read_csv('{d}/b.tsv', delim='\t')) group by k")
    assert_rows_equal(rep.result["data"], want, 1)


@pytest.mark.parametrize("pattern, why", [("(", "unclosed group at character 1"),
                                          ("[a-", "unclosed character class at character 1"),
                                          ("a{2,1}", "invalid repetition count range")])
def test_a_bad_pattern_says_why_in_one_line(pattern, why):
    # Polars' message begins "regex error: regex parse error:" and gives the reason on later lines: the user
    # saw only that first line, "not a regular expression (regex error: regex parse error:)"
    from shardstats.worker.engine.tokens import check_pattern
    bad = check_pattern(pattern)
    assert why in bad and "\n" not in bad


async def test_empty_files_beside_others_are_zero_rows(tmp_path):
    # A 0-byte JSON-lines or CSV shard (an hour with no events), or one of blank lines, failed the whole job
    # ("empty file", exit 2) where DuckDB reads it as zero rows; a job over nothing but empty files names the
    # column it cannot find.
    from shardstats.errors import UsageError
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(b"")
    (d / "b.jsonl").write_text('{"k": "x", "v": 1}\n{"k": "y", "v": 2}\n')
    (d / "c.ndjson").write_text("\n\n")
    (d / "d.csv").write_bytes(b"")
    (d / "e.csv").write_text("k,v\nx,5\n")
    right = tmp_path / "right"
    right.mkdir()
    (right / "r.jsonl").write_text('{"k": "x", "w": 7}\n')
    (right / "s.jsonl").write_bytes(b"")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "a.jsonl").write_bytes(b"")
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["sum(v)", "count()"]}))
        assert_rows_equal(rep.result["data"], [("x", 6, 2), ("y", 2, 1)], 1)
        rep = await run_job(c.addrs, c.token, job_spec("join", str(d), {"right": str(right), "on": "k"}))
        assert_rows_equal(rep.result["data"], [("x", 1, 7), ("x", 5, 7)], 2)
        with pytest.raises(UsageError, match=r"no column 'k' in the input \(it has: none: every file of it is empty"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(nothing), {"by": "k", "agg": ["sum(v)"]}))
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["count()"]}))
        assert rep.result["rows"] == 2        # and the cluster serves the next job


async def test_a_cached_table_used_where_it_cannot_serve_is_one_clear_error(tmp_path):
    # Word count over a group-by's cached table crashed in the tokenizer (KeyError 'text', exit 1); a join or a
    # MapReduce job with --side from a cached dataset crashed the coordinator (AttributeError, a traceback).
    from shardstats.errors import InputError, UsageError
    d = tmp_path / "t"
    d.mkdir()
    (d / "a.csv").write_text("k,v\nx,1\ny,2\n")
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["count()"], "cache": "t"}))
        for op in ("wordcount", "index"):
            with pytest.raises(InputError, match=r"cache:t: a table's rows \(columns: k, v\), not text documents"):
                await run_job(c.addrs, c.token, job_spec(op, "cache:t", {}))
        with pytest.raises(UsageError, match=r"cache:t: a job of several inputs"):
            await run_job(c.addrs, c.token, job_spec("join", "cache:t", {"right": str(d), "on": "k"}))
        with pytest.raises(UsageError, match=r"cache:t: a job of several inputs"):
            await run_job(c.addrs, c.token, job_spec("join", str(d), {"right": "cache:t", "on": "k"}))
        rep = await run_job(c.addrs, c.token, job_spec("groupby", "cache:t", {"by": "k", "agg": ["sum(v)"]}))
        assert_rows_equal(rep.result["data"], [("x", 1), ("y", 2)], 1)


def test_the_api_takes_a_joins_right_side_by_position(tmp_path):
    # c.join(left, right, on=...) failed with "method() takes 1 positional argument but 2 were given"
    from shardstats import Cluster
    (tmp_path / "l.csv").write_text("k,a\n1,x\n2,y\n")
    (tmp_path / "r.csv").write_text("k,b\n2,z\n2,w\n3,q\n")
    with Cluster.local(2) as c:
        got = c.join(str(tmp_path / "l.csv"), str(tmp_path / "r.csv"), on="k").to_arrow()
        with pytest.raises(TypeError, match="pass groupby's parameters by name"):
            c.groupby(str(tmp_path / "l.csv"), "k")
    _, want = duck(f"select * from '{tmp_path}/l.csv' join '{tmp_path}/r.csv' using (k)")
    assert_rows_equal([list(r.values()) for r in got.to_pylist()], want, 3)


async def test_json_lines_dates_and_zoned_times_are_typed_as_csv_and_duckdb_type_them(tmp_path):
    # pyarrow's JSON reader typed a date as a midnight timestamp and "...Z" as a time of no zone (so a JSON
    # and a CSV file of the same columns were refused as disagreeing), and left "+02:00" offsets or
    # fractional seconds as text (max() then compared strings: 11:00+02:00 above 10:00Z).
    d = tmp_path / "t"
    d.mkdir()
    (d / "a.csv").write_text("k,ts,d\na,2024-01-01T10:00:00+02:00,2024-01-01\nb,2024-06-01T00:00:00Z,\n")
    (d / "b.jsonl").write_text('{"k": "a", "ts": "2024-01-01T11:00:00+02:00", "d": "2024-01-03", "n": 1}\n'
                               '{"k": "a", "ts": "2024-01-01T08:30:00.5Z", "d": null, "n": 2}\n'
                               '{"k": "b", "ts": null, "d": "2024-01-02"}\n')
    (d / "c.jsonl").write_text('{"k": "b", "ts": "2024-01-01T10:00:00Z", "d": "2023-12-31"}\n')
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {
            "by": "k", "agg": ["max(ts)", "min(ts)", "min(d)", "max(d)", "count(ts)"]}))
    _, want = duck(f"select k, max(ts), min(ts), min(d), max(d), count(ts) from (select * from "
                   f"read_csv('{d}/a.csv') union all by name select * from read_json('{d}/*.jsonl')) group by k")
    import datetime
    iso = [tuple(v.isoformat() if isinstance(v, (datetime.date, datetime.datetime)) else v for v in r) for r in want]
    got = [[v.replace("+00:00", "") if isinstance(v, str) else v for v in r] for r in rep.result["data"]]
    assert_rows_equal(got, [tuple(v.replace("+00:00", "") if isinstance(v, str) else v for v in r) for r in iso], 1)


def test_a_compressed_shard_is_refused_by_name_not_skipped(tmp_path):
    # A folder's data.csv.gz beside other.csv was passed over like a README: the job answered over part of the
    # data, exit 0, without a word.
    from shardstats.errors import InputError
    from shardstats.worker.data.readers import TABLE_SUFFIXES
    from shardstats.worker.io.listing import list_shards
    (tmp_path / "other.csv").write_text("k,v\na,1\n")
    (tmp_path / "data.csv.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "README").write_text("about the data\n")
    (tmp_path / ".hidden.csv.gz").write_bytes(b"\x1f\x8b")
    for suffixes in (TABLE_SUFFIXES, None):
        with pytest.raises(InputError, match=r"data\.csv\.gz: a compressed file, which is not read"):
            list_shards(str(tmp_path), suffixes)
    (tmp_path / "data.csv.gz").unlink()
    assert list_shards(str(tmp_path), TABLE_SUFFIXES) == [str(tmp_path / "other.csv")]


async def test_a_refused_file_is_not_kept_resident_by_its_error(tmp_path):
    # The bytes of a file refused for a line over the limit stayed resident after the job (its exception and
    # traceback are a reference cycle, freed only when Python's cycle collector next ran): an idle worker held
    # 1 GiB per refused 1 GiB file. Collection is switched off here, so only the worker's own collect frees them.
    import asyncio
    import gc

    from shardstats.errors import InputError
    from shardstats.worker import memory
    from shardstats.worker.data.readers import MAX_LINE_BYTES
    d = tmp_path / "big"
    d.mkdir()
    with open(d / "a.jsonl", "wb") as f:
        f.write(b'{"k": "a", "v": 1}\n')
        f.truncate(4 * MAX_LINE_BYTES)          # a sparse 64 MiB line of NUL bytes
    gc.collect()
    gc.disable()
    try:
        async with in_process_cluster(1, root=str(tmp_path)) as c:
            memory.release()
            before = memory.rss_bytes()
            with pytest.raises(InputError, match="over the limit"):
                await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["count()"]}))
            await asyncio.sleep(0.2)
            assert memory.rss_bytes() - before < 2 * MAX_LINE_BYTES
    finally:
        gc.enable()


async def test_a_column_of_a_type_keyed_jobs_cannot_hold_names_its_file_and_column(tmp_path):
    # "columns of type struct<x: int64> cannot be read by keyed jobs yet" named neither: a sort or a join reads
    # every column, so the user could not tell which one of which file to drop
    from shardstats.errors import InputError
    d = tmp_path / "nested"
    d.mkdir()
    (d / "a.jsonl").write_text('{"k": "a", "v": {"x": 1}}\n')
    async with in_process_cluster(1, root=str(tmp_path)) as c:
        with pytest.raises(InputError, match=r"a\.jsonl: column 'v': columns of type struct<x: int64> cannot"):
            await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "k", "out": str(tmp_path / "o")}))
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["count()"]}))
    assert rep.result["data"] == [["a", 1]]


def test_status_says_a_dataset_held_by_only_some_workers_cannot_be_read():
    # A worker that evicted its part of cache:NAME (or found it too big) makes the dataset unreadable
    # ("not cached on every worker"), yet status listed it as cached on the others, as if it could serve.
    from shardstats.cluster.statusview import table
    row = {"up": True, "addr": "127.0.0.1:1", "version": "x", "jobs_run": 1, "jobs_failed": 0, "active_jobs": 0}
    rows = [{**row, "id": 0, "cached": [{"name": "a", "rows": 5, "bytes": 50}, {"name": "b", "rows": 1, "bytes": 8}]},
            {**row, "id": 1, "cached": [{"name": "a", "rows": 3, "bytes": 30}]}]
    lines = table(rows, "test")
    assert "cached: cache:a  8 rows, 80 B on 2 workers" in lines
    assert any(ln.startswith("cached: cache:b  1 rows, 8 B on 1 worker of 2: evicted or too big on the others, "
                             "so no job can read it") for ln in lines), lines


@pytest.mark.parametrize("value, why", [("1000", "is less than 1 MiB"), ("lots", "is not a size")])
async def test_a_bad_cache_size_names_its_variable(tmp_path, monkeypatch, value, why):
    # SHARDSTATS_CACHE_BYTES under 1 MiB (or not a size) failed every --cache job as a bare
    # ValueError("'1000' is less than 1 MiB"), naming no variable; the next job must still run
    from shardstats.errors import JobError
    d = tmp_path / "t"
    d.mkdir()
    (d / "a.csv").write_text("k,v\nx,1\ny,2\n")
    monkeypatch.setenv("SHARDSTATS_CACHE_BYTES", value)
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        with pytest.raises(JobError, match=rf"SHARDSTATS_CACHE_BYTES='{value}' in this worker's environment: "
                                           rf"'{value}' {why}.*at least 1 MiB"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["count()"],
                                                                         "cache": "t"}))
        monkeypatch.setenv("SHARDSTATS_CACHE_BYTES", "2M")
        await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["count()"], "cache": "t"}))
        rep = await run_job(c.addrs, c.token, job_spec("groupby", "cache:t", {"by": "k", "agg": ["sum(v)"]}))
        assert_rows_equal(rep.result["data"], [("x", 1), ("y", 2)], 1)


async def test_decimal_columns_are_read_exactly_as_duckdb_answers(tmp_path):
    """Parquet DECIMAL (DuckDB's ``CAST(x AS DECIMAL(18,2))``) was refused ("cannot be read by keyed jobs yet").
    Group-by aggregates, a decimal group key, a join on decimal keys of other scales (and an integer key), a sort by
    a decimal, and ``--out``: DuckDB's answers, exact (sums as decimals, printed as their text, never a float)."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    d = tmp_path / "dec"
    d.mkdir()
    con = duckdb.connect()
    for i in range(3):
        con.sql(f"COPY (SELECT CASE WHEN i % 7 = 0 THEN NULL ELSE (i % 5)::VARCHAR END AS k, "
                f"CASE WHEN i % 11 = 0 THEN NULL ELSE CAST((i * 1.37 - 3000) * {i + 1} AS DECIMAL(18,2)) END AS d, "
                f"CAST(i * 0.5 + {i} AS DECIMAL(38,4)) AS big, (i % 13)::DECIMAL(9,3) AS dk, i % 13 AS ik "
                f"FROM range(700) t(i)) TO '{d}/p{i}.parquet' (FORMAT parquet)")
    src = f"'{d}/*.parquet'"
    aggs = ["sum(d)", "min(d)", "max(d)", "mean(d)", "count(d)", "median(d)", "sum(big)", "max(big)",
            "quantile(d, 0.25)", "distinct(dk)"]
    sql = ("sum(d), min(d), max(d), avg(d), count(d), median(d), sum(big), max(big), quantile_cont(d, 0.25), "
           "count(DISTINCT dk)")

    def text(rows):      # DuckDB's decimals as our answer carries them: integral ones as ints, others as text
        return [tuple((int(v) if v == v.to_integral_value() and v.as_tuple().exponent >= 0 else str(v))
                      if type(v).__name__ == "Decimal" else v for v in r) for r in rows]
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        for salt in ("auto", "off"):
            rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": aggs, "limit": 0,
                                                                               "salt": salt}))
            assert_rows_equal(rep.result["data"], text(duck(f"SELECT k, {sql} FROM {src} GROUP BY k")[1]), 11, salt)
        assert rep.result["data"][0][1] == str(duck(f"SELECT sum(d) FROM {src} WHERE k = '0'")[1][0][0])
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "dk", "agg": ["sum(d)"], "limit": 0}))
        assert_rows_equal(rep.result["data"], text(duck(f"SELECT dk, sum(d) FROM {src} GROUP BY dk")[1]), 1)
        out = tmp_path / "out"
        await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["sum(d)", "min(big)"],
                                                                     "out": str(out)}))
        assert pq.read_schema(next(out.glob("*.parquet"))).field("sum_d").type == pa.decimal128(38, 2)
        assert sorted(map(tuple, duck(f"SELECT * FROM '{out}/*.parquet'")[1]), key=str) == \
            sorted(duck(f"SELECT k, sum(d), min(big) FROM {src} GROUP BY k")[1], key=str)
        for lk, rk in (("dk", "dk"), ("d", "dk"), ("ik", "dk")):
            for strategy in ("broadcast", "shuffle"):
                rep = await run_job(c.addrs, c.token, job_spec("join", str(d), {
                    "right": str(d / "p0.parquet"), "left_on": lk, "right_on": rk, "strategy": strategy,
                    "limit": 0}))
                want = duck(f"SELECT count(*) FROM {src} l JOIN '{d}/p0.parquet' r ON l.{lk} = r.{rk}")[1][0][0]
                assert rep.result["rows"] == want, (lk, rk, strategy)
        await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "d", "out": str(tmp_path / "sorted")}))
        got = [v for p in sorted((tmp_path / "sorted").glob("*.parquet")) for v in pq.read_table(p).column("d").to_pylist()]
        assert got == [r[0] for r in duck(f"SELECT d FROM {src} ORDER BY d NULLS LAST")[1]]


def test_decimal_files_of_other_widths_meet_exactly():
    # files of DECIMAL(18,2) and DECIMAL(9,3) (or an integer) meet as one decimal holding both, as DuckDB's do;
    # a float and a decimal do not meet (the decimal stays exact): named with both files
    from shardstats.errors import InputError
    from shardstats.worker.data.schema import unify
    assert unify([[["x", "decimal128(18, 2)", "a"]], [["x", "decimal128(9, 3)", "b"]]])[0][1] == "decimal128(19, 3)"
    assert unify([[["x", "int32", "a"]], [["x", "decimal128(9, 3)", "b"]]])[0][1] == "decimal128(13, 3)"   # 10 digits
    assert unify([[["x", "int64", "a"]], [["x", "decimal128(9, 3)", "b"]]])[0][1] == "decimal128(22, 3)"   # 19
    with pytest.raises(InputError, match=r"column 'x' is decimal128\(38, 2\) in a but double in b"):
        unify([[["x", "decimal128(38, 2)", "a"]], [["x", "double", "b"]]])
    with pytest.raises(InputError, match=r"column 'x' is decimal128\(38, 2\) in a but decimal128\(10, 4\) in b"):
        unify([[["x", "decimal128(38, 2)", "a"]], [["x", "decimal128(10, 4)", "b"]]])


def test_signed_integers_keep_their_width_where_every_file_agrees():
    """A Parquet int32 column stays int32 (DuckDB's INTEGER), meets int64 as int64, a smaller int as itself;
    unsigned ones below 64 bits widen to int64; with a double, double. It was widened to int64 on every load."""
    from shardstats.worker.data.schema import unify
    meet = lambda a, b: unify([[["x", a, "f1"]], [["x", b, "f2"]]])[0][1]     # noqa: E731
    assert meet("int32", "int32") == "int32"
    assert meet("int32", "int64") == meet("int64", "int32") == "int64"
    assert meet("int16", "int32") == "int32" and meet("int8", "int8") == "int8"
    assert meet("uint32", "uint32") == "int64" and meet("uint16", "int32") == "int64"
    assert meet("int32", "double") == "double"
    assert meet("dictionary<values=string, indices=int32, ordered=0>", "string") == "large_string"


async def test_a_sort_and_a_group_by_write_an_int32_column_as_int32(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"k": pa.array([3 - i, 7, -2**31, 2**31 - 1], pa.int32()),
                                 "v": pa.array([1, 2, 3, 4], pa.int32())}), d / f"p{i}.parquet")
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "k", "out": str(tmp_path / "s")}))
        await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": "k", "agg": ["m=max(v)", "s=sum(v)"],
                                                                    "out": str(tmp_path / "g")}))
    s = pq.read_table(tmp_path / "s")
    assert s.schema.field("k").type == pa.int32() and s.schema.field("v").type == pa.int32()
    assert s.column("k").to_pylist() == sorted([3, 7, -2**31, 2**31 - 1, 2, 7, -2**31, 2**31 - 1, 1, 7, -2**31,
                                                 2**31 - 1])
    g = pq.read_table(tmp_path / "g").sort_by("k")
    assert g.schema.field("k").type == pa.int32() and g.schema.field("m").type == pa.int32()   # DuckDB's max(INTEGER)
    assert g.column("k").to_pylist() == [-2**31, 1, 2, 3, 7, 2**31 - 1]
    assert g.column("s").to_pylist() == [9, 1, 1, 1, 6, 12]
