"""A whole cluster inside the caller's event loop: worker servers on 127.0.0.1, real TCP, the real codec.

For integration tests that are about the protocol, the shuffle or the coordinator
and not about processes dying (those start real processes with ``Cluster.local``
or the launcher).  Like dask's ``gen_cluster``: no process start-up (a 10-worker
cluster is up in milliseconds, not seconds), and a failing test shows one
traceback in one process.

    async with in_process_cluster(3, root=tmp_path) as c:
        rep = await run_job(c.addrs, c.token, job_spec("mode", str(tmp_path)))
"""
from __future__ import annotations

import asyncio
import errno
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from shardstats.cluster.launcher import free_ports
from shardstats.settings import DEFAULTS, Settings
from shardstats.worker.server import WorkerServer


@dataclass
class InProcessCluster:
    addrs: list[str]
    token: bytes
    servers: list[WorkerServer]


@asynccontextmanager
async def in_process_cluster(workers: int = 3, *, root: str = "/", settings: Settings = DEFAULTS,
                             token: bytes | None = None, start_timeout: float = 10.0,
                             http: bool = False) -> AsyncIterator[InProcessCluster]:
    """``workers`` servers in this loop; all stopped (and their tasks ended) when the block exits.

    ``http``: each worker serves its HTTP endpoint too, on a free port (``servers[i].http_port``)."""
    token = token or secrets.token_hex(32).encode()
    for attempt in range(5):              # a port taken between choosing and binding: choose again
        addrs = [f"127.0.0.1:{p}" for p in free_ports("127.0.0.1", workers)]
        servers = [WorkerServer(i, addrs[i], addrs, token, root=str(root), settings=settings,
                                http_port=0 if http else None) for i in range(workers)]
        ready = [asyncio.Event() for _ in servers]
        tasks = [asyncio.create_task(s.serve(r), name=f"worker-{s.id}") for s, r in zip(servers, ready)]
        try:
            async with asyncio.timeout(start_timeout):
                while not all(r.is_set() for r in ready) and not any(t.done() for t in tasks):
                    await asyncio.sleep(0.005)
        except TimeoutError:
            pass
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if not failed and all(r.is_set() for r in ready):
            break
        for s in servers:
            s.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        exc = failed[0].exception() if failed else TimeoutError(f"workers not up within {start_timeout:g}s")
        in_use = isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE
        if not in_use or attempt == 4:
            raise exc
    try:
        yield InProcessCluster(addrs, token, servers)
    finally:
        for s in servers:
            s.stop()
        async with asyncio.timeout(start_timeout):
            await asyncio.gather(*tasks, return_exceptions=True)


def run_on_ranks(op, parts: list, params: dict, *, net=None, timeout: float = 20.0):
    """``op`` (an ``Op`` or its name) on one rank of an in-memory network per part, every rank's share given:
    ([(result, stats) per rank], the network, whose comms hold each rank's traffic).  No sockets, no
    processes: for tests and benchmarks of an op itself (params validated as a worker validates them)."""
    from shardstats.worker.comm.inmemory import InMemoryNetwork
    from shardstats.worker.ops import registry
    op = registry.get(op) if isinstance(op, str) else op
    typed = op.params.from_wire(dict(params or {}))
    net = net or InMemoryNetwork(len(parts), timeout=timeout)

    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(op.run(net.comms[r], parts[r], typed)) for r in range(len(parts))]
        return [t.result() for t in tasks]
    return asyncio.run(main()), net
