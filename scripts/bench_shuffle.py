#!/usr/bin/env python3
"""The mode's shuffle on the multi-host test bed: strategies (credit, naive, gather) x encodings (plain, compact, auto).

Why on the bed: only with a real, rate-limited link per host does fan-in cost what
it costs on a real cluster, and only there do the bytes a value costs on the wire
turn into seconds.  The job is the mode of the problem's hard dataset
(``unique-dup``: every value unique but one, so the shuffle moves almost all data).

For each (strategy, encoding), at each link rate: wall time of the run, the count
phase (where compact fingerprints and codes) and the shuffle phase (compact's
three rounds) of the slowest worker, the encoding the workers used (``auto``
decides at run time), total bytes moved (the W x W traffic matrix), the values
that left their worker and the shuffle's bytes per such value, the largest number
of concurrent inbound streams any worker had, the peak bytes a worker buffered,
the busiest host link (bytes in or out of one host, whichever is larger), and

    ideal = total bytes / (W x link rate)      (every link busy all the time)
    bound = busiest link bytes / link rate     (this run's own traffic pattern)

with time/ideal, time / the same strategy's plain run, and time / the same
encoding's credit run.  ``--loopback`` runs the same grid once more on a local
cluster on 127.0.0.1 (no shaping, no ideal): what ``auto`` picks there, and whether
compact costs time where links are memory copies.  Every answer is checked against
numpy; a wrong one prints MISMATCH and the exit status is 1.  Runs of the grid are
interleaved (run 1 of every cell, then run 2, ...) so a load change on a shared
machine hits every cell alike; the median run of each cell is reported.

    sudo .venv/bin/python scripts/bench_shuffle.py                 # 10 hosts, 100 Mbit/s, 2M rows
    sudo .venv/bin/python scripts/bench_shuffle.py --strategies credit --encodings plain,compact,auto \\
         --rates 1gbit,100mbit --rows 10000000 --loopback
    sudo .venv/bin/python scripts/bench_shuffle.py --rate 50mbit --rows 4000000 --json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from shardstats import reference

if __package__ in (None, ""):     # run as a file (python scripts/bench_shuffle.py): make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import testbed  # noqa: E402

from shardstats.cluster import launcher  # noqa: E402
from shardstats.cluster.gen import generate, write_shards  # noqa: E402
from shardstats.coordinator.job import JobReport, run_job  # noqa: E402
from shardstats.coordinator.spec import job_spec  # noqa: E402
from shardstats.worker.comm.shuffle import STRATEGIES  # noqa: E402
from shardstats.worker.ops.mode import ENCODINGS  # noqa: E402

LOOPBACK = "loopback"


def reference_mode(values: np.ndarray) -> tuple[int, int]:
    r = reference.mode(values)
    return r["value"], r["count"]


def job(addrs: list[str], token: str, path: str | Path, strategy: str, encoding: str, *, fan_in: int = 1,
        credits: int = 4, chunk_bytes: int = 1 << 20, timeout: float = 300.0, link_mbit: float = 0.0) -> JobReport:
    """One mode job over the shards in ``path`` (absolute) on the workers at ``addrs``; ``link_mbit`` tells
    ``--encoding auto`` the links' rate (as a user would with ``--link-mbit``)."""
    params = {"shuffle": strategy, "encoding": encoding, "fan_in": fan_in, "credits": credits,
              "chunk_bytes": chunk_bytes, "link_mbit": link_mbit}
    return asyncio.run(run_job(addrs, token.encode(), job_spec("mode", str(path), params, timeout=timeout),
                               absolute_paths=True))


def measure(rep: JobReport, w: int, rate_bytes: float | None) -> dict:
    """The figures of one run, from the per-worker stats the job reports (``rate_bytes`` None: no ideal)."""
    sent = np.array([s["bytes_sent"] for s in rep.workers], dtype=np.int64)   # sent[i][j]: i -> j
    out_b, in_b = sent.sum(axis=1), sent.sum(axis=0)
    total = int(sent.sum())
    busiest = int(max(out_b.max(), in_b.max()))
    ideal = total / (w * rate_bytes) if rate_bytes else None
    used = sorted({s["encoding"] for s in rep.workers})
    shuffled = sum(s["shuffled_values"] for s in rep.workers)
    shuffle_bytes = sum(s["shuffle_bytes"] for s in rep.workers)
    return {
        "seconds": rep.seconds,
        "count_seconds": max(s["phases"]["count"] for s in rep.workers),      # compact codes here
        "shuffle_seconds": max(s["phases"]["shuffle"] for s in rep.workers),  # compact: all three rounds
        "encoding_used": used[0] if len(used) == 1 else "mixed:" + "+".join(used),
        "rounds": max(s["rounds"] for s in rep.workers),
        "max_inbound_streams": max(s["max_inbound_streams"] for s in rep.workers),
        "peak_buffered_bytes": max(s["peak_buffered_bytes"] for s in rep.workers),
        "peak_send_queue_bytes": max(s["peak_send_queue_bytes"] for s in rep.workers),
        "busiest_link_bytes": busiest,
        "busiest_host": int(np.argmax(np.maximum(out_b, in_b))),
        "total_bytes": total,
        "shuffled_values": shuffled,
        "shuffle_bytes": shuffle_bytes,
        "bytes_per_value": shuffle_bytes / shuffled if shuffled else None,
        "ideal_seconds": ideal,
        "bound_seconds": busiest / rate_bytes if rate_bytes else None,
        "time_over_ideal": rep.seconds / ideal if ideal else None,
        "credit_wait_seconds_max": max(s["credit_wait_seconds"] for s in rep.workers),
        "result": {"value": rep.result["value"], "count": rep.result["count"]},
    }


