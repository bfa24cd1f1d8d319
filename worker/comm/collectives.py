"""Collectives built from send/recv: binomial-tree reduce, broadcast, and their composition.

In a binomial tree over W ranks, rank r receives at step d (d = 1, 2, 4, ...) from
r + d while r has no bit d set, so no rank receives more than ceil(log2 W)
messages: small results never fan in to one worker.
"""
from __future__ import annotations

from typing import Any, Callable

from shardstats.worker.comm.communicator import Communicator

Combine = Callable[[dict, dict], dict]


def tree_depth(size: int) -> int:
    """The rounds one pass of the binomial tree over ``size`` ranks takes: ceil(log2 size)."""
    return max(0, (size - 1).bit_length())


async def tree_reduce(comm: Communicator, body: dict, combine: Combine, name: str = "reduce") -> dict | None:
    """Combines every rank's ``body`` at rank 0; returns the total there, None elsewhere."""
    tag = comm.new_tag(name)
    rank, size = comm.rank, comm.size
    acc = body
    step = 1
    received = 0
    try:
        while step < size:
            if rank & step:
                await comm.send(rank - step, tag, acc)
                return None
            if rank + step < size:
                _, other = await comm.recv(tag)
                received += 1
                acc = combine(acc, other)
            step <<= 1
        return acc
    finally:
        comm.stats.tree_messages_received = max(comm.stats.tree_messages_received, received)


async def broadcast(comm: Communicator, body: dict | None, name: str = "bcast") -> dict:
    """Sends rank 0's ``body`` to every rank along the same binomial tree, top down."""
    tag = comm.new_tag(name)
    rank, size = comm.rank, comm.size
    top = 1
    while top < size:
        top <<= 1
    step = top >> 1
    # A rank first receives from its parent (rank with its lowest set bit cleared) ...
    if rank:
        low = rank & -rank
        _, body = await comm.recv(tag)
        step = low >> 1
    assert body is not None
    # ... then forwards to rank + step for every step below its lowest set bit.
    while step >= 1:
        if rank + step < size:
            await comm.send(rank + step, tag, body)
        step >>= 1
    return body


async def allreduce(comm: Communicator, body: dict, combine: Combine, name: str = "allreduce") -> dict:
    total = await tree_reduce(comm, body, combine, name)
    return await broadcast(comm, total, name + ".b")


def sum_ints(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


def merge_any(a: dict, b: dict) -> dict[str, Any]:
    return {**a, **b}


async def allgather(comm: Communicator, item: Any, name: str = "allgather") -> list:
    """Every rank's ``item``, in rank order, on every rank: ceil(log2 W) rounds (Bruck's dissemination).

    In round k rank r sends all it holds to r + 2**k and takes what r - 2**k holds, so
    after the rounds each rank has heard from all, in half the message latencies of
    ``allreduce`` (a reduce up the tree, then a broadcast down).  For small items: the
    last round carries about half of them.
    """
    size, rank = comm.size, comm.rank
    held = {rank: item}
    step = 1
    while step < size:
        tag = comm.new_tag(name)
        await comm.send((rank + step) % size, tag, {"items": [[r, v] for r, v in held.items()]})
        _, body = await comm.recv(tag)
        for r, v in body["items"]:
            held.setdefault(int(r), v)
        step <<= 1
    return [held[r] for r in range(size)]
