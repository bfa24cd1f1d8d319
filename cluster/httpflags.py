"""The options of a worker's HTTP port (worker/httpd.py: ``/metrics`` for Prometheus), for ``cluster worker``
and ``cluster up``, and the one rule for the default port.

The default: a worker's HTTP port is its own port plus ``Settings.http_port_offset`` (1000), so a worker on
7000 serves metrics on 8000, and ``cluster up``'s worker i (BASE+i) on BASE+1000+i.  One rule for every way
a worker starts (compose, Kubernetes, ``cluster up``), so a scrape config can be written without asking.

The options reach the commands through the click context (``worker_http``, ``up_http_base``), not their
signatures: the two commands take many options from several features, and these stay in one place.
"""
from __future__ import annotations

import functools

import click

from shardstats.settings import DEFAULTS

_KEY = "shardstats.http"


def worker_options(fn):
    """``--http-port PORT`` / ``--no-http`` / ``--metrics-auth`` for ``cluster worker``."""
    @functools.wraps(fn)
    def wrapper(*args, http_port: int | None, no_http: bool, metrics_auth: bool, **kw):
        click.get_current_context().meta[_KEY] = (http_port, no_http, metrics_auth)
        if not no_http and http_port != 0:
            # The daemon is a process of its own: leave out the *_created series (a timestamp per series,
            # doubling what Prometheus stores; its text-format parser ignores them anyway).
            import prometheus_client
            prometheus_client.disable_created_metrics()
        return fn(*args, **kw)
    wrapper = click.option("--metrics-auth", is_flag=True, help="/metrics asks for the cluster token too "
                           "(Authorization: Bearer TOKEN); by default Prometheus scrapes it without.")(wrapper)
    wrapper = click.option("--no-http", is_flag=True, help="Serve no HTTP port (no metrics).")(wrapper)
    return click.option("--http-port", type=click.IntRange(0, 65535), default=None,
                        help=f"Port of the HTTP endpoint (GET /metrics for Prometheus), on --listen's host; 0: none "
                        f"[default: --listen's port + {DEFAULTS.http_port_offset}].")(wrapper)


def up_options(fn):
    """``--http-port BASE`` / ``--no-http`` for ``cluster up``."""
    @functools.wraps(fn)
    def wrapper(*args, http_port: int | None, no_http: bool, **kw):
        click.get_current_context().meta[_KEY] = (http_port, no_http, False)
        return fn(*args, **kw)
    wrapper = click.option("--no-http", is_flag=True, help="The workers serve no HTTP port (no metrics).")(wrapper)
    return click.option("--http-port", type=click.IntRange(0, 65535), default=None,
                        help=f"Worker i serves HTTP (GET /metrics) on this port + i; 0: none "
                        f"[default: --base-port + {DEFAULTS.http_port_offset}].")(wrapper)


def default_port(port: int) -> int | None:
    """The HTTP port of a worker listening on ``port`` when no option says (None: none, for port 0)."""
    return port + DEFAULTS.http_port_offset if port else None


def _chosen() -> tuple[int | None, bool, bool]:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_KEY, (None, False, False)) if ctx is not None else (None, False, False)


def worker_http(listen: str) -> dict:
    """``WorkerServer`` keywords for the HTTP port the options chose: ``http_port`` and ``metrics_auth``."""
    port, off, auth = _chosen()
    if off or port == 0:
        return {"http_port": None, "metrics_auth": auth}
    if port is None:
        port = default_port(int(listen.rpartition(":")[2] or 0))
        if port is not None and port > 65535:
            raise ValueError(f"--listen {listen}: the default HTTP port {port} is past 65535; "
                             f"pass --http-port or --no-http")
    return {"http_port": port, "metrics_auth": auth}


def up_http_base(base_port: int | None) -> int | None:
    """The first worker's HTTP port for ``cluster up`` (None: no HTTP)."""
    port, off, _ = _chosen()
    if off or port == 0:
        return None
    if port is not None:
        return port
    return default_port(base_port) if base_port else 0
