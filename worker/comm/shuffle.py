"""The all-to-all shuffle and its flow control: chunked streams, receiver-driven credits, a staggered schedule.

Strategies:

``credit``  (default) a sender asks before streaming; a receiver admits at most
            ``fan_in`` streams at a time and grants each ``credits`` chunks, returning
            a credit per chunk it has consumed.  Inbound fan-in is <= fan_in and a
            receiver buffers at most fan_in * credits chunks, whatever the data size.
            Senders ask in the staggered order i -> i+1, i+2, ... (mod W), holding up
            to ``requests`` asks open so one busy receiver does not stall them.
``naive``   every sender streams every partition at once, no admission.
``gather``  is ``naive`` with every partition addressed to rank 0 (the op decides
            that); it is the all-to-one design the problem warns about.
``tree``    ``auto``'s pick for a job of at most one chunk in all: the pieces go up the
            binomial tree to rank 0 (W-1 messages of at most a chunk each); asked for
            on a bigger job, a usage error.

Chunks are dicts of equal-length arrays ("pieces").  Everything is messages over
the communicator, so the bounds hold, and are tested, on every transport.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable

from shardstats.lazy import numpy as np

from shardstats.errors import UsageError
from shardstats.worker.comm.collectives import tree_depth, tree_reduce
from shardstats.worker.comm.communicator import Communicator

DEFAULT_CHUNK_BYTES = 1 << 20
STRATEGIES = ("credit", "naive", "gather", "tree")
CHOICES = ("auto", *STRATEGIES)

Piece = dict[str, "np.ndarray"]
Consume = Callable[[int, Piece], Awaitable[None] | None]


@dataclass(frozen=True)
class ShuffleConfig:
    strategy: str = "credit"
    fan_in: int = 1          # F: concurrent inbound streams a receiver admits
    credits: int = 4         # C: chunks a granted sender may have in flight
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    requests: int = 2        # asks a sender keeps open at once

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown shuffle strategy {self.strategy!r} (choose from {', '.join(STRATEGIES)})")
        if min(self.fan_in, self.credits, self.requests) < 1 or self.chunk_bytes < 64:
            raise ValueError("fan_in, credits and requests must be >= 1, chunk_bytes >= 64")

    @classmethod
    def from_params(cls, params, total_bytes: int | None = None) -> "ShuffleConfig":
        """From an op's validated shuffle options (``worker.ops.contract.ShuffleParams``) and, when the op knows
        it, the most its pieces can hold in all (the int64 ops: ``contract.int64_bytes`` of the job's count).

        ``auto`` is the credit shuffle, except for a job whose every piece fits in one
        chunk (``total_bytes`` known, as the coordinator's count tells): then the pieces go up the
        binomial tree to rank 0 ("tree"), W-1 messages where the all-to-all takes W^2
        (a one-value job on ten workers: 102 messages, 15 ms of its run). No more than one
        chunk travels in any message, so no worker takes in more than the shuffle's unit.
        """
        strategy = params.shuffle
        tiny = total_bytes is None or total_bytes <= params.chunk_bytes
        if strategy == "auto":
            strategy = "tree" if tiny and total_bytes is not None else "credit"
        elif strategy == "tree" and not tiny:
            raise UsageError(f"--shuffle tree: only for a job of at most one chunk ({params.chunk_bytes:,} bytes); "
                             f"this one's pieces hold up to {total_bytes:,} bytes")
        return cls(strategy=strategy, fan_in=params.fan_in, credits=params.credits, chunk_bytes=params.chunk_bytes)

    def rounds(self, size: int) -> int:
        """The message rounds one shuffle over ``size`` ranks takes: one, or the tree's depth."""
        return tree_depth(size) if self.strategy == "tree" else 1

    @property
    def to_one(self) -> bool:
        """Whether every piece goes to rank 0 (so senders pack them unpartitioned)."""
        return self.strategy in ("gather", "tree")


def chunk_pieces(arrays: dict[str, np.ndarray], chunk_bytes: int) -> list[Piece]:
    """Cuts equal-length arrays into pieces of at most ``chunk_bytes`` (views, no copies)."""
    n = len(next(iter(arrays.values())))
    if n == 0:
        return []
    row = sum(a.itemsize for a in arrays.values())
    step = max(1, chunk_bytes // row)
    return [{k: a[i:i + step] for k, a in arrays.items()} for i in range(0, n, step)]


@dataclass
class ShuffleStats:
    max_inbound_streams: int = 0
    streams_received: int = 0
    chunks_sent: int = 0
    chunks_received: int = 0
    credit_wait_seconds: float = 0.0
    send_seconds: float = 0.0
    receive_seconds: float = 0.0


async def shuffle(comm: Communicator, outgoing: list[list[Piece]], consume: Consume,
                  cfg: ShuffleConfig = ShuffleConfig()) -> ShuffleStats:
    """Sends ``outgoing[d]`` (a list of chunks) to every rank d and feeds each received chunk to ``consume``.

    The lists are emptied (entries set to None) as chunks go out, so the caller's
    memory for outgoing data shrinks while the received data grows.

    The rank's own partition is consumed locally without touching the network.
    Sending and receiving run at the same time, each in its own task.
    """
    assert len(outgoing) == comm.size
    tag = comm.new_tag("shuffle")
    st = ShuffleStats()
    if cfg.strategy == "tree":
        return await _up_the_tree(comm, tag, outgoing, consume, st)
    comm.progress.set("shuffle", 0, sum(len(c) for d, c in enumerate(outgoing) if d != comm.rank))
    mine = outgoing[comm.rank]
    for i in range(len(mine)):
        piece, mine[i] = mine[i], None
        await _call(consume, comm.rank, piece)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_receiver(comm, tag, consume, cfg, st))
        if cfg.strategy == "credit":
            tg.create_task(_credit_sender(comm, tag, outgoing, cfg, st))
        else:
            tg.create_task(_naive_sender(comm, tag, outgoing, st))
    comm.stats.max_inbound_streams = max(comm.stats.max_inbound_streams, st.max_inbound_streams)
    comm.stats.credit_wait_seconds += st.credit_wait_seconds
    return st


async def _up_the_tree(comm: Communicator, tag: str, outgoing: list[list[Piece]], consume: Consume,
                       st: ShuffleStats) -> ShuffleStats:
    """A tiny job's pieces (packed for rank 0) to rank 0 up the binomial tree, a child's with its parent's.

    Rank 0 then owns every value: the ops' owners never assume which values they get
    (the ``gather`` strategy relies on that too), so their answers are the same.
    """
    t0 = time.perf_counter()
    mine = [p for dest in outgoing for p in dest]
    for dest in outgoing:
        dest.clear()
    comm.progress.set("shuffle", 0, 1)
    got = await tree_reduce(comm, {"p": mine}, _pieces_of_both, tag)
    if got is None:
        st.chunks_sent = len(mine)
    else:
        st.chunks_received = len(got["p"]) - len(mine)
        for piece in got["p"]:
            await _call(consume, 0, piece)
    st.send_seconds = st.receive_seconds = time.perf_counter() - t0
    return st


def _pieces_of_both(a: dict, b: dict) -> dict:
    return {"p": a["p"] + b["p"]}


async def _call(consume: Consume, src: int, piece: Piece) -> None:
    r = consume(src, piece)
    if r is not None:
        await r


def _staggered(rank: int, size: int) -> list[int]:
    return [(rank + r) % size for r in range(1, size)]


def _next_in_schedule(rank: int, size: int, waiting: list[int]) -> int:
    """The waiting sender due earliest in the staggered schedule (sender i -> i+1, i+2, ...).

    Receiver j is due to hear from j-1 first, then j-2, ...; granting in that order
    (not first come, first served) keeps the senders matched one-to-one with the
    receivers, as in a pairwise exchange, so every link carries one stream at a time.
    """
    best = min(waiting, key=lambda src: (rank - src) % size)
    waiting.remove(best)
    return best


async def _receiver(comm: Communicator, tag: str, consume: Consume, cfg: ShuffleConfig, st: ShuffleStats) -> None:
    t0 = time.perf_counter()
    rtag, stag = tag + ".r", tag + ".s"
    remaining = set(range(comm.size)) - {comm.rank}
    streaming: set[int] = set()      # senders whose first chunk we read and whose last we have not
    granted: set[int] = set()
    waiting: list[int] = []
    admit = cfg.strategy == "credit"
    while remaining:
        src, body = await comm.recv(rtag)
        kind = body["k"]
        if kind == "ask":
            waiting.append(src)
        elif kind == "none":
            remaining.discard(src)
        elif kind == "chunk":
            if src not in streaming:
                streaming.add(src)
                comm.progress.timeline.inbound(len(streaming))
            st.max_inbound_streams = max(st.max_inbound_streams,
                                         len(streaming | comm.mailbox.data_sources(rtag)))
            st.chunks_received += 1
            await _call(consume, src, body["p"])
            last = body["last"]
            if admit:                # a credit for the chunk consumed; "done" once the stream is in
                await comm.send(src, stag, {"k": "done" if last else "credit", "n": 1})
            if last:
                streaming.discard(src)
                comm.progress.timeline.inbound(len(streaming))
                remaining.discard(src)
                granted.discard(src)
                st.streams_received += 1
        else:
            raise ValueError(f"unexpected shuffle message {kind!r} from rank {src}")
        while admit and waiting and len(granted) < cfg.fan_in:
            nxt = _next_in_schedule(comm.rank, comm.size, waiting)
            granted.add(nxt)
            await comm.send(nxt, stag, {"k": "grant", "n": cfg.credits})
    t1 = time.perf_counter()
    st.receive_seconds = t1 - t0
    comm.progress.timeline.span("receive", "receive", t0, t1)


async def _tell_empty(comm: Communicator, rtag: str, outgoing: list[list[Piece]]) -> list[int]:
    """Tells receivers with nothing coming so; returns the ranks that do have chunks, staggered."""
    busy = []
    for d in _staggered(comm.rank, comm.size):
        if outgoing[d]:
            busy.append(d)
        else:
            await comm.send(d, rtag, {"k": "none"})
    return busy


async def _stream(comm: Communicator, rtag: str, dest: int, pieces: list[Piece], st: ShuffleStats) -> None:
    last = len(pieces) - 1
    for i in range(len(pieces)):
        p, pieces[i] = pieces[i], None       # sent chunks are dropped: memory falls as the shuffle goes
        await comm.send(dest, rtag, {"k": "chunk", "p": p, "last": i == last})
        st.chunks_sent += 1
        comm.progress.done = st.chunks_sent      # an attribute write: the ticker samples it


async def _naive_sender(comm: Communicator, tag: str, outgoing: list[list[Piece]], st: ShuffleStats) -> None:
    t0 = time.perf_counter()
    rtag = tag + ".r"
    busy = await _tell_empty(comm, rtag, outgoing)
    async with asyncio.TaskGroup() as tg:
        for d in busy:
            tg.create_task(_stream(comm, rtag, d, outgoing[d], st))
    _sent(comm, st, t0)


async def _credit_sender(comm: Communicator, tag: str, outgoing: list[list[Piece]], cfg: ShuffleConfig,
                         st: ShuffleStats) -> None:
    """Streams to one receiver at a time, in staggered order, asking ahead.

    A stream ends when the receiver says it has consumed the last chunk ("done"),
    not when the chunk was handed to the socket: otherwise the next stream would
    start while the last one still sits in send buffers, two streams would share
    this worker's uplink, and each receiver's admission slot would fill at half
    speed.  Up to ``requests`` asks are open, so a grant for the next receiver is
    usually waiting when the current stream ends.
    """
    t0 = time.perf_counter()
    rtag, stag = tag + ".r", tag + ".s"
    todo = deque(await _tell_empty(comm, rtag, outgoing))
    cursor = {d: 0 for d in todo}
    credit: dict[int, int] = {}
    granted: deque[int] = deque()    # grants waiting for the active stream to finish
    active: int | None = None
    open_asks = 0
    unfinished = len(todo)
    while unfinished:
        while todo and open_asks < cfg.requests:
            await comm.send(todo.popleft(), rtag, {"k": "ask"})
            open_asks += 1
        w0 = time.perf_counter()
        src, body = await comm.recv(stag)
        w1 = time.perf_counter()
        st.credit_wait_seconds += w1 - w0
        comm.progress.timeline.wait(w0, w1)
        kind = body["k"]
        if kind == "grant":
            credit[src] = body["n"]
            granted.append(src)
        elif kind == "credit":
            credit[src] += body["n"]
        elif kind == "done":
            unfinished -= 1
            open_asks -= 1
            if active == src:
                active = None
        if active is None and granted:
            active = granted.popleft()
        if active is not None:
            pieces = outgoing[active]
            while credit[active] > 0 and cursor[active] < len(pieces):
                i = cursor[active]
                piece, pieces[i] = pieces[i], None   # sent chunks are dropped: memory falls as the shuffle goes
                await comm.send(active, rtag, {"k": "chunk", "p": piece, "last": i == len(pieces) - 1})
                st.chunks_sent += 1
                comm.progress.done = st.chunks_sent
                cursor[active] = i + 1
                credit[active] -= 1
    _sent(comm, st, t0)


def _sent(comm: Communicator, st: ShuffleStats, t0: float) -> None:
    t1 = time.perf_counter()
    st.send_seconds = t1 - t0
    comm.progress.timeline.span("send", "send", t0, t1)
