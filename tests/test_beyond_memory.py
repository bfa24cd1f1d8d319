"""Values beyond a worker's memory budget: kept on disk (a map, or a spill file), the mode in hash passes,
the median's counting rounds block by block; the answers equal numpy's; the spill folder is cleaned
however the job ends; a full spill disk fails the job in one line; workers in a memory cgroup smaller
than their share of the data answer exactly and are never killed (issue 25)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shardstats import reference
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import InputError, JobError
from shardstats.settings import DEFAULTS
from shardstats.testing import in_process_cluster
from shardstats.worker import spill
from shardstats.worker.data.partition import owners
from shardstats.worker.io import ondisk
from scripts import cgroups
from tests.conftest import cli, free_base

pytestmark = pytest.mark.timeout(120)

I64 = np.iinfo(np.int64)
BIG = 600_000            # values per shard: 4.8 MB, over the 4 MiB a pass may hold under the tests' budget


def _datasets(rng) -> dict[str, list[np.ndarray]]:
    u = rng.integers(-10**12, 10**12, BIG)
    dup = rng.integers(-50_000, 50_000, BIG)
    extremes = rng.choice(np.array([I64.min, I64.min + 1, -1, 0, 1, I64.max - 1, I64.max]), BIG)
    split = rng.integers(0, 10**9, BIG)
    split[:40] = 777          # one value repeated, half on each of two shards: the mode
    split2 = rng.integers(0, 10**9, BIG)
    split2[:40] = 777
    return {
        "unique with a planted tie": [u, np.concatenate([u[:5], rng.integers(-10**12, 10**12, BIG)]), np.zeros(0, np.int64)],
        "many ties, negative": [dup, dup[::-1].copy(), dup[:1000].copy()],
        "int64 extremes": [extremes, extremes[:BIG // 2].copy(), np.array([I64.max], np.int64)],
        "dup split across shards, one small rank": [split, split2, np.array([5, 5, 5], np.int64)],
        "all equal": [np.full(BIG, -3, np.int64), np.full(BIG, -3, np.int64), np.full(7, -3, np.int64)],
    }


def _write(d: Path, shards: list[np.ndarray], text_last: bool = False) -> None:
    d.mkdir()
    for i, s in enumerate(shards):
        if text_last and i == len(shards) - 1:
            np.savetxt(d / f"s{i}.txt", s, fmt="%d")     # read whole, then appended to the spill file
        else:
            np.save(d / f"s{i}.npy", s)


def _settings(tmp_path) -> DEFAULTS.__class__:
    # Below the test process's own size: every rank may hold jobs.MIN_IN_MEMORY (4 MiB) of values at once.
    # keyed_overhead 0: in one test process the engine's imports are shared, and slices as thin as 4 MiB are
    # what these tests exercise (test_a_budget_below_the_engine... checks the default's refusal)
    return dataclasses.replace(DEFAULTS, memory_limit=64 << 20, spill_dir=str(tmp_path / "spill"), keyed_overhead=0)


def test_grace_slices_partition_the_values_and_each_spreads_over_every_owner(tmp_path):
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.integers(-10**15, 10**15, 300_000), np.full(1000, 42), [I64.min, I64.max]])
    np.save(tmp_path / "v.npy", values)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    box = spill.SpillDir(tmp_path / "spill", "j1", 0)
    paths = ondisk.partition(mapped, 5, box)
    slices = [ondisk.read_slice(p, box) for p in paths]
    assert Counter(np.concatenate(slices).tolist()) == Counter(values.tolist())
    for p, s in enumerate(slices):       # the same slices as the in-memory path takes
        assert sorted(s.tolist()) == sorted(ondisk.pass_slice(values, p, 5).tolist())
        assert set(np.bincount(owners(s, 10), minlength=10).nonzero()[0]) == set(range(10))
    assert not set(slices[0].tolist()) & set(slices[1].tolist())
    assert box.written == box.read == values.nbytes
    box.close()
    assert not (tmp_path / "spill" / box.path.name).exists()


@pytest.mark.parametrize("name", list(_datasets(np.random.default_rng(0))))
async def test_mode_and_median_beyond_the_budget_equal_numpy(tmp_path, name):
    shards = _datasets(np.random.default_rng(7))[name]
    d = tmp_path / "data"
    _write(d, shards, text_last=name.startswith("many ties"))
    allv = np.concatenate(shards)
    async with in_process_cluster(3, root=str(tmp_path), settings=_settings(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("mode", str(d), {"ties": "all"}))
        want = reference.mode(allv, tie_limit=len(rep.result["ties"]))
        assert rep.result == want
        assert rep.result["tie_count"] == sum(1 for c in Counter(allv.tolist()).values() if c == want["count"])
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        on_disk = [w for w in rep.workers if w.get("spill_bytes_written")]     # the ranks over the budget
        assert on_disk and all(w["spill_bytes_written"] == w["spill_bytes_read"] >= 8 * w["values"] for w in on_disk)
        counts = Counter(allv.tolist())
        rep = await run_job(c.addrs, c.token, job_spec("distinct", str(d), {}))
        assert rep.result["value"] == len(counts) and max(w.get("passes", 1) for w in rep.workers) > 1
        rep = await run_job(c.addrs, c.token, job_spec("topk", str(d), {"k": 5}))
        want_top = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))[:5]
        assert [tuple(i) for i in rep.result["items"]] == want_top
        last = want_top[-1][1]
        assert rep.result["boundary_ties"] == sum(1 for c in counts.values() if c == last)
        rep = await run_job(c.addrs, c.token, job_spec("stats", str(d), {}))
        assert (rep.result["count"], rep.result["min"], rep.result["max"]) == (len(allv), int(allv.min()),
                                                                               int(allv.max()))
        assert rep.result["sum"] == sum(int(x) for x in allv.tolist())
        rep = await run_job(c.addrs, c.token, job_spec("describe", str(d), {"quantiles": "0.1,0.9", "k": 3}))
        got = rep.result
        assert got["mode"] == reference.mode(allv, tie_limit=len(got["mode"]["ties"]))
        assert got["distinct"]["value"] == len(counts) and [tuple(i) for i in got["topk"]["items"]] == want_top[:3]
        assert (got["stats"]["count"], got["stats"]["sum"]) == (len(allv), sum(int(x) for x in allv.tolist()))
        want_med = reference.median(allv, ("0.1", "0.9"))
        assert (got["median"]["lower"], got["median"]["upper"]) == (want_med["lower"], want_med["upper"])
        assert {q: v["value"] for q, v in got["median"]["quantiles"].items()} == \
            {q: v["value"] for q, v in want_med["quantiles"].items()}
        rep = await run_job(c.addrs, c.token, job_spec("median", str(d), {"quantiles": "0,0.25,0.9,1"}))
        ref = reference.median(allv)
        assert (rep.result["lower"], rep.result["upper"], rep.result["value"]) == (ref["lower"], ref["upper"],
                                                                                  ref["value"])
        srt = np.sort(allv)
        assert rep.result["quantiles"]["0"]["lower"] == srt[0] and rep.result["quantiles"]["1"]["upper"] == srt[-1]
    assert list((tmp_path / "spill").iterdir()) == []          # every job's folder went with it


async def test_an_op_that_works_in_memory_refuses_values_on_disk_and_the_next_job_runs(tmp_path):
    d = tmp_path / "data"
    _write(d, [np.arange(BIG, dtype=np.int64), np.arange(BIG, dtype=np.int64), np.arange(3, dtype=np.int64)])
    async with in_process_cluster(3, root=str(tmp_path), settings=_settings(tmp_path)) as c:
        with pytest.raises(InputError, match=r"sketch: this worker's values take 5 MiB, more than its memory "
                                             r"budget holds \(--memory-limit\); sketch works in memory only "
                                             r"\(beyond memory: describe, distinct, median, mode, stats, topk\)"):
            await run_job(c.addrs, c.token, job_spec("sketch", str(d), {"kind": "kll"}))
        rep = await run_job(c.addrs, c.token, job_spec("mode", str(d), {}))
        assert rep.result["count"] == 3 and rep.result["value"] == 0
        # what the workers' metrics (/metrics, `cluster status`) counted is what the job's stats say
        for key in ("written", "read"):
            counted = sum(s.metrics.spill_totals()[f"spill_{key}_bytes"] for s in c.servers)
            assert counted == sum(w.get(f"spill_bytes_{key}", 0) for w in rep.workers) > 0
    assert list((tmp_path / "spill").iterdir()) == []


def test_sweep_removes_the_folders_of_dead_workers_only(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"job-abc-w3-p{gone.pid}"
    alive = tmp_path / f"job-abc-w4-p{os.getpid()}"
    other = tmp_path / "job-notours"
    for p in (dead, alive, other):
        p.mkdir()
        (p / "slice-0000.i64").write_bytes(b"x" * 16)
    assert spill.sweep(tmp_path) == [dead.name]
    assert not dead.exists() and alive.exists() and other.exists()


async def test_a_full_spill_disk_fails_the_job_in_one_line_and_the_cluster_serves_the_next(tmp_path, small_disk):
    d = tmp_path / "data"
    _write(d, [np.arange(BIG, dtype=np.int64)] * 2 + [np.arange(5, dtype=np.int64)])
    settings = dataclasses.replace(_settings(tmp_path), spill_dir=str(small_disk))
    async with in_process_cluster(3, root=str(tmp_path), settings=settings) as c:
        with pytest.raises(JobError, match=rf"^worker \d: spilling to {small_disk}: the disk is full \(--spill-dir\)$"):
            await run_job(c.addrs, c.token, job_spec("mode", str(d), {}))
        assert list(small_disk.iterdir()) == []
        small = tmp_path / "small-data"
        _write(small, [np.array([1, 2, 2], np.int64), np.array([2, 3], np.int64)])
        rep = await run_job(c.addrs, c.token, job_spec("mode", str(small), {}))
        assert (rep.result["value"], rep.result["count"]) == (2, 3)
        # a keyed job's runs (worker/engine/runs.py) fill the disk the same way: one line, nothing left
        t, _ = _tables(tmp_path, np.random.default_rng(8))
        with pytest.raises(JobError, match=rf"^worker \d: spilling to {small_disk}: the disk is full \(--spill-dir\)$"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(t), {"by": "s", "agg": ["sum(v)"]}))
        assert list(small_disk.iterdir()) == []
        rep = await run_job(c.addrs, c.token, job_spec("mode", str(small), {}))
        assert (rep.result["value"], rep.result["count"]) == (2, 3)


def test_the_budget_is_the_cgroup_the_worker_runs_in(tmp_path):
    if not cgroups.available():
        pytest.skip("needs root and a writable memory cgroup hierarchy")
    code = "import sys; sys.stdin.readline(); from shardstats.worker.memory import machine_budget; print(machine_budget())"
    with cgroups.MemoryCgroup(123 << 20) as g:
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            g.add(p.pid)
            out, _ = p.communicate("go\n", timeout=30)
        finally:
            p.kill()
            p.wait()
    assert int(out) == 123 << 20


def _npy_shards(tmp_path, n: int, rows: int, planted: tuple[int, int, int], seed: int):
    """``n`` shards of ``rows`` nearly unique values, shard ``planted[0]`` holding ``planted[1]``
    ``planted[2]`` times (the mode)."""
    rng = np.random.default_rng(seed)
    d = tmp_path / "data"
    d.mkdir()
    shards = [rng.integers(-10**12, 10**12, rows) for _ in range(n)]
    shard, value, times = planted
    shards[shard][:times] = value
    for i, s in enumerate(shards):
        np.save(d / f"s{i}.npy", s)
    return d, np.concatenate(shards)


def test_workers_in_memory_cgroups_smaller_than_their_data_answer_exactly(tmp_path):
    """Four real worker processes, each in a 64 MiB memory cgroup (the kernel's limit: page cache included),
    each with 24 MB of values: mode and median exact, no worker killed, no spill file left."""
    if not cgroups.available():
        pytest.skip("needs root and a writable memory cgroup hierarchy")
    d, allv = _npy_shards(tmp_path, 4, 3_000_000, planted=(2, 31337, 9), seed=11)
    cf, sp = str(tmp_path / "c.json"), tmp_path / "spill"
    up = cli("up", "--workers", "4", "--detach", "--cluster-file", cf, "--memory-limit", "64M",
             "--base-port", str(free_base(4)),
             "--spill-dir", str(sp), timeout=60)
    assert up.returncode == 0, up.stderr
    pids = json.loads(Path(cf).read_text())["pids"]
    groups = []
    try:
        for pid in pids:
            g = cgroups.MemoryCgroup(64 << 20).__enter__()
            groups.append(g)
            g.add(pid)
        r = cli("submit", "mode", "--input", str(d), "--json", "--cluster-file", cf, timeout=90)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert (got["result"]["value"], got["result"]["count"]) == (31337, 9)
        assert max(w.get("passes", 1) for w in got["stats"]["per_worker"]) > 1
        r = cli("submit", "median", "--input", str(d), "--json", "--cluster-file", cf, timeout=90)
        assert r.returncode == 0, r.stderr
        ref = reference.median(allv)
        assert (json.loads(r.stdout)["result"]["lower"], json.loads(r.stdout)["result"]["upper"]) == \
            (ref["lower"], ref["upper"])
        assert [g.oom_kills() for g in groups] == [0] * 4
        assert list(sp.iterdir()) == []
    finally:
        cli("down", "--cluster-file", cf, timeout=30)
        for g in groups:
            g.__exit__(None, None, None)


# -- keyed jobs: one key slice a pass (worker/engine/slices.py) -----------------------------------------------

def _tables(tmp_path, rng):
    """Three Parquet files of ~200k rows (one small): int keys in one file and float keys in another (they
    meet as float64), NULL keys, string keys, and a right side with duplicate keys and an int32 key."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    t, r = tmp_path / "t", tmp_path / "r"
    t.mkdir()
    r.mkdir()
    for i, n in enumerate((200_000, 200_000, 500)):
        k = rng.integers(-3000, 3000, n)
        kcol = pa.array(k.astype(np.float64) if i == 1 else k, mask=rng.random(n) < 0.01)
        pq.write_table(pa.table({"k": kcol, "s": pa.array([f"g{x}" for x in rng.integers(0, 700, n)],
                                                          mask=rng.random(n) < 0.01),
                                 "v": rng.integers(-10**6, 10**6, n)}), t / f"p{i}.parquet")
    rk = np.concatenate([np.arange(-3000, 3000, 7), np.arange(-3000, 3000, 7)[:100]]).astype(np.int32)
    pq.write_table(pa.table({"k": pa.array(rk), "w": np.arange(len(rk))}), r / "r.parquet")
    return t, r


async def test_groupby_and_join_beyond_the_budget_equal_duckdb(tmp_path):
    import duckdb
    t, r = _tables(tmp_path, np.random.default_rng(5))
    src = f"read_parquet('{t}/*.parquet', union_by_name=true)"
    con = duckdb.connect()
    async with in_process_cluster(3, root=str(tmp_path), settings=_settings(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(t), {"by": "s", "agg": ["sum(v)", "count()",
                                                                                           "max(k)"], "limit": 50}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        # the spill is visible: per worker and per phase in the stats, a line in the output, a row in the report
        from shardstats.cluster import report
        from shardstats.cluster.output import human, summarize_stats
        st = summarize_stats(rep)
        assert st["spill_bytes_written"] == sum(w.get("spill_bytes_written", 0) for w in rep.workers) > 0
        assert st["spill_by_phase"]["load"]["written"] == st["spill_bytes_written"]      # runs written at the load
        assert st["spill_by_phase"]["read"]["read"] == st["spill_bytes_read"] > 0         # and read back a pass each
        line = next(x for x in human(rep).splitlines() if "spilled" in x)
        assert f"in {st['passes']} passes (load " in line and "read back" not in line
        page = report.fragment({"op": rep.op, "result": rep.result, "stats": st})
        assert "beyond memory" in page and "spilled" in page
        want = con.sql(f"select s, sum(v), count(*), max(k::double) from {src} group by s "
                       f"order by s nulls last limit 50").fetchall()
        assert rep.result["rows"] == con.execute(f"select count(distinct coalesce(s, '<null>')) from {src}").fetchall()[0][0]
        assert [tuple(x) for x in rep.result["data"]] == [tuple(x) for x in want]
        out = tmp_path / "out"
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(t), {"by": "k", "agg": ["sum(v)", "count()"],
                                                                         "out": str(out)}))
        got = con.sql(f"select * from '{out}/*.parquet' order by 1 nulls last").fetchall()
        want = con.sql(f"select k::double, sum(v), count(*) from {src} group by 1 order by 1 nulls last").fetchall()
        assert got == want and rep.result["rows"] == len(want)
        for how in ("inner", "left", "full"):
            rep = await run_job(c.addrs, c.token, job_spec("join", str(t), {"right": str(r), "on": "k", "how": how,
                                                                           "out": str(tmp_path / f"j-{how}")}))
            got = con.sql(f"select k, s, v, w from '{tmp_path}/j-{how}/*.parquet' order by all").fetchall()
            keys = "coalesce(l.k, r.k::double)" if how == "full" else "l.k"
            want = con.sql(f"select {keys}, l.s, l.v, r.w from {src} l {how} join '{r}/r.parquet' r "
                           f"on l.k = r.k order by all").fetchall()
            assert got == want, how
            assert max(w.get("passes", 1) for w in rep.workers) > 1
            # each side read once into runs on disk, each run read back once (worker/engine/runs.py)
            assert sum(w.get("spill_bytes_written", 0) for w in rep.workers) > 0
            assert all(w.get("spill_bytes_read", 0) <= w.get("spill_bytes_written", 0) * 2 for w in rep.workers)
    assert list((tmp_path / "spill").iterdir()) == []        # every job's runs removed when it ended


def test_a_worker_killed_mid_spill_loses_nothing_and_its_files_go_when_it_restarts(tmp_path):
    """A real worker is killed (SIGKILL) while its job spills: the job runs again on the others and is
    exact; the survivors' spill folders are gone, and so is the dead worker's (the retry's load on the
    survivors sweeps it, as would a worker started again on that spill dir); the cluster serves the next job."""
    import signal
    import time
    from shardstats.cluster import launcher
    from shardstats.cluster.config import ClusterInfo
    d, _ = _npy_shards(tmp_path, 3, 2_000_000, planted=(0, 99, 5), seed=13)
    cf, sp = tmp_path / "c.json", tmp_path / "spill"
    up = cli("up", "--workers", "3", "--detach", "--cluster-file", str(cf), "--memory-limit", "40M",
             "--spill-dir", str(sp), "--base-port", str(free_base(3)), timeout=60)
    assert up.returncode == 0, up.stderr
    info = ClusterInfo.load(cf)
    try:
        job = subprocess.Popen([sys.executable, "-m", "shardstats.cluster.cli", "submit", "mode", "--input", str(d),
                                "--json", "--cluster-file", str(cf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, stdin=subprocess.DEVNULL)
        victim = info.pids[1]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:          # kill it once its slices are on disk
            if list(sp.glob(f"job-*-w1-p{victim}/slice-*")):
                os.kill(victim, signal.SIGKILL)
                break
            time.sleep(0.005)
        else:
            job.kill()
            pytest.fail("worker 1 never spilled")
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        got = json.loads(out)["result"]
        assert (got["value"], got["count"]) == (99, 5)
        assert "lost worker 1" in err
        # the dead worker's folder went with the retry: the survivors' next load sweeps what dead workers left
        # (the old code left it until worker 1 was started again)
        assert not [p for p in sp.iterdir() if p.name.startswith("job-")]
        launcher.restart(info, 1)
        info.save(cf)
        assert not [p for p in sp.iterdir() if p.name.startswith("job-")]
        r = cli("submit", "mode", "--input", str(d), "--json", "--cluster-file", str(cf), timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["result"]["count"] == 5
    finally:
        cli("down", "--cluster-file", str(cf), timeout=30)


async def test_a_job_that_loads_its_share_whole_is_refused_before_it_could_be_killed(tmp_path):
    """A cached dataset is held whole: over twice what a pass may hold it is refused (exit 2, one line), not
    started and killed; the same text without --cache is counted in word slices; the cluster serves the next job."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    d = tmp_path / "docs"
    d.mkdir()
    words = np.array(["alpha", "beta", "gamma", "delta"])[np.random.default_rng(3).integers(0, 4, 1_500_000)]
    (d / "a.txt").write_text(" ".join(words.tolist()))
    t = tmp_path / "t"
    t.mkdir()
    pacsv.write_csv(pa.table({"w": words}), t / "w.csv")
    async with in_process_cluster(3, root=str(tmp_path), settings=_settings(tmp_path)) as c:
        with pytest.raises(InputError, match=r"this worker's share of the input \(~\d+ MiB in memory\) is more than "
                                             r"its memory budget \(64 MiB, --memory-limit\) holds for a job that "
                                             r"loads it whole \(--cache keeps it in memory\); group-by, join, sort, "
                                             r"word count and the index go beyond memory"):
            await run_job(c.addrs, c.token, job_spec("wordcount", str(d), {"cache": "docs"}))
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", str(d), {}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        assert sorted(map(tuple, rep.result["top"])) == sorted(Counter(words.tolist()).items())
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(t), {"by": "w", "agg": ["count()"]}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        assert sorted(map(tuple, rep.result["data"])) == sorted(Counter(words.tolist()).items())


def _corpus(d: Path, rng) -> dict[str, str]:
    """Text files of mixed scripts and cases, two over the tests' pass size (4 MiB), one tiny, one empty."""
    import re
    d.mkdir()
    vocab = np.array(["Straße", "STRASSE", "naïve", "Ωmega", "ωmega", "日本語", "x_1", "42", "the", "The", "a",
                      "İstanbul", "ǅemal", "über", "zebra"] + [f"w{i}" for i in range(20_000)])
    texts = {}
    for name, n in (("big1.txt", 900_000), ("big2.txt", 800_000), ("tiny.txt", 7), ("empty.txt", 0)):
        toks = vocab[rng.zipf(1.2, n) % len(vocab)]
        seps = np.array([" ", ", ", "\n", " -- ", ".\n"])[rng.integers(0, 5, n)]
        texts[name] = "".join(np.char.add(toks, seps).tolist())
        (d / name).write_text(texts[name], encoding="utf-8")
    assert all(re.findall(r"\w+", t.lower()) is not None for t in texts.values())
    return texts


async def test_wordcount_and_the_index_beyond_the_budget_equal_counter(tmp_path):
    """Text over the budget is tokenized as it is read, its (word, count) or (word, document) pairs kept in runs
    by the word's hash slice; each pass counts one slice: the answers equal collections.Counter over Python's
    own \\w+ on the lowercased text, with a worker whose share fit in memory slicing its pairs there."""
    import re
    texts = _corpus(tmp_path / "docs", np.random.default_rng(11))
    want = Counter(w for t in texts.values() for w in re.findall(r"\w+", t.lower()))
    async with in_process_cluster(3, root=str(tmp_path), settings=_settings(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", str(tmp_path / "docs"), {"top": 50_000}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        assert sum(w.get("spill_bytes_written", 0) for w in rep.workers) > 0
        assert rep.result["tokens"] == sum(want.values()) and rep.result["distinct"] == len(want)
        assert dict(map(tuple, rep.result["top"])) == dict(want)
        top = sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))[:7]
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", str(tmp_path / "docs"), {"top": 7}))
        assert [tuple(r) for r in rep.result["top"]] == top
        rep = await run_job(c.addrs, c.token, job_spec("index", str(tmp_path / "docs"), {"limit": 0}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        docs = {}
        for name, t in texts.items():
            for w in set(re.findall(r"\w+", t.lower())):
                docs.setdefault(w, []).append(name)
        assert rep.result["words"] == len(docs) and rep.result["tokens"] == sum(want.values())
        # every word counted; those shown (the first that fit one answer: the passes' heads together are cut
        # to it as one pass's are) with exactly their documents, in word order
        got = {w: sorted(Path(x).name for x in ds) for w, ds in rep.result["data"]}
        assert len(got) > 10_000 and got == {w: sorted(docs[w]) for w in sorted(docs)[:len(got)]}
        assert [r[0] for r in rep.result["data"]] == sorted(docs)[:len(got)]
    assert list((tmp_path / "spill").iterdir()) == []


async def test_a_budget_below_what_the_engine_needs_refuses_a_keyed_job_in_one_line(tmp_path):
    """With the default keyed overhead (DuckDB, Arrow and Polars loaded beside the rows), a 64 MiB budget
    cannot hold even the thinnest slice: refused with exit 2 and one line, and the next job runs."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    t = tmp_path / "t"
    t.mkdir()
    words = np.array(["a", "b", "c"])[np.random.default_rng(1).integers(0, 3, 1_500_000)]
    pacsv.write_csv(pa.table({"w": words}), t / "w.csv")
    settings = dataclasses.replace(_settings(tmp_path), keyed_overhead=DEFAULTS.keyed_overhead)
    async with in_process_cluster(3, root=str(tmp_path), settings=settings) as c:
        with pytest.raises(InputError, match=r"this worker's memory budget \(64 MiB, --memory-limit\) is too small "
                                             r"for this share of a keyed job \(~\d+ MiB in memory\): a keyed job "
                                             r"needs about \d+ MiB on a worker even in its thinnest slices"):
            await run_job(c.addrs, c.token, job_spec("groupby", str(t), {"by": "w", "agg": ["count()"]}))
        small = tmp_path / "small"
        _write(small, [np.array([4, 4, 5], np.int64)])
        rep = await run_job(c.addrs, c.token, job_spec("mode", str(small), {}))
        assert (rep.result["value"], rep.result["count"]) == (4, 2)


async def test_a_sort_beyond_the_budget_runs_in_ranges_and_equals_duckdb(tmp_path):
    """A sort whose share exceeds the budget: ranges of its own order agreed from every worker's sample, one a
    pass, parts named pass first -- their concatenation in name order is DuckDB's order, ties in input order,
    NULLs where asked; with --partition-by every value's rows stay in one part."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(21)
    t = tmp_path / "t"
    t.mkdir()
    start = 0
    for i, n in enumerate((150_000, 150_000, 900)):
        k = rng.zipf(1.3, n) % 500
        pq.write_table(pa.table({"k": pa.array(k, mask=rng.random(n) < 0.01),
                                 "s": pa.array([f"u{x:03d}" for x in rng.integers(0, 40, n)]),
                                 "p": np.arange(start, start + n)}), t / f"p{i}.parquet")
        start += n
    con = duckdb.connect()
    async with in_process_cluster(3, root=str(tmp_path), settings=_settings(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("sort", str(t), {"by": "k,s", "desc": "s", "nulls": "first",
                                                                       "out": str(tmp_path / "a")}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        # its runs hold whole rows, compressed (runs.py): the old plain runs wrote ~their rows' bytes, every column
        # and the hidden two (file, row); these small keys, short strings and counters take a fraction of that
        written = sum(w.get("spill_bytes_written", 0) for w in rep.workers)
        rows_bytes = sum(pq.read_table(f).nbytes + 16 * pq.read_metadata(f).num_rows for f in t.iterdir())
        assert 0 < written < rows_bytes / 2, (written, rows_bytes)
        names = sorted(x.name for x in (tmp_path / "a").iterdir())
        assert names[0] == "part-0000-00000.parquet" and len(names) == rep.result["parts"]
        got = pa.concat_tables([pq.read_table(tmp_path / "a" / n) for n in names])
        want = con.sql(f"select p from '{t}/*.parquet' order by k nulls first, s desc, p").fetchall()
        assert got.column("p").to_pylist() == [r[0] for r in want]          # every row once, in order, ties stable
        # the stats give every part of every pass, in name order (they gave each worker's sum over its passes)
        from shardstats.cluster.output import summarize_stats
        st = summarize_stats(rep)
        sizes = [pq.read_metadata(tmp_path / "a" / n).num_rows for n in names]
        assert st["part_rows"] == sizes and st["imbalance"] == round(max(sizes) / (sum(sizes) / len(sizes)), 4)
        assert len(st["part_bytes"]) == len(names)
        rep = await run_job(c.addrs, c.token, job_spec("sort", str(t), {"by": "s,k", "partition_by": "s",
                                                                       "out": str(tmp_path / "b")}))
        parts = [pq.read_table(f) for f in sorted((tmp_path / "b").iterdir())]
        owner = {}
        for i, part in enumerate(parts):
            for v in set(part.column("s").to_pylist()):
                assert owner.setdefault(v, i) == i                           # one part per value of s
        got = pa.concat_tables(parts)
        want = con.sql(f"select p from '{t}/*.parquet' order by s, k nulls last, p").fetchall()
        assert got.column("p").to_pylist() == [r[0] for r in want]


def test_a_spill_folder_closed_under_a_running_thread_is_not_made_again(tmp_path):
    """An abort removes a job's spill folder while its partitioning thread may still run (a thread cannot be
    cancelled): the thread's next file fails instead of making the folder again, so nothing is left."""
    box = spill.SpillDir(tmp_path, "j9", 2)
    box.new_file("values.i64").write_bytes(b"x" * 8)
    box.close()
    with pytest.raises(JobError, match=r"^worker 2: the job ended; its spill folder is gone$"):
        ondisk.partition(np.arange(10_000, dtype=np.int64), 3, box)
    assert list(tmp_path.iterdir()) == []



def test_a_file_a_thread_opens_while_the_abort_removes_the_folder_is_not_left(tmp_path, monkeypatch):
    """The abort's rmtree and a job's thread race: the thread was handed its file's name before the abort and
    opens it while the rmtree runs (here: between its listing and its rmdir).  The old code let the thread
    create the file there, the rmdir failed (not empty, ignored) and a 6 MB run stayed for good (a sort beyond
    memory aborted when another worker's disk filled).  Now the file exists from ``new_file`` on, so the rmtree
    removes it, and the thread's open finds no file instead of making one."""
    box = spill.SpillDir(tmp_path, "j7", 1)
    path = box.new_file("run-00000.arrow")            # handed to the thread before the abort
    real_rmdir, opened = os.rmdir, []

    def rmdir_after_the_thread_opens(p, *a, **kw):
        try:
            f = spill.SpillFile(path)
            f.write(np.arange(1000, dtype=np.int64))
            f.close()
            opened.append(True)
        except OSError:
            opened.append(False)
        return real_rmdir(p, *a, **kw)
    monkeypatch.setattr(os, "rmdir", rmdir_after_the_thread_opens)
    box.close()
    monkeypatch.setattr(os, "rmdir", real_rmdir)
    assert opened == [False]
    assert list(tmp_path.iterdir()) == []


def test_numpys_no_room_is_a_full_disk_whatever_the_free_space_says_later(tmp_path):
    """numpy's tofile reserves the room first and fails without an errno; by the time the free space is looked
    at, another worker's aborted job may have freed the disk.  The old code then said numpy's words."""
    exc = OSError("Not enough free space to write 18969378 bytes after offset 0")
    assert spill.write_failure(exc, tmp_path) == "the disk is full"
    box = spill.SpillDir(tmp_path, "j8", 3)
    assert str(box.failure(exc)) == f"worker 3: spilling to {tmp_path}: the disk is full (--spill-dir)"


async def test_a_failed_job_returns_only_once_every_worker_has_dropped_it_and_its_spill():
    """A job failing on one worker is aborted on the others, which remove their spill folders as they drop it:
    the coordinator waits for each "aborted" (the job's late messages before it skipped), so the command
    returns with nothing left.  The old code sent the aborts and returned: a listing right after a sort whose
    spill disk filled found two other workers' folders still there."""
    import asyncio
    from shardstats.coordinator import job as coord

    class Worker:
        def __init__(self):
            self.inbox, self.dropped = asyncio.Queue(), False

        async def send(self, msg):
            assert msg["t"] == "abort"

            async def drop_then_answer():
                await self.inbox.put({"t": "progress", "job": "j1"})      # sent before the abort arrived
                await asyncio.sleep(0.05)                               # the worker's drop: its spill folder
                self.dropped = True
                await self.inbox.put({"t": "aborted", "job": "j1"})
            asyncio.get_running_loop().create_task(drop_then_answer())

        async def recv(self, timeout):
            return await asyncio.wait_for(self.inbox.get(), timeout)

    class Silent(Worker):
        async def send(self, msg):
            pass

    ws = [Worker(), Worker()]
    await coord._abort(ws, "j1")
    assert [w.dropped for w in ws] == [True, True]
    t0 = asyncio.get_running_loop().time()
    await asyncio.wait_for(coord._abort([Silent()], "j1"), coord.ABORT_WAIT + 5)      # bounded, never hangs
    assert asyncio.get_running_loop().time() - t0 >= coord.ABORT_WAIT - 0.5

# -- runs: a keyed share partitioned once (worker/engine/runs.py) --------------------------------------------

def test_covering_slices_hold_every_hash_of_the_pass():
    """Runs cut in ``cut`` slices read as pass p of ``passes``: the slices named hold every 32-bit hash of the
    pass (checked at the pass's edges, where rounding would drop or add one); in fewer passes than slices too
    (the passes re-planned from the runs' size)."""
    from shardstats.worker.engine.runs import covering
    from shardstats.worker.engine.slices import slot_of
    for cut, passes in [(1, 1), (3, 3), (3, 7), (5, 41), (7, 8), (40, 41), (1, 13), (41, 5), (229, 64), (8, 7), (9, 1)]:
        edges = []
        for p in range(passes):
            lo = -(-p * (1 << 32) // passes)
            edges += [lo, lo - 1, lo + 1]
        h = np.array([e for e in edges if 0 <= e < 1 << 32] + [0, (1 << 32) - 1], np.uint64)
        in_pass, in_cut = slot_of(h, passes), slot_of(h, cut)
        for p in range(passes):
            first, last = covering(p, passes, cut)
            held = in_cut[in_pass == p]
            assert held.size == 0 or (first <= held.min() and held.max() <= last), (cut, passes, p)


def test_runs_keep_returns_a_table_that_holds_nothing_of_the_piece(tmp_path):
    """What ``Runs.keep`` gives back to the reader owns no buffer of the piece: the reader keeps every piece's
    return until the file ends, and a zero-row slice held each piece whole (a 240 MB Parquet file's batches on
    a 200 MiB worker: killed).  Arrow's pool is the reference: the piece gone, its bytes are gone."""
    import gc
    import pyarrow as pa
    from shardstats.worker.engine import slices
    from shardstats.worker.engine.runs import Runs
    box = spill.SpillDir(tmp_path, "j1", 0)
    runs = Runs(box, 4, slices.hash_slots({"main": ["k"]}), flush_bytes=1)       # every piece written at once
    piece = pa.table({"k": pa.array(np.arange(200_000)), "s": pa.array([f"v{i}" for i in range(200_000)])})
    held = piece.nbytes
    before = pa.total_allocated_bytes()
    back = runs.keep(piece, "main")
    assert back.num_rows == 0 and back.schema == piece.schema
    del piece
    gc.collect()
    assert before - pa.total_allocated_bytes() > held // 2          # the piece's string buffers were freed
    runs.finish()
    box.close()


_PROBE = """
import sys
from shardstats.worker import jobs, memory, spill
from shardstats.worker.engine import slices
from shardstats.worker.engine.runs import Runs
from shardstats.worker.io.listing import ShardRef
import os
path, op, base = sys.argv[1:4]
box = spill.SpillDir(base, "probe", 0)
slots = slices.hash_slots({"main": ["k"]})
runs = Runs(box, 8, slots, flush_bytes=4 << 20)
read = {"kind": "table", "columns": None, "ordinals": [0] if op == "sort" else None}
warm = Runs(box, 8, slots, flush_bytes=1)        # the first read imports the hashing's and the reader's libraries
jobs.load_table([ShardRef(sys.argv[5], os.path.getsize(sys.argv[5]))], base, read, None, warm.keep)
warm.finish()
memory.release()
memory.reset_peak()
start = memory.rss_bytes()
t, described = jobs.load_table([ShardRef(path, os.path.getsize(path))], base, read, None, runs.keep)
runs.finish()
assert t.num_rows == 0 and runs.rows == int(sys.argv[4]), (t.num_rows, runs.rows)
assert [d[0] for d in described][-2:] == (["__sort_file", "__sort_row"] if op == "sort" else ["k", "s"])
print(memory.peak_rss_bytes() - start)
box.close()
"""


@pytest.mark.parametrize("op", ["groupby", "sort"])
def test_a_parquet_file_read_into_runs_is_held_a_batch_at_a_time(tmp_path, op):
    """A keyed load beyond memory holds a batch of a Parquet file, not the file: pyarrow's default pre-buffers
    every column chunk it will read (the whole file), a sort read its files whole to number their rows, and
    Runs.keep's slices held every batch -- each grew a worker by the file's size (db-benchmark at 1e8 rows,
    10 workers in 200-790 MiB cgroups: OOM-killed).  Measured in a child process (its peak over its size
    once the libraries are loaded) against the file's size, about its size in memory."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    n = 6_000_000
    rng = np.random.default_rng(5)
    path = tmp_path / "f.parquet"
    with pq.ParquetWriter(path, pa.schema([("k", pa.int64()), ("s", pa.string())])) as w:
        for a in range(0, n, 500_000):              # random ints and strings: about as large on disk as in memory
            k = rng.integers(0, 1 << 52, 500_000)
            w.write_table(pa.table({"k": k, "s": pc.cast(pa.array(k), pa.string())}))
    pq.write_table(pa.table({"k": np.arange(10), "s": [str(i) for i in range(10)]}), tmp_path / "warm.parquet")
    size = path.stat().st_size
    assert size > 120 << 20
    r = subprocess.run([sys.executable, "-c", _PROBE, str(path), op, str(tmp_path / "spill"), str(n),
                        str(tmp_path / "warm.parquet")],
                       capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr
    grew = int(r.stdout.split()[-1])
    # measured: 95-135 MiB for a 131 MB file (the full suite's runs at the top; Arrow's pool keeps what it freed);
    # each of the three holders made it about 3x the file
    assert grew < 2 * size, (grew >> 20, size >> 20)


@pytest.mark.parametrize("compression", [None, "lz4"])
@pytest.mark.parametrize("cut,passes", [(4, 4), (4, 9), (1, 3), (9, 4), (5, 1)])
def test_runs_give_each_pass_its_slice_once_in_input_order(tmp_path, cut, passes, compression):
    """Pieces of two types (an int32 file, an int64 one, one with its strings as a dictionary), written in
    several flushes: each pass reads exactly the rows the in-memory filter keeps (in input order when the
    runs were cut in the job's passes), and the passes together are every row once -- plain, and compressed
    (a sort's runs: a batch a slot), whose read counter is the file's bytes of the slots a pass read."""
    import pyarrow as pa
    from shardstats.worker import jobs
    from shardstats.worker.engine import slices
    from shardstats.worker.engine.runs import Runs
    rng = np.random.default_rng(3)
    pieces = []
    for i in range(6):
        n = int(rng.integers(0, 3000))
        k = pa.array(rng.integers(-500, 500, n).astype(np.int32 if i % 2 else np.int64), mask=rng.random(n) < .05)
        s = pa.array([f"s{x}" for x in rng.integers(0, 50, n)])
        pieces.append(pa.table({"k": k, "s": s.dictionary_encode() if i == 4 else s,
                                "row": np.arange(i * 10_000, i * 10_000 + n)}))
    slots = slices.hash_slots({"main": ["k"]})
    box = spill.SpillDir(tmp_path, "j1", 0)
    runs = Runs(box, cut, slots, flush_bytes=40_000, compression=compression)
    for t in pieces:
        assert runs.keep(t, "main").num_rows == 0
    runs.finish()
    assert len(runs.runs) > 2 and runs.rows == sum(t.num_rows for t in pieces)
    target = pa.schema([("k", pa.int64()), ("s", pa.large_string()), ("row", pa.int64())])
    seen = []
    for p in range(passes):
        got = runs.read(p, passes, lambda piece, side: jobs.conform(piece, target))
        runs_rows = [piece.column("row").to_pylist() for piece in got.get("main", [])]
        if cut == passes:        # within a run's slice, rows keep their input order
            assert all(r == sorted(r) for r in runs_rows)
        rows = [r for rr in runs_rows for r in rr]
        keep = slices.keeper(slots)(p, passes)
        want = [r for t in pieces for r in keep(t, "main").column("row").to_pylist()]
        assert sorted(rows) == sorted(want)
        seen += rows
    assert sorted(seen) == sorted(r for t in pieces for r in t.column("row").to_pylist())
    assert box.written > 0 and box.read > 0
    if compression:
        assert runs.disk_bytes == box.written < runs.bytes       # "s1".."s49" and small ints: compressible
        if cut == passes:
            assert box.read <= box.written                       # each slot's batch read once
    box.close()


async def test_mapreduce_beyond_the_budget_maps_as_it_reads_and_equals_python(tmp_path):
    """A MapReduce job over a share larger than the budget: its records mapped (and combined) in the job's child
    process piece by piece as they are read, the pairs kept in runs by the key's slice, one slice shuffled and
    reduced a pass -- word count in the batch form with its combiner, and records with a partitioner and a
    secondary sort --
    all equal plain Python; a chained job is refused in one line and the next job runs."""
    import re
    import textwrap
    import pyarrow as pa
    import pyarrow.parquet as pq
    examples = Path(__file__).resolve().parent.parent / "examples"
    texts = _corpus(tmp_path / "docs", np.random.default_rng(12))
    want = Counter(w for t in texts.values() for w in re.findall(r"\w+", t.lower()))
    rng = np.random.default_rng(4)
    ev = tmp_path / "ev"
    ev.mkdir()
    n = 300_000
    users, ts = rng.integers(0, 3000, n), rng.permutation(n)
    for i, (a, b) in enumerate(((0, n // 2), (n // 2, n))):
        pq.write_table(pa.table({"user": users[a:b], "ts": ts[a:b]}), ev / f"e{i}.parquet")
    job = tmp_path / "sess.py"
    job.write_text(textwrap.dedent('''
        def mapper(rec):
            yield rec["user"], rec["ts"]

        def partitioner(key, n):
            return key % n

        def sort_values(v):
            return v

        def reducer(user, ts):
            yield user, [len(ts), ts[0], ts[-1], int(all(a < b for a, b in zip(ts, ts[1:])))]
    '''))
    chained = tmp_path / "chain.py"
    chained.write_text(textwrap.dedent('''
        def m1(rec):
            yield rec["user"], 1
        stages = [dict(mapper=m1)]
        stages = stages * 2
    '''))
    # 160 MiB: the job's child process may use the worker's budget, and Python's objects for a 4 MiB run of pairs
    # take more than the other tests' 64 MiB (the slices stay at 4 MiB: the test process itself is larger)
    settings = dataclasses.replace(_settings(tmp_path), memory_limit=160 << 20)
    async with in_process_cluster(3, root=str(tmp_path), settings=settings) as c:
        with pytest.raises(InputError, match=r"a chained job \(stages\) runs in memory only"):
            await run_job(c.addrs, c.token, job_spec("mapreduce", str(ev), {"job": str(chained)}))
        rep = await run_job(c.addrs, c.token, job_spec("mapreduce", str(ev), {"job": str(job), "out": str(tmp_path / "o")}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        got = pq.read_table(tmp_path / "o").to_pylist()
        by_user = {}
        for u, t in zip(users.tolist(), ts.tolist()):
            by_user.setdefault(u, []).append(t)
        assert {r["key"]: r["value"] for r in got} == {u: [len(t), min(t), max(t), 1] for u, t in by_user.items()}
        for f in (tmp_path / "o").iterdir():          # each user on the reducer the partitioner named
            reducer = int(f.name.split("-")[-1].split(".")[0])
            assert all(r["key"] % 3 == reducer for r in pq.read_table(f).to_pylist())
        rep = await run_job(c.addrs, c.token, job_spec("mapreduce", str(tmp_path / "docs"),
                                                       {"limit": 0, "job": str(examples / "wordcount_batch.py")}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        assert sum(w.get("spill_bytes_written", 0) for w in rep.workers) > 0
        assert {k: v for k, v in rep.result["data"]} == dict(want)
        assert sum(w["map_pairs"] for w in rep.workers) == sum(want.values())
    assert list((tmp_path / "spill").iterdir()) == []


# -- text formats read in blocks of lines beyond memory (worker/data/readers.py line_blocks) -------------------

def _ref(path: Path):
    from shardstats.worker.io.listing import ShardRef
    return ShardRef(str(path), path.stat().st_size, None)


def _whole_and_blocks(monkeypatch, path: Path, reader):
    """(the whole-file answer or its error, the block-at-a-time answer or its error, how many pieces were kept)."""
    import pyarrow as pa
    from shardstats.worker.data import readers
    pieces = []

    def keep(t):
        pieces.append(t.num_rows)
        return t
    out = []
    for k in (None, keep):
        monkeypatch.setattr(readers, "STREAM_BLOCK", 4096)
        try:
            got = reader(path, k)
            out.append(got.combine_chunks() if isinstance(got, pa.Table) else got)
        except InputError as exc:
            out.append(str(exc))
    return out[0], out[1], len(pieces)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_a_table_file_read_in_blocks_equals_the_whole_and_names_the_same_line(tmp_path, monkeypatch, fmt):
    """A CSV/TSV/JSON-lines file read a block of whole lines at a time (each parsed with the header before it)
    gives the rows the whole-file read gives, and a bad row deep in the file -- ragged, not JSON, invalid
    UTF-8 -- the same one-line error, its line and byte offset counted in the whole file."""
    import json
    from shardstats.worker.data import readers
    rng = np.random.default_rng(9)
    n = 3000
    rows = [{"k": f"k{int(x)}", "v": int(y), "f": float(z)} for x, y, z in
            zip(rng.integers(0, 50, n), rng.integers(-10**12, 10**12, n), rng.random(n))]
    sep = "\t" if fmt == "tsv" else ","
    if fmt == "jsonl":
        lines = [json.dumps(r) for r in rows]
    else:
        lines = [sep.join(["k", "v", "f"])] + [sep.join([r["k"], str(r["v"]), repr(r["f"])]) for r in rows]
    good = tmp_path / f"good.{fmt}"
    good.write_text("\n".join(lines) + "\n")

    def read(path, keep):
        return readers.read_table(_ref(path), str(path), None, None, keep)
    whole, blocks, pieces = _whole_and_blocks(monkeypatch, good, read)
    assert pieces > 10 and not isinstance(blocks, str) and blocks.equals(whole)
    for bad_line, kind in ((2500, "broken"), (2700, "utf8")):
        broken = list(lines)
        if kind == "utf8":
            data = ("\n".join(broken[:bad_line - 1]) + "\n").encode() + b"k\xff" + \
                ("\n" + "\n".join(broken[bad_line:]) + "\n").encode()
        else:
            broken[bad_line - 1] = "{not json" if fmt == "jsonl" else sep.join(["k1", "2"])
            data = ("\n".join(broken) + "\n").encode()
        bad = tmp_path / f"bad-{kind}.{fmt}"
        bad.write_bytes(data)
        whole, blocks, _ = _whole_and_blocks(monkeypatch, bad, read)
        assert isinstance(whole, str) and whole == blocks, (whole, blocks)
        assert whole.startswith(f"{bad}:{bad_line}: ")


def test_text_documents_read_in_blocks_equal_the_whole(tmp_path, monkeypatch):
    """A text file's lines and a table's text column as documents, read in blocks: the same (doc, line, text)
    rows as the whole-file read, lines and rows numbered in the whole file; invalid UTF-8 named at its line."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from shardstats.worker.data import readers
    rng = np.random.default_rng(2)
    words = np.array(["ünï", "code", "日本", "x"])
    text = "\n".join(" ".join(words[rng.integers(0, 4, int(rng.integers(0, 9)))]) for _ in range(4000))
    plain = tmp_path / "a.txt"
    plain.write_text(text)          # no newline at the end

    def docs(path, keep, **kw):
        return readers.read_documents(_ref(path), str(path), keep=keep, **kw)
    whole, blocks, pieces = _whole_and_blocks(monkeypatch, plain, docs)
    assert pieces > 5 and blocks.cast(whole.schema).equals(whole)
    t = pa.table({"body": text.split("\n"), "n": np.arange(4000)})
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=700)
    for kw in ({"text_column": "body"}, {"text_column": "body", "id_column": "n"}):
        whole, blocks, _ = _whole_and_blocks(monkeypatch, tmp_path / "t.parquet", lambda p, k: docs(p, k, **kw))
        assert blocks.equals(whole)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(text.encode()[:30_000] + b"\xc3(" + text.encode()[30_000:])
    whole, blocks, _ = _whole_and_blocks(monkeypatch, bad, docs)
    assert isinstance(whole, str) and whole == blocks and "invalid UTF-8 at byte offset 30,000" in whole


async def test_int64_keys_beyond_2_to_the_53_slice_and_group_beyond_the_budget(tmp_path):
    """The passes slice keys by a float64 hash (an int and a float key that are equal meet in one slice); Arrow's
    checked cast refused an int64 beyond 2**53, and the job failed as "not a readable Parquet file"."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(17)
    t = tmp_path / "t"
    t.mkdir()
    for i in range(2):
        k = rng.choice(np.array([I64.min, I64.max, I64.max - 1, 2**53 + 1, -(2**53) - 1, 0, 5], np.int64), BIG)
        pq.write_table(pa.table({"k": k, "v": rng.integers(-10**6, 10**6, BIG)}), t / f"p{i}.parquet")
    async with in_process_cluster(2, root=str(tmp_path), settings=_settings(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(t), {"by": "k", "agg": ["sum(v)", "count()"],
                                                                         "limit": 0}))
    assert max(w.get("passes", 1) for w in rep.workers) > 1
    want = duckdb.sql(f"SELECT k, sum(v), count(*) FROM read_parquet('{t}/*.parquet') GROUP BY k ORDER BY k").fetchall()
    assert sorted(tuple(r) for r in rep.result["data"]) == [(k, int(s), n) for k, s, n in want]


def test_the_share_guess_counts_only_the_columns_a_job_reads(tmp_path):
    """A job's share is guessed from the bytes it reads: a Parquet file's chunks of the projected columns, not
    the whole file (db-benchmark's q1 reads 2 of 9 columns; at 1e8 rows the whole files' guess sent every
    worker through passes and spill for rows that fit many times over)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from shardstats.worker.engine.slices import read_share
    rng = np.random.default_rng(4)
    n = 50_000
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"k": rng.integers(0, 10, n), "v": rng.integers(0, 100, n),
                             "payload": pa.array(rng.integers(0, 2**62, n).astype(str))}), path,
                   row_group_size=10_000)
    meta = pq.read_metadata(path)
    size = lambda names: sum(meta.row_group(g).column(c).total_compressed_size for g in range(meta.num_row_groups)
                             for c in range(meta.num_columns) if meta.schema.column(c).name in names)
    whole = size({"k", "v", "payload"})
    assert read_share(str(path), ["k", "v"]) == pytest.approx(size({"k", "v"}) / whole)
    assert read_share(str(path), ["k", "v"]) < 0.5
    assert read_share(str(path), None) == 1.0 and read_share(str(tmp_path / "missing.parquet"), ["k"]) == 1.0


async def test_a_group_by_reading_few_columns_of_wide_files_runs_in_one_pass(tmp_path):
    """Under the budget the rows a group-by reads fit in one pass, though the files (a wide payload column it
    never reads) would not: the old guess (4x the whole file) took it through passes and spill."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(8)
    t = tmp_path / "t"
    t.mkdir()
    for i in range(2):
        n = 40_000
        pq.write_table(pa.table({"k": rng.integers(0, 50, n), "v": rng.integers(-100, 100, n),
                                 "payload": pa.array([bytes(rng.integers(0, 256, 300, dtype=np.uint8)).hex()
                                                      for _ in range(n)])}), t / f"p{i}.parquet")
    settings = dataclasses.replace(_settings(tmp_path), memory_limit=160 << 20)
    async with in_process_cluster(2, root=str(tmp_path), settings=settings) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", str(t), {"by": "k", "agg": ["sum(v)", "count()"],
                                                                         "limit": 0}))
    assert max(w.get("passes", 1) for w in rep.workers) == 1
    assert sum(w.get("spill_bytes_written", 0) for w in rep.workers) == 0
    want = duckdb.sql(f"SELECT k, sum(v), count(*) FROM read_parquet('{t}/*.parquet') GROUP BY k ORDER BY k").fetchall()
    assert sorted(tuple(r) for r in rep.result["data"]) == [(k, int(s), n) for k, s, n in want]


def _combining_files(tmp_path, keys: int, n: int = 60_000):
    """Two Parquet shards of int keys (``keys`` of them, or every row its own), a string key and two values."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(keys)
    d = tmp_path / f"g{keys}"
    d.mkdir()
    for i in range(2):
        k = rng.integers(0, keys, n) if keys else np.arange(i * n, (i + 1) * n)
        pq.write_table(pa.table({"k": k, "s": pa.array([f"s{x % 7}" for x in range(n)]),
                                 "v": rng.integers(-10**6, 10**6, n), "w": rng.random(n)}), d / f"p{i}.parquet")
    return d


@pytest.mark.parametrize("keys, aggs, loaded", [
    (100, ["sum(v)", "mean(w)"], True),        # few keys: the rows are what it holds, one pass in memory
    (0, ["sum(v)", "count()"], False),         # every key unique: the combiner cannot shrink, passes from runs
    (100, ["median(w)"], False),               # rows travel (a median): the guess's passes, as before
])
def test_a_combining_group_by_measures_its_share_before_it_chooses_passes(tmp_path, monkeypatch, keys, aggs,
                                                                           loaded):
    """A group-by whose guess (4x the bytes it reads) is over a pass's limit but whose rows fit loads its share
    whole and counts its keys: with few keys it runs in one pass from memory (db-benchmark's q4 at 1e8 took 2
    passes and 1.9 GiB of spill for 200 MB of rows a worker); near-unique keys still take passes, from runs
    written once from memory; a job whose rows travel keeps the guess's passes."""
    from shardstats.worker import jobs
    from shardstats.worker.engine import slices
    from shardstats.worker.ops import registry
    from shardstats.worker.spill import SpillDir
    d = _combining_files(tmp_path, keys)
    files = sorted(d.glob("*.parquet"))
    op = registry.ops()["groupby"]
    params = op.params(by="k", agg=tuple(aggs))
    read = op.reads(params)
    guess = slices.estimate_bytes((os.path.getsize(f) * slices.read_share(str(f), read["columns"]), ".parquet")
                                  for f in files)
    limit = guess // 2                     # over the limit, within COMBINING_FIT of it
    slices_guess = -(-guess // limit)      # the guess's passes
    monkeypatch.setattr(jobs, "in_memory_limit", lambda budget, reserved=0: limit)
    monkeypatch.setattr(jobs, "MIN_IN_MEMORY", 1 << 10)     # these files are small: the limit is above the floor
    measured = []
    measure = jobs._combining_share
    monkeypatch.setattr(jobs, "_combining_share", lambda *a: measured.append(1) or measure(*a))
    job = jobs.Job("j", [jobs.ShardRef(str(f), os.path.getsize(f), None) for f in files], read=read)
    job.spill = SpillDir(str(tmp_path / "spill"), "j", 0)
    got = jobs._plan_slices(job, jobs.Access(str(tmp_path), budget=1 << 30), read)
    assert got is not None
    values, _ = got
    import pyarrow as pa
    import pyarrow.parquet as pq
    whole = pa.concat_tables([pq.read_table(f, columns=read["columns"]) for f in files])
    assert bool(measured) == ("median(w)" not in aggs)        # a combining job measured its share
    if loaded:
        assert isinstance(values, pa.Table) and job.passes == 1
        assert values.sort_by("k").equals(whole.select(values.column_names).sort_by("k"))
    else:
        # every row once, in the slice of its key
        assert isinstance(values, slices.Sliced) and job.passes > 1
        parts = [values._from_runs(p, job.passes) for p in range(job.passes)]
        assert len({k for part in parts for k in set(part.column("k").to_pylist())}) == \
            len(set(whole.column("k").to_pylist()))
        assert sum(len(set(part.column("k").to_pylist())) for part in parts) == len(set(whole.column("k").to_pylist()))
        union = pa.concat_tables([part.select(whole.column_names) for part in parts])
        order = [(c, "ascending") for c in whole.column_names]
        assert union.sort_by(order).equals(whole.sort_by(order))
    job.spill.close()
    if not loaded and "median(w)" not in aggs:
        # without a spill folder (an embedded worker) the passes read the files again: as many as it measured,
        # not the guess's (the measure set them, then the fall-through put the guess's back)
        monkeypatch.setattr(jobs, "COMBINED_HOLDS", (2.0, 200.0))
        job = jobs.Job("j", job.files, read=read)
        got, _ = jobs._plan_slices(job, jobs.Access(str(tmp_path), budget=1 << 30), read)
        assert isinstance(got, slices.Sliced) and job.passes > slices_guess


def test_local_takes_a_memory_limit_and_a_spill_dir_from_the_cli_and_the_api(tmp_path):
    """``submit --local N --memory-limit SIZE --spill-dir DIR`` and ``Cluster.local(memory_limit=, spill_dir=)``
    give the ephemeral workers a budget, as `cluster up` does: the mode of 2M values in 12M workers goes
    through passes and spills under DIR, and equals numpy's.  Without --local the options are refused (they
    would do nothing), a size that is none is one line.  The old CLI had neither option."""
    from shardstats import Cluster
    d, allv = _npy_shards(tmp_path, 2, 1_000_000, planted=(1, 4242, 7), seed=3)
    sp = tmp_path / "spill"
    r = cli("submit", "mode", "--input", str(d), "--local", "2", "--memory-limit", "12M", "--spill-dir", str(sp),
            "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["result"]["value"], got["result"]["count"]) == (4242, 7)
    assert max(w.get("passes", 1) for w in got["stats"]["per_worker"]) > 1
    assert sum(w.get("spill_bytes_written", 0) for w in got["stats"]["per_worker"]) > 0
    assert sp.is_dir() and list(sp.iterdir()) == []          # spilled there, and nothing left
    r = cli("submit", "mode", "--input", str(d), "--memory-limit", "40M", "--cluster-file", str(tmp_path / "x.json"))
    assert r.returncode == 2 and r.stderr.strip() == ("error: --memory-limit: only with --local N (a running "
                                                      "cluster's workers take theirs from `cluster up` or "
                                                      "`cluster worker`)")
    r = cli("submit", "mode", "--input", str(d), "--local", "1", "--memory-limit", "lots")
    assert r.returncode == 2 and r.stderr.startswith("error: --memory-limit: 'lots' is not a size"), r.stderr
    sp2 = tmp_path / "spill2"
    with Cluster.local(2, memory_limit="12M", spill_dir=str(sp2)) as c:
        res = c.mode(str(d))
        assert (res.value, res.count) == (4242, 7) and max(w.get("passes", 1) for w in res.stats["per_worker"]) > 1
    assert sp2.is_dir() and list(sp2.iterdir()) == []
    vals, counts = np.unique(allv, return_counts=True)
    assert (int(vals[counts.argmax()]), int(counts.max())) == (4242, 7)
