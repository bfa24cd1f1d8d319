"""Property-based fuzzing of everything that reads bytes from outside: frames, messages, handshake, text shards.

The contract under test: whatever arrives, the only exception that escapes is the
layer's own error type (``ProtocolError`` for the wire, ``InputError`` for
files), and whatever is valid decodes to exactly what a plain reference says.
``scripts/fuzz.py`` runs the same targets under atheris (coverage-guided).
"""
from __future__ import annotations

import asyncio
import re
from fractions import Fraction

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from shardstats.settings import Settings
from shardstats.protocol.errors import BadMessage, HandshakeFailed, ProtocolError
from shardstats.protocol.frames import HEADER, FrameDecoder, decode_body, encode_frame
from shardstats.protocol.handshake import ClientHandshake, ServerHandshake
from shardstats.protocol.messages import PROTOCOL_VERSION, SCHEMA, validate
from shardstats.errors import InputError
from shardstats.worker.io.text import INT64_MAX, parse_text

# Bounded: the suite must stay fast on a shared 2-core machine; scripts/fuzz.py is the long run.
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKEN = b"fuzz-token"
FRACTION_BOMB = msgpack.packb({"x": {"__frac__": "1e999999999"}})   # Fraction() would compute 10**999999999

# -- values msgpack can carry, as the wire would (plus our arrays and fractions) -------------------------
ints = st.one_of(st.integers(-(2 ** 63), 2 ** 64 - 1), st.sampled_from([0, 1, -1, 2 ** 63 - 1, -(2 ** 63)]))
scalars = st.one_of(ints, st.booleans(), st.none(), st.floats(allow_nan=False), st.text(max_size=12),
                    st.binary(max_size=24))
arrays = st.builds(lambda dt, xs: np.array(xs).astype(dt), st.sampled_from(["<i8", "<u4", "|u1", "<f8", "<i2"]),
                   st.lists(st.integers(0, 100), max_size=20))
fractions = st.builds(Fraction, st.integers(-(2 ** 64), 2 ** 64), st.integers(1, 2 ** 64))
# "__nd__" and "__frac__" are reserved map keys (they mark an encoded array / fraction), so user maps avoid them.
keys = st.text(max_size=6).filter(lambda k: not k.startswith("__"))
values = st.recursive(st.one_of(scalars, arrays, fractions),
                      lambda inner: st.one_of(st.lists(inner, max_size=4),
                                              st.dictionaries(keys, inner, max_size=4)),
                      max_leaves=10)
maps = st.dictionaries(keys, values, max_size=5)


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype.newbyteorder("<") == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _feed(stream: bytes, cuts: list[int], max_frame: int) -> tuple[list[dict], bool]:
    """Feeds ``stream`` cut at ``cuts``; (messages, whether a ProtocolError ended it).  Nothing else may escape."""
    dec = FrameDecoder(max_frame=max_frame)
    out: list[dict] = []
    prev = 0
    try:
        for c in sorted(cuts) + [len(stream)]:
            out += dec.feed(stream[prev:c])
            prev = c
            # The limit is enforced before a body is buffered: never more than one partial frame held.
            assert dec.buffered < HEADER.size + max_frame
    except ProtocolError:
        return out, True
    return out, False


# -- frames -------------------------------------------------------------------------------------------
def _corrupt(stream: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(stream)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


garbage_streams = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda msgs, edits, cut: _corrupt(b"".join(encode_frame(m) for m in msgs), edits)[:cut],
              st.lists(maps, min_size=1, max_size=4), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                                                                max_size=4),
              st.integers(0, 10 ** 6)),
    st.builds(lambda n, body: HEADER.pack(n) + body, st.integers(0, 2 ** 32 - 1), st.binary(max_size=200)),
)


