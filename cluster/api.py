"""A Python API for notebooks and scripts: the same jobs, results and stats as ``cluster submit --json``.

    from shardstats.cluster.api import Cluster

    with Cluster.local(4) as c:                 # an ephemeral local cluster, stopped on exit
        r = c.mode("shards/")
        print(r.value, r.count, r.stats["bytes_sent"])
        m = c.median("shards/", even="mean", quantiles=[0.9])
        print(m.value, m.quantiles["0.9"])

    c = Cluster.connect()                       # a running cluster: --cluster-file, $CLUSTER_WORKERS, `cluster up`

Why a thin layer: parameters are built and checked by ``cluster.jobparams`` (as
the CLI does), the job is ``coordinator.job.run_job``, and the stats dict is
``cluster.output.summarize_stats`` -- so the API cannot drift from the CLI's JSON.

The methods are synchronous and work from a plain script (they run the job with
``asyncio.run``/uvloop, as the CLI does) and also from inside a running event
loop such as Jupyter's (there the job runs on a helper thread).  In async code,
``await c.mode_async(...)`` avoids the thread.  Failures raise
``coordinator.job.JobFailed`` (``exit_code`` 2 for bad input, 1 for the cluster);
bad parameters raise ``ValueError``.
"""
from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypeVar

from shardstats.cluster import launcher
from shardstats.cluster.config import ClusterInfo, find_cluster
from shardstats.cluster.jobparams import median_params, mode_params
from shardstats.cluster.output import json_document, summarize_stats
from shardstats.settings import DEFAULTS
from shardstats.coordinator.job import JobReport, ping_all, run_job

T = TypeVar("T")


def _exact(x: Any) -> Any:
    """An integral Fraction as an int; other values unchanged (a Fraction stays exact)."""
    return x.numerator if isinstance(x, Fraction) and x.denominator == 1 else x


def _in_sync(fn: Callable[[], T]) -> T:
    """Calls ``fn`` (which may start its own event loop) here, or on a thread when a loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:   # handed to the caller's thread and re-raised there
            box["error"] = exc
    t = threading.Thread(target=target, name="cluster-api")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    from shardstats.cluster.cli import run_async
    return _in_sync(lambda: run_async(coro_fn()))


@dataclass(frozen=True)
class Result:
    """One job's answer.  ``result`` and ``stats`` are exactly the CLI's JSON ``result`` and ``stats``."""
    op: str
    result: dict
    stats: dict
    report: JobReport

    @property
    def value(self) -> int | Fraction:
        """The mode, or the median (an int, or a Fraction such as 7/2 for the mean of two middle values)."""
        return _exact(self.result["value"])

    @property
    def count(self) -> int | None:
        """How often the mode occurs (None for a median)."""
        return self.result.get("count")

    @property
    def ties(self) -> list[int]:
        return list(self.result.get("ties", []))

    @property
    def lower(self) -> int | None:
        return self.result.get("lower")

    @property
    def upper(self) -> int | None:
        return self.result.get("upper")

    @property
    def quantiles(self) -> dict[str, int | Fraction]:
        """q (as text, e.g. "0.9") -> exact value."""
        return {q: _exact(v["value"]) for q, v in (self.result.get("quantiles") or {}).items()}

    def json(self) -> str:
        """The document ``cluster submit ... --json`` prints for this job (exact numbers)."""
        return json_document(self.report)

    @classmethod
    def from_report(cls, rep: JobReport) -> "Result":
        return cls(op=rep.op, result=dict(rep.result), stats=summarize_stats(rep), report=rep)


class Cluster:
    """A handle on a cluster.  ``Cluster.local(n)`` owns its workers and stops them on ``close()``."""

    def __init__(self, info: ClusterInfo, *, owned: bool = False, timeout: float = DEFAULTS.phase_timeout,
                 source: str = "") -> None:
        self.info = info
        self.owned = owned
        self.timeout = timeout
        self.source = source
        # An owned cluster is stopped even if the caller forgets close() (at garbage collection or exit).
        self._finalizer = weakref.finalize(self, launcher.stop, info) if owned else None

    @classmethod
    def local(cls, workers: int = 4, *, log_level: str = "warning", log_dir: str | None = None,
              timeout: float = DEFAULTS.phase_timeout, tls_dir: str | None = None) -> "Cluster":
        """Starts ``workers`` worker processes on 127.0.0.1 (ports chosen by the OS); with mutual TLS when
        ``tls_dir`` holds what ``cluster tls init`` wrote."""
        info = _in_sync(lambda: launcher.start(workers, "127.0.0.1", None, log_dir, log_level, tls_dir=tls_dir))
        return cls(info, owned=True, timeout=timeout, source="local")

    @classmethod
    def connect(cls, cluster_file: str | None = None, *, timeout: float = DEFAULTS.phase_timeout) -> "Cluster":
        """An existing cluster, found the way the CLI finds it (raises ``cluster.config.ConfigError``)."""
        info, source = find_cluster(cluster_file)
        return cls(info, owned=False, timeout=timeout, source=source)

    @property
    def workers(self) -> list[str]:
        return list(self.info.workers)

    def close(self) -> None:
        """Stops the workers of a cluster this handle started; a connected cluster is left running."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cluster({len(self.info.workers)} workers, {'owned' if self.owned else self.source})"

    # -- jobs ------------------------------------------------------------------------------
    async def submit_async(self, op: str, path: str, params: dict, timeout: float | None = None) -> Result:
        if self._finalizer is not None and not self._finalizer.alive:
            raise RuntimeError("this cluster was closed")
        rep = await run_job(self.info.workers, self.info.token.encode(), op, str(path), params,
                            absolute_paths=self.info.local, timeout=timeout or self.timeout,
                            tls=self.info.client_tls())
        return Result.from_report(rep)

    async def mode_async(self, path: str, *, ties: str = "smallest", column: str | int | None = None,
                         shuffle: str = "credit", fan_in: int = 1, credits: int = 4, chunk_bytes: int = 1 << 20,
                         timeout: float | None = None) -> Result:
        params = mode_params(ties, shuffle, fan_in, credits, chunk_bytes, column)
        return await self.submit_async("mode", path, params, timeout)

    async def median_async(self, path: str, *, even: str = "mean",
                           quantiles: str | Iterable[float | str] | None = None, column: str | int | None = None,
                           timeout: float | None = None) -> Result:
        params = median_params(even, quantiles, column)
        return await self.submit_async("median", path, params, timeout)

    def mode(self, path: str, **kw: Any) -> Result:
        """The exact mode of the shards ``path`` names (a directory, file or glob).  Keywords as ``mode_async``."""
        params = mode_params(**{k: kw.pop(k) for k in list(kw) if k not in ("timeout",)})
        return _run(lambda: self.submit_async("mode", path, params, kw.get("timeout")))

    def median(self, path: str, **kw: Any) -> Result:
        """The exact median (and ``quantiles``) of the shards ``path`` names.  Keywords as ``median_async``."""
        params = median_params(**{k: kw.pop(k) for k in list(kw) if k not in ("timeout",)})
        return _run(lambda: self.submit_async("median", path, params, kw.get("timeout")))

    def status(self, timeout: float = 2.0) -> list[dict]:
        """One row per worker, as ``cluster status --json`` lists them."""
        return _run(lambda: ping_all(self.info.workers, self.info.token.encode(), timeout=timeout,
                                     tls=self.info.client_tls()))
