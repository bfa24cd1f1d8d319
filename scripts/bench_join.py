"""db-benchmark's five join questions on J1 Parquet: ours beside DuckDB, Polars, Dask and Spark, in one run.

    python scripts/dbgen.py join --rows 1e7 --out /tmp/shardstats-bench/J1_1e7
    python scripts/bench_join.py --data /tmp/shardstats-bench/J1_1e7 [--tools ours,duckdb,polars,dask,spark]
        [--questions q1,q2,q3,q4,q5] [--repeat 2] [--workers 10] [--cluster-file F] [--baseline F] [--json OUT]

The questions are db-benchmark's (duckdblabs/db-benchmark ``duckdb/join-duckdb.R``), on ``x`` (J1_<N>_NA_0_0)
and the right tables ``small`` (N/1e6 rows), ``medium`` (N/1e3) and ``big`` (N):

    q1 small inner on int:     x JOIN small USING (id1)       x.*, small.id4, v2
    q2 medium inner on int:    x JOIN medium USING (id2)      x.*, medium.id1, medium.id4, medium.id5, v2
    q3 medium outer on int:    x LEFT JOIN medium USING (id2) (as q2)
    q4 medium inner on factor: x JOIN medium USING (id5)      x.*, medium.id1, medium.id2, medium.id4, v2
    q5 big inner on int:       x JOIN big USING (id3)         x.*, big.id1, big.id2, big.id4, big.id5, big.id6, v2

and each answer's check is db-benchmark's: its rows and ``sum(v1), sum(v2)``.

What is timed, for every tool alike: from the Parquet files to the whole answer held in memory -- DuckDB
``CREATE TABLE ans AS`` (an in-memory database), Polars ``collect()``, Dask ``persist()`` and waited for, Spark
``cache()`` then ``count()``, ours the job (every worker holds its share of the answer; rank 0 prints the head
of ``--limit`` rows). db-benchmark loads the tables into memory first and times the join alone; here every tool
reads the files in the timed run, as our job must. Then, untimed, each answer's rows and checksum; ours by the
same job writing ``--out`` Parquet parts (also timed, the column "ours → Parquet"), summed by DuckDB.

Rows and checksums must equal DuckDB's (sums within 1e-9 relative: float addition order differs); a mismatch is
printed and the exit status is 1. CPU seconds are the tool's processes' (user + system): this process and its
children (DuckDB, Polars, Dask's workers, Spark's JVM) and, for ours, every worker process of the cluster.
Tools run in a rotated order per question and repeat, so a load that changes mid-run falls on all of them;
the table gives each one's best wall time (and that run's CPU). ``--baseline F``: a second cluster (another
revision of the code, started from its own checkout) timed alternately with ours: an A/B in one run.

``--skew``: issue 23's skew goal instead -- x JOIN big USING (id3) with big's id3 redrawn Zipf(1.2) over x's keys
and uniformly (``skew_tables``), ours with ``--salt auto`` on both and ``off`` on Zipf, alternated: the join's
wall against uniform keys, and per reducer its rows and its local join's seconds (slowest ÷ mean).

Ports: Spark's driver and block manager take ``--port-base``+0/+1, Dask's scheduler +10 and its dashboard +11.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = {
    "q1": ("small", "inner", "id1", ["id4", "v2"]),
    "q2": ("medium", "inner", "id2", ["id1", "id4", "id5", "v2"]),
    "q3": ("medium", "left", "id2", ["id1", "id4", "id5", "v2"]),
    "q4": ("medium", "inner", "id5", ["id1", "id2", "id4", "v2"]),
    "q5": ("big", "inner", "id3", ["id1", "id2", "id4", "id5", "id6", "v2"]),
}
TOOLS = ("ours", "duckdb", "polars", "dask", "spark")


def tables(data: Path) -> dict:
    """{x|small|medium|big: folder} from scripts/dbgen.py's record of the J1 data."""
    meta = json.loads((data / "_dbgen.json").read_text())
    return {t: str(data / name) for t, name in meta["tables"].items()}


def duck_sql(q: str, t: dict) -> str:
    right, how, on, cols = QUESTIONS[q]
    sel = ", ".join(f"{right}.{c} AS {right}_{c}" if c != "v2" else "v2" for c in cols)
    return (f"SELECT x.*, {sel} FROM read_parquet('{t['x']}/*.parquet') x {'LEFT ' if how == 'left' else ''}"
            f"JOIN read_parquet('{t[right]}/*.parquet') {right} USING ({on})")


