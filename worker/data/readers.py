"""Shard files into Arrow tables: ``.csv``/``.tsv`` (a header row), ``.parquet``, ``.jsonl``/``.ndjson``, and text documents.

Every file is opened through ``worker.io.source.opened`` (inside the data root, a
regular file, the version the job listed; an ``s3://`` object by ranged GETs on its
listed ETag), so the rules of the int64 readers hold here too, and a job reads objects
as it reads files: whole, or a batch (Parquet) or a block of lines at a time beyond memory.
A table's columns keep their types (strings, int64, float64, bool, timestamps, nulls);
``columns`` reads only what the job needs (Parquet skips the rest on disk, and the
rest of an object is never fetched), and a file that lacks one is refused naming the
file and the columns it has.

Text documents become rows of ``(doc, line, text)``: a document is a file (its path),
or, with ``text_column``/``id_column``, a row of a table. Bad input is one line naming
the file and the line or byte offset: invalid UTF-8, a ragged CSV row, a line longer
than ``MAX_LINE_BYTES`` (16 MiB: a word count's lines are text, not blobs).
"""
from __future__ import annotations

import io
from pathlib import Path

from shardstats.errors import InputError
from shardstats.worker.io.listing import ShardRef, is_object_url
from shardstats.worker.io.source import opened, read_exactly

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".ndjson")
MAX_LINE_BYTES = 16 << 20
TEXT_BLOCK = 64 << 10    # bytes of whole lines a row holds when a reader asks for blocks (``lines=False``)
CSV_BLOCK = MAX_LINE_BYTES + (1 << 20)       # pyarrow's CSV block: a row must fit in one


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _utf8_error(data: bytes, name: str) -> InputError | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InputError(f"{name}:{_line_of(data, exc.start)}: invalid UTF-8 at byte offset {exc.start:,}")
    return None


def _long_line(data: bytes, name: str) -> InputError | None:
    """The first line longer than MAX_LINE_BYTES, found without splitting (numpy over newline positions)."""
    import numpy as np
    if len(data) <= MAX_LINE_BYTES:
        return None
    nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    bounds = np.concatenate(([-1], nl, [len(data)]))
    gaps = np.diff(bounds) - 1
    over = np.flatnonzero(gaps > MAX_LINE_BYTES)
    if not len(over):
        return None
    i = int(over[0])
    return InputError(f"{name}:{i + 1}: a line of {int(gaps[i]):,} bytes, over the limit of {MAX_LINE_BYTES:,} "
                      f"bytes per line (16 MiB)")


def read_table(ref: ShardRef, real_path: str, columns: list[str] | None, budget: int | None = None, keep=None,
               lacking: dict | None = None):
    """One table shard, only ``columns`` (all when None), in the file's own types.

    ``keep(table)``: the rows to keep of each piece read (a key slice of a job taken in passes); a Parquet
    file is then decoded in batches, so the worker holds one batch and the kept rows, not the file.

    ``lacking``: where a file without some of ``columns`` is read without them (``lacking["columns"]``, with the
    file's own in ``lacking["has"]``) instead of refused -- but those in ``lacking["required"]`` (a job's keys):
    a folder whose files gained a column over time, read as DuckDB's ``union_by_name`` reads it (the missing
    values NULL, ``worker.jobs.load_table``)."""
    import pyarrow as pa
    name = ref.path
    suffix = Path(name).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"{name}: unsupported file type {suffix or '(none)'!r} for a table "
                         f"(expected .csv, .tsv, .parquet, .jsonl or .ndjson)")
    if keep is not None and suffix == ".parquet":
        return _parquet_kept(ref, real_path, columns, keep, lacking)
    if keep is not None:
        return _text_kept(ref, real_path, columns, keep, suffix, lacking)
    if suffix == ".parquet":
        return _parquet_opened(ref, real_path, columns, budget, lacking)
    with opened(ref, real_path, budget) as (f, size):
        data = read_exactly(f, size, name)
    if size == 0:
        return empty_table()
    return _text_table(data, name, suffix, columns, lacking)


def empty_table():
    """An empty file's table: no rows and no columns, which every column of the job's other files fills with
    nulls (``worker.jobs.load_table``).  An hour with no events leaves a 0-byte JSON-lines shard; DuckDB, Polars
    and Spark read it (and a 0-byte CSV) as zero rows, so a job over it must not fail."""
    import pyarrow as pa
    return pa.table({})


