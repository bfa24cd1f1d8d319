#!/usr/bin/env python3
"""``--encoding auto`` against plain and compact: on shaped links of the netns bed and on loopback.

Why: ``auto`` measures the links and the coding at the start of each mode job
(``shardstats.worker.ops.compact_choice``) and must land within 10% of the better of
plain and compact wherever it runs -- on a bed whose hosts have 1 Gbit/s or 100 Mbit/s
links, and within 10% of plain on loopback, where the "link" is a memory copy.  This
runs the mode of the problem's hard dataset (``unique-dup``: every value unique but
one, so nearly all values cross the network) with each encoding, median of
``--repeat`` runs interleaved (run 1 of each encoding, then run 2, ...) so a load
change on a shared machine hits all three alike, in a rotating order (a run right
after compact's found its workers slower: auto always followed it), after one
uncounted warm-up job, and prints per link:

    seconds (median, and every run), / best  (time over the better of plain and compact),
    MB sent (all workers), and what auto chose each run with its figures
    (link rate probed, coding rate, predicted plain and compact seconds, the slowest worker's
    time from entering the choice to knowing it: probe, sample and allreduce).

Every answer is checked against numpy; a wrong one prints MISMATCH and the exit status
is 1.  The bed's names start with ``sse28_`` and its addresses are in 10.228.0.0/16, so
it shares nothing with other beds; it is torn down however the run ends.  Needs root.

    sudo .venv/bin/python scripts/bench_encoding.py                      # 15M rows, 1gbit + 100mbit + loopback
    sudo .venv/bin/python scripts/bench_encoding.py --rows 2000000 --rates 20mbit --repeat 1 --no-loopback
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

if __package__ in (None, ""):     # run as a file (python scripts/bench_encoding.py): make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import testbed  # noqa: E402

from shardstats import reference  # noqa: E402
from shardstats.cluster import launcher  # noqa: E402
from shardstats.cluster.gen import generate, write_shards  # noqa: E402
from shardstats.coordinator.job import JobReport, run_job  # noqa: E402
from shardstats.coordinator.spec import job_spec  # noqa: E402

ENCODINGS = ("plain", "compact", "auto")
LOOPBACK = "loopback"
GOAL = 1.10                  # auto within 10% of the better fixed encoding (of plain on loopback)
PREFIX = "sse28_"
BASE_PORT = 24000            # the loopback cluster's first port


class EncodingBed(testbed.TestBed):
    """The bed with its own names and addresses, so it never meets another bed on this machine."""
    __test__ = False
    name_prefix = PREFIX
    subnet = "10.228.{n}.0/24"


def available() -> tuple[bool, str]:
    return testbed.available(PREFIX)


def job(addrs: list[str], token: str, path: str | Path, encoding: str, timeout: float = 300.0) -> JobReport:
    """One mode job over the shards in ``path`` (absolute) with ``encoding``; nothing else set."""
    return asyncio.run(run_job(addrs, token.encode(), job_spec("mode", str(path), {"encoding": encoding},
                                                               timeout=timeout), absolute_paths=True))


def measure(rep: JobReport, want: tuple[int, int]) -> dict:
    """One run's figures: seconds (load + run), bytes every worker sent, the encoding used and why."""
    ws = rep.workers
    return {"seconds": rep.load_seconds + rep.seconds, "bytes_sent": int(sum(sum(w["bytes_sent"]) for w in ws)),
            "encoding_used": ws[0]["encoding"], "choice": ws[0].get("encoding_choice"),
            "choice_seconds": max((w.get("encoding_choice") or {}).get("seconds", 0.0) for w in ws),
            "result": {"value": rep.result["value"], "count": rep.result["count"]},
            "correct": (rep.result["value"], rep.result["count"]) == want}


def sweep(addrs: list[str], token: str, path: str | Path, want: tuple[int, int], repeat: int, log,
          timeout: float = 300.0) -> dict[str, dict]:
    """Each encoding ``repeat`` times, interleaved; per encoding its runs and the median run's figures."""
    runs: dict[str, list[dict]] = {e: [] for e in ENCODINGS}
    job(addrs, token, path, "plain", timeout)      # warm-up, not counted: fresh workers' first job pays imports
    for i in range(repeat):
        for enc in ENCODINGS[i % 3:] + ENCODINGS[:i % 3]:    # each encoding after each other one in turn
            m = measure(job(addrs, token, path, enc, timeout), want)
            runs[enc].append(m)
            log(f"  run {i + 1} {enc:8s} {m['seconds']:6.2f} s  {m['bytes_sent'] / 1e6:7.1f} MB  "
                f"used {m['encoding_used']}{'' if m['correct'] else '  MISMATCH'}")
    out = {}
    for enc, rs in runs.items():
        med = statistics.median(r["seconds"] for r in rs)
        mid = min(rs, key=lambda r: abs(r["seconds"] - med))
        out[enc] = {"seconds": med, "seconds_all": [r["seconds"] for r in rs], "bytes_sent": mid["bytes_sent"],
                    "used": [r["encoding_used"] for r in rs], "choices": [r["choice"] for r in rs],
                    "choice_seconds": [r["choice_seconds"] for r in rs], "correct": all(r["correct"] for r in rs),
                    "results": [r["result"] for r in rs]}
    return out


