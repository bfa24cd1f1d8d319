#!/usr/bin/env python3
"""Keyed jobs from ``s3://`` against the same files on disk: db-benchmark group-by questions, and the bytes
the store served against the objects' sizes (Parquet fetches only the columns a question reads).

``--data`` (default: ``scripts/dbgen.py``'s ``G1_<rows>_1e2_0_0`` generated into a temporary folder) is
uploaded to a moto S3 server started here as a child process on 127.0.0.1, wrapped so it counts the bytes
of every GET body it serves.  One local cluster of ``--workers`` workers (ports from ``--base-port``) asks
each question ``--repeat`` times of both sources, interleaved (local then s3, then s3 then local, ...): the
figure is the median of each side and of the ratios s3/local pair by pair, wall and CPU seconds (the
workers' and the coordinator's; moto's apart: it is the store, not us).  Both answers must equal DuckDB's on
the files (the answers are written as Parquet parts, ``--out``, and read back).  moto is a single Python process: its throughput, not a network, bounds the s3 side here.

    .venv/bin/python scripts/bench_keyed_s3.py --rows 1e6 --repeat 3
    .venv/bin/python scripts/bench_keyed_s3.py --data /tmp/G1_1e7_1e2_0_0 --questions q1,q3

Polars (a lazy ``scan_parquet`` of the same files and of the same objects, through its own S3 client) is
asked the same questions the same way, as the peer: ``Polars ÷ ours`` above 1 means ours was faster.

Exit status 1 when an answer differs.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTIONS = {       # db-benchmark's q1 and q3 (scripts/bench_keyed.py OURS_SPECS), answered as Parquet parts (--out)
    "q1": ({"by": "id1", "agg": ("v1=sum(v1)",)}, "select id1, sum(v1) from x group by 1 order by 1"),
    "q3": ({"by": "id3", "agg": ("v1=sum(v1)", "v3=mean(v3)")},
           "select id3, sum(v1), avg(v3) from x group by 1 order by 1"),
}

# A moto server whose WSGI app counts the bytes of GET bodies; GET /__served answers the count so far.
COUNTING_MOTO = r"""
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
served = [0, 0]
def counting(environ, start_response):
    if environ.get("PATH_INFO") == "/__served":
        body = f"{served[0]} {served[1]}".encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    out = app(environ, start_response)
    if environ["REQUEST_METHOD"] != "GET":
        return out
    served[1] += 1
    def counted():
        for chunk in out:
            served[0] += len(chunk)
            yield chunk
    return counted()
run_simple("127.0.0.1", int(sys.argv[1]), counting, threaded=True)
"""


def polars_job(q: str, src: str, endpoint: str):
    """The question asked of Polars (a lazy scan, its own S3 client: object_store): (rows, wall s, CPU s)."""
    import polars as pl
    opts = {"aws_endpoint_url": endpoint, "aws_access_key_id": "bench", "aws_secret_access_key": "bench",
            "aws_region": "us-east-1", "aws_allow_http": "true"} if src.startswith("s3://") else None
    c0, t0 = time.process_time(), time.perf_counter()
    x = pl.scan_parquet(src, storage_options=opts)
    if q == "q1":
        df = x.group_by("id1").agg(pl.col("v1").sum()).collect()
    else:
        df = x.group_by("id3").agg(pl.col("v1").sum(), pl.col("v3").mean()).collect()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return sorted(df.iter_rows()), wall, cpu


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    from scripts.bench_s3 import start_moto as started
    return started(log, COUNTING_MOTO)


def served(endpoint: str) -> tuple[int, int]:
    """(bytes of GET bodies, GET requests) the store has served so far."""
    with urllib.request.urlopen(f"{endpoint}/__served", timeout=10) as r:
        b, n = r.read().split()
    return int(b), int(n)


def cpu_seconds(pids: list[int]) -> float:
    import psutil
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def rows_of(out: Path) -> list[tuple]:
    """The answer's rows, read back from its part files, sorted."""
    import duckdb
    return sorted(tuple(r) for r in duckdb.sql(f"select * from read_parquet('{out}/*.parquet')").fetchall())