def _text_table(data: bytes, name: str, suffix: str, columns: list[str] | None, lacking: dict | None = None):
    """A CSV/TSV or JSON-lines file's bytes (or a block of its lines) as a table."""
    # Checked here, before pyarrow: its CSV and JSON readers let some invalid UTF-8 through (a JSON string
    # value, a CSV key column), which would fail later inside a worker instead of naming file and line.
    bad = _utf8_error(data, name) or _long_line(data, name)
    if bad:
        raise bad
    if suffix in (".csv", ".tsv"):
        return _csv(data, name, "\t" if suffix == ".tsv" else ",", columns, lacking)
    return _jsonl(data, name, columns, lacking)


PARQUET_BATCH = 1 << 16       # rows decoded at a time when a Parquet file is read for a slice of its rows
PARQUET_BUFFER = 1 << 20      # bytes of a column chunk read at a time then


def _parquet_kept(ref: ShardRef, real_path: str, columns: list[str] | None, keep, lacking: dict | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq
    name = ref.path
    with opened(ref, real_path) as (f, _):
        try:
            # pyarrow pre-buffers (pre_buffer=True, its default) every column chunk of the row groups a reader
            # iterates: the whole file in memory, outside its pool (a 240 MB file: +250 MB resident), where
            # this reader is meant to hold one batch; unbuffered, it reads a row group's pages 1 MiB at a time
            # (from an s3:// object, a ranged GET each: only the columns read travel)
            pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=PARQUET_BUFFER)
            columns = _check_columns(pf.schema_arrow.names, columns, name, lacking)
            text = _text_columns(pf, columns)
            if text:
                pf = pq.ParquetFile(f, read_dictionary=text, pre_buffer=False, buffer_size=PARQUET_BUFFER,
                                    metadata=pf.metadata)
            batches = pf.iter_batches(PARQUET_BATCH, columns=columns)
            schema = pf.schema_arrow if columns is None else pa.schema([pf.schema_arrow.field(c) for c in columns])
            if text:
                schema = pa.schema([fl.with_type(pa.dictionary(pa.int32(), fl.type)) if fl.name in text else fl
                                    for fl in schema])
        except (pa.ArrowInvalid, OSError) as exc:
            raise _parquet_error(name, exc) from None
        kept = []
        while True:     # only the file's decoding is the file's fault: what ``keep`` raises is not (a bug, a spill)
            try:
                b = next(batches, None)
            except (pa.ArrowInvalid, OSError) as exc:
                raise _parquet_error(name, exc) from None
            if b is None:
                break
            kept.append(keep(pa.Table.from_batches([b])))
    kept = [t for t in kept if t.num_rows]
    if not kept:
        return schema.empty_table()
    return pa.concat_tables(kept, promote_options="permissive") if len(kept) > 1 else kept[0]


def _parquet_opened(ref: ShardRef, real_path: str, columns: list[str] | None, budget: int | None,
                    lacking: dict | None = None):
    """A Parquet file or ``s3://`` object read whole into memory, fetching only its footer and the chunks of
    ``columns`` (pyarrow coalesces them: from a store, into few ranged GETs). A local file was read whole into
    bytes first: db-benchmark's q1 at 1e8 rows (2 of 9 columns) then copied 230 MB a worker to decode 12 MB of
    it, 3.2 s of the job's 3.6."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    name = ref.path
    with opened(ref, real_path, budget) as (f, _):
        try:
            pf = pq.ParquetFile(f)
            columns = _check_columns(pf.schema_arrow.names, columns, name, lacking)
            text = _text_columns(pf, columns)
            if text:
                pf = pq.ParquetFile(f, read_dictionary=text, metadata=pf.metadata)
            return pf.read(columns=columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _parquet_error(name, exc) from None


def _text_columns(pf, columns: list[str] | None) -> list[str]:
    """The text columns to read as Arrow dictionaries: Parquet stores them dictionary-encoded already, so this
    skips expanding them, and DuckDB groups by a dictionary 3x faster (1M rows by 100 keys: 43 -> 13 ms).  The
    engine holds them so until a shuffle (worker.engine.exchange sends plain columns)."""
    import pyarrow as pa
    return [c.name for c in pf.schema_arrow if (pa.types.is_string(c.type) or pa.types.is_large_string(c.type))
            and (columns is None or c.name in columns) and _dictionary_stored(pf.metadata, c.name)]


def _parquet_error(name: str, exc: BaseException):
    """A Parquet reader's failure as one line: the store's (an object changed, refused or unreachable: said as
    the int64 ops say it) or the file's own."""
    if is_object_url(name):
        from shardstats.worker.io.objects import explain, is_store_error
        if is_store_error(exc):
            return explain(exc, name, on_worker=True)
    return InputError(f"{name}: not a readable Parquet file ({_short(exc)})")


