#!/usr/bin/env python3
"""A tiny job's wall time, end to end: the CLI and the API beside what a user would type instead (median of N).

Issue 13's goal: a one-value job through the CLI on a warm cluster is answered at
once (under 0.1 s).  Every row is a fresh process, timed from spawn to exit, on the
same small file, except "API, open handle" (``Cluster`` kept open, one call timed).
The alternatives are the one-liners a user reaches for on a file this small:
``python -c`` with numpy, and DuckDB's CLI or ``python -c 'import duckdb'`` when
installed.  ``--breakdown`` says where the CLI's time goes: interpreter start,
imports by package, then the job's own steps (measured inside one CLI process).

    cluster up --workers 10 --base-port 7500 --detach      # a warm cluster (its cluster file)
    .venv/bin/python scripts/bench_small.py --runs 10 --breakdown
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs `cluster ARGS...` in this process with the job's steps timed (by wrapping the coordinator's functions),
# and writes them as JSON to $BENCH_SMALL_MARKS at exit. Imports come first, in groups, each timed (a module
# two groups share counts in the first).
PROBE = r"""
import os, sys, time, json, atexit
t_start = time.perf_counter()
marks = {"wall_at_start": time.time()}
GROUPS = [
    ("click", "import click"),
    ("asyncio (+ ssl, socket, subprocess, logging)", "import asyncio"),
    ("msgpack", "import msgpack"),
    ("ours: the CLI (cli, submit, config, settings)", "import shardstats.cluster.cli"),
    ("ours: the op (registry, contract, comm, op)",
     "from shardstats.worker.ops import registry; registry.get(sys.argv[1])"),
    ("ours: coordinator, protocol, output",
     "import shardstats.coordinator.job, shardstats.cluster.output, shardstats.cluster.progress, "
     "shardstats.cluster.notices, shardstats.coordinator.spec, shardstats.cluster.runner"),
]
for label, code in GROUPS:
    t = time.perf_counter()
    exec(code)
    marks["import " + label] = time.perf_counter() - t
marks["imports"] = time.perf_counter() - t_start
import shardstats.cluster.cli as cli, shardstats.cluster.output as output, shardstats.coordinator.job as job

def timed(mod, name, key):
    fn = getattr(mod, name)
    if hasattr(fn, "__code__") and fn.__code__.co_flags & 0x80:      # a coroutine function
        async def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return await fn(*a, **k)
            finally:
                marks[key] = marks.get(key, 0) + time.perf_counter() - t
    else:
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                marks[key] = marks.get(key, 0) + time.perf_counter() - t
    setattr(mod, name, wrapper)

timed(job, "resolve_input", "list input")
timed(job, "connect_reachable", "connect (handshakes)")
timed(job, "_attempt", "load + run + collect")
timed(job, "run_job", "job, all")
timed(output, "human", "output")
timed(output, "json_document", "output")
import shardstats.cluster.runner as runner
timed(runner, "run_async", "event loop, all")

def report():
    marks["main"] = time.perf_counter() - t_start - marks["imports"]
    with open(os.environ["BENCH_SMALL_MARKS"], "w") as f:
        json.dump(marks, f)
atexit.register(report)
_exit = cli._fast_exit
def fast_exit(code):       # the CLI's own exit (os._exit skips atexit): the marks first
    report()
    _exit(code)
