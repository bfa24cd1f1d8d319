#!/usr/bin/env python3
"""The same shards read from a local S3 server vs from disk, mode and median, in one run.

``--rows`` values (default 10M) of the problem's ``unique-dup`` dataset in ``--shards``
``.npy`` files, written to a temporary directory and uploaded to a moto server started
here on 127.0.0.1 (a child process).  One local cluster of ``--workers`` workers runs each
op ``--repeat`` times on each source; the figure is the median wall time of a whole job
(listing, every worker reading its share, the op), with the load phase shown apart.
Every answer is checked against numpy.  Then the two S3 clients we considered read
every object once, one after another, in this process: s3fs (what the workers use)
and pyarrow.fs.S3FileSystem (given the endpoint explicitly: it ignores AWS_ENDPOINT_URL).

moto is a Python server: its throughput, not the network, bounds the S3 rows here; a
real store serves each worker at its own link's speed.

    .venv/bin/python scripts/bench_s3.py                  # 10M values, 4 workers
    .venv/bin/python scripts/bench_s3.py --rows 1e6 --repeat 1

Exit status 1 when an answer does not match numpy.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(log: Path, server: str | None = None) -> tuple[subprocess.Popen, str]:
    """A moto S3 server on a free loopback port, once it accepts connections: (its process, its endpoint).
    ``server``: Python source to run instead of ``moto.server`` (given the port as its argument)."""
    port = _free_port()
    argv = ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)] if server is None else ["-c", server, str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"moto server did not start; see {log}") from None
            time.sleep(0.1)


def reference(parts: list[np.ndarray]) -> dict:
    from shardstats import reference as sequential
    ref = sequential.mode_and_median(np.concatenate(parts))
    return {"mode": (ref["mode"], ref["mode_count"]), "median": (ref["median_lower"], ref["median_upper"])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=lambda t: int(float(t)), default=10_000_000)
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    import boto3
    from shardstats.cluster import gen, launcher
    from shardstats.coordinator.job import run_job
    from shardstats.coordinator.spec import job_spec

    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    parts = gen.generate(args.rows, args.shards, "unique-dup", seed=0)
    gen.write_shards(parts, tmp / "disk", "npy")
    ref = reference(parts)
    moto, endpoint = start_moto(tmp / "moto.log")
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    info = None
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        files = sorted((tmp / "disk").glob("*.npy"))
        for f in files:
            client.upload_file(str(f), "bench", f"shards/{f.name}")
        nbytes = sum(f.stat().st_size for f in files)
        info = launcher.start(args.workers, "127.0.0.1", None, str(tmp / "logs"), "warning")
        sources = {"disk": str(tmp / "disk"), "s3": "s3://bench/shards/"}
        rows, bad = [], 0
        for op in ("mode", "median"):
            times: dict[str, tuple[float, float]] = {}
            for name, src in sources.items():
                runs = []
                for _ in range(1 + args.repeat):             # the first run warms the page cache and the store
                    t = time.perf_counter()
                    rep = asyncio.run(run_job(info.workers, info.token.encode(), job_spec(op, src, timeout=600)))
                    runs.append((time.perf_counter() - t, rep.load_seconds))
                    got = ((rep.result["value"], rep.result["count"]) if op == "mode"
                           else (rep.result["lower"], rep.result["upper"]))
                    if got != ref[op]:
                        bad += 1
                        print(f"MISMATCH {op} from {name}: {got} != {ref[op]}", file=sys.stderr)
                timed = runs[1:] or runs
                times[name] = (statistics.median(t for t, _ in timed), statistics.median(l for _, l in timed))
            rows.append((op, times))
        print(f"{args.rows:,} values in {len(files)} .npy shards ({nbytes / 2**20:.0f} MiB), {args.workers} workers, "
              f"median of {args.repeat} runs (whole job: list + read + op)")
        print(f"{'op':8}{'disk s':>10}{'(load)':>9}{'s3 s':>10}{'(load)':>9}{'s3/disk':>10}")
        for op, t in rows:
            print(f"{op:8}{t['disk'][0]:10.2f}{t['disk'][1]:9.2f}{t['s3'][0]:10.2f}{t['s3'][1]:9.2f}"
                  f"{t['s3'][0] / t['disk'][0]:10.1f}")
        print(client_row(endpoint, [f"bench/shards/{f.name}" for f in files], nbytes))
        return 1 if bad else 0
    finally:
        if info is not None:
            launcher.stop(info)
        launcher.terminate([moto.pid], 5.0)
        moto.wait(5)


def client_row(endpoint: str, keys: list[str], nbytes: int) -> str:
    """Both clients read every object once, sequentially, in this process (after the jobs warmed the store)."""
    import pyarrow.fs as pafs
    from shardstats.worker.io.objects import store
    fs = store()
    t = time.perf_counter()
    for k in keys:
        with fs.open(f"s3://{k}", "rb") as f:
            f.read()
    s3fs_s = time.perf_counter() - t
    pfs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1")
    t = time.perf_counter()
    for k in keys:
        with pfs.open_input_stream(k) as f:
            f.read()
    pa_s = time.perf_counter() - t
    mib = nbytes / 2**20
    return (f"one process reading every object: s3fs {s3fs_s:.2f} s ({mib / s3fs_s:.0f} MiB/s), "
            f"pyarrow.fs {pa_s:.2f} s ({mib / pa_s:.0f} MiB/s), pyarrow/s3fs {pa_s / s3fs_s:.2f}")


if __name__ == "__main__":
    sys.exit(main())