def sweep(addrs: list[str], token: str, path: str | Path, grid: list[tuple[str, str]], rate_bytes: float | None,
          want: tuple[int, int], repeat: int, log, **job_kw) -> list[dict]:
    """Every (strategy, encoding) ``repeat`` times, interleaved; one row per cell with its median run."""
    hosts = len(addrs)
    job(addrs, token, path, *grid[0], **job_kw)   # warm-up: peer links dial lazily; the first job pays every handshake
    runs: dict[tuple[str, str], list[dict]] = {cell: [] for cell in grid}
    for k in range(repeat):
        for cell in grid:
            runs[cell].append(measure(job(addrs, token, path, *cell, **job_kw), hosts, rate_bytes))
            log(f"  {cell[0]}/{cell[1]} run {k + 1}: {runs[cell][-1]['seconds']:.3f} s "
                f"({runs[cell][-1]['encoding_used']}, {runs[cell][-1]['total_bytes'] / 1e6:.1f} MB)")
    rows = []
    for (strategy, encoding), rs in runs.items():
        med = sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2]
        rows.append({"strategy": strategy, "encoding": encoding, "median": med, "runs": rs,
                     "correct": all((r["result"]["value"], r["result"]["count"]) == want for r in rs),
                     "seconds_all": [r["seconds"] for r in rs]})
    by_cell = {(r["strategy"], r["encoding"]): r["median"]["seconds"] for r in rows}
    for r in rows:
        plain = by_cell.get((r["strategy"], "plain"))
        credit = by_cell.get(("credit", r["encoding"]))
        r["vs_plain"] = r["median"]["seconds"] / plain if plain else None
        r["vs_credit"] = r["median"]["seconds"] / credit if credit else None
    return rows


def _f(x: float | None, fmt: str, width: int) -> str:
    return f"{x:>{width}{fmt}}" if x is not None else f"{'-':>{width}}"


def table(rows: list[dict]) -> str:
    head = (f"{'strategy':<8} {'encoding':<15} {'time s':>7} {'count s':>7} {'shuffle s':>9} {'total MB':>8} {'B/value':>7} "
            f"{'ideal s':>7} {'time/ideal':>10} {'bound s':>7} {'vs plain':>8} {'vs credit':>9} {'max in':>6} "
            f"{'peak buf MB':>11} {'busiest MB':>10}  answer")
    lines = [head, "-" * len(head)]
    for r in rows:
        m = r["median"]
        enc = r["encoding"] if m["encoding_used"] == r["encoding"] else f"{r['encoding']}->{m['encoding_used']}"
        lines.append(f"{r['strategy']:<8} {enc:<15} {m['seconds']:>7.3f} {m['count_seconds']:>7.3f} "
                     f"{m['shuffle_seconds']:>9.3f} "
                     f"{m['total_bytes'] / 1e6:>8.2f} {_f(m['bytes_per_value'], '.2f', 7)} "
                     f"{_f(m['ideal_seconds'], '.3f', 7)} {_f(m['time_over_ideal'], '.2f', 10)} "
                     f"{_f(m['bound_seconds'], '.3f', 7)} {_f(r['vs_plain'], '.2f', 8)} {_f(r['vs_credit'], '.2f', 9)} "
                     f"{m['max_inbound_streams']:>6} {m['peak_buffered_bytes'] / 1e6:>11.2f} "
                     f"{m['busiest_link_bytes'] / 1e6:>10.2f}  {'ok' if r['correct'] else 'MISMATCH'}")
    return "\n".join(lines)


