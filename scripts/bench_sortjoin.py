"""Sort and join on the keyed engine beside DuckDB and Polars, in one run: time, rows shuffled, the plan.

    python scripts/bench_sortjoin.py [--rows 1e7] [--small 1e4] [--workers 10]
    python scripts/bench_sortjoin.py --terasort [--rows 1e7] [--tools ours,duckdb,polars,dask,spark] [--keys k,id]
        [--rounds N] [--ports BASE] [--cluster-file FILE]

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
    for f in files:               # batch by batch: at 1e8 rows one file (DuckDB's) read whole held ~5 GB
        size += os.path.getsize(f)
        for t in pq.ParquetFile(f).iter_batches(batch_size=1 << 20, columns=list(dict.fromkeys([key, "id"]))):
            col = t.column(key)
            n += t.num_rows
            total += pc.sum(t.column("id")).as_py() or 0
            if not t.num_rows:
                continue
            assert pc.all(pc.less_equal(col[:-1], col[1:])).as_py() in (True, None), f"{f}: out of order"
            assert last is None or last <= col[0].as_py(), f"{f}: starts before the previous batch ends"
            last = col[-1].as_py()
    assert n == rows and total == id_sum, f"{out}: {n} rows (want {rows}), id sum {total} (want {id_sum})"
    return n, size


DUCKDB_LIMITS = {"memory": None, "threads": None}     # --duckdb-memory, --duckdb-threads (default: DuckDB's)


def _dask(src: Path, key: str, out: Path) -> None:
    import dask.dataframe as dd
    dd.read_parquet(f"{src}/*.parquet").sort_values(key).to_parquet(str(out), write_index=False,
                                                                    name_function=lambda i: f"part-{i:05d}.parquet")


def _proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system, reaped children too) of processes this one does not reap: our workers,
    Spark's JVM, Dask's worker processes (/proc/<pid>/stat fields 14-17)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        total += sum(int(x) for x in stat[stat.rfind(b")") + 2:].split()[11:15])
    return total / os.sysconf("SC_CLK_TCK")


class _Peer:
    """One tool's engine, up only around its own runs (Spark's JVM and Dask's processes beside ten workers ran
    the machine out of memory): ``up`` before the clock (with a first job that loads its code), ``down`` after;
    ``pids`` are the processes whose CPU the run adds to this one's."""

    def __init__(self, tool: str, src: Path, root: Path, workers: int, ports: int | None, cluster_file: str | None):
        self.tool, self.src, self.root, self.workers, self.ports, self.cluster_file = \
            tool, src, root, workers, ports, cluster_file
        self.handle, self.pids = None, []

    def up(self) -> None:
        if self.handle is not None:
            return
        if self.tool == "ours":
            import json
            from shardstats import Cluster
            if self.cluster_file:
                self.handle = Cluster.connect(self.cluster_file)
                self.pids = json.loads(Path(self.cluster_file).read_text())["pids"]
            else:
                self.handle = Cluster.local(self.workers)
                self.pids = list(self.handle.info.pids)
            self.handle.submit("groupby", str(self.src / "part-0000.parquet"), by="id", agg=("count()",), limit=1)
        elif self.tool == "spark":
            from pyspark.sql import SparkSession
            b = (SparkSession.builder.master("local[2]").appName("terasort").config("spark.driver.memory", "3g")
                 .config("spark.sql.shuffle.partitions", str(self.workers)).config("spark.ui.enabled", "false")
                 .config("spark.ui.showConsoleProgress", "false")
                 .config("spark.local.dir", str(self.root / "spark-tmp")))
            if self.ports:
                b = b.config("spark.driver.port", str(self.ports + 2)).config("spark.blockManager.port",
                                                                               str(self.ports + 3))
            self.handle = b.getOrCreate()
            self.handle.sparkContext.setLogLevel("ERROR")
            self.handle.read.parquet(str(self.src / "part-0000.parquet")).orderBy("k").count()  # the JVM's first job
            self.pids = [self.handle.sparkContext._gateway.proc.pid]
        elif self.tool == "dask":        # two processes of one thread, started before the clock (as our workers are)
            from dask.distributed import Client, LocalCluster
            base = self.ports or 7610
            self.handle = Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True, scheduler_port=base,
                                              dashboard_address=f":{base + 1}",
                                              local_directory=str(self.root / "dask-tmp")))
            self.pids = list(self.handle.run(os.getpid).values())

    def down(self) -> None:
        if self.handle is None or self.tool in ("duckdb", "polars"):
            return
        if self.tool == "ours":
            self.handle.close()           # a connected cluster stays up (its owner stops it)
        elif self.tool == "spark":
            self.handle.stop()
        elif self.tool == "dask":
            self.handle.cluster.close()
            self.handle.close()
        self.handle, self.pids = None, []

    def run(self, key: str, d: Path):
        """The sort by ``key`` into folder ``d``; our stats (or None)."""
        import duckdb
        import polars as pl
        src = self.src
        if self.tool == "ours":
            return self.handle.submit("sort", str(src), by=key, out=str(d), overwrite=True).stats
        if self.tool == "duckdb":
            con = duckdb.connect(config={"temp_directory": str(self.root / "duckdb-tmp"),
                                         **({"memory_limit": DUCKDB_LIMITS["memory"]} if DUCKDB_LIMITS["memory"] else {}),
                                         **({"threads": DUCKDB_LIMITS["threads"]} if DUCKDB_LIMITS["threads"] else {})})
            con.execute(f"COPY (SELECT * FROM read_parquet('{src}/*.parquet') ORDER BY {key}) "
                       f"TO '{d}/sorted.parquet' (FORMAT parquet)")
        elif self.tool == "polars":          # Polars writes zstd unless told: all snappy
            pl.scan_parquet(f"{src}/*.parquet").sort(key).sink_parquet(d / "sorted.parquet", compression="snappy")
        elif self.tool == "dask":
            _dask(src, key, d)
        elif self.tool == "spark":
            self.handle.read.parquet(f"{src}/*.parquet").orderBy(key).write.mode("overwrite").parquet(str(d))
        return None


