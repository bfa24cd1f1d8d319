"""Word count, the MapReduce way: the mapper emits (word, 1) per token, the combiner sums a mapper's ones, the
reducer sums the partial counts. Records of text files are {"doc", "line", "text"}.

    cluster submit mapreduce --job examples/wordcount.py --input docs/
"""
import re

WORD = re.compile(r"\w+")


def mapper(record):
    for word in WORD.findall((record.get("text") or "").lower()):
        yield word, 1


def combiner(word, counts):
    yield word, sum(counts)


def reducer(word, counts):
    yield word, sum(counts)
