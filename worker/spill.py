"""A job's spill folder: where a worker keeps what does not fit its memory budget, and how it is cleaned.

Why a folder per job, named for the worker's process: a job's files are removed when the
job ends however it ends (``close`` runs in the job's ``finally``), and a worker that was
killed mid-spill cannot do that, so a worker started on the same ``--spill-dir``, and every job
a worker there loads, removes every ``job-*-p<PID>`` (and ``duckdb-p<PID>``) folder whose process
is gone (``sweep``).  Nothing else in
the folder is touched: the spill dir may be shared by several workers of one machine.

A full disk (or a folder that cannot be written) fails the job with one line naming the
worker and the folder (``JobError``: exit 1, a cluster-side condition); the worker serves
the next job.  The bytes written and read back are counted for the job's stats and the
worker's metrics.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

from shardstats.errors import JobError

PREFIX = "job-"


# numpy's tofile reserves a file's room first (fallocate) and says so without an errno when there is none; by the
# time the free space is looked at, another worker's aborted job may have freed the disk (seen: "spilling to
# /spill: Not enough free space to write 18969378 bytes after offset 0")
NUMPY_NO_SPACE = "Not enough free space to write"


def write_failure(exc: OSError, folder: str | os.PathLike | None = None) -> str:
    """What a failed write to disk says: "the disk is full" when it is (by the error, or by ``folder``'s free
    space: numpy's tofile reports a short write without an errno, "N requested and M written"), else the OS's
    words.  The spill and ``--out``'s part files say it alike."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT) or str(exc).startswith(NUMPY_NO_SPACE)
    if not full and folder is not None:
        try:
            full = shutil.disk_usage(folder).free < 1 << 20
        except OSError:
            pass
    return "the disk is full" if full else (exc.strerror or str(exc))


def default_base() -> str:
    """Where spill folders go without ``--spill-dir``: the system's temporary folder."""
    return os.path.join(tempfile.gettempdir(), "shardstats-spill")


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a zombie (killed, not yet reaped: a detached worker's parent is init,
    which may reap it late) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # someone else's process: alive
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep(base: str | os.PathLike) -> list[str]:
    """Removes the spill folders of worker processes that no longer run; returns what it removed."""
    removed = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for e in entries:
        m = re.fullmatch(rf"(?:{PREFIX}.*|duckdb)-p(\d+)", e.name)     # a job's folder, or a process's DuckDB's
        if m and e.is_dir(follow_symlinks=False) and not alive(int(m.group(1))):
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(e.name)
    return removed


FLUSH_BYTES = 4 << 20     # a spill file's written pages are flushed and dropped from the page cache this often


class SpillFile:
    """A spill file written in arrays, its pages written back and dropped from the page cache every
    ``FLUSH_BYTES``: under a memory cgroup the page cache a job writes is charged to it, and a cgroup full of
    dirty pages is killed before the kernel writes them back (measured: 10 workers spilling 800 MB each in
    300 MiB cgroups were killed; the same job without the cgroups peaked at 115 MB of their own memory)."""

    def __init__(self, path: Path) -> None:
        # the file ``SpillDir.new_file`` made, opened without creating it: once the job's folder is gone (an
        # abort) a thread still spilling gets ENOENT here instead of leaving a file (and its folder) behind
        self.f = open(path, "r+b")
        self.unflushed = 0

    def write(self, a) -> None:
        a.tofile(self.f)
        self.unflushed += a.nbytes
        if self.unflushed >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        self.f.flush()
        fd = self.f.fileno()
        os.fdatasync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.unflushed = 0

    def close(self) -> None:
        if not self.f.closed:
            try:
                self.flush()
            finally:
                self.f.close()


class SpillDir:
    """One job's spill folder on one worker, made on first use.

    ``written``/``read`` count the bytes that went to disk and came back; ``on_bytes`` (the
    worker's metrics) hears of each as it happens.
    """

    def __init__(self, base: str | os.PathLike | None, job_id: str, worker: int | str = "?",
                 on_bytes=None) -> None:
        self.base = Path(base or default_base())
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(job_id))[:64]
        self.path = self.base / f"{PREFIX}{safe}-w{worker}-p{os.getpid()}"
        self.worker = worker
        self.written = 0
        self.read = 0
        self.files = 0
        self.closed = False
        self._on_bytes = on_bytes
        # new_file (a job's thread) and close (the event loop, at an abort) exclude each other: without it a
        # thread could make the folder or a file after close had checked, and the rmtree left both (seen
        # with a sort beyond memory aborted when another worker's disk filled: a 6 MB run stayed for good)
        self._lock = threading.Lock()
        self.phase_of = lambda: "load"      # the job's phase now (set by the load and the run): bytes per phase
        self.by_phase: dict[str, list[int]] = {}

    def new_file(self, name: str) -> Path:
        """A new empty file of the job's folder, made here (under the lock) so that ``close`` removes it whenever
        it comes; writers open it without creating it (``SpillFile``)."""
        with self._lock:
            if self.closed:
                # the job ended (an abort) while a thread of it still spills: it must not make the folder again
                raise JobError(f"worker {self.worker}: the job ended; its spill folder is gone")
            path = self.path / name
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                path.touch()
            except OSError as exc:
                raise self.failure(exc) from None
        self.files += 1
        return path

    def failure(self, exc: OSError) -> JobError:
        """The one line a failed spill write becomes."""
        return JobError(f"worker {self.worker}: spilling to {self.base}: {write_failure(exc, self.base)} "
                        f"(--spill-dir)")

    def count_written(self, n: int) -> None:
        self.written += n
        self.by_phase.setdefault(self.phase_of(), [0, 0])[0] += n
        if self._on_bytes is not None:
            self._on_bytes(written=n)

    def count_read(self, n: int) -> None:
        self.read += n
        self.by_phase.setdefault(self.phase_of(), [0, 0])[1] += n
        if self._on_bytes is not None:
            self._on_bytes(read=n)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            shutil.rmtree(self.path, ignore_errors=True)

    def stats(self) -> dict:
        return {"spill_bytes_written": self.written, "spill_bytes_read": self.read, "spill_files": self.files,
                "spill_by_phase": {k: {"written": w, "read": r} for k, (w, r) in self.by_phase.items()}}
