"""Inverted index: for every word, the documents it occurs in. The mapper emits (word, doc) per token of a
text file's line (a record of a text file is {"doc": path, "line": n, "text": line}); the combiner drops a
mapper's repeats of the same (word, doc); the reducer yields word -> the sorted distinct docs.

    cluster submit mapreduce --job examples/inverted_index.py --input docs/
"""
import re

WORD = re.compile(r"\w+")


def mapper(record):
    for word in WORD.findall((record.get("text") or "").lower()):
        yield word, record["doc"]


def combiner(word, docs):
    for doc in sorted(set(docs)):
        yield word, doc


def reducer(word, docs):
    yield word, sorted(set(docs))