def verdict(where: str, cells: dict[str, dict]) -> dict:
    """auto over its target: the better of plain and compact on a shaped link, plain on loopback."""
    target = cells["plain"]["seconds"] if where == LOOPBACK else min(cells["plain"]["seconds"],
                                                                     cells["compact"]["seconds"])
    ratio = cells["auto"]["seconds"] / target
    return {"target": "plain" if where == LOOPBACK else "best of plain and compact", "ratio": round(ratio, 3),
            "met": ratio <= GOAL}


def table(where: str, cells: dict[str, dict], v: dict) -> str:
    best = min(cells["plain"]["seconds"], cells["compact"]["seconds"])
    lines = [f"{'encoding':9s} {'median s':>9s} {'runs':>20s} {'/ best':>7s} {'MB sent':>8s}  used"]
    for enc in ENCODINGS:
        c = cells[enc]
        runs = "/".join(f"{x:.2f}" for x in c["seconds_all"])
        lines.append(f"{enc:9s} {c['seconds']:9.2f} {runs:>20s} {c['seconds'] / best:7.2f} "
                     f"{c['bytes_sent'] / 1e6:8.1f}  {'/'.join(c['used'])}")
    for i, ch in enumerate(cells["auto"]["choices"]):
        if ch and "predicted_plain_s" in ch:
            link = "too fast to time" if ch["link_mbit"] is None else f"{ch['link_mbit']:g} Mbit/s"
            lines.append(f"  auto run {i + 1}: {ch['encoding']} -- link {ch['link']} {link} "
                         f"(slowest {ch['slowest_link_mbit']}), coding {ch['coding_mvalues_per_s']:g} Mvalues/s "
                         f"at a load of {ch['load_per_cpu']:g} a core, predicted plain {ch['predicted_plain_s']:.2f} s"
                         f" / compact {ch['predicted_compact_s']:.2f} s; "
                         f"choosing took {cells['auto']['choice_seconds'][i]:.3f} s")
        elif ch:
            lines.append(f"  auto run {i + 1}: {ch['encoding']} -- {ch['why']}")
    lines.append(f"auto / {v['target']}: {v['ratio']:.2f} -> goal (<= {GOAL:.2f}) {'met' if v['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=15_000_000)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--rates", default="1gbit,100mbit", help="comma-separated tc rates; empty: loopback only")
    ap.add_argument("--delay", type=float, default=1.0, help="one-way delay per link direction, ms (needs netem)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-loopback", dest="loopback", action="store_false")
    ap.add_argument("--base-port", type=int, default=BASE_PORT, help="the loopback cluster's first port")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout instead of the tables")
    a = ap.parse_args(argv)
    rates = [r.strip() for r in a.rates.split(",") if r.strip()]
    if a.repeat < 1 or a.rows < 2 * a.hosts:
        ap.error("--repeat must be >= 1 and --rows at least two a host")
    if rates:
        ok, why = available()
        if not ok:
            print(f"error: {why}", file=sys.stderr)
            return 1
    log = (lambda *x: None) if a.json else (lambda *x: print(*x, file=sys.stderr, flush=True))
    beds = []
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}bench-") as tmp:
        parts = generate(a.rows, a.hosts, "unique-dup", a.seed)
        write_shards(parts, Path(tmp), "npy")
        r = reference.mode(np.concatenate(parts))
        want = (r["value"], r["count"])
        del parts
        for rate in rates:
            with EncodingBed(a.hosts, testbed.LinkShape(rate, a.delay), job_timeout=a.timeout) as bed:
                log(bed.describe())
                beds.append({"where": rate, "cells": sweep(bed.addrs, bed.token, tmp, want, a.repeat, log, a.timeout)})
        if a.loopback:
            info = launcher.start(a.hosts, "127.0.0.1", a.base_port, str(Path(tmp) / "logs"), "warning",
                                  extra_args=["--job-timeout", f"{a.timeout:g}"])
            try:
                log(f"loopback: {a.hosts} workers on 127.0.0.1:{a.base_port}.. (pids {info.pids})")
                beds.append({"where": LOOPBACK, "cells": sweep(info.workers, info.token, tmp, want, a.repeat, log,
                                                               a.timeout)})
            finally:
                launcher.stop(info)
    for b in beds:
        b["verdict"] = verdict(b["where"], b["cells"])
    correct = all(c["correct"] for b in beds for c in b["cells"].values())
    if a.json:
        print(json.dumps({"rows": a.rows, "hosts": a.hosts, "repeat": a.repeat, "expected": list(want),
                          "beds": beds}))
    else:
        print(f"mode of unique-dup, {a.rows:,} rows on {a.hosts} workers; median of {a.repeat} runs")
        for b in beds:
            head = "loopback (127.0.0.1)" if b["where"] == LOOPBACK else f"netns bed, links {b['where']} each way"
            print(f"\n{head}\n{table(b['where'], b['cells'], b['verdict'])}")
        for b in beds:
            for enc, c in b["cells"].items():
                if not c["correct"]:
                    print(f"MISMATCH ({b['where']}, {enc}): {c['results']}, numpy says value={want[0]} "
                          f"count={want[1]}")
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
