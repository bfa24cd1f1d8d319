"""Column formats: one integer column of a ``.csv`` file or a ``.parquet`` file, read into int64.

CSV is read without a per-row Python loop: numpy finds the newlines and the
(unquoted) commas, cuts the chosen field out of every row into a new byte
buffer that keeps every row's newline, and hands that buffer to
``shardstats.worker.io.text.parse_text``.  Because each row keeps its newline, the parser's
"file:line: what: text" errors name the row of the CSV file itself.

Which column: ``column`` is ``None`` (the first), a header name, or a 0-based
index (an ``int`` or a string of digits).  Whether the first row is a header is
never guessed (a guess once dropped a first row of ``nan`` or ``x`` and gave a
wrong answer): it is a header when the user says so (``header=True``,
``--header yes``) or names the column (``--column NAME``, which implies a
header); otherwise it is data, and a non-integer first row is an error naming
``file:1`` with the hint to pass ``--header yes``.  With a header, a column given
as digits ("2020") is a header name if the header has it, else an index.  Quotes around a field
are dropped; a comma inside quotes does not split; a newline inside quotes is not
supported (it ends the row).  A non-blank row whose chosen field is empty is an
error rather than a silently dropped value.

Parquet needs pyarrow (the optional extra ``parquet``); only the one column is
read.  Without pyarrow the error is one line naming the file and the fix.
"""
from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from shardstats.errors import InputError
from shardstats.worker.io.text import line_blocks, parse_text

_COMMA, _QUOTE, _NL = 44, 34, 10
_SPACE_BYTES = np.array([32, 9, 13, 10, _QUOTE], dtype=np.uint8)   # bytes that do not make a field non-empty
INT64_MAX = 2 ** 63 - 1

Column = str | int | None


# -- CSV -------------------------------------------------------------------------------------
def _split_row(line: bytes) -> list[bytes]:
    """One row's fields (the header row only: a plain Python split is fine for one line)."""
    fields, cur, quoted = [], bytearray(), False
    for ch in line:
        if ch == _QUOTE:
            quoted = not quoted
        elif ch == _COMMA and not quoted:
            fields.append(bytes(cur))
            cur = bytearray()
        else:
            cur.append(ch)
    fields.append(bytes(cur))
    return [f.strip() for f in fields]


def _choose_column(first: bytes, column: Column, name: str, header: bool | None = None) -> tuple[int, bool]:
    """(0-based field index, whether the first row is a header) from the first row and the user's choice."""
    fields = _split_row(first.rstrip(b"\r\n"))
    named = isinstance(column, str) and not column.strip().isdigit()
    if header is None:
        header = named
    if named and not header:
        raise InputError(f"{name}: --column {column!r} is a name, but --header no says the file has no header row")
    if header and isinstance(column, str):
        want = column.strip().encode()
        if want in fields:
            return fields.index(want), True
        if named:
            raise InputError(f"{name}:1: no column named {column!r} in the header (it has {len(fields)} columns)")
    idx = 0 if column is None else int(column)
    if idx < 0:
        raise InputError(f"{name}: column index {idx} is negative (indexes start at 0)")
    if header and idx >= len(fields):
        raise InputError(f"{name}:1: the header has no column {idx} (it has {len(fields)})")
    return idx, header


def _extract_block(block: np.ndarray, idx: int, skip_first_row: bool, name: str, line0: int) -> np.ndarray:
    """The bytes of field ``idx`` of every row of ``block`` (whole rows), each followed by the row's newline."""
    n = len(block)
    isnl = block == _NL
    iscomma = block == _COMMA
    if (block == _QUOTE).any():                 # commas inside quotes do not split
        inside = np.bitwise_xor.accumulate((block == _QUOTE).view(np.uint8)).astype(bool)
        iscomma &= ~inside
    nl = np.flatnonzero(isnl)
    row_start = np.concatenate(([0], nl + 1))
    row_end = np.append(nl, n)                  # exclusive, the newline itself not included
    if row_start[-1] == n:                      # text ends with a newline: no final empty row
        row_start, row_end = row_start[:-1], row_end[:-1]
    commas = np.flatnonzero(iscomma)
    first = np.searchsorted(commas, row_start)              # index of the row's first comma in ``commas``
    count = np.searchsorted(commas, row_end) - first        # commas in the row
    has_left = count >= idx if idx else np.ones(len(first), bool)
    fs = row_start.copy()
    if idx:
        left = np.minimum(first + idx - 1, max(len(commas) - 1, 0))
        fs = np.where(has_left, commas[left] + 1 if len(commas) else row_start, row_end)
    has_right = count > idx
    right = np.minimum(first + idx, max(len(commas) - 1, 0))
    fe = np.where(has_right, commas[right] if len(commas) else row_end, row_end)
    fe = np.maximum(fe, fs)
    if skip_first_row and len(fs):
        fe[0] = fs[0]
    # A non-blank row whose field is blank: a missing value, or too few fields.  Rows are never empty
    # ranges of the padded array (each holds at least its newline or one byte), so reduceat sums them.
    solid = np.append(~np.isin(block, _SPACE_BYTES), False).astype(np.int32)
    row_solid = np.add.reduceat(solid, row_start) if len(row_start) else np.zeros(0, np.int32)
    pairs = np.column_stack((fs, fe)).ravel()
    field_solid = np.add.reduceat(solid, pairs)[::2] if len(pairs) else np.zeros(0, np.int32)
    field_solid[fe == fs] = 0
    if skip_first_row and len(row_solid):
        row_solid[0] = 0
    bad = np.flatnonzero((row_solid > 0) & (field_solid == 0))
    if len(bad):
        r = int(bad[0])
        what = "empty value in column" if count[r] >= idx else "row has no column"
        raise InputError(f"{name}:{line0 + r}: {what} {idx} (the row has {int(count[r]) + 1} fields)")
    # Mark [fs, fe) of every row and every newline, with one int8 difference array.
    # Non-empty ranges are disjoint and never touch (a newline lies between rows), so no index repeats.
    ne = fe > fs
    mark = np.zeros(n + 1, dtype=np.int8)
    mark[fs[ne]] = 1
    mark[fe[ne]] = -1
    keep = np.cumsum(mark[:-1], dtype=np.int8).astype(bool) | isnl
    out = block[keep]                           # a copy: ours to edit
    out[out == _QUOTE] = 32
    return out


