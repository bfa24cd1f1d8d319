"""References for the keyed ops: DuckDB over the same files, Counter over the same tokens, and a comparison of
result rows that is exact for integers and strings and within 1e-9 relative for floats."""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

WORD = re.compile(r"\w+")


def write(table: pa.Table, path: Path, fmt: str) -> Path:
    """One shard in ``fmt`` (csv, tsv, parquet, jsonl)."""
    path = path.with_suffix("." + fmt)
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt in ("csv", "tsv"):
        pcsv.write_csv(table, path, pcsv.WriteOptions(delimiter="," if fmt == "csv" else "\t",
                                                      quoting_style="needed"))
    elif fmt == "jsonl":
        import json
        with open(path, "w") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row) + "\n")
    return path


def duck_source(files: list[Path]) -> str:
    fmt = files[0].suffix
    names = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    if fmt == ".parquet":
        return f"read_parquet({names}, union_by_name=true)"
    if fmt == ".jsonl":
        return f"read_json_auto({names}, format='newline_delimited')"
    sep = "\t" if fmt == ".tsv" else ","
    return f"read_csv({names}, header=true, delim='{sep}', union_by_name=true)"


def duck(sql: str) -> tuple[list[str], list[tuple]]:
    con = duckdb.connect()
    r = con.sql(sql)
    return r.columns, r.fetchall()


def _same(a, b) -> bool:
    from decimal import Decimal
    if isinstance(a, Decimal):
        a = int(a)
    if isinstance(b, Decimal):
        b = int(b)
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, str) and hasattr(b, "isoformat"):      # answers carry times as ISO text (answer.plain)
        return a == b.isoformat()
    return a == b


def _key(row):
    return tuple((v is None, str(v)) for v in row)


def assert_rows_equal(got: list[list], want: list[tuple], nkeys: int, what: str = "") -> None:
    """Rows as multisets keyed by their first ``nkeys`` columns: same keys, and every value the same."""
    g = sorted((tuple(r) for r in got), key=lambda r: _key(r[:nkeys]))
    w = sorted((tuple(r) for r in want), key=lambda r: _key(r[:nkeys]))
    assert len(g) == len(w), f"{what}: {len(g)} rows, DuckDB has {len(w)}"
    for x, y in zip(g, w):
        assert all(_same(a, b) for a, b in zip(x, y)), f"{what}: row {x} != DuckDB's {y}"


def word_counts(texts: list[str]) -> Counter:
    c: Counter = Counter()
    for t in texts:
        c.update(WORD.findall(t.lower()))
    return c
