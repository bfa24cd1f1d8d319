"""The beds a netns test builds, and the check that none of them leaves anything behind.

Shared by the compose and Kubernetes tests, whose beds are both ``scripts.netns_runner.UnitBed``s.
"""
from __future__ import annotations

import tempfile
from pathlib import Path


def tracked_beds(monkeypatch, cls):
    """A fixture body: yields the (bed, pids) a test starts; afterwards asserts every one is gone."""
    made: list = []
    real = cls._start_workers

    def tracked(self):
        try:
            real(self)
        finally:
            made.append((self, [p.pid for p in self.procs]))
    monkeypatch.setattr(cls, "_start_workers", tracked)
    yield made
    for bed, pids in made:
        assert bed.leftovers() == {"namespaces": [], "links": [], "pids": [], "files": []}
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
        assert not list(Path(tempfile.gettempdir()).glob(f"{bed.prefix}root-*"))
        assert not list(Path("/etc/netns").glob(f"{bed.prefix}*"))