def parse_csv(raw: bytes, column: Column = None, name: str = "<csv>", header: bool | None = None) -> np.ndarray:
    """The integers of one column of CSV text (see the module docstring for the rules)."""
    if raw.startswith(b"\xef\xbb\xbf"):        # a UTF-8 byte order mark (spreadsheets write one)
        raw = b"   " + raw[3:]
    if not raw.strip():
        return np.zeros(0, dtype=np.int64)
    end1 = raw.find(b"\n")
    idx, header = _choose_column(raw[: end1 if end1 >= 0 else len(raw)], column, name, header)
    pieces = [_extract_block(block, idx, header and line0 == 1, name, line0) for block, line0 in line_blocks(raw)]
    try:
        return parse_text(np.concatenate(pieces).tobytes(), name)
    except InputError as exc:
        if not header and str(exc).startswith(f"{name}:1: "):
            raise InputError(f"{exc}; if row 1 is a header, pass --header yes or --column NAME") from None
        raise


def read_csv(path: Path, column: Column = None, header: bool | None = None) -> np.ndarray:
    from shardstats.worker.io.shards import read_shard
    return read_shard(path, column, header=header)


# -- Parquet --------------------------------------------------------------------------------
def read_parquet(source: Path | BinaryIO, column: Column = None, name: str | None = None,
                 store_error: Callable[[BaseException], bool] = lambda exc: False) -> np.ndarray:
    """One integer column of a parquet file, row group by row group into one int64 array.

    ``source`` is a path or an open file (an object in a store, read by ranges: only the footer and the
    column's chunks travel).  ``store_error`` tells the store's own errors, which the caller explains
    (a changed object, a store that does not answer) rather than calling the file unreadable.
    """
    name = name or str(source)
    if isinstance(source, (str, Path)):      # a local file: opened (and checked) by worker/io/source.py
        try:
            import pyarrow  # noqa: F401 - checked before the file is opened, so the message says what to install
        except ImportError:
            raise InputError(f"{name}: reading .parquet needs pyarrow on the worker "
                             f"(pip install 'shardstats[parquet]')") from None
        from shardstats.worker.io.shards import read_shard
        return read_shard(source, column)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{name}: reading .parquet needs pyarrow on the worker "
                         f"(pip install 'shardstats[parquet]')") from None
    try:
        pf = pq.ParquetFile(source)
        names = pf.schema_arrow.names
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except (OSError, pa.ArrowException) as exc:
        if store_error(exc):
            raise
        raise InputError(f"{name}: not a readable .parquet file ({str(exc).splitlines()[0][:120]})") from None
    if not names:
        raise InputError(f"{name}: the parquet file has no columns")
    if column is None:
        col = names[0]
    elif isinstance(column, str) and column in names:
        col = column
    elif isinstance(column, int) or column.strip().isdigit():
        i = int(column)
        if i >= len(names):
            raise InputError(f"{name}: no column {i} (it has {len(names)}: {', '.join(names[:10])})")
        col = names[i]
    else:
        raise InputError(f"{name}: no column named {column!r} (columns: {', '.join(names[:10])})")
    kind = pf.schema_arrow.field(col).type
    if not pa.types.is_integer(kind):
        raise InputError(f"{name}: column {col!r} holds {kind} values, expected an integer type")
    out = np.empty(pf.metadata.num_rows, dtype=np.int64)
    row = 0
    for g in range(pf.num_row_groups):
        try:
            arr = pf.read_row_group(g, columns=[col]).column(col)
        except (OSError, pa.ArrowException) as exc:
            if store_error(exc):
                raise
            raise InputError(f"{name}: cannot read column {col!r} ({str(exc).splitlines()[0][:120]})") from None
        if arr.null_count:
            at = row + int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
            raise InputError(f"{name}: row {at} of column {col!r} is null")
        a = np.asarray(arr.to_numpy())
        if a.dtype.kind == "u" and a.dtype.itemsize == 8 and len(a) and a.max() > INT64_MAX:
            bad = int(np.argmax(a > INT64_MAX))
            raise InputError(f"{name}: row {row + bad} of column {col!r} is beyond the int64 range")
        out[row:row + len(a)] = a
        row += len(a)
    return out[:row]
