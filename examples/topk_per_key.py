"""Top-K per key: the K (here 3) largest values of each key, largest first. Rows have ``key`` and ``value``
columns. The combiner keeps each mapper's K largest values of a key -- safe, since a value outside a
mapper's top K cannot be in the key's overall top K -- so at most K pairs per key leave each mapper; the
reducer takes the K largest of those.

    cluster submit mapreduce --job examples/topk_per_key.py --input scores/
"""
import heapq

K = 3


def mapper(record):
    if record.get("value") is not None:
        yield record["key"], record["value"]


def combiner(key, values):
    for v in heapq.nlargest(K, values):
        yield key, v


def reducer(key, values):
    yield key, heapq.nlargest(K, values)
