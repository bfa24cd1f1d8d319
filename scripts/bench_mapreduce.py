#!/usr/bin/env python3
"""User MapReduce jobs (issue 22) against the built-in word count, PySpark's RDD API and Dask bag.

    python scripts/bench_mapreduce.py --size 1GiB [--rounds 1] [--tools builtin,record,batch,spark,dask]

One corpus (scripts/dbgen.py's standard-library text, 10 files), one word count (lowercase, Python's
``\\w+`` tokens), asked of:

  - ``builtin``: ``cluster submit wordcount`` (the engine's own tokenizer and counter);
  - ``record``: ``cluster submit mapreduce --job examples/wordcount.py`` (a per-record Python mapper
    yielding (word, 1), a combiner and a reducer summing), and ``record-nc`` the same without the combiner
    (``--no-combine``: only its shuffle counter is of interest, it is slow);
  - ``batch``: ``examples/wordcount_batch.py`` (map_batch/combine_batch/reduce_batch over Arrow, Polars inside);
  - ``spark``: PySpark's RDD API, ``textFile().flatMap(tokenize).map((w, 1)).reduceByKey(add)``, on
    ``local[N]`` (``--spark-cores``, default 10 as the issue's goal says; N Python workers);
  - ``dask``: Dask bag on a ``distributed.LocalCluster`` of ``--dask-workers`` (default 10) single-threaded
    processes,
    ``read_text().map(tokenize).flatten().frequencies()`` (its idiomatic word count: a counter per
    partition, then merged).

Ours run on one local cluster of ``--workers`` workers (ports from ``--base-port``); Spark's session and
Dask's cluster are each started just before their own run and stopped just after it, so the two are never
up together (a JVM and ten Dask processes beside ten workers ran the machine out of memory); their start-up
is not timed, ours' is not either. The tools alternate within each round. Each job's wall time is measured at
the client; its CPU is every process of this benchmark's tree (ours' workers and the user-code children
they reap, Spark's JVM and Python workers, Dask's worker processes) summed before and after. Every answer
(the full table) is compared with the built-in's of the same round, and on ``--check-size`` (a small
corpus, first) with ``collections.Counter``. Output: a markdown table with theirs/ours ratios and the
load average.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import time
from collections import Counter
from operator import add
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):     # run as a file: make `scripts` importable
    sys.path.insert(0, str(HERE.parent))
from scripts import dbgen  # noqa: E402

EXAMPLES = HERE.parent / "examples"
TOOLS = ("builtin", "record", "batch", "spark", "dask")
_TOKEN = re.compile(r"\w+")
# A worker or the client silent this long is lost: on a 2-core machine at a load average of 60 (other
# benchmarks beside this one) the default's 5 s lost workers mid-job.
DEAD_AFTER = 60.0


def tokenize(line: str) -> list[str]:
    return _TOKEN.findall(line.lower())


def cpu_seconds() -> float:
    """User + system CPU of this process and every live descendant, with the children each has reaped."""
    import psutil
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:        # gone between the listing and the read
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def counter_reference(files: list[str]) -> dict:
    c: Counter = Counter()
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                c.update(tokenize(line))
    return dict(c)


# -- ours --------------------------------------------------------------------------------------------------
def ours_counts(out_dir: Path) -> dict:
    import pyarrow.parquet as pq
    t = pq.read_table(str(out_dir))
    k, v = t.column_names[:2]
    return dict(zip(t.column(k).to_pylist(), t.column(v).to_pylist()))


def run_ours(c, tool: str, data: list[str], out_dir: Path) -> tuple[dict, dict]:
    """One of ours' jobs writing every (word, count) as Parquet parts: the counts and the job's counters."""
    shutil.rmtree(out_dir, ignore_errors=True)
    if tool == "builtin":
        r = c.submit("wordcount", data, out=str(out_dir), overwrite=True, dead_after=DEAD_AFTER)
    else:
        job = {"record": "wordcount.py", "record-nc": "wordcount.py", "batch": "wordcount_batch.py"}[tool]
        r = c.submit("mapreduce", data, job=str(EXAMPLES / job), out=str(out_dir), overwrite=True,
                     combine=tool != "record-nc", dead_after=DEAD_AFTER)
    keep = ("map_pairs", "combined_pairs", "shuffled_pairs", "shuffled_bytes", "tokens")
    stats = {k: r.stats.get(k) for k in keep if r.stats.get(k) is not None}
    return ours_counts(out_dir), stats


# -- the peers ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def spark_session(cores: int):
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("bench-mapreduce")
             .config("spark.driver.memory", os.environ.get("BENCH_SPARK_MEMORY", "4g"))
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.python.worker.reuse", "true").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark.sparkContext
    finally:
        spark.stop()


def spark_wordcount(sc, files: list[str]) -> dict:
    return dict(sc.textFile(",".join(files)).flatMap(tokenize).map(lambda w: (w, 1)).reduceByKey(add).collect())


@contextlib.contextmanager
def dask_client(workers: int):
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=os.environ.get("BENCH_DASK_MEMORY", "1GiB")) as cluster, Client(cluster) as client:
        yield client


def dask_wordcount(files: list[str]) -> dict:
    import dask.bag as db
    return dict(db.read_text(files, blocksize="32MiB").map(tokenize).flatten().frequencies().compute())


# -- the run -----------------------------------------------------------------------------------------------
def compare(ref: dict, got: dict) -> str:
    """'=' when equal, else what differs (totals, distinct words, a few wrong words)."""
    if got == ref:
        return "="
    wrong = [w for w in set(ref) | set(got) if ref.get(w) != got.get(w)]
    return (f"✗ {len(wrong)} words differ (e.g. {sorted(wrong)[:3]}); totals {sum(got.values()):,} vs "
            f"{sum(ref.values()):,}, distinct {len(got):,} vs {len(ref):,}")


def one_round(tools: list[str], files: list[str], c, peers: argparse.Namespace, work: Path) -> dict:
    """Each tool once over ``files`` (the corpus' text files, not its marker): wall, CPU, counts, counters.
    A peer's session or cluster is up only around its own run (its start and stop not timed)."""
    rows: dict = {}
    for tool in tools:
        stats: dict = {}
        with contextlib.ExitStack() as stack:
            if tool == "spark":
                sc = stack.enter_context(spark_session(peers.spark_cores))
            elif tool == "dask":
                stack.enter_context(dask_client(peers.dask_workers))
            w0, c0 = time.perf_counter(), cpu_seconds()
            if tool == "spark":
                counts = spark_wordcount(sc, files)
            elif tool == "dask":
                counts = dask_wordcount(files)
            else:
                counts, stats = run_ours(c, tool, files, work / f"out-{tool}")
            wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
        rows[tool] = {"wall": wall, "cpu": cpu, "counts": counts, "stats": stats, "tokens": sum(counts.values())}
        print(f"    {tool}: {wall:.2f} s wall, {cpu:.1f} s CPU, {sum(counts.values()):,} tokens, "
              f"{len(counts):,} words {stats}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="the corpus (default 1GiB)")
    ap.add_argument("--check-size", default="4MB", help="the small corpus checked against Counter first")
    ap.add_argument("--work", default="/tmp/h-mr", help="data, outputs and logs go here")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"of {', '.join(TOOLS)}, record-nc")
    ap.add_argument("--check-tools", default=None, help="the tools checked on --check-size (default: --tools)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--peer-rounds", type=int, default=None,
                    help="the rounds Spark and Dask run in (the first N; default: every round)")
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--base-port", type=int, default=7400)
    ap.add_argument("--spark-cores", type=int, default=10, help="local[N] (the issue's goal: 10 local workers)")
    ap.add_argument("--dask-workers", type=int, default=10, help="LocalCluster processes (1 thread each)")
    a = ap.parse_args(argv)
    tools = [t for t in a.tools.split(",") if t]
    work = Path(a.work)
    data = dbgen.build_corpus(work / f"corpus-{a.size}", dbgen.parse_size(a.size), quiet=True)
    small = dbgen.build_corpus(work / f"corpus-{a.check_size}", dbgen.parse_size(a.check_size), quiet=True)
    files = dbgen.shard_files(data, ".txt")
    from cluster import launcher
    from cluster.api import Cluster
    info = launcher.start(a.workers, "127.0.0.1", a.base_port, str(work / "logs"), "warning")
    with contextlib.ExitStack() as stack:
        c = stack.enter_context(Cluster(info, owned=True))
        print(f"  check on {small.name} ...", file=sys.stderr, flush=True)
        ref = counter_reference(dbgen.shard_files(small, ".txt"))
        checks = {t: compare(ref, r["counts"]) for t, r in
                  one_round([t for t in (a.check_tools or a.tools).split(",") if t], dbgen.shard_files(small, ".txt"),
                            c, a, work).items()}
        rounds = []
        for i in range(a.rounds):
            print(f"  round {i + 1} on {data.name}, load {os.getloadavg()[0]:.2f} ...", file=sys.stderr, flush=True)
            load0 = os.getloadavg()[0]
            now = [t for t in tools if a.peer_rounds is None or i < a.peer_rounds or t not in ("spark", "dask")]
            rows = one_round(now if i % 2 == 0 else now[::-1], files, c, a, work)
            base = (rows.get("builtin") or next(iter(rows.values())))["counts"]
            for r in rows.values():
                r["check"] = compare(base, r["counts"])
            for r in rows.values():
                del r["counts"]
            rounds.append((load0, os.getloadavg()[0], rows))
    for load0, load1, rows in rounds:
        print(f"\n{data.name}: load average {load0:.2f} at the start, {load1:.2f} at the end; "
              f"Spark local[{a.spark_cores}], Dask {a.dask_workers} processes x 1 thread, ours {a.workers} workers")
        ours = rows.get("record")
        print("| job | wall | CPU | CPU µs a token | wall ÷ built-in | CPU ÷ built-in | theirs ÷ record form (wall) | "
              "theirs ÷ record form (CPU) | answer (small / big) | counters |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        b = rows.get("builtin")
        for tool, r in rows.items():
            vs_b = f"{r['wall'] / b['wall']:.2f} | {r['cpu'] / b['cpu']:.2f}" if b else " | "
            vs_r = (f"{r['wall'] / ours['wall']:.2f} | {r['cpu'] / ours['cpu']:.2f}"
                    if ours and tool in ("spark", "dask") else " | ")
            print(f"| {tool} | {r['wall']:.2f} s | {r['cpu']:.1f} s | {r['cpu'] / max(r['tokens'], 1) * 1e6:.2f} | "
                  f"{vs_b} | {vs_r} | {checks.get(tool, '')} / "
                  f"{r['check']} | {r['stats'] or ''} |")
    bad = [t for t, v in checks.items() if v != "="] + [t for *_, rows in rounds for t, r in rows.items()
                                                         if r["check"] != "="]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
