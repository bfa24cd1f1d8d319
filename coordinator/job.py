"""One job from the coordinator's side: load everywhere, run everywhere, collect.

Two phases so that bad input is caught before any worker starts exchanging data:
``load`` (each worker reads its files and reports how many values) and ``run``
(the op).  Any worker's error aborts the attempt on every worker.  Every wait has a
deadline, and heartbeats (coordinator/liveness.py) tell a lost worker from a busy
one within seconds.  A lost worker costs an attempt: the job runs again, from the
files, on the workers that are left, so the answer stays exact.  A worker that refuses
the job because it is busy (``WorkerBusy``) costs a pause: the job is tried again on
the same workers, with growing pauses, until the phase deadline.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from shardstats.coordinator.assign import assign
from shardstats.coordinator.client import WorkerClient
from shardstats.coordinator.liveness import Liveness, answers, heartbeats
from shardstats.coordinator.spec import JobSpec
from shardstats.protocol.errors import ProtocolError, TLSError
from shardstats.protocol.messages import make
from shardstats import logs
from shardstats.errors import (UsageError, ClusterUnavailable, EmptyDataset, JobError, JobTimeout, PeerFailure,
                               ShardstatsError, WorkerBusy, WorkerLost, from_kind)
from shardstats.worker.io.listing import SUFFIXES, ShardRef, is_object_url, list_refs
from shardstats.worker.ops import registry
from shardstats.settings import DEFAULTS

Progress = Callable[[int, dict], None]    # (worker id, progress message)


CONNECT_ERRORS = (OSError, TimeoutError, ConnectionError, ProtocolError)   # a worker we cannot talk to


_DOING = {"loaded": "reading its share of the input", "done": "its part of the job"}   # what a reply means


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@dataclass
class JobReport:
    op: str
    job: str
    result: dict
    workers: list[dict] = field(default_factory=list)   # per-worker stats, in rank order
    seconds: float = 0.0
    load_seconds: float = 0.0
    spec: JobSpec | None = None
    attempts: int = 1
    lost_workers: list[dict] = field(default_factory=list)   # {id, addr, attempt, reason}
    schema: bytes | None = None     # a rows answer's Arrow schema (IPC bytes; the result's ``_schema``), for the API


async def connect_reachable(addrs: list[str], token: bytes, timeout: float = DEFAULTS.connect_timeout,
                            tls: ssl.SSLContext | None = None
                            ) -> tuple[list[WorkerClient], list[dict]]:
    """Clients for the workers that answer, and a record of those that do not.

    A job runs on the reachable workers (the others' share of the files goes to
    them); only when none answers is the cluster unavailable.
    """
    async def one(addr: str) -> WorkerClient | BaseException:
        try:
            return await WorkerClient.connect(addr, token, timeout, tls)
        except CONNECT_ERRORS as exc:
            return exc
    got = await asyncio.gather(*(one(a) for a in addrs))
    clients = [g for g in got if isinstance(g, WorkerClient)]
    bad = [(i, a, g) for i, (a, g) in enumerate(zip(addrs, got)) if isinstance(g, BaseException)]
    if not clients:
        _, addr, exc = bad[0]
        if isinstance(exc, TLSError):       # its text names the address and which end wants what
            raise ClusterUnavailable(str(exc))
        if isinstance(exc, ProtocolError):
            raise ClusterUnavailable(f"worker at {addr} refused the handshake ({exc}); check CLUSTER_TOKEN, "
                                     f"CLUSTER_TOKEN_FILE or the cluster file")
        why = _why(exc)
        raise ClusterUnavailable(f"cannot reach worker at {addr} ({why}); {len(bad)} of {len(addrs)} workers "
                                 f"unreachable. Start a cluster with `cluster up --detach`, or pass --local N")
    lost = []
    for i, addr, exc in bad:
        why = _why(exc)
        lost.append({"id": i, "addr": addr, "attempt": 0, "reason": f"unreachable at the start ({why})"})
        logs.event("worker_unreachable", logging.WARNING, worker=i, addr=addr, error=why)
    return clients, lost


async def ping_all(addrs: list[str], token: bytes, timeout: float = DEFAULTS.status_timeout,
                   tls: ssl.SSLContext | None = None) -> list[dict]:
    """One status row per address; unreachable workers are reported, not raised."""
    async def one(i: int, addr: str) -> dict:
        c = None
        try:
            c = await WorkerClient.connect(addr, token, timeout, tls)
            t = time.perf_counter()
            await c.send(make("ping", seq=1))
            pong = await c.recv(timeout)
            return {"id": pong["id"], "addr": addr, "up": True, "rtt_ms": round((time.perf_counter() - t) * 1e3, 2),
                    **pong["info"]}
        except CONNECT_ERRORS as exc:
            return {"id": i, "addr": addr, "up": False, "error": _why(exc)}
        finally:
            if c is not None:
                await c.close()
    return list(await asyncio.gather(*(one(i, a) for i, a in enumerate(addrs))))


CACHE_PREFIX = "cache:"


def reader_options(spec: JobSpec) -> dict | None:
    """A keyed job's reader options for the load message (None for the int64 ops): the op's own, and
    ``from_cache`` when the input is a dataset the workers keep warm (``--input cache:NAME``)."""
    from shardstats.worker.ops.contract import reader_of
    op = registry.get(spec.op)
    read = reader_of(op, spec.params)
    if read is None:
        if any(i.startswith(CACHE_PREFIX) for i in spec.inputs):
            raise UsageError(f"--input {spec.inputs[0]}: cached datasets are for keyed jobs (groupby, wordcount, ...)")
        return None
    read = dict(read)
    cached = [i for i in spec.inputs if i.startswith(CACHE_PREFIX)]
    side_cached = [p for paths in (read.get("sides") or {}).values() for p in paths if p.startswith(CACHE_PREFIX)]
    if read.get("sides") and (cached or side_cached):
        # a join's workers describe one schema per side, a cached dataset one schema: the coordinator failed
        # on it with a traceback (exit 1), or looked for a file named cache:NAME
        raise UsageError(f"{(cached or side_cached)[0]}: a job of several inputs (a join, a MapReduce job with "
                         f"--side) reads them from their files; a cached dataset is a one-input job's input")
    if cached:
        if len(spec.inputs) > 1:
            raise UsageError(f"--input {cached[0]}: a cached dataset is the job's only input")
        read["from_cache"] = cached[0][len(CACHE_PREFIX):]
        read.pop("cache", None)
    return read


def _suffixes(spec: JobSpec) -> tuple[str, ...] | None:
    """The file types a directory input is listed for: the op's kind decides (None: any file, for documents)."""
    from shardstats.worker.ops.contract import reader_of
    kind = reader_of(registry.get(spec.op), spec.params)
    if kind is None:
        return SUFFIXES
    from shardstats.worker.data.readers import TABLE_SUFFIXES
    return None if kind.get("kind") in ("documents", "auto") and not kind.get("text") else TABLE_SUFFIXES


