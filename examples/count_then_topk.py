"""A chained job: count the words, then keep the 3 most frequent -- two stages, one file. Each stage's records are
the previous stage's output pairs as {"key": ..., "value": ...}; the job's stats list each stage's counters.

    cluster submit mapreduce --job examples/count_then_topk.py --input docs/
"""
import re

WORD = re.compile(r"\w+")
K = 3


def count_mapper(record):
    for word in WORD.findall((record.get("text") or "").lower()):
        yield word, 1


def count_sum(word, counts):
    yield word, sum(counts)


def top_mapper(record):                    # every (word, count) to one key: one reducer sees them all
    yield "top", (record["value"], record["key"])


def top_combiner(key, pairs):              # each mapper's own top K: a monoid (the top K of tops is the top K)
    for pair in sorted(pairs, key=lambda p: (-p[0], p[1]))[:K]:
        yield key, pair


def top_reducer(key, pairs):
    for rank, (count, word) in enumerate(sorted(pairs, key=lambda p: (-p[0], p[1]))[:K], 1):
        yield rank, {"word": word, "count": count}


stages = [dict(mapper=count_mapper, combiner=count_sum, reducer=count_sum),
          dict(mapper=top_mapper, combiner=top_combiner, reducer=top_reducer)]
