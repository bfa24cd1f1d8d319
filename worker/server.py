"""The worker daemon: serves the coordinator and its peers on one TCP port.

An inbound connection is a small state machine: send a challenge, accept only a
valid hello (under a small frame limit and a deadline, so garbage and slowloris
clients cost nothing), then route messages: a peer's data goes to its job's
mailbox, a coordinator's requests become tasks of the worker's task group.
Outbound data to peers goes through ``PeerLink``s (worker/peers.py).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from protocol.errors import HandshakeFailed, ProtocolError
from protocol.frames import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from protocol.handshake import ServerHandshake
from protocol.messages import PROTOCOL_VERSION, make, validate
from worker import jobs, logs, memory, progress
from worker.errors import JobError, PeerFailure
from worker.peers import PeerLink, parse_addr

HANDSHAKE_TIMEOUT = 5.0
PRE_AUTH_MAX_FRAME = 4096
EARLY_LIMIT_BYTES = 1 << 30   # what peers may send a job before its own "run" arrives here
# A coordinator pings every worker during its jobs (coordinator/job.py); a worker whose
# coordinator stays silent this long (unless the load message says otherwise) drops its jobs.
COORDINATOR_SILENCE = 10.0
DEFAULT_JOB_TIMEOUT = 120.0
VERSION = "0.1.0"


class WorkerServer:
    def __init__(self, worker_id: int, listen: str, peers: list[str], token: bytes, *, root: str = ".",
                 job_timeout: float = DEFAULT_JOB_TIMEOUT, max_frame: int = DEFAULT_MAX_FRAME,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        if not 0 <= worker_id < len(peers):
            raise ValueError(f"worker id {worker_id} is not an index into the {len(peers)} peer addresses")
        self.id = worker_id
        self.listen = listen
        self.peers = peers
        self.token = token
        self.root = root
        self.job_timeout = job_timeout
        self.max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        self.jobs: dict[str, jobs.Job] = {}
        self.finished: dict[str, float] = {}
        self.failed: set[str] = set()        # finished jobs that ended in failure or abort (a subset of finished)
        self.jobs_run = 0
        self.last_job: dict[str, Any] = {}
        self.started = time.time()
        self.links: dict[int, PeerLink] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------
    async def serve(self, ready: asyncio.Event | None = None) -> None:
        host, port = parse_addr(self.listen)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for pid, addr in enumerate(self.peers):
                if pid != self.id:
                    link = PeerLink(self.id, pid, addr, self.token, self._peer_failed, self.failed.__contains__)
                    self.links[pid] = link
                    tg.create_task(link.run())
            server = await loop.create_server(lambda: InboundConnection(self), host, port, reuse_address=True)
            self.port = server.sockets[0].getsockname()[1]
            logs.event("worker_listening", addr=f"{host}:{self.port}", peers=len(self.peers))
            if ready is not None:
                ready.set()
            try:
                await self._stop.wait()
            finally:
                logs.event("worker_stopping")
                server.close()
                for job in list(self.jobs.values()):
                    self._drop(job.id, JobError("worker shutting down"))
                for t in list(tg._tasks):  # noqa: SLF001 - cancel the links we own
                    t.cancel()
        self._tg = None

    def stop(self) -> None:
        self._stop.set()

    def spawn(self, coro) -> asyncio.Task:
        assert self._tg is not None
        return self._tg.create_task(coro)

    # -- jobs ----------------------------------------------------------------
    def _peer_failed(self, peer_id: int, exc: BaseException) -> None:
        """A link to or from ``peer_id`` broke: no running job that includes that worker can finish."""
        for job in self.jobs.values():
            if job.comm is not None and peer_id in job.comm.ranks:
                job.comm.mailbox.fail(PeerFailure(f"worker {self.id} lost worker {peer_id}: "
                                                  f"{exc or type(exc).__name__}"))

    def _drop(self, job_id: str, exc: BaseException | None = None) -> None:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        self.finished[job_id] = time.time()
        if exc is not None:
            self.failed.add(job_id)
        if len(self.finished) > 1000:
            for k in sorted(self.finished, key=self.finished.get)[:500]:
                del self.finished[k]
                self.failed.discard(k)
        if job.comm is not None and exc is not None:
            job.comm.mailbox.fail(exc)
        if job.task is not None and not job.task.done():
            job.task.cancel()
        job.values = None
        if not self.jobs:
            memory.release()

    def deliver_peer(self, peer_id: int, msg: dict, nbytes: int) -> None:
        job = self.jobs.get(msg["job"])
        if job is None or job.comm is None:
            if job is None and msg["job"] not in self.finished:
                logs.event("drop_unknown_job", logging.DEBUG, job=msg["job"], peer=peer_id)
            if job is not None:
                # Under credit flow control a peer sends only asks and small collective messages
                # before our "run" (data needs our credits); --shuffle naive may send data early.
                # Beyond this bound it is a misbehaving peer, not a slow start.
                job.early_bytes += nbytes
                if job.early_bytes > EARLY_LIMIT_BYTES:
                    raise ProtocolError(f"worker {peer_id} sent over {EARLY_LIMIT_BYTES >> 20} MiB for job "
                                        f"{msg['job']} before it started here")
                job.early.append((peer_id, msg, nbytes))
            return
        comm = job.comm
        if not (0 <= msg["src"] < comm.size) or comm.ranks[msg["src"]] != peer_id:
            raise ProtocolError(f"worker {peer_id} sent as rank {msg['src']} of job {msg['job']}")
        comm.deliver(msg["src"], msg["tag"], msg["body"], nbytes)

    async def handle_request(self, msg: dict, reply, conn: "InboundConnection") -> None:
        t = msg["t"]
        if t == "ping":
            reply(make("pong", seq=msg["seq"], id=self.id, info=self.info()))
            return
        job_id = msg["job"]
        if t == "abort":
            if job_id in self.jobs:
                logs.event("job_aborted", job=job_id)
            self._drop(job_id, JobError("aborted by the coordinator"))
            reply(make("aborted", job=job_id))
            return
        try:
            if t == "load":
                if job_id in self.jobs or job_id in self.finished:
                    raise JobError(f"job {job_id} already exists on worker {self.id}")
                job = jobs.Job(job_id, [str(f) for f in msg["files"]], column=_column(msg.get("column")),
                               report=reply, progress_interval=progress.interval_from(msg.get("progress")))
                job.task = asyncio.current_task()      # an abort during the load cancels it
                self.jobs[job_id] = job
                conn.watch_job(job_id, msg.get("dead_after"))
                n = await jobs.load(job, self.root)
                reply(make("loaded", job=job_id, values=n, seconds=job.load_seconds))
            elif t == "run":
                job = self.jobs.get(job_id)
                if job is None:
                    raise JobError(f"job {job_id} is not loaded on worker {self.id}")
                job.task = asyncio.current_task()
                out = await self._run(job, msg)
                self.jobs_run += 1
                self.last_job = {"job": job_id, "op": msg["op"], "seconds": out["stats"]["seconds"],
                                 "bytes_sent": sum(out["stats"]["bytes_sent"])}
                logs.event("job_done", job=job_id, op=msg["op"], seconds=round(out["stats"]["seconds"], 3))
                reply(make("done", job=job_id, **out))
                self._drop(job_id)
        except asyncio.CancelledError:
            if job_id in self.jobs or not self._stop.is_set():
                self._drop(job_id)
            raise
        except Exception as exc:  # noqa: BLE001 - the request boundary: report, keep serving
            cause = root_cause(exc)
            if isinstance(cause, JobError):
                kind, text = cause.kind, str(cause)
                logs.event("job_failed", logging.WARNING, job=job_id, kind=kind, error=text)
            else:
                kind, text = "internal", f"worker {self.id}: {cause!r}"
                logs.event("job_crashed", logging.ERROR, job=job_id, error=repr(cause))
            reply(make("error", job=job_id, kind=kind, message=text))
            self._drop(job_id, cause if isinstance(cause, JobError) else JobError(text))

    async def _run(self, job: jobs.Job, msg: dict) -> dict:
        ranks = [int(r) for r in msg["ranks"]]
        timeout = float(msg["params"].get("timeout") or self.job_timeout)
        job.comm = jobs.make_comm(job, self.id, msg["op"], ranks, self.links, timeout)
        early, job.early = job.early, []
        for peer_id, m, nbytes in early:     # peer messages that arrived before our "run"
            self.deliver_peer(peer_id, m, nbytes)
        return await jobs.run(job, job.comm, msg["op"], msg["params"])

    def info(self) -> dict:
        return {"version": VERSION, "protocol": PROTOCOL_VERSION, "addr": self.peers[self.id],
                "jobs_run": self.jobs_run, "active_jobs": len(self.jobs), "last_job": self.last_job,
                "uptime": round(time.time() - self.started, 1)}


def _column(value: object) -> str | int | None:
    """The load message's optional ``column`` (a name or an index); anything else is a protocol error."""
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise JobError(f"load.column has type {type(value).__name__}, expected a string or an integer")


