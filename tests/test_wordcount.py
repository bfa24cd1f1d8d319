"""wordcount and index against collections.Counter and a dict of sets over the same documents, and the part
files they write read back by DuckDB; the shuffle counter with and without the combiner."""
from __future__ import annotations

import re
from collections import Counter

import duckdb
import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import InputError, UsageError
from shardstats.testing import in_process_cluster
from tests.keyed_ref import word_counts

DOCS = {
    "a.txt": "The quick brown fox\njumps over the lazy dog.\n\nThe END_of it 42 times\r\n",
    "b.md": "Ünïcödé wörds: naïve café, ÉCOLE école Straße STRASSE\nпривет Привет мир 世界 世界\n",
    "c.rst": "",
    "d.txt": "   \n\t\n",
    "e.txt": "dog dog dog DOG fox the the a_b a-b x² ½ 3.14 \u0130stanbul ΣΊΣΥΦΟΣ\n" * 50,
    "f.py": "def f(x):\n    return x  # the fox\n",
}


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for name, text in DOCS.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


def _top(c, n):
    return [[w, k] for w, k in sorted(c.items(), key=lambda wk: (-wk[1], wk[0]))[:n]]


@pytest.mark.parametrize("workers", [1, 3, 8])
async def test_wordcount_equals_counter(tmp_path, docs, workers):
    want = word_counts(DOCS.values())
    async with in_process_cluster(workers, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", str(docs), {"top": 1000}))
    r = rep.result
    assert r["tokens"] == sum(want.values()) and r["distinct"] == len(want)
    assert r["top"] == _top(want, 1000)
    assert sum(w["map_pairs"] for w in rep.workers) == sum(want.values())


async def test_wordcount_out_parts_and_the_combiner_counter(tmp_path, docs):
    want = word_counts(DOCS.values())
    async with in_process_cluster(4, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", str(docs), {"out": str(tmp_path / "wc")}))
        raw = await run_job(c.addrs, c.token, job_spec("wordcount", str(docs), {"combine": False, "top": 3}))
        with pytest.raises(InputError, match="already holds part-00000.parquet"):
            await run_job(c.addrs, c.token, job_spec("wordcount", str(docs), {"out": str(tmp_path / "wc")}))
    parts = sorted(p.name for p in (tmp_path / "wc").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(4)]
    got = dict(duckdb.sql(f"SELECT word, count FROM read_parquet('{tmp_path}/wc/*.parquet')").fetchall())
    assert got == dict(want)
    combined = sum(w["combined_pairs"] for w in rep.workers)
    assert sum(w["shuffled_pairs"] for w in rep.workers) <= combined < sum(want.values())
    assert sum(w["combined_pairs"] for w in raw.workers) == sum(want.values())   # every token travels
    assert raw.result["top"] == _top(want, 3)


async def test_text_column_of_a_table_and_the_inverted_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [("d1", "Hello world"), ("d2", "hello THERE world"), ("d3", None), ("d1", "again hello")]
    pq.write_table(pa.table({"id": [r[0] for r in rows], "body": [r[1] for r in rows]}), tmp_path / "t.parquet")
    want: dict[str, set] = {}
    for doc, text in rows:
        for w in re.findall(r"\w+", (text or "").lower()):
            want.setdefault(w, set()).add(doc)
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("index", str(tmp_path / "t.parquet"),
                                                       {"text": "body", "id": "id", "limit": 0}))
        assert rep.result["data"] == [[w, sorted(d)] for w, d in sorted(want.items())]
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", str(tmp_path / "t.parquet"), {"text": "body"}))
        assert rep.result["top"][0] == ["hello", 3]
        with pytest.raises(InputError, match=r"t\.parquet: no column 'nope' \(it has: id, body\)"):
            await run_job(c.addrs, c.token, job_spec("wordcount", str(tmp_path / "t.parquet"), {"text": "nope"}))
        with pytest.raises(UsageError, match="--pattern"):
            await run_job(c.addrs, c.token, job_spec("wordcount", str(tmp_path / "t.parquet"),
                                                     {"text": "body", "pattern": "(unclosed"}))


async def test_index_of_files_lists_each_document_once(tmp_path, docs):
    want: dict[str, set] = {}
    for name, text in DOCS.items():
        for w in re.findall(r"\w+", text.lower()):
            want.setdefault(w, set()).add(str(docs / name))
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("index", str(docs), {"out": str(tmp_path / "ix")}))
    got = {w: list(d) for w, d in duckdb.sql(f"SELECT word, docs FROM read_parquet('{tmp_path}/ix/*.parquet')")
           .fetchall()}
    assert got == {w: sorted(d) for w, d in want.items()}
    assert rep.result["postings"] == sum(len(d) for d in want.values())


async def test_bad_text_names_file_and_line(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "ok.txt").write_text("fine words\n")
    (d / "x.txt").write_bytes(b"line one\nline two \xc3\x28 broken\n")
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        with pytest.raises(InputError, match=r"x\.txt:2: invalid UTF-8 at byte offset 18"):
            await run_job(c.addrs, c.token, job_spec("wordcount", str(d)))
        (d / "x.txt").write_bytes(b"short\n" + b"y" * ((16 << 20) + 1) + b"\n")
        with pytest.raises(InputError, match=r"x\.txt:2: a line of 16,777,217 bytes, over the limit"):
            await run_job(c.addrs, c.token, job_spec("wordcount", str(d)))
        (d / "x.txt").unlink()
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", str(d)))
        assert rep.result["top"] == [["fine", 1], ["words", 1]]


