"""The worker daemon: serves the coordinator and its peers on one TCP port.

An inbound connection is a small state machine: send a challenge, accept only a
valid hello (under a small frame limit and a deadline, so garbage and slowloris
clients cost nothing), then route messages: a peer's data goes to its job's
mailbox, a coordinator's requests become tasks of the worker's task group.
Outbound data to peers goes through ``PeerLink``s (``worker.net.links``).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from shardstats.protocol.errors import ProtocolError
from shardstats.protocol.messages import PROTOCOL_VERSION, make
from shardstats.worker import jobs
from shardstats import logs
from shardstats.worker import memory, spill
from shardstats.worker.spill import SpillDir
from shardstats.worker.comm import progress
from shardstats.errors import JobError, JobTimeout, PeerFailure, ShardstatsError, UsageError, WorkerUnhealthy
from shardstats.worker.io.listing import ShardRef
from shardstats.worker.ops import registry
from shardstats.worker.net.inbound import InboundConnection
from shardstats.worker.httpd import HttpServer, Request, Response
from shardstats.worker.metrics import WorkerMetrics
from shardstats.worker.net.links import PeerLink
from shardstats.worker.net.dial import parse_addr
from shardstats.tls import TLSFiles
from shardstats._version import __version__
from shardstats.settings import DEFAULTS, Settings

COLLECT_AFTER = 0.1       # seconds after a failed job's drop that its garbage is collected (WorkerServer._drop)

# A coordinator pings every worker during its jobs (coordinator/job.py); a worker whose
# coordinator stays silent this long (unless the load message says otherwise) drops its jobs.


class _Shutdown(Exception):
    """Raised inside the server's task group to end it: the group then cancels all it owns."""


