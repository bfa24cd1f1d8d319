"""db-benchmark's group-by q3 and q10, the join q5 and a sort, with every worker in a memory cgroup of a tenth
of the job's in-memory peak (issue 25's second goal): answers checked, DuckDB under the same total memory.

    sudo .venv/bin/python scripts/bench_beyond.py --ops q3,q10,q5,sort \\
        --g1 /tmp/big/G1_1e8_1e2_0_0 --j1 /tmp/big/J1_1e8 \\
        --g1-small /tmp/shardstats-bench/G1_1e7_1e2_0_0 --j1-small /tmp/big/J1_1e7

Each op, one after the other (ratios within one run; the load average is printed with each):

1. its in-memory peak: ours uncapped on the full data where that fits this machine (``--uncapped``, q3 by
   default: ~0.8 GB a worker at 1e8), which is also the reference answer; else ours uncapped on the small
   data (a tenth of the rows) and its peak times the rows' ratio -- an estimate, said so in the table;
2. CAP = ``--fraction`` of that peak, never below ``--floor`` (the engine's keyed minimum: a worker with
   DuckDB, Arrow and Polars loaded is ~190 MiB before it reads a row; the table says where the tenth was
   below it); ours on 10 workers each in a memory cgroup of CAP with ``--memory-limit CAP``, writing
   ``--out`` Parquet: time, passes, spill written / read, bytes moved (the workers' bytes_sent), rounds, max
   inbound streams, the largest worker's peak RSS and cgroup peak against CAP, OOM kills;
3. DuckDB (a child process, ``memory_limit`` = the cgroups together, ``temp_directory`` on disk) writing the
   same answer to Parquet: its time (ratio DuckDB / ours) and, where ours did not run uncapped, the reference;
4. the answers compared: group-by and join row for row (a full outer join on the keys in DuckDB; float sums
   and means within 1e-9 relative); the sort by its parts (each sorted, each part's last key <= the next
   part's first) and an order-free fingerprint (rows, and per column the sum of DuckDB's hash) equal to the
   input's.

Everything it starts is stopped by PID or ``cluster down`` and every folder it writes removed, however a run
ends.  Needs root (memory cgroups: scripts/cgroups.py).  ``--json FILE`` keeps the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.cgroups import MemoryCgroup, available  # noqa: E402
from shardstats.worker.memory import parse_size  # noqa: E402

CLI = [sys.executable, "-m", "shardstats.cluster.cli"]
MiB = 1 << 20

G1_KEYS = ["id1", "id2", "id3", "id4", "id5", "id6"]
# The ops: how ours is asked (the data folders filled in by `args`), the answer's keys, DuckDB's query.
OPS = {
    "q3": {"kind": "groupby", "data": "g1", "keys": ["id3"],
           "args": lambda d: ["groupby", "--input", d, "--by", "id3", "--agg", "sum(v1)", "--agg", "mean(v3)"],
           "sql": lambda d: f"SELECT id3, sum(v1) AS sum_v1, avg(v3) AS mean_v3 FROM read_parquet('{d}/*.parquet') "
                            f"GROUP BY id3"},
    "q10": {"kind": "groupby", "data": "g1", "keys": G1_KEYS,
            "args": lambda d: ["groupby", "--input", d, "--by", ",".join(G1_KEYS), "--agg", "sum(v3)",
                               "--agg", "count()"],
            "sql": lambda d: f"SELECT {', '.join(G1_KEYS)}, sum(v3) AS sum_v3, count(*) AS count "
                             f"FROM read_parquet('{d}/*.parquet') GROUP BY ALL"},
    # db-benchmark's join q5: x joined with big on the int id3 (unique on both sides; 90% of keys meet)
    "q5": {"kind": "join", "data": "j1", "keys": ["id3"],
           "args": lambda d: ["join", "--left", _j1(d, "x"), "--right", _j1(d, "big"), "--on", "id3"],
           "sql": lambda d: "SELECT l.*, r.id1 AS id1_right, r.id2 AS id2_right, r.id4 AS id4_right, "
                            "r.id5 AS id5_right, r.id6 AS id6_right, r.v2 "
                            f"FROM read_parquet('{_j1(d, 'x')}/*.parquet') l "
                            f"JOIN read_parquet('{_j1(d, 'big')}/*.parquet') r USING (id3)"},
    # 1e8 rows of G1 (all nine columns) sorted by id3: a string key of 1e6 values, ties kept in input order
    "sort": {"kind": "sort", "data": "g1", "keys": ["id3"],
             "args": lambda d: ["sort", "--input", d, "--by", "id3"],
             "sql": lambda d: f"SELECT * FROM read_parquet('{d}/*.parquet') ORDER BY id3"},
}


def _j1(d: str, table: str) -> str:
    """A J1 folder's table (scripts/dbgen.py join: x is J1_<N>_NA_0_0, big J1_<N>_<N>_0_0)."""
    meta = json.loads((Path(d) / "_dbgen.json").read_text())
    return str(Path(d) / meta["tables"][table])


