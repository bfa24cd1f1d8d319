#!/usr/bin/env python3
"""The shuffle strategies (credit, naive, gather) on the multi-host test bed, measured against the ideal.

Why on the bed: only with a real, rate-limited link per host does fan-in cost what
it costs on a real cluster.  The job is the mode of the problem's hard dataset
(``unique-dup``: every value unique but one, so the shuffle moves almost all data).

For each strategy: wall time of the run phase, the shuffle phase (slowest worker),
the largest number of concurrent inbound streams any worker had, the peak bytes a
worker buffered (mailbox) and queued for sending, the busiest host link (bytes in
or out of one host, whichever direction is larger), total bytes moved, and

    ideal = total bytes / (W x link rate)      (every link busy all the time)
    bound = busiest link bytes / link rate     (this strategy's own traffic pattern)

with the ratios time/ideal and time/credit's time.  Every answer is checked
against numpy; a wrong one prints MISMATCH and the exit status is 1.

    sudo .venv/bin/python scripts/bench_shuffle.py                 # 10 hosts, 100 Mbit/s, 2M rows
    sudo .venv/bin/python scripts/bench_shuffle.py --rate 50mbit --rows 4000000 --json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from shardstats import reference

if __package__ in (None, ""):     # run as a file (python scripts/bench_shuffle.py): make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import testbed  # noqa: E402

from shardstats.cluster.gen import generate, write_shards  # noqa: E402
from shardstats.coordinator.job import JobReport, run_job  # noqa: E402
from shardstats.coordinator.spec import job_spec  # noqa: E402
from shardstats.worker.comm.shuffle import STRATEGIES  # noqa: E402


def reference_mode(values: np.ndarray) -> tuple[int, int]:
    r = reference.mode(values)
    return r["value"], r["count"]


def measure(rep: JobReport, w: int, rate_bytes: float) -> dict:
    """The figures of one run, from the per-worker stats the job reports."""
    sent = np.array([s["bytes_sent"] for s in rep.workers], dtype=np.int64)   # sent[i][j]: i -> j
    out_b, in_b = sent.sum(axis=1), sent.sum(axis=0)
    total = int(sent.sum())
    busiest = int(max(out_b.max(), in_b.max()))
    ideal = total / (w * rate_bytes)
    return {
        "seconds": rep.seconds,
        "shuffle_seconds": max(s["phases"]["shuffle"] for s in rep.workers),
        "max_inbound_streams": max(s["max_inbound_streams"] for s in rep.workers),
        "peak_buffered_bytes": max(s["peak_buffered_bytes"] for s in rep.workers),
        "peak_send_queue_bytes": max(s["peak_send_queue_bytes"] for s in rep.workers),
        "busiest_link_bytes": busiest,
        "busiest_host": int(np.argmax(np.maximum(out_b, in_b))),
        "total_bytes": total,
        "ideal_seconds": ideal,
        "bound_seconds": busiest / rate_bytes,
        "time_over_ideal": rep.seconds / ideal if ideal else None,
        "credit_wait_seconds_max": max(s["credit_wait_seconds"] for s in rep.workers),
        "result": {"value": rep.result["value"], "count": rep.result["count"]},
    }


def table(rows: list[dict]) -> str:
    head = (f"{'strategy':<8} {'time s':>7} {'shuffle s':>9} {'max in':>6} {'peak buf MB':>11} "
            f"{'peak sendq MB':>13} {'busiest MB':>10} {'total MB':>8} {'ideal s':>7} {'bound s':>7} "
            f"{'time/ideal':>10} {'vs credit':>9}  answer")
    lines = [head, "-" * len(head)]
    for r in rows:
        m = r["median"]
        lines.append(f"{r['strategy']:<8} {m['seconds']:>7.3f} {m['shuffle_seconds']:>9.3f} "
                     f"{m['max_inbound_streams']:>6} {m['peak_buffered_bytes'] / 1e6:>11.2f} "
                     f"{m['peak_send_queue_bytes'] / 1e6:>13.2f} {m['busiest_link_bytes'] / 1e6:>10.2f} "
                     f"{m['total_bytes'] / 1e6:>8.2f} {m['ideal_seconds']:>7.3f} {m['bound_seconds']:>7.3f} "
                     f"{m['time_over_ideal']:>10.2f} {r['vs_credit']:>9.2f}  "
                     f"{'ok' if r['correct'] else 'MISMATCH'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--rate", default="100mbit", help="per direction of each host link (tc syntax)")
    ap.add_argument("--delay", type=float, default=1.0, help="one-way delay per link direction, ms (needs netem)")
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--repeat", type=int, default=3, help="runs per strategy; the median run is reported")
    ap.add_argument("--fan-in", type=int, default=1)
    ap.add_argument("--credits", type=int, default=4)
    ap.add_argument("--chunk-bytes", type=int, default=1 << 20)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = ap.parse_args(argv)
    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    if bad := [s for s in strategies if s not in STRATEGIES]:
        ap.error(f"unknown strategy {bad[0]!r}")
    ok, why = testbed.available()
    if not ok:
        print(f"error: {why}", file=sys.stderr)
        return 1
    shape = testbed.LinkShape(a.rate, a.delay)
    log = (lambda *x: None) if a.json else (lambda *x: print(*x, file=sys.stderr, flush=True))

    with tempfile.TemporaryDirectory(prefix="bench-shuffle-") as tmp:
        parts = generate(a.rows, a.hosts, "unique-dup", a.seed)
        write_shards(parts, Path(tmp), "npy")
        want = reference_mode(np.concatenate(parts))
        del parts
        with testbed.TestBed(a.hosts, shape, job_timeout=a.timeout) as bed:
            log(bed.describe())

            def job(strategy: str) -> JobReport:
                params = {"shuffle": strategy, "fan_in": a.fan_in, "credits": a.credits,
                          "chunk_bytes": a.chunk_bytes}
                return asyncio.run(run_job(bed.addrs, bed.token.encode(), job_spec("mode", tmp, params, timeout=a.timeout),
                                           absolute_paths=True))

            job("credit")   # warm-up: peer links dial lazily; the first job would pay every handshake
            rows = []
            for s in strategies:
                runs = []
                for k in range(a.repeat):
                    runs.append(measure(job(s), a.hosts, shape.bytes_per_second))
                    log(f"  {s} run {k + 1}: {runs[-1]['seconds']:.3f} s")
                med = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
                correct = all((r["result"]["value"], r["result"]["count"]) == want for r in runs)
                rows.append({"strategy": s, "median": med, "runs": runs, "correct": correct,
                             "seconds_all": [r["seconds"] for r in runs]})
            delay_applied = bed.delay_applied
    base = next((r["median"]["seconds"] for r in rows if r["strategy"] == "credit"), None)
    for r in rows:
        r["vs_credit"] = r["median"]["seconds"] / base if base else float("nan")
    doc = {"hosts": a.hosts, "rate": a.rate, "rate_bytes_per_second": shape.bytes_per_second,
           "delay_ms": a.delay if delay_applied else 0.0, "delay_requested_ms": a.delay, "rows": a.rows,
           "fan_in": a.fan_in, "credits": a.credits, "chunk_bytes": a.chunk_bytes, "repeat": a.repeat,
           "expected": {"value": want[0], "count": want[1]}, "strategies": rows}
    if a.json:
        print(json.dumps(doc))
    else:
        print(f"mode of unique-dup, {a.rows:,} rows ({a.rows * 8 / 1e6:.0f} MB) on {a.hosts} hosts, links "
              f"{a.rate} each way, delay {doc['delay_ms']:g} ms; F={a.fan_in} C={a.credits} "
              f"chunk={a.chunk_bytes} B; median of {a.repeat} runs (all runs: "
              + ", ".join(f"{r['strategy']} " + "/".join(f"{x:.2f}" for x in r["seconds_all"]) for r in rows) + ")")
        print(table(rows))
        for r in rows:
            if not r["correct"]:
                print(f"MISMATCH: {r['strategy']} answered {[x['result'] for x in r['runs']]}, numpy says "
                      f"value={want[0]} count={want[1]}")
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
