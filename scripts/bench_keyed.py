#!/usr/bin/env python3
"""The keyed engine against its peers: db-benchmark's group-by questions and a word count.

    python scripts/bench_keyed.py gen --rows 1e7 [--out DIR]            # G1_1e7_1e2_0_0 as 10 Parquet shards
    python scripts/bench_keyed.py groupby --rows 1e7 [--warm] [--peers duckdb,polars,dask,spark] [--runs 2]
    python scripts/bench_keyed.py wordcount --size 200MB [--peers polars,duckdb,dask,spark]

**groupby.**  The ten questions q1..q10 of h2oai/db-benchmark on ``G1_<rows>_1e2_0_0`` (scripts/dbgen.py:
the R generator's columns, numpy's draws), each asked exactly as db-benchmark's duckdb, polars, dask and
spark solutions ask it (the SQL / expressions below), of:

  - DuckDB (all threads), Polars (a lazy scan of the Parquet files), Dask (a ``distributed.LocalCluster``
    of 2 single-threaded worker processes, ``dask.dataframe.read_parquet``), Spark (``local[2]``);
  - ours: ``cluster submit groupby --input DIR --by ... --agg ...`` on a local cluster of 10 workers, via
    the API (``ours(question)`` gives the spec).  q7 (max v1 - min v2) and q9 (corr^2) ask ours for
    max/min and corr and finish client-side; q8 explodes ours' largest(v3,2) lists into rows client-side;
    that work is inside ours' time.

``e2e`` is end to end from the files: read + compute, the answer materialised as a table (DuckDB: a
TEMP table over a view of read_parquet; Polars: ``scan_parquet(...).collect()``; Dask: ``compute()``;
Spark: ``persist()`` + ``count()``, as db-benchmark does; ours: the job's answer at the client).  ``warm``
(``--warm``) has the data in memory first: a DuckDB table, a Polars DataFrame, ``dask persist()``, Spark
``cache()`` + ``count()``, ours' ``cache="g1"`` then ``cache:g1`` (the load is not timed; plain column
types everywhere, where db-benchmark's own loaders make id1..id3 categorical).  Each cell is the best of
``--runs`` runs.  Every peer's answer is checked against DuckDB's: rows sorted, integers exact, floats
within 1e-9 relative (q8 as a multiset per group); a mismatch is marked ``✗`` and the exit status is 1.

**wordcount.**  A corpus of the standard library's sources and docs, repeated into 10 files of about
``--size`` bytes; lowercase, tokens are Unicode ``\\w+`` runs, counted.  ``collections.Counter`` over
``re.findall(r"\\w+", line.lower())`` is the reference on a small corpus (every peer's full table must
equal it); on the big corpus each peer's full table is checked against the first peer's.  Polars
(``str.to_lowercase().str.extract_all(...)``, explode, ``group_by().len()``), DuckDB
(``regexp_extract_all`` over ``read_text``, unnest, group by), Dask bag (``read_text``, map tokenize,
``frequencies``), Spark (DataFrame ``split``/``explode``/``groupBy``).  The engines' regex is
``[\\p{L}\\p{N}_]+`` (Python's ``\\w`` is letters, numbers and underscore).  Ours:
``cluster submit wordcount --input DIR --top 10`` (its top 10 is checked).

Environment: ``BENCH_SPARK_MEMORY`` (Spark's driver memory, default 8g), ``BENCH_DUCKDB_MEMORY`` (DuckDB's
memory_limit, default DuckDB's own; it then spills under the answers folder).  Each peer's report is rewritten
after every question, so a peer past ``--timeout`` keeps the questions it finished.

Each peer runs in a process of its own (its peak RSS, with its children — Dask's workers, Spark's JVM,
ours' workers — summed, sampled every 50 ms).  Data are cached under /tmp/shardstats-bench/ and reused.
Output: markdown tables; ``ours ÷`` columns are theirs/ours (above 1: ours faster).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):     # run as a file: make `scripts` importable
    sys.path.insert(0, str(HERE.parent))
from scripts import dbgen  # noqa: E402

BENCH_DIR = dbgen.BENCH_DIR
GROUPBY_PEERS = ("duckdb", "polars", "dask", "spark")
WORDCOUNT_PEERS = ("polars", "duckdb", "dask", "spark")
REL_TOL = 1e-9
ABS_TOL = 1e-12


# -- the questions ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    name: str
    title: str              # db-benchmark's own wording
    keys: tuple[str, ...]
    values: tuple[str, ...]  # the answer's value columns, in order (canonical names: DuckDB's aliases)
    multiset: bool = False   # q8: several rows per group, compared as a multiset


ID16 = ("id1", "id2", "id3", "id4", "id5", "id6")
QUESTIONS = {q.name: q for q in (
    Question("q1", "sum v1 by id1", ("id1",), ("v1",)),
    Question("q2", "sum v1 by id1:id2", ("id1", "id2"), ("v1",)),
    Question("q3", "sum v1 mean v3 by id3", ("id3",), ("v1", "v3")),
    Question("q4", "mean v1:v3 by id4", ("id4",), ("v1", "v2", "v3")),
    Question("q5", "sum v1:v3 by id6", ("id6",), ("v1", "v2", "v3")),
    Question("q6", "median v3 sd v3 by id4 id5", ("id4", "id5"), ("median_v3", "sd_v3")),
    Question("q7", "max v1 - min v2 by id3", ("id3",), ("range_v1_v2",)),
    Question("q8", "largest two v3 by id6", ("id6",), ("largest2_v3",), multiset=True),
    Question("q9", "regression v1 v2 by id2 id4", ("id2", "id4"), ("r2",)),
    Question("q10", "sum v3 count by id1:id6", ID16, ("v3", "count")),
)}

# db-benchmark duckdb/groupby-duckdb.py, over a table or view `x`
DUCKDB_SQL = {
    "q1": "SELECT id1, sum(v1) AS v1 FROM x GROUP BY id1",
    "q2": "SELECT id1, id2, sum(v1) AS v1 FROM x GROUP BY id1, id2",
    "q3": "SELECT id3, sum(v1) AS v1, avg(v3) AS v3 FROM x GROUP BY id3",
    "q4": "SELECT id4, avg(v1) AS v1, avg(v2) AS v2, avg(v3) AS v3 FROM x GROUP BY id4",
    "q5": "SELECT id6, sum(v1) AS v1, sum(v2) AS v2, sum(v3) AS v3 FROM x GROUP BY id6",
    "q6": "SELECT id4, id5, quantile_cont(v3, 0.5) AS median_v3, stddev(v3) AS sd_v3 FROM x GROUP BY id4, id5",
    "q7": "SELECT id3, max(v1)-min(v2) AS range_v1_v2 FROM x GROUP BY id3",
    "q8": "SELECT id6, unnest(max(v3, 2)) AS largest2_v3 FROM x WHERE v3 IS NOT NULL GROUP BY id6",
    "q9": "SELECT id2, id4, pow(corr(v1, v2), 2) AS r2 FROM x GROUP BY id2, id4",
    "q10": "SELECT id1, id2, id3, id4, id5, id6, sum(v3) AS v3, count(*) AS count FROM x "
           "GROUP BY id1, id2, id3, id4, id5, id6",
}

# db-benchmark spark/groupby-spark.py (its q6 is commented out there, "median not yet implemented"; Spark >= 3.4
# has the exact median(), which is percentile(v3, 0.5))
SPARK_SQL = {
    "q1": "select id1, sum(v1) as v1 from x group by id1",
    "q2": "select id1, id2, sum(v1) as v1 from x group by id1, id2",
    "q3": "select id3, sum(v1) as v1, mean(v3) as v3 from x group by id3",
    "q4": "select id4, mean(v1) as v1, mean(v2) as v2, mean(v3) as v3 from x group by id4",
    "q5": "select id6, sum(v1) as v1, sum(v2) as v2, sum(v3) as v3 from x group by id6",
    "q6": "select id4, id5, median(v3) as median_v3, stddev(v3) as sd_v3 from x group by id4, id5",
    "q7": "select id3, max(v1)-min(v2) as range_v1_v2 from x group by id3",
    "q8": "select id6, largest2_v3 from (select id6, v3 as largest2_v3, row_number() over (partition by id6 "
          "order by v3 desc) as order_v3 from x where v3 is not null) sub_query where order_v3 <= 2",
    "q9": "select id2, id4, pow(corr(v1, v2), 2) as r2 from x group by id2, id4",
    "q10": "select id1, id2, id3, id4, id5, id6, sum(v3) as v3, count(*) as count from x "
           "group by id1, id2, id3, id4, id5, id6",
}


def polars_query(q: str, x):
    """db-benchmark polars/groupby-polars.py, on a LazyFrame ``x``."""
    import polars as pl
    from polars import col
    if q == "q1":
        return x.group_by("id1").agg(pl.sum("v1").alias("v1_sum"))
    if q == "q2":
        return x.group_by(["id1", "id2"]).agg(pl.sum("v1").alias("v1_sum"))
    if q == "q3":
        return x.group_by("id3").agg([pl.sum("v1").alias("v1_sum"), pl.mean("v3").alias("v3_mean")])
    if q == "q4":
        return x.group_by("id4").agg([pl.mean("v1").alias("v1_mean"), pl.mean("v2").alias("v2_mean"),
                                      pl.mean("v3").alias("v3_mean")])
    if q == "q5":
        return x.group_by("id6").agg([pl.sum("v1").alias("v1_sum"), pl.sum("v2").alias("v2_sum"),
                                      pl.sum("v3").alias("v3_sum")])
    if q == "q6":
        return x.group_by(["id4", "id5"]).agg([pl.median("v3").alias("v3_median"), pl.std("v3").alias("v3_std")])
    if q == "q7":
        return x.group_by("id3").agg([(pl.max("v1") - pl.min("v2")).alias("range_v1_v2")])
    if q == "q8":
        return (x.drop_nulls("v3").group_by("id6").agg(col("v3").top_k(2).alias("largest2_v3"))
                .explode("largest2_v3"))
    if q == "q9":
        return x.group_by(["id2", "id4"]).agg((pl.corr("v1", "v2", method="pearson") ** 2).alias("r2"))
    if q == "q10":
        return x.group_by(list(ID16)).agg([pl.sum("v3").alias("v3"), pl.count("v1").alias("count")])
    raise KeyError(q)


def dask_query(q: str, x):
    """db-benchmark dask/groupby_dask.py (``shuffle=`` is ``shuffle_method=`` in today's dask); a pandas frame."""
    import pandas as pd
    kw = dict(dropna=False, observed=True)
    if q == "q1":
        ans = x.groupby("id1", **kw).agg({"v1": "sum"}).compute()
    elif q == "q2":
        ans = x.groupby(["id1", "id2"], **kw).agg({"v1": "sum"}).compute()
    elif q == "q3":
        ans = x.groupby("id3", **kw).agg({"v1": "sum", "v3": "mean"}).compute()
    elif q == "q4":
        ans = x.groupby("id4", **kw).agg({"v1": "mean", "v2": "mean", "v3": "mean"}).compute()
    elif q == "q5":
        ans = x.groupby("id6", **kw).agg({"v1": "sum", "v2": "sum", "v3": "sum"}).compute()
    elif q == "q6":
        ans = x.groupby(["id4", "id5"], **kw).agg({"v3": ["median", "std"]}, shuffle_method="tasks").compute()
    elif q == "q7":
        ans = (x.groupby("id3", **kw).agg({"v1": "max", "v2": "min"})
               .assign(range_v1_v2=lambda x: x["v1"] - x["v2"])[["range_v1_v2"]].compute())
    elif q == "q8":
        ans = (x[~x["v3"].isna()][["id6", "v3"]].groupby("id6", **kw)
               .apply(lambda x: x.nlargest(2, columns="v3"), meta={"v3": "float64"}, include_groups=False)[["v3"]]
               .compute())
        ans.reset_index(level="id6", inplace=True)
        ans.reset_index(drop=True, inplace=True)
        return ans
    elif q == "q9":
        ans = (x[["id2", "id4", "v1", "v2"]].groupby(["id2", "id4"], **kw)
               .apply(lambda x: pd.Series({"r2": x.corr()["v1"]["v2"] ** 2}), meta={"r2": "float64"},
                      include_groups=False).compute())
    elif q == "q10":
        ans = (x.groupby(list(ID16), **kw).agg({"v3": "sum", "v1": "size"}, split_out=x.npartitions)
               .rename(columns={"v1": "count"}).compute())
    else:
        raise KeyError(q)
    ans.reset_index(inplace=True)
    return ans


# -- ours --------------------------------------------------------------------------------------------------
OURS_SPECS = {
    "q1": (("id1",), ("v1=sum(v1)",)),
    "q2": (("id1", "id2"), ("v1=sum(v1)",)),
    "q3": (("id3",), ("v1=sum(v1)", "v3=mean(v3)")),
    "q4": (("id4",), ("v1=mean(v1)", "v2=mean(v2)", "v3=mean(v3)")),
    "q5": (("id6",), ("v1=sum(v1)", "v2=sum(v2)", "v3=sum(v3)")),
    "q6": (("id4", "id5"), ("median_v3=median(v3)", "sd_v3=std(v3)")),
    "q7": (("id3",), ("max_v1=max(v1)", "min_v2=min(v2)")),              # client: max_v1 - min_v2
    "q8": (("id6",), ("largest2_v3=largest(v3,2)",)),                    # client: explode the lists
    "q9": (("id2", "id4"), ("r=corr(v1,v2)",)),                          # client: r ** 2
    "q10": (ID16, ("v3=sum(v3)", "count=count()")),
}
OURS_POST = {"q7": "max_v1 - min_v2, client-side", "q8": "largest(v3,2) lists exploded, client-side",
             "q9": "corr squared, client-side"}


def ours(question: str) -> tuple[str, dict]:
    """``question`` ('q1'..'q10') -> (op, params) for shardstats: ``("groupby", {"by": "id1,id2", "agg": (...)})``,
    the API's ``c.submit(op, DIR, **params)`` and the CLI's ``cluster submit groupby --input DIR --by id1,id2
    --agg 'v1=sum(v1)' --json``."""
    by, agg = OURS_SPECS[question]
    return "groupby", {"by": ",".join(by), "agg": tuple(agg), "limit": 0}    # limit 0: every group in the answer


def ours_cli(question: str, input_dir: str) -> str:
    kind, args = ours(question)
    aggs = " ".join(f"--agg '{a}'" for a in args["agg"])
    return f"cluster submit {kind} --input {input_dir} --by {args['by']} {aggs} --limit {args['limit']} --json"


def ours_post(question: str, df):
    """Ours' answer table (polars) -> the question's canonical columns (the client-side finishing for q7-q9)."""
    import polars as pl
    q = QUESTIONS[question]
    if question == "q7":
        df = df.with_columns((pl.col("max_v1") - pl.col("min_v2")).alias("range_v1_v2"))
    elif question == "q8":
        df = df.explode("largest2_v3")
    elif question == "q9":
        df = df.with_columns((pl.col("r") ** 2).alias("r2"))
    return df.select(list(q.keys) + list(q.values))


def ours_table(result: dict):
    """A groupby/wordcount result ({columns, data}) as a polars DataFrame."""
    import polars as pl
    cols = list(result["columns"])
    return pl.DataFrame(result["data"], schema=cols, orient="row", infer_schema_length=None)


OUR_COUNTERS = ("map_pairs", "combined_pairs", "shuffled_pairs", "busiest_reducer_share", "bytes_sent")


def ours_submit(c, op: str, path: str, **params):
    """c.submit, with ``by`` as the CLI's comma list and, should the API want a sequence, as a tuple."""
    try:
        return c.submit(op, path, **params)
    except TypeError:
        if isinstance(params.get("by"), str):
            return c.submit(op, path, **{**params, "by": tuple(params["by"].split(","))})
        raise


# -- measuring ------------------------------------------------------------------------------------------------
class PeakRSS:
    """Peak of the summed RSS of this process, its descendants and ``extra`` pids, sampled every ``every`` s."""

    def __init__(self, every: float = 0.05) -> None:
        self.every, self.peak, self.extra = every, 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> int:
        import psutil
        me = psutil.Process()
        procs = {p.pid: p for p in [me, *me.children(recursive=True)]}
        for pid in self.extra:
            if pid not in procs:
                try:
                    procs[pid] = psutil.Process(pid)
                except psutil.Error:
                    pass
        total = 0
        for p in procs.values():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        return total

    def _run(self) -> None:
        try:
            import psutil  # noqa: F401
        except ImportError:
            return
        while not self._stop.wait(self.every):
            self.sample()


def best_of(runs: int, fn):
    """(best seconds, the last run's value)."""
    best, value = math.inf, None
    for _ in range(runs):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def normalize(df, q: Question):
    """Any peer's answer (polars) -> canonical names, Int64/Float64/String columns, rows sorted."""
    import polars as pl
    names = list(q.keys) + list(q.values)
    if len(df.columns) != len(names):
        raise ValueError(f"{q.name}: {len(df.columns)} columns {df.columns}, expected {names}")
    df = df.rename(dict(zip(df.columns, names)))
    casts = []
    for name, dtype in df.schema.items():
        if dtype.is_integer():
            casts.append(pl.col(name).cast(pl.Int64))
        elif dtype.is_float() or dtype.is_decimal():
            casts.append(pl.col(name).cast(pl.Float64))
        else:
            casts.append(pl.col(name).cast(pl.String))
    df = df.select(casts)
    return df.sort(names if q.multiset else list(q.keys), nulls_last=True)


def compare(ref, got, key_cols: list[str]) -> str | None:
    """None when equal (ints and strings exact, floats within REL_TOL, NaN == null); else what differs."""
    import numpy as np
    if ref.height != got.height:
        return f"{got.height:,} rows, expected {ref.height:,}"
    if ref.columns != got.columns:
        return f"columns {got.columns}, expected {ref.columns}"
    for name in ref.columns:
        a, b = ref[name], got[name]
        if a.dtype.is_float() or b.dtype.is_float():
            x = a.cast(float).fill_null(float("nan")).to_numpy()
            y = b.cast(float).fill_null(float("nan")).to_numpy()
            bad = ~((np.isnan(x) & np.isnan(y)) | (np.abs(x - y) <= REL_TOL * np.maximum(np.abs(x), np.abs(y))
                                                    + ABS_TOL))
        else:
            if a.dtype != b.dtype:
                return f"column {name}: {b.dtype}, expected {a.dtype}"
            bad = ~(a == b).fill_null(False).to_numpy() & ~(a.is_null() & b.is_null()).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            row = {k: ref[k][i] for k in key_cols}
            return f"{int(bad.sum()):,} rows differ in {name}, e.g. {row}: {b[i]!r}, expected {a[i]!r}"
    return None


CHECK_IN_MEMORY_ROWS = 20_000_000     # a larger answer (q10 at 1e8: ~1e8 rows) is checked by DuckDB from disk


def compare_on_disk(ref_path: Path, got_path: Path, q: Question) -> str | None:
    """A big answer against DuckDB's without holding either (q10 at 1e8 rows: two answers sorted in Polars took
    24 GB and the OOM killer ended the benchmark): DuckDB, spilling under a memory limit, joins the two on the
    keys and counts rows missing on either side and values apart beyond REL_TOL (integers exactly)."""
    import duckdb
    names = list(q.keys) + list(q.values)
    con = duckdb.connect(config={"memory_limit": "4GB", "threads": 2})

    def view(path: Path, alias: str) -> None:
        path = f"{path}/*.parquet" if Path(path).is_dir() else path
        cols = con.sql(f"SELECT * FROM read_parquet('{path}') LIMIT 0").columns
        if len(cols) != len(names):
            raise ValueError(f"{q.name}: {len(cols)} columns {cols}, expected {names}")
        con.execute(f"CREATE VIEW {alias} AS SELECT " + ", ".join(f'"{c}" AS "{n}"' for c, n in zip(cols, names))
                    + f" FROM read_parquet('{path}')")
    view(ref_path, "a")
    view(got_path, "b")
    n_a, n_b = (con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ("a", "b"))
    if n_a != n_b:
        return f"{n_b:,} rows, expected {n_a:,}"
    on = " AND ".join(f'a."{k}" IS NOT DISTINCT FROM b."{k}"' for k in q.keys)
    apart = " OR ".join(f'NOT (a."{v}" IS NOT DISTINCT FROM b."{v}" OR abs(a."{v}"::DOUBLE - b."{v}"::DOUBLE) <= '
                        f'{REL_TOL} * greatest(abs(a."{v}"::DOUBLE), abs(b."{v}"::DOUBLE)) + {ABS_TOL})'
                        for v in q.values)
    missing, differ = con.sql(f"SELECT count(*) FILTER (WHERE b.\"{q.keys[0]}\" IS NULL AND a.\"{q.keys[0]}\" "
                              f"IS NOT NULL), count(*) FILTER (WHERE {apart}) FROM a LEFT JOIN b ON {on}").fetchall()[0]
    if missing or differ:
        return f"{missing:,} keys missing, {differ:,} rows differ (checked on disk by DuckDB)"
    return None


# -- group-by peers (each runs in its own process: `_run groupby PEER`) ----------------------------------------
def run_groupby_peer(peer: str, data: str, questions: list[str], modes: list[str], runs: int, answers: Path,
                     rss: PeakRSS, ours_out: str | None = None, report: str | None = None) -> dict:
    files = dbgen.shard_files(data, ".parquet")
    if not files:
        raise FileNotFoundError(f"no part-*.parquet in {data}")
    out: dict = {"times": {}, "notes": [], "stats": {}, "errors": {}}

    def checkpoint() -> None:
        """The report so far, after every question: a peer past the parent's timeout (Spark, Dask at 1e8) or
        killed keeps the questions it finished (the parent reads this file on a timeout)."""
        if report:
            rss.sample()
            Path(report).write_text(json.dumps({**out, "peak_rss": rss.peak, "partial": True}, default=str))

    @contextlib.contextmanager
    def guarded(mode: str, q: str):
        """One question's failure is that question's (the others still run)."""
        try:
            yield
        except Exception as e:  # noqa: BLE001
            out["errors"].setdefault(mode, {})[q] = f"{type(e).__name__}: {e}".strip()[:600]
            traceback.print_exc()
        checkpoint()

    def record(mode: str, q: str, seconds: float, df) -> None:
        out["times"].setdefault(mode, {})[q] = seconds
        if df is not None:
            df.write_parquet(answers / f"{peer}-{mode}-{q}.parquet")

    import polars as pl
    if peer == "duckdb":
        import duckdb
        con = duckdb.connect(":memory:")

        def run(sql: str):             # DuckDB 2 keeps a statement's result pending until it is fetched
            return con.execute(sql).fetchall()
        run("SET enable_progress_bar = false")
        run(f"PRAGMA threads={os.cpu_count()}")
        if os.environ.get("BENCH_DUCKDB_MEMORY"):   # e.g. 8GB beside other people's jobs (default: DuckDB's 80%)
            run(f"SET memory_limit = '{os.environ['BENCH_DUCKDB_MEMORY']}'")
            run(f"SET temp_directory = '{answers / 'duckdb-tmp'}'")
        out["version"] = duckdb.__version__
        lst = "[" + ", ".join(f"'{f}'" for f in files) + "]"
        for mode in modes:
            if mode == "e2e":
                run(f"CREATE OR REPLACE VIEW x AS SELECT * FROM read_parquet({lst})")
            else:
                run("DROP VIEW IF EXISTS x")
                run(f"CREATE OR REPLACE TABLE x AS SELECT * FROM read_parquet({lst})")
            for q in questions:
                with guarded(mode, q):
                    def go(q=q):
                        run("DROP TABLE IF EXISTS ans")
                        run(f"CREATE TEMP TABLE ans AS {DUCKDB_SQL[q]}")
                        return run("SELECT count(*) FROM ans")[0][0]
                    t, _ = best_of(runs, go)
                    record(mode, q, t, pl.from_arrow(con.sql("SELECT * FROM ans").to_arrow_table()))
                    run("DROP TABLE IF EXISTS ans")
            if mode == "warm":
                run("DROP TABLE x")

    elif peer == "polars":
        out["version"] = pl.__version__
        for mode in modes:
            x = pl.scan_parquet(files) if mode == "e2e" else pl.read_parquet(files).lazy()
            for q in questions:
                with guarded(mode, q):
                    t, ans = best_of(runs, lambda q=q: polars_query(q, x).collect())
                    record(mode, q, t, ans)
                    del ans
            del x

    elif peer == "dask":
        import dask
        import dask.dataframe as dd
        out["version"] = dask.__version__
        with dask_cluster(out):
            for mode in modes:
                x = dd.read_parquet(files)
                if mode == "warm":
                    x = x.persist()
                    len(x)
                for q in questions:
                    with guarded(mode, q):
                        t, ans = best_of(runs, lambda q=q: dask_query(q, x))
                        record(mode, q, t, pl.from_pandas(ans))
                        del ans
                del x

    elif peer == "spark":
        import pyspark
        from pyspark.sql import SparkSession
        out["version"] = pyspark.__version__
        spark = (SparkSession.builder.master("local[2]").appName("bench-keyed")
                 .config("spark.driver.memory", os.environ.get("BENCH_SPARK_MEMORY", "8g"))
                 .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                 .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                 .getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        level = pyspark.StorageLevel.MEMORY_ONLY
        try:
            for mode in modes:
                if mode == "warm":
                    x = spark.read.parquet(*files).persist(level)
                    x.count()
                    x.createOrReplaceTempView("x")
                for q in questions:
                    with guarded(mode, q):
                        def go(q=q, mode=mode):
                            if mode == "e2e":
                                spark.read.parquet(*files).createOrReplaceTempView("x")
                            ans = spark.sql(SPARK_SQL[q]).persist(level)
                            ans.count()
                            return ans
                        best, df = math.inf, None
                        for _ in range(runs):
                            t0 = time.perf_counter()
                            ans = go()
                            best = min(best, time.perf_counter() - t0)
                            if df is None and ans.count() > CHECK_IN_MEMORY_ROWS:
                                # q10 at 1e8 (~1e8 rows): toPandas would hold it as Python strings (~20 GB)
                                big = answers / f"{peer}-{mode}-{q}.parquet"
                                ans.write.mode("overwrite").parquet(str(big))
                                df = False
                            elif df is None:
                                df = pl.from_pandas(ans.toPandas())
                            ans.unpersist()
                        record(mode, q, best, df if df is not False else None)
                if mode == "warm":
                    x.unpersist()
        finally:
            spark.stop()

    elif peer == "ours":
        from shardstats import Cluster
        workers = 10
        with Cluster.local(workers) as c:
            rss.extra.update(getattr(c.info, "pids", None) or [])
            out["notes"].append(f"Cluster.local({workers}); two untimed jobs first (the workers import "
                                f"pyarrow, DuckDB and Polars on their first keyed job, and pyarrow imports pandas "
                                f"where it is installed on its first numpy conversion, ~0.2 s of CPU a worker: "
                                f"the peers import theirs before their clocks start)")
            ours_submit(c, "groupby", data, by="id4", agg=("count()",), limit=1)
            ours_submit(c, "groupby", data, by="id1,id2", agg=("count()",), limit=1)     # the dense kernel's numpy
            for mode in modes:
                src = data
                if mode == "warm":
                    kind, params = ours("q1")
                    ours_submit(c, kind, data, **params, cache="g1")
                    src = "cache:g1"
                for q in questions:
                    with guarded(mode, q):
                        kind, params = ours(q)
                        if ours_out:          # the answer as Parquet parts (read back untimed unless q7-q9 need it)
                            params = {**params, "out": str(Path(ours_out) / f"{mode}-{q}")}
                            params.pop("limit")

                        def go(q=q, kind=kind, params=params, src=src):
                            if "out" in params:
                                shutil.rmtree(params["out"], ignore_errors=True)
                            r = ours_submit(c, kind, src, **params)
                            if "out" not in params:
                                return r, ours_post(q, ours_table(r.result))
                            if q in OURS_POST:
                                return r, ours_post(q, pl.read_parquet(params["out"] + "/*.parquet"))
                            return r, None
                        t, (r, df) = best_of(runs, go)
                        if df is None:
                            df = ours_post(q, pl.read_parquet(params["out"] + "/*.parquet"))
                        out["stats"].setdefault(mode, {})[q] = {k: r.stats.get(k) for k in
                                                                (*OUR_COUNTERS, "reducer_pairs", "seconds")}
                        record(mode, q, t, df)
    else:
        raise ValueError(f"unknown peer {peer!r}")
    return out


@contextlib.contextmanager
def dask_cluster(out: dict):
    """The Dask peer's cluster: a distributed.LocalCluster of one single-threaded process per core (at most 2)."""
    from distributed import Client, LocalCluster
    workers = max(1, min(2, os.cpu_count() or 1))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=None) as cluster, Client(cluster):
        out["notes"].append(f"LocalCluster of {workers} processes x 1 thread")
        yield cluster


# -- word-count peers -------------------------------------------------------------------------------------
WORD_RE = r"[\p{L}\p{N}_]+"          # the engines' spelling of Python's \w (Unicode letters, numbers, _)


def counter_wordcount(files: list[str]):
    import polars as pl
    tok = re.compile(r"\w+")
    c: Counter = Counter()
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                c.update(tok.findall(line.lower()))
    return pl.DataFrame({"word": list(c.keys()), "count": list(c.values())})


def polars_wordcount(files: list[str]):
    import polars as pl
    # one line per row: no quoting, a separator the corpus never holds (dbgen leaves out files with \x1f)
    lines = pl.scan_csv(files, has_header=False, separator="\x1f", quote_char=None, schema={"line": pl.String},
                        truncate_ragged_lines=True)
    return (lines.select(pl.col("line").str.to_lowercase().str.extract_all(WORD_RE).alias("word"))
            .explode("word").drop_nulls().group_by("word").len(name="count").collect())


def duckdb_wordcount(files: list[str], con=None):
    import duckdb
    con = con or duckdb.connect(":memory:")
    lst = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    import polars as pl
    # line by line: regexp_extract_all over a whole 20 MB file was 3x slower (one huge list per file)
    return pl.from_arrow(con.sql(
        f"SELECT word, count(*) AS count FROM (SELECT unnest(regexp_extract_all(lower(line), '{WORD_RE}')) AS word "
        f"FROM (SELECT unnest(string_split(content, chr(10))) AS line FROM read_text({lst}))) GROUP BY word")
        .to_arrow_table())


_TOKEN = re.compile(r"\w+")


def _tokenize(line: str) -> list[str]:
    return _TOKEN.findall(line.lower())


def dask_wordcount(files: list[str]):
    import dask.bag as db
    import polars as pl
    pairs = db.read_text(files, blocksize="32MiB").map(_tokenize).flatten().frequencies().compute()
    words, counts = zip(*pairs) if pairs else ((), ())
    return pl.DataFrame({"word": list(words), "count": list(counts)})


def spark_wordcount(spark, files: list[str]):
    import polars as pl
    from pyspark.sql import functions as F
    words = (spark.read.text(files)
             .select(F.explode(F.split(F.lower(F.col("value")), r"[^\p{L}\p{N}_]+")).alias("word"))
             .where(F.col("word") != ""))
    return pl.from_arrow(words.groupBy("word").count().toArrow()) if hasattr(words, "toArrow") \
        else pl.from_pandas(words.groupBy("word").count().toPandas())


def run_wordcount_peer(peer: str, data: str, check: str, runs: int, answers: Path, rss: PeakRSS) -> dict:
    big, small = dbgen.shard_files(data, ".txt"), dbgen.shard_files(check, ".txt")
    out: dict = {"times": {}, "notes": [], "stats": {}}

    def timed(fn) -> None:
        fn(small).write_parquet(answers / f"{peer}-check.parquet")
        t, ans = best_of(runs, lambda: fn(big))
        out["times"]["e2e"] = {"wordcount": t}
        ans.write_parquet(answers / f"{peer}-e2e.parquet")

    if peer == "counter":
        out["version"] = sys.version.split()[0]
        timed(counter_wordcount)
    elif peer == "polars":
        import polars as pl
        out["version"] = pl.__version__
        timed(polars_wordcount)
    elif peer == "duckdb":
        import duckdb
        out["version"] = duckdb.__version__
        timed(duckdb_wordcount)
    elif peer == "dask":
        import dask
        out["version"] = dask.__version__
        with dask_cluster(out):
            timed(dask_wordcount)
    elif peer == "spark":
        import pyspark
        from pyspark.sql import SparkSession
        out["version"] = pyspark.__version__
        spark = (SparkSession.builder.master("local[2]").appName("bench-keyed-wc")
                 .config("spark.driver.memory", os.environ.get("BENCH_SPARK_MEMORY", "8g"))
                 .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                 .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        try:
            timed(lambda files: spark_wordcount(spark, files))
        finally:
            spark.stop()
    elif peer == "ours":
        import polars as pl
        from shardstats import Cluster
        with Cluster.local(10) as c:
            rss.extra.update(getattr(c.info, "pids", None) or [])
            r = c.submit("wordcount", check, top=10)
            ours_top(r.result).write_parquet(answers / "ours-check.parquet")
            t, r = best_of(runs, lambda: c.submit("wordcount", data, top=10))
            out["times"]["e2e"] = {"wordcount": t}
            out["stats"]["e2e"] = {"wordcount": {k: r.stats.get(k) for k in (*OUR_COUNTERS, "reducer_pairs")}}
            ours_top(r.result).write_parquet(answers / "ours-e2e.parquet")
        del pl
    else:
        raise ValueError(f"unknown peer {peer!r}")
    return out


def ours_top(result: dict):
    """Ours' wordcount answer -> (word, count) rows, whichever shape it has ({columns, data} or a list)."""
    import polars as pl
    if "columns" in result and "data" in result:
        df = ours_table(result)
    else:
        rows = result.get("top") or result.get("words") or result.get("values") or []
        if rows and isinstance(rows[0], dict):
            df = pl.DataFrame(rows)
        else:
            df = pl.DataFrame(rows, schema=["word", "count"], orient="row")
    df = df.select(df.columns[:2])
    return df.rename(dict(zip(df.columns, ["word", "count"])))


def top_matches(ref, got, k: int = 10) -> str | None:
    """``got`` (ours' top k) against the full reference: the same counts, each word's count right."""
    import polars as pl
    want = ref.sort(["count", "word"], descending=[True, False]).head(k)
    got = got.with_columns(pl.col("count").cast(pl.Int64))
    if got.height != want.height:
        return f"{got.height} words, expected {want.height}"
    if sorted(got["count"].to_list(), reverse=True) != want["count"].to_list():
        return f"counts {got['count'].to_list()}, expected {want['count'].to_list()}"
    truth = dict(zip(ref["word"].to_list(), ref["count"].to_list()))
    wrong = [w for w, n in zip(got["word"].to_list(), got["count"].to_list()) if truth.get(w) != n]
    return f"wrong counts for {wrong}" if wrong else None


# -- the parent: spawn peers, check, print ----------------------------------------------------------------------
def spawn(section: str, peer: str, args: list[str], timeout: float) -> dict:
    """Runs one peer in a child process; its JSON report (or the error)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
        report = tf.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "_run", section, peer, "--report", report, *args]
    print(f"  {section}: {peer} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        try:
            out = json.loads(Path(report).read_text())
        except (OSError, ValueError):
            out = {"error": f"exit {p.returncode}: {p.stderr.strip()[-2000:]}"}
        if p.returncode and "error" not in out:
            out["error"] = f"exit {p.returncode}: {p.stderr.strip()[-2000:]}"
    except subprocess.TimeoutExpired:
        try:
            out = json.loads(Path(report).read_text())       # the questions it finished (checkpoint)
        except (OSError, ValueError):
            out = {}
        out["error"] = f"timed out after {timeout:.0f} s"
    finally:
        Path(report).unlink(missing_ok=True)
    out["wall"] = time.perf_counter() - t0
    print(f"  {section}: {peer} done in {out['wall']:.1f} s" + (f" — {out['error'][:300]}" if "error" in out else ""),
          file=sys.stderr, flush=True)
    return out


def child(a) -> int:
    answers = Path(a.answers)
    answers.mkdir(parents=True, exist_ok=True)
    with PeakRSS() as rss:
        try:
            if a.section == "groupby":
                out = run_groupby_peer(a.peer, a.data, a.questions.split(","), a.modes.split(","), a.runs, answers,
                                       rss, a.ours_out, a.report)
            else:
                out = run_wordcount_peer(a.peer, a.data, a.check, a.runs, answers, rss)
        except BaseException as e:     # noqa: BLE001 (the parent reports it)
            out = {"error": f"{type(e).__name__}: {e}".strip()[:2000],
                   "trace": traceback.format_exc()[-4000:]}
        rss.sample()
    out["peak_rss"] = rss.peak
    Path(a.report).write_text(json.dumps(out, default=str))
    return 0


def fmt_s(t: float | None) -> str:
    return "—" if t is None else f"{t:.3f}" if t < 10 else f"{t:.1f}"


def fmt_ratio(theirs: float | None, ours_t: float | None) -> str:
    if theirs is None or ours_t is None or ours_t <= 0:
        return "—"
    return f"{theirs / ours_t:.2f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def mib(n) -> str:
    return "—" if not n else f"{n / 2**20:,.0f}"


def print_section(title: str, peers: list[str], results: dict, rows_of: list[tuple[str, str]], modes: list[str],
                  bad: dict, notes: list[str]) -> None:
    print(f"\n## {title}\n")
    our = results.get("ours", {})
    if "error" in our:
        print(f"ours: not available ({our['error'].splitlines()[0][:300]})\n")
    for mode in modes:
        ot = our.get("times", {}).get(mode, {})
        header = ["question", "ours (s)"] + [f"{p} (s)" for p in peers] + [f"{p} ÷ ours" for p in peers]
        rows = []
        for q, label in rows_of:
            r = []
            for p in ["ours", *peers]:
                t = results.get(p, {}).get("times", {}).get(mode, {}).get(q)
                err = results.get(p, {}).get("errors", {}).get(mode, {}).get(q)
                r.append("error" if err else fmt_s(t) + (" ✗" if bad.get((p, mode, q)) else ""))
            r.insert(0, label)
            for p in peers:
                r.append(fmt_ratio(results.get(p, {}).get("times", {}).get(mode, {}).get(q), ot.get(q)))
            rows.append(r)
        tot = ["**total**", fmt_s(sum(ot.values())) if ot and len(ot) == len(rows_of) else "—"]
        for p in peers:
            pt = results.get(p, {}).get("times", {}).get(mode, {})
            tot.append(fmt_s(sum(pt.values())) if len(pt) == len(rows_of) else "—")
        for p in peers:
            pt = results.get(p, {}).get("times", {}).get(mode, {})
            tot.append(fmt_ratio(sum(pt.values()) if len(pt) == len(rows_of) else None,
                                 sum(ot.values()) if ot and len(ot) == len(rows_of) else None))
        rows.append(tot)
        print(f"### {mode}\n")
        print(md_table(header, rows))
        print()
    rss_row = [["peak RSS (MiB, process + children)", mib(our.get("peak_rss"))]
               + [mib(results.get(p, {}).get("peak_rss")) for p in peers]]
    print(md_table(["", "ours"] + peers, rss_row))
    print()
    ver = ", ".join(f"{p} {results[p].get('version', '?')}" for p in peers if p in results)
    print(f"versions: {ver}")
    for p in ["ours", *peers]:
        for n in results.get(p, {}).get("notes", []):
            print(f"- {p}: {n}")
        if "error" in results.get(p, {}) and p != "ours":
            print(f"- {p}: FAILED: {results[p]['error'].splitlines()[0][:500]}")
    for n in notes:
        print(f"- {n}")
    for p in ["ours", *peers]:
        for mode, per_q in results.get(p, {}).get("errors", {}).items():
            for q, err in per_q.items():
                print(f"- {p} {mode} {q}: error: {err.splitlines()[0][:300]}")
    for (p, mode, q), why in sorted(bad.items()):
        if why:
            print(f"- ✗ {p} {mode} {q}: {why}")
    stats = our.get("stats", {})
    for mode, per_q in stats.items():
        print(f"\n### ours' shuffle counters ({mode})\n")
        header = ["question", *OUR_COUNTERS, "reducer_pairs (min..max)"]
        rows = []
        for q, label in rows_of:
            s = per_q.get(q) or {}
            rp = s.get("reducer_pairs") or []
            row = [label]
            for k in OUR_COUNTERS:
                v = s.get(k)
                row.append("—" if v is None else f"{v:.3f}" if isinstance(v, float) else
                           f"{v / 2**20:,.1f} MiB" if k == "bytes_sent" else f"{v:,}")
            row.append(f"{min(rp):,}..{max(rp):,}" if rp else "—")
            rows.append(row)
        print(md_table(header, rows))


def cmd_groupby(a) -> int:
    import polars as pl
    rows = dbgen.parse_count(a.rows)
    name = dbgen.dataset_name(rows)
    data = Path(a.data) if a.data else BENCH_DIR / name
    print(f"data: {data}", file=sys.stderr, flush=True)
    dbgen.generate_groupby(data, rows, shards=a.shards)
    peers = [p for p in a.peers.split(",") if p]
    questions = [q for q in (a.questions.split(",") if a.questions else QUESTIONS)]
    modes = ["e2e", "warm"] if a.warm else ["e2e"]
    if a.warm_only:
        modes = ["warm"]
    answers = BENCH_DIR / "answers" / name
    answers.mkdir(parents=True, exist_ok=True)
    for f in answers.glob("*.parquet"):       # Spark writes its answer as a folder of parts
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    common = ["--data", str(data), "--questions", ",".join(questions), "--modes", ",".join(modes),
              "--runs", str(a.runs), "--answers", str(answers)]
    if a.ours_out:
        common += ["--ours-out", str(BENCH_DIR / "ours-out" / name)]
    results = {}
    run_list = (["duckdb"] if "duckdb" not in peers else []) + peers + ([] if a.no_ours else ["ours"])
    for p in run_list:
        if p == "duckdb" and p not in peers:         # the reference, not shown
            results["_ref"] = spawn("groupby", "duckdb", [*common[:4], "--modes", "e2e", "--runs", "1",
                                                          "--answers", str(answers)], a.timeout)
            continue
        results[p] = spawn("groupby", p, common, a.timeout)
        # each peer's times as soon as they are in: a check that fails later leaves the times on record
        print(f"  {p}: {json.dumps(results[p].get('times'))}", file=sys.stderr, flush=True)
    # check every answer against DuckDB's (e2e)
    bad: dict = {}
    for q in questions:
        Q = QUESTIONS[q]
        ref_path = answers / f"duckdb-e2e-{q}.parquet"
        if not ref_path.exists():
            continue
        big = pl.scan_parquet(ref_path).select(pl.len()).collect().item() > CHECK_IN_MEMORY_ROWS
        ref = None if big else normalize(pl.read_parquet(ref_path), Q)
        for f in sorted(answers.glob(f"*-{q}.parquet")):
            peer, mode, _ = f.stem.rsplit("-", 2)
            if peer == "duckdb" and mode == "e2e":
                continue
            try:
                why = compare_on_disk(ref_path, f, Q) if big else \
                    compare(ref, normalize(pl.read_parquet(f), Q), list(Q.keys))
            except Exception as e:  # noqa: BLE001
                why = f"{type(e).__name__}: {e}"
            bad[(peer, mode, q)] = why
    n_bad = sum(1 for v in bad.values() if v)
    notes = [f"{rows:,} rows, {len(dbgen.shard_files(data, '.parquet'))} Parquet files in {data}; best of "
             f"{a.runs} run(s); machine: {os.cpu_count()} cores",
             f"answers checked against DuckDB's: {sum(1 for v in bad.values() if not v)} equal, {n_bad} differ"]
    notes += [f"ours {q}: {why}" for q, why in OURS_POST.items() if q in questions]
    if "ours" in results and "error" not in results["ours"]:
        notes.append("ours' specs: " + "; ".join(f"{q}: --by {ours(q)[1]['by']} "
                                                  + " ".join(f"--agg {x}" for x in ours(q)[1]['agg'])
                                                  for q in questions))
    print_section(f"groupby — db-benchmark {name}", peers, results,
                  [(q, f"{q} {QUESTIONS[q].title}") for q in questions], modes, bad, notes)
    return 1 if n_bad else 0


def cmd_wordcount(a) -> int:
    import polars as pl
    size = dbgen.parse_size(a.size)
    data = Path(a.data) if a.data else BENCH_DIR / f"corpus-{a.size}"
    check = BENCH_DIR / f"corpus-check-{a.check_size}"
    print(f"corpus: {data} (check corpus {check})", file=sys.stderr, flush=True)
    dbgen.build_corpus(data, size, a.files)
    dbgen.build_corpus(check, dbgen.parse_size(a.check_size), a.files)
    peers = [p for p in a.peers.split(",") if p]
    answers = BENCH_DIR / "answers" / data.name
    answers.mkdir(parents=True, exist_ok=True)
    for f in answers.glob("*.parquet"):       # Spark writes its answer as a folder of parts
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    common = ["--data", str(data), "--check", str(check), "--runs", str(a.runs), "--answers", str(answers)]
    results = {p: spawn("wordcount", p, common, a.timeout) for p in peers + ([] if a.no_ours else ["ours"])}
    # the reference on the check corpus: collections.Counter, here
    ref_small = normalize_wc(counter_wordcount(dbgen.shard_files(check, ".txt")))
    ref_big, ref_name = None, None
    bad: dict = {}
    for p in peers:
        f = answers / f"{p}-e2e.parquet"
        if f.exists():
            ref_big, ref_name = normalize_wc(pl.read_parquet(f)), p
            break
    for p in [*peers, "ours"]:
        for which, ref in (("check", ref_small), ("e2e", ref_big)):
            f = answers / f"{p}-{which}.parquet"
            if not f.exists() or ref is None or (which == "e2e" and p == ref_name):
                continue
            got = pl.read_parquet(f)
            why = top_matches(ref, got) if p == "ours" else compare(ref, normalize_wc(got), ["word"])
            bad[(p, "e2e" if which == "e2e" else "check", "wordcount")] = why
    n_bad = sum(1 for v in bad.values() if v)
    notes = [f"corpus {data}: {sum(os.path.getsize(f) for f in dbgen.shard_files(data, '.txt')) / 1e6:,.0f} MB "
             f"in {len(dbgen.shard_files(data, '.txt'))} files; best of {a.runs} run(s)"]
    if ref_big is not None:
        notes.append(f"big corpus: {ref_big['count'].sum():,} tokens, {ref_big.height:,} distinct; full tables "
                     f"checked against {ref_name}'s")
    notes.append(f"check corpus {check.name}: {ref_small['count'].sum():,} tokens, {ref_small.height:,} distinct; "
                 f"full tables checked against collections.Counter (`check` rows below)")
    notes.append(f"checks: {sum(1 for v in bad.values() if not v)} equal, {n_bad} differ")
    if bad.get(("duckdb", "e2e", "wordcount")):
        notes.append("DuckDB's lower() maps İ (U+0130) to i (simple case mapping); Python, Polars and Spark to "
                     "i + U+0307 (full), which \\w does not match, so a word holding İ is one token in DuckDB and "
                     "two elsewhere (the standard library's test_ntpath.py has MOUNTPOİNT)")
    if results.get("ours") and "error" not in results["ours"]:
        notes.append("ours: `cluster submit wordcount --input DIR --top 10 --json`; only its top 10 is checked")
    print_section(f"wordcount — {data.name}", peers, results, [("wordcount", "wordcount (tokenize + count)")],
                  ["e2e"], {k: v for k, v in bad.items() if k[1] == "e2e"}, notes)
    for (p, which, _), why in sorted(bad.items()):
        if which == "check":
            print(f"- check corpus, {p} vs Counter: {'equal' if not why else '✗ ' + why}")
    return 1 if n_bad else 0


def normalize_wc(df):
    import polars as pl
    df = df.select(df.columns[:2])
    df = df.rename(dict(zip(df.columns, ["word", "count"])))
    return df.select(pl.col("word").cast(pl.String), pl.col("count").cast(pl.Int64)).sort("word")


def cmd_gen(a) -> int:
    rows = dbgen.parse_count(a.rows)
    out = Path(a.out) if a.out else BENCH_DIR / dbgen.dataset_name(rows)
    t0 = time.perf_counter()
    dbgen.generate_groupby(out, rows, shards=a.shards, force=a.force)
    print(f"{out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("groupby", help="db-benchmark's ten group-by questions")
    g.add_argument("--rows", default="1e7")
    g.add_argument("--data", help=f"a G1 Parquet directory (default {BENCH_DIR}/G1_<rows>_1e2_0_0, made if absent)")
    g.add_argument("--shards", type=int, default=10)
    g.add_argument("--peers", default=",".join(GROUPBY_PEERS))
    g.add_argument("--questions", help="e.g. q1,q2 (default all ten)")
    g.add_argument("--warm", action="store_true", help="also time with the data in memory")
    g.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--runs", type=int, default=2)
    g.add_argument("--timeout", type=float, default=3600, help="per peer, seconds")
    g.add_argument("--no-ours", action="store_true")
    g.add_argument("--ours-out", action="store_true",
                   help="ours writes each answer as Parquet parts (--out) instead of returning every row (--limit 0)")
    w = sub.add_parser("wordcount", help="tokenize + count a corpus of the standard library's text")
    w.add_argument("--size", default="200MB")
    w.add_argument("--check-size", default="4MB")
    w.add_argument("--files", type=int, default=10)
    w.add_argument("--data", help="a corpus directory of part-*.txt (default made under /tmp/shardstats-bench)")
    w.add_argument("--peers", default=",".join(WORDCOUNT_PEERS), help="also: counter")
    w.add_argument("--runs", type=int, default=1)
    w.add_argument("--timeout", type=float, default=3600)
    w.add_argument("--no-ours", action="store_true")
    gen = sub.add_parser("gen", help="only generate the group-by data")
    gen.add_argument("--rows", default="1e7")
    gen.add_argument("--shards", type=int, default=10)
    gen.add_argument("--out")
    gen.add_argument("--force", action="store_true")
    r = sub.add_parser("_run")       # internal: one peer in its own process
    r.add_argument("section")
    r.add_argument("peer")
    r.add_argument("--report", required=True)
    r.add_argument("--data", required=True)
    r.add_argument("--check")
    r.add_argument("--questions", default=",".join(QUESTIONS))
    r.add_argument("--modes", default="e2e")
    r.add_argument("--runs", type=int, default=1)
    r.add_argument("--answers", required=True)
    r.add_argument("--ours-out")
    a = ap.parse_args(argv)
    return {"groupby": cmd_groupby, "wordcount": cmd_wordcount, "gen": cmd_gen, "_run": child}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