@FUZZ
@given(garbage_streams, st.lists(st.integers(0, 3000), max_size=20), st.sampled_from([64, 1024, 4096, 1 << 20]))
@example(HEADER.pack(2 ** 31), [], 4096)
@example(HEADER.pack(3) + b"\x91" * 3, [1, 5], 4096)
@example(HEADER.pack(len(FRACTION_BOMB)) + FRACTION_BOMB, [3], 4096)
def test_frame_decoder_never_raises_anything_but_protocol_errors(stream, cuts, max_frame):
    split = _feed(stream, [c for c in cuts if c <= len(stream)], max_frame)
    whole = _feed(stream, [], max_frame)
    assert split[1] == whole[1]                   # the same verdict whatever the split
    if not whole[1]:
        assert _equal(split[0], whole[0])


@FUZZ
@given(st.lists(maps, min_size=1, max_size=5), st.data())
def test_frames_round_trip_under_any_split(msgs, data):
    stream = b"".join(encode_frame(m) for m in msgs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=15))
    out, failed = _feed(stream, cuts, 1 << 20)
    assert not failed and _equal(msgs, out)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text", ["1e999999999", "-1e-999999999", "1/1e9999999", "1" * 99, "1/0", "x/y", " 1/2"])
def test_forged_fractions_are_refused_fast(text):
    """Fraction() reads exponents; a frame must not be able to make the decoder compute 10**999999999."""
    body = msgpack.packb({"x": {"__frac__": text}})
    with pytest.raises(BadMessage):
        FrameDecoder().feed(HEADER.pack(len(body)) + body)


# -- message validation -------------------------------------------------------------------------------
field_values = st.one_of(values, st.sampled_from([True, 1, 1.0, "x", b"x", [], {}, None]))
# Messages of a known type with some of its fields, each of any type (often the right one, often not).
shaped = st.sampled_from(sorted(SCHEMA)).flatmap(lambda t: st.fixed_dictionaries(
    {"t": st.just(t), "v": st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, True, 1.0, "1", 2, None])},
    optional={f: field_values for f in SCHEMA[t]}))


@FUZZ
@given(st.one_of(values, maps, shaped, st.builds(dict, shaped, extra=values)))
def test_validate_lets_only_well_formed_messages_through(msg):
    try:
        out = validate(msg)
    except BadMessage:
        return
    assert out is msg and type(msg["v"]) is int and msg["v"] == PROTOCOL_VERSION
    for field, types in SCHEMA[msg["t"]].items():
        assert isinstance(msg[field], types) and not (isinstance(msg[field], bool) and bool not in types)


