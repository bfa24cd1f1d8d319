"""The job parameters of ``mode`` and ``median``, built and checked in one place for the CLI and the Python API.

Errors are ``ValueError`` with a message that names the option the way the CLI
spells it (``--fan-in``); the CLI prints it and exits 2, the API raises it.
"""
from __future__ import annotations

from collections.abc import Iterable

TIES = ("smallest", "all")
EVEN = ("mean", "lower", "upper")


def _column(column: str | int | None) -> str | int | None:
    if column is None or isinstance(column, str):
        return column
    if isinstance(column, int) and not isinstance(column, bool) and column >= 0:
        return column
    raise ValueError(f"--column: {column!r} is not a column name or a 0-based index")


def mode_params(ties: str = "smallest", shuffle: str = "credit", fan_in: int = 1, credits: int = 4,
                chunk_bytes: int = 1 << 20, column: str | int | None = None) -> dict:
    from shardstats.worker.ops.mode import DEFAULT_TIE_LIMIT, MAX_TIE_LIMIT
    from shardstats.worker.comm.shuffle import STRATEGIES
    if ties not in TIES:
        raise ValueError(f"--ties: {ties!r} is not one of {', '.join(TIES)}")
    if shuffle not in STRATEGIES:
        raise ValueError(f"--shuffle: {shuffle!r} is not one of {', '.join(STRATEGIES)}")
    for name, v in (("fan-in", fan_in), ("credits", credits), ("chunk-bytes", chunk_bytes)):
        if v < 1:
            raise ValueError(f"--{name} must be at least 1")
    params: dict = {"shuffle": shuffle, "fan_in": fan_in, "credits": credits, "chunk_bytes": chunk_bytes,
                    "tie_limit": MAX_TIE_LIMIT if ties == "all" else DEFAULT_TIE_LIMIT}
    if column is not None:
        params["column"] = _column(column)
    return params


def median_params(even: str = "mean", quantiles: str | Iterable[float | str] | None = None,
                  column: str | int | None = None) -> dict:
    """``quantiles``: "0.9,0.99" or a list of numbers; kept as their text so the op reads them exactly."""
    if even not in EVEN:
        raise ValueError(f"--even: {even!r} is not one of {', '.join(EVEN)}")
    params: dict = {"even": even}
    if quantiles:
        items = quantiles.split(",") if isinstance(quantiles, str) else list(quantiles)
        qs = [str(q).strip() for q in items if str(q).strip()]
        from shardstats.errors import UsageError
        from shardstats.worker.ops.median import parse_quantile   # the workers' own check (they re-check what they get)
        try:
            for q in qs:
                parse_quantile(q)
        except UsageError:
            raise ValueError(f"--quantiles: {quantiles!r} is not a list of numbers between 0 and 1") from None
        params["quantiles"] = qs
    if column is not None:
        params["column"] = _column(column)
    return params
