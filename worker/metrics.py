"""A worker's Prometheus metrics (``GET /metrics`` on its HTTP port, worker/httpd.py).

Why one ``CollectorRegistry`` per worker and not prometheus_client's global one: tests and
``shardstats.testing`` run several workers in one process, and each must count its own.

Two kinds of metric, by where the number lives:

* counted as things happen, with prometheus_client's own types: jobs by op and outcome
  (``ok``, ``error``, ``cancelled``, ``refused``), the job duration histogram, spill bytes
  (fed by the jobs' spill folders through ``spilled``, as ``WorkerServer.spilled`` does);
* read when scraped (a custom collector): peer traffic, memory, inbound streams, spill files.  The
  traffic of a job is counted once, by its communicator (``CommStats``, what the job's
  stats report); the collector adds the running jobs' counters to the finished jobs'
  totals, which ``WorkerMetrics.job_ended`` folds in when a job leaves the worker, in the
  same step of the event loop.  So a scrape during a job sees its bytes so far, and after
  it exactly the sum of what the jobs reported -- without a second count on the hot path.

Traffic is labelled by peer (the other worker's id): W-1 series per worker, a matrix over
the cluster; summing over ``peer`` gives a worker's total.  Only job messages count (the
frames an op's ``send`` makes: data, credits, collectives), not handshakes or pings.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from shardstats.worker import memory

if TYPE_CHECKING:
    from shardstats.worker.server import WorkerServer

__all__ = ["WorkerMetrics", "spilled", "OUTCOMES"]

OUTCOMES = ("ok", "error", "cancelled", "refused")
# Jobs last from milliseconds (a small stats job) to hours (a billion values spilled to disk).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                    3600.0, 4 * 3600.0, float("inf"))


class WorkerMetrics:
    """The metrics of one worker; ``server`` is read at scrape time (its jobs, its memory budget)."""

    def __init__(self, server: "WorkerServer | None" = None) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter("shardstats_jobs", "Jobs that ended on this worker, by op and outcome "
                            "(refused: turned away at the door, busy or unhealthy).", ["op", "outcome"], registry=r)
        self.job_seconds = Histogram("shardstats_job_duration_seconds", "Seconds from a job's load message "
                                     "to its end on this worker (every outcome but refused).", ["op"],
                                     buckets=DURATION_BUCKETS, registry=r)
        self.spill_bytes = Counter("shardstats_spill_bytes", "Bytes spilled to disk (written) and read back (read).",
                                   ["direction"], registry=r)
        self._spill = {"spill_written_bytes": 0, "spill_read_bytes": 0, "spill_files": 0}   # for pings: no scrape
        for direction in ("written", "read"):          # present from the start: rate() needs a first sample
            self.spill_bytes.labels(direction)
        # The finished jobs' traffic, by peer worker id: what their stats reported.
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}
        self.messages_sent = 0
        self.messages_received = 0
        r.register(_Live(self))

    # -- fed by the worker --------------------------------------------------------------
    def job_ended(self, job: Any, op: str | None, outcome: str, seconds: float | None) -> None:
        """A job left the worker: its traffic joins the totals, its outcome and duration are counted."""
        comm = getattr(job, "comm", None)
        if comm is not None:
            for peer, (s, r) in _by_peer(comm).items():
                self.sent[peer] = self.sent.get(peer, 0) + s
                self.received[peer] = self.received.get(peer, 0) + r
            self.messages_sent += comm.stats.messages_sent
            self.messages_received += comm.stats.messages_received
        self.job(op, outcome, seconds)

    def job(self, op: str | None, outcome: str, seconds: float | None = None) -> None:
        assert outcome in OUTCOMES, outcome
        op = op or "unknown"
        self.jobs.labels(op, outcome).inc()
        if seconds is not None:
            self.job_seconds.labels(op).observe(seconds)

    def spilled(self, *, written: int = 0, read: int = 0, files: int = 0) -> None:
        if written:
            self.spill_bytes.labels("written").inc(written)
        if read:
            self.spill_bytes.labels("read").inc(read)
        t = self._spill
        t["spill_written_bytes"] += written
        t["spill_read_bytes"] += read
        t["spill_files"] += files

    # -- read -----------------------------------------------------------------------------
    def spill_totals(self) -> dict[str, int]:
        """Bytes spilled and read back, ever, and the files on disk now (``cluster status`` shows them)."""
        return {**self._spill, "spill_files": self.spill_files_now()}

    def spill_files_now(self) -> int:
        """Files in the running jobs' spill folders (a job's folder goes with it), plus any counted by hand."""
        jobs = self.server.jobs.values() if self.server is not None else ()
        return self._spill["spill_files"] + sum(int(getattr(getattr(j, "spill", None), "files", 0) or 0) for j in jobs)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape's body and content type, as the client's Accept header asks (prometheus_client's own
        negotiation: the text format 0.0.4 by default, OpenMetrics for a Prometheus that prefers it)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


def spilled(holder: Any, *, written: int = 0, read: int = 0, files: int = 0) -> None:
    """Counts spill I/O on the worker that ``holder`` leads to; a no-op where there is none.

    ``holder``: the ``WorkerMetrics``, or anything with a ``metrics`` attribute holding it (the
    ``WorkerServer``; a job's ``Access`` or communicator if they carry one), or an object whose
    ``access`` does (a communicator: ``comm.access``).  In-memory tests' communicators lead to no
    worker, so spill code may call this unconditionally.  ``written``/``read``: bytes;
    ``files``: spill files created (+n) or removed (-n)."""
    m = holder
    for _ in range(3):
        if m is None or isinstance(m, WorkerMetrics):
            break
        m = getattr(m, "metrics", None) if getattr(m, "metrics", None) is not None else getattr(m, "access", None)
    if isinstance(m, WorkerMetrics):
        m.spilled(written=written, read=read, files=files)


def _by_peer(comm: Any) -> dict[int, tuple[int, int]]:
    """A communicator's bytes sent to and received from each other rank, keyed by the peer's worker id."""
    ranks = getattr(comm, "ranks", None) or range(comm.size)
    st = comm.stats
    return {int(ranks[r]): (st.bytes_sent[r], st.bytes_received[r]) for r in range(comm.size) if r != comm.rank}


class _Live:
    """What a scrape reads from the worker now: traffic (finished jobs + running ones), memory, streams."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.m = metrics

    def describe(self) -> list:
        return []          # unchecked: names are ours and fixed (see collect)

    def collect(self) -> Iterator[Any]:
        m, server = self.m, self.m.server
        sent, received = dict(m.sent), dict(m.received)
        msgs_sent, msgs_received = m.messages_sent, m.messages_received
        streams = 0
        running = [j for j in server.jobs.values() if j.comm is not None] if server is not None else []
        for job in running:
            for peer, (s, r) in _by_peer(job.comm).items():
                sent[peer] = sent.get(peer, 0) + s
                received[peer] = received.get(peer, 0) + r
            msgs_sent += job.comm.stats.messages_sent
            msgs_received += job.comm.stats.messages_received
            streams += getattr(job.timeline, "inbound_now", 0)
        if server is not None:        # every peer present from the start, at 0
            for pid in range(len(server.peers)):
                if pid != server.id:
                    sent.setdefault(pid, 0)
                    received.setdefault(pid, 0)
        for name, values, what in (("shardstats_bytes_sent", sent, "to"), ("shardstats_bytes_received", received, "from")):
            c = CounterMetricFamily(name, f"Bytes of job messages sent {what} each peer worker (frames, as the job's "
                                    f"stats count them).", labels=["peer"])
            for peer in sorted(values):
                c.add_metric([str(peer)], values[peer])
            yield c
        yield CounterMetricFamily("shardstats_messages_sent", "Job messages sent to peer workers.", value=msgs_sent)
        yield CounterMetricFamily("shardstats_messages_received", "Job messages received from peer workers.",
                                  value=msgs_received)
        yield GaugeMetricFamily("shardstats_memory_bytes", "Resident memory of the worker process now (RSS).",
                                value=memory.rss_bytes())
        budget = server.access.budget if server is not None else None
        if budget is not None:
            yield GaugeMetricFamily("shardstats_memory_budget_bytes", "The memory a job may take on this worker "
                                    "(--memory-limit, or a share of the cgroup's or the machine's memory).",
                                    value=budget)
        yield GaugeMetricFamily("shardstats_spill_files", "Spill files on disk now (the running jobs').",
                                value=m.spill_files_now())
        yield GaugeMetricFamily("shardstats_inbound_streams", "Shuffle streams flowing into this worker now, "
                                "all jobs together (each job's fan-in is bounded by F).", value=streams)
        if server is not None:
            yield GaugeMetricFamily("shardstats_active_jobs", "Jobs on this worker now.", value=len(server.jobs))
            yield GaugeMetricFamily("shardstats_connections", "Inbound TCP connections on the worker's port now.",
                                    value=len(server.connections))
            yield GaugeMetricFamily("shardstats_up_seconds", "Seconds since the worker started.",
                                    value=time.time() - server.started)
