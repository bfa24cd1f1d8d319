"""The live top-K client: events into the cluster (``cluster ingest``), answers out (``cluster top``).

It speaks the cluster's own protocol as an authenticated client (the token, TLS when
configured): ``live_events`` batches spread over every worker (any worker takes any
event; its flush routes each key to its owner), ``live_top`` asked of one worker, which
answers for the whole cluster (from the owners' pushed answers, or by asking every owner;
worker.live.service).  A worker that cannot be reached is passed over, never silently
skipped: an ingest batch goes to another worker, a query to the next worker, and an owner
that does not answer is named as missing in the answer.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl
from dataclasses import dataclass, field

from shardstats.coordinator.client import WorkerClient
from shardstats.coordinator.job import CONNECT_ERRORS
from shardstats.errors import ClusterUnavailable, ShardstatsError, from_kind
from shardstats.protocol.messages import make
from shardstats.settings import DEFAULTS, Settings


@dataclass
class IngestTotals:
    sent: int = 0
    accepted: int = 0
    late: int = 0
    early: int = 0
    batches: int = 0
    per_worker: dict = field(default_factory=dict)
    lost_workers: set = field(default_factory=set)


class LiveClient:
    """Connections to every worker, opened on first use and reopened after a failure."""

    def __init__(self, addrs: list[str], token: bytes, tls: ssl.SSLContext | None = None,
                 settings: Settings = DEFAULTS) -> None:
        self.addrs = addrs
        self.token = token
        self.tls = tls
        self.settings = settings
        self._conns: dict[int, WorkerClient] = {}
        self._locks = {i: asyncio.Lock() for i in range(len(addrs))}
        self._seq = itertools.count(1)
        self._asked = random.randrange(len(addrs)) if addrs else 0   # the worker queries go to (spread over clients)

    async def close(self) -> None:
        conns, self._conns = self._conns, {}
        for c in conns.values():
            await c.close()

    async def __aenter__(self) -> "LiveClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def ask(self, i: int, msg: dict, timeout: float) -> dict:
        """One request to worker ``i`` and its reply (one at a time per connection); drops a broken connection."""
        async with self._locks[i]:
            try:
                async with asyncio.timeout(timeout):
                    c = self._conns.get(i)
                    if c is None:
                        c = self._conns[i] = await WorkerClient.connect(self.addrs[i], self.token,
                                                                        self.settings.connect_timeout, self.tls)
                    await c.send(msg)
                    reply = await c.recv(timeout)
                if reply.get("seq") != msg["seq"]:
                    raise ConnectionError(f"worker {i} answered request {reply.get('seq')}, not {msg['seq']}")
                return reply
            except BaseException:
                c = self._conns.pop(i, None)
                if c is not None:
                    await c.close()
                raise

    # -- ingest ---------------------------------------------------------------------------------
    async def send_batch(self, keys: list[str], times, totals: IngestTotals, start: int = 0) -> None:
        """One batch to one worker, the next live one after ``start`` if it cannot be reached."""
        n = len(self.addrs)
        last_error: BaseException | None = None
        for j in range(n):
            i = (start + j) % n
            if i in totals.lost_workers and j < n - 1:
                continue
            msg = make("live_events", seq=next(self._seq), keys=keys, **({"times": times} if times is not None else {}))
            try:
                reply = await self.ask(i, msg, self.settings.send_timeout)
            except CONNECT_ERRORS as exc:
                totals.lost_workers.add(i)
                last_error = exc
                continue
            totals.lost_workers.discard(i)
            if "error" in reply:
                raise from_kind(str(reply.get("kind", "usage")), f"worker {i} refused a batch: {reply['error']}")
            totals.sent += len(keys)
            totals.batches += 1
            totals.accepted += reply["accepted"]
            totals.late += reply["late"]
            totals.early += reply["early"]
            totals.per_worker[i] = totals.per_worker.get(i, 0) + len(keys)
            return
        raise ClusterUnavailable(f"no worker took a batch of {len(keys)} events (last: {last_error})")

    async def ingest(self, batches, totals: IngestTotals | None = None, parallel: int | None = None) -> IngestTotals:
        """Sends ``(keys, times)`` batches (an async iterator), ``parallel`` at a time, round-robin over workers."""
        totals = totals or IngestTotals()
        parallel = parallel or len(self.addrs)
        rr = itertools.count()
        it = aiter(batches)
        taking = asyncio.Lock()          # one pump at a time in the iterator: an async generator is not reentrant

        async def pump() -> None:
            while True:
                async with taking:
                    try:
                        keys, times = await anext(it)
                    except StopAsyncIteration:
                        return
                await self.send_batch(keys, times, totals, next(rr) % len(self.addrs))

        async with _first_error():
            async with asyncio.TaskGroup() as tg:
                for _ in range(parallel):
                    tg.create_task(pump())
        return totals

    # -- queries --------------------------------------------------------------------------------
    async def top(self, k: int, last: str) -> dict:
        """The whole cluster's answer, from one worker: at once from the owners' pushed answers when they hold
        it, else that worker asks every owner over its links and names the ones that do not answer.

        A hedged request (as in "The Tail at Scale"): when the worker asked has not answered within
        ``live_query_hedge``, the next one is asked too and the first answer wins -- on a busy machine one
        worker's turn on a core can come late.  A worker that cannot be reached is passed over."""
        n = len(self.addrs)
        order = [(self._asked + j) % n for j in range(n)]
        timeout = self.settings.live_query_timeout + self.settings.connect_timeout
        errors: list[str] = []

        async def one(i: int) -> tuple[int, dict]:
            return i, await self.ask(i, make("live_top", seq=next(self._seq), k=k, last=last, whole=True), timeout)

        pending: set[asyncio.Task] = set()
        asked: dict[asyncio.Task, int] = {}
        hedge = False
        try:
            while True:
                if order and (not pending or hedge):
                    task = asyncio.create_task(one(order[0]))
                    asked[task] = order.pop(0)
                    pending.add(task)
                if not pending:
                    raise ClusterUnavailable("no worker answered: " + "; ".join(errors))
                done, pending = await asyncio.wait(pending, timeout=self.settings.live_query_hedge if order else None,
                                                   return_when=asyncio.FIRST_COMPLETED)
                hedge = not done
                for task in done:
                    try:
                        i, reply = task.result()
                    except CONNECT_ERRORS as exc:
                        errors.append(f"worker {asked[task]}: {_why(exc)}")
                        continue
                    self._asked = i                     # the same worker next time: its connection is open
                    if "error" in reply:
                        raise from_kind(str(reply.get("kind", "usage")), reply["error"])
                    return reply["whole"]
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def stats(self, detail: bool = False) -> list[dict]:
        """Every worker's live figures; ``detail``: with its event loop's recent slow events (worker.live.watch)."""
        rows: list[dict] = []

        async def one(i: int) -> None:
            try:
                reply = await self.ask(i, make("live_stats", seq=next(self._seq), **({"detail": True} if detail else {})),
                                       self.settings.status_timeout)
                rows.append({"up": True, **{k: v for k, v in reply.items() if k not in ("t", "v", "seq")}})
            except CONNECT_ERRORS as exc:
                rows.append({"worker": i, "up": False, "error": _why(exc)})

        async with asyncio.TaskGroup() as tg:
            for i in range(len(self.addrs)):
                tg.create_task(one(i))
        return sorted(rows, key=lambda r: r["worker"])


@contextlib.asynccontextmanager
async def _first_error():
    """A task group's failure as the one error the caller reads (the CLI's one line, the API's exception)."""
    try:
        yield
    except* ShardstatsError as group:
        raise group.exceptions[0] from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__
