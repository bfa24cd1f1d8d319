"""The classic mistake: an average-of-averages combiner. Each combiner call replaces its values by their
average with a count of 1, so a mapper that saw 1 value of a key weighs as much as one that saw 1,000 --
the answer depends on how the values were grouped. --check-combiner catches it before the job runs:

    cluster submit mapreduce --job examples/average_naive.py --input readings/ --check-combiner
    # exit 2: --check-combiner: the combiner changes the answer for key ... (use (sum, count):
    # examples/average_by_key.py)
"""


def mapper(record):
    if record.get("value") is not None:
        yield record["key"], (record["value"], 1)


def combiner(key, pairs):                      # WRONG: forgets how many values each average stands for
    yield key, (sum(s / n for s, n in pairs) / len(pairs), 1)


def reducer(key, pairs):
    total, count = sum(s for s, _ in pairs), sum(n for _, n in pairs)
    yield key, total / count
