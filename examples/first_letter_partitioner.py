"""A custom partitioner: word count whose words are routed to reducers by their first letter instead of by
hash. The letters a..z are cut into n contiguous ranges (digits, '_' and anything else before 'a' go with
'a'; accented letters and anything else after 'z' with 'z'), so every word lands on exactly one reducer, and as
each reducer's keys come out sorted, the part files read in order are sorted as a whole (a range
partitioner). The price: reducers are as unbalanced as the letters are (English has far more 's' than 'x').

    cluster submit mapreduce --job examples/first_letter_partitioner.py --input docs/ --out counts/
    # counts/part-00000.parquet holds the words of the first letters, part-00001 the next ones, ...
"""
import re

WORD = re.compile(r"\w+")


def mapper(record):
    for word in WORD.findall((record.get("text") or "").lower()):
        yield word, 1


def combiner(word, counts):
    yield word, sum(counts)


reducer = combiner


def partitioner(word, n):
    letter = min(max(ord(word[:1] or "a") - ord("a"), 0), 25)     # 0..25, clamped
    return letter * n // 26