def cli(*args, timeout: float):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def ours(op: str, data: str, workers: int, cap: int | None, work: Path, port: int, timeout: float) -> dict:
    """One run of ``op`` on a fresh cluster (each worker in a cgroup of ``cap`` when given), its answer in
    ``work/out-<op>``; the cluster is stopped and the cgroups removed however it ends."""
    spill = work / "spill"
    spill.mkdir(parents=True, exist_ok=True)
    cf = str(work / "cluster.json")
    out = work / f"out-{op}-{'capped' if cap else 'free'}"
    shutil.rmtree(out, ignore_errors=True)
    limit = ["--memory-limit", str(cap)] if cap else []
    r = cli("up", "--workers", str(workers), "--detach", "--cluster-file", cf, "--spill-dir", str(spill),
            "--base-port", str(port), "--log-dir", str(work / "logs"), *limit, timeout=120)
    if r.returncode:
        raise RuntimeError(f"cluster up: {r.stderr.strip()}")
    groups: list[MemoryCgroup] = []
    res: dict = {"cap": cap, "out": out}
    try:
        if cap:
            for pid in json.loads(Path(cf).read_text())["pids"]:
                g = MemoryCgroup(cap)
                g.__enter__()
                groups.append(g)
                g.add(pid)
        t = time.perf_counter()
        try:
            r = cli("submit", *OPS[op]["args"](data), "--out", str(out), "--json", "--quiet", "--cluster-file", cf,
                    "--timeout", str(timeout), timeout=timeout * 2 + 60)
            res["ok"], res["err"] = r.returncode == 0, r.stderr.strip().splitlines()[-1:] if r.returncode else []
        except subprocess.TimeoutExpired:
            res["ok"], res["err"] = False, [f"no answer within {timeout * 2 + 60:.0f} s"]
        res["seconds"] = time.perf_counter() - t
        if res["ok"]:
            st = json.loads(r.stdout)["stats"]
            per = st["per_worker"]
            res.update(passes=max(w.get("passes", 1) for w in per),
                       spill_written=sum(w.get("spill_bytes_written", 0) for w in per),
                       spill_read=sum(w.get("spill_bytes_read", 0) for w in per),
                       bytes_sent=st.get("bytes_sent", 0), rounds=st.get("rounds"),
                       inbound=st.get("max_inbound_streams"), peak=st.get("peak_worker_rss_bytes")
                       or max(w["peak_rss_bytes"] for w in per), attempts=st.get("attempts", 1),
                       lost=st.get("lost_workers", []))
        res["oom"] = sum(g.oom_kills() for g in groups)
        res["cgroup_peak"] = max((g.peak() or 0 for g in groups), default=0)
    finally:
        cli("down", "--cluster-file", cf, timeout=120)
        for g in groups:
            g.__exit__(None, None, None)
        shutil.rmtree(spill, ignore_errors=True)
    return res


DUCK = textwrap.dedent("""
    import json, resource, sys, time, duckdb
    sql, out, limit, tmp = sys.argv[1:5]
    con = duckdb.connect()
    con.execute("SET enable_progress_bar=false")
    con.execute(f"SET memory_limit='{limit}'")
    con.execute(f"SET temp_directory='{tmp}'")
    con.execute("SET preserve_insertion_order=" + ("true" if sys.argv[5] == "ordered" else "false"))
    t = time.perf_counter()
    con.execute(f"COPY ({sql}) TO '{out}' (FORMAT parquet)")
    secs = time.perf_counter() - t
    print(json.dumps({"seconds": secs, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""")