def cpu_now(tool) -> float:
    """CPU seconds (user + system) so far of this process and its children and grandchildren (a peer's
    threads, Dask's workers, Spark's JVM), and for ours the cluster's worker processes instead of the children."""
    import psutil
    me = psutil.Process()
    procs = [me]
    if getattr(tool, "pids", None):
        procs += [psutil.Process(p) for p in tool.pids if psutil.pid_exists(p)]
    else:
        procs += me.children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            c = p.cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total


# -- the tools: each run(q) returns an object holding the answer; check(answer) gives (rows, sum v1, sum v2) --
class Duck:
    name = "duckdb"

    def __init__(self, t, a):
        import duckdb
        self.t, self.con = t, duckdb.connect()        # in memory; threads = the machine's cores

    def run(self, q):
        self.con.execute("DROP TABLE IF EXISTS ans")
        self.con.execute(f"CREATE TABLE ans AS {duck_sql(q, self.t)}")
        return "ans"

    def check(self, ans):
        return self.con.execute("SELECT count(*), sum(v1), sum(v2) FROM ans").fetchone()

    def close(self):
        self.con.close()


class Polars:
    name = "polars"

    def __init__(self, t, a):
        self.t = t

    def run(self, q):
        import polars as pl
        right, how, on, cols = QUESTIONS[q]
        x = pl.scan_parquet(f"{self.t['x']}/*.parquet")
        r = pl.scan_parquet(f"{self.t[right]}/*.parquet").select([on, *cols])
        return x.join(r, on=on, how=how, suffix=f"_{right}").collect()

    def check(self, ans):
        return ans.height, ans["v1"].sum(), ans["v2"].sum()

    def close(self):
        pass


class Dask:
    name = "dask"

    def __init__(self, t, a):
        from dask.distributed import Client, LocalCluster
        self.t = t
        self.cluster = LocalCluster(n_workers=a.dask_workers, threads_per_worker=1, processes=True,
                                    scheduler_port=a.port_base + 10, dashboard_address=f":{a.port_base + 11}",
                                    memory_limit=a.dask_memory)
        self.client = Client(self.cluster)
        self.last = None

    def run(self, q):
        import dask.dataframe as dd
        from dask.distributed import wait
        right, how, on, cols = QUESTIONS[q]
        if self.last is not None:       # a persisted answer of the same graph would be handed back, not computed
            self.client.cancel(self.last)
            self.last = None
            time.sleep(0.5)
        x = dd.read_parquet(f"{self.t['x']}/*.parquet")
        r = dd.read_parquet(f"{self.t[right]}/*.parquet", columns=[on, *cols])
        ans = x.merge(r, on=on, how=how, suffixes=("", f"_{right}")).persist()
        wait(ans)
        self.last = ans
        return ans

    def check(self, ans):
        s = ans[["v1", "v2"]].sum().compute()
        return len(ans), float(s["v1"]), float(s["v2"])

    def close(self):
        self.client.close()
        self.cluster.close()


class Spark:
    name = "spark"

    def __init__(self, t, a):
        from pyspark.sql import SparkSession
        self.t = t
        self.spark = (SparkSession.builder.master(f"local[{os.cpu_count()}]").appName("bench_join")
                      .config("spark.ui.enabled", "false").config("spark.driver.memory", a.spark_memory)
                      .config("spark.driver.port", str(a.port_base)).config("spark.blockManager.port",
                                                                            str(a.port_base + 1))
                      .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
                      .getOrCreate())
        self.spark.sparkContext.setLogLevel("ERROR")
        self.last = None

    def run(self, q):
        right, how, on, cols = QUESTIONS[q]
        if self.last is not None:
            self.last.unpersist()
        x = self.spark.read.parquet(self.t["x"])
        r = self.spark.read.parquet(self.t[right]).select(on, *cols)
        for c in cols:
            if c != "v2":
                r = r.withColumnRenamed(c, f"{right}_{c}")
        ans = x.join(r, on=on, how=how).cache()
        ans.count()
        self.last = ans
        return ans

    def check(self, ans):
        from pyspark.sql import functions as F
        row = ans.agg(F.count("*"), F.sum("v1"), F.sum("v2")).collect()[0]
        return row[0], row[1], row[2]

    def close(self):
        self.spark.stop()


