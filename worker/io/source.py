"""Opening a shard the way a job may read it: inside the data root, a regular file, the version the job
listed, small enough for the worker's memory budget.

Every reader (text, CSV, npy, parquet) reads through ``opened``, so each rule is
written once:

* **the root**: on a worker that confines paths (any cluster not started by
  ``cluster up`` on this host), a path is resolved under the root after every
  symbolic link is resolved; an escape (``..``, an absolute path elsewhere, a link
  pointing out) is refused in one line.
* **a regular file**: the path is opened with ``O_NONBLOCK`` and checked with
  ``fstat`` on the open descriptor, so a FIFO or a device -- even one swapped in
  after the listing -- is refused instead of blocking a load thread for good.
* **the listed version**: size and version (``mtime_ns`` for local files) are
  compared with what the coordinator listed, on the open descriptor before the
  read and again after it.  A file rewritten while the job reads it fails the job
  naming the file; it never yields a mix of two versions or a truncated read.
* **the budget**: a file whose size (or, for ``.npy``, whose values widened to
  int64) does not fit the worker's memory budget is refused before any byte is read.
* **objects**: an ``s3://`` shard is opened by ``worker.io.objects.opened_object`` (the listed ETag
  checked at the open and sent with every ranged GET, the store's errors as one line naming it), so the
  keyed readers take objects and files alike.
* **whose fault**: running out of descriptors or memory (``EMFILE``, ``ENFILE``,
  ``ENOMEM``, ``ENOBUFS``, ``MemoryError``) is the worker's failure
  (``WorkerUnhealthy``: the job runs again elsewhere), never the user's input.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from shardstats.errors import InputError, WorkerUnhealthy
from shardstats.worker.io.listing import ShardRef, is_object_url

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def local_version(st: os.stat_result) -> str:
    """A local file's version as the listing records it (worker/io/listing.py ``list_refs``)."""
    return str(st.st_mtime_ns)


def mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB" if n < 1 << 30 else f"{n / (1 << 30):,.1f} GiB"


def confine(path: str, root: str) -> str:
    """``path`` (relative to ``root``, or absolute) resolved; an InputError when it leaves ``root``."""
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, path))
    if real != base and os.path.commonpath([base, real]) != base:
        raise InputError(f"{path}: outside the worker's data root {root} (after resolving links); "
                         f"name files under the root")
    return real


def os_error(path: str, exc: OSError, real: str | None = None) -> Exception:
    """An OSError while opening or reading ``path``: the worker's failure or the input's, by its errno.

    ``real`` is where the worker looked (under its root): said when it differs, because a
    volume mounted elsewhere than the job expects shows up as exactly this error."""
    if exc.errno in RESOURCE_ERRNOS:
        return WorkerUnhealthy(f"{path}: the worker cannot read it now ({errno.errorcode.get(exc.errno, exc.errno)}: "
                               f"{exc.strerror}); the job runs again on other workers")
    if isinstance(exc, FileNotFoundError):
        looked = f" (the worker looked for {real})" if real and real != path else ""
        return InputError(f"{path}: no such file{looked}")
    if isinstance(exc, PermissionError):
        return InputError(f"{path}: permission denied")
    if isinstance(exc, IsADirectoryError):
        return InputError(f"{path}: is a directory")
    return InputError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})")


def _check_version(ref: ShardRef, st: os.stat_result, when: str) -> None:
    if ref.size >= 0 and st.st_size != ref.size:
        raise InputError(f"{ref.path}: changed since the job listed it (size {ref.size:,} -> {st.st_size:,} bytes, "
                         f"{when}); run the job again once the file is complete")
    if ref.version is not None and local_version(st) != ref.version:
        raise InputError(f"{ref.path}: changed since the job listed it (modified {when}); "
                         f"run the job again once the file is complete")


@contextmanager
def opened(ref: ShardRef, real_path: str, budget: int | None = None) -> Iterator[tuple[BinaryIO, int]]:
    """The open file (a binary file object) and its size; checks the version again when the block ends."""
    if is_object_url(ref.path):
        from shardstats.worker.io.objects import opened_object
        with opened_object(ref, budget) as opened_file:
            yield opened_file
        return
    try:
        fd = os.open(real_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(ref.path, exc, real_path) from None
    f = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{ref.path}: not a regular file (a FIFO, socket, device or directory)")
        _check_version(ref, st, "before the read")
        if budget is not None and st.st_size > budget:
            raise InputError(f"{ref.path}: {mib(st.st_size)} does not fit the worker's memory budget of "
                             f"{mib(budget)} (--memory-limit); split the shard into smaller files")
        try:
            yield f, st.st_size
        except OSError as exc:
            raise os_error(ref.path, exc) from None
        except MemoryError:
            raise WorkerUnhealthy(f"{ref.path}: the worker ran out of memory reading it; "
                                  f"the job runs again on other workers") from None
        _check_version(ref, os.fstat(fd), "during the read")
    finally:
        f.close()


def read_exactly(f: BinaryIO, size: int, path: str) -> bytes:
    """The file's ``size`` bytes; a file that grew or shrank meanwhile is an InputError."""
    data = f.read(size + 1)
    if len(data) != size:
        raise InputError(f"{path}: changed since the job listed it (read {len(data):,} of {size:,} bytes)")
    return data
