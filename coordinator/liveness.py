"""Heartbeats: how the coordinator tells a busy worker from a dead or cut-off one.

While a job runs the coordinator pings every worker every ``heartbeat`` seconds
and workers answer at once (their heavy numpy steps run off the event loop).  A
worker from which nothing at all, not even a pong, has arrived for
``dead_after`` seconds is declared lost.  A worker whose process dies is noticed
sooner: its connection closes.  Workers watch the other way: a coordinator that
stays silent for ``worker_dead_after`` seconds has its jobs dropped.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from shardstats.coordinator.client import WorkerClient
from shardstats.protocol.errors import ProtocolError
from shardstats.protocol.messages import make
from shardstats.settings import DEFAULTS



@dataclass(frozen=True)
class Liveness:
    heartbeat: float = DEFAULTS.heartbeat      # seconds between pings to each worker during a job
    dead_after: float = DEFAULTS.dead_after    # silence after which a worker is declared lost

    @property
    def worker_dead_after(self) -> float:
        """What workers allow the coordinator: twice ours, so a slow coordinator is not mistaken for a dead one."""
        return max(2 * self.dead_after, 4 * self.heartbeat)


@asynccontextmanager
async def heartbeats(clients: list[WorkerClient], interval: float) -> AsyncIterator[None]:
    """Pings every client every ``interval`` s for the duration of the block.

    A failed ping ends that client's heartbeat quietly: the receiving side
    reports the loss, with the reason.  The block's own exception is re-raised
    as it is, not wrapped in an ExceptionGroup.
    """
    stop = asyncio.Event()
    failure: BaseException | None = None

    async def beat(c: WorkerClient) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            try:
                await c.send(make("ping", seq=seq))
            except (OSError, ConnectionError, TimeoutError):
                return
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    async with asyncio.TaskGroup() as tg:
        for c in clients:
            tg.create_task(beat(c))
        try:
            yield
        except BaseException as exc:  # noqa: BLE001 - re-raised below, once the heartbeats have stopped
            failure = exc
        finally:
            stop.set()
    if failure is not None:
        raise failure


async def answers(client: WorkerClient, timeout: float) -> bool:
    """Whether the worker answers a ping within ``timeout`` s (other messages on the way are skipped)."""
    seq = 1 << 40
    try:
        await client.send(make("ping", seq=seq))
        async with asyncio.timeout(timeout):
            while True:
                msg = await client.recv(timeout)
                if msg["t"] == "pong" and msg["seq"] == seq:
                    return True
    except (OSError, ConnectionError, TimeoutError, ProtocolError):
        return False
