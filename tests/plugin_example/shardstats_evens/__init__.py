"""A third-party op in one module: how many values are even (or divisible by --divisor).

Installed with pip, it registers through the ``shardstats.ops`` entry point and
appears in ``cluster submit --help``, in the API (``c.evens(...)``) and on the
workers, without any change to shardstats.
"""
from dataclasses import dataclass

from shardstats.lazy import numpy as np     # loaded on the workers when run, never by `cluster submit`
from shardstats.worker.comm.collectives import sum_ints, tree_reduce
from shardstats.worker.ops.contract import Op, Params, option


@dataclass(frozen=True)
class EvensParams(Params):
    divisor: int = option(2, "Count the values divisible by this.", min=1)


async def evens(comm, values, params):
    local = {"hits": int(np.count_nonzero(values % params.divisor == 0)), "n": len(values)}
    total = await tree_reduce(comm, local, sum_ints, "evens.sum")
    return total, {"rounds": max(0, (comm.size - 1).bit_length())}


OP = Op(name="evens", summary="How many values are divisible by --divisor (a toy plugin op).",
        params=EvensParams, run=evens, phases=("load", "reduce"),
        render=lambda r: [f"divisible: {r['hits']:,} of {r['n']:,}"],
        examples=("cluster submit evens --input shards/ --divisor 3",))
