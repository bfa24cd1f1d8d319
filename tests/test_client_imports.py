"""The ``cluster`` client imports neither numpy nor the column readers' libraries (issue 13: a small job at once).

numpy alone is ~75 ms of a one-value job's ~0.2 s through the CLI, and the client
never touches an array: it validates parameters, lists files, submits and prints.
Each test runs the real console entry point in a subprocess against a real local
cluster, through a wrapper that writes at exit which heavy packages the process
imported; every answer is also checked against a sequential reference, so the
jobs really ran.  The op modules bind numpy lazily (shardstats/lazy.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from shardstats.cluster import launcher
from shardstats.errors import UsageError
from shardstats.worker.ops import registry
from tests.conftest import I64_MAX, I64_MIN

HEAVY = ("numpy", "pyarrow", "polars", "pandas")

# Runs `cluster ARGS...` as the console script does and records, at exit, the top-level packages it imported.
WRAPPER = """
import atexit, json, sys
report = sys.argv[1]
def _report():
    with open(report, "w") as f:
        json.dump(sorted({m.split(".")[0] for m in sys.modules}), f)
atexit.register(_report)
sys.argv = ["cluster", *sys.argv[2:]]
from shardstats.cluster.cli import main
main()
"""

BUILTIN_OPS = sorted(name for name, op in registry.ops().items()
                     if op.run.__module__.startswith("shardstats.worker.ops.") and op.reads is None)
KEYED_OPS = sorted(name for name, op in registry.ops().items()
                   if op.run.__module__.startswith("shardstats.worker.ops.") and op.reads is not None)


def run_cli(tmp_path: Path, env: dict | None, *args: str,
            avoid: tuple[str, ...] = HEAVY) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Runs the CLI; returns its result and which of the ``avoid`` packages it imported."""
    report = tmp_path / "imported.json"
    report.unlink(missing_ok=True)
    r = subprocess.run([sys.executable, "-c", WRAPPER, str(report), *args], capture_output=True, text=True,
                       timeout=120, env=env, stdin=subprocess.DEVNULL)
    imported = set(json.loads(report.read_text()))
    return r, [m for m in avoid if m in imported]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import os
    d = tmp_path_factory.mktemp("client-imports")
    info = launcher.start(3, "127.0.0.1", None, str(d / "logs"), "warning")
    info.save(d / "cluster.json")
    try:
        yield {**os.environ, "CLUSTER_FILE": str(d / "cluster.json")}
    finally:
        launcher.stop(info)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The same kind of values in every local format: .txt, .npy, .csv (with a header) and .parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    d = tmp_path_factory.mktemp("client-inputs")
    rng = np.random.default_rng(13)
    parts = [rng.integers(-20, 20, 200).astype(np.int64) for _ in range(4)]
    parts[1][:3] = [I64_MIN, I64_MAX, I64_MAX]          # exact at the int64 edges, sums beyond 64 bits
    (d / "a.txt").write_text("\n".join(map(str, parts[0].tolist())) + "\n")
    np.save(d / "b.npy", parts[1])
    (d / "c.csv").write_text("x\n" + "\n".join(map(str, parts[2].tolist())) + "\n")
    pq.write_table(pa.table({"x": parts[3]}), d / "d.parquet")
    return d, {"a.txt": parts[0], "b.npy": parts[1], "c.csv": parts[2], "d.parquet": parts[3]}


def _mode(v: list[int]) -> dict:
    c = Counter(v)
    top = max(c.values())
    return {"value": min(x for x in c if c[x] == top), "count": top}