def terasort(rows: int, root: Path, workers: int, tools: list[str], keys: list[str], dd_mib: int = 2048,
             rounds: int = 1, ports: int | None = None, cluster_file: str | None = None) -> None:
    """Every tool sorts by every key, interleaved (round r: each key, each tool in turn), so a change of load
    falls on all alike. Seconds are wall; CPU is this process's (DuckDB, Polars, Dask's client) plus the
    processes the tool runs (our workers, Spark's JVM, Dask's workers), read from /proc around the run."""
    import duckdb
    import statistics
    src = root / f"tera-{rows:.0e}".replace("+", "")
    make_tera(src, rows)
    in_bytes = sum(p.stat().st_size for p in src.glob("*.parquet"))
    id_sum = int(duckdb.sql(f"select sum(id) from read_parquet('{src}/*.parquet')").fetchall()[0][0])
    out = root / "tera-out"
    res: dict = {}
    peers = {t: _Peer(t, src, root, workers, ports, cluster_file) for t in tools}
    rate0 = disk_rate(root, dd_mib) if dd_mib else float("nan")
    print(f"dd (conv=fdatasync, {dd_mib} MiB): {rate0:.0f} MB/s", flush=True)
    try:
        for r in range(rounds):
            for key in keys:
                for tool in (tools if r % 2 == 0 else tools[::-1]):
                    peer = peers[tool]
                    if tool in ("spark", "dask"):
                        for other in ("spark", "dask"):           # never both up at once
                            if other != tool and other in peers:
                                peers[other].down()
                    peer.up()
                    d = out / f"{tool}-{key}"
                    shutil.rmtree(d, ignore_errors=True)
                    d.mkdir(parents=True)
                    c0 = sum(os.times()[:4]) + _proc_cpu(peer.pids)
                    t0 = time.perf_counter()
                    stats = peer.run(key, d)
                    wall = time.perf_counter() - t0
                    cpu = sum(os.times()[:4]) + _proc_cpu(peer.pids) - c0
                    n, size = verify(d, key, rows, id_sum)
                    sizes = [f.stat().st_size for f in d.rglob("*.parquet")]
                    imb = (stats or {}).get("imbalance") or (max(sizes) / (sum(sizes) / len(sizes)))
                    load = os.getloadavg()[0]
                    if stats:
                        import json
                        print("  ours' stats: " + json.dumps({k: v for k, v in stats.items() if not isinstance(
                            v, (list, dict)) or k in ("phases", "phase_cpu", "part_rows")}, default=str), flush=True)
                    res.setdefault((tool, key), []).append((wall, cpu, size, load, imb))
                    print(f"round {r} {tool:7s} by {key:2s}: {wall:7.2f} s  CPU {cpu:6.2f} s  "
                          f"{rows / wall / 1e6:5.2f} M rows/s  out {size / 1e6:.0f} MB in {len(sizes)} files "
                          f"(largest/mean {imb:.2f})  load {load:.1f}  (verified: {n:,} rows in order)", flush=True)
                    shutil.rmtree(d, ignore_errors=True)
    finally:
        for peer in peers.values():
            peer.down()
    rate1 = disk_rate(root, dd_mib) if dd_mib else float("nan")
    print(f"\n{rows:,} rows of ~100 B, {workers} workers, {os.cpu_count()} cores; input {in_bytes / 1e6:.0f} MB of "
          f"Parquet; dd write rate {rate0:.0f} / {rate1:.0f} MB/s (before / after); medians of {rounds} round(s)\n")
    print("| key | tool | seconds | theirs ÷ ours | CPU s | CPU theirs ÷ ours | M rows/s | MB/s written | "
          "share of dd's rate | largest/mean file | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    med = {k: [statistics.median(x[i] for x in v) for i in range(5)] for k, v in res.items()}
    for (tool, key), (wall, cpu, size, load, imb) in med.items():
        ours = med.get(("ours", key))
        ratio = f"{wall / ours[0]:.2f}" if ours else "—"
        cratio = f"{cpu / ours[1]:.2f}" if ours else "—"
        loads = [x[3] for x in res[(tool, key)]]
        print(f"| {key} | {tool} | {wall:.2f} | {ratio} | {cpu:.1f} | {cratio} | {rows / wall / 1e6:.2f} | "
              f"{size / wall / 1e6:.0f} | {size / wall / 1e6 / min(rate0, rate1):.1%} | {imb:.2f} | "
              f"{min(loads):.0f}-{max(loads):.0f} |")


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
    ap.add_argument("--rounds", type=int, default=1, help="--terasort: rounds, every tool in each, interleaved")
    ap.add_argument("--ports", type=int, default=None, help="--terasort: Dask's scheduler and dashboard at PORT "
                    "and PORT+1, Spark's driver and block manager at PORT+2 and PORT+3 (default: 7610, 7611, any)")
    ap.add_argument("--cluster-file", default=None, help="--terasort: our workers are this running cluster "
                    "(`cluster up --cluster-file`), not ten started here on ports the OS picks")
    ap.add_argument("--duckdb-memory", default=None, help="--terasort: DuckDB's memory_limit, e.g. 12GB")
    ap.add_argument("--duckdb-threads", type=int, default=None, help="--terasort: DuckDB's threads")
    a = ap.parse_args()
    DUCKDB_LIMITS.update(memory=a.duckdb_memory, threads=a.duckdb_threads)
    if a.terasort:
        terasort(int(a.rows), Path(a.root), a.workers, a.tools.split(","), a.keys.split(","), a.dd_mib, a.rounds,
                 a.ports, a.cluster_file)
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
