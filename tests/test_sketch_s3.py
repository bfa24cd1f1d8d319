"""``--save-sketch s3://bucket/key`` and ``cluster sketch show|merge`` of objects, against moto's S3 server on 127.0.0.1:
the merged sketch is written whole with the worker's own AWS environment and read back by the CLI alone."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from tests.conftest import run_op

pytest.importorskip("s3fs", reason="s3:// needs s3fs (pip install -e '.[test]')")
moto_server = pytest.importorskip("moto.server", reason="the S3 test server needs moto[server]")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def bucket():
    import boto3
    from tests.test_s3 import moto_store
    with moto_store() as env:
        from shardstats.worker.io import objects
        objects._shared.clear()          # a client made before this environment would not see the server
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
            Bucket="sketches")
        yield "s3://sketches"
        objects._shared.clear()


def _show(*args):
    from shardstats.cluster.sketchcli import sketch
    return CliRunner().invoke(sketch, list(args))


def test_save_to_s3_then_merge_and_show_from_the_store(bucket):
    rng = np.random.default_rng(6)
    days = [rng.normal(100 * d, 50, 20_000).astype(np.int64) for d in range(3)]
    for d, v in enumerate(days):
        res, _, _ = run_op("median", np.array_split(v, 3), 3, {"approx": True,
                                                             "save_sketch": f"{bucket}/days/d{d}.sketch"})
        assert res["saved"] == f"{bucket}/days/d{d}.sketch"
    r = _show("merge", *[f"{bucket}/days/d{d}.sketch" for d in range(3)], "-o", f"{bucket}/week.sketch")
    assert r.exit_code == 0, r.output
    r = _show("show", f"{bucket}/week.sketch", "--quantiles", "0.5", "--json")
    assert r.exit_code == 0, r.output
    ans = json.loads(r.output)["answer"]
    allv = np.sort(np.concatenate(days).astype(np.float64))
    v = ans["quantiles"]["0.5"]["value"]
    lo, hi = np.searchsorted(allv, v, "left") / len(allv), np.searchsorted(allv, v, "right") / len(allv)
    assert ans["n"] == len(allv) and (lo <= 0.5 <= hi or min(abs(0.5 - lo), abs(0.5 - hi)) <= ans["rank_error_bound"])


def test_strings_count_min_to_s3_and_bad_objects_exit_2(bucket):
    words = [f"w{i % 13}" for i in range(5000)]
    table = pa.table({"w": pa.array(words)})
    from tests.test_sketch_kinds import run_tables
    res = run_tables("sketch", [table.slice(0, 2000), table.slice(2000)],
                     {"kind": "count_min", "of": "w", "save_sketch": f"{bucket}/w.cm"})
    assert res["saved"] == f"{bucket}/w.cm"
    r = _show("show", f"{bucket}/w.cm", "--count", "w3")
    assert r.exit_code == 0 and f"w3: ~{words.count('w3'):,}" in r.output, r.output
    r = _show("show", f"{bucket}/nothing.sketch")
    assert r.exit_code == 2 and "no such object" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    with pytest.raises(ExceptionGroup) as got:
        run_tables("sketch", [table], {"kind": "theta", "of": "w", "save_sketch": f"{bucket}/"})
    assert "name an object" in str(got.value.exceptions[0])
