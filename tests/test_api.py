"""The Python API (cluster/api.py) on real local workers: answers vs numpy, same as the CLI, clean shutdown."""
from __future__ import annotations

import asyncio
import json
from fractions import Fraction

import numpy as np
import pytest

from shardstats.cluster import launcher
from shardstats.cluster.api import Cluster
from shardstats.cluster.gen import generate, write_shards
from shardstats.cluster.output import dumps_exact
from shardstats.errors import ShardstatsError
from tests.conftest import cli, ref_mode


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    parts = generate(120_000, 5, "uniform", seed=8)    # an even count, two different middle values
    write_shards(parts, d / "in", "npy")
    return d / "in", np.concatenate(parts)


@pytest.fixture(scope="module")
def c3(tmp_path_factory):
    """One local 3-worker cluster shared by the tests below, with a cluster file describing it."""
    with Cluster.local(3) as c:
        path = tmp_path_factory.mktemp("apicluster") / "cluster.json"
        c.info.save(path)
        yield c, str(path)


def _quantile(sorted_vals: np.ndarray, q: str) -> Fraction:
    """numpy's linear quantile, exactly."""
    pos = Fraction(q) * (len(sorted_vals) - 1)
    lo = int(pos)
    a, b = int(sorted_vals[lo]), int(sorted_vals[min(lo + 1, len(sorted_vals) - 1)])
    return a + (b - a) * (pos - lo)


