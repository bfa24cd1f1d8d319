"""The registry of ops a job can run: name -> async function over a communicator."""
from __future__ import annotations

from worker.median import median
from worker.mode import mode

OPS = {"mode": mode, "median": median}
