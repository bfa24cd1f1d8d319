"""The sans-IO codec: bytes in, messages out, whatever the split; limits before buffering."""
from __future__ import annotations

from fractions import Fraction

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardstats.protocol import BadMessage, FrameDecoder, FrameTooLarge, encode_frame, make, validate
from shardstats.protocol.frames import HEADER

scalars = st.one_of(st.integers(-(2 ** 63), 2 ** 64 - 1), st.text(max_size=20), st.booleans(), st.none(),
                    st.binary(max_size=50), st.floats(allow_nan=False))
maps = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: not k.startswith("__")), st.one_of(scalars, st.lists(scalars, max_size=5)),
                       max_size=6)


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@settings(max_examples=200, deadline=None)
@given(st.lists(maps, min_size=1, max_size=6), st.data())
def test_any_split_of_the_stream_yields_the_same_messages(msgs, data):
    stream = b"".join(encode_frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec = FrameDecoder()
    out = []
    prev = 0
    for c in cuts + [len(stream)]:
        out += dec.feed(stream[prev:c])
        prev = c
    assert _equal(out, msgs)
    assert dec.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), max_size=300),
       st.sampled_from(["<i8", "<u4", "<i4", "|u1", "<u8"]))
def test_arrays_round_trip_with_their_dtype(values, dtype):
    dt = np.dtype(dtype)
    info = np.iinfo(dt)
    a = np.array([v for v in values if info.min <= v <= info.max], dtype=dt)
    msg = make("peer", job="j", tag="t", src=0, body={"a": a, "f": Fraction(-7, 2)})
    (got,) = FrameDecoder().feed(encode_frame(msg))
    validate(got)
    assert got["body"]["a"].dtype == dt and np.array_equal(got["body"]["a"], a)
    assert got["body"]["f"] == Fraction(-7, 2)


def test_big_endian_arrays_arrive_little_endian_and_equal():
    a = np.arange(5, dtype=">i8")
    (got,) = FrameDecoder().feed(encode_frame({"a": a}))
    assert got["a"].dtype == np.dtype("<i8") and np.array_equal(got["a"], a)


def test_oversized_frame_is_refused_from_its_header_alone():
    dec = FrameDecoder(max_frame=1024)
    with pytest.raises(FrameTooLarge):
        dec.feed(HEADER.pack(1025))          # no body byte was sent at all
    assert dec.buffered <= HEADER.size


def test_sender_refuses_frames_over_the_limit():
    with pytest.raises(FrameTooLarge):
        encode_frame({"b": b"x" * 2000}, max_frame=1000)


@pytest.mark.parametrize("body", [b"\xc1", msgpack.packb([1, 2]), msgpack.packb(5), b"\x92\x01"])
def test_garbage_bodies_are_bad_messages(body):
    with pytest.raises(BadMessage):
        FrameDecoder().feed(HEADER.pack(len(body)) + body)


@pytest.mark.parametrize("msg", [
    {"t": "nope", "v": 2},
    {"t": "ping", "v": 99, "seq": 1},
    {"t": "ping", "v": 2},
    {"t": "ping", "v": 2, "seq": "1"},
    {"t": "ping", "v": 2, "seq": True},
    {"t": "peer", "v": 2, "job": "j", "tag": "t", "src": 0, "body": []},
    {"v": 2},
])
def test_wrong_shapes_are_rejected(msg):
    with pytest.raises(BadMessage):
        validate(msg)


def test_bad_array_tags_are_rejected():
    body = msgpack.packb({"x": {"__nd__": "|O", "b": b"12345678"}})
    with pytest.raises(BadMessage):
        FrameDecoder().feed(HEADER.pack(len(body)) + body)
    body = msgpack.packb({"x": {"__nd__": "<i8", "b": b"123"}})
    with pytest.raises(BadMessage):
        FrameDecoder().feed(HEADER.pack(len(body)) + body)
