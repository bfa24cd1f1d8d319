"""One job from the coordinator's side: load everywhere, run everywhere, collect.

Two phases so that bad input is caught before any worker starts exchanging data:
``load`` (each worker reads its files and reports how many values) and ``run``
(the op).  Any worker's error aborts the job on every worker.  Every wait has a
deadline.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.assign import assign
from coordinator.client import WorkerClient
from protocol.errors import ProtocolError
from protocol.messages import make
from worker.errors import InputError
from worker.inputs import list_shards

DEFAULT_TIMEOUT = 300.0


class JobFailed(Exception):
    """The job did not produce an answer.  ``exit_code`` is 2 for bad input, 1 for a cluster failure."""

    def __init__(self, message: str, kind: str = "cluster") -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = 2 if kind in ("input", "empty", "usage") else 1


class ClusterUnavailable(JobFailed):
    def __init__(self, message: str) -> None:
        super().__init__(message, "cluster")


@dataclass
class JobReport:
    op: str
    job: str
    result: dict
    workers: list[dict] = field(default_factory=list)   # per-worker stats, in rank order
    seconds: float = 0.0
    load_seconds: float = 0.0
    params: dict = field(default_factory=dict)


async def connect_all(addrs: list[str], token: bytes, timeout: float = 5.0) -> list[WorkerClient]:
    async def one(addr: str) -> WorkerClient | BaseException:
        try:
            return await WorkerClient.connect(addr, token, timeout)
        except (OSError, TimeoutError, ConnectionError, ProtocolError) as exc:
            return exc
    got = await asyncio.gather(*(one(a) for a in addrs))
    bad = [(a, g) for a, g in zip(addrs, got) if isinstance(g, BaseException)]
    if bad:
        for g in got:
            if isinstance(g, WorkerClient):
                await g.close()
        addr, exc = bad[0]
        why = "wrong cluster token" if isinstance(exc, ProtocolError) else (str(exc) or type(exc).__name__)
        raise ClusterUnavailable(f"cannot reach worker at {addr} ({why}); {len(bad)} of {len(addrs)} workers "
                                 f"unreachable. Start a cluster with `cluster up --detach`, or pass --local N")
    return got  # type: ignore[return-value]


async def ping_all(addrs: list[str], token: bytes, timeout: float = 2.0) -> list[dict]:
    """One status row per address; unreachable workers are reported, not raised."""
    async def one(i: int, addr: str) -> dict:
        try:
            c = await WorkerClient.connect(addr, token, timeout)
        except (OSError, TimeoutError, ConnectionError, ProtocolError) as exc:
            return {"id": i, "addr": addr, "up": False, "error": str(exc) or type(exc).__name__}
        try:
            t = time.perf_counter()
            await c.send(make("ping", seq=1))
            pong = await c.recv(timeout)
            return {"id": pong["id"], "addr": addr, "up": True, "rtt_ms": round((time.perf_counter() - t) * 1e3, 2),
                    **pong["info"]}
        except (OSError, TimeoutError, ConnectionError, ProtocolError) as exc:
            return {"id": i, "addr": addr, "up": False, "error": str(exc) or type(exc).__name__}
        finally:
            await c.close()
    return list(await asyncio.gather(*(one(i, a) for i, a in enumerate(addrs))))


def resolve_input(path: str, absolute: bool) -> list[tuple[str, int]]:
    """(path as workers should open it, size) for every shard file the input names."""
    files = list_shards(path)
    out = []
    for f in files:
        try:
            size = os.path.getsize(f)
        except OSError as exc:
            raise InputError(f"{f}: cannot stat ({exc.strerror})") from None
        out.append((str(Path(f).resolve()) if absolute else f, size))
    return out


async def _expect(client: WorkerClient, job: str, want: str, timeout: float) -> dict:
    while True:
        try:
            msg = await client.recv(timeout)
        except TimeoutError:
            raise JobFailed(f"worker {client.worker_id} at {client.addr} sent no {want} within {timeout:g}s") from None
        except (OSError, ConnectionError, ProtocolError) as exc:
            raise JobFailed(f"lost worker {client.worker_id} at {client.addr} ({exc or type(exc).__name__})") from None
        if msg.get("job") != job:
            continue
        if msg["t"] == "error":
            raise JobFailed(msg["message"], msg["kind"])
        if msg["t"] == want:
            return msg


async def _all(clients: list[WorkerClient], job: str, want: str, timeout: float) -> list[dict]:
    """Waits for ``want`` from every worker; the first error wins (input errors before others)."""
    got = await asyncio.gather(*(_expect(c, job, want, timeout) for c in clients), return_exceptions=True)
    errors = [g for g in got if isinstance(g, BaseException)]
    if errors:
        for e in errors:
            if not isinstance(e, JobFailed):
                raise e
        raise min(errors, key=lambda e: e.exit_code != 2)  # type: ignore[union-attr]
    return got  # type: ignore[return-value]


async def _abort(clients: list[WorkerClient], job: str) -> None:
    async def one(c: WorkerClient) -> None:
        try:
            await c.send(make("abort", job=job))
        except (OSError, TimeoutError, ConnectionError):
            pass
    await asyncio.gather(*(one(c) for c in clients))


async def run_job(addrs: list[str], token: bytes, op: str, input_path: str, params: dict | None = None,
                  *, absolute_paths: bool = True, timeout: float = DEFAULT_TIMEOUT) -> JobReport:
    params = dict(params or {})
    try:
        files = resolve_input(input_path, absolute_paths)
    except InputError as exc:
        raise JobFailed(str(exc), "input") from None
    clients = await connect_all(addrs, token)
    job = uuid.uuid4().hex[:12]
    t0 = time.perf_counter()
    try:
        plan = assign(files, len(clients))
        # Reader options travel in the load message (extra fields are allowed by the schema).
        load_extra = {"column": params["column"]} if params.get("column") is not None else {}
        for c, mine in zip(clients, plan):
            await c.send(make("load", job=job, files=mine, **load_extra))
        loaded = await _all(clients, job, "loaded", timeout)
        total = sum(m["values"] for m in loaded)
        if total == 0:
            raise JobFailed(f"{input_path}: the input holds no values", "empty")
        t1 = time.perf_counter()
        ranks = [c.worker_id for c in clients]
        params.setdefault("total", total)
        params.setdefault("timeout", timeout)
        for c in clients:
            await c.send(make("run", job=job, op=op, params=params, ranks=ranks))
        done = await _all(clients, job, "done", timeout)
        result = next((d["result"] for d in done if "result" in d), None)
        if result is None:
            raise JobFailed("no worker returned a result")
        return JobReport(op=op, job=job, result=result, workers=[d["stats"] for d in done],
                         seconds=time.perf_counter() - t1, load_seconds=t1 - t0, params=params)
    except BaseException:
        await _abort(clients, job)
        raise
    finally:
        for c in clients:
            await c.close()
