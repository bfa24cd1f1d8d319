"""Hostile bytes on a real worker's port: each is refused (and logged), and the cluster keeps answering.

Three real worker processes over real TCP.  Every case talks to a worker with a
raw socket (every operation under a deadline), checks that the connection is
closed (or the request answered) as the protocol says, that the worker's log
names the refusal, and then runs a real job on the same cluster and compares its
answer with a sequential reference, and checks that no worker process died.
"""
from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import msgpack
import numpy as np
import pytest

from shardstats.cluster import launcher
from shardstats.cluster.config import ClusterInfo
from shardstats.cluster.gen import generate, write_shards
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec  # noqa: E402
from shardstats.protocol.messages import PROTOCOL_VERSION
from shardstats.protocol.frames import DEFAULT_MAX_FRAME, HEADER, FrameDecoder, encode_frame
from shardstats.protocol.handshake import ClientHandshake
from shardstats.protocol.messages import make
from tests.conftest import ref_mode
from shardstats.worker.net.dial import parse_addr
from shardstats.settings import DEFAULTS
PRE_AUTH_MAX_FRAME = DEFAULTS.pre_auth_max_frame

HANDSHAKE_TIMEOUT = 1.5          # the workers' --handshake-timeout here (the default is 5 s)
CLOSE_SLACK = 8.0                # generous bound on "promptly": a loaded 2-core machine is slow, never this slow
WORKERS = 3