def duckdb_run(op: str, data: str, limit: int, work: Path, timeout: float) -> dict:
    """DuckDB's answer to ``op`` written to ``work/duck-<op>.parquet``, in a child process (an out-of-memory
    there is its failure, not this script's), under ``memory_limit`` = ``limit`` spilling to ``work``."""
    tmp = work / "duck-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    out = work / f"duck-{op}.parquet"
    order = "ordered" if OPS[op]["kind"] == "sort" else "any"
    try:
        r = subprocess.run([sys.executable, "-c", DUCK, OPS[op]["sql"](data), str(out), f"{limit // MiB}MiB",
                            str(tmp), order], capture_output=True, text=True, timeout=timeout)
        res = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else \
            {"seconds": None, "err": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}
    except subprocess.TimeoutExpired:
        res = {"seconds": None, "err": f"no answer within {timeout:.0f} s"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["out"] = out
    return res


def _con(work: Path):
    import duckdb
    tmp = work / "check-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET memory_limit='3GiB'")
    con.execute(f"SET temp_directory='{tmp}'")
    con.execute("SET preserve_insertion_order=false")
    return con


def _glob(p: Path) -> str:
    return f"{p}/*.parquet" if p.is_dir() else str(p)


def same_rows(op: str, mine: Path, ref: Path, work: Path) -> str:
    """A full outer join of the two answers on the keys: rows on one side only, or whose values differ
    (floats by more than 1e-9 relative: sums added in another order differ in the last bits)."""
    con = _con(work)
    try:
        a, b = _glob(mine), _glob(ref)
        keys = OPS[op]["keys"]
        cols = con.sql(f"SELECT * FROM '{a}' LIMIT 0").columns
        ref_cols = con.sql(f"SELECT * FROM '{b}' LIMIT 0").columns
        if sorted(cols) != sorted(ref_cols):
            return f"NO (columns {cols} against {ref_cols})"
        types = dict(zip(cols, con.sql(f"SELECT * FROM '{a}' LIMIT 0").types))
        rest = [c for c in cols if c not in keys]
        cmp = " OR ".join(f"abs(x.{c} - y.{c}) > 1e-9 * greatest(1, abs(y.{c}))" if str(types[c]) in ("DOUBLE", "FLOAT")
                          else f"x.{c} IS DISTINCT FROM y.{c}" for c in rest)
        bad, rows, ref_rows = con.sql(
            f"SELECT (SELECT count(*) FROM '{a}' x FULL JOIN '{b}' y USING ({', '.join(keys)}) "
            f"WHERE x.{rest[-1]} IS NULL OR y.{rest[-1]} IS NULL OR {cmp}), "
            f"(SELECT count(*) FROM '{a}'), (SELECT count(*) FROM '{b}')").fetchall()[0]
        if bad or rows != ref_rows:
            return f"NO ({bad:,} of {ref_rows:,} rows differ; {rows:,} rows against {ref_rows:,})"
        return f"yes ({rows:,} rows)"
    finally:
        con.close()
        shutil.rmtree(work / "check-tmp", ignore_errors=True)


def fingerprint(con, src: str, cols: list[str]) -> tuple:
    """Rows and, per column, the sum of DuckDB's hash of every value: equal for the same rows in any order."""
    return con.sql(f"SELECT count(*), {', '.join(f'sum(hash({c}))' for c in cols)} FROM '{src}'").fetchall()[0]