def _median(v: list[int]) -> dict:
    s = sorted(v)
    lo, hi = s[(len(s) - 1) // 2], s[len(s) // 2]
    return {"value": Fraction(lo + hi, 2), "lower": lo, "upper": hi}


def _stats(v: list[int]) -> dict:
    return {"count": len(v), "sum": sum(v), "min": min(v), "max": max(v), "mean_exact": Fraction(sum(v), len(v))}


def _topk(v: list[int], k: int) -> list:
    return [[x, n] for x, n in sorted(Counter(v).items(), key=lambda xn: (-xn[1], xn[0]))[:k]]


# Each op's extra options and what its result must say, from a sequential reference over all values.
CASES = {
    "mode": ((), lambda r, v: {k: r[k] for k in ("value", "count")} == _mode(v)),
    "median": (("--quantiles", "0.1,0.9"), lambda r, v: {k: Fraction(r[k]) for k in ("value", "lower", "upper")}
               == _median(v)),
    "stats": ((), lambda r, v: {**{k: r[k] for k in ("count", "sum", "min", "max")},
                                "mean_exact": Fraction(r["mean_exact"])} == _stats(v)),
    "topk": (("--k", "3"), lambda r, v: r["items"] == _topk(v, 3)),
    "distinct": ((), lambda r, v: r["value"] == len(set(v)) and r["exact"] is True),
    "sketch": (("--kind", "count_min", "--count", "3"), lambda r, v: r["counts"][0]["estimate"] >= v.count(3)
               and r["total"] == len(v)),
    "describe": ((), lambda r, v: r["stats"]["count"] == len(v) and r["distinct"]["value"] == len(set(v))
                 and r["mode"]["count"] == _mode(v)["count"]
                 and Fraction(r["median"]["value"]) == _median(v)["value"]),
}


def test_every_builtin_op_has_a_case_here():
    assert set(CASES) == set(BUILTIN_OPS)
    assert set(KEYED_CASES) == set(KEYED_OPS)


# The keyed ops read records; the client still only lists, submits and prints (the workers import Arrow).
KEYED_CASES = {
    "groupby": (("--by", "k", "--agg", "sum(x)"), lambda r, rows: r["data"] == [["a", sum(x for k, x in rows)]]),
    "wordcount": (("--text", "k"), lambda r, rows: r["top"] == [["a", len(rows)]]),
    "index": (("--text", "k"), lambda r, rows: r["words"] == 1),
    "join": (("--right", "{tmp}/t.csv", "--on", "k", "--how", "semi"), lambda r, rows: r["rows"] == len(rows)),
    "mapreduce": (("--job", "{examples}/wordcount.py"), lambda r, rows: r["rows"] == 0),
    "sort": (("--by", "x", "--out", "{tmp}/sorted"), lambda r, rows: r["parts"] == 3 and len(r["splits"]) == 2),
}


@pytest.mark.parametrize("op", KEYED_OPS)
def test_submit_of_each_keyed_op_imports_no_arrow_or_numpy(cluster, tmp_path, op):
    rows = [("a", i * 7 - 3) for i in range(50)]
    (tmp_path / "t.csv").write_text("k,x\n" + "".join(f"{k},{x}\n" for k, x in rows))
    extra, check = KEYED_CASES[op]
    examples = Path(__file__).resolve().parent.parent / "examples"
    extra = tuple(a.replace("{tmp}", str(tmp_path)).replace("{examples}", str(examples)) for a in extra)
    r, heavy = run_cli(tmp_path, cluster, "submit", op, "--input", str(tmp_path / "t.csv"), *extra, "--json",
                       avoid=HEAVY + ("uvloop", "duckdb"))
    assert r.returncode == 0, r.stderr
    assert check(json.loads(r.stdout)["result"], rows), r.stdout
    assert heavy == [], f"`cluster submit {op}` imported {heavy}"


@pytest.mark.parametrize("op", BUILTIN_OPS)
def test_submit_of_each_op_imports_no_numpy(cluster, inputs, tmp_path, op):
    d, parts = inputs
    extra, check = CASES[op]
    # nor uvloop: a client's loop carries control messages only (cluster/runner.py)
    r, heavy = run_cli(tmp_path, cluster, "submit", op, "--input", str(d), "--column", "x", *extra, "--json",
                       avoid=HEAVY + ("uvloop",))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout, parse_float=Decimal)
    values = [int(x) for p in parts.values() for x in p.tolist()]
    assert doc["stats"]["values"] == len(values)
    assert check(doc["result"], values), doc["result"]
    assert heavy == [], f"`cluster submit {op}` imported {heavy}"


@pytest.mark.parametrize("name", ["a.txt", "b.npy", "c.csv", "d.parquet"])
def test_each_input_format_and_the_human_output_import_no_numpy(cluster, inputs, tmp_path, name):
    d, parts = inputs
    r, heavy = run_cli(tmp_path, cluster, "submit", "mode", "--input", str(d / name), "--column", "x")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"mode: {_mode(parts[name].tolist())['value']}  (count "), r.stdout
    assert heavy == [], f"`cluster submit mode --input {name}` imported {heavy}"


