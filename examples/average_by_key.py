"""Average by key, combiner-safe: an average is not associative, but (sum, count) is. The mapper emits
(key, (value, 1)), the combiner adds the sums and the counts, and only the reducer divides. Rows have
``key`` and ``value`` columns. --check-combiner first runs each worker's first records through the
combiner in random groupings and compares with the answer without it (use integer values: a float sum
can round differently in another grouping); this combiner passes, average_naive.py's does not.

    cluster submit mapreduce --job examples/average_by_key.py --input readings/ --check-combiner
"""


def mapper(record):
    if record.get("value") is not None:
        yield record["key"], (record["value"], 1)


def combiner(key, pairs):
    yield key, (sum(s for s, _ in pairs), sum(n for _, n in pairs))


def reducer(key, pairs):
    total, count = sum(s for s, _ in pairs), sum(n for _, n in pairs)
    yield key, total / count
