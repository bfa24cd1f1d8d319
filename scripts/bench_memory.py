"""Mode and median with every worker in a memory cgroup smaller than its share of the data (issue 25).

    sudo .venv/bin/python scripts/bench_memory.py --rows 1e9 --cgroup 300M      # the issue's goal
    sudo .venv/bin/python scripts/bench_memory.py --rows 3e8 --cgroup 100M      # the same ratio, smaller

Prints, in one run: our time on the capped cluster (and its passes and spill bytes), our time per
value on a tenth of the data uncapped (fits in memory), and DuckDB over the same values as Parquet
under a memory_limit equal to the workers' cgroups together (its spilling GROUP BY and median), with
every answer checked against the others. Needs root (memory cgroups: scripts/cgroups.py).
Keyed jobs (group-by, join, sort) beyond memory: scripts/bench_beyond.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.cgroups import MemoryCgroup, available  # noqa: E402
from shardstats.worker.memory import parse_size  # noqa: E402

CLI = [sys.executable, "-m", "shardstats.cluster.cli"]


def run(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)


def gen(out: Path, rows: int, shards: int) -> None:
    """unique-dup, one shard at a time (``cluster gen`` holds every value at once: 17 GB at 1e9): shard i holds
    a shuffled run of distinct values, and one value of shard 0 appears again in the last shard."""
    import numpy as np
    if (out / "done").exists():
        return
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = rows // shards
    dup = None
    for i in range(shards):
        n = per + (rows - per * shards if i == shards - 1 else 0)
        v = (rng.permutation(n) + i * per * 3).astype(np.int64)
        if i == 0:
            dup = int(v[n // 2])
        if i == shards - 1:
            v[0] = dup
        np.save(out / f"shard-{i}.npy", v)
        del v
    (out / "done").write_text("")


def parquet(src: Path, out: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    if (out / "done").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.npy")):
        v = np.load(f, mmap_mode="r")
        with pq.ParquetWriter(out / (f.stem + ".parquet"), pa.schema([("v", pa.int64())])) as w:
            for i in range(0, len(v), 1 << 24):
                w.write_table(pa.table({"v": np.asarray(v[i:i + (1 << 24)])}))
    (out / "done").write_text("")


def ours(data: Path, workers: int, cgroup: int | None, spill: Path) -> dict:
    cf = str(spill / "cluster.json")
    limit = ["--memory-limit", str(cgroup)] if cgroup else []
    r = run("up", "--workers", str(workers), "--detach", "--cluster-file", cf, "--spill-dir", str(spill), *limit)
    assert r.returncode == 0, r.stderr
    groups, out = [], {}
    try:
        if cgroup:
            for pid in json.loads(Path(cf).read_text())["pids"]:
                g = MemoryCgroup(cgroup).__enter__()
                groups.append(g)
                g.add(pid)
        for op in ("mode", "median"):
            t = time.perf_counter()
            r = run("submit", op, "--input", str(data), "--json", "--cluster-file", cf, "--timeout", "3000")
            secs = time.perf_counter() - t
            assert r.returncode == 0, f"{op}: {r.stderr}"
            d = json.loads(r.stdout)
            per = d["stats"]["per_worker"]
            out[op] = {"seconds": secs, "result": d["result"], "values": d["stats"]["values"],
                       "passes": max(w.get("passes", 1) for w in per),
                       "spill_written": sum(w.get("spill_bytes_written", 0) for w in per),
                       "spill_read": sum(w.get("spill_bytes_read", 0) for w in per),
                       "peak_rss": max(w["peak_rss_bytes"] for w in per)}
        out["oom_kills"] = sum(g.oom_kills() for g in groups)
        out["cgroup_peak"] = max((g.peak() or 0 for g in groups), default=None)
    finally:
        run("down", "--cluster-file", cf)
        for g in groups:
            g.__exit__(None, None, None)
    return out


def duckdb_run(pq_dir: Path, limit: int, tmp: Path) -> dict:
    import duckdb
    con = duckdb.connect()
    con.execute(f"SET memory_limit='{limit // (1 << 20)}MiB'")
    con.execute(f"SET temp_directory='{tmp}'")
    src = f"read_parquet('{pq_dir}/*.parquet')"
    out = {}
    for op, sql in (("mode", f"SELECT v, count(*) c FROM {src} GROUP BY v ORDER BY c DESC, v LIMIT 1"),
                    ("median", f"SELECT quantile_disc(v, 0.5), median(v) FROM {src}")):
        t = time.perf_counter()
        try:
            out[op] = con.execute(sql).fetchall()[0]
        except duckdb.OutOfMemoryException as exc:      # its holistic aggregates (median) do not spill
            out[op] = None
            out[op + "_error"] = str(exc).splitlines()[0]
        out[op + "_seconds"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=float, default=1e9)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--cgroup", default="300M", help="each worker's memory cgroup (and --memory-limit)")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "shardstats-bench-memory"))
    ap.add_argument("--no-duckdb", action="store_true")
    a = ap.parse_args()
    if not available():
        sys.exit("needs root and a writable memory cgroup hierarchy")
    rows, cg = int(a.rows), parse_size(a.cgroup)
    base = Path(a.dir)
    big, small = base / f"u{rows}", base / f"u{rows // 10}"
    gen(big, rows, a.workers)
    gen(small, rows // 10, a.workers)
    spill = base / "spill"
    spill.mkdir(parents=True, exist_ok=True)
    capped = ours(big, a.workers, cg, spill)
    free = ours(small, a.workers, None, spill)
    print(f"{rows:,} int64 values ({rows * 8 / 2**30:.1f} GiB) on {a.workers} workers, each in a "
          f"{cg >> 20} MiB memory cgroup; oom kills {capped['oom_kills']}, largest cgroup peak "
          f"{(capped['cgroup_peak'] or 0) >> 20} MiB")
    print(f"{'op':8} {'capped s':>9} {'ns/value':>9} {'in-memory ns/value (1/10 data)':>31} {'ratio':>6} "
          f"{'passes':>6} {'spill written':>14} {'spill read':>11}")
    for op in ("mode", "median"):
        c, f = capped[op], free[op]
        npv_c, npv_f = c["seconds"] / c["values"] * 1e9, f["seconds"] / f["values"] * 1e9
        print(f"{op:8} {c['seconds']:9.1f} {npv_c:9.2f} {npv_f:31.2f} {npv_c / npv_f:6.2f} {c['passes']:6} "
              f"{c['spill_written'] / 2**30:12.2f} G {c['spill_read'] / 2**30:9.2f} G")
    if not a.no_duckdb:
        pqd = base / f"pq{rows}"
        parquet(big, pqd)
        d = duckdb_run(pqd, cg * a.workers, spill)
        print(f"DuckDB, memory_limit {cg * a.workers >> 20} MiB (the cgroups together), from Parquet:")
        for op in ("mode", "median"):
            if d[op] is None:
                print(f"  {op}: failed after {d[op + '_seconds']:.1f} s: {d[op + '_error']}")
                continue
            r = capped[op]["result"]
            same = (d[op][0], d[op][1]) == (r["value"], r["count"]) if op == "mode" else \
                float(d[op][1]) == float(r["value"])
            print(f"  {op}: {d[op + '_seconds']:.1f} s (ours / DuckDB {capped[op]['seconds'] / d[op + '_seconds']:.2f}), "
                  f"answer equal to ours: {same}")


if __name__ == "__main__":
    main()