def same(a: list[tuple], b: list[tuple]) -> bool:
    import math
    return len(a) == len(b) and all(len(x) == len(y) and all(
        u == v or (isinstance(u, float) and math.isclose(u, v, rel_tol=1e-9)) for u, v in zip(x, y))
        for x, y in zip(a, b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1e6", help="rows of G1 to generate when --data is not given")
    ap.add_argument("--data", help="a folder of G1 Parquet shards (scripts/dbgen.py groupby)")
    ap.add_argument("--questions", default="q1,q3")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--base-port", type=int, default=7720)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory-limit", help="each worker's budget (e.g. 300M): shares beyond it are read in batches "
                                           "into runs on disk (the spill folder is under the run's temporary one)")
    ap.add_argument("--no-peer", action="store_true", help="skip Polars")
    a = ap.parse_args(argv)

    import boto3
    import duckdb
    from shardstats.cluster import launcher
    from shardstats.coordinator.job import run_job
    from shardstats.coordinator.spec import job_spec

    questions = a.questions.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-keyed-s3-") as tmp:
        tmp = Path(tmp)
        if a.data:
            data = Path(a.data)
        else:
            from scripts import dbgen
            rows = dbgen.parse_count(a.rows)
            data = dbgen.generate_groupby(tmp / dbgen.dataset_name(rows), rows)
        files = sorted(data.glob("*.parquet"))
        size = sum(f.stat().st_size for f in files)
        moto, endpoint = start_moto(tmp / "moto.log")
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
               "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}
        os.environ.update(env)                         # the workers inherit it: their only way to the store
        info = None
        failed = False
        try:
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            s3.create_bucket(Bucket="bench")
            for f in files:
                s3.upload_file(str(f), "bench", f"g1/{f.name}")
            con = duckdb.connect()
            con.sql(f"create view x as select * from read_parquet('{data}/*.parquet')")
            extra = []
            if a.memory_limit:
                from shardstats.worker.memory import parse_size
                extra = ["--memory-limit", str(parse_size(a.memory_limit)), "--spill-dir", str(tmp / "spill")]
            info = launcher.start(a.workers, "127.0.0.1", a.base_port, str(tmp / "logs"), "warning", extra)
            me = os.getpid()

            def job(q: str, src: str, out: Path):
                params, _ = QUESTIONS[q]
                spec = job_spec("groupby", src, {**params, "out": str(out)}, timeout=600)
                c0, b0, t0 = cpu_seconds(info.pids + [me]), served(endpoint), time.perf_counter()
                rep = asyncio.run(run_job(info.workers, info.token.encode(), spec))
                wall = time.perf_counter() - t0
                c1, b1 = cpu_seconds(info.pids + [me]), served(endpoint)
                load = max(w.get("load_seconds", 0.0) for w in rep.workers)
                passes[src] = (max(w.get("passes", 1) for w in rep.workers),
                               sum(w.get("spill_bytes_written", 0) for w in rep.workers),
                               max(w.get("peak_rss_bytes", 0) for w in rep.workers))
                return rep, wall, c1 - c0, load, b1[0] - b0[0], b1[1] - b0[1]

            sources = {"local": str(data), "s3": "s3://bench/g1/"}
            passes: dict[str, tuple] = {}
            print(f"# {len(files)} Parquet files, {size / 1e6:.1f} MB, {a.workers} workers; load average "
                  f"{os.getloadavg()[0]:.2f} at the start")
            table, polars = [], {}
            for q in questions:
                want = [tuple(r) for r in con.sql(QUESTIONS[q][1]).fetchall()]
                runs: dict[str, list] = {"local": [], "s3": []}
                for i in range(a.repeat + 1):            # the first pair warms both sides up, not counted
                    order = ("local", "s3") if i % 2 == 0 else ("s3", "local")
                    for side in order:
                        out = tmp / f"out-{q}-{side}-{i}"
                        rep, wall, cpu, load, got_bytes, gets = job(q, sources[side], out)
                        got = rows_of(out)
                        shutil.rmtree(out)
                        if not same(got, sorted(want)):
                            diff = next((f"{x} != {y}" for x, y in zip(got, sorted(want)) if not same([x], [y])),
                                        f"{len(got)} rows, DuckDB {len(want)}")
                            print(f"✗ {q} from {side}: the answer differs from DuckDB's ({diff})", file=sys.stderr)
                            failed = True
                        if i:
                            runs[side].append((wall, cpu, load, got_bytes, gets))
                if a.memory_limit:
                    print(f"# {q}: passes, spilled bytes, a worker's peak RSS: " + ", ".join(
                        f"{s} {p} / {b / 1e6:.0f} MB / {m / 2**20:.0f} MiB" for s, (p, b, m) in passes.items()))
                peer: dict[str, list] = {"local": [], "s3": []}
                psrc = {"local": f"{data}/*.parquet", "s3": "s3://bench/g1/*.parquet"}
                for i in range(0 if a.no_peer else a.repeat + 1):            # Polars, the same way
                    for side in (("local", "s3") if i % 2 == 0 else ("s3", "local")):
                        got, wall, cpu = polars_job(q, psrc[side], endpoint)
                        if not same(got, sorted(want)):
                            print(f"✗ {q} from {side}: Polars' answer differs from DuckDB's", file=sys.stderr)
                            failed = True
                        if i:
                            peer[side].append((wall, cpu))
                if not a.no_peer:
                    polars[q] = {s: [statistics.median(r[k] for r in peer[s]) for k in range(2)] for s in peer}
                med = {s: [statistics.median(r[k] for r in runs[s]) for k in range(5)] for s in runs}
                ratio_wall = statistics.median(s[0] / l[0] for s, l in zip(runs["s3"], runs["local"]))
                ratio_cpu = statistics.median(s[1] / l[1] for s, l in zip(runs["s3"], runs["local"]))
                table.append((q, med, ratio_wall, ratio_cpu))
            print(f"# load average {os.getloadavg()[0]:.2f} at the end")
            print()
            print("| question | local wall s | s3 wall s | s3/local wall | local CPU s | s3 CPU s | s3/local CPU "
                  "| load phase local / s3 s | served by the store | of the objects | GETs |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for q, med, rw, rc in table:
                lo, s3m = med["local"], med["s3"]
                print(f"| {q} | {lo[0]:.2f} | {s3m[0]:.2f} | {rw:.2f} | {lo[1]:.2f} | {s3m[1]:.2f} | {rc:.2f} | "
                      f"{lo[2]:.2f} / {s3m[2]:.2f} | {s3m[3] / 1e6:.1f} MB | {s3m[3] / size:.0%} | {s3m[4]:.0f} |")
            if a.no_peer:
                return 1 if failed else 0
            print()
            print("| question | Polars local wall s (CPU s) | Polars s3 wall s (CPU s) | Polars s3/local wall "
                  "| Polars ÷ ours, local | Polars ÷ ours, s3 |")
            print("|---|---|---|---|---|---|")
            for q, med, _, _ in table:
                pl_, ps = polars[q]["local"], polars[q]["s3"]
                print(f"| {q} | {pl_[0]:.2f} ({pl_[1]:.2f}) | {ps[0]:.2f} ({ps[1]:.2f}) | {ps[0] / pl_[0]:.2f} | "
                      f"{pl_[0] / med['local'][0]:.2f} | {ps[0] / med['s3'][0]:.2f} |")
        finally:
            if info is not None:
                launcher.stop(info)
            moto.terminate()
            try:
                moto.wait(10)
            except subprocess.TimeoutExpired:
                moto.kill()
                moto.wait(10)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
