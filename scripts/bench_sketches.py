#!/usr/bin/env python3
"""The sketches' goals (issue 26), measured: estimates against their stated bounds, bytes on the wire, speed.

``cases``: randomized cases -- a distribution (unique-dup, Zipf, floats, strings), a size, a
number of ranks (values split unevenly, some ranks empty, duplicates across ranks) and a kind
of sketch -- each run through the ``sketch`` op on the in-memory network, its answer compared
with the exact one from numpy / collections.Counter, against the bound the answer states:

  kll        every asked quantile's true normalized rank error <= the rank error bound (99%)
  frequent   every listed count in [lower, upper]; every value above the maximum error listed
  hll        |estimate - distinct| <= 3 relative standard errors (99.7%)
  theta, cpc lower <= distinct <= upper (3 standard deviations, 99.7%)
  count_min  truth <= estimate <= truth + eps * N for every asked value (each at 1 - e**-5)
  bloom      every present value answered "maybe" (no false negatives)
  tdigest    no stated bound: its rank error is reported, not judged

and the largest number of bytes any rank sent (the goal: <= 64 KiB per worker).

``median``: approximate median (sampled, as auto picks, and of every value) vs our exact median
vs DuckDB's ``approx_quantile`` (and exact ``quantile_disc``) vs Spark's ``percentile_approx``, all
from the same Parquet files, ours also from .npy copies of them; interleaved rounds, wall and CPU.

``sampled``: the sampled median's answers on random datasets (unique-dup, Zipf, negatives, int64 extremes,
all-equal, sorted, floats) of millions of values against numpy, each within the bound it states.

``sample-cost``: one rank's ns a value for KLL of every value, of a sample drawn three ways, and numpy's exact
partition, from a memory-mapped .npy.

``merge30``: 30 daily KLL sketch files (of every value, or ``--sample-rate 1/N`` samples) merged and
asked p50/p99, in process and through the CLI.

    python scripts/bench_sketches.py cases --cases 200 --max-size 200000
    python scripts/bench_sketches.py median --rows 1e8 --workers 4 --rounds 3 --base-port 7600
    python scripts/bench_sketches.py merge30 --rows-per-day 1000000
    python scripts/bench_sketches.py groupby --data /tmp/shardstats-bench/G1_1e7_1e2_0_0 --by id3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DISTS = ("unique-dup", "zipf", "floats", "strings")
KINDS = {"unique-dup": ("kll", "frequent", "hll", "theta", "cpc", "count_min", "bloom", "tdigest"),
         "zipf": ("kll", "frequent", "hll", "theta", "cpc", "count_min", "bloom", "tdigest"),
         "floats": ("kll", "frequent", "hll", "theta", "cpc", "count_min", "bloom", "tdigest"),
         "strings": ("frequent", "hll", "theta", "cpc", "count_min", "bloom")}
WIRE_GOAL = 64 << 10


def run_sketch(parts: list, params: dict) -> tuple[dict, int]:
    """The ``sketch`` op on one in-memory rank per part; (rank 0's result, the most bytes any rank sent)."""
    from shardstats.testing import run_on_ranks
    out, net = run_on_ranks("sketch", parts, params, timeout=60)
    return out[0][0], max(sum(c.stats.bytes_sent) for c in net.comms)


def make_values(dist: str, n: int, rng: np.random.Generator):
    """(values as a list for the reference, an Arrow column of them)."""
    import pyarrow as pa
    if dist == "unique-dup":
        v = rng.permutation(n).astype(np.int64) * int(rng.integers(1, 1 << 20)) - int(rng.integers(0, 1 << 40))
        dup = rng.integers(0, n, max(1, n // 20))
        v[dup] = v[rng.integers(0, n, len(dup))]
        if n > 3:
            v[:2] = [np.iinfo(np.int64).min, np.iinfo(np.int64).max]
        return v, pa.array(v)
    if dist == "zipf":
        v = np.minimum(rng.zipf(float(rng.uniform(1.1, 2.5)), n), 1 << 50).astype(np.int64)
        return v, pa.array(v)
    if dist == "floats":
        kind = int(rng.integers(0, 3))
        v = rng.normal(0, 10 ** float(rng.uniform(-3, 6)), n) if kind == 0 else \
            rng.lognormal(0, 2, n) if kind == 1 else np.round(rng.uniform(-50, 50, n), int(rng.integers(0, 4)))
        return v, pa.array(v)
    ids = np.minimum(rng.zipf(float(rng.uniform(1.2, 2.0)), n), 10 ** 9) if rng.random() < 0.6 else \
        rng.integers(0, max(1, n // int(rng.integers(1, 4))), n)
    strs = [f"s{x}-é" if x % 7 == 0 else f"s{x}" for x in ids.tolist()]
    return strs, pa.array(strs, pa.large_string())


def split_table(col, ranks: int, rng: np.random.Generator) -> list:
    """Uneven contiguous parts (so equal values land on several ranks), some possibly empty, as tables."""
    import pyarrow as pa
    cuts = np.sort(rng.integers(0, len(col) + 1, ranks - 1)) if ranks > 1 else np.array([], np.int64)
    edges = [0, *cuts.tolist(), len(col)]
    return [pa.table({"c": col.slice(a, b - a)}) for a, b in zip(edges, edges[1:])]


def judge(kind: str, values, res: dict, asked: dict) -> tuple[bool | None, float, float, str]:
    """(within the bound (None: no bound stated), the worst error, the bound, the unit)."""
    if kind in ("kll", "tdigest"):
        s = np.sort(np.asarray(values, np.float64))
        n = len(s)
        worst = 0.0
        for q, a in res["quantiles"].items():
            r, v = float(q), a["value"]
            lo, hi = np.searchsorted(s, float(v), "left") / n, np.searchsorted(s, float(v), "right") / n
            worst = max(worst, 0.0 if lo <= r <= hi else min(abs(r - lo), abs(r - hi)))
        if kind == "tdigest":
            return None, worst, float("nan"), "rank"
        return bool(worst <= res["rank_error_bound"] + 1e-12), float(worst), res["rank_error_bound"], "rank"
    counts = Counter(values.tolist() if isinstance(values, np.ndarray) else values)
    distinct = len(counts)
    if kind == "frequent":
        listed = {i["value"]: i for i in res["items"]}
        ok = all(i["lower"] <= counts[v] <= i["upper"] for v, i in listed.items())
        ok = ok and all(v in listed for v, c in counts.items() if c > res["max_error"])
        worst = max((abs(i["estimate"] - counts[v]) for v, i in listed.items()), default=0)
        return bool(ok), worst, res["max_error"], "count"
    if kind == "hll":
        err = abs(res["value"] - distinct) / max(1, distinct)
        return bool(err <= 3 * res["relative_standard_error"]), err, 3 * res["relative_standard_error"], "relative"
    if kind in ("theta", "cpc"):
        err = abs(res["value"] - distinct) / max(1, distinct)
        bound = (res["upper"] - res["lower"]) / 2 / max(1, res["value"])
        return bool(res["lower"] <= distinct <= res["upper"]), err, bound, "relative"
    if kind == "count_min":
        n = res["total"]
        worst, ok = 0.0, True
        for v, c in zip(asked["values"], res["counts"]):
            over = c["estimate"] - counts.get(v, 0)
            ok = ok and 0 <= over <= res["relative_error"] * n
            worst = max(worst, over / max(1, n))
        return bool(ok), worst, res["relative_error"], "share of N"
    said = [c["maybe"] for c in res["contains"]]
    return bool(all(said[:asked["present"]])), 1 - float(np.mean(said[:asked["present"]] or [1])), 0.0, "false negatives"


def one_case(i: int, max_size: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, i])
    dist = DISTS[i % len(DISTS)]
    n = int(rng.integers(1, max_size + 1)) if rng.random() < 0.9 else int(rng.integers(1, 5))
    kind = KINDS[dist][int(rng.integers(0, len(KINDS[dist])))]
    values, col = make_values(dist, n, rng)
    ranks = int(rng.integers(1, 9))
    params: dict = {"kind": kind, "of": "c"}
    asked: dict = {}
    if kind in ("kll", "tdigest"):
        qs = sorted({round(float(x), 4) for x in rng.random(4)} | {0.5, 0.99})
        params["quantiles"] = ",".join(map(str, qs))
    elif kind == "frequent":
        params.update(top=1_000_000, lg_max_k=int(rng.integers(6, 11)))
    elif kind in ("theta", "cpc"):
        params["lg_k"] = int(rng.integers(8, 13))
    elif kind in ("count_min", "bloom"):
        pool = values.tolist() if isinstance(values, np.ndarray) else list(values)
        present = [pool[j] for j in rng.integers(0, len(pool), 10)]
        absent = [f"absent-{j}" for j in range(5)] if dist == "strings" else \
            [0.123456789 + j for j in range(5)] if dist == "floats" else [(1 << 61) + j for j in range(5)]
        asked = {"values": present + absent, "present": len(present)}
        text = [repr(v) if isinstance(v, float) else str(v) for v in present + absent]
        params["count" if kind == "count_min" else "contains"] = text
        if kind == "count_min":
            params["buckets"] = int(2 ** rng.integers(6, 11))      # 5 x 1024 x 8 B = 40 KiB at most
    t = time.perf_counter()
    res, wire = run_sketch(split_table(col, ranks, rng), params)
    seconds = time.perf_counter() - t
    ok, worst, bound, unit = judge(kind, values, res, asked)
    return {"case": i, "dist": dist, "n": n, "ranks": ranks, "kind": kind, "within": ok, "error": worst,
            "bound": bound, "unit": unit, "sketch_bytes": res["sketch_bytes"], "wire_bytes": wire,
            "seconds": round(seconds, 4)}


def run_cases(cases: int, max_size: int, seed: int = 26) -> dict:
    rows = [one_case(i, max_size, seed) for i in range(cases)]
    judged = [r for r in rows if r["within"] is not None]
    by_kind: dict = {}
    for r in rows:
        k = by_kind.setdefault(r["kind"], {"cases": 0, "within": 0, "judged": 0, "max_error": 0.0, "max_bound": 0.0,
                                           "unit": r["unit"], "max_wire_bytes": 0, "max_sketch_bytes": 0})
        k["cases"] += 1
        k["judged"] += r["within"] is not None
        k["within"] += bool(r["within"])
        k["max_error"] = max(k["max_error"], r["error"])
        if r["bound"] == r["bound"]:
            k["max_bound"] = max(k["max_bound"], r["bound"])
        k["max_wire_bytes"] = max(k["max_wire_bytes"], r["wire_bytes"])
        k["max_sketch_bytes"] = max(k["max_sketch_bytes"], r["sketch_bytes"])
    return {"cases": len(rows), "judged": len(judged), "within": sum(bool(r["within"]) for r in judged),
            "max_wire_bytes": max(r["wire_bytes"] for r in rows), "by_kind": by_kind,
            "failures": [r for r in judged if not r["within"]], "rows": rows}


# ---- median: ours (approx, exact) vs DuckDB vs Spark, from the same files -------------------------------

def write_parquet(out: Path, rows: int, shards: int, seed: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    out.mkdir(parents=True, exist_ok=True)
    if (out / "_done").exists():
        return out
    for s in range(shards):
        rng = np.random.default_rng([seed, s])
        n = rows // shards + (s < rows % shards)
        v = rng.permutation(n).astype(np.int64) * shards + s         # unique-dup: unique, a few repeated
        v[rng.integers(0, n, n // 100)] = v[0]
        pq.write_table(pa.table({"x": v}), out / f"part-{s:02d}.parquet", row_group_size=1 << 20)
    (out / "_done").write_text("")
    return out


def _cli(*args: str, cwd: Path) -> tuple[float, dict]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "shardstats.cluster.cli", *args, "--json"], capture_output=True,
                       text=True, cwd=cwd, timeout=3600)
    if r.returncode:
        raise SystemExit(r.stderr)
    return time.perf_counter() - t, json.loads(r.stdout)


def _cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (0 for one that is gone)."""
    from scripts.bench_keyed_s3 import cpu_seconds
    return cpu_seconds(pids)


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _self_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


OURS = {"ours_approx": ["--approx"], "ours_approx_full": ["--approx", "--sample-rate", "1"], "ours_exact": []}
OURS_NPY = {"ours_approx_npy": ["--approx"], "ours_exact_npy": []}


def write_npy(parquet: Path) -> Path:
    """The same values as .npy shards (the cluster's own int64 format, memory-mapped at the load), one per file."""
    import pyarrow.parquet as pq
    out = parquet.parent / (parquet.name + "-npy")
    out.mkdir(exist_ok=True)
    if not (out / "_done").exists():
        for f in sorted(parquet.glob("*.parquet")):
            np.save(out / (f.stem + ".npy"), pq.read_table(f, columns=["x"]).column("x").to_numpy())
        (out / "_done").write_text("")
    return out


def bench_median(rows: int, workers: int, seed: int, spark: bool, rounds: int, base_port: int) -> dict:
    """Every tool once per round, in an order rotated each round (a load change falls on all alike), from the same
    Parquet files: ours on one ``cluster up`` (started once; job seconds from its stats, wall with the client's
    start, CPU of the workers and the client), DuckDB in this process (its CPU: this process's), Spark
    ``local[2]`` (session started once; CPU: the JVM's).  Medians over the rounds, and theirs / ours_approx.
    Ours also runs on the same values as .npy shards (memory-mapped at the load, so the job is the op itself)."""
    import duckdb
    base = Path(tempfile.gettempdir()) / "shardstats-bench" / f"sketch-median-{rows}-{workers}"
    d = write_parquet(base, rows, workers, seed)
    out: dict = {"rows": rows, "workers": workers, "files": str(d), "rounds": rounds, "runs": {}}
    cf = str(base.parent / f"bench-cluster-{base_port}.json")
    subprocess.run([sys.executable, "-m", "shardstats.cluster.cli", "up", "--workers", str(workers), "--base-port",
                    str(base_port), "--no-http", "--detach", "--cluster-file", cf, "--log-dir",
                    str(base.parent / "logs"), "--spill-dir", str(base.parent / "spill")], check=True, timeout=120,
                   capture_output=True)
    sess = None
    try:
        pids = json.loads(Path(cf).read_text())["pids"]
        con = duckdb.connect()
        out["duckdb_threads"] = con.execute("SELECT current_setting('threads')").fetchone()[0]
        files = str(d / "*.parquet")

        npy = write_npy(d)

        def ours(extra, where=d):
            c0, k0 = _cpu(pids), _children_cpu()
            column = ["--column", "x"] if where == d else []
            wall, doc = _cli("submit", "median", "--cluster-file", cf, *column, "--input", str(where), *extra,
                             cwd=d)
            st = doc.get("stats") or {}
            res = doc["result"]
            return {"value": res["value"], "seconds": st.get("seconds"), "wall_with_client": round(wall, 3),
                    "cpu": round(_cpu(pids) - c0, 3), "client_cpu": round(_children_cpu() - k0, 3),
                    "load_seconds": st.get("load_seconds"),
                    "run_seconds": st.get("run_seconds"),
                    "max_bytes_sent_by_a_worker": max((w.get("bytes_sent", 0) for w in st.get("per_worker") or []),
                                                      default=None),
                    "bound": res.get("rank_error_bound"), "sample_rate": res.get("sample_rate", 1.0),
                    "sampled": res.get("sampled")}

        def duck(sql):
            def run():
                c0, t = _self_cpu(), time.perf_counter()
                v = con.execute(sql, [files]).fetchone()[0]
                return {"value": v, "seconds": round(time.perf_counter() - t, 3), "cpu": round(_self_cpu() - c0, 3)}
            return run

        tools = {name: (lambda e=extra: ours(e)) for name, extra in OURS.items()}
        tools.update({name: (lambda e=extra: ours(e, npy)) for name, extra in OURS_NPY.items()})
        tools["duckdb_approx_quantile"] = duck("SELECT approx_quantile(x, 0.5) FROM read_parquet(?)")
        tools["duckdb_exact_quantile_disc"] = duck("SELECT quantile_disc(x, 0.5) FROM read_parquet(?)")
        if spark:
            sess, jvm = _spark_session()
            out["spark_session_start_seconds"] = sess[1]

            def spark_run():
                from pyspark.sql import functions as F
                c0, t = _cpu(jvm), time.perf_counter()
                v = sess[0].read.parquet(str(d)).agg(F.percentile_approx("x", 0.5, 10000)).collect()[0][0]
                return {"value": v, "seconds": round(time.perf_counter() - t, 3), "cpu": round(_cpu(jvm) - c0, 3),
                        "accuracy": 10000}
            tools["spark_percentile_approx"] = spark_run
        ours(["--approx"])                               # warm: the workers import the sketch library once
        names = list(tools)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                out["runs"].setdefault(name, []).append(tools[name]())
        out["load_average_after"] = os.getloadavg()
    finally:
        if sess is not None:
            sess[0].stop()
        subprocess.run([sys.executable, "-m", "shardstats.cluster.cli", "down", "--cluster-file", cf], timeout=120,
                       capture_output=True)
    med = lambda xs: float(np.median([x for x in xs if x is not None])) if xs else None  # noqa: E731
    summary = {name: {"seconds": med([x["seconds"] for x in runs]), "cpu": med([x["cpu"] for x in runs]),
                      "value": runs[-1]["value"]} for name, runs in out["runs"].items()}
    ref = summary["ours_approx"]
    for name, s in summary.items():
        r = summary["ours_approx_npy"] if name.endswith("_npy") else ref       # .npy against .npy
        s["seconds_ratio_to_ours_approx"] = round(s["seconds"] / r["seconds"], 2)
        s["cpu_ratio_to_ours_approx"] = round(s["cpu"] / r["cpu"], 2) if r["cpu"] else None
    out["summary"] = summary
    return out


def _spark_session():
    """A local[2] Spark session, (session, its start seconds), and the JVM's pid(s) for its CPU."""
    import psutil
    t0 = time.perf_counter()
    from pyspark.sql import SparkSession
    spark = SparkSession.builder.master("local[2]").appName("sketch-bench").config("spark.ui.enabled", "false") \
        .config("spark.driver.memory", "3g").getOrCreate()
    jvm = [p.pid for p in psutil.Process().children(recursive=True) if "java" in (p.name() or "")]
    return (spark, round(time.perf_counter() - t0, 3)), jvm


# ---- groupby's approximate aggregates vs DuckDB's, on db-benchmark data ------------------------------------

def bench_groupby(data: Path, workers: int, by: str) -> dict:
    """approx_median(v3) and approx_distinct(id1) per ``by`` key: ours (the sketch per key), ours exact, DuckDB's
    approx_quantile / approx_count_distinct and exact median / count(DISTINCT), from the same Parquet files."""
    import duckdb
    out: dict = {"data": str(data), "workers": workers, "by": by}
    dest = Path(tempfile.mkdtemp(prefix="sketch-groupby-"))
    for name, aggs in (("ours_approx", ["approx_median(v3)", "approx_distinct(id1)"]),
                       ("ours_exact", ["median(v3)", "distinct(id1)"])):
        args = ["submit", "groupby", "--input", str(data), "--by", by, "--local", str(workers),
                "--out", str(dest / name), "--overwrite"]
        for a in aggs:
            args += ["--agg", a]
        wall, doc = _cli(*args, cwd=dest)
        st = doc.get("stats") or {}
        out[name] = {"wall_seconds_with_startup": round(wall, 3),
                     **{k: st.get(k) for k in ("seconds", "load_seconds", "run_seconds", "bytes_sent", "shuffled_bytes")}}
    con = duckdb.connect(config={"threads": 2})
    files = str(data / "*.parquet")
    for name, sql in (("duckdb_approx", f"SELECT {by}, approx_quantile(v3, 0.5), approx_count_distinct(id1) FROM "
                                        f"read_parquet('{files}') GROUP BY {by}"),
                      ("duckdb_exact", f"SELECT {by}, median(v3), count(DISTINCT id1) FROM read_parquet('{files}') "
                                       f"GROUP BY {by}")):
        t = time.perf_counter()
        rows = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
        out[name] = {"seconds": round(time.perf_counter() - t, 3), "groups": rows, "threads": 2}
    return out


# ---- the sampled median (``median --approx``, ``--sample-rate``): estimates against numpy at scale ----------

SAMPLED_QS = ("0", "0.01", "0.25", "0.5", "0.9", "0.99", "1")


def worst_rank_error(values: np.ndarray, res: dict) -> float:
    """The largest true normalized rank error of the answer's median and quantiles, in the sketch's order (float64)."""
    from shardstats.sketches import true_rank_error
    s = np.sort(np.asarray(values, np.float64))
    answers = [(0.5, res["value"])] + [(float(q), a["value"]) for q, a in (res.get("quantiles") or {}).items()]
    worst = 0.0
    for r, v in answers:
        x = float(v) if abs(v) < 2 ** 63 - 1024 else float(np.float64(v))
        lo, hi = np.searchsorted(s, x, "left"), np.searchsorted(s, x, "right")
        worst = max(worst, true_rank_error(r, int(lo), int(hi), len(s)))
    return worst


def sampled_data(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "unique-dup":
        v = rng.permutation(n).astype(np.int64) * int(rng.integers(1, 1 << 20)) - int(rng.integers(0, 1 << 40))
        v[rng.integers(0, n, max(1, n // 20))] = v[rng.integers(0, n)]
        return v
    if kind == "zipf":
        return np.minimum(rng.zipf(float(rng.uniform(1.1, 2.5)), n), 1 << 50).astype(np.int64)
    if kind == "negatives":
        return -rng.integers(1, 10 ** int(rng.integers(1, 16)), n, dtype=np.int64)
    if kind == "extremes":
        v = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, endpoint=True, dtype=np.int64)
        v[rng.integers(0, n, max(1, n // 10))] = rng.choice([np.iinfo(np.int64).min, np.iinfo(np.int64).max, np.iinfo(np.int64).min + 1, np.iinfo(np.int64).max - 1, 0])
        return v
    if kind == "all-equal":
        return np.full(n, int(rng.integers(-5, 5)), np.int64)
    if kind == "sorted":                  # an adversarial order: each rank holds one end of the range
        return np.sort(rng.integers(-10 ** 9, 10 ** 9, n, dtype=np.int64))
    return rng.normal(0, 10 ** float(rng.uniform(-3, 6)), n)          # floats


SAMPLED_KINDS = ("unique-dup", "zipf", "negatives", "extremes", "all-equal", "sorted", "floats")


def sampled_median(values: np.ndarray, shards: int, workers: int, params: dict) -> dict:
    """median --approx on ``workers`` in-memory ranks holding ``shards`` contiguous pieces (floats: as --of tables)."""
    pieces = np.array_split(values, shards)
    from shardstats.testing import run_on_ranks
    if values.dtype == np.float64:
        import pyarrow as pa
        parts = [pa.table({"c": np.concatenate(pieces[r::workers]) if pieces[r::workers] else np.zeros(0)})
                 for r in range(workers)]
        out, _ = run_on_ranks("median", parts, {**params, "of": "c"}, timeout=600)
        return out[0][0]
    parts = [np.concatenate(pieces[r::workers]).astype(np.int64) if pieces[r::workers] else np.zeros(0, np.int64)
             for r in range(workers)]
    out, _ = run_on_ranks("median", parts, params, timeout=600)
    return out[0][0]


def run_sampled(cases: int, min_size: int, max_size: int, seed: int, rate: str) -> dict:
    """``cases`` random datasets of every kind through ``median --approx`` (``rate``: auto or 1/N) on 1-6
    in-memory ranks: each answer's worst true rank error against the bound it states."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(cases):
        kind = SAMPLED_KINDS[i % len(SAMPLED_KINDS)]
        n = int(rng.integers(min_size, max_size + 1))
        values = sampled_data(kind, n, rng)
        shards, workers = int(rng.integers(1, 10)), int(rng.integers(1, 7))
        res = sampled_median(values, shards, workers, {"approx": True, "quantiles": ",".join(SAMPLED_QS),
                                                       "sample_rate": rate})
        err = worst_rank_error(values, res)
        rows.append({"kind": kind, "n": n, "workers": workers, "sample_rate": res.get("sample_rate", 1.0),
                     "sampled": res.get("sampled"), "worst_rank_error": err, "bound": res["rank_error_bound"],
                     "within": bool(err <= res["rank_error_bound"])})
    return {"cases": cases, "within": sum(r["within"] for r in rows),
            "max_error_over_bound": max(r["worst_rank_error"] / r["bound"] for r in rows), "rows": rows}


def sample_costs(rows: int, rate: float, repeats: int, seed: int) -> dict:
    """ns a value, wall and CPU, of one rank's ways to a quantile sketch of ``rows`` int64 values read from a .npy
    memory map (mapped afresh each time, so the page faults of the read count; the page cache is warm): KLL of
    every value, KLL of a Bernoulli sample by a uniform draw per value (``random(n) < p``), by ``choice`` without
    replacement, by geometric gaps (``sketches.bernoulli_sample``), and numpy's exact ``partition``; each method
    once a round in turn, the median over ``repeats`` rounds."""
    from shardstats import sketches as sk
    d = Path(tempfile.mkdtemp(prefix="sample-cost-"))
    f = d / "v.npy"
    np.save(f, np.random.default_rng(seed).permutation(rows).astype(np.int64))
    rng = np.random.default_rng(seed + 1)

    def kll(v):
        return sk.kll_build(v, 200)
    ways = {
        "kll_every_value": lambda v: kll(v),
        "kll_of_mask_random_lt_p": lambda v: kll(v[rng.random(len(v)) < rate]),
        "kll_of_choice_no_replacement": lambda v: kll(v[np.sort(rng.choice(len(v), rng.binomial(len(v), rate),
                                                                           replace=False))]),
        "kll_of_geometric_gaps": lambda v: sk.kll_build(v, 200, rate, rng),
        "exact_partition": lambda v: np.partition(np.array(v), len(v) // 2)[len(v) // 2],
    }
    import resource

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    got: dict = {name: [] for name in ways}
    try:
        for _ in range(repeats):
            for name, fn in ways.items():
                v = np.load(f, mmap_mode="r")
                c, t = cpu(), time.perf_counter()
                fn(v)
                got[name].append(((time.perf_counter() - t) * 1e9 / rows, (cpu() - c) * 1e9 / rows))
                del v
    finally:
        f.unlink()
        d.rmdir()
    return {"rows": rows, "rate": rate, "repeats": repeats, "load_average": os.getloadavg(),
            "ns_per_value": {name: {"wall": round(float(np.median([w for w, _ in xs])), 2),
                                    "cpu": round(float(np.median([c for _, c in xs])), 2)} for name, xs in got.items()}}


# ---- 30 daily sketches ------------------------------------------------------------------------------------

def bench_merge30(rows_per_day: int, seed: int, rate: float = 1.0) -> dict:
    """``rate`` < 1: daily sketches of a sample at that rate (``--sample-rate``), answered with both terms."""
    from shardstats import sketches as sk
    d = Path(tempfile.mkdtemp(prefix="sketch-merge30-"))
    rng = np.random.default_rng(seed)
    days, files = [], []
    params = {"k": 200, **({"sample_rate": rate} if rate < 1 else {})}
    for i in range(30):
        v = (rng.lognormal(3 + i / 30, 1, rows_per_day) * 1000).astype(np.int64)
        days.append(v)
        payload = sk.kll_build(v, 200, rate, rng)
        f = d / f"day{i:02d}.sketch"
        sk.write(str(f), sk.header("kll_doubles", params, payload, {"values": len(v)}, None,
                                   len(v) if rate < 1 else None), payload)
        files.append(str(f))
    t = time.perf_counter()
    read = [sk.read(f) for f in files]
    merged = sk.merge_payloads("kll_doubles", [p for _, p in read])
    ans = sk.kll_answer(merged, [0.5, 0.99], True, rate, sum(h.get("population", 0) for h, _ in read) or None)
    in_process = time.perf_counter() - t
    allv = np.sort(np.concatenate(days).astype(np.float64))
    errs = []
    for a in ans["quantiles"]:
        lo, hi = np.searchsorted(allv, a["raw"], "left") / len(allv), np.searchsorted(allv, a["raw"], "right") / len(allv)
        errs.append(0.0 if lo <= a["rank"] <= hi else min(abs(a["rank"] - lo), abs(a["rank"] - hi)))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "shardstats.cluster.cli", "sketch", "merge", *files, "-o",
                        str(d / "month.sketch")], capture_output=True, text=True, timeout=600)
    merge_cli = time.perf_counter() - t
    t = time.perf_counter()
    r2 = subprocess.run([sys.executable, "-m", "shardstats.cluster.cli", "sketch", "show", str(d / "month.sketch"),
                         "--quantiles", "0.5,0.99"], capture_output=True, text=True, timeout=600)
    show_cli = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], timeout=60)
    python_start = time.perf_counter() - t
    return {"days": 30, "rows_per_day": rows_per_day, "sample_rate": rate,
            "merge_and_answer_in_process_ms": round(in_process * 1000, 2),
            "rank_errors": errs, "rank_error_bound": ans["rank_error_bound"], "within": all(e <= ans["rank_error_bound"]
                                                                                            for e in errs),
            "cli_merge_seconds": round(merge_cli, 3), "cli_show_seconds": round(show_cli, 3),
            "python_start_seconds": round(python_start, 3), "cli_ok": r.returncode == 0 and r2.returncode == 0,
            "answer": r2.stdout.strip().splitlines()[-2:]}


def table(summary: dict) -> str:
    lines = [f"{'kind':<10} {'cases':>5} {'within':>7} {'max error':>11} {'max bound':>11}  {'unit':<16} "
             f"{'sketch B':>9} {'wire B/rank':>11}"]
    for kind, k in sorted(summary["by_kind"].items()):
        within = f"{k['within']}/{k['judged']}" if k["judged"] else "n/a"
        lines.append(f"{kind:<10} {k['cases']:>5} {within:>7} {k['max_error']:>11.4g} {k['max_bound']:>11.4g}  "
                     f"{k['unit']:<16} {k['max_sketch_bytes']:>9,} {k['max_wire_bytes']:>11,}")
    lines.append(f"all: {summary['within']}/{summary['judged']} judged cases within their stated bound; the most "
                 f"bytes one rank sent: {summary['max_wire_bytes']:,} (goal {WIRE_GOAL:,})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cases")
    c.add_argument("--cases", type=int, default=200)
    c.add_argument("--max-size", type=float, default=2e5)
    c.add_argument("--seed", type=int, default=26)
    m = sub.add_parser("median")
    m.add_argument("--rows", type=float, default=1e7)
    m.add_argument("--workers", type=int, default=4)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--no-spark", action="store_true")
    m.add_argument("--rounds", type=int, default=3)
    m.add_argument("--base-port", type=int, default=7600)
    gb = sub.add_parser("groupby")
    gb.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "shardstats-bench" / "G1_1e7_1e2_0_0")
    gb.add_argument("--workers", type=int, default=4)
    gb.add_argument("--by", default="id3")
    sp = sub.add_parser("sampled")
    sp.add_argument("--cases", type=int, default=14)
    sp.add_argument("--min-size", type=float, default=5e6)
    sp.add_argument("--max-size", type=float, default=2e7)
    sp.add_argument("--seed", type=int, default=77)
    sp.add_argument("--sample-rate", default="auto")
    sc = sub.add_parser("sample-cost")
    sc.add_argument("--rows", type=float, default=2.5e7)
    sc.add_argument("--sample-rate", default="1/64")
    sc.add_argument("--repeats", type=int, default=3)
    sc.add_argument("--seed", type=int, default=5)
    g = sub.add_parser("merge30")
    g.add_argument("--rows-per-day", type=float, default=1e6)
    g.add_argument("--seed", type=int, default=3)
    g.add_argument("--sample-rate", default="1", help="1, or 1/N: daily sketches of a sample")
    a = ap.parse_args()
    if a.cmd == "cases":
        s = run_cases(a.cases, int(a.max_size), a.seed)
        print(table(s))
        for f in s["failures"]:
            print("outside:", json.dumps(f))
    elif a.cmd == "sampled":
        print(json.dumps(run_sampled(a.cases, int(a.min_size), int(a.max_size), a.seed, a.sample_rate), indent=2))
    elif a.cmd == "sample-cost":
        from shardstats.sketches import sample_rate_value
        print(json.dumps(sample_costs(int(a.rows), sample_rate_value(a.sample_rate), a.repeats, a.seed), indent=2))
    elif a.cmd == "groupby":
        print(json.dumps(bench_groupby(a.data, a.workers, a.by), indent=2, default=str))
    elif a.cmd == "median":
        print(json.dumps(bench_median(int(a.rows), a.workers, a.seed, not a.no_spark, a.rounds, a.base_port), indent=2,
                         default=str))
    else:
        from shardstats.sketches import sample_rate_value
        print(json.dumps(bench_merge30(int(a.rows_per_day), a.seed, sample_rate_value(a.sample_rate)), indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