def _absolute_out(spec: JobSpec) -> JobSpec:
    """On a local cluster, ``--out`` as the user meant it: relative to where the command runs."""
    out = getattr(spec.params, "out", None)
    if not out or os.path.isabs(out) or is_object_url(out):      # s3://bucket/prefix/ is no path
        return spec
    return replace(spec, params=replace(spec.params, out=str(Path(out).resolve())))


def resolve_input(inputs: tuple[str, ...] | list[str] | str, absolute: bool,
                  suffixes: tuple[str, ...] | None = SUFFIXES) -> list[ShardRef]:
    """Every shard the inputs name (local files as workers should open them), with size and version;
    a shard named twice counts once."""
    refs: list[ShardRef] = []
    seen: set[str] = set()
    for path in ([inputs] if isinstance(inputs, str) else inputs):
        for r in list_refs(path, suffixes):
            if r.path not in seen:
                seen.add(r.path)
                refs.append(r)
    if not absolute:
        return refs
    return [r if is_object_url(r.path) else replace(r, path=str(Path(r.path).resolve())) for r in refs]


async def _send(client: WorkerClient, msg: dict) -> None:
    try:
        await client.send(msg)
    except (OSError, ConnectionError, TimeoutError) as exc:
        raise _lost(client, _why(exc)) from None


