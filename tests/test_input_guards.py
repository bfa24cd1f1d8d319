"""The input a job reads is the input the user named, as it was listed -- or a one-line error (issue 11).

Real worker processes (``launcher.start``) and real files: a shard rewritten between
listing and reading (and in a loop while jobs run), a CSV whose first row is no
integer, several ``--input``s and shell-expanded globs, ``cluster gen`` into a
directory that holds shards, a file too big for the worker's memory budget, a FIFO
swapped in after listing, paths outside a confined worker's root, a file of
secrets read as shards.  Answers are compared with numpy over the same files.
"""
from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from shardstats.cluster import launcher
from shardstats.cluster.config import ClusterInfo
from shardstats.coordinator import job as cjob
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import InputError
from tests.conftest import cli, ref_mode


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[ClusterInfo, Path]]:
    base = tmp_path_factory.mktemp("inguard")
    info = launcher.start(3, "127.0.0.1", None, str(base / "logs"), "warning")
    cf = base / "cluster.json"
    info.save(cf)
    try:
        yield info, cf
    finally:
        launcher.stop(info)


def write_txt(path: Path, values) -> None:
    path.write_text("".join(f"{v}\n" for v in values))


def submit(cf: Path, op: str, *args: str):
    return cli("submit", op, *args, "--json", "--cluster-file", str(cf), timeout=90)