# -- the cluster --------------------------------------------------------------------------------
@contextmanager
def local_cluster(workers: int, log_dir: Path, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> Iterator[ClusterInfo]:
    """Real worker processes on free ports (``launcher.start``), always stopped afterwards."""
    info = launcher.start(workers, "127.0.0.1", None, str(log_dir), "info",
                          extra_args=["--handshake-timeout", str(handshake_timeout)])
    try:
        yield info
    finally:
        launcher.stop(info)
        assert not any(launcher.alive(p) for p in info.pids)


@dataclass
class Env:
    info: ClusterInfo
    data: Path
    values: np.ndarray

    @property
    def token(self) -> bytes:
        return self.info.token.encode()


def run(env: Env, op: str, path: Path | None = None, params: dict | None = None):
    return asyncio.run(run_job(env.info.workers, env.token, job_spec(op, str(path or env.data), params, timeout=30.0),
                               absolute_paths=True))


def assert_serves(env: Env, op: str = "mode") -> None:
    """A correct job on the same cluster, every worker process still alive."""
    assert all(launcher.alive(p) for p in env.info.pids), "a worker process died"
    rep = run(env, op)
    if op == "mode":
        value, count, ties = ref_mode(env.values)
        assert (rep.result["value"], rep.result["count"], rep.result["ties"]) == (value, count, ties)
    else:
        s = np.sort(env.values)
        lo, hi = int(s[(len(s) - 1) // 2]), int(s[len(s) // 2])
        assert (rep.result["lower"], rep.result["upper"]) == (lo, hi)
        assert rep.result["value"] * 2 == lo + hi
    assert all(launcher.alive(p) for p in env.info.pids), "a worker process died"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("hostile")
    parts = generate(30_000, 6, "unique-dup", seed=5)
    write_shards(parts, base / "data", "npy")
    with local_cluster(WORKERS, base / "logs") as info:
        yield Env(info, base / "data", np.concatenate(parts))


# -- a raw client -------------------------------------------------------------------------------
class Wire:
    """A raw TCP client: every operation has a deadline, so no test can hang on a worker."""

    def __init__(self, addr: str, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(parse_addr(addr), timeout=timeout)
        self.port = self.sock.getsockname()[1]
        self.timeout = timeout
        self.decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        self.pending: list[dict] = []

    def __enter__(self) -> "Wire":
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """False if the worker had already closed the connection (which is what many cases want)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def frame(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while not self.pending:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("closed by the worker")
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def closed_within(self, seconds: float) -> float:
        """Reads until the worker closes; returns the seconds that took (fails past ``seconds``)."""
        t0 = time.monotonic()
        deadline = t0 + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the worker kept the connection open for {seconds:g}s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return time.monotonic() - t0
            except TimeoutError:
                continue
            if not data:
                return time.monotonic() - t0
            self.pending += self.decoder.feed(data)


def authenticate(w: Wire, token: bytes, role: str = "coord", my_id: int = -1) -> int:
    hs = ClientHandshake(token, role, my_id)
    assert w.send(encode_frame(hs.receive_challenge(w.frame())))
    return hs.receive_welcome(w.frame())


def hello(w: Wire, token: bytes, as_role: str = "peer", as_id: int = 1, **override) -> dict:
    """A correct hello (for this connection's challenge), then ``override`` applied to it."""
    msg = ClientHandshake(token, as_role, as_id).receive_challenge(w.frame())
    msg.update(override)
    return msg


def logged(env: Env, worker: int, events: tuple[str, ...], port: int, timeout: float = 5.0) -> str:
    """The line of worker ``worker``'s log recording ``events`` for the connection from ``port``."""
    path = Path(env.info.log_dir) / f"worker{worker}.log"
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text(errors="replace").splitlines()
        for line in lines:
            if any(f"event={e} " in line for e in events) and f", {port})" in line:
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no {'/'.join(events)} for port {port} in {path}; last lines:\n"
                                 + "\n".join(lines[-5:]))
        time.sleep(0.05)


def raw_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def refused(env: Env, worker: int, payload: bytes, events=("handshake_refused",)) -> str:
    """Sends ``payload`` before any handshake; the worker must close and log one of ``events``."""
    with Wire(env.info.workers[worker]) as w:
        assert w.frame()["t"] == "challenge"
        w.send(payload)
        w.closed_within(CLOSE_SLACK)
        assert not any(m.get("t") == "welcome" for m in w.pending)
        return logged(env, worker, events, w.port)


# -- frames -------------------------------------------------------------------------------------
def test_a_2_gib_header_is_refused_without_its_body(env):
    with Wire(env.info.workers[0]) as w:
        w.frame()
        assert w.send(HEADER.pack(2 ** 31))          # the header alone: no body byte is ever sent
        w.closed_within(CLOSE_SLACK)
        assert "exceeds the limit" in logged(env, 0, ("handshake_refused",), w.port)
    assert_serves(env)


def test_a_2_gib_header_after_authenticating_is_refused_too(env):
    with Wire(env.info.workers[1]) as w:
        assert authenticate(w, env.token) == 1
        assert w.send(HEADER.pack(2 ** 31 - 1))
        w.closed_within(CLOSE_SLACK)
        line = logged(env, 1, ("protocol_error",), w.port)
        assert "exceeds the limit" in line and "role=coord" in line
    assert_serves(env)


def test_a_frame_over_the_pre_auth_limit_is_refused(env):
    body = msgpack.packb({"t": "hello", "v": 2, "pad": b"x" * PRE_AUTH_MAX_FRAME})
    assert len(body) > PRE_AUTH_MAX_FRAME
    assert "exceeds the limit" in refused(env, 2, raw_frame(body))
    assert_serves(env)


@pytest.mark.parametrize("payload", [HEADER.pack(100) + b"0123456789", b"\x00\x00", b""],
                         ids=["truncated-body", "truncated-header", "nothing"])
def test_truncated_frame_then_close(env, payload):
    with Wire(env.info.workers[0]) as w:
        w.frame()
        w.send(payload)
        w.sock.shutdown(socket.SHUT_WR)              # the client goes away mid-frame
        w.closed_within(CLOSE_SLACK)                 # the worker closes its side too
    assert_serves(env)


@pytest.mark.parametrize("seed", range(4))
def test_random_garbage_is_refused(env, seed):
    rng = random.Random(seed)
    garbage = rng.randbytes(rng.choice([1, 7, 300, 4096, 20_000]))
    # Either refused at once (an oversized or undecodable frame) or, if the garbage is the start of a
    # small frame, closed by the handshake deadline.
    refused(env, seed % WORKERS, garbage, ("handshake_refused", "handshake_timeout"))
    assert_serves(env)


def test_a_burst_of_garbage_connections_leaves_the_worker_serving(env):
    rng = random.Random(99)
    wires = [Wire(env.info.workers[0]) for _ in range(30)]
    try:
        for w in wires:
            w.send(HEADER.pack(rng.randrange(8, 64)) + rng.randbytes(rng.randrange(8, 64)))
        assert_serves(env)
        for w in wires:
            w.closed_within(HANDSHAKE_TIMEOUT + CLOSE_SLACK)
    finally:
        for w in wires:
            w.sock.close()
    assert_serves(env, "median")


# -- valid msgpack, wrong shape -----------------------------------------------------------------
WRONG_SHAPES = {
    "a list": msgpack.packb([1, 2, 3]),
    "a string": msgpack.packb("hello"),
    "a map without t": msgpack.packb({"v": 2, "role": "peer", "id": 1}),
    "a map with bytes keys": msgpack.packb({b"t": b"hello", b"v": 2}, use_bin_type=True),
    "a map with int keys": msgpack.packb({1: 2}),
    "an unknown type": msgpack.packb({"t": "shutdown", "v": 2}),
    "a request before the handshake": msgpack.packb({"t": "ping", "v": 2, "seq": 1}),
    "a deep nest": b"\x91" * 3000 + b"\xc0",
    "a forged array tag": msgpack.packb({"x": {"__nd__": "|O", "b": b"\x00" * 8}}),
    # Fraction("1e999999999") would compute 10**999999999: one small frame used to wedge the worker.
    "a fraction bomb": msgpack.packb({"t": "hello", "v": 2, "x": {"__frac__": "1e999999999"}}),
    "a fraction bomb, num/den": msgpack.packb({"x": {"__frac__": "1/1e99999999"}}),
}


@pytest.mark.parametrize("body", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_valid_msgpack_of_the_wrong_shape_is_refused(env, body):
    refused(env, 1, raw_frame(body))
    assert_serves(env)


@pytest.mark.parametrize("field,value", [("id", "1"), ("id", True), ("id", 1.0), ("nonce", 5), ("mac", "aa"),
                                         ("role", 7), ("role", "admin"), ("v", "1"), ("v", True)])
def test_a_hello_with_a_field_of_the_wrong_type_is_refused(env, field, value):
    with Wire(env.info.workers[0]) as w:
        w.send(encode_frame(hello(w, env.token, **{field: value})))
        w.closed_within(CLOSE_SLACK)
        assert not w.pending, "a malformed hello was welcomed"
        logged(env, 0, ("handshake_refused",), w.port)
    assert_serves(env)


# -- authentication -----------------------------------------------------------------------------
def test_a_wrong_token_is_refused_and_logged(env):
    with Wire(env.info.workers[2]) as w:
        w.send(encode_frame(hello(w, b"not-the-cluster-token", "coord", -1)))
        w.closed_within(CLOSE_SLACK)
        assert not w.pending
        assert "bad token proof" in logged(env, 2, ("handshake_refused",), w.port)
    assert_serves(env)


def test_a_wrong_token_through_the_coordinator_is_a_clean_cluster_error(env):
    from shardstats.errors import ShardstatsError
    with pytest.raises(ShardstatsError) as err:
        asyncio.run(run_job(env.info.workers, b"wrong", job_spec("mode", str(env.data), timeout=10.0)))
    assert err.value.exit_code == 1
    assert_serves(env)


def test_a_client_that_never_answers_the_challenge_is_closed_at_the_deadline(env):
    with Wire(env.info.workers[1]) as w:
        assert w.frame()["t"] == "challenge"
        took = w.closed_within(HANDSHAKE_TIMEOUT + CLOSE_SLACK)
        assert took >= HANDSHAKE_TIMEOUT * 0.5       # closed by the deadline, not by anything we sent
        logged(env, 1, ("handshake_timeout",), w.port)
    assert_serves(env)


def test_an_unknown_protocol_version_is_refused(env):
    with Wire(env.info.workers[0]) as w:
        w.send(encode_frame(hello(w, env.token, "peer", 1, v=PROTOCOL_VERSION + 1)))   # otherwise a perfect hello
        w.closed_within(CLOSE_SLACK)
        assert not w.pending
        assert "version" in logged(env, 0, ("handshake_refused",), w.port)
    assert_serves(env)


def test_a_hello_signed_for_one_id_cannot_claim_another(env):
    with Wire(env.info.workers[0]) as w:
        w.send(encode_frame(hello(w, env.token, "peer", 1, id=2)))  # the MAC binds id 1
        w.closed_within(CLOSE_SLACK)
        assert not w.pending
        assert "bad token proof" in logged(env, 0, ("handshake_refused",), w.port)
    assert_serves(env)


@pytest.mark.parametrize("claim", ["own", WORKERS, 99, -1], ids=["own-id", "one-past-the-end", "99", "minus-1"])
def test_a_peer_claiming_an_impossible_id_is_refused_even_with_the_token(env, claim):
    worker = 2
    pid = worker if claim == "own" else claim
    with Wire(env.info.workers[worker]) as w:
        w.send(encode_frame(hello(w, env.token, "peer", pid)))     # a valid proof for this id
        w.closed_within(CLOSE_SLACK)
        assert not w.pending, "the worker welcomed an impossible peer id"
        assert "not a peer" in logged(env, worker, ("handshake_refused",), w.port)
    assert_serves(env)


def test_a_peer_link_that_sends_nonsense_is_cut_without_harm(env):
    """A token holder speaking as worker 1: data for jobs that do not exist is dropped; requests are refused."""
    with Wire(env.info.workers[0]) as w:
        assert authenticate(w, env.token, "peer", 1) == 0
        w.send(encode_frame(make("peer", job="no-such-job", tag="x", src=0, body={"a": np.arange(3)})))
        w.send(encode_frame(make("peer", job="no-such-job", tag="x", src=77, body={})))
        w.send(encode_frame(make("run", job="j", op="mode", params={}, ranks=[0], total=1, timeout=5)))  # peers may not ask
        w.closed_within(CLOSE_SLACK)
        assert "peer sent a run message" in logged(env, 0, ("protocol_error",), w.port)
    assert_serves(env)


# -- an authenticated coordinator saying odd things ----------------------------------------------
def test_run_and_abort_for_unknown_jobs_get_replies_not_crashes(env):
    with Wire(env.info.workers[1]) as w:
        authenticate(w, env.token)
        w.send(encode_frame(make("run", job="ghost", op="mode", params={}, ranks=[0, 1, 2], total=3, timeout=5)))
        reply = w.frame()
        assert (reply["t"], reply["job"], reply["kind"]) == ("error", "ghost", "job")
        assert "not loaded" in reply["message"]
        w.send(encode_frame(make("abort", job="ghost-2")))
        assert w.frame() == make("aborted", job="ghost-2")
        w.send(encode_frame(make("run", job="ghost-3", op="no-such-op", params={"timeout": "x"}, ranks=["a"], total=1, timeout=5)))
        assert w.frame()["t"] == "error"
        w.send(encode_frame(make("ping", seq=7)))       # the connection is still in service
        pong = w.frame()
        assert (pong["t"], pong["seq"], pong["id"]) == ("pong", 7, 1)
    assert_serves(env)


@pytest.mark.parametrize("msg", [
    {"t": "run", "v": 2, "job": 5, "op": "mode", "params": {}, "ranks": [0]},
    {"t": "load", "v": 2, "job": "j", "files": "not-a-list"},
    {"t": "welcome", "v": 2, "id": 0, "mac": b""},
    {"t": "peer", "v": 2, "job": "j", "tag": "t", "src": 0, "body": {}},
    {"t": "ping", "v": 2},
    [1, 2, 3],
], ids=["job-not-a-string", "files-not-a-list", "a-welcome", "a-peer-message", "ping-without-seq", "a-list"])
def test_a_coordinator_breaking_the_schema_is_cut_off(env, msg):
    with Wire(env.info.workers[2]) as w:
        authenticate(w, env.token)
        w.send(raw_frame(msgpack.packb(msg, use_bin_type=True)))
        w.closed_within(CLOSE_SLACK)
        logged(env, 2, ("protocol_error",), w.port)
    assert_serves(env)


# -- slowloris ----------------------------------------------------------------------------------
async def _trickle(addr: str, payload: bytes, interval: float, limit: float) -> tuple[float, int, int]:
    """Sends ``payload`` a byte at a time; returns (seconds until the worker closed, bytes sent, our port)."""
    host, port = parse_addr(addr)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
    local_port = writer.get_extra_info("sockname")[1]
    t0 = time.monotonic()
    sent = 0
    async def until_closed() -> None:
        try:
            await reader.read()                     # the challenge, then EOF when the worker closes
        except ConnectionResetError:
            pass

    try:
        async with asyncio.timeout(limit):
            closed = asyncio.ensure_future(until_closed())
            try:
                for b in payload:
                    if closed.done():
                        break
                    writer.write(bytes([b]))
                    sent += 1
                    await asyncio.wait([closed], timeout=interval)
                await closed
            finally:
                closed.cancel()
        return time.monotonic() - t0, sent, local_port
    finally:
        writer.close()


def test_slowloris_is_closed_by_the_deadline_while_jobs_run(env):
    token = env.token

    async def main():
        async def a_slow_hello(w):
            # A real hello needs the challenge's nonce; a byte a second of *a* hello-sized frame is enough.
            payload = encode_frame(make("hello", role="coord", id=-1, nonce=os.urandom(16), mac=os.urandom(32)))
            return await _trickle(env.info.workers[w], payload, 1.0, HANDSHAKE_TIMEOUT + CLOSE_SLACK)

        async def jobs():
            out = []
            for op in ("mode", "median", "mode"):
                out.append(await run_job(env.info.workers, token, job_spec(op, str(env.data), timeout=30.0)))
            return out

        async with asyncio.TaskGroup() as tg:
            slow = [tg.create_task(a_slow_hello(w)) for w in range(WORKERS)]
            done = tg.create_task(jobs())
        return [s.result() for s in slow], done.result()

    slow, reports = asyncio.run(main())
    value, count, _ = ref_mode(env.values)
    s = np.sort(env.values)
    assert [(r.result["value"], r.result["count"]) for r in (reports[0], reports[2])] == [(value, count)] * 2
    assert (reports[1].result["lower"], reports[1].result["upper"]) == (int(s[(len(s) - 1) // 2]),
                                                                          int(s[len(s) // 2]))
    for w, (took, sent, port) in enumerate(slow):
        assert sent >= 1 and took < HANDSHAKE_TIMEOUT + CLOSE_SLACK
        logged(env, w, ("handshake_timeout",), port)
    assert_serves(env)
