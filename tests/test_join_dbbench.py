"""db-benchmark's five join questions (scripts/bench_join.py) on J1 data of 1e6 rows (scripts/dbgen.py): every
answer's rows equal DuckDB's as an exact multiset, and the plan is the goal's -- q1-q4 broadcast with no row of x
moved, q5 a shuffle join."""
from __future__ import annotations

import duckdb
import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.testing import in_process_cluster
from scripts import dbgen
from scripts.bench_join import QUESTIONS, duck_sql, tables


@pytest.mark.slow
async def test_the_five_questions_equal_duckdb_as_multisets(tmp_path):
    t = tables(dbgen.generate_join(tmp_path / "J1", 10**6, shards=4, chunk_rows=250_000,
                                     ratios=(10**5, 10**3), quiet=True))   # small: 10 rows, as at 1e7
    con = duckdb.connect()
    async with in_process_cluster(4, root=str(tmp_path)) as c:
        for q, (right, how, on, cols) in QUESTIONS.items():
            out = tmp_path / f"out-{q}"
            rep = await run_job(c.addrs, c.token, job_spec("join", t["x"], {"right": t[right], "on": on, "how": how,
                                                                          "out": str(out)}))
            plan = rep.workers[0]
            moved_x = sum(w["shuffled_left_rows"] for w in rep.workers)
            if q == "q5":
                assert plan["strategy"] == "shuffle", plan["why"]
            else:
                assert plan["strategy"] == "broadcast" and plan["broadcast_side"] == "right" and moved_x == 0
            # ours names a right column that clashes with x's <name>_right (db-benchmark: <table>_<name>)
            ours = f"read_parquet('{out}/*.parquet')"
            names = [f"{c}_right" if c != "v2" else c for c in cols]
            ref = duck_sql(q, t).replace(f" AS {right}_", " AS _ref_")
            cols_ref = ", ".join(["id1", "id2", "id3", "id4", "id5", "id6", "v1",
                                  *[f"_ref_{c}" if c != "v2" else c for c in cols]])
            cols_ours = ", ".join(["id1", "id2", "id3", "id4", "id5", "id6", "v1", *names])
            con.execute(f"CREATE OR REPLACE TABLE ref AS SELECT {cols_ref} FROM ({ref})")
            con.execute(f"CREATE OR REPLACE TABLE got AS SELECT {cols_ours} FROM {ours}")
            n_ref = con.execute("SELECT count(*) FROM ref").fetchall()[0][0]
            assert rep.result["rows"] == n_ref and n_ref > 0, q
            # each distinct row with its count, compared as sets both ways (NULLs equal, as set operations
            # take them): the exact multiset in a third of EXCEPT ALL's time
            counted = "SELECT *, count(*) AS n FROM {} GROUP BY ALL"
            assert con.execute(f"SELECT count(*) FROM (({counted.format('got')} EXCEPT {counted.format('ref')}) "
                               f"UNION ALL ({counted.format('ref')} EXCEPT {counted.format('got')}))"
                               ).fetchall()[0][0] == 0, q