class Ours:
    """A cluster's join job; ``check`` runs it again writing ``--out`` parts and sums them with DuckDB."""

    def __init__(self, t, a, cluster_file=None, name="ours", scratch=None):
        from shardstats import Cluster
        self.t, self.name, self.scratch = t, name, Path(scratch)
        self.c = Cluster.connect(cluster_file) if cluster_file else Cluster.local(a.workers)
        self.pids = list(getattr(self.c.info, "pids", None) or [])
        self.limit = a.limit
        self.q = None

    def submit(self, q, **kw):
        right, how, on, _ = QUESTIONS[q]
        return self.c.submit("join", self.t["x"], right=self.t[right], on=on, how=how, **kw)

    def run(self, q):
        self.q = q
        return self.submit(q, limit=self.limit)

    def write(self, q):
        out = self.scratch / f"{self.name}-{q}"
        shutil.rmtree(out, ignore_errors=True)
        return self.submit(q, out=str(out)), out

    def check(self, ans):
        import duckdb
        out = self.scratch / f"{self.name}-{self.q}"
        got = duckdb.sql(f"SELECT count(*), sum(v1), sum(v2) FROM read_parquet('{out}/*.parquet')").fetchall()[0]
        assert got[0] == ans.rows, (got, ans.rows)
        return got

    def close(self):
        self.c.close()


def same(a, b) -> bool:
    return a[0] == b[0] and all(abs(x - y) <= 1e-9 * max(1.0, abs(y)) for x, y in zip(a[1:], b[1:]))


