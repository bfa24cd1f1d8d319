#!/usr/bin/env python3
"""Our cluster side by side with the tools people would use instead, on the same files, in one run.

Datasets (cached under ``--data-dir``, reused when present): the problem's
``unique-dup`` (every value unique but one, which sits on two shards),
``zipf`` (zipf(1.3) ranks as the values: mostly small numbers) and the heavy-tailed
``hzipf-A-R`` (zipf(A) ranks each mapped to a random-looking value in [0, R) by a
splitmix64 mix, ``R`` = ``int64`` for the whole signed range: a few values seen
millions of times, a long tail seen once or twice, spread over a wide range);
``zipf-wide`` is ``hzipf-1.3-1e12``.  ``--zipf-sweep`` runs the mode over
``hzipf`` at exponents 1.1-2.0 and ranges 10^3 to the full int64, so no single shape
hides a loss.  ``--rows`` values in ``--shards`` shards, written once as
``.npy`` (``cluster.gen``) and as ``.parquet`` from the same arrays (pyarrow,
column ``x``, default row groups and compression).  The exact reference answers
(from one ``np.sort``) are stored next to them and every tool is checked
against them.

Tools (``--tools``, default all):

    ours          our cluster, ``--workers`` local workers, reading the .npy shards
    ours-parquet  the same cluster code reading the .parquet shards
    numpy         one process: load the .npy shards, np.unique(return_counts) / np.median
                  (topk: a lexsort of np.unique's counts; distinct: len(np.unique))
    duckdb        mode(x) / median(x) over read_parquet(the shards), threads=2; topk:
                  GROUP BY x ORDER BY count(*) DESC, x LIMIT K; distinct: count(DISTINCT x)
    polars        scan_parquet(the shards), mode() (smallest of ties) / median(); topk:
                  group_by(x).len() sorted by (len desc, x), head(K); distinct: n_unique()
    dask          distributed LocalCluster, one single-threaded worker process per shard:
                  value_counts() for the mode, quantile(0.5) for the median (approximate);
                  not run for topk and distinct

Ops (``--ops``): mode, median, topk (``--k``, default 100: the K most frequent values,
count desc then value asc, checked item by item), distinct (the exact count).  For
topk our cluster runs ``auto`` (the timed row) and also each strategy forced
(rows ``topk/shuffle`` and ``topk/threshold``), so their bytes and rounds sit side by side.

Every tool runs in a child process of its own (so its memory is its own); each op
runs once untimed-for-the-median ("first", the cold run, reported) and then
``--repeat`` times, stopping early once an op has spent ``--budget`` seconds; the
reported time is the median wall time of the repeats.  Every timing includes
reading the files (from the page cache).  Start-up (our workers, Dask's
LocalCluster) is timed separately and excluded.

Peak memory is the peak RSS of the tool's whole process tree, sampled every
20 ms by the parent (and, for the child process itself, its exact VmHWM).  For
our cluster the workers' own exact per-job peaks are also reported (sum and
max), with the worst worker's peak as a multiple of its share of the raw data
(values x 8 bytes), both as is and less the worker's idle RSS before the job.
CPU seconds (user + system of the whole tree during the op) show what a tool
costs beyond its wall time: on a 2-core machine ten workers share two cores.

The ratio column is theirs / ours: the tool's median time divided by our
cluster's (``ours``) median time for the same dataset and op; above 1 we are faster.

    .venv/bin/python scripts/bench.py                       # 10M rows, every tool installed
    .venv/bin/python scripts/bench.py --rows 100000000      # 100M rows
    .venv/bin/python scripts/bench.py --rows 1e6 --tools ours,numpy --ops mode --json
    .venv/bin/python scripts/bench.py --zipf-sweep --rows 3e7 --tools ours,numpy,duckdb,polars
    .venv/bin/python scripts/bench.py --datasets hzipf-1.1-int64,hzipf-2-1e6 --ops mode
    .venv/bin/python scripts/bench.py --scaling --scaling-rows 1e6,3e6,1e7   # ours at 1, 2, 5, 10 workers

Exit status 1 when any exact answer does not match (or our cluster fails), else 0.
Tools that are not installed are listed as skipped with the pip command.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from shardstats.reference import mode_and_median

ROOT = Path(__file__).resolve().parent.parent

PREFIX = "@@bench "              # child -> parent event lines on stdout; anything else is ignored
DATASETS = ("unique-dup", "zipf", "zipf-wide")
ZIPF_WIDE = "hzipf-1.3-1e12"          # the heavy-tailed shape: zipf(1.3) ranks over [0, 10^12)
SWEEP_EXPONENTS = ("1.1", "1.3", "1.5", "2")
SWEEP_RANGES = ("1e3", "1e6", "1e12", "int64")
HZIPF = re.compile(r"hzipf-(?P<a>[0-9]+(?:\.[0-9]+)?)-(?P<r>int64|[0-9]+(?:e[0-9]+)?)")
OPS = ("mode", "median", "topk", "distinct")
TOPK_STRATEGY_OPS = ("topk/shuffle", "topk/threshold")   # ours only: each topk strategy forced, for its bytes
ROW_ORDER = ("mode", "median", "topk", *TOPK_STRATEGY_OPS, "distinct")
OURS = ("ours", "ours-parquet")


@dataclass(frozen=True)
class Tool:
    name: str
    modules: tuple[str, ...]     # importable modules the tool needs
    pip: str                     # what to install when one is missing
    fmt: str                     # which files it reads: "npy" or "parquet"
    what: str


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("ours", ("numpy", "psutil"), "psutil", "npy", "our cluster (.npy)"),
    Tool("ours-parquet", ("numpy", "psutil", "pyarrow"), "pyarrow psutil", "parquet", "our cluster (.parquet)"),
    Tool("numpy", ("numpy",), "numpy", "npy", "np.unique(return_counts) / np.median, one process"),
    Tool("duckdb", ("duckdb", "pyarrow"), "duckdb pyarrow", "parquet", "mode(x) / median(x), threads=2"),
    Tool("polars", ("polars", "pyarrow"), "polars pyarrow", "parquet", "scan_parquet: mode().min() / median()"),
    Tool("dask", ("dask", "distributed", "pandas", "pyarrow"), "'dask[dataframe,distributed]' pyarrow", "parquet",
         "LocalCluster, 1-thread workers: value_counts() / quantile(0.5) (approximate)"),
)}
APPROXIMATE = {("dask", "median")}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def parse_count(text: str) -> int:
    """'10000000', '1e7', '10M', '500k' -> an int."""
    t = text.strip().lower().replace("_", "")
    mult = {"k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}.get(t[-1:], 1)
    if mult != 1:
        t = t[:-1]
    value = Fraction(t) * mult if "e" not in t else Fraction(int(float(t))) * mult
    if value.denominator != 1 or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole count")
    return int(value)


def csv_list(choices: tuple[str, ...] | list[str], pattern: re.Pattern | None = None) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices and not (pattern and pattern.fullmatch(s))]
        if bad or not items:
            more = " or hzipf-EXPONENT-RANGE (e.g. hzipf-1.1-1e6, hzipf-2-int64)" if pattern else ""
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)}{more}")
        return items
    return parse


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_count(n: int) -> str:
    for div, unit in ((10 ** 9, "G"), (10 ** 6, "M"), (10 ** 3, "k")):
        if n >= div and n % (div // 10 if div > 10 else 1) == 0:
            return f"{n / div:g}{unit}"
    return str(n)


# -- data ------------------------------------------------------------------------------
def reference(values: np.ndarray, tie_limit: int = 1000, is_sorted: bool = False, k: int = 100) -> dict:
    """The shared mode and median reference plus the top ``k`` (count desc, value asc) and the distinct
    count, all from one sort."""
    s = values if is_sorted else np.sort(values)
    ref = mode_and_median(s, tie_limit, is_sorted=True)
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    counts = np.diff(np.append(starts, len(s)))
    order = np.lexsort((s[starts], -counts))[:k]
    ref.update(topk_k=k, topk=[[int(v), int(c)] for v, c in zip(s[starts[order]], counts[order])],
               distinct=int(len(starts)))
    return ref


_MIX1, _MIX2, _GOLDEN = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15


def splitmix64(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64's finaliser of ``x + salt``: a bijection of uint64, so distinct ranks stay distinct."""
    x = x.astype(np.uint64) + np.uint64((_GOLDEN * (salt + 1)) % 2 ** 64)
    for shift, mult in ((30, _MIX1), (27, _MIX2)):
        x ^= x >> np.uint64(shift)
        x *= np.uint64(mult)
    x ^= x >> np.uint64(31)
    return x