cli._fast_exit = fast_exit
sys.argv = ["cluster", "submit", *sys.argv[1:]]
cli.run()
"""


def timed_runs(cmd: list[str], runs: int, env: dict | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
        out.append(time.perf_counter() - t)
    return out


def api_open_handle(path: str, op: str, runs: int) -> list[float]:
    from shardstats import Cluster
    out = []
    with Cluster.connect() as c:
        getattr(c, op)(path)                 # the first call connects
        for _ in range(runs):
            t = time.perf_counter()
            getattr(c, op)(path)
            out.append(time.perf_counter() - t)
    return out


def breakdown(path: str, op: str, runs: int, total: float) -> None:
    results = []
    marks_file = Path(path).with_name("marks.json")
    for _ in range(runs):
        t0 = time.time()
        subprocess.run([sys.executable, "-c", PROBE, op, "--input", path], stdout=subprocess.DEVNULL, check=True,
                       env={**os.environ, "BENCH_SMALL_MARKS": str(marks_file)})
        end = time.time()
        marks = json.loads(marks_file.read_text())
        marks["python start"] = marks.pop("wall_at_start") - t0
        marks["exit"] = end - t0 - marks["python start"] - marks["imports"] - marks["main"]
        results.append(marks)
    med = {k: statistics.median(m.get(k, 0.0) for m in results) for k in results[0]}
    job_all = med.get("job, all", 0.0)
    inner = med.get("connect (handshakes)", 0) + med.get("load + run + collect", 0) + med.get("list input", 0)
    loop_all = med.get("event loop, all", 0.0)
    imports = [(k[len("import "):], v) for k, v in med.items() if k.startswith("import ")]
    rows = [("python start (interpreter, site)", med["python start"])]
    rows += [(f"import {name}", sec) for name, sec in imports]
    rows += [
        ("click: parse, build the command, validate", med["main"] - loop_all - med.get("output", 0)),
        ("list input", med.get("list input", 0)),
        ("connect (dials + handshakes)", med.get("connect (handshakes)", 0)),
        ("load + run + collect", med.get("load + run + collect", 0)),
        ("close connections, rest of the job", max(0.0, job_all - inner)),
        ("event loop start/stop", max(0.0, loop_all - job_all)),
        ("output", med.get("output", 0)),
        ("exit (flush, os._exit)", med["exit"]),
    ]
    print(f"\nwhere the CLI's {op} job goes (median of {runs} per row; the whole measured above: {total:.3f} s)")
    for name, sec in rows:
        print(f"  {name:<52} {sec * 1e3:7.1f} ms")
    print(f"  {'sum':<52} {sum(s for _, s in rows) * 1e3:7.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="Runs per row; the median is printed.")
    ap.add_argument("--op", default="mode", help="The op to submit (default mode).")
    ap.add_argument("--value", type=int, default=7, help="The one value in the file.")
    ap.add_argument("--breakdown", action="store_true", help="Also say where the CLI's time goes.")
    args = ap.parse_args()
    exe = Path(sys.executable)
    cluster_cmd = str(exe.with_name("cluster")) if exe.with_name("cluster").exists() else shutil.which("cluster")
    tmp = Path(tempfile.mkdtemp(prefix="bench-small-"))
    try:
        path = str(tmp / "one.txt")
        Path(path).write_text(f"{args.value}\n")
        npy = {"mode": "u, c = np.unique(a, return_counts=True); print(u[c.argmax()], c.max())",
               "median": "print(np.median(a))"}.get(args.op, "print(a.min())")
        rows: list[tuple[str, list[float]]] = [
            ("python -c pass (interpreter start)", timed_runs([sys.executable, "-c", "pass"], args.runs)),
            (f"cluster submit {args.op}", timed_runs([cluster_cmd, "submit", args.op, "--input", path], args.runs)),
            (f"cluster submit {args.op} --json", timed_runs([cluster_cmd, "submit", args.op, "--input", path,
                                                               "--json"], args.runs)),
            (f"API: python -c 'Cluster.connect().{args.op}()'",
             timed_runs([sys.executable, "-c", f"from shardstats import Cluster\nwith Cluster.connect() as c: "
                         f"print(c.{args.op}({path!r}))"], args.runs)),
            ("API, open handle (one call)", api_open_handle(path, args.op, args.runs)),
            (f"python -c numpy ({args.op} of the file)",
             timed_runs([sys.executable, "-c", f"import numpy as np; a = np.loadtxt({path!r}, dtype=np.int64, "
                         f"ndmin=1); {npy}"], args.runs)),
        ]
        sql = {"mode": "SELECT mode(column0) FROM read_csv('%s', header=false)",
               "median": "SELECT median(column0) FROM read_csv('%s', header=false)"}.get(
            args.op, "SELECT min(column0) FROM read_csv('%s', header=false)") % path
        if shutil.which("duckdb"):
            rows.append(("duckdb -c (CLI)", timed_runs(["duckdb", "-c", sql], args.runs)))
        if importlib.util.find_spec("duckdb") is not None:
            rows.append(("python -c 'import duckdb' (same SQL)",
                         timed_runs([sys.executable, "-c", f"import duckdb; print(duckdb.sql({sql!r}).fetchall())"],
                                    args.runs)))
        else:
            print("skipped duckdb (pip install duckdb, or the bench extra)")
        print(f"one value, {args.op}, median of {args.runs} (a fresh process per run unless said)")
        for name, ts in rows:
            print(f"  {name:<48} {statistics.median(ts):7.3f} s   (min {min(ts):.3f})")
        if args.breakdown:
            total = statistics.median(rows[1][1])
            breakdown(path, args.op, args.runs, total)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
