"""The keyed ops driven as a user drives them: `cluster submit groupby|wordcount|index` against real worker
processes, human and --json output, exit 2 with one line for bad input, the cluster serving the next job, a
dataset kept warm and listed by `cluster status`."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardstats.cluster import launcher
from tests.conftest import cli
from tests.keyed_ref import assert_rows_equal, duck


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    d = tmp_path_factory.mktemp("keyed-cli")
    info = launcher.start(4, "127.0.0.1", None, str(d / "logs"), "warning")
    try:
        info.save(d / "cluster.json")
        yield str(d / "cluster.json")
    finally:
        launcher.stop(info)


@pytest.fixture(scope="module")
def sales(tmp_path_factory):
    d = tmp_path_factory.mktemp("sales")
    regions = ["north", "south", "east", None]
    for i in range(3):
        n = 1000 * (i + 1)
        pq.write_table(pa.table({"region": [regions[(j * 7 + i) % 4] for j in range(n)],
                                 "revenue": [(j * 37 % 1000) / 10 for j in range(n)],
                                 "qty": [j % 13 - 4 for j in range(n)]}), d / f"s{i}.parquet")
    return d


def submit(cf, *args):
    return cli("submit", *args, "--cluster-file", cf, env={"CLUSTER_WORKERS": ""})


def test_groupby_json_human_and_out(four, sales, tmp_path):
    src = f"read_parquet('{sales}/*.parquet')"
    _, want = duck(f"SELECT region, sum(revenue), count(*), median(qty) FROM {src} GROUP BY region")
    r = submit(four, "groupby", "--input", str(sales), "--by", "region", "--agg", "sum(revenue)", "--agg",
               "n=count()", "--agg", "median(qty)", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"]["columns"] == ["region", "sum_revenue", "n", "median_qty"]
    assert_rows_equal(doc["result"]["data"], want, 1)
    st = doc["stats"]
    assert st["map_pairs"] == 6000 and len(st["reducer_pairs"]) == 4 and st["busiest_reducer_share"] >= 1
    assert {"combined_pairs", "shuffled_pairs", "shuffled_bytes"} <= set(st)
    r = submit(four, "groupby", "--input", str(sales), "--by", "region", "--agg", "sum(qty)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["region", "sum_qty"]
    assert "shuffle counter: map 6,000 pairs, after the combiner" in r.stdout
    out = tmp_path / "res"
    r = submit(four, "groupby", "--input", str(sales), "--by", "region", "--agg", "sum(qty)", "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, got = duck(f"SELECT region, sum_qty FROM read_parquet('{out}/part-*.parquet')")
    _, want = duck(f"SELECT region, sum(qty) FROM {src} GROUP BY region")
    assert_rows_equal([list(x) for x in got], want, 1)


@pytest.mark.parametrize("args, message", [
    (("--by", "nope", "--agg", "count()"), r"s\d\.parquet: no column 'nope' \(it has: region, revenue, qty\)"),
    (("--by", "region", "--agg", "sum(region)"), r"--agg sum\(region\): column 'region' holds"),
    (("--by", "region", "--agg", "nope(qty)"), r"--agg nope\(qty\): unknown function"),
    (("--by", "region"), r"--agg: name at least one aggregate"),
    (("--agg", "count()"), r"--by: name the key columns"),
])
def test_bad_usage_is_one_line_and_exit_2_then_the_next_job_runs(four, sales, args, message):
    import re
    r = submit(four, "groupby", "--input", str(sales), *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and re.search(message, r.stderr), r.stderr
    r = submit(four, "groupby", "--input", str(sales), "--by", "region", "--agg", "count()", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["rows"] == 4


def test_cached_dataset_answers_the_same_and_is_listed(four, sales):
    r = submit(four, "groupby", "--input", str(sales), "--by", "region", "--agg", "sum(qty)", "--cache", "sales",
               "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)["result"]["data"]
    r = submit(four, "groupby", "--input", "cache:sales", "--by", "region", "--agg", "sum(qty)", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["data"] == first
    # every column was kept: another question of the same dataset
    r = submit(four, "groupby", "--input", "cache:sales", "--by", "qty", "--agg", "max(revenue)", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["rows"] == 13
    r = cli("status", "--cluster-file", four, env={"CLUSTER_WORKERS": ""})
    assert "cached: cache:sales  6,000 rows" in r.stdout, r.stdout
    r = submit(four, "groupby", "--input", "cache:nothing", "--by", "region", "--agg", "count()")
    assert r.returncode == 2 and "cache:nothing: not cached" in r.stderr


def test_wordcount_cli(four, tmp_path):
    (tmp_path / "d1.txt").write_text("to be or not to be\n")
    (tmp_path / "d2.txt").write_text("To see or not to see\n")
    r = submit(four, "wordcount", "--input", str(tmp_path), "--top", "3", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"] == {"tokens": 12, "distinct": 5, "top": [["to", 4], ["be", 2], ["not", 2]]}
    r = submit(four, "wordcount", "--input", str(tmp_path), "--top", "2", "--no-lower")
    assert r.returncode == 0 and r.stdout.startswith("12 tokens, 6 distinct words\n  to ")


def test_join_cli_says_what_it_chose(four, sales, tmp_path):
    pq.write_table(pa.table({"region": ["north", "south", "west"], "manager": ["ann", "bo", "cy"]}),
                   tmp_path / "managers.parquet")
    r = submit(four, "join", "--left", str(sales), "--right", str(tmp_path / "managers.parquet"), "--on", "region",
               "--how", "left", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["stats"]["strategy"] == "broadcast" and doc["stats"]["broadcast_side"] == "right"
    assert doc["result"]["why"].startswith("broadcast: right side") and doc["stats"]["shuffled_left_rows"] == 0
    assert doc["result"]["rows"] == 6000 and doc["result"]["columns"] == ["region", "revenue", "qty", "manager"]
    r = submit(four, "join", "--left", str(sales), "--right", str(tmp_path / "managers.parquet"), "--on", "region",
               "--strategy", "shuffle", "--limit", "3")
    assert r.returncode == 0 and r.stdout.startswith("shuffle: asked for"), r.stdout
    r = submit(four, "join", "--left", str(sales), "--right", str(tmp_path / "managers.parquet"), "--on", "manager")
    assert r.returncode == 2 and "the left side has no column 'manager'" in r.stderr, r.stderr
