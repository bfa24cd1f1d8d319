"""The registry of ops a job can run: name -> async function over a communicator."""
from __future__ import annotations

from shardstats.worker.ops.median import median
from shardstats.worker.ops.mode import mode

OPS = {"mode": mode, "median": median}
