"""The .csv and .parquet readers (``shardstats.worker.io.columns``), directly and through `cluster submit --column`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardstats.errors import InputError
from shardstats.worker.io.columns import parse_csv, read_csv, read_parquet
from shardstats.worker.io.shards import read_shard
from tests.conftest import cli

I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1


def csv(text: str | bytes, column=None, name: str = "f.csv", header: bool | None = None) -> list[int]:
    raw = text.encode() if isinstance(text, str) else text
    return parse_csv(raw, column, name, header).tolist()


# -- CSV: which column, which rows --------------------------------------------------------------
def test_header_by_name_by_index_and_default_first_column():
    text = "id,value,name\n1,10,a\n2,-20,b\n3,30,c\n"
    assert csv(text, "value") == [10, -20, 30]
    assert csv(text, "id") == [1, 2, 3]
    assert csv(text, 1, header=True) == [10, -20, 30] == csv(text, "1", header=True)   # an index (CLI text)
    assert csv(text, header=True) == [1, 2, 3]                   # no column: the first; the header is skipped
    with pytest.raises(InputError, match=r"^f\.csv:1: not an integer .*--header yes"):
        csv(text)                                                # a header is never guessed


def test_no_header_the_first_row_is_data():
    assert csv("5,6\n7,8\n", 1) == [6, 8]
    assert csv("5,6\n7,8\n") == [5, 7]
    assert csv("-5\n+7\n") == [-5, 7]


def test_digits_name_a_header_column_only_in_a_header_row():
    assert csv("year,2019,2020\n1,2,3\n4,5,6\n", "2020", header=True) == [3, 6]   # a header: the name wins
    assert csv("x,0\n1,2\n", "0", header=True) == [2]
    assert csv("5,1\n7,9\n", "1") == [1, 9]                               # data: "1" is an index
    assert csv("0,1,2\n3,4,5\n", "2") == [2, 5]


def test_quoted_fields_and_commas_inside_quotes():
    text = 'name,value\n"Smith, J",1\n"Doe, A","2"\n"x ""y"" z",3\n'
    assert csv(text, "value") == [1, 2, 3]
    assert csv('"v"\n"4"\n" 5 "\n', "v") == [4, 5]


def test_crlf_bom_blank_lines_and_surrounding_spaces():
    text = "\ufeffa,b\r\n1, 2\r\n\r\n3 ,4 \r\n   \r\n5,6"            # no final newline either
    assert csv(text.encode("utf-8"), "a") == [1, 3, 5]
    assert csv(text.encode("utf-8"), "b") == [2, 4, 6]
    assert csv("\ufeff7\r\n8\r\n".encode("utf-8")) == [7, 8]     # a BOM before data, no header


def test_int64_edges_are_exact_and_beyond_is_an_error_naming_file_and_line():
    assert csv(f"v\n{I64_MIN}\n{I64_MAX}\n0\n", "v") == [I64_MIN, I64_MAX, 0]
    with pytest.raises(InputError) as ei:
        csv(f"v\n1\n{I64_MAX + 1}\n", "v", "big.csv")
    assert str(ei.value).startswith("big.csv:3: ") and "beyond the int64 range" in str(ei.value)
    with pytest.raises(InputError, match=r"^big.csv:2: .*beyond the int64 range"):
        csv(f"a,b\n1,{I64_MIN - 1}\n", 1, "big.csv", header=True)


@pytest.mark.parametrize("text,column,line,what", [
    ("a,b\n1,2\n3,\n", "b", 3, "empty value in column 1"),
    ("a,b\n1,2\n,4\n", "a", 3, "empty value in column 0"),
    ('a,b\n1,2\n5,""\n', "b", 3, "empty value in column 1"),
    ("a,b\n1,2\n3\n", "b", 3, "row has no column 1"),
    ("a,b\r\n1,2\r\n3,x\r\n", "b", 3, "not an integer"),
    ("a,b\n1,2.5\n", "b", 2, "not an integer"),
    ("1\n2\n3.0\n", None, 3, "not an integer"),
])
def test_bad_rows_are_one_line_errors_naming_file_and_line(text, column, line, what):
    with pytest.raises(InputError) as ei:
        csv(text, column, "data.csv")
    msg = str(ei.value)
    assert msg.startswith(f"data.csv:{line}: ") and what in msg and "\n" not in msg, msg


@pytest.mark.parametrize("text,column,what", [
    ("a,b\n1,2\n", "c", "no column named 'c'"),
    ("a,b\n1,2\n", 5, "has no column 5"),
    ("1,2\n3,4\n", 2, "has no column 2"),
    ("a,b\n1,2\n", -1, "negative"),
])
def test_a_column_that_does_not_exist(text, column, what):
    with pytest.raises(InputError) as ei:
        csv(text, column, "data.csv")
    assert str(ei.value).startswith("data.csv") and what in str(ei.value), str(ei.value)


def test_empty_and_header_only_files_hold_no_values():
    assert csv("") == [] and csv("\n\n") == [] and csv("a,b\n", "b") == []


def test_errors_in_late_blocks_count_lines_from_the_top(monkeypatch):
    import shardstats.worker.io.text as inputs
    monkeypatch.setattr(inputs, "_BLOCK", 64)   # the CSV reader cuts text with inputs.line_blocks
    rows = "".join(f"{i},{i * 7}\n" for i in range(200))
    assert csv("a,b\n" + rows, "b") == [i * 7 for i in range(200)]
    with pytest.raises(InputError, match=r"^f.csv:202: "):
        csv("a,b\n" + rows + "200,\n", "b", "f.csv")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(I64_MIN, I64_MAX), st.integers(I64_MIN, I64_MAX), st.booleans(),
                          st.sampled_from(["\n", "\r\n"])), max_size=40),
       st.integers(0, 1), st.booleans())
def test_csv_equals_a_python_reading(rows, idx, quote):
    q = '"' if quote else ""
    text = "left,right\n" + "".join(f"{q}{a}{q},{b}{nl}" if pad else f"{a}, {q}{b}{q}{nl}"
                                    for a, b, pad, nl in rows)
    assert csv(text, ["left", "right"][idx]) == [r[idx] for r in rows]


def test_read_csv_and_read_shard_from_files(tmp_path):
    p = tmp_path / "s.CSV"                                       # the suffix is case-insensitive
    p.write_text("k,v\n1,2\n3,4\n")
    assert read_csv(p, "v").tolist() == [2, 4] == read_shard(p, "v").tolist()
    with pytest.raises(InputError, match="no such file"):
        read_csv(tmp_path / "missing.csv")


# -- Parquet -----------------------------------------------------------------------------------
try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:                                  # the optional extra: only the parquet tests skip
    pa = pq = None
needs_pyarrow = pytest.mark.skipif(pa is None, reason="pyarrow (the optional `parquet` extra) is not installed")


def _parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


@needs_pyarrow
def test_parquet_int32_uint64_and_int64_edges(tmp_path):
    p = _parquet(tmp_path / "t.parquet",
                 small=pa.array([-(2 ** 31), 0, 2 ** 31 - 1], pa.int32()),
                 big=pa.array([0, 5, I64_MAX], pa.uint64()),
                 wide=pa.array([I64_MIN, -1, I64_MAX], pa.int64()))
    assert read_parquet(p).tolist() == [-(2 ** 31), 0, 2 ** 31 - 1]          # first column by default
    assert read_parquet(p, "big").tolist() == [0, 5, I64_MAX]
    assert read_parquet(p, 2).tolist() == [I64_MIN, -1, I64_MAX] == read_parquet(p, "2").tolist()
    assert read_shard(p, "wide").dtype == np.int64


@needs_pyarrow
@pytest.mark.parametrize("make,column,what", [
    (lambda: {"v": pa.array([1, None, 3], pa.int64())}, "v", "row 1 of column 'v' is null"),
    (lambda: {"v": pa.array([1, 2 ** 63], pa.uint64())}, "v", "row 1 of column 'v' "
                                                               "is beyond the int64 range"),
    (lambda: {"v": pa.array([1.5, 2.0])}, "v", "holds double values"),
    (lambda: {"v": pa.array(["1", "2"])}, "v", "holds string values"),
    (lambda: {"v": pa.array([1, 2])}, "w", "no column named 'w' (columns: v)"),
    (lambda: {"v": pa.array([1, 2])}, 3, "no column 3 (it has 1: v)"),
])
def test_bad_parquet_is_a_clear_error(tmp_path, make, column, what):
    p = _parquet(tmp_path / "bad.parquet", **make())
    with pytest.raises(InputError) as ei:
        read_parquet(p, column)
    assert str(ei.value).startswith(str(p)) and what in str(ei.value), str(ei.value)


@needs_pyarrow
def test_not_a_parquet_file(tmp_path):
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="not a readable .parquet file"):
        read_parquet(p)


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_pyarrow(name, *a, **kw):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(InputError) as ei:
        read_parquet(tmp_path / "x.parquet")
    assert "needs pyarrow" in str(ei.value) and "pip install" in str(ei.value)


# -- through the CLI on a real cluster -----------------------------------------------------------
@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One dataset as csv (by name), csv (by index, no header), parquet and npy shards."""
    d = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(21)
    parts = [rng.integers(-1000, 1000, n) for n in (40_000, 25_000, 35_000)]
    parts[1][:3] = [I64_MIN, I64_MAX, I64_MAX]
    (d / "named").mkdir()
    (d / "plain").mkdir()
    for i, p in enumerate(parts):
        other = rng.integers(0, 9, len(p))
        body = "".join(f'{o},"{v}",x\r\n' for o, v in zip(other.tolist(), p.tolist()))
        (d / "named" / f"s{i}.csv").write_text("other,value,text\r\n" + body)
        (d / "plain" / f"s{i}.csv").write_text("".join(f"{o},{v}\n" for o, v in zip(other.tolist(), p.tolist())))
    return d, parts, np.concatenate(parts)