def median_ref(values) -> tuple[int, int]:
    s = np.sort(np.asarray(values, dtype=np.int64))
    return int(s[(len(s) - 1) // 2]), int(s[len(s) // 2])


# -- a shard that changes -------------------------------------------------------------------------------
def test_a_shard_rewritten_after_listing_fails_the_job_naming_it(cluster, tmp_path, monkeypatch):
    info, _ = cluster
    d = tmp_path / "d"
    d.mkdir()
    write_txt(d / "a.txt", range(1000))
    write_txt(d / "b.txt", [7] * 10)
    listed = cjob.resolve_input

    def list_then_rewrite(paths, absolute, *rest):
        refs = listed(paths, absolute, *rest)
        write_txt(d / "b.txt", [7] * 4)                 # truncated and rewritten after the listing
        return refs
    monkeypatch.setattr(cjob, "resolve_input", list_then_rewrite)
    with pytest.raises(InputError, match=r"b\.txt: changed since the job listed it"):
        asyncio.run(run_job(info.workers, info.token.encode(), job_spec("mode", str(d), {}, timeout=30)))


def test_a_change_during_the_read_is_caught_on_the_open_file(tmp_path):
    from shardstats.worker.io.listing import list_refs
    from shardstats.worker.io.source import opened
    p = tmp_path / "a.txt"
    write_txt(p, range(100))
    (ref,) = list_refs(str(p))
    with pytest.raises(InputError, match="changed since the job listed it"):
        with opened(ref, str(p)) as (f, size):
            f.read(10)
            with open(p, "a") as g:                     # another writer appends meanwhile
                g.write("5\n")


def test_jobs_while_a_shard_is_rewritten_in_a_loop_are_exact_or_fail_naming_it(cluster, tmp_path, monkeypatch):
    """The issue's case: a shard truncated and rewritten in a loop while jobs run.  Each job must give the
    exact answer for the file as it was listed (whatever prefix the writer had written then), or fail
    naming the file; a read of another version or of a different prefix must never give exit 0."""
    info, _ = cluster
    d = tmp_path / "d"
    d.mkdir()
    write_txt(d / "rest.txt", np.arange(10_000, 40_000, dtype=np.int64))
    texts = {5: "5\n" * 150_000, 6: "6\n" * 90_000}                 # two versions: two modes, two sizes
    (d / "hot.txt").write_text(texts[5])
    listed_sizes: list[int] = []
    listed = cjob.resolve_input

    def recording(paths, absolute, *rest):
        refs = listed(paths, absolute, *rest)
        listed_sizes.append(next(r.size for r in refs if r.path.endswith("hot.txt")))
        return refs
    monkeypatch.setattr(cjob, "resolve_input", recording)
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            text = texts[5 if i % 2 else 6]
            with open(d / "hot.txt", "w") as f:               # truncate, then write in pieces
                for k in range(0, len(text), 1 << 15):
                    f.write(text[k:k + (1 << 15)])
                    f.flush()
    t = threading.Thread(target=writer)
    t.start()
    outcomes = []
    try:
        for _ in range(10):
            try:
                rep = asyncio.run(run_job(info.workers, info.token.encode(), job_spec("mode", str(d), {}, timeout=60)))
                outcomes.append((listed_sizes[-1], (rep.result["value"], rep.result["count"])))
            except InputError as exc:
                outcomes.append((listed_sizes[-1], str(exc)))
    finally:
        stop.set()
        t.join(10)

    def exact(size: int) -> set:
        out = set()
        for v, text in texts.items():
            if len(text) >= size:
                c = len(text[:size].split())
                out.add((v, c) if c >= 1 else (10_000, 1))
        return out
    for size, o in outcomes:
        if isinstance(o, str):
            assert "hot.txt" in o and "changed since the job listed it" in o, o
        else:
            assert o in exact(size), f"listed {size} bytes, answered {o}"


# -- a CSV's first row ---------------------------------------------------------------------------------
@pytest.mark.parametrize("first", ["nan", "inf", "1/7", "True", "None", "x"])
def test_a_csv_first_row_is_never_dropped_by_a_guess(cluster, tmp_path, first):
    _, cf = cluster
    p = tmp_path / "a.csv"
    p.write_text(f"{first}\n11\n12\n13\n14\n")
    r = submit(cf, "median", "--input", str(p))
    assert r.returncode == 2 and r.stdout == ""
    assert "a.csv:1: not an integer" in r.stderr and "--header yes" in r.stderr
    r = submit(cf, "median", "--input", str(p), "--header", "yes")          # asked for: the row is a header
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["value"] == 12.5
    one = tmp_path / "one.csv"
    one.write_text(f"{first}\n")
    r = submit(cf, "median", "--input", str(one))
    assert r.returncode == 2 and "one.csv:1: " in r.stderr and "holds no values" not in r.stderr


# -- the input set --------------------------------------------------------------------------------------
def test_every_input_is_read_and_shell_expanded_globs_too(cluster, tmp_path):
    _, cf = cluster
    rng = np.random.default_rng(3)
    parts = [rng.integers(-50, 50, n) for n in (300, 200, 1, 500)]
    paths = []
    for i, p in enumerate(parts):
        paths.append(tmp_path / f"s{i}.txt")
        write_txt(paths[-1], p)
    allv = np.concatenate(parts)
    r = submit(cf, "mode", "--input", str(paths[0]), "--input", str(paths[1]), "--input", str(tmp_path / "s[23].txt"))
    assert r.returncode == 0, r.stderr
    value, count, _ = ref_mode(allv)
    assert (json.loads(r.stdout)["result"]["value"], json.loads(r.stdout)["result"]["count"]) == (value, count)
    r = submit(cf, "median", "--input", *map(str, paths))                  # what `--input s*.txt` becomes
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["result"]
    assert (doc["lower"], doc["upper"]) == median_ref(allv) and doc["n"] == len(allv)
    r = submit(cf, "median", "--input", str(tmp_path), "--input", str(paths[0]))   # named twice: read once
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["n"] == len(allv)


def test_gen_refuses_a_directory_with_shards_unless_forced(cluster, tmp_path):
    _, cf = cluster
    out = tmp_path / "g"
    assert cli("gen", "--out", str(out), "--rows", "1000", "--shards", "4", "--format", "txt").returncode == 0
    (out / "mine.txt").write_text("3\n")
    r = cli("gen", "--out", str(out), "--rows", "500", "--shards", "2", "--format", "txt")
    assert r.returncode == 2 and "not empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("gen", "--out", str(out), "--rows", "500", "--shards", "2", "--format", "txt", "--force")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["mine.txt", "shard-0.txt", "shard-1.txt"]   # old shard-2, shard-3 gone
    r = submit(cf, "median", "--input", str(out))
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["n"] == 501


# -- a file too big, a FIFO, a resource error ---------------------------------------------------------------
def test_a_file_over_the_memory_budget_is_an_input_error_not_retried(tmp_path):
    info = launcher.start(3, "127.0.0.1", None, str(tmp_path / "logs"), "warning",
                          extra_args=["--memory-limit", "4M"])
    try:
        _over_the_budget(info, tmp_path)
    finally:
        launcher.stop(info)


def _over_the_budget(info, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_txt(d / "small.txt", range(100))
    with open(d / "big.txt", "wb") as f:                    # 6 MiB, sparse: over the workers' 4 MiB budget
        f.truncate(6 << 20)
    with pytest.raises(InputError, match=r"big\.txt: 6 MiB does not fit the worker's memory budget of 4 MiB"):
        asyncio.run(run_job(info.workers, info.token.encode(), job_spec("median", str(d), {}, timeout=30)))
    assert all(launcher.alive(p) for p in info.pids)
    rep = asyncio.run(run_job(info.workers, info.token.encode(), job_spec("median", str(d / "small.txt"), {}, timeout=30)))
    assert (rep.result["lower"], rep.result["upper"]) == (49, 50) and rep.attempts == 1


def test_a_fifo_swapped_in_after_listing_is_refused_not_read(cluster, tmp_path, monkeypatch):
    info, _ = cluster
    d = tmp_path / "d"
    d.mkdir()
    write_txt(d / "a.txt", range(10))
    listed = cjob.resolve_input

    def list_then_swap(paths, absolute, *rest):
        refs = listed(paths, absolute, *rest)
        os.unlink(d / "a.txt")
        os.mkfifo(d / "a.txt")
        return refs
    monkeypatch.setattr(cjob, "resolve_input", list_then_swap)
    with pytest.raises(InputError, match=r"a\.txt: not a regular file"):
        asyncio.run(run_job(info.workers, info.token.encode(), job_spec("median", str(d), {}, timeout=20)))


def test_out_of_descriptors_is_the_workers_failure_not_the_input(tmp_path, monkeypatch):
    from shardstats.errors import WorkerUnhealthy
    from shardstats.worker.io import source
    from shardstats.worker.io.shards import read_shard
    p = tmp_path / "a.txt"
    write_txt(p, [1])

    def no_fds(*a, **kw):
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr(source.os, "open", no_fds)
    with pytest.raises(WorkerUnhealthy, match="EMFILE"):
        read_shard(p)


# -- a confined worker ---------------------------------------------------------------------------------------
def test_a_confined_worker_reads_only_under_its_root_and_never_echoes_a_line(tmp_path):
    from shardstats.worker.jobs import Access, load_files
    root = tmp_path / "data"
    root.mkdir()
    write_txt(root / "ok.txt", [1, 2, 3])
    secret = tmp_path / "secret.txt"
    secret.write_text("root:$6$hunter2hunter2:19000:0:99999:7:::\n")
    (root / "link.txt").symlink_to(secret)
    access = Access(str(root), confined=True)
    assert load_files(["ok.txt"], access).tolist() == [1, 2, 3]
    assert load_files([str(root / "ok.txt")], access).tolist() == [1, 2, 3]
    for name in ("../secret.txt", str(secret), "link.txt", "sub/../../secret.txt"):
        with pytest.raises(InputError, match="outside the worker's data root") as ei:
            load_files([name], access)
        assert "hunter2" not in str(ei.value)
    with pytest.raises(InputError) as ei:                  # unconfined: read, but the line is not echoed
        load_files([str(secret)], Access(str(root)))
    assert "secret.txt:1: not an integer" in str(ei.value) and "hunter2" not in str(ei.value) \
        and "root:" not in str(ei.value)


def test_cluster_up_workers_are_not_confined_and_worker_daemons_are(tmp_path):
    info = launcher.start(1, "127.0.0.1", None, str(tmp_path / "logs"), "warning")
    try:
        rows = asyncio.run(cjob.ping_all(info.workers, info.token.encode()))
        assert rows[0]["confined"] is False
    finally:
        launcher.stop(info)
    r = cli("worker", "--help")
    assert "--allow-any-path" in r.stdout and "--root" in r.stdout