STREAM_BLOCK = 8 << 20      # bytes of whole lines parsed at a time when a text file is read for a slice of its rows


def line_blocks(ref: ShardRef, real_path: str):
    """The file as (bytes of whole lines, the number of its first line, its first byte's offset), about
    ``STREAM_BLOCK`` at a time: a worker reading a CSV, JSON-lines or text file beyond its memory holds one
    block, not the file."""
    name = ref.path
    with opened(ref, real_path) as (f, size):
        line, rest, read = 1, b"", 0
        while True:
            chunk = f.read(STREAM_BLOCK)
            read += len(chunk)
            if not chunk:
                if rest:
                    yield rest, line, read - len(rest)
                break
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            if not cut:                  # no newline yet: the line goes on into the next chunk
                if len(data) > MAX_LINE_BYTES:
                    raise InputError(f"{name}:{line}: a line of over {MAX_LINE_BYTES:,} bytes, over the limit of "
                                     f"{MAX_LINE_BYTES:,} bytes per line (16 MiB)")
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            del data
            yield block, line, read - len(rest) - len(block)
            line += block.count(b"\n")
        if read != size:
            raise InputError(f"{name}: changed since the job listed it (read {read:,} of {size:,} bytes)")


def shifted(exc: InputError, name: str, lines: int, offset: int) -> InputError:
    """An error naming ``name:LINE`` (and a byte offset) within a block, as the file's: ``lines`` lines and
    ``offset`` bytes before the block."""
    import re
    text = str(exc)
    m = re.match(rf"{re.escape(name)}:(\d+)(.*)", text, re.S)
    if not m or not (lines or offset):
        return exc
    rest = re.sub(r"at byte offset ([\d,]+)", lambda b: f"at byte offset {int(b.group(1).replace(',', '')) + offset:,}",
                  m.group(2))
    return InputError(f"{name}:{int(m.group(1)) + lines}{rest}")


def _text_kept(ref: ShardRef, real_path: str, columns: list[str] | None, keep, suffix: str,
               lacking: dict | None = None):
    """A CSV/TSV or JSON-lines file read a block of lines at a time, each block parsed (with the header row
    before it) and given to ``keep``; the kept rows, in the types every block agrees on."""
    import pyarrow as pa
    name = ref.path
    header, kept = None, []
    for block, first, start in line_blocks(ref, real_path):
        if suffix in (".csv", ".tsv"):
            if header is None:
                header = block[:block.find(b"\n") + 1] if b"\n" in block else block
                data, before, skip = block, 0, 0
            else:      # the header's line and bytes stand before the block's
                data, before, skip = header + block, first - 2, start - len(header)
        else:
            data, before, skip = block, first - 1, start
        try:
            t = _text_table(data, name, suffix, columns, lacking)
        except InputError as exc:
            raise shifted(exc, name, before, skip) from None
        del data
        kept.append(keep(t))
        del t
    if not kept:
        return empty_table()
    try:
        return pa.concat_tables(kept, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"{name}: its columns change type within the file (read in blocks of "
                         f"{STREAM_BLOCK >> 20} MiB beyond memory, each typed by its own rows: {_short(exc)})") \
            from None


def _dictionary_stored(meta, name: str) -> bool:
    """Whether a Parquet column is stored mostly as dictionary indices (under 4 bytes a value), so reading it
    as an Arrow dictionary costs nothing extra; a high-cardinality column that fell back to plain pages
    would have to be hashed into one (db-benchmark's id3: a 10-worker load 0.23 -> 1.38 s)."""
    try:
        j = meta.schema.names.index(name)
    except ValueError:
        return False
    rows = meta.num_rows or 1
    size = sum(meta.row_group(i).column(j).total_compressed_size for i in range(meta.num_row_groups))
    return size / rows < 4


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _check_columns(have: list[str], want: list[str] | None, name: str, lacking: dict | None = None):
    """The columns of ``want`` to read from a file that has ``have``: all of them, else refused naming the file --
    or, with ``lacking``, the ones it has (what it lacks and has noted there, for the job to decide)."""
    if not want:
        return want
    missing = [c for c in want if c not in have]
    if missing and (lacking is None or any(c in lacking.get("required", ()) for c in missing)):
        missing = [c for c in missing if lacking is None or c in lacking.get("required", ())]
        raise InputError(f"{name}: no column {missing[0]!r} (it has: {', '.join(have) or 'none'})")
    if missing:
        lacking["columns"] = missing
        lacking["has"] = list(have)
        return [c for c in want if c in have]
    return want


