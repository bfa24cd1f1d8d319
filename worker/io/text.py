"""Reading ``.txt`` shards into int64 arrays: a library-speed fast path, and the validating parser behind it.

Two parsers, one grammar (one integer per line, optional sign, blank lines
ignored, surrounding spaces/tabs and CRLF tolerated, nothing beyond int64):

- ``parse_text_strict``, the validating parser, never calls ``int()`` per line.
  It classifies every byte with numpy, finds the tokens, checks the grammar and
  names the ``file:line`` of the first violation.  It runs at ~7 M lines/s.
- ``parse_text`` first hands the bytes to Polars' CSV reader (a strict, multi-
  threaded integer parser in Rust, 40-55 M lines/s here, the fastest of the
  library parsers measured: see ``scripts/bench_parse.py``).  Only when Polars
  refuses the text, or anything looks off (a null, a byte-order mark, a
  separator on the unterminated last line), does the validating parser re-scan
  it, either to name the bad line or to read what Polars is pickier about
  (``"1 "``, a blank line).  So the fast path never accepts what the validating
  parser refuses: Polars refuses floats, ``1e3``, ``0x10``, ``+-1``, two values
  on a line and anything beyond int64, and the guards cover its few leniencies
  (tests/test_text_parse.py checks that differentially with hypothesis).
"""
from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shardstats.errors import InputError

INT64_MAX = 2 ** 63 - 1
_BLOCK = 32 << 20            # parse text in blocks of about this many bytes, cut at a newline



