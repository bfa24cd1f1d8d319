#!/usr/bin/env python3
"""describe against the separate jobs it replaces, on the same cluster and files, in one run.

describe answers stats, distinct, mode, median (with quantiles) and top k in one job;
the separate jobs are ``stats``, ``distinct``, ``mode``, ``median --quantiles`` and
``topk --k`` (its ``auto`` strategy, as a user would run it).  Each job runs
``--repeat`` times; the table gives median wall time (load included, start-up
excluded) and the bytes the workers sent, and the ratio describe / sum of the separate jobs.
Every answer of describe is checked against the separate job's.

    .venv/bin/python scripts/bench_describe.py --rows 10M --workers 10
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUANTILES = ("0.25", "0.5", "0.75")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="10M")
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--dists", default="zipf,unique-dup")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from scripts.bench import parse_count
    from shardstats.cluster.api import Cluster
    from shardstats.cluster.gen import generate, write_shards
    rows = parse_count(args.rows)
    separate = {"stats": {}, "distinct": {}, "mode": {}, "median": {"quantiles": ",".join(QUANTILES)},
                "topk": {"k": args.k}}
    out = [f"describe vs the separate jobs: {rows:,} values, {args.shards} shards, {args.workers} workers, "
           f"median of {args.repeat} runs", "",
           "| dataset | job | median s | bytes sent | rounds |", "|---|---|---|---|---|"]
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-describe-") as tmp, Cluster.local(args.workers) as c:
        for dist in args.dists.split(","):
            d = Path(tmp) / dist
            write_shards(generate(rows, args.shards, dist, args.seed), d, "npy")

            def timed(op: str, **kw):
                times, r = [], None
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    r = c.submit(op, str(d), **kw)
                    times.append(time.perf_counter() - t)
                return statistics.median(times), r
            t_all, whole = timed("describe", quantiles=",".join(QUANTILES), k=args.k)
            total_t = total_b = 0.0
            for op, kw in separate.items():
                t, r = timed(op, **kw)
                total_t += t
                total_b += r.stats["bytes_sent"]
                mine = whole.result[op]
                if op == "topk":
                    same = mine["items"] == r.result["items"] and mine["boundary_ties"] == r.result["boundary_ties"]
                elif op == "median":
                    same = {k: mine[k] for k in r.result} == r.result
                else:
                    same = mine == r.result
                ok &= same
                out.append(f"| {dist} | {op}{'' if same else ' (ANSWER DIFFERS)'} | {t:.3f} | "
                           f"{r.stats['bytes_sent']:,} | {r.stats['rounds']} |")
            b = whole.stats["bytes_sent"]
            out.append(f"| {dist} | **sum of the 5 jobs** | {total_t:.3f} | {int(total_b):,} | |")
            out.append(f"| {dist} | **describe** | {t_all:.3f} | {b:,} | {whole.stats['rounds']} |")
            out.append(f"| {dist} | describe ÷ sum | {t_all / total_t:.2f} | {b / total_b:.2f} | |")
    print("\n".join(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
