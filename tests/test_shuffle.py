"""Flow-control bounds of the shuffle, measured on the in-memory transport (machine-speed independent)."""
from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from shardstats.worker.comm.collectives import broadcast, tree_reduce
from shardstats.worker.comm.inmemory import InMemoryNetwork
from shardstats.worker.comm.shuffle import ShuffleConfig, chunk_pieces, shuffle


def _run_shuffle(outgoing_by_rank, cfg, delays=None, slow_consume=None):
    w = len(outgoing_by_rank)
    net = InMemoryNetwork(w, timeout=30)
    net.delays.update(delays or {})
    got = [[] for _ in range(w)]

    def consumer(r):
        async def consume(src, piece):
            got[r].append((src, piece["x"].copy()))
            if slow_consume and r in slow_consume:
                await asyncio.sleep(slow_consume[r])
        return consume

    async def main():
        async with asyncio.TaskGroup() as tg:
            ts = [tg.create_task(shuffle(net.comms[r], outgoing_by_rank[r], consumer(r), cfg)) for r in range(w)]
        return [t.result() for t in ts]

    stats = asyncio.run(main())
    return got, stats, net


def _data(w, rows, skew_to=None, seed=0):
    """outgoing[r][d] = chunks of rows for d; optionally most data goes to one receiver."""
    rng = np.random.default_rng(seed)
    out, sent = [], {}
    for r in range(w):
        per = []
        for d in range(w):
            n = rows * (8 if skew_to == d else 1) + int(rng.integers(0, rows))
            if skew_to is not None and d != skew_to and r % 3 == 0:
                n = 0                                   # some partitions are empty
            x = rng.integers(-10 ** 9, 10 ** 9, n)
            sent[(r, d)] = x
            per.append(x)
        out.append(per)
    return out, sent


def _pieces(out, chunk_bytes):
    return [[chunk_pieces({"x": x}, chunk_bytes) for x in per] for per in out]


@pytest.mark.parametrize("w", [2, 3, 7, 12])
@pytest.mark.parametrize("fan_in,credits", [(1, 1), (1, 4), (2, 2)])
@pytest.mark.parametrize("skew", [False, True])
def test_credit_bounds_fan_in_and_buffering_and_loses_nothing(w, fan_in, credits, skew):
    chunk = 512
    out, sent = _data(w, 300, skew_to=0 if skew else None)
    cfg = ShuffleConfig("credit", fan_in=fan_in, credits=credits, chunk_bytes=chunk)
    got, stats, net = _run_shuffle(_pieces(out, chunk), cfg)
    for r in range(w):
        assert stats[r].max_inbound_streams <= fan_in
        assert net.comms[r].mailbox.peak_buffered <= fan_in * credits * chunk
        for s in range(w):
            rec = [x for src, x in got[r] if src == s]
            assert np.array_equal(np.concatenate(rec) if rec else np.zeros(0, np.int64), sent[(s, r)])


def test_naive_exceeds_the_bounds_credit_keeps():
    w, chunk = 8, 512
    out, _ = _data(w, 400)
    naive = _run_shuffle(_pieces(out, chunk), ShuffleConfig("naive", chunk_bytes=chunk))
    credit = _run_shuffle(_pieces(out, chunk), ShuffleConfig("credit", chunk_bytes=chunk, credits=2))
    assert max(s.max_inbound_streams for s in naive[1]) > 1
    assert max(s.max_inbound_streams for s in credit[1]) == 1
    assert max(c.mailbox.peak_buffered for c in credit[2].comms) <= 2 * chunk


def test_slow_receiver_slows_its_senders_instead_of_growing_memory():
    w, chunk, credits = 6, 256, 2
    out, sent = _data(w, 500, skew_to=2)
    cfg = ShuffleConfig("credit", fan_in=1, credits=credits, chunk_bytes=chunk)
    got, stats, net = _run_shuffle(_pieces(out, chunk), cfg, slow_consume={2: 0.002})
    assert net.comms[2].mailbox.peak_buffered <= credits * chunk
    for s in range(w):
        rec = [x for src, x in got[2] if src == s]
        assert np.array_equal(np.concatenate(rec) if rec else np.zeros(0, np.int64), sent[(s, 2)])


def test_senders_work_while_receiving_and_every_link_is_used():
    """With W ranks each sending to all others, all W*(W-1) directed links carry data."""
    w, chunk = 5, 512
    out, _ = _data(w, 200)
    _, _, net = _run_shuffle(_pieces(out, chunk), ShuffleConfig("credit", chunk_bytes=chunk))
    matrix = [c.stats.bytes_sent for c in net.comms]
    assert all(matrix[i][j] > 0 for i in range(w) for j in range(w) if i != j)


@pytest.mark.parametrize("w", [1, 2, 3, 5, 8, 10, 12, 17])
def test_tree_reduce_fan_in_is_logarithmic_and_broadcast_reaches_everyone(w):
    net = InMemoryNetwork(w)

    async def one(r):
        c = net.comms[r]
        total = await tree_reduce(c, {"n": r + 1}, lambda a, b: {"n": a["n"] + b["n"]})
        got = await broadcast(c, total)
        return got["n"]

    async def main():
        async with asyncio.TaskGroup() as tg:
            ts = [tg.create_task(one(r)) for r in range(w)]
        return [t.result() for t in ts]

    assert asyncio.run(main()) == [w * (w + 1) // 2] * w
    assert max(c.stats.tree_messages_received for c in net.comms) <= math.ceil(math.log2(w)) if w > 1 else True


def test_bad_configs_are_refused():
    with pytest.raises(ValueError):
        ShuffleConfig("bogus")
    with pytest.raises(ValueError):
        ShuffleConfig(fan_in=0)
