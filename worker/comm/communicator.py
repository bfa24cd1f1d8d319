"""The communicator: the two primitives of the problem, ``send(peer, body)`` and ``recv(tag)``.

Ops and collectives are written against ``Communicator`` only.  A transport
supplies ``_transmit``; ``TcpComm`` (``worker.comm.tcp``) sends frames over TCP links,
``InMemoryComm`` (below) passes them between communicators in one process, so the
same op code runs in unit tests and in the cluster.  Ranks are positions in the
job's list of workers, so a job re-run on survivors just gets a shorter list.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from shardstats.protocol.frames import encode_frame
from shardstats.protocol.messages import make
from shardstats.worker.comm.mailbox import Mailbox
from shardstats.worker.comm.progress import Progress
from shardstats.settings import DEFAULTS



@dataclass
class CommStats:
    size: int
    bytes_sent: list[int] = field(default_factory=list)
    bytes_received: list[int] = field(default_factory=list)
    messages_sent: int = 0
    messages_received: int = 0
    tree_messages_received: int = 0     # the most any one tree reduction delivered here
    max_inbound_streams: int = 0
    send_wait_seconds: float = 0.0
    credit_wait_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.bytes_sent = [0] * self.size
        self.bytes_received = [0] * self.size


class Communicator:
    """Base: mailbox-backed recv, counted sends.  Subclasses move the frames."""

    def __init__(self, job: str, rank: int, size: int, timeout: float = DEFAULTS.job_timeout) -> None:
        self.job = job
        self.rank = rank
        self.size = size
        self.timeout = timeout
        self.mailbox = Mailbox()
        self.stats = CommStats(size)
        self.progress = Progress()     # ops note their phase here; a worker may report it (``worker.comm.progress``)
        # The job's value count over all ranks when the coordinator knows it (it learns it from the
        # load phase); an op that needs it and finds None reduces it itself.
        self.total: int | None = None
        # Passes over values kept on disk (worker/io/ondisk.py), the most any rank needs: every rank runs
        # the same passes, as each pass is a collective job of its own.  1: the values are in memory.
        self.passes = 1
        self.spill = None          # the job's SpillDir on this worker (worker/spill.py), when it has one
        self.pass_index: int | None = None   # which key-slice pass a keyed job is in (worker/engine/slices.py)
        self.out_parts = None      # this rank's --out parts written, not yet committed (worker/engine/answer.py)
        # What every rank's load learned, combined at the coordinator (``Op.load_facts``/``merge_facts``), this
        # rank's own and what it kept; None where no coordinator took part (an op that wants them reduces them).
        self.facts: dict | None = None
        self.own_facts: dict | None = None
        self.kept = None
        # A text op's share already tokenized into pairs as it was read (worker/engine/tokens.py Premap): the
        # tokens this pass counts (all of them in pass 0); None: the op gets documents.
        self.premapped: int | None = None
        self._seq = 0

    def new_tag(self, name: str) -> str:
        """A tag unique to this call site and invocation; every rank derives the same sequence."""
        self._seq += 1
        return f"{name}#{self._seq}"

    async def send(self, dest: int, tag: str, body: dict) -> None:
        if dest == self.rank:
            self.mailbox.put(tag, self.rank, body)
            return
        frame = encode_frame(make("peer", job=self.job, tag=tag, src=self.rank, body=body))
        self.stats.bytes_sent[dest] += len(frame)
        self.stats.messages_sent += 1
        t0 = time.perf_counter()
        await self._transmit(dest, frame)
        self.stats.send_wait_seconds += time.perf_counter() - t0

    async def recv(self, tag: str, timeout: float | None = None) -> tuple[int, dict]:
        return await self.mailbox.get(tag, self.timeout if timeout is None else timeout)

    def deliver(self, src: int, tag: str, body: dict, nbytes: int) -> None:
        """Called by the transport when a peer message for this job arrives."""
        if 0 <= src < self.size:
            self.stats.bytes_received[src] += nbytes
        self.stats.messages_received += 1
        self.mailbox.put(tag, src, body)

    async def _transmit(self, dest: int, frame: bytes) -> None:
        raise NotImplementedError


