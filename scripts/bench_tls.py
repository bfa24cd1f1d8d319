#!/usr/bin/env python3
"""What TLS costs: the mode of ``--rows`` values (the problem's unique-dup data), plain TCP vs mutual TLS.

Two local clusters of ``--workers`` workers run side by side, one plain, one with
the certificates of ``cluster tls init``; each round runs ``cluster submit mode
--json`` once on each (order alternating, so drift in the machine's load hits
both alike).  Reported per variant: the job's seconds (load + run, as the JSON
stats say; the median of the rounds and the fastest), the bytes the op sent
(the application's count, the same for both), the bytes that crossed loopback
(TCP/IP headers, handshakes and TLS records included; only with ``--netns``, where
the run has a network namespace, and so a loopback, of its own), and the CPU
seconds the workers spent.  The answer is checked against numpy every time.

    .venv/bin/python scripts/bench_tls.py                          # 10M values, 4 workers, 5 rounds
    sudo .venv/bin/python scripts/bench_tls.py --netns --json      # + wire bytes, in a private namespace

Exit status 1 when an answer is wrong or a job fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from shardstats import reference


def lo_bytes() -> int:
    """Bytes received on loopback in this network namespace (/proc/self/net is per namespace)."""
    for line in Path("/proc/self/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    raise RuntimeError("no loopback interface")


def cpu_seconds(pids: list[int]) -> float:
    import psutil
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=lambda s: int(float(s)), default=10_000_000)
    ap.add_argument("--shards", type=int, default=10)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "shardstats-bench-tls"))
    ap.add_argument("--netns", action="store_true", help="run in a private network namespace (root): wire bytes")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.netns and os.environ.get("_BENCH_TLS_IN_NETNS") != "1":
        argv = [sys.executable, *sys.argv]
        cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
        return subprocess.call(cmd, env={**os.environ, "_BENCH_TLS_IN_NETNS": "1"})
    in_netns = os.environ.get("_BENCH_TLS_IN_NETNS") == "1"

    from shardstats.cluster import certs, launcher
    from shardstats.cluster.gen import generate, write_shards

    data = Path(a.data_dir) / f"unique-dup-{a.rows}-{a.shards}"
    if not data.exists():
        tmp = data.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_shards(generate(a.rows, a.shards, "unique-dup", 0), tmp, "npy")
        tmp.rename(data)
    values = np.concatenate([np.load(f) for f in sorted(data.glob("*.npy"))])
    r = reference.mode(values)
    want = (r["value"], r["count"])
    del values

    work = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    certs.init(work / "tls", a.workers)
    clusters = {}
    try:
        clusters["plain"] = launcher.start(a.workers, "127.0.0.1", None, str(work / "logs-plain"), "warning")
        clusters["tls"] = launcher.start(a.workers, "127.0.0.1", None, str(work / "logs-tls"), "warning",
                                         tls_dir=work / "tls")
        for name, info in clusters.items():
            info.save(work / f"{name}.json")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
        rows: dict[str, list[dict]] = {k: [] for k in clusters}

        def once(name: str) -> dict:
            info = clusters[name]
            cpu0, lo0 = cpu_seconds(info.pids), lo_bytes()
            r = subprocess.run([sys.executable, "-m", "shardstats.cluster.cli", "submit", "mode", "--input", str(data),
                                "--json", "-q", "--cluster-file", str(work / f"{name}.json")],
                               capture_output=True, text=True, env=env, timeout=600)
            lo1, cpu1 = lo_bytes(), cpu_seconds(info.pids)
            if r.returncode != 0:
                raise SystemExit(f"{name}: cluster submit failed: {r.stderr.strip()}")
            doc = json.loads(r.stdout)
            got = (doc["result"]["value"], doc["result"]["count"])
            if got != want:
                raise SystemExit(f"{name}: wrong answer {got}, numpy says {want}")
            return {"seconds": doc["stats"]["seconds"], "bytes_sent": doc["stats"]["bytes_sent"],
                    "wire_bytes": lo1 - lo0, "worker_cpu": cpu1 - cpu0}

        for name in clusters:          # warm-up: page cache, peer links dialed, imports compiled
            once(name)
        for i in range(a.rounds):
            for name in (("plain", "tls") if i % 2 == 0 else ("tls", "plain")):
                rows[name].append(once(name))
    finally:
        for info in clusters.values():
            launcher.stop(info)
        shutil.rmtree(work, ignore_errors=True)

    out = {"rows": a.rows, "workers": a.workers, "rounds": a.rounds, "own_loopback": in_netns, "variants": {}}
    for name, rs in rows.items():
        out["variants"][name] = {
            "seconds_median": statistics.median(r["seconds"] for r in rs),
            "seconds_min": min(r["seconds"] for r in rs),
            "bytes_sent": rs[0]["bytes_sent"],
            "wire_bytes": statistics.median(r["wire_bytes"] for r in rs) if in_netns else None,
            "worker_cpu_median": statistics.median(r["worker_cpu"] for r in rs),
        }
    p, t = out["variants"]["plain"], out["variants"]["tls"]
    out["tls_over_plain"] = {"seconds": t["seconds_median"] / p["seconds_median"],
                             "worker_cpu": t["worker_cpu_median"] / p["worker_cpu_median"],
                             "wire_bytes": t["wire_bytes"] / p["wire_bytes"] if in_netns else None}
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"mode of {a.rows:,} values (unique-dup), {a.workers} workers on 127.0.0.1, {a.rounds} rounds; "
          f"answer checked against numpy every run")
    print(f"{'':6} {'median s':>9} {'min s':>8} {'op bytes sent':>14} {'loopback bytes':>15} {'worker CPU s':>13}")
    for name, v in out["variants"].items():
        wire = f"{v['wire_bytes']:,.0f}" if v["wire_bytes"] is not None else "n/a"
        print(f"{name:6} {v['seconds_median']:9.3f} {v['seconds_min']:8.3f} {v['bytes_sent']:14,} {wire:>15} "
              f"{v['worker_cpu_median']:13.2f}")
    r = out["tls_over_plain"]
    print(f"tls/plain: seconds x{r['seconds']:.2f}, worker CPU x{r['worker_cpu']:.2f}"
          + (f", loopback bytes x{r['wire_bytes']:.4f}" if r["wire_bytes"] is not None else
             " (loopback bytes: run with --netns for a loopback of its own)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