def _csv(data: bytes, name: str, sep: str, columns: list[str] | None, lacking: dict | None = None):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    header = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8-sig")     # a BOM is no part of the first name
    have = next(__import__("csv").reader([header], delimiter=sep)) if header else []
    columns = _check_columns(have, columns, name, lacking)
    if columns == [] and have:        # none of them (pyarrow reads every column for no column): the rows alone
        return _csv(data, name, sep, have[:1]).select([])
    try:
        return pcsv.read_csv(pa.BufferReader(data), read_options=pcsv.ReadOptions(block_size=CSV_BLOCK),
                             parse_options=pcsv.ParseOptions(delimiter=sep),
                             convert_options=pcsv.ConvertOptions(include_columns=columns, strings_can_be_null=True,
                                                                 timestamp_parsers=["%Y-%m-%dT%H:%M:%S",
                                                                                    pcsv.ISO8601]))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(_csv_error(data, name, sep, exc)) from None


def _csv_error(data: bytes, name: str, sep: str, exc: Exception) -> str:
    """pyarrow's message with the file and line found again: a ragged row, or a value of another type."""
    import csv
    text = str(exc)
    if "Expected" in text and "columns" in text:
        rows = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=sep)
        width = None
        for row in rows:
            if width is None:
                width = len(row)
            elif row and len(row) != width:
                return f"{name}:{rows.line_num}: a row of {len(row)} fields where the header has {width}"
    return f"{name}: {_short(exc)}"


def _jsonl(data: bytes, name: str, columns: list[str] | None, lacking: dict | None = None):
    import pyarrow as pa
    import pyarrow.json as pj
    try:
        t = pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=CSV_BLOCK))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        msg = _short(exc)
        import json
        for i, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    if not isinstance(json.loads(line), dict):
                        return _raise(f"{name}:{i}: a JSON line that is not an object")
                except ValueError as jexc:
                    raise InputError(f"{name}:{i}: not valid JSON ({jexc})") from None
        raise InputError(f"{name}: {msg}") from None
    if t.num_columns == 0:          # blank lines only: no record, as an empty file
        return empty_table()
    columns = _check_columns(t.column_names, columns, name, lacking)
    t = t.select(columns) if columns is not None else t
    if any(pa.types.is_timestamp(f.type) for f in t.schema):
        # pyarrow's JSON reader types whole-second text as timestamp[s] and drops what it said: a date became
        # a midnight, "...Z" a time of no zone. Read those columns again as the text they are, and type them
        # as the CSV reader and DuckDB do
        texts = pa.schema([f.with_type(pa.string()) if pa.types.is_timestamp(f.type) else f
                           for f in pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(
                               block_size=CSV_BLOCK)).schema])
        t = pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=CSV_BLOCK),
                         parse_options=pj.ParseOptions(explicit_schema=texts))
        t = t.select(columns) if columns is not None else t
    return _times_typed(t)


_DATE_LIKE = r"^\d{4}-\d{2}-\d{2}"