def heavy_zipf(n: int, shards: int, exponent: float, span: int | None, seed: int) -> list[np.ndarray]:
    """zipf(``exponent``) ranks mapped to values in [0, ``span``) (``None``: the whole int64 range) by a seeded
    mix: the ranks' skew (a few values seen millions of times, a long tail seen once) at any value range."""
    rng = np.random.default_rng(seed)
    parts = []
    for size in (len(p) for p in np.array_split(np.empty(n, dtype=np.int8), shards)):
        mixed = splitmix64(rng.zipf(exponent, size), seed)
        parts.append(mixed.view(np.int64) if span is None else (mixed % np.uint64(span)).astype(np.int64))
    return parts


def generate_dataset(dist: str, rows: int, shards: int, seed: int) -> list[np.ndarray]:
    """The shards of ``dist``: ``cluster gen``'s datasets, or ``hzipf-A-R`` / ``zipf-wide`` (``heavy_zipf``)."""
    from shardstats.cluster.gen import generate
    m = HZIPF.fullmatch(ZIPF_WIDE if dist == "zipf-wide" else dist)
    if m is None:
        return generate(rows, shards, dist, seed)
    r = m["r"]
    span = None if r == "int64" else int(float(r)) if "e" in r else int(r)
    if span is not None and not 1 <= span <= 2 ** 63:
        raise SystemExit(f"{dist}: the range must be 1 .. 2**63, or int64")
    return heavy_zipf(rows, shards, float(m["a"]), span, seed)


@dataclass
class Dataset:
    dist: str
    rows: int
    dir: Path
    ref: dict

    @property
    def label(self) -> str:
        return self.dist

    def files(self, fmt: str) -> list[str]:
        return sorted(str(p) for p in (self.dir / fmt).glob(f"*.{fmt}"))