async def _expect(client: WorkerClient, job: str, want: str, timeout: float, live: Liveness,
                  on_progress: Progress | None = None) -> dict:
    """The worker's ``want`` message for this job; silence past ``live.dead_after`` means the worker is lost."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        try:
            if left <= 0:
                raise TimeoutError
            msg = await client.recv(min(left, live.dead_after))
        except TimeoutError:
            if loop.time() >= deadline:
                raise JobTimeout(f"worker {client.worker_id} at {client.addr} did not finish {_DOING[want]} within "
                                 f"the --timeout of {timeout:g} s; give it more time (--timeout SECONDS), or look "
                                 f"for trouble in that worker's log") from None
            raise _lost(client, f"silent for {live.dead_after:g}s") from None
        except (OSError, ConnectionError, ProtocolError) as exc:
            raise _lost(client, _why(exc)) from None
        if msg["t"] == "pong" or msg.get("job") != job:
            continue
        if msg["t"] == "progress":
            if on_progress is not None:
                on_progress(client.worker_id, msg)
            continue
        if msg["t"] == "error":
            exc = from_kind(msg["kind"], msg["message"])
            if isinstance(exc, WorkerLost):        # a worker that reports itself unfit: leave it out
                exc.worker = client.worker_id
            raise exc
        if msg["t"] == want:
            return msg


async def _all(clients: list[WorkerClient], job: str, want: str, timeout: float, live: Liveness,
               on_progress: Progress | None = None) -> list[dict]:
    """``want`` from every worker.  The first failure cancels the other waits: a lost worker must not
    leave the coordinator waiting out the phase deadline on the survivors."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_expect(c, job, want, timeout, live, on_progress)) for c in clients]
    except BaseExceptionGroup as eg:
        raise _most_telling(eg) from None
    return [t.result() for t in tasks]


