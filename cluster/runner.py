"""Running a coroutine from synchronous code: the CLI's commands and the API's plain methods.

A worker's loop is uvloop when it is importable: it carries the data. A client's
(the coordinator in ``cluster submit``, ``status``, the API) carries a few control
messages per worker, where uvloop gains nothing and its import is ~2.5 ms of a
one-value job: the standard loop. From inside a running event loop (Jupyter) the
job runs on a helper thread, because a loop cannot be nested.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_async(coro, data_path: bool = False):
    """Runs ``coro`` on a new loop: uvloop for a worker (``data_path``) when installed, else asyncio's own."""
    if data_path:
        try:
            import uvloop
        except ImportError:      # only the import: an ImportError from inside the job must reach the caller
            pass
        else:
            return uvloop.run(_quietly(coro))
    return asyncio.run(_quietly(coro))


async def _quietly(coro):
    asyncio.get_running_loop().set_exception_handler(_drop_orphaned_tls_failure)
    return await coro


def _drop_orphaned_tls_failure(loop, context: dict) -> None:
    """uvloop's ``start_tls`` keeps the handshake's waiter future after a refused certificate and never
    retrieves it, although the dial has already raised the same error (worker/net/dial.py turns it into
    the one-line message).  Whether the orphan is reported at exit depends on when the garbage collector
    meets it, so without this a refused certificate sometimes printed a traceback after the error line."""
    import ssl
    if isinstance(context.get("exception"), ssl.SSLError) and \
            str(context.get("message", "")).startswith("Future exception was never retrieved"):
        return
    loop.default_exception_handler(context)


def in_sync(fn: Callable[[], T]) -> T:
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


def run_sync(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Runs the coroutine ``coro_fn()`` makes to completion, wherever we are called from."""
    return in_sync(lambda: run_async(coro_fn()))