def ensure_dataset(data_dir: Path, dist: str, rows: int, shards: int, seed: int, parquet: bool, k: int = 100) -> Dataset:
    """The dataset's directory, generated once; ``meta.json`` is written last and marks it complete."""
    from shardstats.cluster.gen import write_shards
    d = data_dir / f"{dist}-{rows}-{shards}s-seed{seed}"
    meta_path = d / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    dirty = meta is None
    if meta is None:
        log(f"generating {dist}, {rows:,} rows in {shards} shards -> {d}")
        if d.exists():
            shutil.rmtree(d)
        parts = generate_dataset(dist, rows, shards, seed)
        write_shards(parts, d / "npy", "npy")
        values = np.concatenate(parts)
        del parts
        values.sort()                  # in place: one copy of the data at 100M rows, not three
        ref = reference(values, is_sorted=True, k=k)
        ref["median"] = str(ref["median"])      # the cache is JSON: the exact half as "num/den" text
        del values
        meta = {"dist": dist, "rows": rows, "shards": shards, "seed": seed, "reference": ref, "parquet": False}
    if meta["reference"].get("topk_k") != k:    # a cache from before topk/distinct, or another K
        log(f"adding the top-{k} and distinct reference to {d}")
        values = np.concatenate([np.load(f) for f in sorted((d / "npy").glob("*.npy"))])
        values.sort()
        meta["reference"] = reference(values, is_sorted=True, k=k)
        meta["reference"]["median"] = str(meta["reference"]["median"])
        del values
        dirty = True
    if parquet and not meta.get("parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        log(f"writing {dist} as .parquet")
        (d / "parquet").mkdir(parents=True, exist_ok=True)
        for f in sorted((d / "npy").glob("*.npy")):
            pq.write_table(pa.table({"x": np.load(f)}), d / "parquet" / (f.stem + ".parquet"))
        meta["parquet"] = dirty = True
    if dirty:
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(meta_path)
    return Dataset(dist, rows, d, meta["reference"])


# -- answers ---------------------------------------------------------------------------
def encode_answer(x: Any) -> Any:
    """Exact numbers as text ('7', '7/2'), floats as floats, so the parent can tell them apart; lists item by item."""
    if isinstance(x, (list, tuple)):
        return [encode_answer(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x)
    if isinstance(x, (int, np.integer, Fraction)):
        return str(Fraction(x))
    raise TypeError(f"unexpected answer type {type(x).__name__}")


def decode_answer(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, list):
        return [decode_answer(v) for v in x]
    return Fraction(x) if isinstance(x, str) else Fraction(float(x))


def check(tool: str, op: str, answer: Fraction | None, ref: dict) -> str:
    """match / match (another tied value) / MISMATCH, or for approximate methods approximate (=|≠)."""
    if answer is None:
        return "FAILED"
    if op.startswith("topk"):
        return "match" if answer == [[Fraction(v), Fraction(c)] for v, c in ref["topk"]] else "MISMATCH"
    if op == "distinct":
        return "match" if answer == ref["distinct"] else "MISMATCH"
    if op == "mode":
        ok = answer == ref["mode"]
        if not ok and answer.denominator == 1 and answer.numerator in ref["ties"]:
            return "match (another tie)"
    else:
        ok = answer == Fraction(ref["median"])
    if (tool, op) in APPROXIMATE:
        return "approximate (=)" if ok else "approximate (≠)"
    return "match" if ok else "MISMATCH"


# -- the child: one tool over some datasets --------------------------------------------
class Child:
    """The child's side of the conversation: events out on stdout, 'go' in on stdin before each run."""

    def emit(self, **event: Any) -> None:
        sys.stdout.write(PREFIX + json.dumps(event) + "\n")
        sys.stdout.flush()

    def begin(self, **event: Any) -> None:
        from shardstats.worker.memory import reset_peak
        self.emit(event="begin", **event)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("parent went away")
        reset_peak()

    def runs(self, dataset: str, op: str, fn: Callable[[], tuple[float, Any, dict]], repeat: int,
             budget: float) -> None:
        """The first (cold) run, then up to ``repeat`` more until ``budget`` seconds are spent (at least one)."""
        from shardstats.worker.memory import peak_rss_bytes
        spent, i = 0.0, 0
        while True:
            self.begin(dataset=dataset, op=op, run=i)
            try:
                seconds, answer, extra = fn()
            except Exception as exc:   # a tool's failure is a result to report, not a crash of the benchmark
                self.emit(event="error", dataset=dataset, op=op, run=i,
                          message=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
                return
            self.emit(event="end", dataset=dataset, op=op, run=i, seconds=seconds, answer=encode_answer(answer),
                      extra=extra, self_peak=peak_rss_bytes())
            spent += seconds
            i += 1
            if i > repeat or (i >= 2 and spent > budget):
                return


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def child_ours(spec: dict, ch: Child) -> None:
    import psutil

    from shardstats.cluster.api import Cluster
    logdir = tempfile.mkdtemp(prefix="bench-cluster-logs-")
    try:
        startup, c = _timed(lambda: Cluster.local(spec["workers"], log_dir=logdir))
        try:
            procs = [psutil.Process(p) for p in c.info.pids]
            ch.emit(event="ready", startup_seconds=startup)
            def job(path: str, op: str) -> tuple[Any, Any]:
                """(the result, the answer as the reference states it) of one of our jobs."""
                if op.startswith("topk"):
                    r = c.topk(path, k=spec["k"], strategy=op.partition("/")[2] or "auto")
                    return r, r.items
                r = c.submit(op, path)
                return r, r.value

            for ds in spec["datasets"]:
                for op in [o for op in spec["ops"] for o in ((op, *TOPK_STRATEGY_OPS) if op == "topk" else (op,))]:
                    def once(path: str = ds["dir"], op: str = op) -> tuple[float, Any, dict]:
                        idle = [p.memory_info().rss for p in procs]
                        seconds, (r, answer) = _timed(lambda: job(path, op))
                        s = r.stats
                        keep = ("values", "seconds", "load_seconds", "run_seconds", "rounds", "bytes_sent",
                                "messages_sent", "busiest_link_bytes", "max_inbound_streams", "peak_buffered_bytes",
                                "peak_send_queue_bytes", "peak_worker_rss_bytes", "workers", "strategy")
                        extra = {k: s[k] for k in keep if k in s}
                        extra["per_worker"] = [{"values": w["values"], "peak_rss_bytes": w["peak_rss_bytes"],
                                                "idle_rss_bytes": idle[w["id"]], "phases": w.get("phases", {})}
                                               for w in s["per_worker"]]
                        return seconds, answer, extra
                    ch.runs(ds["label"], op, once, spec["repeat"], spec["budget"])
        finally:
            c.close()
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def child_numpy(spec: dict, ch: Child) -> None:
    ch.emit(event="ready", startup_seconds=0.0)
    for ds in spec["datasets"]:
        for op in spec["ops"]:
            def once(files: list[str] = ds["files"], op: str = op) -> tuple[float, Any, dict]:
                t = time.perf_counter()
                a = np.concatenate([np.load(f) for f in files])
                loaded = time.perf_counter()
                if op == "mode":
                    u, counts = np.unique(a, return_counts=True)
                    answer = int(u[int(counts.argmax())])      # argmax: the first, so the smallest of ties
                elif op == "topk":
                    u, counts = np.unique(a, return_counts=True)
                    order = np.lexsort((u, -counts))[:spec["k"]]
                    answer = [[int(v), int(n)] for v, n in zip(u[order], counts[order])]
                elif op == "distinct":
                    answer = len(np.unique(a))
                else:
                    answer = float(np.median(a))
                end = time.perf_counter()
                return end - t, answer, {"load_seconds": loaded - t}
            ch.runs(ds["label"], op, once, spec["repeat"], spec["budget"])


def child_duckdb(spec: dict, ch: Child) -> None:
    import duckdb
    con = duckdb.connect()
    con.execute("SET threads = 2")
    ch.emit(event="ready", startup_seconds=0.0)
    for ds in spec["datasets"]:
        for op in spec["ops"]:
            sql = {"mode": "SELECT mode(x) FROM read_parquet($files)",
                   "median": "SELECT median(x) FROM read_parquet($files)",
                   "topk": f"SELECT x, count(*) AS n FROM read_parquet($files) GROUP BY x "
                           f"ORDER BY n DESC, x ASC LIMIT {int(spec['k'])}",
                   "distinct": "SELECT count(DISTINCT x) FROM read_parquet($files)"}[op]

            def once(files: list[str] = ds["files"], sql: str = sql, op: str = op) -> tuple[float, Any, dict]:
                seconds, rows = _timed(lambda: con.execute(sql, {"files": files}).fetchall())
                return seconds, ([[int(v), int(n)] for v, n in rows] if op == "topk" else rows[0][0]), {}
            ch.runs(ds["label"], op, once, spec["repeat"], spec["budget"])


def child_polars(spec: dict, ch: Child) -> None:
    import polars as pl
    ch.emit(event="ready", startup_seconds=0.0)
    for ds in spec["datasets"]:
        for op in spec["ops"]:
            def query(files: list[str], op: str = op) -> Any:
                lf = pl.scan_parquet(files)
                if op == "topk":
                    top = (lf.group_by("x").len().sort(["len", "x"], descending=[True, False])
                           .head(spec["k"]).collect())
                    return [[int(v), int(n)] for v, n in top.iter_rows()]
                expr = {"mode": pl.col("x").mode().min(), "median": pl.col("x").median(),
                        "distinct": pl.col("x").n_unique()}[op]
                return lf.select(expr).collect().item()

            def once(files: list[str] = ds["files"], query: Any = query) -> tuple[float, Any, dict]:
                seconds, v = _timed(lambda: query(files))
                return seconds, v, {}
            ch.runs(ds["label"], op, once, spec["repeat"], spec["budget"])


def child_dask(spec: dict, ch: Child) -> None:
    import logging

    import dask
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster

    def start() -> tuple[Any, Any]:
        cl = LocalCluster(n_workers=spec["workers"], threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=logging.ERROR)
        return cl, Client(cl)
    startup, (cl, client) = _timed(start)
    try:
        ch.emit(event="ready", startup_seconds=startup)
        for ds in spec["datasets"]:
            for op in [o for o in spec["ops"] if o in ("mode", "median")]:
                def mode(files: list[str]) -> int:
                    vc = dd.read_parquet(files, columns=["x"])["x"].value_counts(split_out=True)
                    top = vc.max()
                    smallest, = dask.compute(vc[vc == top].index.min())   # one graph: value_counts runs once
                    return int(smallest)

                def median(files: list[str]) -> float:
                    return float(dd.read_parquet(files, columns=["x"])["x"].quantile(0.5).compute())

                def once(files: list[str] = ds["files"], op: str = op) -> tuple[float, Any, dict]:
                    seconds, v = _timed(lambda: (mode if op == "mode" else median)(files))
                    return seconds, v, {}
                ch.runs(ds["label"], op, once, spec["repeat"], spec["budget"])
    finally:
        client.close()
        cl.close()


CHILDREN: dict[str, Callable[[dict, Child], None]] = {
    "ours": child_ours, "ours-parquet": child_ours, "numpy": child_numpy,
    "duckdb": child_duckdb, "polars": child_polars, "dask": child_dask,
}


def child_main(spec_text: str) -> int:
    spec = json.loads(spec_text)
    ch = Child()
    try:
        CHILDREN[spec["tool"]](spec, ch)
    except Exception as exc:   # set-up failed (a cluster that would not start): tell the parent, then fail
        ch.emit(event="fatal", message=f"{type(exc).__name__}: {exc}")
        return 1
    ch.emit(event="done")
    return 0


# -- the parent: run a child, sample its process tree ----------------------------------
class TreeSampler(threading.Thread):
    """Samples the RSS of a process and all its descendants; ``mark()`` starts a new peak."""

    def __init__(self, pid: int, interval: float = 0.02, refresh: float = 1.0) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        import psutil
        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval, self.refresh = interval, refresh
        self.procs: list[Any] = [self.root]
        self.seen: dict[int, Any] = {pid: self.root}       # every descendant ever seen (for clean-up)
        self.lock = threading.Lock()
        self.peak = 0
        self.cpu0: dict[int, float] = {}
        self.halt = threading.Event()
        self._listed = 0.0

    def _list(self) -> None:
        try:
            kids = self.root.children(recursive=True)
        except self.psutil.Error:
            kids = []
        self.procs = [self.root, *kids]
        for k in kids:
            self.seen.setdefault(k.pid, k)
        self._listed = time.monotonic()

    def sample(self) -> int:
        if time.monotonic() - self._listed > self.refresh:
            self._list()
        total = 0
        for p in self.procs:
            try:
                total += p.memory_info().rss
            except self.psutil.Error:
                pass
        with self.lock:
            self.peak = max(self.peak, total)
        return total

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()

    def _cpu(self) -> dict[int, float]:
        out = {}
        for p in self.procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except self.psutil.Error:
                pass
        return out

    def mark(self) -> None:
        """A new op starts: the peak and the CPU time count from here."""
        self._list()
        self.cpu0 = self._cpu()
        with self.lock:
            self.peak = 0
        self.sample()

    def take(self) -> tuple[int, float]:
        """The peak RSS since ``mark`` and the CPU seconds the tree spent since then."""
        self.sample()
        cpu = sum(v - self.cpu0.get(pid, 0.0) for pid, v in self._cpu().items())
        with self.lock:
            return self.peak, cpu

    def kill_all(self) -> int:
        """SIGKILL the child and every descendant seen alive (processes this benchmark started); how many."""
        self._list()
        killed = 0
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != self.psutil.STATUS_ZOMBIE:
                    p.kill()
                    killed += 1
            except self.psutil.Error:
                pass
        return killed


@dataclass
class ChildResult:
    tool: str
    startup_seconds: float | None = None
    events: list[dict] = field(default_factory=list)
    error: str | None = None


def run_child(spec: dict, log_dir: Path, timeout: float) -> ChildResult:
    out = ChildResult(spec["tool"])
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec['tool']}-{spec.get('workers', '')}.log"
    with open(log_path, "w") as errf:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf, text=True,
                                cwd=str(ROOT), bufsize=1)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        lines: queue.Queue[str | None] = queue.Queue()

        def reader() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)
        threading.Thread(target=reader, daemon=True, name="child-reader").start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.05, deadline - time.monotonic()))
                except queue.Empty:
                    out.error = f"timed out after {timeout:g} s"
                    break
                if line is None:
                    break
                if not line.startswith(PREFIX):
                    continue
                ev = json.loads(line[len(PREFIX):])
                kind = ev["event"]
                if kind == "begin":
                    sampler.mark()
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                    if ev["run"] == 0:
                        log(f"  {spec['tool']}: {ev['dataset']} {ev['op']}")
                elif kind == "end":
                    peak, ev["cpu_seconds"] = sampler.take()
                    ev["tree_peak"] = max(peak, ev.get("self_peak", 0))
                    out.events.append(ev)
                elif kind == "error":
                    log(f"  {spec['tool']}: {ev['dataset']} {ev['op']} failed: {ev['message']}")
                    out.events.append(ev)
                elif kind == "ready":
                    out.startup_seconds = ev["startup_seconds"]
                elif kind == "fatal":
                    out.error = ev["message"]
            try:
                proc.wait(timeout=60 if out.error is None else 5)
            except subprocess.TimeoutExpired:
                out.error = out.error or "did not exit"
        finally:
            sampler.halt.set()
            if proc.poll() is None:
                sampler.kill_all()
            proc.wait()
            left = sampler.kill_all()   # normally none: a child that died early may leave workers behind
            if left:
                log(f"{spec['tool']}: killed {left} leftover process(es)")
    if proc.returncode and not out.error:
        out.error = f"exited with status {proc.returncode}"
    if out.error:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        out.error += ("; " + " | ".join(tail)) if tail else ""
        log(f"{spec['tool']}: {out.error} (log: {log_path})")
    return out


