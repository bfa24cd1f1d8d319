"""Sort and join on the keyed engine beside DuckDB and Polars, in one run: time, rows shuffled, the plan.

    python scripts/bench_sortjoin.py [--rows 1e7] [--small 1e4] [--workers 10]
    python scripts/bench_sortjoin.py --terasort [--rows 1e7] [--tools ours,duckdb,polars,dask,spark] [--keys k,id]

Data (made once under /tmp/shardstats-bench/): ``sj-<rows>/x`` -- ``rows`` rows in 10 Parquet files, an int64
key ``id`` (uniform over rows/10 values), a 10-byte string ``k``, a 90-byte payload ``p``; ``sj-<rows>/small`` --
``small`` rows (id, name) and ``sj-<rows>/medium`` -- rows/10 rows (id, v). Each tool reads the same files and
writes the same output (sort: Parquet files; joins: the rows counted).
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def make(root: Path, rows: int, small: int) -> None:
    if (root / "done").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    for d in ("x", "small", "medium"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(7)
    per = rows // 10
    for i in range(10):
        ids = rng.integers(0, max(1, rows // 10), per)
        k = np.char.zfill(rng.integers(0, 10**10, per).astype(str), 10)
        payload = np.full(per, "x" * 90)
        pq.write_table(pa.table({"id": ids, "k": k, "p": payload}), root / "x" / f"part-{i:02d}.parquet")
    pq.write_table(pa.table({"id": np.arange(small), "name": [f"n{i}" for i in range(small)]}),
                   root / "small" / "small.parquet")
    m = rows // 10
    pq.write_table(pa.table({"id": rng.permutation(m), "v": rng.random(m)}), root / "medium" / "medium.parquet")
    (root / "done").write_text("ok")


# -- TeraSort: the total-order sort beside DuckDB, Polars, Dask and Spark, against the disk's write rate ----------
def make_tera(root: Path, rows: int, shard_rows: int = 1_000_000) -> None:
    """TeraSort's shape in Parquet shards of ``shard_rows``: a 10-byte string key ``k`` (uniform digits), an int64
    key ``id`` (rows/10 values: ties) and a 90-byte payload ``p`` like gensort's (the row's number, zero-padded to
    32 characters, then filler): unique, so it does not collapse into a dictionary."""
    import pyarrow.compute as pc
    if (root / "done").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(7)
    filler = pa.scalar("0123456789ABCDEF" * 3 + "0123456789")
    for i, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        k = pc.utf8_lpad(pc.cast(pa.array(rng.integers(0, 10**10, n)), pa.string()), 10, "0")
        rid = pc.utf8_lpad(pc.cast(pa.array(np.arange(start, start + n)), pa.string()), 32, "0")
        pq.write_table(pa.table({"id": rng.integers(0, max(1, rows // 10), n), "k": k,
                                 "p": pc.binary_join_element_wise(rid, filler, "")}), root / f"part-{i:04d}.parquet")
    (root / "done").write_text("ok")


def disk_rate(folder: Path, mib: int = 2048) -> float:
    """MB/s of ``dd`` writing ``mib`` MiB of zeros to ``folder``'s disk and syncing (conv=fdatasync)."""
    import re
    import subprocess
    target = folder / "dd.bin"
    try:
        r = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", "conv=fdatasync"],
                           capture_output=True, text=True, timeout=600)
    finally:
        target.unlink(missing_ok=True)
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", r.stderr)
    return int(m.group(1)) / float(m.group(2)) / 1e6