def skew_tables(t: dict, out: Path, s: float, seed: int = 5) -> dict:
    """big's rows with id3 redrawn: Zipf(``s``) ranks over x's id3 keys (a seeded permutation of them, ranks past
    the last wrapping), and the same drawn uniformly; every row of either meets exactly one row of x (x's id3 is
    unique), so both joins answer the same number of rows. {"zipf"|"uniform": folder}, made once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    done = {k: out / f"big_{k}" for k in ("zipf", "uniform")}
    if (out / "_done").exists():
        return {k: str(v) for k, v in done.items()}
    import duckdb
    keys = duckdb.sql(f"SELECT id3 FROM read_parquet('{t['x']}/*.parquet')").fetchnumpy()["id3"]
    rng = np.random.default_rng(seed)
    keys = keys[rng.permutation(len(keys))]
    for kind, d in done.items():
        d.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(sorted(Path(t["big"]).glob("*.parquet"))):
            b = pq.read_table(f)
            n = b.num_rows
            ranks = (rng.zipf(s, n) - 1) % len(keys) if kind == "zipf" else rng.integers(0, len(keys), n)
            b = b.set_column(b.schema.get_field_index("id3"), "id3", pa.array(keys[ranks].astype(np.int32)))
            pq.write_table(b, d / f"part-{i:02d}.parquet")
    (out / "_done").write_text("ok")
    return {k: str(v) for k, v in done.items()}


def skew(a, t: dict) -> int:
    """x JOIN big USING (id3) with big's keys Zipf(--zipf) and uniform, ours with --salt auto (and off, Zipf):
    each run's wall and CPU, rows out, and per reducer its rows and its join time (slowest ÷ mean)."""
    from shardstats import Cluster
    sides = skew_tables(t, Path(a.scratch) / "skew", a.zipf)
    c = Cluster.connect(a.cluster_file) if a.cluster_file else Cluster.local(a.workers)
    tool = type("T", (), {"pids": list(getattr(c.info, "pids", None) or [])})()
    runs = []
    try:
        for r in range(a.repeat):
            for kind, salt in (("uniform", "auto"), ("zipf", "auto"), ("zipf", "off"))[::1 if r % 2 == 0 else -1]:
                load = os.getloadavg()[0]
                c0, w0 = cpu_now(tool), time.perf_counter()
                res = c.submit("join", t["x"], right=sides[kind], on="id3", salt=salt, strategy="shuffle",
                               limit=a.limit)
                wall, used = time.perf_counter() - w0, cpu_now(tool) - c0
                w = res.stats["per_worker"]
                rows = [x["reducer_pairs"] for x in w]
                join = [(x.get("phases") or {}).get("join", 0.0) for x in w]
                runs.append({"keys": kind, "salt": salt, "wall": wall, "cpu": used, "load": load,
                             "rows_out": res.rows, "hot_keys": (w[0].get("hot_keys") or [])[:3],
                             "busiest_rows_share": max(rows) / (sum(rows) / len(rows)),
                             "unsalted_share": w[0].get("busiest_reducer_share_unsalted"),
                             "slowest_join_share": max(join) / (sum(join) / len(join)),
                             "phases": _phases(res.stats)})
                e = runs[-1]
                print(f"{kind:7s} salt {salt:4s}: {wall:6.2f} s wall, {used:6.1f} s CPU, load {load:.1f}; "
                      f"{e['rows_out']:,} rows; busiest reducer {e['busiest_rows_share']:.2f}x mean rows "
                      f"(unsalted {e['unsalted_share']}), slowest join {e['slowest_join_share']:.2f}x mean; "
                      f"hot {e['hot_keys']}", flush=True)
    finally:
        c.close()
    best = {}
    for e in runs:
        k = (e["keys"], e["salt"])
        if k not in best or e["wall"] < best[k]["wall"]:
            best[k] = e
    u = best[("uniform", "auto")]
    print(f"\nZipf({a.zipf}) against uniform keys, x JOIN big USING (id3), best of {a.repeat}:\n")
    print("| big's keys | salt | wall | CPU | ÷ uniform | rows out | busiest reducer rows ÷ mean | slowest "
          "reducer's join ÷ mean | hot keys (key, rows) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (kind, salt), e in best.items():
        print(f"| {kind} | {salt} | {e['wall']:.2f} | {e['cpu']:.1f} | {e['wall'] / u['wall']:.2f} | "
              f"{e['rows_out']:,} | {e['busiest_rows_share']:.2f} | {e['slowest_join_share']:.2f} | "
              f"{e['hot_keys']} |")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1, default=str))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/shardstats-bench/J1_1e7", help="scripts/dbgen.py join's folder")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--questions", default=",".join(QUESTIONS))
    ap.add_argument("--repeat", type=int, default=2, help="runs of each tool on each question (best kept)")
    ap.add_argument("--workers", type=int, default=10, help="ours, when no --cluster-file: a local cluster")
    ap.add_argument("--cluster-file", help="ours: an existing cluster (`cluster up --detach`)")
    ap.add_argument("--baseline", help="a second cluster file, timed as 'base' alternately with ours")
    ap.add_argument("--limit", type=int, default=100, help="rows of ours' printed head")
    ap.add_argument("--scratch", default="/tmp/shardstats-bench/join-out", help="ours' --out parts (removed)")
    ap.add_argument("--port-base", type=int, default=7560)
    ap.add_argument("--dask-workers", type=int, default=os.cpu_count())
    ap.add_argument("--dask-memory", default="4GiB", help="per Dask worker")
    ap.add_argument("--spark-memory", default="6g")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--skew", action="store_true", help="instead: q5 with big's keys Zipf(--zipf) vs uniform")
    ap.add_argument("--zipf", type=float, default=1.2)
    a = ap.parse_args()
    t = tables(Path(a.data))
    if a.skew:
        return skew(a, t)
    qs = a.questions.split(",")
    names = a.tools.split(",")
    scratch = Path(a.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    tools = []
    try:
        for n in names:
            if n == "ours":
                tools.append(Ours(t, a, a.cluster_file, "ours", scratch))
                if a.baseline:
                    tools.append(Ours(t, a, a.baseline, "base", scratch))
            else:
                tools.append({"duckdb": Duck, "polars": Polars, "dask": Dask, "spark": Spark}[n](t, a))
        for tool in tools:           # warm: imports, the JVM's classes, the workers' modules -- q1 for every tool
            tool.run("q1")           # (ours warmed on a small group-by paid the join's first imports in q1: 3.5 s, 1.1 s after)
        res: dict = {q: {} for q in qs}
        answers: dict = {}           # each tool's latest answer (Spark's cached one is dropped at its next run)
        for q in qs:
            for r in range(a.repeat):
                order = tools[(r + qs.index(q)) % len(tools):] + tools[:(r + qs.index(q)) % len(tools)]
                for tool in order:
                    load = os.getloadavg()[0]
                    answers.pop(tool.name, None)     # the last answer goes first (Dask would reuse it)
                    c0, w0 = cpu_now(tool), time.perf_counter()
                    ans = tool.run(q)
                    wall, used = time.perf_counter() - w0, cpu_now(tool) - c0
                    best = res[q].get(tool.name)
                    if best is not None and wall >= best["wall"]:
                        answers[tool.name] = ans
                        ans = None
                        print(f"{q} {tool.name:7s} run {r + 1}: {wall:7.2f} s wall, {used:7.2f} s CPU, "
                              f"load {load:.1f}", flush=True)
                        continue
                    res[q][tool.name] = {"wall": wall, "cpu": used, "load": load}
                    answers[tool.name] = ans
                    if isinstance(tool, Ours):
                        s = ans.stats
                        res[q][tool.name].update(plan=s.get("strategy"), why=s.get("why"),
                                                 shuffled_x=s.get("shuffled_left_rows"),
                                                 shuffled_right=s.get("shuffled_right_rows"),
                                                 bytes_sent=s.get("bytes_sent"), phases=_phases(s))
                    print(f"{q} {tool.name:7s} run {r + 1}: {wall:7.2f} s wall, {used:7.2f} s CPU, load {load:.1f}",
                          flush=True)
                    ans = None
            for tool in tools:          # the checks, untimed but for ours' --out run
                e = res[q][tool.name]
                if isinstance(tool, Ours):
                    w0 = time.perf_counter()
                    tool.q = q
                    _, out = tool.write(q)
                    e["wall_out"] = time.perf_counter() - w0
                    e["check"] = tool.check(answers.pop(tool.name))
                    shutil.rmtree(out, ignore_errors=True)
                else:
                    e["check"] = tuple(tool.check(answers.pop(tool.name)))
                print(f"{q} {tool.name:7s} check: {e['check'][0]:,} rows, sum(v1) {e['check'][1]}, sum(v2) "
                      f"{e['check'][2]}", flush=True)       # kept in the log if a later step fails
    finally:
        for tool in tools:
            tool.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return report(res, qs, [tool.name for tool in tools], a)


def _phases(s: dict) -> dict:
    """The slowest worker's seconds per phase of the job."""
    out: dict = {}
    for w in s.get("per_worker", []):
        for k, v in (w.get("phases") or {}).items():
            out[k] = max(out.get(k, 0.0), v)
    return {k: round(v, 3) for k, v in out.items()}


def report(res: dict, qs: list, names: list, a) -> int:
    ok = True
    ref = "duckdb" if "duckdb" in names else names[0]
    peers = [n for n in names if n not in ("ours", "base")]
    print(f"\nJ1 {a.data}; ours {a.workers} workers; {os.cpu_count()} cores; load average now "
          f"{os.getloadavg()[0]:.1f}; best of {a.repeat} (seconds wall / CPU; ratios theirs ÷ ours: above 1 we "
          f"lead)\n")
    head = ["q", *[f"{n} wall/CPU" for n in names], *(["ours → Parquet"] if "ours" in names else []),
            *[f"{n} ÷ ours" for n in peers + (["base"] if "base" in names else [])], "rows", "= " + ref, "plan",
            "x rows shuffled", "right rows moved"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for q in qs:
        r = res[q]
        want = r[ref]["check"]
        eq = all(same(r[n]["check"], want) for n in names)
        ok &= eq
        o = r.get("ours", {})
        cells = [q, *[f"{r[n]['wall']:.2f} / {r[n]['cpu']:.1f}" for n in names]]
        if "ours" in names:
            cells.append(f"{o['wall_out']:.2f}")
        cells += [f"{r[n]['wall'] / o['wall']:.2f}" if o else "—"
                  for n in peers + (["base"] if "base" in names else [])]
        cells += [f"{want[0]:,}", "yes" if eq else "NO: " + "; ".join(f"{n} {r[n]['check']}" for n in names),
                  o.get("why", "—"), f"{o.get('shuffled_x', 0):,}" if o else "—",
                  f"{o.get('shuffled_right', 0):,}" if o else "—"]
        print("| " + " | ".join(cells) + " |")
    if "ours" in names:
        print("\nours, slowest worker's seconds per phase:")
        for q in qs:
            print(f"  {q}: {res[q]['ours'].get('phases')}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
