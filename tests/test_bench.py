"""Smoke test of scripts/bench.py: tiny data, our cluster and numpy only; every answer must match.

The benchmark's timings are not asserted (machine-dependent); its answers and its
bookkeeping (the dataset cache, skipped tools, the reference) are.
"""
from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_script"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_script", None)


def test_reference_is_exact(bench):
    vals = np.array([5, 3, 3, 9, 5, 2 ** 62, -(2 ** 62), 7], dtype=np.int64)
    ref = bench.reference(vals)
    assert (ref["mode"], ref["mode_count"], ref["tie_count"], ref["ties"]) == (3, 2, 2, [3, 5])
    assert Fraction(ref["median"]) == Fraction(5 + 5, 2) == statistics.median(vals.tolist())
    odd = bench.reference(np.array([2 ** 63 - 1, 2 ** 63 - 2, 0], dtype=np.int64))
    assert Fraction(odd["median"]) == 2 ** 63 - 2


def test_check_marks_answers(bench):
    ref = bench.reference(np.array([1, 1, 2, 2, 10], dtype=np.int64))
    dec = bench.decode_answer
    assert bench.check("numpy", "mode", dec(bench.encode_answer(1)), ref) == "match"
    assert bench.check("duckdb", "mode", dec(bench.encode_answer(2)), ref) == "match (another tie)"
    assert bench.check("duckdb", "mode", dec(bench.encode_answer(10)), ref) == "MISMATCH"
    assert bench.check("polars", "median", dec(bench.encode_answer(2.0)), ref) == "match"
    assert bench.check("dask", "median", dec(bench.encode_answer(2.5)), ref) == "approximate (≠)"
    assert bench.check("ours", "median", None, ref) == "FAILED"


def test_parse_count(bench):
    assert [bench.parse_count(s) for s in ("1e6", "10M", "500k", "1234", "1.5M")] == \
        [10 ** 6, 10 ** 7, 500_000, 1234, 1_500_000]


def test_dataset_cache_is_reused(bench, tmp_path):
    a = bench.ensure_dataset(tmp_path, "unique-dup", 5000, 4, 3, parquet=False)
    stamp = (a.dir / "meta.json").stat().st_mtime_ns
    b = bench.ensure_dataset(tmp_path, "unique-dup", 5000, 4, 3, parquet=False)
    assert (b.dir / "meta.json").stat().st_mtime_ns == stamp and b.ref == a.ref
    assert len(a.files("npy")) == 4
    allv = np.concatenate([np.load(f) for f in a.files("npy")])
    assert a.ref["mode_count"] == 2 and a.ref["mode"] == int(np.unique(allv, return_counts=True)[0][
        np.unique(allv, return_counts=True)[1].argmax()])


def test_bench_ours_and_numpy_match(bench, tmp_path, capsys, monkeypatch):
    pytest.importorskip("psutil")
    # A tool whose module is missing is reported as skipped with its pip command, not run.
    monkeypatch.setitem(bench.TOOLS, "fake", bench.Tool("fake", ("no_such_module_xyz",), "no-such-pkg", "npy", ""))
    rc = bench.main(["--rows", "20000", "--tools", "ours,numpy,fake", "--repeat", "1", "--workers", "3",
                     "--data-dir", str(tmp_path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0, doc
    assert "pip install no-such-pkg" in doc["skipped"]["fake"]
    got = {(r["tool"], r["dataset"], r["op"]): r for r in doc["results"]}
    ops = ("mode", "median", "topk", "distinct")
    sets = ("unique-dup", "zipf", "zipf-wide")
    assert set(got) == {(t, d, o) for t in ("ours", "numpy") for d in sets for o in ops} | {
        ("ours", d, o) for d in sets for o in ("topk/shuffle", "topk/threshold")}
    for d in sets:      # each forced strategy ran as asked (none fell back at this size)
        assert got[("ours", d, "topk/shuffle")]["strategy"] == "shuffle"
        assert got[("ours", d, "topk")]["strategy"] in ("shuffle", "threshold")
    for r in got.values():
        assert r["check"] == "match", r
        assert len(r["runs"]) == 2 and r["median_seconds"] > 0 and r["peak_tree_bytes"] > 0
    ours = got[("ours", "unique-dup", "mode")]
    assert ours["bytes_sent"] > 0 and ours["rounds"] >= 1 and ours["worker_peak_max_bytes"] > 0
    assert ours["worker_peak_sum_bytes"] >= ours["worker_peak_max_bytes"]
    assert doc["startup_seconds"]["ours"] > 0


def test_heavy_zipf_datasets(bench, tmp_path):
    """hzipf-A-R: zipf(A) ranks scattered over [0, R) (int64: the whole signed range), skew kept."""
    for name, lo, hi in (("hzipf-1.3-1e3", 0, 999), ("hzipf-2-1e12", 0, 10 ** 12 - 1),
                         ("hzipf-1.1-int64", -(2 ** 63), 2 ** 63 - 1), ("zipf-wide", 0, 10 ** 12 - 1)):
        parts = bench.generate_dataset(name, 20_000, 4, 1)
        v = np.concatenate(parts)
        assert len(parts) == 4 and len(v) == 20_000 and v.dtype == np.int64 and lo <= v.min() and v.max() <= hi
        _, counts = np.unique(v, return_counts=True)
        assert counts.max() > 1000 and (counts == 1).any()      # a heavy head and a tail seen once
    wide = np.concatenate(bench.generate_dataset("hzipf-1.1-int64", 20_000, 4, 1))
    assert wide.min() < -(2 ** 60) and wide.max() > 2 ** 60
    assert bench.build_parser().parse_args(["--datasets", "hzipf-1.5-1e6,zipf"]).datasets == ["hzipf-1.5-1e6", "zipf"]
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--datasets", "hzipf-x-1e6"])


def test_interleaved_runs_every_tool_per_dataset_and_answers_match(bench, tmp_path, capsys):
    """--interleave: a child per (dataset, tool), datasets outermost; the rows are the same as a tool-by-tool run's
    and every answer still matches the reference."""
    pytest.importorskip("psutil")
    rc = bench.main(["--rows", "20000", "--tools", "ours,numpy", "--repeat", "1", "--workers", "3", "--ops", "mode",
                     "--datasets", "unique-dup,hzipf-1.5-1e3", "--interleave", "--data-dir", str(tmp_path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0, doc
    got = [(r["tool"], r["dataset"]) for r in doc["results"]]
    assert got == [("ours", "unique-dup"), ("numpy", "unique-dup"), ("ours", "hzipf-1.5-1e3"),
                   ("numpy", "hzipf-1.5-1e3")]
    assert all(r["check"] == "match" for r in doc["results"])
    assert bench.build_parser().parse_args(["--zipf-sweep"]).interleave is None      # main turns it on for a sweep
