"""Shared fixtures: datasets (including the nasty ones) and runners for ops over the in-memory transport."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from shardstats import reference
import pytest

ROOT = Path(__file__).resolve().parent.parent
I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1


def nasty_datasets() -> dict[str, list[np.ndarray]]:
    """Named lists of shards, the cases DEVELOPERS.md lists."""
    rng = np.random.default_rng(7)
    a = lambda *xs: np.array(xs, dtype=np.int64)  # noqa: E731
    big = rng.integers(-50, 50, 2000)
    uniq = rng.permutation(10_000)[:3000].astype(np.int64)
    return {
        "single value": [a(42)],
        "single value, empty shards around": [a(), a(-5), a()],
        "all equal": [np.full(500, 9, np.int64), np.full(300, 9, np.int64)],
        "ties": [a(1, 2, 3), a(3, 2, 1), a(5, 5, 4, 4)],
        "negative": [a(-3, -3, -1), a(-7, -3)],
        "int64 extremes": [a(I64_MIN, I64_MAX, I64_MAX), a(I64_MIN, 0)],
        "extremes, even count": [a(I64_MAX, I64_MAX - 1), a(I64_MIN, I64_MIN + 1)],
        "even count": [a(1, 2), a(3, 4)],
        "odd count": [a(1, 2), a(3)],
        "dup split across shards": [np.append(uniq[:1500], 123_456), np.append(uniq[1500:], 123_456)],
        "multiples of W": [np.arange(0, 1200, 12, dtype=np.int64), np.arange(0, 1200, 10, dtype=np.int64)],
        "skewed": [np.concatenate([np.full(3000, 17, np.int64), big]), big[:10]],
        "many empty shards": [a()] * 5 + [a(8, 8, 1)] + [a()] * 6,
        "random": list(np.array_split(big, 7)),
    }


def split_for(shards: list[np.ndarray], workers: int) -> list[np.ndarray]:
    """Deal the shards round-robin to ranks, as the coordinator gives each file to exactly one worker."""
    parts = [[] for _ in range(workers)]
    for i, s in enumerate(shards):
        parts[i % workers].append(s)
    return [np.concatenate(p).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts]


def find_op(op):
    """An ``Op`` from itself, its name, or its run function (tests import the functions)."""
    from shardstats.worker.ops import registry
    from shardstats.worker.ops.contract import Op
    if isinstance(op, Op):
        return op
    if isinstance(op, str):
        return registry.get(op)
    return next(o for o in registry.ops().values() if o.run is op)


def run_op(op, shards: list[np.ndarray], workers: int, params: dict | None = None, net=None,
           known_total: bool = False):
    """Runs ``op`` on every rank of an in-memory network; returns (rank 0 result, per-rank stats, network).

    ``params`` is a mapping of the op's parameters, validated by the op's own ``Params`` (as on a worker).
    ``known_total`` tells every rank the job's value count and the op's load facts combined, as the
    coordinator's ``run`` message does (then ``--shuffle auto`` may pick the tree for a job of one chunk);
    without it the ops shuffle as told and reduce any facts themselves."""
    import functools
    from shardstats.testing import run_on_ranks
    from shardstats.worker.comm.inmemory import InMemoryNetwork
    net = net or InMemoryNetwork(workers, timeout=20)
    parts = split_for(shards, workers)
    if known_total:
        the_op = find_op(op)
        own = [the_op.load_facts(p) for p in parts] if the_op.load_facts is not None else None
        for r, c in enumerate(net.comms):
            c.total = sum(map(len, parts))
            if own is not None:
                c.facts = functools.reduce(the_op.merge_facts, [f for f, _ in own])
                c.own_facts, c.kept = own[r]
    out, net = run_on_ranks(find_op(op), parts, params, net=net)
    return out[0][0], [o[1] for o in out], net


def ref_mode(values: np.ndarray) -> tuple[int, int, list[int]]:
    """(mode, count, every tied value) from collections.Counter: independent of numpy and of our code."""
    from collections import Counter
    c = Counter(values.tolist())
    top = max(c.values())
    ties = sorted(v for v, k in c.items() if k == top)
    return ties[0], top, ties


def shard_files(out: Path, rows: int, shards: int, seed: int) -> tuple[Path, dict]:
    """The problem's dataset as .npy shards in ``out``, with the reference answers (numpy, one sort)."""
    from shardstats.cluster.gen import generate, write_shards
    parts = generate(rows, shards, "unique-dup", seed=seed)
    write_shards(parts, out, "npy")
    r = reference.mode_and_median(np.concatenate(parts))
    return out, {"mode": (r["mode"], r["mode_count"]), "median": (r["median_lower"], r["median_upper"])}


@pytest.fixture
def cluster_env(tmp_path, monkeypatch):
    """An isolated cluster file for CLI tests."""
    monkeypatch.setenv("CLUSTER_FILE", str(tmp_path / "cluster.json"))
    return tmp_path


def free_base(n: int = 10) -> int:
    """The first of ``n`` consecutive free ports, below the kernel's ephemeral range (and the ``n`` HTTP ports
    ``cluster up`` would give those workers, ``http_port_offset`` above them, free and below it too).

    Ports near one the OS just handed out are where outgoing connections take their
    local ports (every peer link of every cluster another test keeps running), so a
    run of ``n`` from there was often taken by the time ``cluster up`` checked it: a
    module's whole cluster fixture failed that way in CI. Below the ephemeral range no
    outgoing connection lands; a random start keeps concurrent runs apart.
    """
    import random
    from shardstats.cluster.launcher import ports_in_use
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    from shardstats.settings import DEFAULTS
    off = DEFAULTS.http_port_offset          # `cluster up` gives worker i an HTTP port too: BASE + off + i
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10000, max(10001, low - n - off))
        if not ports_in_use("127.0.0.1", [*range(base, base + n), *range(base + off, base + off + n)]):
            return base
    raise RuntimeError("no run of free ports found")


def cli(*args: str, env: dict | None = None, cwd=None, timeout: float = 120):
    import subprocess
    exe = [sys.executable, "-m", "shardstats.cluster.cli", *args]
    return subprocess.run(exe, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.fixture
async def inproc(tmp_path):
    """Three workers in the test's own event loop (real TCP, real codec): ``shardstats.testing``."""
    from shardstats.testing import in_process_cluster
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        yield c


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only): a disk that fills -- for spill folders and --out alike."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
