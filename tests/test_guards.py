"""What one client can cost a worker: each bound of issue 11 against a real worker on 127.0.0.1.

Each test runs an in-process ``WorkerServer`` (real TCP, real handshakes) and
plays a hostile or careless client: a frame that decodes into millions of
objects, replies never read, a flood of connections that never authenticate,
thousands of loads on one connection, a connection that claims to be a peer and
hangs up, a flood of garbage.  Every assertion is about counts and bounds (bytes
buffered, connections closed, jobs admitted), never about time.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import struct
import tracemalloc
from contextlib import asynccontextmanager

import msgpack
import pytest

from shardstats.coordinator.client import WorkerClient
from shardstats.protocol.errors import BadMessage
from shardstats.protocol.frames import HEADER, FrameDecoder, decode_body, encode_frame
from shardstats.protocol.messages import make
from shardstats.settings import DEFAULTS
from shardstats.worker.net import inbound
from shardstats.worker.net.dial import client_connect
from shardstats.worker.server import WorkerServer
from tests.conftest import cli

TOKEN = b"guards-token-0123456789abcdef-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def worker(peers: int = 1, **settings):
    """Real workers serving on OS-chosen ports; yields worker 0 (the others only receive and drop)."""
    addrs = ["127.0.0.1:0"] if peers == 1 else [f"127.0.0.1:{free_port()}" for _ in range(peers)]
    servers = [WorkerServer(i, addrs[i], addrs, TOKEN, settings=dataclasses.replace(DEFAULTS, **settings))
               for i in range(peers)]
    tasks = []
    for srv in servers:
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(srv.serve(ready)))
        await asyncio.wait_for(ready.wait(), 10)
        srv.addr = f"127.0.0.1:{srv.port}"
    try:
        yield servers[0]
    finally:
        for srv, task in zip(servers, tasks):
            srv.stop()
            await asyncio.wait_for(task, 10)


async def replies(client: WorkerClient, n: int, timeout: float = 10.0) -> list[dict]:
    out = []
    while len(out) < n:
        msg = await client.recv(timeout)
        if msg["t"] != "pong":
            out.append(msg)
    return out


# -- what a frame may decode into ------------------------------------------------------------
def test_a_frame_of_empty_maps_is_refused_before_it_is_built():
    n = 1 << 20
    part = b"\xdd" + struct.pack(">I", n) + b"\x80" * n
    body = b"\x81\xa1t\x94" + part * 4                # {"t": [[{}, {}, ... 1M times] x 4]}: 4 MiB
    tracemalloc.start()
    try:
        with pytest.raises(BadMessage, match="more than"):
            decode_body(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"decoding the bomb peaked at {peak >> 20} MiB"


def test_nesting_and_container_lengths_are_bounded():
    deep = b"\x81\xa1t" + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(BadMessage):
        decode_body(deep)
    ints = msgpack.packb({"t": list(range(2_000_000))})
    with pytest.raises(BadMessage):
        decode_body(ints)


def test_the_decoded_cost_of_a_frame_counts_its_containers():
    data = encode_frame({"t": "x", "b": b"\x00" * 10_000})
    maps = encode_frame({"t": [{} for _ in range(10_000)]})
    (_, n1, c1), = FrameDecoder().feed_costed(data)
    (_, n2, c2), = FrameDecoder().feed_costed(maps)
    assert c1 - n1 < 1000                 # bins cost their bytes
    assert c2 > 50 * n2                   # 10,000 dicts cost far more than their 10 kB on the wire


def test_early_peer_data_is_bounded_by_its_decoded_size():
    """A peer (it holds the token) sends a loaded-but-not-started job frames of empty maps: the worker
    closes the connection once their decoded cost passes the bound, long before their wire bytes do."""
    limit = 8 << 20

    async def main():
        async with worker(peers=2, early_limit_bytes=limit) as srv:
            coord = await WorkerClient.connect(srv.addr, TOKEN)
            await coord.send(make("load", job="j1", files=[]))
            assert (await replies(coord, 1))[0]["t"] == "loaded"
            frames, writer, _ = await client_connect(srv.addr, TOKEN, "peer", 1, max_frame=1 << 22)
            frame = encode_frame(make("peer", job="j1", tag="x", src=1, body={"m": [{} for _ in range(60_000)]}))
            sent = 0
            try:
                for _ in range(400):                 # 400 x 60 kB = 24 MB of wire bytes at most
                    writer.write(frame)
                    await asyncio.wait_for(writer.drain(), 5)
                    sent += len(frame)
                await asyncio.wait_for(frames.reader.read(), 5)     # EOF: the worker closed us
            except (ConnectionError, OSError):
                pass
            held = srv.early_bytes
            writer.close()
            await coord.close()
            return sent, held, len(frame)

    sent, held, size = asyncio.run(main())
    assert sent < limit, f"the worker took {sent} wire bytes of early data (bound {limit} decoded)"
    assert held <= limit


# -- write backpressure -----------------------------------------------------------------------
def test_a_client_that_never_reads_its_replies_is_not_read_from(monkeypatch):
    seen: list = []
    made = inbound.InboundConnection.connection_made

    def spy(self, transport):
        seen.append(transport)
        made(self, transport)
    monkeypatch.setattr(inbound.InboundConnection, "connection_made", spy)
    pings = 100_000

    async def main():
        async with worker() as srv:
            frames, writer, _ = await client_connect(srv.addr, TOKEN, "coord", -1)
            blob = b"".join(encode_frame(make("ping", seq=i)) for i in range(pings))
            writer.write(blob)                   # never drained by us, never read
            peak = 0
            for _ in range(40):
                await asyncio.sleep(0.05)
                peak = max(peak, max(t.get_write_buffer_size() for t in seen if not t.is_closing()))
            writer.close()
            pong = len(encode_frame(make("pong", seq=pings, id=0, info=srv.info())))
            return peak, pong

    peak, pong = asyncio.run(main())
    ping = len(encode_frame(make("ping", seq=pings)))
    # The high-water mark plus the replies to one read (asyncio reads up to 256 KiB at a time).
    bound = DEFAULTS.write_high_water + (256 << 10) // ping * pong + pong
    assert peak <= bound, f"the worker buffered {peak >> 20} MiB of unread replies (bound {bound >> 20} MiB)"


# -- connections that never authenticate -----------------------------------------------------------
def test_unauthenticated_connections_are_capped_and_honest_clients_still_get_in():
    cap = 16

    async def main():
        async with worker(max_pre_auth=cap, handshake_timeout=60) as srv:
            socks = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(120)]
            await asyncio.sleep(0.5)
            pending = len(srv.pre_auth)
            closed = 0
            for r, _ in socks:
                try:
                    data = await asyncio.wait_for(r.read(), 0.2)      # challenge, then EOF if closed
                    closed += 1 if data is not None else 0
                except TimeoutError:
                    pass
            client = await WorkerClient.connect(srv.addr, TOKEN)      # a coordinator gets in at once
            await client.send(make("ping", seq=1))
            pong = await client.recv(5)
            await client.close()
            for _, w in socks:
                w.close()
            return pending, closed, pong, srv.refusals

    pending, closed, pong, refused = asyncio.run(main())
    assert pending <= cap
    assert closed >= 120 - cap and refused >= 120 - cap
    assert pong["t"] == "pong" and pong["info"]["refused"] == refused


def test_refusals_are_counted_and_their_log_lines_rate_limited(caplog):
    async def main():
        async with worker(refusal_log_burst=5, refusal_log_rate=0.001) as srv:
            for _ in range(60):
                r, w = await asyncio.open_connection("127.0.0.1", srv.port)
                w.write(HEADER.pack(5) + b"\xc1\xc1\xc1\xc1\xc1")       # garbage instead of a hello
                await asyncio.wait_for(r.read(), 5)
                w.close()
            return srv.refusals

    with caplog.at_level(logging.WARNING, logger="cluster"):
        refused = asyncio.run(main())
    lines = [r for r in caplog.records if "event=handshake_refused" in r.getMessage()]
    assert refused == 60
    assert 1 <= len(lines) <= 6, f"{len(lines)} log lines for 60 refusals"


# -- active jobs ------------------------------------------------------------------------------------
def test_loads_beyond_the_caps_are_refused_as_busy():
    async def main():
        async with worker(max_jobs_per_connection=4, max_jobs=6) as srv:
            a = await WorkerClient.connect(srv.addr, TOKEN)
            b = await WorkerClient.connect(srv.addr, TOKEN)
            for i in range(4):
                await a.send(make("load", job=f"a{i}", files=[]))
            got_a = await replies(a, 4)
            for i in range(5):
                await b.send(make("load", job=f"b{i}", files=[]))
            got_b = await replies(b, 5)
            active = len(srv.jobs)
            for c, got in ((a, got_a), (b, got_b)):
                for m in got:
                    await c.send(make("abort", job=m["job"]))
                await c.close()
            return got_a, got_b, active

    got_a, got_b, active = asyncio.run(main())
    assert [m["t"] for m in got_a] == ["loaded"] * 4
    kinds = sorted(m.get("kind", m["t"]) for m in got_b)
    assert kinds == ["busy"] * 3 + ["loaded"] * 2          # the worker's cap of 6, not the connection's
    assert active == 6


def test_many_loads_on_one_connection_make_at_most_the_per_connection_cap():
    async def main():
        async with worker() as srv:
            c = await WorkerClient.connect(srv.addr, TOKEN)
            for i in range(200):
                await c.send(make("load", job=f"j{i}", files=[]))
            got = await replies(c, 200)
            active = len(srv.jobs)
            await c.close()
            return got, active

    got, active = asyncio.run(main())
    assert active <= DEFAULTS.max_jobs_per_connection
    assert sum(m["t"] == "loaded" for m in got) == active
    assert all(m["t"] == "loaded" or m["kind"] == "busy" for m in got)


# -- a connection claiming to be a peer ---------------------------------------------------------------
async def _running_job(srv) -> WorkerClient:
    """A job of ranks [0, 1] running on worker 0 and waiting for worker 1 (who never starts it)."""
    coord = await WorkerClient.connect(srv.addr, TOKEN)
    await coord.send(make("load", job="j", files=[], dead_after=60))
    assert (await replies(coord, 1))[0]["t"] == "loaded"
    await coord.send(make("run", job="j", op="median", params={}, ranks=[0, 1], total=1, timeout=60))
    await asyncio.sleep(0.3)
    return coord


def test_a_fake_peer_that_hangs_up_does_not_fail_running_jobs():
    async def main():
        async with worker(peers=2, job_timeout=30) as srv:
            coord = await _running_job(srv)
            for _ in range(5):
                _, w, _ = await client_connect(srv.addr, TOKEN, "peer", 1)
                w.close()
            try:
                msg = await replies(coord, 1, timeout=1.5)
            except TimeoutError:
                msg = None
            still = "j" in srv.jobs
            await coord.send(make("abort", job="j"))
            await coord.close()
            return msg, still

    msg, still = asyncio.run(main())
    assert msg is None and still, f"a peer connection that carried nothing failed the job: {msg}"


def test_a_peer_connection_that_carried_a_jobs_data_fails_it_when_it_closes():
    async def main():
        async with worker(peers=2, job_timeout=30) as srv:
            coord = await _running_job(srv)
            _, w, _ = await client_connect(srv.addr, TOKEN, "peer", 1)
            w.write(encode_frame(make("peer", job="j", tag="other", src=1, body={})))
            await w.drain()
            await asyncio.sleep(0.2)
            w.close()
            (msg,) = await replies(coord, 1, timeout=10)
            await coord.close()
            return msg

    msg = asyncio.run(main())
    assert msg["t"] == "error" and msg["kind"] == "peer"


# -- the token ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["x", "a" * 40, "0123456789abcdef" "0123456789abcde"])
def test_a_worker_refuses_a_token_under_128_bits(token):
    r = cli("worker", "--id", "0", "--listen", "127.0.0.1:0", "--peers", "127.0.0.1:0",
            env={"CLUSTER_TOKEN": token}, timeout=20)
    assert r.returncode == 2
    assert "secrets.token_hex(32)" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- reads that hang ------------------------------------------------------------------------------------
def test_a_stuck_read_makes_the_worker_report_itself_unhealthy_and_the_job_runs_elsewhere(tmp_path, monkeypatch):
    """A read that never returns (a hung mount) passes its deadline: the load fails as the worker's fault,
    the worker's pong says it is unhealthy and it refuses new loads, the coordinator re-runs the job on
    the other worker (an exact answer), and once the read returns the worker is healthy again."""
    import threading

    import numpy as np

    from shardstats.coordinator.job import ping_all, run_job
    from shardstats.coordinator.spec import job_spec
    from shardstats.worker import jobs
    release = threading.Event()
    real = jobs.read_shard
    first = [True]

    def hanging(ref, *a, **kw):
        if ref.path.endswith("slow.txt") and first[0]:
            first[0] = False
            release.wait(30)
        return real(ref, *a, **kw)
    monkeypatch.setattr(jobs, "read_shard", hanging)
    rng = np.random.default_rng(1)
    parts = [rng.integers(-9, 9, 400) for _ in range(3)]
    for name, p in zip(("slow.txt", "b.txt", "c.txt"), parts):
        (tmp_path / name).write_text("".join(f"{v}\n" for v in p.tolist()))
    values = np.sort(np.concatenate(parts))

    async def main():
        async with worker(peers=2, read_timeout=0.5) as srv:
            addrs = [srv.addr, srv.peers[1]]
            rep = await run_job(addrs, TOKEN, job_spec("median", str(tmp_path), {}, timeout=30))
            stuck_rows = await ping_all(addrs, TOKEN)
            c = await WorkerClient.connect(srv.addr if stuck_rows[0]["healthy"] is False else addrs[1], TOKEN)
            await c.send(make("load", job="later", files=[]))
            refused = (await replies(c, 1))[0]
            await c.close()
            release.set()
            for _ in range(100):
                rows = await ping_all(addrs, TOKEN)
                if all(r["healthy"] for r in rows):
                    break
                await asyncio.sleep(0.05)
            return rep, stuck_rows, refused, rows

    rep, stuck_rows, refused, rows = asyncio.run(main())
    assert (rep.result["lower"], rep.result["upper"]) == (int(values[599]), int(values[600]))
    assert rep.attempts == 2 and len(rep.lost_workers) == 1 and "made no progress" in rep.lost_workers[0]["reason"]
    assert sorted(r["healthy"] for r in stuck_rows) == [False, True]
    assert refused["t"] == "error" and refused["kind"] == "unhealthy"
    assert all(r["healthy"] for r in rows)


# -- a worker's own settings reach its peer links ------------------------------------------------
async def test_a_workers_settings_reach_its_peer_links():
    """The queue per peer and the send deadline are the daemon's settings, not the global defaults: the
    memory a worker reserves for its link queues (``send_queue_frames`` frames a peer) is what they hold."""
    async with worker(peers=2, send_queue_frames=3, send_timeout=0.5, connect_timeout=1.5) as w:
        link = w.links[1]
        assert (link.queue.maxsize, link.send_timeout, link.connect_timeout) == (3, 0.5, 1.5)


async def test_a_peer_that_accepts_nothing_fails_the_send_at_the_workers_deadline():
    """A link whose sender never drains (a peer that takes nothing): the frames past the queue's length wait,
    and the send fails at the configured deadline naming the peer -- not at the 30 s default."""
    from shardstats.errors import PeerFailure
    from shardstats.worker.net.links import PeerLink
    settings = dataclasses.replace(DEFAULTS, send_queue_frames=2, send_timeout=0.2)
    link = PeerLink(0, 1, "127.0.0.1:9", TOKEN, on_failure=lambda *_: None, settings=settings)
    await link.send(b"a", "j")
    await link.send(b"b", "j")
    assert link.queued_bytes == 2
    async with asyncio.timeout(5):
        with pytest.raises(PeerFailure, match=r"worker 1 at 127\.0\.0\.1:9 accepted nothing for 0\.2s"):
            await link.send(b"c", "j")
    assert link.queued_bytes == 2          # the refused frame is not counted as held


# -- a busy worker's refusal is tried again ----------------------------------------------------------
def _busy_job(tmp_path, hold_for: float | None, timeout: float = 30.0):
    """A mode job on a worker whose one job slot another client holds; the holder lets go after ``hold_for``
    seconds (None: never).  Returns the job's report or the error it raised, and the worker's refusals."""
    import numpy as np
    from shardstats.coordinator.job import run_job
    from shardstats.coordinator.spec import job_spec
    values = np.array([5, -3, 5, 7, 7, 7, np.iinfo(np.int64).min], dtype=np.int64)
    np.save(tmp_path / "a.npy", values)

    async def main():
        async with worker(max_jobs=1) as srv:
            holder = await WorkerClient.connect(srv.addr, TOKEN)
            await holder.send(make("load", job="held", files=[], dead_after=60))
            assert [m["t"] for m in await replies(holder, 1)] == ["loaded"]
            job = asyncio.create_task(run_job([srv.addr], TOKEN, job_spec("mode", str(tmp_path / "a.npy"),
                                                                          timeout=timeout)))
            try:
                if hold_for is not None:
                    await asyncio.sleep(hold_for)
                    await holder.send(make("abort", job="held"))
                async with asyncio.timeout(timeout + 10):
                    try:
                        out = await job
                    except Exception as exc:  # noqa: BLE001 - the test inspects it
                        out = exc
            finally:
                job.cancel()
                await holder.close()
            return out, srv.metrics
    return asyncio.run(main())


def test_a_busy_worker_is_asked_again_and_the_job_then_runs(tmp_path, caplog):
    """Before, the refusal came back as a generic job error and the job failed at once; now the coordinator
    pauses and asks again, and the job runs exactly once the slot is free."""
    with caplog.at_level(logging.WARNING, logger="cluster"):
        rep, _ = _busy_job(tmp_path, hold_for=0.4)
    assert not isinstance(rep, BaseException), rep
    assert (rep.result["value"], rep.result["count"]) == (7, 3)       # Counter over the values: 7 three times
    assert rep.attempts == 1 and rep.lost_workers == []                 # a wait, not a lost attempt
    assert any("event=job_busy" in r.getMessage() for r in caplog.records)


def test_a_worker_busy_past_the_deadline_fails_the_job_in_one_line_with_exit_1(tmp_path):
    from shardstats.errors import WorkerBusy
    err, _ = _busy_job(tmp_path, hold_for=None, timeout=1.0)
    assert isinstance(err, WorkerBusy) and err.exit_code == 1
    assert "\n" not in str(err)
    assert str(err).startswith("worker 0 is busy: 1 jobs active (limit 1); still busy after ")
    assert "tries in 1 s (--timeout)" in str(err)


async def test_a_peer_hanging_up_while_the_worker_stops_is_no_lost_peer(caplog):
    """Workers stopped together close their links in any order: once a worker is stopping, a peer's end
    closing is the shutdown, not a fault -- no ``peer_link_lost`` after ``worker_stopping`` (a race the full
    suite caught in tests/test_logs.py), and no job failed for it."""
    from shardstats.worker.net.links import PeerLink

    class Writer:
        def close(self) -> None:
            pass
    failures = []
    with caplog.at_level(logging.INFO, logger="cluster"):
        for stopping in (False, True):
            link = PeerLink(0, 1, "127.0.0.1:9", TOKEN, on_failure=lambda p, e, s=stopping: failures.append((s, p)))
            link.stopping = stopping
            reader = asyncio.StreamReader()
            reader.feed_eof()
            link._writer = writer = Writer()
            async with asyncio.timeout(5):
                await link._watch(reader, writer)
            assert link._writer is None
    assert failures == [(False, 1)]
    assert sum("event=peer_link_lost" in r.getMessage() for r in caplog.records) == 1
