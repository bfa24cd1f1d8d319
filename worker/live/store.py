"""Checkpoints of an owner's buckets on local disk, so flushed counts survive a restart.

A checkpoint is one msgpack file written whole to a temporary name, fsynced and
renamed over the previous one: a crash mid-write leaves the last good checkpoint.
Its directory is named for the cluster (a digest of its token: a new cluster never
reads an old one's counts) and the worker id, so the same worker restarted on the
same host finds it (``cluster up``'s restart, a compose service's volume).

What a restart loses is stated, never hidden: the counts the worker received, and the
events it had not flushed yet, between its last checkpoint and its restart -- the
``gap`` every later answer whose window overlaps it carries.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import msgpack

FORMAT = 2            # 2: each bucket packed on its own
# One write at a time: the scheduled checkpoint writes on a thread, and the last one at shutdown on the loop
# may start while that thread is still writing the same temporary file (its task was cancelled, the thread
# was not): both writing through the one inode could leave the older state, or a mix, as the checkpoint.
_WRITING = threading.Lock()


def default_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "shardstats" / "live"


def checkpoint_path(root: str | os.PathLike | None, token: bytes, worker: int) -> Path:
    cluster = hashlib.sha256(b"shardstats-live\0" + token).hexdigest()[:16]
    return Path(root or default_root()) / f"cluster-{cluster}" / f"worker{worker}.ckpt"


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _with_packed_buckets(state: dict, packed: list) -> bytes:
    return _pack({"format": FORMAT, **state, "buckets": {**state["buckets"], "buckets": packed}})


def encode(state: dict) -> bytes:
    """``state["buckets"]`` is ``TimeBuckets.dump()``; each bucket is packed on its own (see ``encode_async``)."""
    packed = [{idx: _pack(b) for idx, b in per.items()} for per in state["buckets"]["buckets"]]
    return _with_packed_buckets(state, packed)


async def encode_async(state: dict, step=None) -> bytes:
    """``encode``, yielding to the event loop after every bucket: msgpack holds the GIL while it packs, so
    packing a whole owner at once (a million counts: tens of ms) on any thread would stall the loop.
    ``step(name)``: a context manager timing each piece held on the loop (LoopWatch.step)."""
    import asyncio
    import contextlib
    step = step or (lambda name: contextlib.nullcontext())
    packed = []
    for per in state["buckets"]["buckets"]:
        level = {}
        for idx, b in per.items():
            with step("checkpoint_pack"):
                level[idx] = _pack(b)
            await asyncio.sleep(0)
        packed.append(level)
    with step("checkpoint_pack"):
        return _with_packed_buckets(state, packed)


def write(path: Path, data: bytes) -> None:
    """Atomically replaces the checkpoint at ``path`` (blocking: run it on a thread); a write already under
    way finishes first, so the later call's state is the one left."""
    with _WRITING:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def read(path: Path) -> dict | None:
    """The checkpoint's state, None when there is none; ValueError when it is unreadable or of another format."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types for a damaged file; all mean the same
        raise ValueError(f"{path}: not a checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a format-{FORMAT} checkpoint")
    try:
        tb = state["buckets"]
        tb["buckets"] = [{idx: msgpack.unpackb(b, raw=False, strict_map_key=False) for idx, b in per.items()}
                         for per in tb["buckets"]]
    except Exception as exc:  # noqa: BLE001 - as above: a damaged bucket is a damaged checkpoint
        raise ValueError(f"{path}: a damaged bucket ({exc})") from None
    return state


def forget_cluster(token: bytes, root: str | os.PathLike | None = None) -> None:
    """Removes a cluster's checkpoints (``cluster down``: a local cluster's token is never used again)."""
    import shutil
    shutil.rmtree(checkpoint_path(root, token, 0).parent, ignore_errors=True)
