"""A job, typed: the op, its validated parameters, the input, the reader's column and the deadlines.

Built once where the job is asked for (the CLI, the API), carried unchanged to the
coordinator, and sent to the workers in two parts: the reader options in ``load``,
the op and its wire-form parameters in ``run``.  No layer amends it: the phase
deadline is the coordinator's, the per-wait deadline a worker applies is the
worker's own setting, and neither travels inside an op's parameters.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shardstats.errors import UsageError
from shardstats.settings import DEFAULTS
from shardstats.worker.ops import registry
from shardstats.worker.ops.contract import Params


@dataclass(frozen=True)
class JobSpec:
    op: str
    params: Params
    inputs: tuple[str, ...]
    column: str | int | None = None          # the column of .csv/.parquet shards: a header name or a 0-based index
    header: bool | None = None               # whether a .csv's first row is a header (None: only with --column NAME)
    timeout: float = DEFAULTS.phase_timeout  # seconds each phase (load, run) may take
    max_retries: int = DEFAULTS.max_retries
    heartbeat: float = DEFAULTS.heartbeat
    dead_after: float = DEFAULTS.dead_after

    def __post_init__(self) -> None:
        op = registry.get(self.op)
        if not isinstance(self.params, op.params):
            raise UsageError(f"parameters of type {type(self.params).__name__} are not {self.op}'s")
        if op.prepare is not None:          # the client's side of the op: what travels (a job file's source)
            object.__setattr__(self, "params", op.prepare(self.params))
        if not self.inputs:
            raise UsageError("--input: name at least one file, directory or glob")
        c = self.column
        if not (c is None or isinstance(c, str) or (isinstance(c, int) and not isinstance(c, bool) and c >= 0)):
            raise UsageError(f"--column: {c!r} is not a column name or a 0-based index")
        if self.header is not None and not isinstance(self.header, bool):
            raise UsageError(f"--header: {self.header!r} is not yes or no")
        for name, value, low in (("--timeout", self.timeout, 0.1), ("--heartbeat", self.heartbeat, 0.05),
                                 ("--dead-after", self.dead_after, 0.2)):
            if not value >= low:
                raise UsageError(f"{name}: must be at least {low:g} seconds (got {value!r})")
        if self.max_retries < 0:
            raise UsageError(f"--max-retries: must be at least 0 (got {self.max_retries})")


def job_spec(op: str, inputs: str | Iterable[str], params: Params | Mapping | None = None, **options) -> JobSpec:
    """A spec from loose parts (the API, tests): ``params`` as the op's Params or a mapping of its fields."""
    if not isinstance(params, Params):
        params = registry.get(op).params.build(**dict(params or {}))
    inputs = (inputs,) if isinstance(inputs, str) else tuple(str(i) for i in inputs)
    return JobSpec(op=op, params=params, inputs=inputs, **options)
