"""Bad input through the real CLI against a running cluster: one line naming the file (and line), exit 2.

Every case runs ``cluster submit ... --json --cluster-file F`` as a user would,
checks the error contract (DESIGN.md: one line on stderr saying what and where,
exit status 2, and nothing on stdout even with ``--json``), and then runs a good
job on the same cluster and checks its exact answer against a reference.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from numpy.lib import format as npy_format

from shardstats.cluster.gen import generate, write_shards
from tests.conftest import cli, ref_mode
from tests.test_hostile import Env, assert_serves, local_cluster

WORKERS = 3


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[tuple[Env, Path]]:
    base = tmp_path_factory.mktemp("badinput")
    parts = generate(20_000, 5, "unique-dup", seed=3)
    write_shards(parts, base / "data", "txt")
    with local_cluster(WORKERS, base / "logs") as info:
        cluster_file = base / "cluster.json"
        info.save(cluster_file)
        yield Env(info, base / "data", np.concatenate(parts)), cluster_file


def submit(cluster_file: Path, op: str, path: Path | str, *extra: str):
    return cli("submit", op, "--input", str(path), "--json", "--cluster-file", str(cluster_file), *extra,
               timeout=60)


def good_txt(d: Path, name: str = "good.txt", values=(5, -3, 5)) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("".join(f"{v}\n" for v in values))
    return d


def truncated_npy(p: Path) -> None:
    np.save(p, np.arange(1000, dtype=np.int64))
    p.write_bytes(p.read_bytes()[:500])


def forged_npy(p: Path) -> None:
    """A header claiming 10**12 values over 64 bytes of data (numpy tries to allocate 7 TiB)."""
    with open(p, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (10 ** 12,)})
        f.write(b"\x00" * 64)


def _dangling(d: Path) -> Path:
    good_txt(d)
    os.symlink(d / "was-deleted.txt", d / "link.txt")
    return d


def _fifo(d: Path) -> Path:
    good_txt(d)
    os.mkfifo(d / "pipe.txt")                   # reading it would block forever
    return d


def _mixed(d: Path) -> Path:
    for i in range(4):
        good_txt(d, f"good{i}.txt", range(i, i + 10))
    np.save(d / "bad.npy", np.array([1.5, 2.5]))
    return d


def _text(name: str, text: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        good_txt(d)
        (d / name).write_bytes(text.encode())
        return d
    return make


def _npy(name: str, fill: Callable[[Path], None]) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        good_txt(d)
        fill(d / name)
        return d
    return make


# case id -> (builds the input under a fresh directory and returns the path to pass, op, what the line must say)
CASES: dict[str, tuple[Callable[[Path], Path | str], str, list[str]]] = {
    "missing path": (lambda d: d / "nope", "mode", ["nope", "no such file"]),
    "empty directory": (lambda d: (d.mkdir(), d)[1], "median", ["holds no shard files"]),
    "no shard files": (lambda d: (good_txt(d, "a.dat"), good_txt(d, "b.txt.bak"), d)[-1], "mode",
                       ["holds no shard files"]),
    "only blank lines": (lambda d: (d.mkdir(), (d / "e.txt").write_text("\n \n\r\n"), d)[-1], "median",
                         ["holds no values"]),
    "unsupported file named directly": (lambda d: good_txt(d, "data.dat") / "data.dat", "mode",
                                        ["data.dat", "unsupported file type"]),
    "glob matching nothing": (lambda d: (d.mkdir(), str(d / "*.npy"))[1], "mode", ["matches no files"]),
    "dangling symlink": (_dangling, "mode", ["link.txt", "broken symbolic link"]),
    "fifo": (_fifo, "median", ["pipe.txt", "not a regular file"]),
    "non-integer line": (_text("bad.txt", "1\n2\nthree\n4\n"), "mode", ["bad.txt:3", "not an integer"]),
    "decimal line": (_text("bad.txt", "1\r\n2\r\n2.5\r\n"), "median", ["bad.txt:3", "not an integer"]),
    "two values on a line": (_text("bad.txt", "1\n\n2 3\n"), "mode", ["bad.txt:3", "more than one value"]),
    "beyond int64, positive": (_text("big.txt", "1\n9223372036854775807\n9223372036854775808\n"), "median",
                               ["big.txt:3", "beyond the int64 range"]),
    "beyond int64, negative": (_text("small.txt", "-9223372036854775808\n-9223372036854775809\n"), "mode",
                               ["small.txt:2", "beyond the int64 range"]),
    "npy of floats": (_npy("f.npy", lambda p: np.save(p, np.array([1.0, 2.0]))), "mode", ["f.npy", "float64"]),
    "npy of strings": (_npy("s.npy", lambda p: np.save(p, np.array(["1", "2"]))), "median", ["s.npy", "<U1"]),
    "npy of objects": (_npy("o.npy", lambda p: np.save(p, np.array([1, "x"], dtype=object), allow_pickle=True)),
                       "mode", ["o.npy", "not a readable .npy"]),
    "npy of uint64 beyond int64": (_npy("u.npy", lambda p: np.save(p, np.array([1, 2 ** 63], dtype=np.uint64))),
                                   "median", ["u.npy", "beyond the int64 range"]),
    "truncated npy": (_npy("t.npy", truncated_npy), "mode", ["t.npy", "not a readable .npy"]),
    "npy header claiming 10**12 values": (_npy("h.npy", forged_npy), "median", ["h.npy", "not a readable .npy"]),
    "empty npy file": (_npy("z.npy", lambda p: p.write_bytes(b"")), "mode", ["z.npy", "not a readable .npy"]),
    "mixed good and bad files": (_mixed, "mode", ["bad.npy", "float64"]),
    "csv with a bad value": (_text("t.csv", "10,a\n11,b\nx20,b\n"), "mode", ["t.csv:3", "not an integer"]),
    "csv with a missing value": (_text("t.csv", "value\n10\n\n,\n"), "median", ["t.csv:4", "empty value"]),
}


def assert_one_line_exit_2(r, *must_say: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == "", "--json printed something for a failed job"
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    for text in must_say:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", CASES.keys())
def test_bad_input_is_one_line_exit_2_and_the_cluster_serves_on(env, tmp_path, case):
    e, cluster_file = env
    build, op, must_say = CASES[case]
    path = build(tmp_path / "in")
    assert_one_line_exit_2(submit(cluster_file, op, path), *must_say)
    assert_serves(e, op)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode bits say; the dangling "
                    "symlink and FIFO cases cover unreadable directory entries")
def test_an_unreadable_file_is_named(env, tmp_path):
    e, cluster_file = env
    d = good_txt(tmp_path / "in")
    (d / "secret.txt").write_text("1\n")
    (d / "secret.txt").chmod(0)
    try:
        assert_one_line_exit_2(submit(cluster_file, "mode", d), "secret.txt", "permission denied")
    finally:
        (d / "secret.txt").chmod(0o644)
    assert_serves(e)


@pytest.mark.parametrize("quantiles", ["1e-999999999", "0.5,abc", "1.5", "nan"])
def test_bad_quantiles_are_a_usage_error_not_a_wedged_worker(env, quantiles):
    e, cluster_file = env
    assert_one_line_exit_2(submit(cluster_file, "median", e.data, "--quantiles", quantiles), "--quantiles")
    assert_serves(e, "median")


def test_the_next_good_job_through_the_cli_is_exact(env, tmp_path):
    """After a bad job on every worker at once, the CLI itself still gets exact answers."""
    e, cluster_file = env
    d = tmp_path / "in"
    for i in range(WORKERS * 2):
        (d / f"bad{i}.txt").parent.mkdir(parents=True, exist_ok=True)
        (d / f"bad{i}.txt").write_text(f"{i}\n{i}x\n")
    assert_one_line_exit_2(submit(cluster_file, "mode", d), ".txt:2", "not an integer")
    r = submit(cluster_file, "mode", e.data)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    value, count, ties = ref_mode(e.values)
    assert (doc["result"]["value"], doc["result"]["count"], doc["result"]["ties"]) == (value, count, ties)
    r = submit(cluster_file, "median", e.data)
    assert r.returncode == 0, r.stderr
    s = np.sort(e.values)
    assert (json.loads(r.stdout)["result"]["lower"], json.loads(r.stdout)["result"]["upper"]) == \
        (int(s[(len(s) - 1) // 2]), int(s[len(s) // 2]))