def _times_typed(t):
    """A JSON table's text columns of ISO dates as ``date32``, of ISO date-times as timestamps (``tz=UTC`` when
    each names its zone offset; the CSV reader's types, and DuckDB's DATE, TIMESTAMP and TIMESTAMPTZ); other
    text stays text. Only a column whose first value starts like a date is looked at further (vectorised)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    for i, f in enumerate(t.schema):
        if not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)):
            continue
        col = t.column(i)
        first = col.drop_null()
        if not len(first) or not pc.match_substring_regex(first[:1], _DATE_LIKE)[0].as_py():
            continue
        if pc.all(pc.match_substring_regex(first, _DATE_LIKE + "$")).as_py():
            targets = [pa.date32()]
        else:
            targets = [pa.timestamp("us"), pa.timestamp("us", tz="UTC")]
        for target in targets:
            try:
                t = t.set_column(i, f.name, col.cast(target))
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
    return t


def _raise(message: str):
    raise InputError(message)


def read_documents(ref: ShardRef, real_path: str, text_column: str | None = None, id_column: str | None = None,
                   budget: int | None = None, keep=None, blocks: bool = False):
    """A shard as text rows ``(doc, text)``: a plain file is one document (its lines), a table's rows are
    documents when ``text_column`` names their text (``id_column`` their ids, else ``file#row``).

    ``blocks``: a plain file's row is a block of about ``TEXT_BLOCK`` bytes of whole lines, newlines kept (its
    ``line`` the block's first), for a tokenizer whose tokens never hold a newline: the word count's default
    pattern took 20-25% less CPU over 64 KiB blocks than over lines (a 20 MB share: 0.27 against 0.35 s).

    ``keep(table)``: the rows to keep of each piece (beyond memory): the file is then read a batch or a block of
    lines at a time, rows and lines numbered as in the whole file."""
    import pyarrow as pa
    name = ref.path
    suffix = Path(name).suffix.lower()
    if text_column is not None and suffix in TABLE_SUFFIXES:
        cols = [text_column] + ([id_column] if id_column else [])
        if keep is None:
            return _table_documents(read_table(ref, real_path, cols, budget), name, text_column, id_column, 0)
        seen = [0]

        def piece(t):
            out = _table_documents(t, name, text_column, id_column, seen[0])
            seen[0] += t.num_rows
            return keep(out)
        return read_table(ref, real_path, cols, budget, piece)
    if suffix == ".parquet":
        raise InputError(f"{name}: a Parquet file is a table; name its text column with --text COL")
    if keep is None:
        with opened(ref, real_path, budget) as (f, size):
            data = read_exactly(f, size, name)
        return _lines(data, name, 1, 0, blocks)
    kept = [keep(_lines(block, name, first, start, blocks)) for block, first, start in line_blocks(ref, real_path)]
    if len({k.schema for k in kept}) > 1:        # a one-line block's doc is plain text, the others' a dictionary
        kept = [k.set_column(0, "doc", k.column("doc").cast(pa.large_string())) for k in kept]
    return pa.concat_tables(kept) if kept else _lines(b"", name, 1, 0, blocks)


def _table_documents(t, name: str, text_column: str, id_column: str | None, first_row: int):
    """A table's rows as documents (doc, line, text); rows numbered from ``first_row``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    text = t.column(text_column)
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        text = text.cast(pa.large_string())
    rows = np.arange(first_row, first_row + t.num_rows, dtype=np.int64)
    if id_column:
        doc = t.column(id_column).cast(pa.large_string())
    else:
        # file#row for each row, vectorised: no Python string per row
        doc = pc.binary_join_element_wise(pa.scalar(f"{name}#", pa.large_string()), pa.array(rows).cast(pa.large_string()),
                                          pa.scalar("", pa.large_string()))
    return pa.table({"doc": doc, "line": pa.array(rows + 1), "text": text.cast(pa.large_string())})


def _lines(data: bytes, name: str, first: int, start: int, blocks: bool = False):
    """A text file's lines (or a block of them: the first is line ``first``, at byte ``start``) as (doc, line,
    text) rows; with ``blocks``, a row is about ``TEXT_BLOCK`` bytes of whole lines, newlines kept, and its
    ``line`` is its first line's number."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    # The lines straight from the file's bytes: offsets at the newlines (numpy), Arrow's own UTF-8 check, and
    # no Python string in between (a 20 MB file: 0.59 -> 0.1 s CPU; pa.array of one str took 0.2 s alone).
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10) + 1
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    widths = np.diff(offsets) - 1
    if len(widths) and int(widths.max()) > MAX_LINE_BYTES:
        i = int(np.argmax(widths > MAX_LINE_BYTES))
        raise InputError(f"{name}:{first + i}: a line of {int(widths[i]):,} bytes, over the limit of "
                         f"{MAX_LINE_BYTES:,} bytes per line (16 MiB)")
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        lines.validate(full=True)
    except pa.ArrowInvalid:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{name}:{first - 1 + _line_of(data, exc.start)}: invalid UTF-8 at byte offset "
                             f"{start + exc.start:,}") from None
        raise
    if blocks:
        # Whole lines a block: the first line of each block, at most TEXT_BLOCK bytes after the last one's start
        # (a longer line is a block of its own). The lines were checked whole, so their joins are valid UTF-8.
        starts = np.unique(np.searchsorted(offsets[:-1], np.arange(0, len(data), TEXT_BLOCK), side="left"))
        text = pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(np.append(offsets[starts], len(data))),
                                                pa.py_buffer(data))
        number = starts.astype(np.int64) + first
    else:
        text = pc.utf8_rtrim(lines, characters="\n")        # a newline ends its line; it is no part of it
        number = np.arange(first, first + len(text), dtype=np.int64)
    n = len(text)
    doc = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([name], pa.large_string()))
    return pa.table({"doc": doc.cast(pa.large_string()) if n < 2 else doc, "line": pa.array(number), "text": text})