class WorkerServer:
    def __init__(self, worker_id: int, listen: str, peers: list[str], token: bytes, *, root: str = ".",
                 settings: Settings = DEFAULTS, tls: TLSFiles | None = None, confine: bool = False,
                 http_port: int | None = None, metrics_auth: bool | None = None) -> None:
        """``confine``: every path a job names must resolve (links included) under ``root``; a worker
        started by ``cluster up`` on the coordinator's own host does not confine (it reads the user's
        files wherever they are), any other worker should (``cluster worker`` does by default).

        ``http_port``: where the HTTP endpoint (``/metrics``; worker/httpd.py) listens, on the host of
        ``listen``: None for none, 0 for any free port (``self.http_port`` once serving); ``metrics_auth``:
        whether /metrics asks for the token (None: ``settings.metrics_auth``)."""
        if not 0 <= worker_id < len(peers):
            raise ValueError(f"worker id {worker_id} is not an index into the {len(peers)} peer addresses")
        self.id = worker_id
        self.listen = listen
        self.peers = peers
        self.token = token
        # Mutual TLS on every connection, or none (shardstats/tls.py); the contexts load the files now, so a
        # bad certificate stops the daemon at start, not at its first connection.
        self.tls_context = tls.server_context() if tls is not None else None
        self._tls_client = tls.client_context() if tls is not None else None
        self.root = root
        self.settings = settings
        from shardstats.worker.cache import DatasetCache
        from shardstats.worker.comm.shuffle import DEFAULT_CHUNK_BYTES
        self.access = jobs.Access(root, confine, settings.memory_limit or memory.machine_budget(), DatasetCache(),
                                  settings.spill_dir,
                                  reserved=settings.send_queue_frames * DEFAULT_CHUNK_BYTES * (len(peers) - 1),
                                  keyed_overhead=settings.keyed_overhead)
        spill.sweep(settings.spill_dir or spill.default_base())    # what a killed worker of this machine left
        from shardstats.worker.engine import aggregate
        aggregate.configure(self.access.budget, settings.spill_dir or spill.default_base())
        self.metrics = WorkerMetrics(self)
        self.http: HttpServer | None = None
        self.http_port = http_port
        if http_port is not None:
            # The worker's own certificate, no client certificate asked (Prometheus rarely has one).
            self.http = HttpServer(token, settings=settings, name=f"worker {worker_id}",
                                   ssl_context=tls.http_server_context() if tls is not None else None)
            self.http.route("GET", "/metrics", self._metrics,
                            auth=settings.metrics_auth if metrics_auth is None else metrics_auth)
        self.stuck = jobs.StuckReads()
        self.jobs: dict[str, jobs.Job] = {}
        self.finished: dict[str, float] = {}
        self.failed: set[str] = set()        # finished jobs that ended in failure or abort (a subset of finished)
        self.jobs_run = 0
        self.jobs_failed = 0
        self.bytes_sent_total = 0            # over every job this worker finished: what `status --watch` shows
        self.loading = 0                      # admitted loads whose job is not registered yet
        self.last_job: dict[str, Any] = {}
        self.started = time.time()
        self.links: dict[int, PeerLink] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self.port: int | None = None
        self.pre_auth: dict[InboundConnection, None] = {}   # in arrival order: the oldest is evicted first
        self.connections: set[InboundConnection] = set()
        self.early_bytes = 0                  # decoded cost of peer data held for jobs not started yet
        self.refusals = 0                     # pre-auth connections refused or evicted, ever
        self._refusals_logged = 0
        self._log_budget = float(settings.refusal_log_burst)   # a token bucket for refusal log lines
        self._log_budget_at = time.monotonic()
        from shardstats.worker.live.service import LiveService
        self.live = LiveService(self)         # live top-K: a service of every worker, not a job (worker/live/)

    # -- lifecycle -------------------------------------------------------
    async def serve(self, ready: asyncio.Event | None = None, *, handle_signals: bool = False) -> None:
        """Serves until ``stop()`` (or SIGTERM/SIGINT when ``handle_signals``: the daemon's own process).

        In-process clusters (tests, ``shardstats.testing``) leave the loop's signals alone."""
        host, port = parse_addr(self.listen)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT) if handle_signals else ():
            try:
                loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    await self._serve_in(tg, loop, host, port, ready)
            except* _Shutdown:
                pass         # the way out: the group cancelled every link and request task it owns
        except BaseExceptionGroup as eg:
            # A port that cannot be bound at start is the operator's to fix: the OSError itself, which the
            # CLI turns into one line (not a traceback of the task group that wrapped it).
            bind = self.port is None or (self.http is not None and self.http.port is None)
            cause = root_cause(eg)
            if bind and isinstance(cause, OSError):
                self._tg = None
                raise cause from None
            raise
        self._tg = None

    async def _serve_in(self, tg: asyncio.TaskGroup, loop, host: str, port: int, ready: asyncio.Event | None) -> None:
        for pid, addr in enumerate(self.peers):
            if pid != self.id:
                link = PeerLink(self.id, pid, addr, self.token, self._peer_failed, self.failed.__contains__,
                                settings=self.settings, tls=self._tls_client)
                self.links[pid] = link
                tg.create_task(link.run())
        tg.create_task(self.live.run())
        server = await loop.create_server(lambda: InboundConnection(self), host, port, reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        if self.http is not None:
            await self._start_http(tg, host)
        logs.event("worker_listening", addr=f"{host}:{self.port}", peers=len(self.peers))
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:
            for link in self.links.values():     # from here a peer closing its end is the shutdown, not a fault:
                link.stopping = True             # "worker_stopping" stays the log's last line
            logs.event("worker_stopping")
            server.close()
            for job in list(self.jobs.values()):
                self._drop(job.id, JobError("worker shutting down"))
        raise _Shutdown          # stopped: end the group, which cancels the links and requests it owns

    async def _start_http(self, tg: asyncio.TaskGroup, host: str) -> None:
        """The HTTP endpoint, a task of the worker's group; a port it cannot bind stops the worker at start."""
        assert self.http is not None and self.http_port is not None
        up = asyncio.Event()
        failed: list[OSError] = []

        async def serve() -> None:
            try:
                await self.http.serve(host, self.http_port, up)
            except OSError as exc:
                if up.is_set():
                    raise
                failed.append(exc)       # the bind: said once, below, as the worker's start-up error
        task = tg.create_task(serve())
        waiter = asyncio.ensure_future(up.wait())
        try:
            await asyncio.wait({task, waiter}, timeout=self.settings.connect_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not up.is_set():
            task.cancel()
            exc = failed[0] if failed else None
            why = (exc.strerror or str(exc)) if exc is not None else "it did not open"
            raise OSError(getattr(exc, "errno", None) or 0,
                          f"its HTTP port {host}:{self.http_port}: {why} (pick another --http-port, or --no-http)")
        self.http_port = self.http.port

    async def _metrics(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition(request.headers.get("accept"))
        return Response(200, body, content_type=content_type)

    def stop(self) -> None:
        self._stop.set()

    def spawn(self, coro) -> asyncio.Task:
        assert self._tg is not None
        return self._tg.create_task(coro)

    # -- connections -------------------------------------------------------
    def admit(self, conn: InboundConnection) -> bool:
        """A new connection: refused when the worker is full; the oldest handshake makes room for it.

        Connections still in their handshake may hold at most ``max_pre_auth`` slots, so
        unauthenticated clients can never take the descriptors that peers and coordinators
        need (the rest of ``max_connections`` is their reserve).
        """
        st = self.settings
        if len(self.connections) >= st.max_connections:
            self.refused("connection_refused", conn.peername, f"{len(self.connections)} connections open")
            return False
        if len(self.pre_auth) >= st.max_pre_auth:
            oldest = next(iter(self.pre_auth))
            self.refused("handshake_evicted", oldest.peername, f"{len(self.pre_auth)} handshakes pending")
            self.pre_auth.pop(oldest, None)
            if oldest.transport is not None:
                oldest.transport.abort()
        self.pre_auth[conn] = None
        self.connections.add(conn)
        return True

    def authenticated(self, conn: InboundConnection) -> None:
        self.pre_auth.pop(conn, None)

    def forget(self, conn: InboundConnection) -> None:
        self.pre_auth.pop(conn, None)
        self.connections.discard(conn)

    def refused(self, event: str, remote: object, why: object) -> None:
        """Counts a pre-auth refusal and logs it within a token bucket (``refusal_log_burst`` lines, then
        ``refusal_log_rate`` a second): a flood of garbage connections cannot fill the disk with log lines.
        A line after a quiet spell says how many refusals went unlogged (``unlogged``)."""
        self.refusals += 1
        st = self.settings
        now = time.monotonic()
        self._log_budget = min(float(st.refusal_log_burst),
                               self._log_budget + (now - self._log_budget_at) * st.refusal_log_rate)
        self._log_budget_at = now
        if self._log_budget >= 1.0:
            self._log_budget -= 1.0
            unlogged = self.refusals - self._refusals_logged - 1
            logs.event(event, logging.WARNING, remote=remote, error=why,
                       **({"unlogged": unlogged, "refused_total": self.refusals} if unlogged else {}))
            self._refusals_logged = self.refusals

    def answer_ping(self, msg: dict, reply) -> None:
        reply(make("pong", seq=msg["seq"], id=self.id, info=self.info()))

    def admit_request(self, msg: dict, conn: InboundConnection) -> dict | None:
        """An error reply when a load would pass the caps on active jobs, else None."""
        if msg["t"] != "load":
            return None
        st = self.settings
        mine = sum(j in self.jobs for j in conn.jobs) + conn.loading
        if mine >= st.max_jobs_per_connection:
            why = f"this connection has {mine} jobs active (limit {st.max_jobs_per_connection})"
        elif len(self.jobs) + self.loading >= st.max_jobs:
            why = f"{len(self.jobs) + self.loading} jobs active (limit {st.max_jobs})"
        else:
            self.loading += 1
            conn.loading += 1
            return None
        logs.event("job_refused", logging.WARNING, job=msg["job"], error=why)
        self.metrics.job(msg.get("op"), "refused")
        return make("error", job=msg["job"], kind="busy", message=f"worker {self.id} is busy: {why}")

    def _admitted(self, conn: InboundConnection) -> None:
        """An admitted load has registered its job (or failed before): it no longer counts as pending."""
        self.loading -= 1
        conn.loading -= 1

    # -- jobs ----------------------------------------------------------------
    def spilled(self, written: int = 0, read: int = 0) -> None:
        """A job's spill folder wrote or read back bytes (worker/spill.py): the worker's metrics count them
        (``cluster status`` and /metrics show them)."""
        self.metrics.spilled(written=written, read=read)

    def _peer_failed(self, peer_id: int, exc: BaseException, only: set[str] | None = None) -> None:
        """A link to or from ``peer_id`` broke: no running job that includes that worker can finish.

        ``only``: the jobs that depended on the broken connection (an inbound one); None for our own link.
        """
        if only is None:
            self.live.peer_lost(peer_id)      # its pushed top-K answers no longer stand for it
        for job in self.jobs.values():
            if only is not None and job.id not in only:
                continue
            if job.comm is not None and peer_id in job.comm.ranks:
                job.comm.mailbox.fail(PeerFailure(f"worker {self.id} lost worker {peer_id}: "
                                                  f"{exc or type(exc).__name__}"))

    def _drop(self, job_id: str, exc: BaseException | None = None, outcome: str | None = None) -> None:
        """The job leaves the worker; ``outcome`` (for the metrics): by default ok without ``exc``, else cancelled."""
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        # In the same step as the pop: a scrape sees the job's traffic either as running or as finished, once.
        self.metrics.job_ended(job, job.op, outcome or ("ok" if exc is None else "cancelled"), job.timeline.now())
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
        self.early_bytes -= job.early_bytes
        job.early, job.early_bytes = [], 0
        job.values = None
        if job.spill is not None:
            job.spill.close()
        if not self.jobs:
            memory.release()
            if exc is not None:
                # a moment after the failing request's handler is done: until then its frames (and the task that
                # ran the read) still hold the exception; collected on the next loop turn, it was at times still held
                try:
                    asyncio.get_running_loop().call_later(COLLECT_AFTER, self._collect_garbage)
                except RuntimeError:        # no loop: nothing is handling the exception now
                    self._collect_garbage()

    def _collect_garbage(self) -> None:
        """A failed job's exception, its traceback and the frames in it form a reference cycle, which only
        Python's cycle collector frees, whenever it next runs: a file's bytes read before a bad line was found
        stayed resident with them (three 1 GiB one-line files refused in a row: an idle worker held 3.2 GiB)."""
        if not self.jobs:
            import gc
            gc.collect()
            memory.release()

    def deliver_peer(self, peer_id: int, msg: dict, nbytes: int, cost: int | None = None,
                     conn: InboundConnection | None = None) -> None:
        job = self.jobs.get(msg["job"])
        if job is not None and conn is not None:
            conn.used_by.add(job.id)
        if job is None or job.comm is None:
            if job is None and msg["job"] not in self.finished:
                logs.event("drop_unknown_job", logging.DEBUG, job=msg["job"], peer=peer_id)
            if job is not None:
                # Under credit flow control a peer sends only asks and small collective messages
                # before our "run" (data needs our credits); --shuffle naive may send data early.
                # Beyond this bound (decoded size, all waiting jobs together) it is a misbehaving
                # peer, not a slow start.
                cost = nbytes if cost is None else cost
                if self.early_bytes + cost > self.settings.early_limit_bytes:
                    raise ProtocolError(f"worker {peer_id} sent over {self.settings.early_limit_bytes >> 20} MiB "
                                        f"(decoded) for jobs that have not started here (job {msg['job']})")
                job.early_bytes += cost
                self.early_bytes += cost
                job.early.append((peer_id, msg, nbytes))
            return
        comm = job.comm
        if not (0 <= msg["src"] < comm.size) or comm.ranks[msg["src"]] != peer_id:
            raise ProtocolError(f"worker {peer_id} sent as rank {msg['src']} of job {msg['job']}")
        comm.deliver(msg["src"], msg["tag"], msg["body"], nbytes)

    async def handle_request(self, msg: dict, reply, conn: "InboundConnection") -> None:
        t = msg["t"]
        if t == "ping":
            self.answer_ping(msg, reply)
            return
        job_id = msg["job"]
        admitted = t == "load"             # admit_request counted this load in self.loading
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
                if self.stuck:
                    self.metrics.job(msg.get("op"), "refused")
                    raise WorkerUnhealthy(f"worker {self.id} is unhealthy: {len(self.stuck.tasks)} reads stuck "
                                          f"past {self.settings.read_timeout:g}s; it takes no new jobs")
                spec = registry.find(msg.get("op")) if msg.get("op") else None
                if spec is not None and spec.user_code and not self.settings.user_code:
                    self.metrics.job(msg.get("op"), "refused")
                    raise UsageError(f"worker {self.id} runs no user code (started with --no-user-code): "
                                     f"{spec.name} jobs run your functions")
                # a worker of this machine killed since (kill -9, the OOM killer) left its job's spill folder:
                # the next job anywhere on this spill dir removes it, not only that worker's restart
                spill.sweep(self.access.spill_dir or spill.default_base())
                job = jobs.Job(job_id, _files(msg["files"]), column=_column(msg.get("column")),
                               header=_header(msg.get("header")), read=_read(msg.get("read")), op=_op(msg.get("op")),
                               report=reply, progress_interval=progress.interval_from(msg.get("progress")),
                               spill=SpillDir(self.access.spill_dir, job_id, self.id, self.spilled))
                job.task = asyncio.current_task()      # an abort during the load cancels it
                self.jobs[job_id] = job
                self._admitted(conn)
                admitted = False
                conn.watch_job(job_id, msg.get("dead_after"))
                n = await jobs.load(job, self.access, self.settings.read_timeout, self.stuck)
                extra = {"schema": job.schema} if job.schema is not None else {}
                if job.passes > 1:
                    extra["passes"] = job.passes
                job.facts = await _load_facts(job)
                if job.facts is not None:
                    extra["facts"] = job.facts[0]          # what the op keeps (job.facts[1]) stays here
                reply(make("loaded", job=job_id, values=n, seconds=job.load_seconds, **extra))
            elif t == "run":
                job = self.jobs.get(job_id)
                if job is None:
                    raise JobError(f"job {job_id} is not loaded on worker {self.id}")
                job.task = asyncio.current_task()
                job.op = msg["op"]
                out = await self._run(job, msg)
                if job.spill is not None:
                    job.spill.close()       # before the answer: whoever hears "done" finds no spill file left
                self.jobs_run += 1
                self.last_job = {"job": job_id, "op": msg["op"], "seconds": out["stats"]["seconds"],
                                 "bytes_sent": sum(out["stats"]["bytes_sent"])}
                self.bytes_sent_total += self.last_job["bytes_sent"]
                logs.event("job_done", job=job_id, op=msg["op"], seconds=round(out["stats"]["seconds"], 3))
                reply(make("done", job=job_id, **out))
                self._drop(job_id)
        except asyncio.CancelledError:
            if admitted:
                self._admitted(conn)
            if job_id in self.jobs or not self._stop.is_set():
                self._drop(job_id, outcome="cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - the request boundary: report, keep serving
            if admitted:
                self._admitted(conn)
            cause = root_cause(exc)
            if isinstance(cause, ShardstatsError):
                kind, text = cause.kind, str(cause)
                logs.event("job_failed", logging.WARNING, job=job_id, kind=kind, error=text)
            else:
                kind, text = "internal", f"worker {self.id}: {cause!r}"
                logs.event("job_crashed", logging.ERROR, job=job_id, error=repr(cause))
            self.jobs_failed += 1
            reply(make("error", job=job_id, kind=kind, message=text))
            self._drop(job_id, cause if isinstance(cause, ShardstatsError) else JobError(text), outcome="error")

    async def _run(self, job: jobs.Job, msg: dict) -> dict:
        """The op, in the job's own deadline scope: the coordinator's phase deadline bounds the whole run
        here too, so a job that outlives its coordinator's patience ends on the worker by itself."""
        op = registry.get(msg["op"])
        params = op.params.from_wire(msg["params"])       # the same validation as the CLI's: exit 2 on bad values
        ranks = [int(r) for r in msg["ranks"]]
        job.comm = jobs.make_comm(job, self.id, ranks, self.links, self.settings.job_timeout)
        job.comm.total = msg["total"]
        if isinstance(msg.get("facts"), dict) and job.facts is not None and msg["op"] == job.op:
            job.comm.facts = msg["facts"]                  # every rank's load's, combined
            job.comm.own_facts, job.comm.kept = job.facts  # ours, and what the op kept of it
        job.comm.passes = int(msg.get("passes") or 1)
        job.comm.spill = job.spill
        job.comm.addrs = [self.peers[r] for r in ranks]     # where each rank listens: the same list on every rank
        job.comm.access = self.access                       # where a keyed job's --out is written
        job.comm.files, job.comm.column = job.files, job.column   # what a saved sketch's header says it read
        job.comm.user_code = self.settings.user_code        # whether mapreduce jobs may run their functions
        if msg.get("schema") is not None and job.read is not None:
            # The schema the coordinator agreed from every worker's files: every rank holds the same types.
            from shardstats.worker.engine.slices import Sliced
            if isinstance(job.values, (jobs.Sides, Sliced)):
                job.values = job.values.conform(msg["schema"])
            else:
                job.values = jobs.conform(job.values, jobs.arrow_schema(msg["schema"]))
        early, job.early = job.early, []
        self.early_bytes -= job.early_bytes
        job.early_bytes = 0
        for peer_id, m, nbytes in early:     # peer messages that arrived before our "run"
            self.deliver_peer(peer_id, m, nbytes)
        deadline = min(float(msg["timeout"]), self.settings.max_job_seconds)
        try:
            async with asyncio.timeout(deadline):
                return await jobs.run(job, job.comm, op, params)
        except TimeoutError:
            raise JobTimeout(f"worker {self.id}: job {job.id} ran past its {deadline:g} s deadline") from None

    def info(self) -> dict:
        return {"version": __version__, "protocol": PROTOCOL_VERSION, "addr": self.peers[self.id],
                "jobs_run": self.jobs_run, "jobs_failed": self.jobs_failed, "active_jobs": len(self.jobs),
                "last_job": self.last_job, "bytes_sent_total": self.bytes_sent_total,
                "rss_bytes": memory.rss_bytes(), "uptime": round(time.time() - self.started, 1),
                "connections": len(self.connections), "refused": self.refusals,
                "healthy": not self.stuck, "stuck_reads": len(self.stuck.tasks),
                "memory_budget": self.access.budget, "confined": self.access.confined,
                "cached": self.access.cache.listing(), "http_port": self.http_port if self.http is not None else None,
                **self.metrics.spill_totals()}


def _read(value: object) -> dict | None:
    """The load message's optional reader options of a keyed job: a map of plain values."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise JobError(f"load.read has type {type(value).__name__}, expected a map")
    return value


async def _load_facts(job: jobs.Job) -> tuple[dict, object] | None:
    """What the job's op learns of this worker's int64 share at the load (``Op.load_facts``: the facts for the
    coordinator to combine, what the op keeps for its run): none for an op that declares none, a keyed or an
    on-disk share."""
    op = registry.find(job.op) if job.op else None
    if op is None or op.load_facts is None or job.read is not None or job.passes > 1 or job.values is None:
        return None
    from shardstats.worker.steps import numpy_step
    return await numpy_step(len(job.values), op.load_facts, job.values)


def _op(value: object) -> str | None:
    """The load message's optional op name (for the metrics of a job that fails before its run message)."""
    return value if isinstance(value, str) else None


def _column(value: object) -> str | int | None:
    """The load message's optional ``column`` (a name or an index); anything else is a protocol error."""
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise JobError(f"load.column has type {type(value).__name__}, expected a string or an integer")


def _files(value: list) -> list:
    """The load message's files as ShardRefs; a malformed entry is a protocol error of the coordinator's."""
    try:
        return [ShardRef.from_wire(f) for f in value]
    except ValueError as exc:
        raise JobError(f"load.files: {exc}") from None


def _header(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise JobError(f"load.header has type {type(value).__name__}, expected a boolean")


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
        return next((e for e in real if isinstance(e, ShardstatsError) and not isinstance(e, PeerFailure)),
                    next((e for e in real if isinstance(e, ShardstatsError)), real[0]))
    return exc