# -- figures ---------------------------------------------------------------------------
def summarize(tool: str, cr: ChildResult, datasets: dict[str, Dataset]) -> list[dict]:
    """One row per (dataset, op) the child reported: median time, first run, peak, check, ours' stats."""
    rows: dict[tuple[str, str], dict] = {}
    for ev in cr.events:
        key = (ev["dataset"], ev["op"])
        row = rows.setdefault(key, {"tool": tool, "dataset": ev["dataset"], "op": ev["op"], "runs": [],
                                    "startup_seconds": cr.startup_seconds, "answers": [], "peaks": [], "cpu": [],
                                    "extras": [], "error": None})
        if ev["event"] == "error":
            row["error"] = ev["message"]
            continue
        row["runs"].append(ev["seconds"])
        row["answers"].append(ev["answer"])
        row["peaks"].append(ev["tree_peak"])
        row["cpu"].append(ev["cpu_seconds"])
        row["extras"].append(ev.get("extra") or {})
    out = []
    for (ds, op), row in rows.items():
        runs = row["runs"]
        row["first_seconds"] = runs[0] if runs else None
        timed = runs[1:] or runs
        row["median_seconds"] = statistics.median(timed) if timed else None
        row["timed_runs"] = len(runs[1:])
        cpu = row.pop("cpu")
        row["median_cpu_seconds"] = statistics.median(cpu[1:] or cpu) if cpu else None
        answers = [decode_answer(a) for a in row["answers"]]
        ref = datasets[ds].ref
        checks = [check(tool, op, a, ref) for a in answers]
        bad = [c for c in checks if c in ("MISMATCH", "approximate (≠)")]
        row["check"] = "FAILED" if not checks else (bad[0] if bad else checks[-1])
        row["answer"] = row["answers"][-1] if row["answers"] else None
        # memory from the timed runs: the cold first run also pays for imports (pyarrow in every worker)
        row["first_peak_tree_bytes"] = row["peaks"][0] if row["peaks"] else None
        row["peak_tree_bytes"] = max(row["peaks"][1:] or row["peaks"]) if row["peaks"] else None
        row["extras"] = row["extras"][1:] or row["extras"]
        if tool in OURS and row["extras"]:
            last = row["extras"][-1]
            for k in ("bytes_sent", "rounds", "busiest_link_bytes", "max_inbound_streams", "load_seconds",
                      "run_seconds", "workers", "strategy"):
                row[k] = last.get(k)
            pw = [w for e in row["extras"] for w in e["per_worker"]]
            row["worker_peak_sum_bytes"] = max(sum(w["peak_rss_bytes"] for w in e["per_worker"])
                                               for e in row["extras"])
            row["worker_peak_max_bytes"] = max(w["peak_rss_bytes"] for w in pw)
            shares = [(w["peak_rss_bytes"], w["idle_rss_bytes"], 8 * w["values"]) for w in pw if w["values"]]
            row["worker_peak_per_share"] = max(p / s for p, _, s in shares) if shares else None
            row["worker_peak_over_idle_per_share"] = max((p - i) / s for p, i, s in shares) if shares else None
            phases: dict[str, float] = {}
            for w in last["per_worker"]:
                for k, v in (w.get("phases") or {}).items():
                    phases[k] = max(phases.get(k, 0.0), v)
            row["slowest_worker_phases"] = {k: round(v, 4) for k, v in phases.items()}
        row.pop("extras")
        row.pop("peaks")
        out.append(row)
    return out


