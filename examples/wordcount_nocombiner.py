"""Word count without a combiner: the same mapper and reducer as wordcount.py, but every (word, 1) pair the
mappers emit crosses the shuffle -- the shuffle counter (combined_pairs, shuffled_pairs) equals the number of
tokens, where wordcount.py's combiner sends each mapper's distinct words once. Compare the two:

    cluster submit mapreduce --job examples/wordcount_nocombiner.py --input docs/
    cluster submit mapreduce --job examples/wordcount.py --input docs/
"""
import re

WORD = re.compile(r"\w+")


def mapper(record):
    for word in WORD.findall((record.get("text") or "").lower()):
        yield word, 1


def reducer(word, counts):
    yield word, sum(counts)