def sorted_parts(mine: Path, data: str, key: str, work: Path) -> str:
    """Our sort's answer: each part sorted by ``key``, each part's last key <= the next part's first (parts
    in name order), and the rows those of the input (``fingerprint``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    parts = sorted(mine.glob("*.parquet"))
    prev = None
    for p in parts:
        k = pq.read_table(p, columns=[key])[key]
        if len(k) == 0:
            continue
        if len(k) > 1 and not pc.all(pc.less_equal(k.slice(0, len(k) - 1), k.slice(1))).as_py():
            return f"NO ({p.name} is not sorted by {key})"
        if prev is not None and prev > k[0].as_py():
            return f"NO ({p.name} starts below the previous part's last key)"
        prev = k[-1].as_py()
    con = _con(work)
    try:
        cols = con.sql(f"SELECT * FROM '{data}/*.parquet' LIMIT 0").columns
        theirs, ours_ = fingerprint(con, f"{data}/*.parquet", cols), fingerprint(con, f"{mine}/*.parquet", cols)
    finally:
        con.close()
        shutil.rmtree(work / "check-tmp", ignore_errors=True)
    if theirs != ours_:
        return f"NO (fingerprint {ours_} against the input's {theirs})"
    return f"yes ({theirs[0]:,} rows in {len(parts)} sorted parts; fingerprint equal to the input's)"


def bench(op: str, a, work: Path) -> dict:
    data = {"g1": a.g1, "j1": a.j1}[OPS[op]["data"]]
    small = {"g1": a.g1_small, "j1": a.j1_small}[OPS[op]["data"]]
    rec: dict = {"op": op, "load_before": loadavg()}
    print(f"== {op} (load average {rec['load_before']})", flush=True)
    free = None
    try:
        if op in a.uncapped:
            free = ours(op, data, a.workers, None, work, a.base_port, a.timeout)
            if not free["ok"]:
                raise RuntimeError(f"{op} uncapped: {' '.join(free['err'])}")
            rec.update(peak_in_memory=free["peak"], peak_how="measured", free_seconds=free["seconds"])
            print(f"   ours uncapped: {free['seconds']:.1f} s, peak {free['peak'] // MiB} MiB a worker", flush=True)
        elif op in a.caps:
            rec.update(peak_in_memory=None, peak_how="given")
        else:
            est = ours(op, small, a.workers, None, work, a.base_port, a.timeout)
            shutil.rmtree(est["out"], ignore_errors=True)
            if not est["ok"]:
                raise RuntimeError(f"{op} uncapped on {small}: {' '.join(est['err'])}")
            rec.update(peak_in_memory=est["peak"] * a.ratio, peak_how=f"estimated: {a.ratio} x the peak at 1/{a.ratio} "
                       f"of the rows ({est['peak'] // MiB} MiB, {est['seconds']:.1f} s)", small_seconds=est["seconds"])
            print(f"   ours uncapped on {small}: {est['seconds']:.1f} s, peak {est['peak'] // MiB} MiB a worker", flush=True)
        tenth = int(rec["peak_in_memory"] * a.fraction) if rec["peak_in_memory"] else None
        cap = a.caps.get(op) or max(a.floor, tenth)
        rec.update(cap=cap, tenth=tenth, floored=bool(tenth and tenth < a.floor))
        cap_run = ours(op, data, a.workers, cap, work, a.base_port, a.timeout)
        rec["ours"] = {k: v for k, v in cap_run.items() if k != "out"}
        print(f"   ours capped at {cap // MiB} MiB: " + (f"{cap_run['seconds']:.1f} s, {cap_run['passes']} passes, "
              f"peak {cap_run['peak'] // MiB} MiB, cgroup peak {cap_run['cgroup_peak'] // MiB} MiB, "
              f"oom {cap_run['oom']}" if cap_run["ok"] else f"FAILED after {cap_run['seconds']:.1f} s "
              f"(oom {cap_run['oom']}): {' '.join(cap_run['err'])}"), flush=True)
        rec["load_after_ours"] = loadavg()
        duck = duckdb_run(op, data, a.workers * cap, work, a.timeout * 2) if not a.no_duckdb else None
        if duck:
            rec["duckdb"] = {k: v for k, v in duck.items() if k != "out"}
            print(f"   DuckDB, memory_limit {a.workers * cap // MiB} MiB: " +
                  (f"{duck['seconds']:.1f} s, its peak RSS {duck['peak'] // MiB} MiB" if duck["seconds"]
                   else f"FAILED: {duck['err']}"), flush=True)
        if cap_run["ok"]:
            if OPS[op]["kind"] == "sort":
                rec["equal"] = sorted_parts(cap_run["out"], data, OPS[op]["keys"][0], work)
                rec["reference"] = "the input (sorted parts, fingerprint)"
            elif free is not None:
                rec["equal"] = same_rows(op, cap_run["out"], free["out"], work)
                rec["reference"] = "ours uncapped"
                if duck and duck["seconds"]:
                    rec["duckdb_equal"] = same_rows(op, cap_run["out"], duck["out"], work)
            elif duck and duck["seconds"]:
                rec["equal"] = same_rows(op, cap_run["out"], duck["out"], work)
                rec["reference"] = f"DuckDB (memory_limit {a.workers * cap // MiB} MiB)"
            else:
                rec["equal"], rec["reference"] = "not checked (no reference answer)", None
            print(f"   answer equal to {rec['reference']}: {rec['equal']}"
                  + (f"; to DuckDB's: {rec['duckdb_equal']}" if "duckdb_equal" in rec else ""), flush=True)
    finally:
        for p in work.glob("out-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in work.glob("duck-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    rec["load_after"] = loadavg()
    return rec


def table(recs: list[dict], data_bytes: dict) -> None:
    print(f"\n{'op':5} {'data GB':>7} {'peak in mem MiB':>15} {'CAP MiB':>7} {'ours s':>7} {'passes':>6} "
          f"{'spill w/r GB':>13} {'moved GB':>8} {'rounds':>6} {'in':>2} {'peak/CAP':>8} {'cg peak MiB':>11} "
          f"{'oom':>3} {'DuckDB s':>8} {'Duck/ours':>9}  answer")
    for r in recs:
        o, d = r.get("ours", {}), r.get("duckdb") or {}
        ok = o.get("ok")
        print(f"{r['op']:5} {data_bytes[r['op']] / 1e9:7.2f} "
              f"{(r['peak_in_memory'] or 0) // MiB:>14}{'*' if r['peak_how'].startswith('est') else ' '} "
              f"{r['cap'] // MiB:>6}{'f' if r['floored'] else ' '} "
              + (f"{o['seconds']:7.1f} {o['passes']:6} {o['spill_written'] / 1e9:6.2f}/{o['spill_read'] / 1e9:<6.2f} "
                 f"{o['bytes_sent'] / 1e9:8.2f} {o['rounds']:6} {o['inbound']:2} {o['peak'] / r['cap']:8.2f} "
                 if ok else f"{'failed':>7} {'':6} {'':13} {'':8} {'':6} {'':2} {'':8} ")
              + f"{o.get('cgroup_peak', 0) // MiB:11} {o.get('oom', 0):3} "
              + (f"{d['seconds']:8.1f} {d['seconds'] / o['seconds'] if ok else float('nan'):9.2f}"
                 if d.get("seconds") else f"{'failed' if d else '-':>8} {'':9}")
              + f"  {r.get('equal') or ' '.join(o.get('err', []))}")
    print("*: estimated from the same job on a tenth of the rows; f: a tenth of the peak was below the floor")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", default="q3,q10,q5,sort")
    ap.add_argument("--g1", default="/tmp/big/G1_1e8_1e2_0_0")
    ap.add_argument("--j1", default="/tmp/big/J1_1e8")
    ap.add_argument("--g1-small", default="/tmp/shardstats-bench/G1_1e7_1e2_0_0")
    ap.add_argument("--j1-small", default="/tmp/big/J1_1e7")
    ap.add_argument("--ratio", type=int, default=10, help="the full data's rows over the small data's")
    ap.add_argument("--uncapped", default="q3", help="ops whose in-memory run on the full data fits this machine")
    ap.add_argument("--cap", action="append", default=[], metavar="OP=SIZE", help="a cap given, not derived")
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--floor", default="200M", help="the smallest cap (the engine's keyed minimum)")
    ap.add_argument("--base-port", type=int, default=7600)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a phase of a job (or DuckDB) may take")
    ap.add_argument("--dir", default="/tmp/big/beyond", help="spill, answers and DuckDB's temporary files")
    ap.add_argument("--no-duckdb", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    if not available():
        sys.exit("needs root and a writable memory cgroup hierarchy")
    # stopped by SIGTERM, it still stops its cluster and removes its cgroups and folders (the finally blocks)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    a.uncapped = set(a.uncapped.split(",")) - {""}
    a.caps = {k: parse_size(v) for k, v in (c.split("=", 1) for c in a.cap)}
    a.floor = parse_size(a.floor)
    work = Path(a.dir)
    work.mkdir(parents=True, exist_ok=True)
    recs = []
    sizes = {}
    try:
        for op in a.ops.split(","):
            d = {"g1": a.g1, "j1": a.j1}[OPS[op]["data"]]
            sizes[op] = sum(p.stat().st_size for p in Path(d).rglob("*.parquet"))
            recs.append(bench(op, a, work))
            if a.json:
                Path(a.json).write_text(json.dumps(recs, indent=1, default=str))
    finally:
        for p in ("spill", "logs", "cluster.json"):
            (shutil.rmtree(work / p, ignore_errors=True) if (work / p).is_dir() else (work / p).unlink(missing_ok=True))
    table(recs, sizes)


if __name__ == "__main__":
    main()