def test_mode_and_median_with_quantiles_match_numpy(c3, data):
    c, _ = c3
    path, allv = data
    r = c.mode(path)
    value, count, ties = ref_mode(allv)
    assert (r.value, r.count, r.ties) == (value, count, ties[:10])
    assert r.stats["values"] == len(allv) and r.stats["workers"] == 3 and r.stats["bytes_sent"] > 0
    m = c.median(str(path), quantiles=[0.5, 0.9])
    s = np.sort(allv)
    assert len(s) % 2 == 0 and s[len(s) // 2 - 1] != s[len(s) // 2]
    assert (m.lower, m.upper) == (int(s[len(s) // 2 - 1]), int(s[len(s) // 2]))
    assert m.value == Fraction(m.lower + m.upper, 2) and m.value == np.median(allv)
    assert m.quantiles == {"0.5": _quantile(s, "0.5"), "0.9": _quantile(s, "0.9")}
    assert float(m.quantiles["0.9"]) == pytest.approx(np.quantile(allv, 0.9))
    assert not hasattr(m, "count") and c.median(path, even="lower").value == m.lower   # a median has no count


def test_results_equal_the_cli_json(c3, data):
    c, cf = c3
    path, _ = data
    for op, api_call, extra in [("mode", lambda: c.mode(path, ties="all"), ["--ties", "all"]),
                                ("median", lambda: c.median(path, quantiles="0.25,0.99"),
                                 ["--quantiles", "0.25,0.99"])]:
        r = api_call()
        out = cli("submit", op, "--input", str(path), "--cluster-file", cf, "--json", *extra,
                  env={"CLUSTER_WORKERS": ""})
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["result"] == json.loads(dumps_exact(r.result)) == json.loads(r.json())["result"]
        assert doc["op"] == op == r.op
        same = ("workers", "values", "rounds", "max_inbound_streams")
        assert {k: doc["stats"][k] for k in same} == {k: r.stats[k] for k in same}
        assert set(doc["stats"]) - {"startup_seconds"} == set(r.stats)


def test_connect_by_cluster_file_and_status(c3, data):
    c, cf = c3
    path, allv = data
    other = Cluster.connect(cf)
    assert other.workers == c.workers and not other.owned
    assert other.mode(path).value == ref_mode(allv)[0]
    rows = other.status()
    assert [(w["id"], w["up"]) for w in rows] == [(0, True), (1, True), (2, True)]
    other.close()                                    # a connected cluster is left running
    assert c.mode(path).value == ref_mode(allv)[0]


@pytest.mark.parametrize("call", [
    lambda c, p: c.mode(p, ties="bogus"),
    lambda c, p: c.mode(p, shuffle="carrier-pigeon"),
    lambda c, p: c.mode(p, fan_in=0),
    lambda c, p: c.mode(p, chunk_bytes=0),
    lambda c, p: c.mode(p, column=-1),
    lambda c, p: c.median(p, even="middle"),
    lambda c, p: c.median(p, quantiles=[1.5]),
    lambda c, p: c.median(p, quantiles="0.5,abc"),
])
def test_bad_parameters_raise_value_error(c3, data, call):
    c, _ = c3
    path, _ = data
    with pytest.raises(ValueError):
        call(c, path)


def test_bad_input_raises_job_failed_with_exit_code_2(c3, tmp_path):
    c, _ = c3
    (tmp_path / "x.txt").write_text("1\nnope\n")
    with pytest.raises(ShardstatsError) as ei:
        c.mode(tmp_path)
    assert ei.value.exit_code == 2 and "x.txt:2" in str(ei.value)
    with pytest.raises(ShardstatsError) as ei:
        c.median(tmp_path / "missing")
    assert ei.value.exit_code == 2


async def test_sync_methods_work_inside_a_running_event_loop(c3, data):
    c, _ = c3
    path, allv = data
    asyncio.get_running_loop()                       # as in Jupyter: a loop is running here
    assert c.mode(path).value == ref_mode(allv)[0]
    assert c.median(path).lower == int(np.sort(allv)[(len(allv) - 1) // 2])


async def test_async_methods(c3, data):
    c, _ = c3
    path, allv = data
    r, m = await asyncio.gather(c.mode_async(path), c.median_async(path, quantiles=[0.9]))
    assert (r.value, r.count) == ref_mode(allv)[:2]
    assert m.quantiles["0.9"] == _quantile(np.sort(allv), "0.9")


def test_the_with_block_leaves_no_processes(tmp_path):
    np.save(tmp_path / "a.npy", np.array([3, 1, 3]))
    with Cluster.local(2) as c:
        pids = list(c.info.pids)
        assert all(launcher.alive(p) for p in pids) and len(pids) == 2
        assert c.mode(tmp_path).value == 3
    assert not any(launcher.alive(p) for p in pids)
    with pytest.raises(RuntimeError, match="closed"):
        c.mode(tmp_path)


def test_processes_are_stopped_when_the_block_raises(tmp_path):
    with pytest.raises(KeyError):
        with Cluster.local(1) as c:
            pids = list(c.info.pids)
            raise KeyError("user code failed")
    assert not any(launcher.alive(p) for p in pids)


def test_results_read_naturally_in_a_notebook(c3, data, tmp_path):
    """repr shows the answer in decimal (not 800003/2), quantiles answer to float keys, and the job's
    picture is there as HTML (what Jupyter shows) and as a page."""
    from shardstats.exact import exact_text
    c, _ = c3
    path, allv = data
    m = c.median(path, quantiles=["0.9", 0.25])
    s = np.sort(allv)
    assert isinstance(m.value, Fraction) and m.value.denominator == 2       # exact, and a half here
    text = repr(m)
    assert text.startswith("<Result median: ") and exact_text(m.value) in text and "/" not in text
    assert f"{len(allv):,} values on 3 workers" in text
    assert f"median: {exact_text(m.value)}  (lower " in m._repr_html_()      # the op's own words (Op.render)
    assert m.quantiles[0.9] == m.quantiles["0.9"] == m.quantiles["0.90"] == _quantile(s, "0.9")
    assert m.quantiles[0.25] == _quantile(s, "0.25") and 0.25 in m.quantiles and 0.5 not in m.quantiles
    with pytest.raises(KeyError, match="no quantile 0.5 .*0.9, 0.25"):
        m.quantiles[0.5]
    r = c.mode(path)
    assert repr(r).startswith(f"<Result mode: {r.value}  (count {r.count}")
    fragment = r._repr_html_()
    assert fragment.startswith('<div class="ss-report">') and "<script" not in fragment
    assert fragment.count('class="link"') == 9                            # 3 x 3 traffic cells
    page = r.report_html(str(tmp_path / "r.html"))
    assert page.startswith("<!DOCTYPE html>") and (tmp_path / "r.html").read_text() == page


def test_connect_with_nothing_running_says_to_start_a_cluster(tmp_path, monkeypatch):
    from shardstats.errors import ConfigError
    monkeypatch.setenv("CLUSTER_FILE", str(tmp_path / "none.json"))
    monkeypatch.delenv("CLUSTER_WORKERS", raising=False)
    with pytest.raises(ConfigError) as exc:
        Cluster.connect()
    assert isinstance(exc.value, ShardstatsError) and exc.value.exit_code == 1
    assert "no cluster is running" in str(exc.value) and "cluster up" in str(exc.value)