def fmt_s(x: float | None) -> str:
    return "—" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def comparison_tables(rows: list[dict], startups: dict[str, float | None]) -> str:
    ours = {(r["dataset"], r["op"]): r["median_seconds"] for r in rows if r["tool"] == "ours"}
    order = {t: i for i, t in enumerate(TOOLS)}
    names = list(dict.fromkeys(r["dataset"] for r in rows))      # the order they were asked for
    rows = sorted(rows, key=lambda r: (names.index(r["dataset"]), ROW_ORDER.index(r["op"]), order[r["tool"]]))
    body = []
    for r in rows:
        mine = ours.get((r["dataset"], r["op"]))
        ratio = (f"{r['median_seconds'] / mine:.2f}" if mine and r["median_seconds"] is not None else "—")
        op = r["op"] + (f" ({r['strategy']})" if r["op"] == "topk" and r.get("strategy") else "")
        body.append([r["tool"], r["dataset"], op, fmt_s(r["median_seconds"]),
                     f"{r['timed_runs']}" if r["median_seconds"] is not None else "—",
                     fmt_s(r["first_seconds"]), ratio, fmt_s(r["median_cpu_seconds"]),
                     human_bytes(r["peak_tree_bytes"]),
                     human_bytes(r.get("bytes_sent")) if r["tool"] in OURS else "—",
                     str(r.get("rounds", "—")) if r["tool"] in OURS else "—",
                     r["check"] if not r["error"] else f"{r['check']}: {r['error'][:80]}"])
    out = ["ratio = theirs ÷ ours: the tool's median time divided by our cluster's (`ours`, .npy) median "
           "time on the same dataset and op; above 1 means we are faster. Times include reading the files; "
           "start-up excluded. 'first' is the cold first run, not in the median; memory is the peak over "
           "the timed runs; CPU s is the whole process tree's user+system time (median run).", "",
           md_table(["tool", "dataset", "op", "median s", "runs", "first s", "theirs÷ours", "CPU s",
                     "peak RSS (tree)",
                     "bytes moved", "rounds", "check vs numpy"], body)]
    others = [t for t in TOOLS if t != "ours" and any(r["tool"] == t for r in rows)]
    cells = {(r["dataset"], r["op"], r["tool"]): r for r in rows}
    keys = list(dict.fromkeys((r["dataset"], r["op"]) for r in rows if r["tool"] == "ours"))
    if keys and others:
        def ratio_cell(ds: str, op: str, tool: str) -> str:
            r, mine = cells.get((ds, op, tool)), ours.get((ds, op))
            if r is None or r["median_seconds"] is None or not mine:
                return "—"
            return f"{r['median_seconds'] / mine:.2f}" + ("" if r["check"].startswith("match") else f" ({r['check']})")
        out += ["", "In short (theirs ÷ ours; above 1: we are faster):", "",
                md_table(["dataset", "op", "ours s", *others],
                         [[ds, op, fmt_s(ours[(ds, op)]), *(ratio_cell(ds, op, t) for t in others)]
                          for ds, op in keys])]
    mine = [r for r in rows if r["tool"] in OURS and r["median_seconds"] is not None]
    if mine:
        out += ["", "Our cluster, per job (worker figures are the workers' own per-job peaks; share = the "
                    "worker's values × 8 bytes; idle = its RSS just before the job):", "",
                md_table(["tool", "dataset", "op", "load s", "run s", "slowest phases s",
                          "worker peak sum", "worker peak max", "max peak ÷ share", "max (peak−idle) ÷ share",
                          "busiest link", "max inbound streams"],
                         [[r["tool"], r["dataset"], r["op"], fmt_s(r.get("load_seconds")), fmt_s(r.get("run_seconds")),
                           ", ".join(f"{k} {v:.3f}" for k, v in (r.get("slowest_worker_phases") or {}).items()),
                           human_bytes(r.get("worker_peak_sum_bytes")), human_bytes(r.get("worker_peak_max_bytes")),
                           f"{r['worker_peak_per_share']:.2f}" if r.get("worker_peak_per_share") else "—",
                           f"{r['worker_peak_over_idle_per_share']:.2f}"
                           if r.get("worker_peak_over_idle_per_share") is not None else "—",
                           human_bytes(r.get("busiest_link_bytes")), str(r.get("max_inbound_streams", "—"))]
                          for r in mine])]
    ups = [f"{t} {s:.2f} s" for t, s in startups.items() if s]
    if ups:
        out += ["", "Start-up (excluded from the times above): " + ", ".join(ups)]
    return "\n".join(out)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("numpy", "duckdb", "polars", "pyarrow", "dask", "distributed", "pandas", "psutil", "uvloop"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def missing(tool: Tool) -> list[str]:
    return [m for m in tool.modules if importlib.util.find_spec(m) is None]


# -- main ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=parse_count, default=10_000_000, help="values per dataset (default 10M; 1e8 for 100M)")
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=ROOT / "bench-data", help="dataset cache (default bench-data/)")
    p.add_argument("--tools", type=csv_list(tuple(TOOLS)), default=list(TOOLS),
                   help=f"comma-separated subset of {','.join(TOOLS)} (default all)")
    p.add_argument("--ops", type=csv_list(OPS), default=None, help="default: all (mode with --zipf-sweep)")
    p.add_argument("--datasets", type=csv_list(DATASETS, HZIPF), default=None,
                   help=f"default: {', '.join(DATASETS)} (the comparison), unique-dup (--scaling); "
                        "hzipf-EXPONENT-RANGE for a heavy-tailed zipf over [0, RANGE) (int64: the whole range)")
    p.add_argument("--zipf-sweep", action="store_true",
                   help=f"the comparison over hzipf at exponents {', '.join(SWEEP_EXPONENTS)} and ranges "
                        f"{', '.join(SWEEP_RANGES)} (with --datasets: those too); --ops defaults to mode")
    p.add_argument("--k", type=int, default=100, help="topk: how many values (default 100)")
    p.add_argument("--workers", type=int, default=10, help="our workers and Dask's worker processes (default 10)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="run every tool on one dataset before the next (default with --zipf-sweep): load changes "
                        "during the run fall on all tools alike")
    p.add_argument("--repeat", type=int, default=3, help="timed runs after the first (default 3)")
    p.add_argument("--budget", type=float, default=120.0,
                   help="stop repeating an op once it has spent this many seconds (at least one timed run)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one tool may take in all")
    p.add_argument("--json", action="store_true", help="print the raw figures as one JSON object")
    p.add_argument("--json-out", type=Path, help="also write the raw figures (JSON) to this file")
    p.add_argument("--scaling", action="store_true", help="instead of the comparison: ours at several worker "
                   "counts and sizes")
    p.add_argument("--scaling-workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 5, 10])
    p.add_argument("--scaling-rows", type=lambda s: [parse_count(x) for x in s.split(",")],
                   default=[10_000_000, 30_000_000, 100_000_000])
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def compare(args: argparse.Namespace) -> tuple[dict, str, bool]:
    datasets_wanted = args.datasets or ([] if args.zipf_sweep else list(DATASETS))
    if args.zipf_sweep:
        datasets_wanted += [f"hzipf-{a}-{r}" for a in SWEEP_EXPONENTS for r in SWEEP_RANGES
                            if f"hzipf-{a}-{r}" not in datasets_wanted]
    tools = [TOOLS[t] for t in args.tools]
    skipped = {t.name: f"not installed: pip install {t.pip}" for t in tools if missing(t)}
    runnable = [t for t in tools if t.name not in skipped]
    parquet = any(t.fmt == "parquet" for t in runnable)
    datasets = {d: ensure_dataset(args.data_dir, d, args.rows, args.shards, args.seed, parquet, args.k)
                for d in datasets_wanted}
    rows: list[dict] = []
    startups: dict[str, float | None] = {}
    failed: dict[str, str] = {}
    # --interleave: every tool on one dataset, then the next dataset, so a change in the machine's load during
    # the run falls on every tool's cells alike rather than on whichever tool ran then (a child per dataset
    # and tool; start-ups are timed apart and excluded as always)
    groups = [[d] for d in datasets] if args.interleave else [list(datasets)]
    for group in groups:
        for t in runnable:
            if t.name in failed:
                continue
            log(f"{t.name}: {t.what}" + (f" ({group[0]})" if args.interleave else ""))
            spec = {"tool": t.name, "ops": args.ops, "repeat": args.repeat, "budget": args.budget,
                    "workers": args.workers, "k": args.k,
                    "datasets": [{"label": datasets[d].label, "dir": str(datasets[d].dir / t.fmt),
                                  "files": datasets[d].files(t.fmt)} for d in group]}
            cr = run_child(spec, args.data_dir / "logs", args.timeout)
            startups[t.name] = cr.startup_seconds
            if cr.error:
                failed[t.name] = cr.error
            rows += summarize(t.name, cr, {d: datasets[d] for d in group})
    bad = any(r["check"] == "MISMATCH" for r in rows) or any(
        r["tool"] in OURS and (r["error"] or r["check"] == "FAILED") for r in rows) or any(t in OURS for t in failed)
    doc = {"config": {"rows": args.rows, "shards": args.shards, "seed": args.seed, "workers": args.workers, "k": args.k,
                      "repeat": args.repeat, "budget": args.budget, "ops": args.ops, "datasets": datasets_wanted,
                      "tools": args.tools, "cpus": os.cpu_count()},
           "versions": versions(), "convention": "ratio = tool median seconds / ours median seconds",
           "startup_seconds": startups, "skipped": skipped, "failed": failed, "results": rows,
           "data": {d: str(ds.dir) for d, ds in datasets.items()},
           "references": {d: ds.ref | {"ties": ds.ref["ties"][:10], "topk": ds.ref["topk"][:10]}
                          for d, ds in datasets.items()}}
    text = [f"{human_count(args.rows)} rows ({args.rows:,}) in {args.shards} shards, {args.workers} workers, "
            f"median of up to {args.repeat} runs, {os.cpu_count()} CPUs",
            "versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()), "",
            comparison_tables(rows, startups)]
    for name, why in skipped.items():
        text.append(f"skipped {name}: {why}")
    for name, why in failed.items():
        text.append(f"FAILED {name}: {why}")
    return doc, "\n".join(text), bad


def scaling(args: argparse.Namespace) -> tuple[dict, str, bool]:
    if missing(TOOLS["ours"]):
        raise SystemExit(f"--scaling needs: pip install {TOOLS['ours'].pip}")
    datasets_wanted = args.datasets or ["unique-dup"]
    data = {(d, n): ensure_dataset(args.data_dir, d, n, args.shards, args.seed, False, args.k)
            for d in datasets_wanted for n in args.scaling_rows}
    rows: list[dict] = []
    startups: dict[str, float | None] = {}
    bad = False
    for w in args.scaling_workers:
        spec = {"tool": "ours", "ops": args.ops, "repeat": args.repeat, "budget": args.budget, "workers": w, "k": args.k,
                "datasets": [{"label": f"{d}@{n}", "dir": str(ds.dir / "npy"), "files": []}
                             for (d, n), ds in data.items()]}
        log(f"ours at {w} workers")
        cr = run_child(spec, args.data_dir / "logs", args.timeout)
        startups[str(w)] = cr.startup_seconds
        bad |= cr.error is not None
        by_label = {f"{d}@{n}": ds for (d, n), ds in data.items()}
        for r in summarize("ours", cr, by_label):
            d, n = r["dataset"].split("@")
            r.update(dataset=d, rows=int(n), workers=w)
            bad |= r["check"] != "match"
            rows.append(r)
    rows.sort(key=lambda r: (r["dataset"], ROW_ORDER.index(r["op"]), r["rows"], r["workers"]))
    body = [[r["dataset"], r["op"], human_count(r["rows"]), str(r["workers"]), fmt_s(r["median_seconds"]),
             f"{r['median_seconds'] / r['rows'] * 1e9:.0f}" if r["median_seconds"] else "—",
             fmt_s(r["median_cpu_seconds"]),
             human_bytes(r.get("bytes_sent")), str(r.get("rounds", "—")),
             f"{r['worker_peak_per_share']:.2f}" if r.get("worker_peak_per_share") else "—",
             f"{r['worker_peak_over_idle_per_share']:.2f}"
             if r.get("worker_peak_over_idle_per_share") is not None else "—", r["check"]]
            for r in rows]
    text = "\n".join([f"Our cluster: scaling, median of up to {args.repeat} runs, {os.cpu_count()} CPUs "
                      f"(all workers on this one machine)", "",
                      md_table(["dataset", "op", "rows", "workers", "median s", "ns per value", "CPU s",
                                "bytes moved",
                                "rounds", "max worker peak ÷ share", "max (peak−idle) ÷ share", "check"], body), "",
                      "Start-up by workers: " + ", ".join(f"{w}: {s:.2f} s" for w, s in startups.items() if s)])
    doc = {"config": {"scaling_workers": args.scaling_workers, "scaling_rows": args.scaling_rows,
                      "shards": args.shards, "seed": args.seed, "repeat": args.repeat, "ops": args.ops,
                      "datasets": datasets_wanted, "cpus": os.cpu_count()},
           "versions": versions(), "startup_seconds": startups, "scaling": rows}
    return doc, text, bad


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    if args.repeat < 1 or args.workers < 1 or args.shards < 2:
        raise SystemExit("--repeat and --workers must be at least 1, --shards at least 2")
    if importlib.util.find_spec("psutil") is None:   # the parent samples every tool's memory with it
        raise SystemExit("the benchmark needs psutil: .venv/bin/pip install -e '.[bench]' (or pip install psutil)")
    args.data_dir = args.data_dir.resolve()
    if args.ops is None:
        args.ops = ["mode"] if args.zipf_sweep else list(OPS)
    if args.interleave is None:
        args.interleave = args.zipf_sweep
    doc, text, bad = (scaling if args.scaling else compare)(args)
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
    else:
        print(text)
    if bad:
        log("some answer did not match, or our cluster failed (see above)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