def short_error(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def read_txt(path: Path) -> np.ndarray:
    from shardstats.worker.io.shards import read_shard
    return read_shard(path)


def read_bytes(path: Path) -> bytes:
    """A whole shard file, with its failures as one-line input errors naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({short_error(exc)})") from None


def line_blocks(raw: bytes) -> Iterator[tuple[np.ndarray, int]]:
    """``raw`` as uint8 views of about ``_BLOCK`` bytes cut after a newline, each with its first line's number.

    Block-wise work keeps the parser's temporaries at block size, not file size.
    """
    start, line0 = 0, 1
    while start < len(raw):
        end = min(len(raw), start + _BLOCK)
        if end < len(raw):
            nl = raw.rfind(b"\n", start, end)
            end = nl + 1 if nl >= start else (raw.find(b"\n", end) + 1 or len(raw))
        block = np.frombuffer(raw, dtype=np.uint8, count=end - start, offset=start)
        yield block, line0
        line0 += int(np.count_nonzero(block == 10))
        start = end


def parse_text(raw: bytes, name: str = "<text>") -> np.ndarray:
    """All integers of a text, one per line; errors name the 1-based line.  The fast path when it is sure."""
    fast = parse_text_fast(raw)
    return fast if fast is not None else parse_text_strict(raw, name)


_SEPARATOR = ","      # any byte the grammar refuses: a line holding it is two fields and Polars refuses it


@functools.cache
def _polars():
    try:
        import polars
    except ImportError:          # the `fast` extra is not installed: the validating parser does it all
        return None
    return polars


def parse_text_fast(raw: bytes) -> np.ndarray | None:
    """The values, or None when Polars refuses the text or it looks off (the validating parser decides then).

    Guards, each for a leniency of Polars' reader that the grammar does not share
    (found by differential fuzzing): a UTF-8 byte-order mark is skipped by Polars;
    a separator at the end of an unterminated last line is ignored by it; an
    empty or blank line becomes a null (the validating parser skips blank lines,
    so a null just sends the text there).
    """
    pl = _polars()
    if pl is None or not raw or raw.startswith(b"\xef\xbb\xbf"):
        return None
    if _SEPARATOR.encode() in raw[raw.rfind(b"\n") + 1:]:
        return None
    try:
        col = pl.read_csv(io.BytesIO(raw), has_header=False, schema={"x": pl.Int64}, separator=_SEPARATOR,
                          quote_char=None, comment_prefix=None, null_values=None,
                          raise_if_empty=False, truncate_ragged_lines=False, try_parse_dates=False)["x"]
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, ValueError):
        return None            # a refusal of any kind: the validating parser looks and names the line
    if col.null_count():
        return None
    # Zero copy: a read-only view of Polars' buffer.  Copying it to make it writable cost
    # 8-12% of the parse; the ops that reorder their data in place check ``flags.writeable``.
    return col.to_numpy()


def parse_text_strict(raw: bytes, name: str = "<text>") -> np.ndarray:
    """The validating parser: all integers of a text, one per line; errors name the 1-based line."""
    out = [_parse_block(block, name, line0) for block, line0 in line_blocks(raw)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _line_of(block: np.ndarray, pos: int, line0: int) -> int:
    return line0 + int(np.count_nonzero(block[:pos] == 10))


def _fail(block: np.ndarray, pos: int, name: str, line0: int, what: str) -> InputError:
    """An error naming the file, the line and the kind of problem -- never the line's text: a token holder
    could otherwise read any file the worker can open, a line at a time, through error messages."""
    line = _line_of(block, pos, line0)
    lo = pos
    while lo > 0 and block[lo - 1] != 10:
        lo -= 1
    return InputError(f"{name}:{line}: {what} (column {pos - lo + 1}: {describe_byte(int(block[pos]))})")


def describe_byte(b: int) -> str:
    """What kind of character a byte is, without saying which (a short, non-secret description)."""
    if 48 <= b <= 57 or b in (43, 45):
        return "a digit or sign out of place"
    if 65 <= b <= 90 or 97 <= b <= 122:
        return "a letter"
    if b == 46:
        return "a decimal point"
    if b < 32 or b == 127:
        return "a control byte"
    if b >= 128:
        return "a non-ASCII byte"
    return "a punctuation character"


def _parse_block(block: np.ndarray, name: str, line0: int) -> np.ndarray:
    """Checks the grammar with whole-array operations, then lets numpy's C parser read the values."""
    isdig = (block - np.uint8(48)) < 10
    issign = (block == 45) | (block == 43)
    tok = isdig | issign
    isnl = block == 10
    ok = tok | isnl | (block == 32) | (block == 13) | (block == 9)
    if not ok.all():
        return _raise(_fail(block, int(np.argmin(ok)), name, line0, "not an integer"))
    starts = np.flatnonzero(tok[1:] & ~tok[:-1]) + 1
    ends = np.flatnonzero(tok[:-1] & ~tok[1:]) + 1
    if len(block) and tok[0]:
        starts = np.concatenate(([0], starts))
    if len(block) and tok[-1]:
        ends = np.append(ends, len(block))
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    _check_one_per_line(block, isnl, starts, ends, name, line0)
    signs = np.flatnonzero(issign)
    if len(signs):
        not_first = (signs > 0) & tok[np.maximum(signs - 1, 0)]
        no_digit = (signs + 1 >= len(block)) | ~isdig[np.minimum(signs + 1, len(block) - 1)]
        bad = np.flatnonzero(not_first | no_digit)
        if len(bad):
            return _raise(_fail(block, int(signs[bad[0]]), name, line0, "not an integer"))
    _check_range(block, starts, ends, name, line0)
    values = np.fromstring(block.tobytes(), dtype=np.int64, sep=" ")
    if len(values) != len(starts):                    # cannot happen once the grammar holds
        return _raise(InputError(f"{name}: parsed {len(values)} values from {len(starts)} tokens"))
    _check_saturated(block, values, starts, ends, name, line0)
    return values


def _check_one_per_line(block, isnl, starts, ends, name, line0) -> None:
    """Every token but the last must be followed by a newline before the next token starts.

    Most tokens end right at a newline (or "\r\n"); only the others pay for a search.
    """
    n = len(block)
    follow = np.minimum(ends[:-1], n - 1)
    odd = np.flatnonzero(~isnl[follow])
    if len(odd):
        follow2 = np.minimum(ends[:-1][odd] + 1, n - 1)
        odd = odd[~((block[follow[odd]] == 13) & isnl[follow2])]
    if len(odd):
        newlines = np.append(np.flatnonzero(isnl), n)   # a sentinel newline past the end
        nxt = np.searchsorted(newlines, ends[:-1][odd])
        nl_at = newlines[nxt]
        bad = np.flatnonzero(nl_at > starts[1:][odd])
        if len(bad):
            raise _fail(block, int(starts[odd[bad[0]] + 1]), name, line0, "more than one value on a line")


_MAX_DIGITS = np.frombuffer(str(INT64_MAX).encode(), dtype=np.uint8)
_MIN_DIGITS = np.frombuffer(str(INT64_MAX + 1).encode(), dtype=np.uint8)


def _check_range(block: np.ndarray, starts: np.ndarray, ends: np.ndarray, name: str, line0: int) -> None:
    """Tokens longer than sign + 19 digits are out of range unless the excess is leading zeros (rare)."""
    for i in np.flatnonzero(ends - starts > 20):
        s, e = int(starts[i]), int(ends[i])
        s += block[s] in (ord("-"), ord("+"))
        nz = np.flatnonzero(block[s:e] != ord("0"))
        if len(nz) and e - (s + int(nz[0])) > 19:
            raise _fail(block, int(starts[i]), name, line0, "value beyond the int64 range")


def _check_saturated(block, values, starts, ends, name, line0) -> None:
    """numpy saturates out-of-range text at the int64 limits: re-check only the tokens that read as a limit."""
    for limit, digits in ((INT64_MAX, _MAX_DIGITS), (-INT64_MAX - 1, _MIN_DIGITS)):
        idx = np.flatnonzero(values == limit)
        if not len(idx):
            continue
        e = ends[idx]
        mat = block[(e - 19)[:, None] + np.arange(19)]      # the last 19 characters of each token
        longer = (e - starts[idx]) > 20 if limit < 0 else (e - starts[idx]) > 19
        bad = np.flatnonzero(np.any(mat != digits, axis=1))
        for i in bad.tolist() + np.flatnonzero(longer).tolist():
            tok = bytes(block[starts[idx[i]]:e[i]]).lstrip(b"+-").lstrip(b"0")
            if len(tok) != 19 or tok != digits.tobytes():
                raise _fail(block, int(starts[idx[i]]), name, line0, "value beyond the int64 range")


def _raise(exc: Exception):
    raise exc


