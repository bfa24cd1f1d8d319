#!/usr/bin/env python3
"""Parse rates of ``.txt`` shards, ours beside the library parsers, in one run (M lines/s, best of ``--repeat``).

Ours: ``parse_text`` (the Polars fast path, guarded, with the validating parser
behind it) and ``parse_text_strict`` (the validating parser alone).  Theirs:
Polars ``read_csv``, ``pyarrow.csv.read_csv`` (threads on and off), pandas'
C engine, ``np.fromstring`` (not strict: it reads ``1-2`` as two values).
Every parser reads the same bytes from memory (file reading is the same for
all) and must return the same array.  Tools not installed are skipped.

    .venv/bin/python scripts/bench_parse.py --rows 1e7
"""
from __future__ import annotations

import argparse
import statistics
import io
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shardstats.worker.io.text import parse_text, parse_text_strict  # noqa: E402


def _tools(raw: bytes) -> dict:
    tools = {"ours (parse_text)": lambda: parse_text(raw), "ours, validating only": lambda: parse_text_strict(raw),
             "np.fromstring (lenient)": lambda: np.fromstring(raw, dtype=np.int64, sep="\n")}
    try:
        import polars as pl
        tools["polars read_csv"] = lambda: pl.read_csv(io.BytesIO(raw), has_header=False, schema={"x": pl.Int64},
                                                       quote_char=None)["x"].to_numpy()
    except ImportError:
        print("skipped polars (pip install polars)")
    try:
        import pyarrow as pa
        import pyarrow.csv as pc

        def arrow(threads: bool):
            return lambda: pc.read_csv(pa.py_buffer(raw), read_options=pc.ReadOptions(column_names=["x"], use_threads=threads),
                                       convert_options=pc.ConvertOptions(column_types={"x": pa.int64()})).column("x").to_numpy()
        tools["pyarrow.csv (threads)"] = arrow(True)
        tools["pyarrow.csv (1 thread)"] = arrow(False)
    except ImportError:
        print("skipped pyarrow (pip install pyarrow)")
    try:
        import pandas as pd
        tools["pandas read_csv (C)"] = lambda: pd.read_csv(io.BytesIO(raw), header=None, names=["x"], dtype={"x": np.int64},
                                                           engine="c")["x"].to_numpy()
    except ImportError:
        print("skipped pandas (pip install pandas)")
    return tools


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=1e7)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dist", choices=("unique-dup", "full-range"), default="unique-dup",
                    help="values from range(4N) (the problem's data, ~9 bytes a line) or all of int64 (~20)")
    args = ap.parse_args()
    n = int(args.rows)
    rng = np.random.default_rng(1)
    v = (rng.permutation(4 * n)[:n] if args.dist == "unique-dup"
         else rng.integers(-(2 ** 63), 2 ** 63 - 1, n, dtype=np.int64)).astype(np.int64)
    raw = ("\n".join(map(str, v.tolist())) + "\n").encode()
    tools = _tools(raw)
    times: dict[str, list[float]] = {k: [] for k in tools}
    names = list(tools)
    for i in range(args.repeat):
        # interleaved, so a busy moment hits every tool alike, and rotated, so no tool always runs
        # right after the same neighbour (the best-of figure of a fixed order moved ±15% between runs)
        for name in names[i % len(names):] + names[:i % len(names)]:
            t = time.perf_counter()
            out = tools[name]()
            times[name].append(time.perf_counter() - t)
            if not np.array_equal(out, v):
                print(f"{name}: wrong values", file=sys.stderr)
                return 1
            del out
    print(f"{n:,} lines, {len(raw) / n:.1f} bytes a line, {args.repeat} runs each")
    print(f"{'parser':26s} {'M lines/s':>10s} {'vs ours':>8s} {'best':>8s} {'vs ours':>8s}   (median, then best)")
    med = {k: statistics.median(ts) for k, ts in times.items()}
    ours, ours_best = med["ours (parse_text)"], min(times["ours (parse_text)"])
    for name, ts in sorted(times.items(), key=lambda kv: med[kv[0]]):
        print(f"{name:26s} {n / med[name] / 1e6:10.1f} {ours / med[name]:8.2f} {n / min(ts) / 1e6:8.1f} "
              f"{ours_best / min(ts):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
