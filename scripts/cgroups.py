"""A memory cgroup for worker processes, for the beyond-memory tests and benchmark (root only).

The kernel, not our accounting, decides: processes in the group share ``limit`` bytes (their
page cache included, which it reclaims before it kills), and an out-of-memory kill is counted
in the group's events.  cgroup v2 (``memory.max``) or v1 (``memory.limit_in_bytes``), whichever
this machine mounts; ``available()`` says whether either can be used here.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/memory")


def _v2() -> bool:
    return (V2 / "cgroup.controllers").exists() and "memory" in (V2 / "cgroup.controllers").read_text()


def available() -> bool:
    base = V2 if _v2() else V1
    return os.geteuid() == 0 and base.is_dir() and os.access(base, os.W_OK)


class MemoryCgroup:
    """``with MemoryCgroup(300 << 20) as g: g.add(pid)``; removed on exit (its processes must have ended)."""

    def __init__(self, limit: int, name: str | None = None) -> None:
        self.v2 = _v2()
        self.path = (V2 if self.v2 else V1) / (name or f"shardstats-{uuid.uuid4().hex[:10]}")
        self.limit = limit

    def __enter__(self) -> "MemoryCgroup":
        self.path.mkdir()
        if self.v2:
            (self.path / "memory.max").write_text(str(self.limit))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        return self

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def oom_kills(self) -> int:
        if self.v2:
            for line in (self.path / "memory.events").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
            return 0
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def peak(self) -> int | None:
        """The group's highest memory use (page cache included), where the kernel reports it."""
        f = self.path / ("memory.peak" if self.v2 else "memory.max_usage_in_bytes")
        return int(f.read_text()) if f.exists() else None

    def __exit__(self, *exc) -> None:
        for _ in range(50):              # the processes may take a moment to leave after they are killed
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