def test_tokens_and_case_equal_python_on_every_assigned_code_point():
    """The tokenizer's word characters and lowercasing, checked one code point at a time against Python's
    ``re`` ``\\w`` and ``str.lower`` over every code point this Python's Unicode database assigns. (Code points
    it leaves unassigned, Cn, may be letters in the newer Unicode tables Polars carries: that is the only gap.)"""
    import unicodedata
    import polars as pl
    from shardstats.worker.engine.tokens import DEFAULT_PATTERN
    chars = [chr(c) for c in range(0x20, 0x30000) if not 0xD800 <= c <= 0xDFFF
             and unicodedata.category(chr(c)) != "Cn"]
    s = pl.Series(chars)
    word = s.str.contains(f"^{DEFAULT_PATTERN}$").to_list()
    wrong = [hex(ord(c)) for c, w in zip(chars, word) if w != bool(re.fullmatch(r"\w", c))]
    assert wrong == []
    lower = s.str.to_lowercase().to_list()
    assert [hex(ord(c)) for c, lo in zip(chars, lower) if c.lower() != lo] == []


def _edge_lines(n: int) -> str:
    """Lines whose tokens and case mapping meet the line ends: a final sigma before a newline and a capital
    after it, CRLF, a combining mark or a dotted İ opening a line, an apostrophe (case-ignorable) between Σ and
    the newline; lines of every length, so the reader's 64 KiB blocks are cut at every kind of line."""
    kinds = ["ΟΔΟΣ", "ΑΒΓ δέκα", "ΣΑΣ'", "\u0301ab c\u0301d", "İSTANBUL İ", "Straße STRASSE\r", "", "x² ½ 3.14 a_b",
             "привет ΜΕΣΟΣ", "word " * 7]
    return "\n".join(kinds[i % len(kinds)] + " w" * (i % 13) for i in range(n)) + "\nno newline at the end"


async def test_blocks_of_lines_count_as_lines(tmp_path):
    """The word count tokenizes blocks of whole lines (the reader's ``blocks``): over 300 KB of lines holding the
    case-mapping and token edge cases at every line end, the counts equal Counter's over the whole text; a
    user's pattern that could match a newline still reads lines (``[^,]+`` stops at a line's end), and so does
    the index (every word with its file)."""
    from shardstats.worker.data import readers
    from shardstats.worker.io.listing import ShardRef
    d = tmp_path / "edge"
    d.mkdir()
    texts = {"big.txt": _edge_lines(30_000), "small.txt": "ΟΔΟΣ\nΑΣ\r\n", "one.txt": "ΣΑΣ"}
    for name, text in texts.items():
        (d / name).write_bytes(text.encode())
    big = (d / "big.txt")
    t = readers.read_documents(ShardRef(path=str(big), size=big.stat().st_size), str(big), blocks=True)
    assert t.num_rows > 4 and "".join(t.column("text").to_pylist()) == texts["big.txt"]
    starts = [1] + [texts["big.txt"][:sum(map(len, t.column("text").to_pylist()[:i]))].count("\n") + 1
                    for i in range(1, t.num_rows)]
    assert t.column("line").to_pylist() == starts
    want = word_counts(texts.values())
    commas = Counter(w for text in texts.values() for line in text.split("\n") for w in re.findall(r"[^,]+", line))
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", str(d), {"top": 100_000}))
        assert rep.result["top"] == _top(want, 100_000)
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", str(d), {"top": 100_000, "pattern": "[^,]+",
                                                                             "lower": False}))
        assert rep.result["top"] == _top(commas, 100_000)
        rep = await run_job(c.addrs, c.token, job_spec("index", str(d), {"limit": 0}))
    docs_of: dict[str, set] = {}
    for name, text in texts.items():
        for w in re.findall(r"\w+", text.lower()):
            docs_of.setdefault(w, set()).add(str(d / name))
    assert rep.result["data"] == [[w, sorted(s)] for w, s in sorted(docs_of.items())]


def test_count_words_in_many_batches_equals_counter(monkeypatch):
    """Blocks are tokenized a batch of about ``BATCH_BYTES`` at a time and the batches' counts added: with
    batches of a few blocks, every word's count (and the tokens read) equal Counter's."""
    from shardstats.worker.data import readers
    from shardstats.worker.engine import tokens
    text = _edge_lines(20_000)
    monkeypatch.setattr(tokens, "BATCH_BYTES", 3 * readers.TEXT_BLOCK)
    table = readers._lines(text.encode(), "x.txt", 1, 0, blocks=True)
    assert tokens._batch_rows(table) < table.num_rows
    pairs, n = tokens.count_words(table)
    want = word_counts([text])
    assert n == sum(want.values()) and dict(zip(*pairs.to_pydict().values())) == dict(want)