@FUZZ
@given(st.one_of(values, maps, shaped))
def test_validate_after_the_wire_raises_only_protocol_errors(msg):
    try:
        packed = msgpack.packb(msg, default=lambda o: str(o), use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return
    try:
        validate(decode_body(packed))
    except ProtocolError:
        pass


# -- the handshake ----------------------------------------------------------------------------------
@FUZZ
@given(st.one_of(values, maps, shaped))
def test_handshake_objects_fed_garbage_raise_only_handshake_failures(garbage):
    srv = ServerHandshake(TOKEN, 0)
    with pytest.raises(HandshakeFailed):
        srv.receive_hello(garbage)                    # garbage is never a hello with a valid proof
    assert srv.peer_role is None and srv.peer_id is None
    cli = ClientHandshake(TOKEN, "peer", 1)
    with pytest.raises(HandshakeFailed):
        cli.receive_welcome(garbage)                  # before any challenge: refused whatever it is
    try:
        cli.receive_challenge(garbage)
    except HandshakeFailed:
        return
    with pytest.raises(HandshakeFailed):
        cli.receive_welcome(garbage)                  # a challenge is not a welcome


@FUZZ
@given(st.sampled_from(["role", "id", "nonce", "mac", "v", "t"]), values, st.booleans())
def test_a_tampered_hello_or_welcome_is_refused(field, value, server_side):
    srv = ServerHandshake(TOKEN, 3)
    cli = ClientHandshake(TOKEN, "peer", 5)
    hello = cli.receive_challenge(srv.challenge())
    if server_side:
        bad = dict(hello, **{field: value})
        if _equal(bad[field], hello[field]):
            return
        with pytest.raises(HandshakeFailed):
            srv.receive_hello(bad)
    else:
        welcome = srv.receive_hello(hello)
        bad = dict(welcome, **{field: value})
        if field not in welcome and field not in ("t", "v") or _equal(bad.get(field), welcome.get(field)):
            return
        with pytest.raises(HandshakeFailed):
            cli.receive_welcome(bad)


# -- the worker's inbound connection, in process ---------------------------------------------------
class _Transport:
    """Just enough of an asyncio transport for InboundConnection."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.written += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


@settings(max_examples=60, deadline=None)
@given(st.lists(garbage_streams, min_size=1, max_size=4), st.booleans())
def test_an_inbound_connection_survives_any_bytes(chunks, as_peer):
    """Nothing fed to ``data_received`` escapes it: the worker's event loop never sees a protocol's exception."""
    from shardstats.worker.server import InboundConnection, WorkerServer

    async def main() -> None:
        server = WorkerServer(0, "127.0.0.1:1", ["127.0.0.1:1", "127.0.0.1:2"], TOKEN, settings=Settings(handshake_timeout=30))
        conn = InboundConnection(server)
        tr = _Transport()
        conn.connection_made(tr)
        if as_peer:                               # authenticate first, so the bytes reach the routing code
            (challenge,) = FrameDecoder().feed(bytes(tr.written))
            conn.data_received(encode_frame(ClientHandshake(TOKEN, "peer", 1).receive_challenge(challenge)))
            assert conn.role == "peer" and not tr.closed
        for chunk in chunks:
            if tr.closed:
                break
            conn.data_received(chunk)
        conn.connection_lost(None)

    asyncio.run(main())


# -- text shards ---------------------------------------------------------------------------------------
_TOKEN_RE = re.compile(rb"[+-]?[0-9]+")
_ALLOWED = set(b"0123456789+- \t\r\n")


def _reference(raw: bytes) -> tuple[list[int] | None, set[int]]:
    """(values, or None if the text is invalid; the set of invalid 1-based line numbers), by plain Python."""
    out, bad = [], set()
    for i, line in enumerate(raw.split(b"\n"), 1):
        toks = [t for t in re.split(rb"[ \t\r]+", line) if t]
        ok = set(line) <= _ALLOWED and len(toks) <= 1 and all(_TOKEN_RE.fullmatch(t) for t in toks)
        if ok and toks and not -(INT64_MAX + 1) <= int(toks[0]) <= INT64_MAX:
            ok = False
        if not ok:
            bad.add(i)
        elif toks:
            out.append(int(toks[0]))
    return (None if bad else out), bad


pieces = st.sampled_from([b"0", b"1", b"7", b"9", b"-", b"+", b" ", b"\t", b"\r", b"\n", b"\n", b"\n", b"x", b".",
                          b"\x00", b"\xff", b"\x0b", b"9223372036854775807", b"9223372036854775808",
                          b"-9223372036854775808", b"-9223372036854775809", b"18446744073709551616",
                          b"00000000000000000000000000009", b"-00000000000000000000009223372036854775808",
                          b"99999999999999999999", b"1e5", b"0x10", b"1_000"])
texts = st.one_of(st.binary(max_size=200), st.lists(pieces, max_size=60).map(b"".join),
                  st.lists(st.tuples(ints.filter(lambda v: abs(v) <= 2 ** 64), st.sampled_from(["", " ", "\r", "\t"])),
                           max_size=30).map(lambda rows: "\n".join(f"{v}{s}" for v, s in rows).encode()))


@settings(max_examples=400, deadline=None)
@given(texts)
@example(b"9223372036854775807\n-9223372036854775808")
@example(b"1\r2\n")
@example(b"\n\n-\n")
def test_parse_text_equals_python_or_names_a_bad_line(raw):
    expect, bad = _reference(raw)
    try:
        got = parse_text(raw, "f.txt")
    except InputError as exc:
        assert expect is None, f"valid text refused: {exc}"
        m = re.match(r"f\.txt:(\d+): ", str(exc))
        assert m and int(m.group(1)) in bad, f"{exc} names no bad line (bad lines: {sorted(bad)})"
        return
    assert expect is not None, f"invalid lines {sorted(bad)} were accepted as {got.tolist()}"
    assert got.dtype == np.int64 and got.tolist() == expect