@pytest.fixture(scope="module")
def cluster_file(tmp_path_factory):
    from shardstats.cluster import launcher
    d = tmp_path_factory.mktemp("fmtcluster")
    info = launcher.start(3, "127.0.0.1", None, str(d / "logs"), "warning")
    try:
        info.save(d / "cluster.json")
        yield str(d / "cluster.json")
    finally:
        launcher.stop(info)


def _submit(cf: str, *args: str) -> dict:
    r = cli("submit", *args, "--cluster-file", cf, "--json", env={"CLUSTER_WORKERS": ""})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _median_ref(allv: np.ndarray) -> tuple[int, int]:
    s = np.sort(allv)
    return int(s[(len(s) - 1) // 2]), int(s[len(s) // 2])


def test_cli_column_by_name_and_by_index_matches_numpy(mixed, cluster_file):
    d, _, allv = mixed
    vals, counts = np.unique(allv, return_counts=True)
    want_mode = (int(vals[np.argmax(counts)]), int(counts.max()))
    for args in (("--input", str(d / "named"), "--column", "value"), ("--input", str(d / "plain"), "--column", "1")):
        doc = _submit(cluster_file, "mode", *args)
        assert (doc["result"]["value"], doc["result"]["count"]) == want_mode
        assert doc["stats"]["values"] == len(allv)
        doc = _submit(cluster_file, "median", *args, "--quantiles", "0.9")
        assert (doc["result"]["lower"], doc["result"]["upper"]) == _median_ref(allv)
        q = doc["result"]["quantiles"]["0.9"]
        s = np.sort(allv).astype(object)
        pos = 0.9 * (len(s) - 1)
        assert q["lower"] == s[int(pos)] and q["upper"] == s[min(int(pos) + 1, len(s) - 1)]


@needs_pyarrow
def test_cli_parquet_and_mixed_formats_match_numpy(mixed, cluster_file, tmp_path):
    d, parts, allv = mixed
    pq.write_table(pa.table({"n": pa.array(parts[0], pa.int64())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"n": pa.array(parts[1], pa.int64())}), tmp_path / "b.parquet")
    np.save(tmp_path / "c.npy", parts[2].astype(np.int32))
    doc = _submit(cluster_file, "median", "--input", str(tmp_path), "--column", "n")
    assert (doc["result"]["lower"], doc["result"]["upper"]) == _median_ref(allv)
    assert doc["stats"]["values"] == len(allv)


def test_cli_bad_column_is_exit_2_naming_the_file(mixed, cluster_file):
    d, _, _ = mixed
    r = cli("submit", "mode", "--input", str(d / "named"), "--column", "nope", "--cluster-file", cluster_file,
            env={"CLUSTER_WORKERS": ""})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ".csv:1: no column named 'nope'" in lines[0]
