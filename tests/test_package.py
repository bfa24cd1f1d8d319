"""The distribution: one top-level import package, one version, and ops from other installed packages.

The plugin test installs ``tests/plugin_example`` (a toy op, ``evens``, registered
through the ``shardstats.ops`` entry point) into the test venv with pip, checks it
appears in the CLI, the API and on the workers, and uninstalls it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import shardstats
from tests.conftest import ROOT, cli

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def test_the_wheel_holds_exactly_one_top_level_package(tmp_path):
    subprocess.run([*PIP, "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    shutil.rmtree(ROOT / "build", ignore_errors=True)      # setuptools' in-tree scratch
    wheel = next(tmp_path.glob("shardstats-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"shardstats"}, tops
    for sub in ("protocol", "coordinator", "cluster", "worker/net", "worker/comm", "worker/ops", "worker/io"):
        assert f"shardstats/{sub}/__init__.py" in names
    assert f"shardstats-{shardstats.__version__}.dist-info/METADATA" in names
    meta = zipfile.ZipFile(wheel).read(f"shardstats-{shardstats.__version__}.dist-info/entry_points.txt").decode()
    assert "cluster = shardstats.cluster.cli:run" in meta


def test_one_version_everywhere():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.split()[-1] == shardstats.__version__
    out = subprocess.run([sys.executable, "-c", "import shardstats; print(shardstats.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == shardstats.__version__


def test_public_api_and_error_families():
    from shardstats import Cluster, ClusterError, InputError, ShardstatsError, UsageError, UserError
    assert Cluster.__module__ == "shardstats.cluster.api"
    assert issubclass(InputError, UserError) and issubclass(UsageError, UserError)
    assert UserError.exit_code == 2 and ClusterError.exit_code == 1
    assert issubclass(UserError, ShardstatsError) and issubclass(ClusterError, ShardstatsError)
    assert set(shardstats.__all__) >= {"Cluster", "ShardstatsError", "__version__"}


@pytest.fixture
def plugin():
    src = ROOT / "tests" / "plugin_example"
    subprocess.run([*PIP, "install", "--no-deps", str(src)], check=True,
                   capture_output=True, timeout=300)
    try:
        yield
    finally:
        subprocess.run([*PIP, "uninstall", "-y", "shardstats-evens"], capture_output=True, timeout=120)
        for d in (src / "build", *src.glob("*.egg-info")):
            subprocess.run(["rm", "-rf", str(d)])


def test_a_plugin_op_appears_in_the_cli_the_api_and_on_workers(plugin, tmp_path):
    values = np.arange(-50, 1000, dtype=np.int64)
    for i, part in enumerate(np.array_split(values, 3)):
        np.save(tmp_path / f"p{i}.npy", part)
    want = int(np.count_nonzero(values % 3 == 0))
    r = cli("submit", "--help")
    assert r.returncode == 0 and "evens" in r.stdout
    r = cli("submit", "evens", "--help")
    assert "--divisor" in r.stdout and "cluster submit evens --input shards/ --divisor 3" in r.stdout
    r = cli("submit", "evens", "--local", "2", "--input", str(tmp_path), "--divisor", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == {"hits": want, "n": len(values)}
    r = cli("submit", "evens", "--local", "2", "--input", str(tmp_path), "--divisor", "0")
    assert r.returncode == 2 and r.stderr.strip() == "error: --divisor: must be at least 1 (got 0)"
    code = ("from shardstats import Cluster\n"
            f"with Cluster.local(2) as c:\n    print(c.evens({str(tmp_path)!r}, divisor=3).hits)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == want


def test_the_ops_package_is_all_a_new_op_needs():
    """Every built-in op is found by the registry from its module alone."""
    from shardstats.worker.ops import registry
    assert {"mode", "median", "stats"} <= set(registry.ops())
    for name, op in registry.ops().items():
        assert op.name == name and op.phases and op.summary
        assert Path(sys.modules[op.run.__module__].__file__).parent == ROOT / "worker" / "ops"
