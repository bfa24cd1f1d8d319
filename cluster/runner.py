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


# How long an interrupted call (Ctrl-C in a notebook) waits for its helper thread: a cancelled job's abort
# (coordinator.job.ABORT_WAIT for each worker's confirmation), or a cluster's start (launcher: 30 s to be ready).
INTERRUPT_WAIT = 35.0


def in_sync(fn: Callable[[], T], cancel: Callable[[], None] | None = None,
            undo: Callable[[T], None] | None = None) -> T:
    """Calls ``fn`` (which may start its own event loop) here, or on a thread when a loop is already running.

    On that thread an interrupt (Ctrl-C in Jupyter raises KeyboardInterrupt in the waiting thread, not in the
    helper) must not leave the work going on behind the user's back -- a job still running on the cluster,
    workers started that no handle owns -- so the waiting thread calls ``cancel`` (stop the work), waits for
    the helper (``INTERRUPT_WAIT`` at most), hands what it made anyway to ``undo``, and re-raises."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    box: dict[str, Any] = {}
    done = threading.Event()        # not Thread.join: an interrupted join marks a running thread as stopped

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:   # handed to the caller's thread and re-raised there
            box["error"] = exc
        finally:
            done.set()
    threading.Thread(target=target, name="cluster-api", daemon=True).start()
    try:
        done.wait()
    except BaseException:
        if cancel is not None:
            cancel()
        done.wait(INTERRUPT_WAIT)
        if "value" in box and undo is not None:
            undo(box["value"])
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_sync(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Runs the coroutine ``coro_fn()`` makes to completion, wherever we are called from.  On a helper thread
    (a running loop: Jupyter), an interrupt cancels the coroutine there -- a job's cancellation aborts it on
    every worker -- as Ctrl-C does to ``asyncio.run`` in a plain script."""
    where: dict[str, Any] = {}

    async def main() -> T:
        where["loop"], where["task"] = asyncio.get_running_loop(), asyncio.current_task()
        return await coro_fn()

    def cancel() -> None:
        if "loop" in where:
            where["loop"].call_soon_threadsafe(where["task"].cancel)
    return in_sync(lambda: run_async(main()), cancel=cancel)