@pytest.mark.parametrize("args, avoid", [
    (("--help",), HEAVY + ("asyncio", "uvloop")), (("--version",), HEAVY + ("asyncio", "uvloop")),
    (("status", "--help"), HEAVY + ("asyncio", "uvloop")),
    (("submit", "--help"), HEAVY), (("submit", "mode", "--help"), HEAVY),     # the ops' modules bring asyncio
])
def test_help_and_version_import_no_numpy_and_no_event_loop_before_an_op(tmp_path, args, avoid):
    r, heavy = run_cli(tmp_path, None, *args, avoid=avoid)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert heavy == [], f"`cluster {' '.join(args)}` imported {heavy}"


def test_the_op_modules_use_numpy_only_lazily():
    """Importing every op (what `cluster submit --help` does) leaves numpy unimported: no module-level
    ``np.`` value anywhere on the client's path."""
    code = ("import sys; from shardstats.worker.ops import registry; ops = registry.ops(); "
            "import shardstats.cluster.output, shardstats.coordinator.job, shardstats.protocol.frames; "
            "print(len(ops), 'numpy' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(len(registry.ops())), "False"]


def test_a_lazy_module_is_imported_once_on_first_use_from_any_thread(tmp_path, monkeypatch):
    """shardstats/lazy.py: nothing runs until an attribute is asked for; then the module runs exactly once,
    however many threads ask at the same moment, and every name (also one made on demand) reads as the
    module's own."""
    import threading
    from shardstats.lazy import LazyModule, lazy_module
    (tmp_path / "lazy_probe_log.py").write_text("RUNS = []\n")
    (tmp_path / "lazy_probe_mod.py").write_text(
        "import time, lazy_probe_log\nlazy_probe_log.RUNS.append(1)\ntime.sleep(0.05)\nVALUE = 42\n"
        "def __getattr__(name):\n    if name == 'MADE':\n        return 'on demand'\n    raise AttributeError(name)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("lazy_probe_mod", "lazy_probe_log"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import lazy_probe_log
    mod = lazy_module("lazy_probe_mod")
    assert isinstance(mod, LazyModule) and "lazy_probe_mod" not in sys.modules and lazy_probe_log.RUNS == []
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(mod.VALUE)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [42] * 8
    assert lazy_probe_log.RUNS == [1]
    assert mod.MADE == "on demand" and mod.__file__ == sys.modules["lazy_probe_mod"].__file__
    with pytest.raises(AttributeError):
        mod.missing
    assert lazy_module("lazy_probe_mod") is sys.modules["lazy_probe_mod"]    # once imported, the module itself


def test_a_builtin_op_is_found_without_the_other_ops_or_the_entry_points():
    """``registry.get`` of a built-in imports that op's module alone (nothing can replace a built-in), and
    answers exactly as the full registry does."""
    others = [f"shardstats.worker.ops.{n}" for n in BUILTIN_OPS if n != "median"]
    code = ("import sys; from shardstats.worker.ops import registry; op = registry.get('median'); "
            f"print(op.name, sorted(m for m in {others + ['importlib.metadata']!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(None, 1) == ["median", "[]\n"]
    for name in BUILTIN_OPS:
        assert registry.find(name) is registry.get(name) is registry.ops()[name]
    for name in ("contract", "registry", "no_such_op", "../mode", "mode.run", ""):
        assert registry.find(name) is None
        with pytest.raises(UsageError, match="unknown op"):
            registry.get(name)


def test_an_api_op_method_imports_that_op_alone():
    """``c.mode`` on a Cluster finds its op as the CLI does (registry.find): the other ops' modules, the entry
    points and numpy stay unloaded (a notebook's first ``Cluster.connect().mode(...)`` was 14 ms slower)."""
    code = ("import sys; from shardstats import Cluster; c = object.__new__(Cluster); m = c.mode; "
            "print(m.__name__, sorted(n.rsplit('.', 1)[1] for n in sys.modules if n.startswith('shardstats.worker.ops.') "
            "and n.rsplit('.', 1)[1] in %r), 'numpy' in sys.modules)" % (list(BUILTIN_OPS),))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["mode", "['mode']", "False"]