def _names(text: str, known: tuple[str, ...], what: str, ap: argparse.ArgumentParser) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        ap.error(f"--{what} names nothing")
    if bad := [s for s in names if s not in known]:
        ap.error(f"unknown {what[:-1]} {bad[0]!r} (known: {', '.join(known)})")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--rates", "--rate", dest="rates", default="100mbit",
                    help="comma-separated link rates, per direction of each host link (tc syntax); one bed each")
    ap.add_argument("--delay", type=float, default=1.0, help="one-way delay per link direction, ms (needs netem)")
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--encodings", default="plain,compact",
                    help=f"comma-separated mode encodings ({', '.join(ENCODINGS)}); auto's choice is reported")
    ap.add_argument("--loopback", action="store_true",
                    help="also run the grid on a local cluster on 127.0.0.1 (unshaped; shows what auto picks there)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the median run is reported")
    ap.add_argument("--fan-in", type=int, default=1)
    ap.add_argument("--credits", type=int, default=4)
    ap.add_argument("--chunk-bytes", type=int, default=1 << 20)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    ap.add_argument("--json-out", metavar="FILE", help="also write that JSON object to FILE")
    a = ap.parse_args(argv)
    strategies = _names(a.strategies, STRATEGIES, "strategies", ap)
    encodings = _names(a.encodings, ENCODINGS, "encodings", ap)
    rates = [r.strip() for r in a.rates.split(",") if r.strip()]
    for r in rates:
        try:
            testbed.parse_rate(r)
        except ValueError as exc:
            ap.error(str(exc))
    if not rates and not a.loopback:
        ap.error("--rates names no rate and --loopback is off: nothing to run")
    grid = [(s, e) for s in strategies for e in encodings]
    if rates:
        ok, why = testbed.available()
        if not ok:
            print(f"error: {why}", file=sys.stderr)
            return 1
    log = (lambda *x: None) if a.json else (lambda *x: print(*x, file=sys.stderr, flush=True))
    job_kw = {"fan_in": a.fan_in, "credits": a.credits, "chunk_bytes": a.chunk_bytes, "timeout": a.timeout}

    beds = []
    with tempfile.TemporaryDirectory(prefix="bench-shuffle-") as tmp:
        parts = generate(a.rows, a.hosts, "unique-dup", a.seed)
        write_shards(parts, Path(tmp), "npy")
        want = reference_mode(np.concatenate(parts))
        del parts
        for rate in rates:
            shape = testbed.LinkShape(rate, a.delay)
            with testbed.TestBed(a.hosts, shape, job_timeout=a.timeout) as bed:
                log(bed.describe())
                rows = sweep(bed.addrs, bed.token, tmp, grid, shape.bytes_per_second, want, a.repeat, log,
                             **job_kw, link_mbit=shape.bytes_per_second * 8 / 1e6)
                beds.append({"rate": rate, "rate_bytes_per_second": shape.bytes_per_second,
                             "delay_ms": a.delay if bed.delay_applied else 0.0, "rows": rows})
        if a.loopback:
            info = launcher.start(a.hosts, "127.0.0.1", None, str(Path(tmp) / "logs"), "warning",
                                  extra_args=["--job-timeout", f"{a.timeout:g}"])
            try:
                log(f"loopback: {a.hosts} workers on 127.0.0.1 (pids {info.pids})")
                rows = sweep(info.workers, info.token, tmp, grid, None, want, a.repeat, log, **job_kw)
            finally:
                launcher.stop(info)
            beds.append({"rate": LOOPBACK, "rate_bytes_per_second": None, "delay_ms": 0.0, "rows": rows})
    picks = {b["rate"]: sorted({r["median"]["encoding_used"] for r in b["rows"] if r["encoding"] == "auto"})
             for b in beds}
    doc = {"hosts": a.hosts, "rows": a.rows, "values_bytes": a.rows * 8, "seed": a.seed, "delay_requested_ms": a.delay,
           "fan_in": a.fan_in, "credits": a.credits, "chunk_bytes": a.chunk_bytes, "repeat": a.repeat,
           "expected": {"value": want[0], "count": want[1]}, "auto_picks": picks, "beds": beds}
    correct = all(r["correct"] for b in beds for r in b["rows"])
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(doc) + "\n")
    if a.json:
        print(json.dumps(doc))
    else:
        print(f"mode of unique-dup, {a.rows:,} rows ({a.rows * 8 / 1e6:.0f} MB) on {a.hosts} hosts; "
              f"F={a.fan_in} C={a.credits} chunk={a.chunk_bytes} B; median of {a.repeat} runs")
        for b in beds:
            where = "loopback (127.0.0.1, unshaped)" if b["rate"] == LOOPBACK else \
                f"links {b['rate']} each way, delay {b['delay_ms']:g} ms"
            print(f"\n{where}; all runs: " + ", ".join(
                f"{r['strategy']}/{r['encoding']} " + "/".join(f"{x:.2f}" for x in r["seconds_all"]) for r in b["rows"]))
            print(table(b["rows"]))
        if any(picks.values()):
            print("\nauto picked: " + "; ".join(f"{k}: {'/'.join(v)}" for k, v in picks.items() if v))
        for b in beds:
            for r in b["rows"]:
                if not r["correct"]:
                    print(f"MISMATCH ({b['rate']}): {r['strategy']}/{r['encoding']} answered "
                          f"{[x['result'] for x in r['runs']]}, numpy says value={want[0]} count={want[1]}")
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
