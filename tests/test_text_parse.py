"""The library-speed text parser never accepts what the validating parser refuses, and reads the same values.

``parse_text`` tries Polars' reader first and falls back to ``parse_text_strict``
(the validating parser) whenever Polars refuses or a guard trips.  Every input
here goes through both: a refusal must be the same one-line ``file:line``
message, an acceptance the same int64 array.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from shardstats.errors import InputError
from shardstats.worker.io.text import parse_text, parse_text_fast, parse_text_strict

I64 = st.integers(-(2 ** 63), 2 ** 63 - 1)


def _outcome(parse, raw: bytes):
    try:
        a = parse(raw, "s.txt")
    except InputError as exc:
        return "refused", str(exc)
    assert a.dtype == np.int64
    return "read", a.tolist()


def _same_as_strict(raw: bytes) -> None:
    assert _outcome(parse_text, raw) == _outcome(parse_text_strict, raw)


# Each of these is refused by the validating parser; several are read by a lenient parser (Polars reads
# the byte-order mark and the trailing separator, pyarrow reads 0x10, numpy reads 1-2 as two values).
REFUSED = [b"1.0\n", b"1.5\n", b"1e3\n", b"0x10\n", b"0X10\n", b"+-1\n", b"--1\n", b"-\n", b"+\n", b"1-2\n",
           b"1 2\n", b"1\t2\n", b"1\r2\n", b"1,2\n", b"1,\n", b"0\n1,", b"0\n1,,", b"\"1\"\n", b"'1'\n",
           b"9223372036854775808\n", b"-9223372036854775809\n", b"18446744073709551616\n",
           b"99999999999999999999\n", b"\xef\xbb\xbf1\n", b"1_000\n", b"inf\n", b"nan\n", b"NA\n", b"null\n",
           b"1\x002\n", b"1\x0b\n", b"1\x0c\n", b"\xc2\xa01\n", b"\xd9\xa1\n", b"0b1\n", b"#1\n", b"1#\n",
           b"1\n2\nx\n", b"true\n", b"- 1\n", b"1 -\n"]
# Each of these is read by the validating parser; Polars is pickier about some (they fall back).
READ = [b"", b"\n", b"\n\n\n", b"1", b"1\n", b"-1\n", b"+1\n", b"-0\n", b"007\n", b" 1\n", b"1 \n", b"\t1\t\n",
        b"1\r\n2\r\n", b"1\r", b"\r\n", b"\r1\n", b"1\r\r\n", b"  \n1\n", b"1\n\n2\n", b"1\n\r\n2\n",
        b"9223372036854775807\n-9223372036854775808\n", b"00000000000000000000000000009\n",
        b"-00000000000000000000009223372036854775808\n", b"+9223372036854775807"]


@pytest.mark.parametrize("raw", REFUSED)
def test_refused_by_both_with_the_same_message(raw):
    kind, msg = _outcome(parse_text_strict, raw)
    assert kind == "refused" and re.match(r"s\.txt:[1-3]: ", msg)
    assert _outcome(parse_text, raw) == (kind, msg)


@pytest.mark.parametrize("raw", READ)
def test_read_by_both_as_the_same_values(raw):
    assert _outcome(parse_text_strict, raw)[0] == "read"
    _same_as_strict(raw)


pieces = st.sampled_from([b"0", b"1", b"9", b"-", b"+", b" ", b"\t", b"\r", b"\n", b"\n", b"\n", b",", b"x", b"X",
                          b"e", b".", b"_", b"#", b"\"", b"\x00", b"\x0b", b"\xef\xbb\xbf", b"\xc2\xa0",
                          b"9223372036854775807", b"9223372036854775808", b"-9223372036854775808",
                          b"00000000000000000000", b"18446744073709551616", b"1e5", b"0x10", b"NaN", b"null"])
texts = st.one_of(
    st.binary(max_size=120),
    st.lists(pieces, max_size=40).map(b"".join),
    st.lists(st.tuples(st.sampled_from(["", " ", "\t", "+"]), st.integers(-(2 ** 64), 2 ** 64),
                       st.sampled_from(["", " ", "\r", "\t", ",", ".0", "e1"]), st.sampled_from(["\n", "\r\n", "\n\n"])),
             max_size=30).map(lambda rows: "".join(f"{a}{v}{b}{c}" for a, v, b, c in rows).encode()),
)


@settings(max_examples=1500, deadline=None)
@given(texts)
@example(b"0\n1,")
@example(b"\xef\xbb\xbf1\n")
@example(b"1-2\n")
def test_fast_path_agrees_with_the_validating_parser(raw):
    _same_as_strict(raw)


@settings(max_examples=300, deadline=None)
@given(st.lists(I64, max_size=200), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_canonical_text_takes_the_fast_path(values, eol, last_eol):
    """Well-formed shards (what `cluster gen` writes, or Windows line ends) never pay for the validating scan."""
    raw = (eol.join(map(str, values)) + (eol if last_eol and values else "")).encode()
    if not values:
        return
    fast = parse_text_fast(raw)
    assert fast is not None and fast.tolist() == values


BAD_LINES = [b"1.5", b"0x10", b"1e3", b"+-1", b"1 2", b"9223372036854775808", b"\xef\xbb\xbf7", b"7,", b"abc"]


@pytest.mark.parametrize("bad", BAD_LINES)
def test_one_bad_line_in_a_big_file_is_named(bad):
    """Polars parses big texts in parallel chunks: a bad line anywhere, at chunk edges too, is still refused."""
    rng = np.random.default_rng(len(bad))
    values = rng.integers(-(2 ** 63), 2 ** 63 - 1, 400_000, dtype=np.int64)
    lines = [str(v).encode() for v in values.tolist()]
    for at in (0, 1, len(lines) // 2, int(rng.integers(2, len(lines) - 2)), len(lines) - 1):
        raw = b"\n".join(lines[:at] + [bad] + lines[at:]) + b"\n"
        assert _outcome(parse_text, raw) == _outcome(parse_text_strict, raw)
        assert _outcome(parse_text, raw)[1].startswith(f"s.txt:{at + 1}:")
    unterminated = b"\n".join(lines) + b"\n" + bad
    assert _outcome(parse_text, unterminated)[1].startswith(f"s.txt:{len(lines) + 1}:")
    assert parse_text(b"\n".join(lines)).tolist() == values.tolist()
