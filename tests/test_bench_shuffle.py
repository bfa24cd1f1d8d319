"""scripts/bench_shuffle.py without the bed: its loopback grid on real worker processes, as JSON.

What auto picks where every peer sits on 127.0.0.1 (plain: the link outruns the
coding there), that every cell is exact, and the bookkeeping the tables rest on
(bytes per shuffled value, no ideal without a link rate).  The shaped-link runs
are in tests/test_testbed.py (root only).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from scripts import bench_shuffle
from shardstats.cluster.gen import generate
from shardstats.worker.ops.counting import COMBINE_SAMPLE


def test_loopback_grid_is_exact_and_auto_stays_plain(capsys, tmp_path):
    hosts = 2
    rows = hosts * (COMBINE_SAMPLE + 5_000)        # enough a host that the sample, not its size, decides
    assert bench_shuffle.main(["--rates", "", "--loopback", "--hosts", str(hosts), "--rows", str(rows),
                               "--strategies", "credit", "--encodings", "plain,compact,auto", "--repeat", "1",
                               "--json", "--json-out", str(tmp_path / "b.json"), "--timeout", "60"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "b.json").read_text()) == doc
    want = bench_shuffle.reference_mode(np.concatenate(generate(rows, hosts, "unique-dup", 1)))
    assert (doc["expected"]["value"], doc["expected"]["count"]) == want
    assert doc["auto_picks"] == {"loopback": ["plain"]}
    [bed] = doc["beds"]
    assert bed["rate"] == "loopback"
    cells = {r["encoding"]: r for r in bed["rows"]}
    assert set(cells) == {"plain", "compact", "auto"}
    for enc, r in cells.items():
        m = r["median"]
        assert r["correct"] and (m["result"]["value"], m["result"]["count"]) == want
        assert m["ideal_seconds"] is None and m["time_over_ideal"] is None
        assert m["encoding_used"] == ("plain" if enc == "auto" else enc)
        assert m["bytes_per_value"] == m["shuffle_bytes"] / m["shuffled_values"]
    assert cells["compact"]["median"]["shuffle_bytes"] < cells["plain"]["median"]["shuffle_bytes"] / 3
    assert cells["plain"]["vs_plain"] == 1.0


def test_unknown_encoding_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_shuffle.main(["--encodings", "plain,zip"])
    assert exc.value.code == 2
    assert "unknown encoding 'zip'" in capsys.readouterr().err