def _natural(names: list[str]) -> list[str]:
    import re
    return sorted(names, key=lambda s: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", s)])


def verify(out: Path, key: str, rows: int, id_sum: int) -> tuple[int, int]:
    """The output's Parquet files in name order (numbers compared as numbers, as Dask names parts): every row
    once by count and by the sum of ``id``, and ``key`` non-decreasing through them all.  Returns (rows, bytes)."""
    import pyarrow.compute as pc
    files = _natural([str(p) for p in (out.rglob("*.parquet") if out.is_dir() else [out])])
    n = total = size = 0
    last = None
    for f in files:
        size += os.path.getsize(f)
        t = pq.read_table(f, columns=list(dict.fromkeys([key, "id"])))
        col = t.column(key).combine_chunks()
        n += t.num_rows
        total += pc.sum(t.column("id")).as_py() or 0
        if not t.num_rows:
            continue
        assert pc.all(pc.less_equal(col[:-1], col[1:])).as_py() in (True, None), f"{f}: out of order"
        assert last is None or last <= col[0].as_py(), f"{f}: starts before the previous file ends"
        last = col[-1].as_py()
    assert n == rows and total == id_sum, f"{out}: {n} rows (want {rows}), id sum {total} (want {id_sum})"
    return n, size


def _dask(src: Path, key: str, out: Path) -> None:
    import dask.dataframe as dd
    dd.read_parquet(f"{src}/*.parquet").sort_values(key).to_parquet(str(out), write_index=False,
                                                                    name_function=lambda i: f"part-{i:05d}.parquet")


def terasort(rows: int, root: Path, workers: int, tools: list[str], keys: list[str], dd_mib: int = 2048) -> None:
    import duckdb
    import polars as pl
    from shardstats import Cluster
    src = root / f"tera-{rows:.0e}".replace("+", "")
    make_tera(src, rows)
    in_bytes = sum(p.stat().st_size for p in src.glob("*.parquet"))
    id_sum = int(duckdb.sql(f"select sum(id) from read_parquet('{src}/*.parquet')").fetchall()[0][0])
    out = root / "tera-out"
    res: dict = {}
    spark = dask = None
    if "dask" in tools:           # two processes of one thread, started before the clock (as our workers are)
        from dask.distributed import Client, LocalCluster
        dask = Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True, scheduler_port=7610,
                                   dashboard_address=":7611", local_directory=str(root / "dask-tmp")))
    if "spark" in tools:
        from pyspark.sql import SparkSession
        spark = (SparkSession.builder.master("local[2]").appName("terasort").config("spark.driver.memory", "3g")
                 .config("spark.sql.shuffle.partitions", str(workers)).config("spark.ui.enabled", "false")
                 .config("spark.ui.showConsoleProgress", "false")
                 .config("spark.local.dir", str(root / "spark-tmp")).getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        spark.read.parquet(str(src / "part-0000.parquet")).orderBy("k").count()      # the JVM's first job
    rate0 = disk_rate(root, dd_mib) if dd_mib else float("nan")
    print(f"dd (conv=fdatasync, {dd_mib} MiB): {rate0:.0f} MB/s", flush=True)
    cluster = Cluster.local(workers) if "ours" in tools else None
    try:
        if cluster:
            cluster.submit("groupby", str(src / "part-0000.parquet"), by="id", agg=("count()",), limit=1)   # imports
        for key in keys:
            jobs = {
                "ours": lambda d: cluster.submit("sort", str(src), by=key, out=str(d), overwrite=True),
                "duckdb": lambda d: duckdb.sql(f"COPY (SELECT * FROM read_parquet('{src}/*.parquet') ORDER BY {key}) "
                                               f"TO '{d}/sorted.parquet' (FORMAT parquet)"),
                "polars": lambda d: pl.scan_parquet(f"{src}/*.parquet").sort(key).sink_parquet(
                    d / "sorted.parquet", compression="snappy"),      # Polars writes zstd unless told: all snappy
                "dask": lambda d: _dask(src, key, d),
                "spark": lambda d: spark.read.parquet(f"{src}/*.parquet").orderBy(key).write.mode("overwrite").parquet(str(d)),
            }
            for tool in tools:
                d = out / f"{tool}-{key}"
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir(parents=True)
                c0 = sum(os.times()[:4])
                t0 = time.perf_counter()
                jobs[tool](d)
                wall = time.perf_counter() - t0
                cpu = sum(os.times()[:4]) - c0        # this process and its reaped children (not our workers, Spark's JVM)
                n, size = verify(d, key, rows, id_sum)
                res[(tool, key)] = (wall, size, os.getloadavg()[0])
                print(f"{tool:7s} by {key:2s}: {wall:7.2f} s  {rows / wall / 1e6:5.2f} M rows/s  "
                      f"{(in_bytes + size) / wall / 1e6:6.1f} MB/s read+written  out {size / 1e6:.0f} MB  "
                      f"load {os.getloadavg()[0]:.1f}  (verified: {n:,} rows in order)", flush=True)
                shutil.rmtree(d, ignore_errors=True)
    finally:
        if cluster:
            cluster.close()
        if spark is not None:
            spark.stop()
        if dask is not None:
            dask.cluster.close()
            dask.close()
    rate1 = disk_rate(root, dd_mib) if dd_mib else float("nan")
    print(f"\n{rows:,} rows of ~100 B, {workers} workers, {os.cpu_count()} cores; input {in_bytes / 1e6:.0f} MB of "
          f"Parquet; dd write rate {rate0:.0f} / {rate1:.0f} MB/s (before / after)\n")
    print("| key | tool | seconds | theirs ÷ ours | M rows/s | MB/s written | share of dd's rate | load |")
    print("|---|---|---|---|---|---|---|---|")
    for (tool, key), (wall, size, load) in res.items():
        ours = res.get(("ours", key), (None,))[0]
        ratio = f"{wall / ours:.2f}" if ours else "—"
        print(f"| {key} | {tool} | {wall:.2f} | {ratio} | {rows / wall / 1e6:.2f} | {size / wall / 1e6:.0f} | "
              f"{size / wall / 1e6 / min(rate0, rate1):.1%} | {load:.1f} |")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=float, default=1e7)
    ap.add_argument("--small", type=float, default=1e4)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--terasort", action="store_true", help="the TeraSort table only (ours, DuckDB, Polars, Dask, Spark)")
    ap.add_argument("--tools", default="ours,duckdb,polars,dask,spark")
    ap.add_argument("--keys", default="k,id")
    ap.add_argument("--root", default="/tmp/shardstats-bench")
    ap.add_argument("--dd-mib", type=int, default=2048, help="MiB dd writes for the disk's rate (0: no dd)")
    a = ap.parse_args()
    if a.terasort:
        terasort(int(a.rows), Path(a.root), a.workers, a.tools.split(","), a.keys.split(","), a.dd_mib)
        return
    rows, small = int(a.rows), int(a.small)
    root = Path(f"/tmp/shardstats-bench/sj-{rows:.0e}".replace("+", ""))
    make(root, rows, small)
    out = root / "out"
    import duckdb
    import polars as pl
    from shardstats import Cluster
    res: dict = {}
    x, sm, md = root / "x", root / "small", root / "medium"
    con = duckdb.connect()

    def duck(sql):
        return con.execute(sql).fetchall()
    with Cluster.local(a.workers) as c:
        c.submit("groupby", str(sm), by="id", agg=("count()",), limit=1)          # the workers' imports
        for name, ours, theirs, pol in [
            ("sort by k (string)",
             lambda: c.submit("sort", str(x), by="k", out=str(out / "ours-k"), overwrite=True),
             lambda: duck(f"COPY (SELECT * FROM read_parquet('{x}/*.parquet') ORDER BY k) TO '{out}/duck-k' "
                          f"(FORMAT parquet, PER_THREAD_OUTPUT true, OVERWRITE true)"),
             lambda: pl.scan_parquet(f"{x}/*.parquet").sort("k").sink_parquet(out / "polars-k.parquet")),
            ("sort by id (int64, ties)",
             lambda: c.submit("sort", str(x), by="id", out=str(out / "ours-id"), overwrite=True),
             lambda: duck(f"COPY (SELECT * FROM read_parquet('{x}/*.parquet') ORDER BY id) TO '{out}/duck-id' "
                          f"(FORMAT parquet, PER_THREAD_OUTPUT true, OVERWRITE true)"),
             lambda: pl.scan_parquet(f"{x}/*.parquet").sort("id").sink_parquet(out / "polars-id.parquet")),
            ("join x with small (inner)",
             lambda: c.submit("join", str(x), right=str(sm), on="id", out=str(out / "ours-js"), overwrite=True),
             lambda: duck(f"COPY (SELECT x.*, s.name FROM read_parquet('{x}/*.parquet') x JOIN "
                          f"read_parquet('{sm}/*.parquet') s USING (id)) TO '{out}/duck-js' "
                          f"(FORMAT parquet, PER_THREAD_OUTPUT true, OVERWRITE true)"),
             lambda: pl.scan_parquet(f"{x}/*.parquet").join(pl.scan_parquet(f"{sm}/*.parquet"), on="id")
             .sink_parquet(out / "polars-js.parquet")),
            ("join x with medium (inner)",
             lambda: c.submit("join", str(x), right=str(md), on="id", out=str(out / "ours-jm"), overwrite=True),
             lambda: duck(f"COPY (SELECT x.*, m.v FROM read_parquet('{x}/*.parquet') x JOIN "
                          f"read_parquet('{md}/*.parquet') m USING (id)) TO '{out}/duck-jm' "
                          f"(FORMAT parquet, PER_THREAD_OUTPUT true, OVERWRITE true)"),
             lambda: pl.scan_parquet(f"{x}/*.parquet").join(pl.scan_parquet(f"{md}/*.parquet"), on="id")
             .sink_parquet(out / "polars-jm.parquet")),
            ("join x with medium (forced shuffle)",
             lambda: c.submit("join", str(x), right=str(md), on="id", strategy="shuffle", out=str(out / "ours-jm2"),
                              overwrite=True),
             None, None),
        ]:
            out.mkdir(parents=True, exist_ok=True)
            t_ours, r = timed(ours)
            t_duck = timed(theirs)[0] if theirs else None
            t_pol = timed(pol)[0] if pol else None
            s = r.stats
            plan = s.get("why") or (f"imbalance {s.get('imbalance')}" if "imbalance" in s else "")
            res[name] = (t_ours, t_duck, t_pol, s.get("shuffled_pairs"), s.get("bytes_sent"), plan)
    print(f"\n{rows:,} rows, {a.workers} workers, {os.cpu_count()} cores; seconds (theirs / ours: above 1 we lead)\n")
    print("| job | ours | DuckDB | Polars | DuckDB ÷ ours | Polars ÷ ours | rows shuffled | bytes sent | plan |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (to, td, tp, sh, by, plan) in res.items():
        f = lambda x: f"{x:.2f}" if x is not None else "—"
        ratio = lambda x: f"{x / to:.2f}" if x is not None else "—"
        print(f"| {name} | {to:.2f} | {f(td)} | {f(tp)} | {ratio(td)} | {ratio(tp)} | {sh:,} | "
              f"{(by or 0) / 2**20:,.0f} MiB | {plan} |")


if __name__ == "__main__":
    main()
