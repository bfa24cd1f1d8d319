"""scripts/dbgen.py: db-benchmark's G1 group-by data (groupby-datagen.R's columns and laws) as Parquet shards,
the word-count corpus; and bench_keyed's answer check, which must see a wrong answer."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from scripts import dbgen


def _read(d):
    import pyarrow as pa
    return pa.concat_tables(pq.read_table(f) for f in dbgen.shard_files(d, ".parquet"))


def test_groupby_data_follows_the_r_script(tmp_path):
    n, k = 20_000, 10
    out = dbgen.generate_groupby(tmp_path / "g", n, k=k, shards=3, chunk_rows=3_000, quiet=True)
    files = dbgen.shard_files(out, ".parquet")
    assert [f.rsplit("/", 1)[1] for f in files] == ["part-00.parquet", "part-01.parquet", "part-02.parquet"]
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [6_667, 6_667, 6_666]
    assert pq.ParquetFile(files[0]).metadata.num_row_groups == 3          # chunked: 3000 + 3000 + 667
    t = _read(out)
    assert t.column_names == list(dbgen.COLUMNS) and t.num_rows == n
    types = {f.name: str(f.type) for f in t.schema}
    assert types == {"id1": "string", "id2": "string", "id3": "string", "id4": "int32", "id5": "int32",
                     "id6": "int32", "v1": "int32", "v2": "int32", "v3": "double"}
    d = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}
    for c in ("id1", "id2"):                            # sprintf("id%03d", 1:K), every label drawn
        assert set(d[c]) == {f"id{i:03d}" for i in range(1, k + 1)}
    assert set(d["id3"]) <= {f"id{i:010d}" for i in range(1, n // k + 1)} and len(set(d["id3"])) > 0.8 * n // k
    for c, hi in (("id4", k), ("id5", k), ("id6", n // k), ("v1", 5), ("v2", 15)):
        assert d[c].min() == 1 and d[c].max() == hi, c
    assert 0 <= d["v3"].min() and d["v3"].max() < 100
    assert np.array_equal(np.round(d["v3"], 6), d["v3"]) and not np.array_equal(np.round(d["v3"], 5), d["v3"])
    assert not any(t[c].null_count for c in t.column_names)                 # the _0_0 variant: no NAs
    assert abs(d["v1"].mean() - 3) < 0.05 and abs(d["v2"].mean() - 8) < 0.15 and abs(d["v3"].mean() - 50) < 1


def test_groupby_data_is_seeded_and_reused(tmp_path):
    a = dbgen.generate_groupby(tmp_path / "a", 5_000, k=10, shards=2, chunk_rows=1_000, quiet=True)
    b = dbgen.generate_groupby(tmp_path / "b", 5_000, k=10, shards=2, chunk_rows=1_000, quiet=True)
    c = dbgen.generate_groupby(tmp_path / "c", 5_000, k=10, shards=2, chunk_rows=1_000, seed=7, quiet=True)
    assert _read(a).equals(_read(b)) and not _read(a).equals(_read(c))
    meta = json.loads((a / dbgen.MARKER).read_text())
    assert meta["rows"] == 5_000 and meta["name"] == "G1_5e3_1e1_0_0"
    stamp = [(f, (a / f).stat().st_mtime_ns) for f in ("part-00.parquet", "part-01.parquet")]
    dbgen.generate_groupby(a, 5_000, k=10, shards=2, chunk_rows=1_000, quiet=True)        # complete: kept
    assert [(f, (a / f).stat().st_mtime_ns) for f, _ in stamp] == stamp
    (a / dbgen.MARKER).unlink()                                                          # incomplete: made again
    dbgen.generate_groupby(a, 5_000, k=10, shards=2, chunk_rows=1_000, quiet=True)
    assert (a / dbgen.MARKER).exists() and not (tmp_path / "a.partial").exists()


def test_names_and_sizes():
    assert dbgen.dataset_name(10**7) == "G1_1e7_1e2_0_0" and dbgen.dataset_name(10**8) == "G1_1e8_1e2_0_0"
    assert dbgen.pretty_sci(5 * 10**6) == "5e6" and dbgen.pretty_sci(12345) == "12345"
    assert dbgen.parse_count("1e7") == 10**7 and dbgen.parse_count("1_000") == 1000
    with pytest.raises(ValueError):
        dbgen.parse_count("1.5")
    assert dbgen.parse_size("200MB") == 200 * 10**6 and dbgen.parse_size("1GiB") == 2**30
    assert dbgen.parse_size("4096") == 4096


def test_corpus_is_the_stdlib_cut_at_line_ends(tmp_path):
    out = dbgen.build_corpus(tmp_path / "c", 300_000, files=3, quiet=True)
    files = dbgen.shard_files(out, ".txt")
    assert len(files) == 3
    sizes = [len(open(f, "rb").read()) for f in files]
    assert all(100_000 <= s < 100_000 + 20_000 for s in sizes), sizes
    for f in files:
        text = open(f, encoding="utf-8").read()
        assert text.endswith("\n") and "\r" not in text and "\x1f" not in text
    assert "def " in open(files[0], encoding="utf-8").read()


def test_bench_check_sees_a_wrong_answer():
    pl = pytest.importorskip("polars")
    from scripts import bench_keyed as bk
    q = bk.QUESTIONS["q8"]
    ref = bk.normalize(pl.DataFrame({"id6": [1, 1, 2, 2], "v3": [9.5, 8.25, 7.0, 6.0]}), q)
    same = bk.normalize(pl.DataFrame({"g": [2, 1, 2, 1], "x": [6.0, 8.25, 7.0 * (1 + 1e-12), 9.5]}), q)
    assert bk.compare(ref, same, ["id6"]) is None              # a multiset per group, floats to 1e-9
    off = bk.normalize(pl.DataFrame({"g": [2, 1, 2, 1], "x": [6.0, 8.25, 7.0001, 9.5]}), q)
    assert "1 rows differ in largest2_v3" in bk.compare(ref, off, ["id6"])
    assert set(bk.OURS_SPECS) == set(bk.QUESTIONS) == set(bk.DUCKDB_SQL) == set(bk.SPARK_SQL)
    assert bk.ours("q2") == ("groupby", {"by": "id1,id2", "agg": ("v1=sum(v1)",), "limit": 0})


def test_permute_is_a_bijection():
    keys = dbgen.round_keys(108, "t")
    for n in (1, 2, 3, 7, 10, 110, 1_000, 12_345, 65_537):
        p = dbgen.permute(np.arange(n), n, keys)
        assert np.array_equal(np.sort(p), np.arange(n)), n
    p = dbgen.permute(np.arange(1_000), 1_000, keys)
    assert not np.array_equal(p, np.arange(1_000)) and np.array_equal(p, dbgen.permute(np.arange(1_000), 1_000, keys))
    assert not np.array_equal(p, dbgen.permute(np.arange(1_000), 1_000, dbgen.round_keys(108, "u")))


def test_join_data_follows_the_r_script(tmp_path):
    n = 20_000                                  # small: 200 rows over 220 id1 keys, medium 2,000 over 2,200 id2
    out = dbgen.generate_join(tmp_path / "j", n, shards=3, chunk_rows=3_000, ratios=(100, 10), quiet=True)
    names = {t: name for t, (name, _) in dbgen.join_names(n, (100, 10)).items()}
    assert names == {"x": "J1_2e4_NA_0_0", "small": "J1_2e4_2e2_0_0", "medium": "J1_2e4_2e3_0_0", "big": "J1_2e4_2e4_0_0"}
    t = {k: _read(out / name) for k, name in names.items()}
    assert [len(dbgen.shard_files(out / names[k], ".parquet")) for k in names] == [3, 1, 1, 3]
    assert {k: v.num_rows for k, v in t.items()} == {"x": n, "small": 200, "medium": 2_000, "big": n}
    assert t["x"].column_names == ["id1", "id2", "id3", "id4", "id5", "id6", "v1"]
    assert t["big"].column_names == ["id1", "id2", "id3", "id4", "id5", "id6", "v2"]
    assert t["medium"].column_names == ["id1", "id2", "id4", "id5", "v2"]
    assert t["small"].column_names == ["id1", "id4", "v2"]
    assert str(t["big"].schema.field("id3").type) == "int32" and str(t["big"].schema.field("id6").type) == "string"
    col = {k: {c: v[c].to_numpy(zero_copy_only=False) for c in v.column_names} for k, v in t.items()}
    for k, c, d in (("x", "id1", "id4"), ("big", "id3", "id6"), ("small", "id1", "id4"), ("medium", "id2", "id5")):
        assert list(col[k][d]) == [f"id{i}" for i in col[k][c]]                     # sprintf("id%.0f", ...)
    # split_xlr(m): keys 1..1.1m, 0.9m on both sides, 0.1m left only, 0.1m right only
    for c, m, right in (("id1", n // 100, ("small", "medium", "big")), ("id2", n // 10, ("medium", "big")),
                        ("id3", n, ("big",))):
        left = set(col["x"][c].tolist())
        assert len(left) == m and min(left) >= 1 and max(left) <= m * 11 // 10, c     # sample_all: every key
        for r in right:
            keys = set(col[r][c].tolist())
            assert len(keys) == m and len(keys & left) == m * 9 // 10, (c, r)
    assert len(set(col["x"]["id3"].tolist())) == n and len(set(col["big"]["id3"].tolist())) == n   # unique
    assert len(set(col["medium"]["id2"].tolist())) == 2_000 and len(set(col["small"]["id1"].tolist())) == 200
    v = col["x"]["v1"]
    assert 0 <= v.min() and v.max() < 100 and np.array_equal(np.round(v, 6), v) and abs(v.mean() - 50) < 1
    again = dbgen.generate_join(tmp_path / "j2", n, shards=3, chunk_rows=3_000, ratios=(100, 10), quiet=True)
    assert _read(again / names["big"]).equals(t["big"])
    with pytest.raises(ValueError):
        dbgen.generate_join(tmp_path / "bad", 12_345, ratios=(100, 10), quiet=True)
