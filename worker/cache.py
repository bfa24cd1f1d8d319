"""Datasets kept warm: a keyed job's input held in the worker's memory under a name, for the next questions.

``--cache NAME`` keeps what this worker read (every column) after the job; a later
job with ``--input cache:NAME`` starts from it and skips the files, as Spark's
``persist`` or an in-memory engine's loaded table do. The cache is bounded
(``budget()``: a sixteenth of the machine's memory or cgroup limit by default,
``SHARDSTATS_CACHE_BYTES`` to change it) and evicts the least recently used dataset
first; ``cluster status`` lists what each worker holds.
"""
from __future__ import annotations

import os
from collections import OrderedDict

from shardstats.errors import InputError, JobError


def budget() -> int:
    """The bytes a worker's cache may hold: ``SHARDSTATS_CACHE_BYTES``, else a sixteenth of the machine's budget.

    A value that is not a size of at least 1 MiB fails the job in one line naming the variable (the worker's
    setting, so the cluster's error: exit 1); it was a bare ``ValueError("'1000' is less than 1 MiB")``."""
    env = os.environ.get("SHARDSTATS_CACHE_BYTES")
    from shardstats.worker.memory import machine_budget, parse_size
    if not env:
        return machine_budget() // 16
    try:
        return parse_size(env)
    except ValueError as exc:
        raise JobError(f"SHARDSTATS_CACHE_BYTES={env!r} in this worker's environment: {exc}; give a size of at "
                       f"least 1 MiB (512M, 2G), or unset it (a sixteenth of the memory)") from None


class DatasetCache:
    """One worker's warm datasets: name -> (table, its described schema), least recently used first."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._held: "OrderedDict[str, tuple]" = OrderedDict()

    def put(self, name: str, table, described) -> bool:
        """Keeps ``table`` (evicting the least recently used); False when it alone exceeds the budget."""
        self._held.pop(name, None)
        limit = self.limit if self.limit is not None else budget()
        if table.nbytes > limit:
            return False
        while self._held and sum(t.nbytes for t, _ in self._held.values()) + table.nbytes > limit:
            self._held.popitem(last=False)
        self._held[name] = (table, described)
        return True

    def get(self, name: str) -> tuple:
        if name not in self._held:
            raise InputError(f"cache:{name}: not cached on every worker (evicted, too big for the cache, or never "
                             f"cached on these workers: run a job with --cache {name} first)")
        self._held.move_to_end(name)
        return self._held[name]

    def listing(self) -> list[dict]:
        return [{"name": n, "rows": t.num_rows, "bytes": t.nbytes} for n, (t, _) in self._held.items()]