def _most_telling(eg: BaseExceptionGroup) -> BaseException:
    """Bad input first (the user can fix it), then a lost worker (it explains the rest), then anything else."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)
    walk(eg)
    other = [e for e in leaves if not isinstance(e, ShardstatsError)]
    if other:
        return other[0]
    return min(leaves, key=lambda e: (e.exit_code != 2, not isinstance(e, WorkerLost)))  # type: ignore[attr-defined]


ABORT_WAIT = 5.0        # seconds a worker has to confirm an abort (it drops the job and its spill folder at once)


async def _abort(clients: list[WorkerClient], job: str) -> None:
    """Aborts the job everywhere and waits (``ABORT_WAIT`` at most) for each worker's "aborted": the worker
    removes the job's spill folder before it answers, so a failed job's command returns with no spill file
    left on any worker that answers (without the wait a listing right after the command found two of them)."""
    async def one(c: WorkerClient) -> None:
        try:
            await c.send(make("abort", job=job))
            async with asyncio.timeout(ABORT_WAIT):
                while True:           # the job's own late messages (progress, its error) may come first
                    msg = await c.recv(ABORT_WAIT)
                    if msg["t"] == "aborted" and msg.get("job") == job:
                        return
        except (OSError, TimeoutError, ConnectionError, ProtocolError):
            pass
    await asyncio.gather(*(one(c) for c in clients))


async def _attempt(clients: list[WorkerClient], job: str, spec: JobSpec, files: list[ShardRef],
                   live: Liveness, on_progress: Progress | None,
                   sides: dict[str, list[ShardRef]] | None = None) -> JobReport:
    """One try of the job on these workers: load everywhere, then run everywhere, with heartbeats throughout.

    ``sides``: a job's named inputs besides ``--input`` (a join's right side), each spread over the
    workers on its own, so every worker holds a share of every side."""
    t0 = time.perf_counter()
    sides = sides or {}
    async with heartbeats(clients, live.heartbeat):
        plan = assign(files, len(clients))
        side_plans = {name: assign(refs, len(clients)) for name, refs in sides.items()}
        # Reader options travel in the load message (extra fields are allowed by the schema).
        extra: dict = {k: v for k, v in (("column", spec.column), ("header", spec.header)) if v is not None}
        op = registry.get(spec.op)
        read = reader_options(spec)
        if read is not None:
            extra["read"] = {k: v for k, v in read.items() if k != "sides"}
        if on_progress is not None:        # workers send progress only when asked (worker/comm/progress.py)
            extra["progress"] = DEFAULTS.progress_interval
        where = {r.path: i for i, r in enumerate(files)}
        for i, (c, mine) in enumerate(zip(clients, plan)):
            if read is not None and read.get("ordinals"):      # each file's place in the listing (a sort's ties)
                extra["read"] = {**extra["read"], "ordinals": [where[r.path] for r in mine]}
            if sides:                                          # which side each file belongs to
                side_of = ["main"] * len(mine)
                mine = list(mine)
                for name, sp in side_plans.items():
                    mine += sp[i]
                    side_of += [name] * len(sp[i])
                extra["read"] = {**extra["read"], "side_of": side_of, "side_names": ["main", *sides]}
            await _send(c, make("load", job=job, op=spec.op, files=[r.wire() for r in mine],
                                dead_after=live.worker_dead_after, **extra))
        loaded = await _all(clients, job, "loaded", spec.timeout, live, on_progress)
        total = sum(m["values"] for m in loaded)
        if total == 0 and op.reads is None:
            raise EmptyDataset(f"{', '.join(spec.inputs)}: the input holds no values")
        if read is not None and sides:      # one agreed schema per side
            from shardstats.worker.data.schema import unify
            extra_run = {"schema": {name: unify([(m.get("schema") or {}).get(name) or [] for m in loaded],
                                          final=True)
                                    for name in ["main", *sides]}}
        elif read is not None:       # the workers' schemas agreed into one (exit 2 naming two files if they differ)
            from shardstats.worker.data.schema import unify
            extra_run = {"schema": unify([m.get("schema") or [] for m in loaded], final=True)}
        else:
            extra_run = {}
        facts = [m.get("facts") for m in loaded]
        if op.merge_facts is not None and loaded and all(isinstance(f, dict) for f in facts):
            extra_run["facts"] = functools.reduce(op.merge_facts, facts)   # every rank's load's, combined once
        passes = max((m.get("passes") or 1 for m in loaded), default=1)
        if passes > 1:      # a worker keeps its values on disk: every rank takes that many passes over them
            extra_run["passes"] = passes
        t1 = time.perf_counter()
        ranks = [c.worker_id for c in clients]
        for c in clients:
            await _send(c, make("run", job=job, op=spec.op, params=spec.params.to_wire(), ranks=ranks, total=total,
                                 timeout=spec.timeout, **extra_run))
        done = await _all(clients, job, "done", spec.timeout, live, on_progress)
    result = next((d["result"] for d in done if "result" in d), None)
    if result is None:
        raise JobError("no worker returned a result")
    schema = result.pop("_schema", None)       # how the rows were typed: the API's, not the --json document's
    return JobReport(op=spec.op, job=job, result=result, workers=[d["stats"] for d in done],
                     seconds=time.perf_counter() - t1, load_seconds=t1 - t0, spec=spec,
                     schema=schema if isinstance(schema, bytes) else None)


def _lost(client: WorkerClient, why: str) -> WorkerLost:
    return WorkerLost(f"lost worker {client.worker_id} at {client.addr} ({why})", client.worker_id)


BUSY_PAUSES = (0.05, 2.0)      # a busy cluster is tried again after 50 ms, the pause doubling up to 2 s


def _retryable(exc: ShardstatsError) -> bool:
    """A lost worker, or a worker that lost a peer: the job can run again without it."""
    return isinstance(exc, (WorkerLost, PeerFailure))


async def _find_lost(clients: list[WorkerClient], exc: ShardstatsError, live: Liveness) -> list[tuple[WorkerClient, str]]:
    """The workers the failed attempt lost: the one the failure names, and any that no longer answer a ping."""
    named = exc.worker if isinstance(exc, WorkerLost) else None
    rest = [c for c in clients if c.worker_id != named]
    ok = await asyncio.gather(*(answers(c, live.dead_after) for c in rest))
    lost = [(c, str(exc)) for c in clients if c.worker_id == named]
    lost += [(c, "did not answer a ping after the failure") for c, up in zip(rest, ok) if not up]
    return lost


async def run_job(addrs: list[str], token: bytes, spec: JobSpec, *, absolute_paths: bool = True,
                  on_progress: Progress | None = None, tls: ssl.SSLContext | None = None) -> JobReport:
    """Runs the job, and again on the survivors (up to ``max_retries`` times) when workers are lost.

    Every attempt re-reads the input from scratch with the files spread over the
    workers that are left, so the answer is exact whatever the moment of the fault.
    """
    live = Liveness(spec.heartbeat, spec.dead_after)
    max_retries = spec.max_retries
    files = [] if any(i.startswith(CACHE_PREFIX) for i in spec.inputs) else \
        resolve_input(spec.inputs, absolute_paths, _suffixes(spec))
    read = reader_options(spec)
    sides = {name: resolve_input(tuple(paths), absolute_paths, _suffixes(spec))
             for name, paths in ((read or {}).get("sides") or {}).items()}
    if absolute_paths:
        spec = _absolute_out(spec)
    clients, lost = await connect_reachable(addrs, token, tls=tls)
    base = os.urandom(6).hex()      # 48 random bits, as uuid4().hex[:12] gave (uuid imports platform: ~2 ms)
    attempt, tries = 1, 0         # attempts lost to faults (max_retries); tries of any kind (the job's ids)
    busy_until, pause = None, BUSY_PAUSES[0]
    try:
        while True:
            tries += 1
            job = base if tries == 1 else f"{base}.{tries}"
            try:
                rep = await _attempt(clients, job, spec, files, live, on_progress, sides)
            except WorkerBusy as exc:
                # Refused at the load, before any work: not an attempt lost, a wait for a free slot.  The
                # others hold the job's load: abort it there, pause, and ask again, within the phase deadline.
                await _abort(clients, job)
                now = time.monotonic()
                busy_until = busy_until or now + spec.timeout
                if now + pause > busy_until:
                    raise WorkerBusy(f"{exc}; still busy after {tries} tries in {spec.timeout:g} s "
                                     f"(--timeout): try later, or raise the workers' job limit") from None
                logs.event("job_busy", logging.WARNING, job=base, tries=tries, pause=pause, error=str(exc))
                await asyncio.sleep(pause)
                pause = min(pause * 2, BUSY_PAUSES[1])
                continue
            except ShardstatsError as exc:
                gone = await _find_lost(clients, exc, live) if _retryable(exc) else []
                clients = [c for c in clients if all(c is not g for g, _ in gone)]
                await _abort(clients, job)
                for c, why in gone:
                    lost.append({"id": c.worker_id, "addr": c.addr, "attempt": attempt, "reason": why})
                    logs.event("worker_lost", logging.WARNING, job=job, worker=c.worker_id, reason=why)
                    await c.close()
                if not _retryable(exc):
                    if isinstance(exc, JobTimeout) and spec.op == "mapreduce":
                        # the user's own code is the likely cause, and the worker's log says nothing of it
                        raise JobTimeout(f"{exc}; a mapreduce job's own functions (mapper, reducer...) may loop or "
                                         f"wait: their process on every worker was killed") from None
                    raise
                if not clients:
                    raise JobError(f"no workers left after attempt {attempt}: {exc}") from None
                if attempt > max_retries:
                    raise JobError(f"{exc} (gave up after {_plural(attempt, 'attempt')}; "
                                   f"lost workers {', '.join(str(x['id']) for x in lost) or 'none'})") from None
                logs.event("job_retry", logging.WARNING, job=base, attempt=attempt + 1, workers=len(clients),
                           error=str(exc))
                attempt += 1
                continue
            except BaseException:
                await _abort(clients, job)
                raise
            rep.job, rep.attempts, rep.lost_workers = base, attempt, lost
            return rep
    finally:
        for c in clients:
            await c.close()
