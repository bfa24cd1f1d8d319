"""Sort and join on the keyed engine beside DuckDB and Polars, in one run: time, rows shuffled, the plan.

    python scripts/bench_sortjoin.py [--rows 1e7] [--small 1e4] [--workers 10]

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


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=float, default=1e7)
    ap.add_argument("--small", type=float, default=1e4)
    ap.add_argument("--workers", type=int, default=10)
    a = ap.parse_args()
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