def root_cause(exc: BaseException) -> BaseException:
    """The most telling leaf of an exception group (a JobError if there is one): what the user should read."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = []
        stack = [exc]
        while stack:
            e = stack.pop()
            if isinstance(e, BaseExceptionGroup):
                stack.extend(e.exceptions)
            else:
                leaves.append(e)
        real = [e for e in leaves if not isinstance(e, asyncio.CancelledError)] or leaves
        return next((e for e in real if isinstance(e, JobError) and not isinstance(e, PeerFailure)),
                    next((e for e in real if isinstance(e, JobError)), real[0]))
    return exc


class InboundConnection(asyncio.Protocol):
    """One inbound connection: handshake under a small frame limit and a deadline, then routing.

    Anything that breaks the protocol (garbage, a frame over the limit, a message of
    the wrong shape, a peer speaking for another rank, a hello without a valid token
    proof or with an id that is not a peer's) closes this connection only; it is
    logged and the worker keeps serving everyone else.
    """

    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(max_frame=PRE_AUTH_MAX_FRAME)
        self.hs = ServerHandshake(server.token, server.id)
        self.role: str | None = None
        self.peer_id: int | None = None
        self.jobs: set[str] = set()
        self.transport: asyncio.Transport | None = None
        self.peername = None
        self._deadline: asyncio.TimerHandle | None = None
        self._silence_limit: float | None = None     # coordinator connections with jobs: drop them after this
        self._last_rx = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peername = transport.get_extra_info("peername")
        loop = asyncio.get_running_loop()
        self._last_rx = loop.time()
        transport.write(encode_frame(self.hs.challenge()))
        self._deadline = loop.call_later(self.server.handshake_timeout, self._too_slow)

    def _too_slow(self) -> None:
        logs.event("handshake_timeout", logging.WARNING, remote=self.peername)
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def reply(self, msg: dict) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(msg, self.server.max_frame))

    def data_received(self, data: bytes) -> None:
        self._last_rx = asyncio.get_running_loop().time()
        try:
            for msg, nbytes in self.decoder.feed_sized(data):
                if self.role is None:
                    self._handshake(msg)
                    continue
                validate(msg)
                if self.role == "peer":
                    if msg["t"] != "peer":
                        raise ProtocolError(f"peer sent a {msg['t']} message")
                    self.server.deliver_peer(self.peer_id, msg, nbytes)
                elif msg["t"] in ("ping", "load", "run", "abort"):
                    self.server.spawn(self.server.handle_request(msg, self.reply, self))
                else:
                    raise ProtocolError(f"coordinator sent a {msg['t']} message")
        except ProtocolError as exc:
            event = "handshake_refused" if self.role is None else "protocol_error"
            logs.event(event, logging.WARNING, remote=self.peername, role=self.role,
                       peer=self.peer_id, error=exc)
            self._close()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # A shape validate() let through that the code behind it did not expect: still the peer's fault.
            logs.event("protocol_error", logging.WARNING, remote=self.peername, role=self.role,
                       peer=self.peer_id, error=repr(exc))
            self._close()

    def _handshake(self, msg: dict) -> None:
        welcome = self.hs.receive_hello(msg)
        role, pid = self.hs.peer_role, self.hs.peer_id
        # Checked before the welcome goes out: a refused client learns nothing.
        if role == "peer" and (not 0 <= pid < len(self.server.peers) or pid == self.server.id):
            raise HandshakeFailed(f"peer claims worker id {pid}, which is not a peer of worker {self.server.id}")
        self.reply(welcome)
        self.role, self.peer_id = role, pid
        self.decoder.max_frame = self.server.max_frame
        if self._deadline is not None:
            self._deadline.cancel()
        logs.event("connection_authenticated", logging.DEBUG, role=role, peer=pid, remote=self.peername)

    # -- the coordinator's liveness ------------------------------------------------
    def watch_job(self, job_id: str, dead_after: object) -> None:
        """Ties a job to this coordinator connection; its silence past ``dead_after`` s drops the job."""
        self.jobs.add(job_id)
        limit = float(dead_after) if isinstance(dead_after, (int, float)) and not isinstance(dead_after, bool) \
            and 0 < dead_after < 3600 else COORDINATOR_SILENCE
        self._silence_limit = limit if self._silence_limit is None else min(limit, self._silence_limit)
        if self._watchdog is None:
            self._arm()

    def _arm(self) -> None:
        assert self._silence_limit is not None
        self._watchdog = asyncio.get_running_loop().call_later(self._silence_limit / 4, self._check_silence)

    def _check_silence(self) -> None:
        self._watchdog = None
        live = [j for j in self.jobs if j in self.server.jobs]
        if not live or self.transport is None or self.transport.is_closing():
            self._silence_limit = None
            return
        assert self._silence_limit is not None
        silent = asyncio.get_running_loop().time() - self._last_rx
        if silent > self._silence_limit:
            logs.event("coordinator_silent", logging.WARNING, remote=self.peername, seconds=round(silent, 2),
                       jobs=",".join(live))
            for job_id in live:
                self.server._drop(job_id, JobError(f"coordinator silent for {silent:.1f}s"))
            self._close()
            return
        self._arm()

    def connection_lost(self, exc) -> None:
        for timer in (self._deadline, self._watchdog):
            if timer is not None:
                timer.cancel()
        if self.role == "coord":
            # A coordinator that went away leaves no one to collect its jobs: cancel them.
            for job_id in self.jobs:
                self.server._drop(job_id, JobError("coordinator disconnected"))
        elif self.role == "peer" and self.peer_id is not None:
            # The peer's end of its link to us closed: it died, restarted or broke the protocol.
            self.server._peer_failed(self.peer_id, exc or ConnectionError("inbound connection closed"))
