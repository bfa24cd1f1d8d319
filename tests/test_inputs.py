"""Shard readers: the vectorised text parser against Python's int(), and .npy of every integer dtype."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardstats.errors import InputError
from shardstats.worker.io.listing import list_shards
from shardstats.worker.io.text import parse_text
from shardstats.worker.io.shards import read_shard

I64 = st.integers(-(2 ** 63), 2 ** 63 - 1)


def _reference(text: bytes) -> list[int]:
    return [int(line) for line in text.decode().splitlines() if line.strip()]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(I64, st.sampled_from(["", " ", "\t", "  "]), st.sampled_from(["", " ", "\r"]),
                          st.sampled_from(["", "+"]), st.integers(0, 3), st.booleans()), max_size=60))
def test_parser_equals_int_per_line(rows):
    lines = []
    for v, pre, post, plus, zeros, blank_after in rows:
        sign = "-" if v < 0 else plus
        lines.append(f"{pre}{sign}{'0' * zeros}{abs(v)}{post}")
        if blank_after:
            lines.append(pre)
    text = "\n".join(lines).encode()
    assert parse_text(text).tolist() == _reference(text)


@pytest.mark.parametrize("text,line,what", [
    (b"1\n2\nabc\n", 3, "not an integer"),
    (b"1\n2 3\n", 2, "more than one value"),
    (b"1\r\n2\r\n1.5\r\n", 3, "not an integer"),
    (b"9223372036854775808\n", 1, "beyond the int64 range"),
    (b"\n\n-9223372036854775809\n", 3, "beyond the int64 range"),
    (b"18446744073709551616\n", 1, "beyond the int64 range"),
    (b"1\n-\n", 2, "not an integer"),
    (b"1\n+-2\n", 2, "not an integer"),
    (b"1\n2-\n", 2, "not an integer"),
    (b"0x10\n", 1, "not an integer"),
    ("1\n\u00e9\n".encode(), 2, "not an integer"),
])
def test_bad_text_names_file_and_line(text, line, what):
    with pytest.raises(InputError) as ei:
        parse_text(text, "shard.txt")
    msg = str(ei.value)
    assert msg.startswith(f"shard.txt:{line}: ") and what in msg and "\n" not in msg


def test_errors_in_late_blocks_count_lines_from_the_top(monkeypatch):
    import shardstats.worker.io.text as inputs
    monkeypatch.setattr(inputs, "_BLOCK", 64)
    text = b"".join(b"%d\n" % i for i in range(100)) + b"oops\n"
    with pytest.raises(InputError, match=r"^f:101: "):
        parse_text(text, "f")
    assert parse_text(text[:-5]).tolist() == list(range(100))


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", ">i4"])
def test_npy_of_any_integer_dtype(tmp_path, dtype):
    info = np.iinfo(np.dtype(dtype))
    a = np.array([info.min, 0, 1, min(info.max, 2 ** 63 - 1)], dtype=dtype)
    np.save(tmp_path / "a.npy", a)
    assert read_shard(tmp_path / "a.npy").tolist() == [int(x) for x in a]


@pytest.mark.parametrize("make,what", [
    (lambda p: np.save(p, np.array([1.5, 2.0])), "float64"),
    (lambda p: np.save(p, np.array(["a", "b"])), "<U1"),
    (lambda p: np.save(p, np.array([2 ** 63], dtype=np.uint64)), "beyond the int64 range"),
    (lambda p: p.write_bytes(b"\x93NUMPY garbage"), "not a readable .npy"),
    (lambda p: (np.save(p, np.arange(100)), p.write_bytes(p.read_bytes()[:-50])), "not a readable .npy"),
])
def test_bad_npy_is_a_clear_error(tmp_path, make, what):
    p = tmp_path / "bad.npy"
    make(p)
    with pytest.raises(InputError) as ei:
        read_shard(p)
    assert str(ei.value).startswith(str(p)) and what in str(ei.value)


def test_list_shards_directory_file_glob_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("1\n")
    (tmp_path / "b.npy").write_bytes(b"")
    (tmp_path / "notes.md").write_text("x")
    assert [p.rsplit("/", 1)[1] for p in list_shards(str(tmp_path))] == ["a.txt", "b.npy"]
    assert list_shards(str(tmp_path / "a.txt")) == [str(tmp_path / "a.txt")]
    assert len(list_shards(str(tmp_path / "*.txt"))) == 1
    (tmp_path / "empty").mkdir()
    for path, what in [(tmp_path / "missing", "no such file"), (tmp_path / "empty", "no shard files"),
                       (tmp_path / "*.csvx", "matches no files"), (tmp_path / "notes.md", "unsupported")]:
        with pytest.raises(InputError, match=what):
            list_shards(str(path))


def test_bookkeeping_files_beside_the_data_are_not_listed(tmp_path):
    """Names starting with ``_`` or ``.`` in a directory (``_SUCCESS``, a generator's ``_dbgen.json``,
    ``.DS_Store``) are not data, for tables and for text documents alike, as in Hadoop and Spark; a file
    named on its own is read whatever its name.  Before, a document directory's ``_dbgen.json`` was counted."""
    from shardstats.worker.io.objects import _wanted
    for name in ("a.npy", "_b.npy", ".c.npy", "_SUCCESS", "_dbgen.json", "doc.txt"):
        (tmp_path / name).write_text("1\n")
    names = lambda paths: [p.rsplit("/", 1)[1] for p in paths]      # noqa: E731
    assert names(list_shards(str(tmp_path))) == ["a.npy", "doc.txt"]
    assert names(list_shards(str(tmp_path), None)) == ["a.npy", "doc.txt"]           # documents: any type
    assert list_shards(str(tmp_path / "_b.npy")) == [str(tmp_path / "_b.npy")]
    assert [n for n in ("p/a.npy", "p/_b.npy", "p/.c.npy", "p/_SUCCESS", "p/doc.txt", "p/sub/")
            if _wanted(n, None)] == ["p/a.npy", "p/doc.txt"]                          # an s3:// prefix alike
